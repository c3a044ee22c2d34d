"""Checkpoints: what a trained model is stored as, and how it was made.

Backs *A discretized VAE codec* (shipped checkpoints). A checkpoint is a dict
of tensors and plain Python values (``torch.load(weights_only=True)`` reads
it, no pickle of code): the configs as dicts, the weights, the EMA weights,
the optimizer and RNG states (full checkpoints, resumable by
:func:`~dvae_tutorial.training.fit`), and the *recipe* — data, steps, device,
wall time, git commit — that a results table or model card needs. Shipped
files keep only the EMA weights in float16.
"""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import torch

from . import __version__
from .configs import ModelConfig, TrainConfig
from .errors import DVAEError
from .single_layer_vae import SingleLayerVAE

#: Version of the checkpoint dict's layout (bump when keys change meaning).
CHECKPOINT_VERSION = 1
#: Keys a shipped (fp16, EMA-only) checkpoint keeps; it cannot be resumed.
SHIPPED_KEYS = ("version", "family", "config_type", "model_config", "train_config",
                "step", "history", "recipe", "shared")


def _cpu_name(threads: int) -> str:
    return f"cpu {platform.machine()}, {threads} thread{'s' if threads != 1 else ''}"


def device_label(recorded: str | None) -> str | None:
    """A recipe's ``device`` for a table: recipes written before the plural
    was right say "1 threads"."""
    return None if recorded is None else recorded.replace(", 1 threads", ", 1 thread")


def make_recipe(cfg: TrainConfig, train_data, val_data, val_root, device) -> dict:
    """How the model was made: what a results table or model card needs."""
    paths = [str(p) for p in getattr(train_data, "paths", [])]
    try:
        git = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10, cwd=Path(__file__).parent)
        commit = git.stdout.strip() if git.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    return {
        "lmbda": cfg.lmbda, "steps": cfg.steps, "batch_size": cfg.batch_size,
        "patch_size": cfg.patch_size,
        "train_data": os.path.commonpath(paths) if paths else type(train_data).__name__,
        "train_images": len(paths) if paths else len(train_data),
        "val_data": val_root, "val_images": 0 if val_data is None else len(val_data),
        "device": (torch.cuda.get_device_name(device) if device.type == "cuda"
                   else _cpu_name(torch.get_num_threads())),
        "torch_version": str(torch.__version__), "package_version": __version__,
        "git_commit": commit,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def save_checkpoint(path: str | os.PathLike, checkpoint: dict,
                    fp16: bool = False) -> Path:
    """Write a checkpoint dict atomically (a temporary file, then a rename).

    With ``fp16=True`` only :data:`SHIPPED_KEYS` and the EMA weights in
    float16 are kept: a small file to ship, which :func:`load_model` reads
    but :func:`fit` cannot resume. A model trained with parts frozen at its
    parent's weights (the recipe's ``frozen``: a hierarchical prior over a
    shipped single-layer model) stores only its own weights and a
    ``shared`` record (the parent's file — the ancestor that holds the
    transforms, when the parent was itself such a prior — the parts, their
    SHA-256):
    :func:`load_checkpoint` fills them in from the parent, found next to the
    file or among the package's shipped weights, and refuses a parent whose
    weights differ. See: *A discretized VAE codec* (shipped checkpoints).
    """
    path = Path(path)
    if fp16:
        ema = {k: v.half() if v.is_floating_point() else v
               for k, v in checkpoint["ema"].items()}
        checkpoint = {**{k: checkpoint[k] for k in SHIPPED_KEYS if k in checkpoint},
                      "ema": ema}
        recipe = checkpoint.get("recipe") or {}
        if recipe.get("frozen") and recipe.get("parent"):  # transforms = the parent's
            prefixes = tuple(f"{name}." for name in recipe["frozen"])
            shared = {k: v for k, v in ema.items() if k.startswith(prefixes)}
            parent = recipe["parent"]  # the file that holds those transforms
            checkpoint["shared"] = {"file": parent.get("transforms_file")
                                    or parent["file"],
                                    "prefixes": list(prefixes),
                                    "sha256": _digest(shared)}
            checkpoint["ema"] = {k: v for k, v in ema.items() if k not in shared}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(checkpoint, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | os.PathLike,
                    map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint dict (tensors and plain values only)."""
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise DVAEError(f"no checkpoint at {path}") from None
    except Exception as err:  # torch reports bad files in many ways
        raise DVAEError(f"{path} is not a readable checkpoint ({err})") from None
    if not isinstance(ckpt, dict) or ckpt.get("version") != CHECKPOINT_VERSION:
        raise DVAEError(f"{path} is not a dvae-tutorial checkpoint of version "
                        f"{CHECKPOINT_VERSION}")
    if "shared" in ckpt:
        ckpt["ema"] = {**_shared_weights(Path(path), ckpt["shared"], map_location),
                       **ckpt["ema"]}
    return ckpt


#: Where a shipped file's parent is looked for after the file's own folder.
PACKAGE_WEIGHTS = Path(__file__).parent / "weights"


def _digest(tensors: dict) -> str:
    """SHA-256 of named tensors' values (``+ 0.0``: −0 and +0 hash alike, as an
    EMA step that leaves a frozen weight unchanged may flip a zero's sign)."""
    digest = hashlib.sha256()
    for key, value in sorted(tensors.items()):
        digest.update(key.encode())
        digest.update((value.detach().cpu().double() + 0.0).numpy().tobytes())
    return digest.hexdigest()


def _shared_weights(path: Path, shared: dict, map_location) -> dict:
    """The parent's tensors a shipped file shares (see :func:`save_checkpoint`)."""
    name = Path(shared["file"]).name
    for folder in (path.parent, PACKAGE_WEIGHTS):
        if (folder / name).is_file() and (folder / name).resolve() != path.resolve():
            parent = load_checkpoint(folder / name, map_location)["ema"]
            tensors = {k: v.half() if v.is_floating_point() else v
                       for k, v in parent.items()
                       if k.startswith(tuple(shared["prefixes"]))}
            if _digest(tensors) == shared["sha256"]:
                return tensors
            raise DVAEError(f"{path} shares weights with {folder / name}, whose "
                            "weights have changed since")
    raise DVAEError(f"{path} shares its {', '.join(shared['prefixes'])} weights with "
                    f"{name}, which is not next to it nor shipped")


def build_model(config) -> torch.nn.Module:
    """A fresh model for a config: :class:`SingleLayerVAE` for a
    :class:`~dvae_tutorial.configs.ModelConfig`,
    :class:`~dvae_tutorial.hierarchical_prior.HierarchicalPriorVAE` for a
    :class:`~dvae_tutorial.configs.HierarchicalPriorConfig`,
    :class:`~dvae_tutorial.hierarchical_vae.HierarchicalVAE` for a
    :class:`~dvae_tutorial.configs.HierarchicalConfig`."""
    from .configs import (
        HierarchicalConfig,
        HierarchicalPriorConfig,
        VariableRateConfig,
    )

    if isinstance(config, ModelConfig):
        return SingleLayerVAE(config)
    if isinstance(config, HierarchicalPriorConfig):
        from .hierarchical_prior import HierarchicalPriorVAE

        return HierarchicalPriorVAE(config)
    if isinstance(config, HierarchicalConfig):
        from .hierarchical_vae import HierarchicalVAE

        return HierarchicalVAE(config)
    if isinstance(config, VariableRateConfig):
        from .variable_rate import VariableRateVAE

        return VariableRateVAE(config)
    raise DVAEError(f"no model family for a config of type {type(config).__name__}")


def model_config(checkpoint: dict):
    """The checkpoint's architecture as its config dataclass.

    ``config_type`` names the dataclass (written since the hierarchical prior
    exists); older files have none and are told apart by ``family``.
    """
    from .configs import (
        HierarchicalConfig,
        HierarchicalPriorConfig,
        VariableRateConfig,
    )

    types = {t.__name__: t for t in (ModelConfig, HierarchicalConfig,
                                     HierarchicalPriorConfig, VariableRateConfig)}
    family = checkpoint.get("family", "single")
    name = checkpoint.get("config_type") or (
        "ModelConfig" if family == "single" else "HierarchicalConfig")
    if name not in types:
        raise DVAEError(f"the checkpoint holds a model of unknown type {name!r}")
    return types[name](**checkpoint["model_config"])


def load_model(path: str | os.PathLike,
               map_location: str | torch.device = "cpu") -> torch.nn.Module:
    """The model of a checkpoint's config with its EMA weights (float32, eval mode).

    :func:`model_config` picks the class (:func:`build_model`).
    """
    ckpt = load_checkpoint(path, map_location)
    model = build_model(model_config(ckpt))
    model.load_state_dict(ema_weights(ckpt))
    return model.to(map_location).eval()


def ema_weights(checkpoint: dict) -> dict:
    """The checkpoint's EMA weights as a float32 state dict (shipped files
    store them in float16)."""
    return {k: v.float() if v.is_floating_point() else v
            for k, v in checkpoint["ema"].items()}


@torch.no_grad()
def transfer_weights(model: torch.nn.Module, state: dict,
                     only: tuple[str, ...] = ()) -> list[str]:
    """Load ``state`` into ``model``, also into a *wider* model of the same design.

    A tensor of the same shape is copied; a tensor that is larger along some
    dimensions (e.g. a model with more latent channels) receives the parent's
    values in its leading slice and keeps its fresh initialisation elsewhere.
    Returns the names of those partly copied tensors (empty: an exact load).
    With ``only`` (name prefixes, e.g. ``("g_a.", "g_s.")``) just those
    tensors are required and copied; the rest of ``model`` keeps its
    initialisation (a hierarchical prior over a single-layer model's
    transforms).

    Raises:
        DVAEError: a name missing on either side, or a tensor smaller than the
            parent's or of another rank (another architecture).

    See: *A discretized VAE codec* (training at high rates).
    """
    own = model.state_dict()
    if only:
        own = {k: v for k, v in own.items() if k.startswith(only)}
        state = {k: v for k, v in state.items() if k.startswith(only)}
    missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or extra:
        raise DVAEError(f"the weights do not fit this model: missing {missing[:3]}, "
                        f"unexpected {extra[:3]} (another architecture?)")
    partial = []
    for name, target in own.items():
        source = state[name].to(target.dtype)
        if source.shape == target.shape:
            target.copy_(source)
        elif source.dim() == target.dim() and all(
                a <= b for a, b in zip(source.shape, target.shape, strict=True)):
            target[tuple(slice(0, n) for n in source.shape)] = source
            partial.append(name)
        else:
            raise DVAEError(f"the weights do not fit this model: {name} is "
                            f"{tuple(source.shape)}, the model's "
                            f"{tuple(target.shape)}")
    return partial


def lineage(recipe: dict) -> list[dict]:
    """The runs a checkpoint was trained by, oldest first.

    A run started with ``dvae train --init`` records its parent (and the
    parent's parent…) in its recipe; each entry here is ``{"lmbda", "steps",
    "wall_time_s"}`` of one run, ``steps`` counting the steps it actually
    trained (a parent may have been stopped before its planned end).
    """
    runs, node = [], recipe
    while node:
        steps = node.get("step", node.get("steps"))
        runs.append({"lmbda": node.get("lmbda"), "steps": steps,
                     "wall_time_s": node.get("wall_time_s") or 0.0})
        node = node.get("parent")
    return runs[::-1]


def preset_name(config) -> str | None:
    """The ``dvae train --preset`` whose architecture ``config`` is, or None.

    A hierarchical prior (``hier3``, ``hier12``) takes its transforms' sizes
    from its parent, so only its prior's layout is compared."""
    from dataclasses import asdict

    from .configs import (
        HIERARCHICAL_PRESETS,
        PRESETS,
        VARIABLE_RATE_PRESETS,
        HierarchicalPriorConfig,
    )

    transforms = {"channels", "latent_channels", "gdn"}
    own = asdict(config)
    for name, preset in {**PRESETS, **HIERARCHICAL_PRESETS,
                         **VARIABLE_RATE_PRESETS}.items():
        if type(preset.model) is not type(config):
            continue
        theirs = asdict(preset.model)
        if isinstance(config, HierarchicalPriorConfig):
            own_prior = {k: v for k, v in own.items() if k not in transforms}
            if own_prior == {k: v for k, v in theirs.items() if k not in transforms}:
                return name
        elif own == theirs:
            return name
    return None


def _runs(name: str, ckpt: dict) -> list[dict]:
    """The runs that made a checkpoint, oldest first: the file each saved, the
    steps it trained (of those planned), its batch, crop, device, precision,
    wall time and commit, and the run it started from (``--init``: a file and
    its step) with the number of tensors it widened from it."""
    runs = []
    node, saved_as, step = ckpt.get("recipe") or {}, name, ckpt.get("step")
    while node:
        parent = node.get("parent") or None
        runs.append({
            "file": saved_as, "step": step if step is not None else node.get("steps"),
            "steps": node.get("steps"), "lmbda": node.get("lmbda"),
            "batch_size": node.get("batch_size"), "patch_size": node.get("patch_size"),
            "device": device_label(node.get("device")), "precision": node.get("precision"),
            "memory_format": node.get("memory_format"),
            "wall_time_s": node.get("wall_time_s"), "git_commit": node.get("git_commit"),
            "init": None if parent is None else (parent.get("file"), parent.get("step")),
            "widened": 0 if parent is None else len(parent.get("widened") or []),
        })
        if parent is None:
            break
        node, saved_as, step = parent, parent.get("file"), parent.get("step")
    return runs[::-1]


def training_history(paths=None) -> list[dict]:
    """How each checkpoint was made, read from its recipe and lineage: one
    dict per file, for a table of the shipped models (the appendix *Training
    history* renders it).

    Args:
        paths: checkpoint files; by default the shipped models
            (``weights/*.pt``), ordered by family and λ.

    Returns:
        Per file: ``name``, ``family``, ``lmbda``, ``preset`` (or None),
        ``config`` (the architecture as a dict), ``parameters`` and
        ``trained_parameters`` (less the parts frozen at the parent's
        weights), ``init`` (``(file, step)`` of the ``--init`` parent, or
        None), ``widened`` (tensors widened from it), ``transforms_file``
        (for a prior over frozen transforms: the file that holds them),
        ``frozen``, the last run's ``step`` (trained), ``steps`` (planned),
        ``batch_size``, ``patch_size``, ``latent_crop``, ``lr``,
        ``warmup_steps`` (learning-rate warm-up), ``rate_warmup`` (the ``z``
        layers' rate warm-up, hierarchical priors), ``precision``,
        ``memory_format``, ``device``, ``wall_time_s``, ``train_images``,
        ``date``, ``git_commit``, ``file_bytes``; ``runs``, every run of the
        lineage oldest first (see :func:`_runs`), and their ``total_steps``
        and ``total_wall_time_s``.
    """
    from dataclasses import asdict

    from .layers import count_parameters

    if paths is None:
        paths = sorted(PACKAGE_WEIGHTS.glob("*.pt"))
    rows = []
    for path in map(Path, paths):
        ckpt = load_checkpoint(path)
        recipe, train = ckpt.get("recipe") or {}, ckpt.get("train_config") or {}
        config = model_config(ckpt)
        model = build_model(config)
        frozen = list(recipe.get("frozen") or [])
        parameters = count_parameters(model)
        trained = parameters - sum(count_parameters(getattr(model, part))
                                   for part in frozen if hasattr(model, part))
        parent = recipe.get("parent") or None
        runs = _runs(path.name, ckpt)
        rows.append({
            "name": path.stem, "family": ckpt.get("family") or "single",
            "lmbda": recipe.get("lmbda", train.get("lmbda")),
            "preset": preset_name(config), "config": asdict(config),
            "parameters": parameters, "trained_parameters": trained,
            "init": None if parent is None else (parent.get("file"), parent.get("step")),
            "widened": 0 if parent is None else len(parent.get("widened") or []),
            "transforms_file": (ckpt["shared"]["file"] if "shared" in ckpt else None),
            "frozen": frozen, "step": ckpt.get("step"),
            "steps": recipe.get("steps", train.get("steps")),
            "batch_size": recipe.get("batch_size", train.get("batch_size")),
            "patch_size": recipe.get("patch_size", train.get("patch_size")),
            "latent_crop": recipe.get("latent_crop"),
            "lr": train.get("lr"), "warmup_steps": train.get("warmup_steps"),
            "rate_warmup": (tuple(recipe["rate_warmup"]) if recipe.get("rate_warmup")
                            is not None else None),
            "precision": recipe.get("precision"),
            "memory_format": recipe.get("memory_format"),
            "device": device_label(recipe.get("device")),
            "wall_time_s": recipe.get("wall_time_s"),
            "train_images": recipe.get("train_images"), "date": recipe.get("date"),
            "git_commit": recipe.get("git_commit"), "file_bytes": path.stat().st_size,
            "runs": runs, "total_steps": sum(r["step"] or 0 for r in runs),
            "total_wall_time_s": sum(r["wall_time_s"] or 0.0 for r in runs),
        })
    if paths is None or all(Path(p).parent == PACKAGE_WEIGHTS for p in paths):
        # the single-layer models (every other family's parents) first, then by λ
        rows.sort(key=lambda r: (r["family"] != "single", r["lmbda"] or 0, r["name"]))
    return rows
