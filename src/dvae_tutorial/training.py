"""Training a discretized VAE: one plain loop, checkpoints, EMA, resume.

Backs the training sections of *A discretized VAE codec*. The objective is
the free energy of Ballé, Laparra & Simoncelli (2017) [balle2017end] and
Ballé et al. (2018) [balle2018variational], per image ``bpp + lmbda * mse``
(``mse`` on [0, 1], ``bpp`` estimated with uniform noise); the step
(NaN/huge-gradient skip, EMA) follows VDVAE [child2021vdvae].

Reproducibility: the patches of step ``t`` depend only on ``(seed, t)``
(:class:`_KeyedPatches` seeds torch's CPU generator per item), and a
checkpoint holds the weights, EMA, optimizer, step and torch's RNG states, so
a run resumed from a checkpoint is bit-identical on CPU to one that never
stopped. Datasets must draw their randomness from torch (as
:class:`~dvae_tutorial.images.PatchDataset` does). Checkpoints are plain
tensors and Python values (``torch.load(weights_only=True)`` reads them).

Mixed precision: on a CUDA GPU with bfloat16, the forward runs under
``torch.autocast(dtype=torch.bfloat16)`` (:func:`autocast_dtype`); the rate is
still computed in float32 (:mod:`~dvae_tutorial.distributions` upcasts).
bfloat16 has float32's range, so no gradient scaler is needed. float16 is
not used: it needs a ``GradScaler`` (its gradients underflow) and its range
(6e-8 … 65504) does not hold the rate terms. On CPU nothing changes unless
asked: ``amp="bf16"`` autocasts there too, which pays on CPUs with bfloat16
matrix units (Intel AMX). Measured on this project's Xeon (AMX), one
thread, factorized N = 128, M = 192, 16×64² patches: 0.39 s/step float32,
0.19 s bf16, 0.15 s bf16 with ``channels_last`` (2.7×); the hierarchical
model (depthwise convolutions) gains nothing from bf16 (0.32 → 0.37 s) and
12 % from ``channels_last`` alone.

Several GPUs: launch the same command with ``torchrun``, one process per GPU::

    torchrun --nproc_per_node 4 -m dvae_tutorial.cli train --preset resnet12 \\
        --out runs/resnet12.pt

Each process takes ``batch_size / world_size`` patches of every global batch
(``batch_size`` stays the global batch) and DDP averages the gradients; see
:mod:`~dvae_tutorial.distributed` (noise per rank, skips, who writes files).
The recipe records ``precision`` and ``world_size``.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from . import distributed
from .checkpoints import (
    CHECKPOINT_VERSION,
    load_checkpoint,
    load_model,
    make_recipe,
    save_checkpoint,
)
from .configs import AMP_MODES, ModelConfig, TrainConfig
from .errors import DataError, DVAEError
from .images import image_files, load_image, to_tensor01
from .metrics import psnr_8bit
from .runtime import default_device, seed_everything
from .single_layer_vae import SingleLayerVAE

#: This many skipped steps in a row mean the run diverged: stop with an error
#: (nothing changes the weights any more, so waiting cannot help).
MAX_SKIPS_IN_A_ROW = 100
#: What the recipe calls the precision of the forward, by autocast dtype.
PRECISIONS = {None: "fp32", torch.bfloat16: "bf16-autocast"}


class _KeyedPatches(Dataset):
    """Item ``(step, slot)``: a patch picked and cropped under a seed of
    ``(seed, step, slot)``, whatever worker or process reads it."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __getitem__(self, key: tuple[int, int]) -> Tensor:
        s = int(np.random.SeedSequence([self.seed, *key]).generate_state(1, "u8")[0])
        with torch.random.fork_rng(devices=[]):  # leave the caller's CPU RNG alone
            torch.default_generator.manual_seed(s)  # CPU only (not CUDA's RNG)
            return self.dataset[s % len(self.dataset)]


def validation_paths(root_or_paths: str | os.PathLike | list, count: int) -> list:
    """The ``count`` photos of a validation folder (or list) that training
    validates on: evenly spaced over the sorted files."""
    paths = (image_files(root_or_paths) if isinstance(root_or_paths, str | os.PathLike)
             else list(root_or_paths))
    picks = np.linspace(0, len(paths) - 1, min(count, len(paths))).round().astype(int)
    return [paths[i] for i in picks]


def center_crops(root_or_paths: str | os.PathLike | list, size: int,
                 count: int) -> Tensor:
    """A fixed validation set: ``count`` centre crops ``(count, 3, size, size)``.

    Photos are taken evenly spaced over the sorted folder (or list); a photo
    whose short side is below ``size`` is first resized up (as in
    :class:`~dvae_tutorial.images.PatchDataset`). See: *A discretized VAE codec*.
    """
    from torchvision.transforms.v2 import functional as TF

    crops = []
    for path in validation_paths(root_or_paths, count):
        x = to_tensor01(load_image(path))
        if min(x.shape[-2:]) < size:
            x = TF.resize(x, size, antialias=True).clamp(0, 1)
        crops.append(TF.center_crop(x, size))
    return torch.stack(crops)


@torch.no_grad()
def validate(model: SingleLayerVAE, images: Tensor, lmbda: float,
             batch_size: int = 4) -> dict[str, float]:
    """Eval-mode (rounded latents) estimated ``bpp``, 8-bit ``psnr``, ``mse``, ``loss``.

    Means over the images; the model is left in the mode it was in.
    See: *A discretized VAE codec* (training).
    """
    was_training, device = model.training, next(model.parameters()).device
    model.eval()
    bpp, mse, psnr = [], [], []
    for x in images.split(batch_size):
        out = model(x.to(device))
        bpp += out.bpp.tolist()
        mse += out.mse.tolist()
        psnr += [psnr_8bit(a.clamp(0, 1), b) for a, b in zip(out.x_hat, x, strict=True)]
    model.train(was_training)
    bpp_, mse_ = float(np.mean(bpp)), float(np.mean(mse))
    return {"bpp": bpp_, "psnr": float(np.mean(psnr)), "mse": mse_,
            "loss": bpp_ + lmbda * mse_}


def _native_bf16() -> bool:
    """Whether this GPU computes in bfloat16 natively. torch's check counts
    emulation by default, and an emulated bfloat16 (a Colab T4) is slower
    than float32."""
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # an older torch: no such argument, no emulation counted
        return torch.cuda.is_bf16_supported()


def autocast_dtype(device: torch.device, amp: bool | str = True) -> torch.dtype | None:
    """The dtype :func:`fit` runs the forward in under autocast, or ``None`` (float32).

    ``amp`` is one of :data:`~dvae_tutorial.configs.AMP_MODES` (``True`` is ``"auto"``, ``False``
    ``"off"``). ``"auto"``: ``torch.bfloat16`` on a CUDA GPU that supports it,
    ``None`` on CPU (unchanged path) and on older GPUs (float16 would need a
    gradient scaler; see the module docstring). ``"bf16"``: bfloat16 on any
    device (worth it on CPUs with AMX); a GPU without bfloat16 is an error.

    Raises:
        DVAEError: an unknown ``amp``, or ``"bf16"`` on a GPU without bfloat16.
    """
    mode = {True: "auto", False: "off"}.get(amp, amp)
    if mode not in AMP_MODES:
        raise DVAEError(f"amp must be one of {', '.join(AMP_MODES)}, got {amp!r}")
    bf16_gpu = device.type == "cuda" and _native_bf16()
    if mode == "bf16" and device.type == "cuda" and not bf16_gpu:
        raise DVAEError("amp 'bf16' was asked for, but this GPU has no bfloat16")
    if mode == "bf16" or (mode == "auto" and bf16_gpu):
        return torch.bfloat16
    return None


def train_step(model: SingleLayerVAE, optimizer: torch.optim.Optimizer, x: Tensor,
               cfg: TrainConfig, step: int,
               amp_dtype: torch.dtype | None = None) -> tuple[float, ...] | None:
    """One optimizer step on ``loss = mean(bpp + lmbda * mse)``, or a skip.

    A model whose output carries each image's ``lmbda`` and ``loss_weight``
    (:class:`~dvae_tutorial.variable_rate.VariableRateVAE`) is trained on
    ``mean(loss_weight * (bpp + lmbda * mse))`` instead.

    Sets the learning rate ``cfg.lr_at(step)``, clips the gradient to
    ``cfg.grad_clip``; skips (returns ``None``, weights untouched) when the
    loss is not finite or the gradient norm before clipping exceeds
    ``cfg.grad_skip``. Otherwise returns ``(loss, bpp, mse, grad_norm)``.
    With ``amp_dtype`` (e.g. ``torch.bfloat16``) the forward runs under
    ``torch.autocast`` in it. ``model`` may be wrapped in DDP: the loss terms
    are then averaged over the processes before the skip is decided, so every
    process decides alike, and the returned values are those global means.
    See: *A discretized VAE codec* (training).
    """
    for group in optimizer.param_groups:
        group["lr"] = cfg.lr_at(step)
    with (contextlib.nullcontext() if amp_dtype is None else
          torch.autocast(x.device.type, dtype=amp_dtype)):
        out = model(x)
    if getattr(out, "lmbda", None) is None:
        loss = (out.bpp + cfg.lmbda * out.mse).mean()
    else:  # a variable-rate model: each image's own λ and weight
        loss = (out.loss_weight * (out.bpp + out.lmbda * out.mse)).mean()
    optimizer.zero_grad(set_to_none=True)
    terms = torch.stack([loss, out.bpp.mean(), out.mse.mean()]).detach()
    if not torch.isfinite(distributed.mean_over_ranks_(terms)[0]):
        return None
    loss.backward()
    norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
    if not (math.isfinite(norm) and norm <= cfg.grad_skip):
        return None
    optimizer.step()
    return (*terms.tolist(), norm)


class FitResult(NamedTuple):
    """What :func:`fit` returns: the EMA model (eval mode) and the run's record."""

    ema: SingleLayerVAE
    history: dict[str, list[dict[str, float]]]
    skipped: int
    recipe: dict[str, Any]


def fit(model: SingleLayerVAE, train_cfg: TrainConfig, train_data: Dataset,
        val_data: Tensor | str | os.PathLike | None = None,
        device: str | torch.device | None = None,
        checkpoint_path: str | os.PathLike | None = None, resume: bool = True,
        progress: bool = True, num_workers: int | None = None,
        parent: dict | None = None, amp: bool | str = True,
        channels_last: bool = False, extra_recipe: dict | None = None,
        stop_at: int | None = None) -> FitResult:
    """Train ``model`` in place on ``loss = mean(bpp + lmbda * mse)``.

    Adam with :meth:`TrainConfig.lr_at`, gradients clipped to ``grad_clip``;
    a step with a non-finite loss or a gradient norm above ``grad_skip`` is
    skipped (counted). After each step an EMA of the weights is updated; it
    is validated and checkpointed every ``val_every`` steps and at the end.

    Args:
        model: a :class:`SingleLayerVAE` (its initial weights are the caller's).
        train_cfg: the recipe; ``patch_size`` must be a multiple of the stride.
        train_data: a map-style dataset of ``(3, P, P)`` patches in [0, 1]
            using torch's RNG, e.g. :class:`~dvae_tutorial.images.PatchDataset`.
        val_data: ``(V, 3, S, S)`` images, or a folder / paths of photos
            (their :func:`center_crops`), or ``None`` (no validation).
        device: ``"cpu"``, ``"cuda"``…; default :func:`default_device`.
        checkpoint_path: where checkpoints go (atomically); ``None``: nowhere.
        resume: continue from ``checkpoint_path`` when it exists.
        progress: show a tqdm bar.
        num_workers: DataLoader workers (default 0 on CPU, 6 on GPU); results
            do not depend on it.
        parent: for a run that started from another run's weights, what the
            recipe records about it (``dvae train --init``); a resumed run
            keeps the parent its checkpoint recorded.
        amp: ``"auto"`` (or ``True``), ``"bf16"`` or ``"off"`` (or ``False``):
            the autocast dtype, see :func:`autocast_dtype`.
        channels_last: keep weights and batches in ``torch.channels_last``
            memory format (faster convolutions on CPU; same numbers up to
            float rounding). Recorded in the recipe.
        extra_recipe: more fields for the recipe (e.g. which parts were
            frozen).
        stop_at: stop after this step (validated and checkpointed there),
            the learning rate still following ``train_cfg.steps``: a run
            interrupted on purpose, which ``resume`` can continue.

    In a process group of size > 1 (``torchrun``) it trains data-parallel:
    ``train_cfg.batch_size`` (divisible by the size) is split over the
    processes, rank 0 alone validates and writes the checkpoint, and every
    process resumes from ``checkpoint_path``; see
    :mod:`~dvae_tutorial.distributed`.

    Returns:
        :class:`FitResult`.

    See: *A discretized VAE codec* (training).
    """
    from tqdm.auto import tqdm

    cfg, device = train_cfg, torch.device(device or default_device())
    if cfg.patch_size % model.stride:
        raise DVAEError(f"patch_size {cfg.patch_size} is not a multiple of the "
                        f"model's stride {model.stride}")
    where = distributed.world()
    slots = distributed.shard(cfg.batch_size, where)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.to(device, memory_format=fmt).train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    ckpt = {"version": CHECKPOINT_VERSION, "family": getattr(model, "family", "single"),
            "config_type": type(model.config).__name__,
            "step": 0, "skipped": 0, "wall_s": 0.0,
            "model_config": asdict(model.config), "train_config": asdict(cfg),
            "history": {"train": [], "val": []}}
    path = Path(checkpoint_path) if checkpoint_path else None
    if resume and path and path.is_file():
        ckpt = _restore(load_checkpoint(path, device), ckpt, model, ema, optimizer)
        if where.rank:  # rank 0 continues its saved generator, the others reseed
            seed = distributed.noise_seed(cfg.seed, where.rank, ckpt["step"])
            torch.manual_seed(seed)
    else:  # the noise (own per rank); the weights were drawn by the caller
        torch.manual_seed(distributed.noise_seed(cfg.seed, where.rank))
    net, amp_dtype = distributed.wrap(model, device), autocast_dtype(device, amp)
    val_root = str(val_data) if isinstance(val_data, str | os.PathLike) else None
    if val_root:
        val_data = center_crops(val_root, cfg.val_crop, cfg.val_images)
    workers = ((0 if device.type == "cpu" else min(6, os.cpu_count() or 1))
               if num_workers is None else num_workers)  # Colab: 2 vCPUs
    end = cfg.steps if stop_at is None else max(ckpt["step"], min(stop_at, cfg.steps))
    loader = DataLoader(_KeyedPatches(train_data, cfg.seed), num_workers=workers,
                        batch_sampler=([(t, i) for i in slots]
                                       for t in range(ckpt["step"], end)),
                        pin_memory=device.type == "cuda",
                        generator=torch.Generator().manual_seed(cfg.seed))
    bar = tqdm(total=cfg.steps, initial=ckpt["step"],
               disable=not progress or where.rank > 0,
               desc=f"train λ={cfg.lmbda:g}", unit="step")
    recipe = {**make_recipe(cfg, train_data, val_data, val_root, device),
              "precision": PRECISIONS[amp_dtype], "world_size": where.size}
    if channels_last:
        recipe["memory_format"] = "channels_last"
    recipe.update(extra_recipe or {})
    # a resumed run keeps the lineage its first part recorded (--init is read
    # only when a run starts)
    parent = (ckpt.get("recipe") or {}).get("parent", parent)
    if parent is not None:
        recipe["parent"] = parent
    started, sums = time.perf_counter(), np.zeros(5)  # loss, bpp, mse, norm, count
    streak = 0  # skipped steps in a row
    for step, x in zip(range(ckpt["step"], end), loader, strict=True):
        x = x.to(device, non_blocking=True, memory_format=fmt)
        stats = train_step(net, optimizer, x, cfg, step, amp_dtype)
        if stats is not None:
            _ema_update(ema, model, cfg.ema_decay, step)
            sums += (*stats, 1)
        ckpt["skipped"] += stats is None
        streak = 0 if stats is not None else streak + 1
        if streak >= MAX_SKIPS_IN_A_ROW:
            raise DVAEError(f"training diverged: {streak} steps in a row up to step "
                            f"{step + 1} had a NaN loss or a gradient norm above "
                            f"grad_skip={cfg.grad_skip:g}; lower lr, or raise "
                            "grad_skip, and restart (or resume) the run")
        ckpt["step"] = done = step + 1
        bar.update()
        if done % cfg.log_every == 0 or done == end:
            row = dict(zip(("loss", "bpp", "mse", "grad_norm"),
                           (sums[:4] / max(sums[4], 1)).tolist(), strict=True))
            ckpt["history"]["train"].append({"step": done, **row, "lr": cfg.lr_at(step),
                                             "skipped": ckpt["skipped"]})
            bar.set_postfix(loss=f"{row['loss']:.3f}", bpp=f"{row['bpp']:.3f}")
            sums[:] = 0
        if done % cfg.val_every == 0 or done == end:
            if val_data is not None and where.rank == 0:
                # a model trained on something else than images (the prior on
                # cached latents) validates through the full model it is part of
                val = validate(getattr(ema, "validation_model", ema), val_data,
                               cfg.lmbda)
                ckpt["history"]["val"].append({"step": done, **val})
                bar.set_postfix(val_bpp=f"{val['bpp']:.3f}",
                                val_psnr=f"{val['psnr']:.2f}")
            ckpt["wall_s"] += time.perf_counter() - started
            started = time.perf_counter()
            rng = {"torch": torch.get_rng_state(), "cuda": (
                torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [])}
            ckpt.update(model=model.state_dict(), ema=ema.state_dict(),
                        optimizer=optimizer.state_dict(), rng=rng,
                        recipe={**recipe, "wall_time_s": round(ckpt["wall_s"], 1),
                                "skipped_steps": ckpt["skipped"]})
            if path and where.rank == 0:
                save_checkpoint(path, ckpt)
            distributed.barrier()  # the others wait for rank 0's files
    bar.close()
    return FitResult(ema, ckpt["history"], ckpt["skipped"], ckpt.get("recipe", recipe))


@torch.no_grad()
def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float,
                step: int) -> None:
    """``ema ← d·ema + (1-d)·model``, ``d = min(decay, (1+t)/(10+t))`` (a warm-up,
    as TensorFlow's ExponentialMovingAverage with ``num_updates``)."""
    d = min(decay, (1 + step) / (10 + step))
    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
        e.lerp_(p, 1.0 - d)


def _restore(saved: dict, fresh: dict, model, ema, optimizer) -> dict:
    """Load a full checkpoint into the run after checking it is the same run."""
    if saved.get("model_config") != fresh["model_config"]:
        raise DVAEError("the checkpoint's model_config differs from this run's; resume "
                        "with the same preset, or use another checkpoint path")
    # ``steps`` may change on resume (extend or shorten a run: the learning-rate
    # schedule follows the new total); every other recipe field must match.
    old, new = dict(saved.get("train_config") or {}), dict(fresh["train_config"])
    if {**old, "steps": None} != {**new, "steps": None}:
        raise DVAEError("the checkpoint's train_config differs from this run's (other "
                        "than steps); resume with the same configs, or use another "
                        "checkpoint path")
    if saved["step"] > new["steps"]:
        raise DVAEError(f"the checkpoint is at step {saved['step']}, past the "
                        f"{new['steps']} steps asked for")
    saved["train_config"] = new
    if "optimizer" not in saved:
        raise DVAEError("the checkpoint is a shipped fp16 file; it cannot be resumed")
    model.load_state_dict(saved["model"])
    ema.load_state_dict(saved["ema"])
    optimizer.load_state_dict(saved["optimizer"])
    torch.set_rng_state(saved["rng"]["torch"].cpu())
    if saved["rng"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in saved["rng"]["cuda"]])
    return saved


def load_or_train(path: str | os.PathLike, model_cfg: ModelConfig,
                  train_cfg: TrainConfig, train_data: Dataset | None = None,
                  val_data: Tensor | str | os.PathLike | None = None,
                  device: str | None = None, progress: bool = True) -> SingleLayerVAE:
    """The model at ``path`` if it exists, else train one there (resumably) and load it.

    Default data: random patches of :func:`~dvae_tutorial.data.train_dir`
    and centre crops of :func:`~dvae_tutorial.data.val_dir`.

    Raises:
        DVAEError: the file holds another architecture than ``model_cfg``.
        DataError: training is needed and no photos are found.
    """
    from .data import PatchDataset, train_dir, val_dir

    path = Path(path)
    if path.is_file():
        ckpt = load_checkpoint(path)
        if ModelConfig(**ckpt["model_config"]) != model_cfg:
            raise DVAEError(f"{path} holds a model with config "
                            f"{ckpt['model_config']}, not {model_cfg}")
        if "optimizer" not in ckpt or ckpt["step"] >= ckpt["train_config"]["steps"]:
            return load_model(path)
    seed_everything(train_cfg.seed)
    model = SingleLayerVAE(model_cfg)
    if train_data is None:
        train_data = PatchDataset(train_dir(), patch_size=train_cfg.patch_size,
                                  in_memory=True)
    if val_data is None:
        try:
            val_data = val_dir()
        except DataError:
            pass  # no validation photos: train without validation
    fit(model, train_cfg, train_data, val_data, device=device, checkpoint_path=path,
        progress=progress)
    return load_model(path)
