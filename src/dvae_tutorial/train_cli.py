"""The ``dvae train`` command: train a preset on a folder of photos.

A thin layer over :func:`dvae_tutorial.training.fit` (backs the book's
appendix on the ``dvae`` command and the training section of *A discretized
VAE codec*). torch is imported only when the command runs, so ``dvae --help``
stays fast; the package's errors become one line on stderr in :mod:`.cli`.

Launched by ``torchrun`` (``WORLD_SIZE`` > 1) the same command trains
data-parallel, one process per GPU (:mod:`~dvae_tutorial.distributed`); only
rank 0 prints, writes and exports.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import replace
from pathlib import Path

from .configs import AMP_MODES, HIERARCHICAL_PRESETS, PRESETS, VARIABLE_RATE_PRESETS
from .errors import DataError, DVAEError

#: Every preset ``dvae train`` knows: single-layer, hierarchical, variable-rate.
TRAIN_PRESETS = {**PRESETS, **HIERARCHICAL_PRESETS, **VARIABLE_RATE_PRESETS}

#: The end of ``dvae train --help``: precision and several GPUs.
EPILOG = """\
precision: with --amp auto (the default) a CUDA GPU that supports bfloat16
  runs the forward under torch.autocast(bfloat16); the rate stays float32.
  Other GPUs and the CPU train in float32. --amp bf16 autocasts on the CPU
  too: with --channels-last, 2.7x faster for the factorized models on a CPU
  with AMX (Intel Sapphire Rapids and later); the from-scratch ResNet VAE
  (resnet3, resnet12) gains only from --channels-last. The recipe records
  precision and memory format.

hierarchical models over a single-layer one (hier3, hier12), in two stages:
  dvae train --preset hier12 --lmbda 845 --init single-845 \\
      --freeze-transforms --out runs/hier12-845.pt
  trains the prior alone on cached latents (g_a, g_s of single-845 frozen;
  --init takes a checkpoint file or a shipped model's name); then
  dvae train --preset hier12 --lmbda 845 --init runs/hier12-845.pt \\
      --amp bf16 --channels-last --batch 8 --out runs/hier12-845-e2e.pt
  fine-tunes everything end to end on 256x256 patches.

one model for every rate (variable-rate, chapter 8): fine-tune a factorized
  single-layer model with per-channel gains learned at λ = 100, 300, 845,
  2500, 5000 (each patch's λ drawn anew; --lmbda is only the validation λ):
  dvae train --preset variable-rate --init single-845 --amp bf16 \\
      --channels-last --out runs/vr/vr.pt --export runs/vr/single-vr.pt
  then dvae compress --model single-vr --lmbda L (any L in 100 ... 5000).

several GPUs: launch the same command with torchrun, one process per GPU:
  torchrun --nproc_per_node 4 -m dvae_tutorial.cli train --preset resnet12 \\
      --out runs/resnet12.pt
  --batch stays the global batch (each of the N processes takes batch/N
  patches; it must be divisible by N). Rank 0 alone prints, validates and
  writes --out and --export; --resume restarts every process from --out.
"""


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _cli_train(args: argparse.Namespace) -> int:
    import torch

    from . import distributed
    from .runtime import default_device

    preset = TRAIN_PRESETS[args.preset]
    overrides = {"lmbda": args.lmbda, "steps": args.steps, "batch_size": args.batch,
                 "patch_size": args.patch, "seed": args.seed, "lr": args.lr}
    cfg = replace(preset.train, **{k: v for k, v in overrides.items() if v is not None})
    out = Path(args.out)
    if out.exists() and not args.resume:
        raise DVAEError(f"{out} exists; pass --resume to continue that run, or "
                        "choose another --out")
    device = args.device or default_device()
    if device == "cuda" and not torch.cuda.is_available():
        raise DVAEError("--device cuda was asked for, but torch sees no GPU")
    size = distributed.launched_size()
    if size == 1:
        return _train(args, preset, cfg, out, device)
    distributed.shard(cfg.batch_size, distributed.World(0, size))  # fail early
    try:
        return _train(args, preset, cfg, out, distributed.start(device))
    finally:
        distributed.stop()


def _train(args: argparse.Namespace, preset, cfg, out: Path, device) -> int:
    """Train (this process's part of) the run; rank 0 reports and exports."""
    from . import distributed
    from .checkpoints import build_model, load_checkpoint, save_checkpoint
    from .data import PatchDataset, train_dir, val_dir
    from .runtime import seed_everything
    from .training import fit

    rank, procs = distributed.world()
    say = print if rank == 0 else (lambda *a, **k: None)
    train_root = Path(args.train_dir) if args.train_dir else train_dir()
    patches = PatchDataset(train_root, patch_size=cfg.patch_size, in_memory=True)
    try:
        val_root = Path(args.val_dir) if args.val_dir else val_dir()
    except DataError:
        val_root = None
        say("dvae train: no validation photos found; training without validation",
            file=sys.stderr)
    where = f"{procs} processes on {device.type}" if procs > 1 else f"{device}"
    say(f"dvae train: preset {args.preset}, λ={cfg.lmbda:g} (bpp + λ·MSE on [0,1]),"
        f" {cfg.steps} steps of {cfg.batch_size}×{cfg.patch_size}² patches from "
        f"{len(patches.paths)} photos in {train_root}, on {where}", file=sys.stderr)
    seed_everything(cfg.seed)
    model = build_model(_model_config(preset.model, args, out))
    parent = _init_from(model, args.init) if args.init else None
    trained, data = model, patches
    extra = model.recipe_fields() if hasattr(model, "recipe_fields") else None
    if args.freeze_transforms:
        trained, data, extra = _prior_stage(model, args, cfg, out, train_root)
        say(f"dvae train: transforms frozen; the prior trains on {len(data)} cached "
            f"latents ({data.crop}×{data.crop} crops)", file=sys.stderr)
    extra = {**(extra or {}), **_command(args)}
    result = fit(trained, cfg, data, val_root, device=device, checkpoint_path=out,
                 resume=args.resume, progress=not args.quiet,
                 num_workers=args.workers, parent=parent, amp=args.amp,
                 channels_last=args.channels_last, extra_recipe=extra,
                 stop_at=args.stop_at)
    if rank > 0:
        return 0
    size = out.stat().st_size
    if args.export:
        save_checkpoint(args.export, load_checkpoint(out), fp16=True)
        size = Path(args.export).stat().st_size
    val = result.history["val"][-1] if result.history["val"] else None
    scores = f"val {val['bpp']:.3f} bpp (estimated), {val['psnr']:.2f} dB" if val \
        else "no validation"
    seconds = result.recipe.get("wall_time_s", 0.0)
    took = f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"
    done = result.history["train"][-1]["step"] if result.history["train"] else 0
    steps = f"{done} steps" if done == cfg.steps else f"{done} of {cfg.steps} steps"
    print(f"trained {args.preset} λ={cfg.lmbda:g}: {steps} "
          f"({result.skipped} skipped) in {took} on {where}, "
          f"{result.recipe['precision']}; {scores}; "
          f"wrote {args.export or out} ({size / 1e6:.1f} MB)")
    return 0


def _model_config(config, args: argparse.Namespace, out: Path):
    """The preset's architecture; a hierarchical prior takes its transforms'
    sizes (N, M, GDN) from the run it resumes, else from its ``--init``."""
    from dataclasses import fields

    from .checkpoints import load_checkpoint, model_config
    from .configs import HierarchicalPriorConfig

    if not isinstance(config, HierarchicalPriorConfig):
        return config
    source = out if args.resume and out.is_file() else args.init
    if source is None:
        return config
    own = model_config(load_checkpoint(_checkpoint_path(str(source))))
    names = {f.name for f in fields(own)} & {"channels", "latent_channels", "gdn"}
    return replace(config, **{n: getattr(own, n) for n in names})


def _prior_stage(model, args: argparse.Namespace, cfg, out: Path, train_root: Path):
    """``--freeze-transforms``: (the module to train, cached-latent crops, what
    the recipe adds). ``g_a`` is the one the run trains with: its parent's,
    or on ``--resume`` the checkpoint's."""
    from .checkpoints import load_checkpoint
    from .codec import fingerprint
    from .hierarchical_prior import RATE_WARMUP, HierarchicalPriorVAE, PriorTraining
    from .latent_cache import LatentCrops, cache_latents, latent_crop

    if not isinstance(model, HierarchicalPriorVAE):
        raise DVAEError("--freeze-transforms trains a hierarchical prior over frozen "
                        "transforms: use --preset hier3 or hier12")
    step = 0
    warmup = tuple(args.rate_warmup) if args.rate_warmup else RATE_WARMUP
    if args.resume and out.is_file():
        saved = load_checkpoint(out)
        model.load_state_dict(saved["model"])
        step = saved["step"]
    elif not args.init:
        raise DVAEError("--freeze-transforms needs --init CKPT (the single-layer "
                        "model whose transforms stay fixed)")
    stage = PriorTraining(model, warmup)  # checks the warm-up before caching
    cache_path = out.parent / f"latents-{fingerprint(model.g_a).hex()}.pt"
    cache = cache_latents(model.g_a, train_root, cache_path, progress=not args.quiet)
    crops = LatentCrops(cache, latent_crop(cfg.patch_size))
    extra = {"frozen": ["g_a", "g_s"], "latent_cache": cache_path.name,
             "latent_crop": crops.crop, "latents_skipped": crops.skipped,
             "rate_warmup": list(warmup)}
    stage.step = step  # where the rate warm-up stands
    return stage, crops, extra


def _checkpoint_path(name_or_path: str) -> Path:
    """``--init``'s file: a path, or the name of a shipped model."""
    from .codec import WEIGHTS_DIR

    path = Path(name_or_path)
    shipped = WEIGHTS_DIR / f"{name_or_path}.pt"
    return shipped if not path.exists() and shipped.is_file() else path


def _init_from(model, path: str) -> dict:
    """Load the EMA weights of checkpoint ``path`` into ``model`` (fine-tuning
    from another λ, or widening: a preset with more channels gets the parent's
    weights in its leading slices); returns what the recipe records about that
    parent run."""
    from .checkpoints import ema_weights, load_checkpoint, transfer_weights
    from .hierarchical_prior import HierarchicalPriorVAE

    path = _checkpoint_path(path)
    ckpt = load_checkpoint(path)
    # a hierarchical prior over a single-layer model: its transforms only
    only = (("g_a.", "g_s.") if isinstance(model, HierarchicalPriorVAE)
            and ckpt.get("config_type", "ModelConfig") == "ModelConfig"
            and ckpt.get("family", "single") == "single" else ())
    state = ema_weights(ckpt)
    if hasattr(model, "start_from_single"):  # variable-rate: from a factorized model
        if "y_prior.mean" not in state:
            raise DVAEError(f"--init {path}: a variable-rate model starts from a "
                            "factorized single-layer model (e.g. single-845)")
        model.start_from_single(state, float(ckpt["recipe"]["lmbda"]))
        only = ("g_a.", "g_s.")
    elif only and "y_prior.mean" in state:  # the hierarchy starts as the parent's prior
        model.prior.start_from_factorized(state["y_prior.mean"],
                                          state["y_prior.raw_scale"])
    try:
        widened = transfer_weights(model, state, only=only)
    except DVAEError as err:
        raise DVAEError(f"--init {path} (config {ckpt['model_config']}): {err}") from None
    recipe = ckpt.get("recipe", {})
    return {"file": Path(path).name, "step": ckpt["step"], "widened": widened,
            "transforms_file": _transforms_file(ckpt, path),
            "train_config": ckpt.get("train_config"),
            **{k: recipe.get(k) for k in ("lmbda", "steps", "batch_size", "patch_size",
                                          "device", "world_size", "precision",
                                          "memory_format", "wall_time_s", "git_commit",
                                          "preset", "command", "parent")}}


def _command(args: argparse.Namespace) -> dict:
    """The preset and the command line, for the recipe: with the parent's
    (kept in its lineage) they say how to remake every run of a model."""
    fields = {"preset": args.preset}
    if getattr(args, "argv", None) is not None:
        fields["command"] = shlex.join(["dvae", *args.argv])
    return fields


def _transforms_file(ckpt: dict, path: Path) -> str:
    """The file that holds a checkpoint's transforms: its own, or — for a
    prior trained over frozen transforms — its parent's (recursively), which
    a shipped file then shares instead of storing them again."""
    if "shared" in ckpt:
        return Path(ckpt["shared"]["file"]).name
    recipe = ckpt.get("recipe") or {}
    if recipe.get("frozen") and recipe.get("parent"):
        return recipe["parent"].get("transforms_file") or recipe["parent"]["file"]
    return Path(path).name


def add_train_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``dvae train`` to the ``dvae`` command's subparsers."""
    parser = sub.add_parser(
        "train", help="train a model preset on photos and write a checkpoint",
        description="Train a discretized VAE preset on random patches of a folder\n"
        "of photos (default: the mirror's train/, else COCO in the cache),\n"
        "validating on centre crops of val/. Loss per image: bpp + λ·MSE with\n"
        "MSE on [0, 1] (λ = 845 is CompressAI's 0.013 on the 0–255 scale).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(TRAIN_PRESETS), default="book",
                        help="model and recipe (default: book)")
    parser.add_argument("--lmbda", type=float, help="λ, weight of the MSE on [0, 1]")
    parser.add_argument("--steps", type=_positive_int, help="optimizer steps")
    parser.add_argument("--out", required=True, help="checkpoint file to write")
    parser.add_argument("--batch", type=_positive_int, help="patches per step")
    parser.add_argument("--patch", type=_positive_int,
                        help="patch side in pixels, a multiple of the model's stride")
    parser.add_argument("--lr", type=float, help="Adam learning rate after warm-up")
    parser.add_argument("--init", metavar="CKPT",
                        help="start from this checkpoint's (EMA) weights (a file, or "
                        "a shipped model's name), e.g. a model trained at another λ;"
                        " recorded as the recipe's parent")
    parser.add_argument("--seed", type=int, help="seed of weights, patches and noise")
    parser.add_argument("--train-dir", help="folder of training photos")
    parser.add_argument("--val-dir", help="folder of validation photos")
    parser.add_argument("--device", choices=["cpu", "cuda"],
                        help="default: cuda when available")
    parser.add_argument("--workers", type=int,
                        help="data-loading processes (default 0 on CPU, 6 on GPU)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run saved in --out")
    parser.add_argument("--stop-at", type=_positive_int, metavar="STEP",
                        help="stop after this step, the learning rate still "
                        "following --steps (--resume continues the run)")
    parser.add_argument("--export", metavar="PATH",
                        help="also write the EMA weights in float16 (a small file "
                        "to ship)")
    parser.add_argument("--amp", choices=AMP_MODES, default="auto",
                        help="auto: bfloat16 autocast on a CUDA GPU that has it; "
                        "bf16: bfloat16 autocast on any device (CPUs with AMX); "
                        "off: float32 everywhere (default: auto)")
    parser.add_argument("--channels-last", action="store_true",
                        help="channels_last memory format (faster on CPU)")
    parser.add_argument("--freeze-transforms", action="store_true",
                        help="hier3/hier12 with --init a single-layer model: keep "
                        "its g_a/g_s fixed and train only the prior, on cached "
                        "latents of the photos (written next to --out)")
    parser.add_argument("--rate-warmup", type=int, nargs=2, metavar=("START", "END"),
                        help="with --freeze-transforms: the z layers' bits weigh 0 "
                        "until step START, then rise linearly to 1 at END (default "
                        "500 1000; 0 0 for none, when --init is a trained prior)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=_cli_train)
