"""The commands that would reproduce the shipped models, and what they cost.

Backs the appendix *Training at scale* (``book/appendix_training_at_scale.ipynb``).
Every checkpoint carries its recipe and, through ``dvae train --init``, the
recipes of the runs before it (:mod:`~dvae_tutorial.checkpoints`);
:func:`reproduction_plan` turns them into one ``dvae train`` command per run,
each run once however many shipped models descend from it, parents first.
What a recipe did not record (an ancestor run's learning rate in the
shipped files, an early run's precision) is said in the run's ``notes``,
never guessed silently. Runs made since this edition record their preset,
their command line and, for an ``--init`` parent, its TrainConfig; the plan
uses them where they are there.

The architecture of an ancestor run is not stored; it is derived:
runs joined by an ``--init`` that copied every tensor exactly have the same
architecture, so a run shares the architecture of any checkpoint file in its
group (e.g. the narrow models of earlier editions are in the group of
``narrow/single-845-narrow.pt`` and of ``single-100``); a hierarchical prior
over frozen transforms starts from a single-layer model of the transforms'
size. Published training lengths to compare with (:data:`PUBLISHED_TRAINING`)
follow QRes-VAE [duan2023qresvae] and CompressAI's models of Minnen et al.
(2018) [begaint2020compressai, minnen2018joint].
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from .configs import (
    HIERARCHICAL_PRESETS,
    PAPER,
    PRESETS,
    VARIABLE_RATE_PRESETS,
    HierarchicalPriorConfig,
    VariableRateConfig,
)
from .configs import ModelConfig as _ModelConfig

#: Settings of a run's TrainConfig that ``dvae train`` takes as options.
CLI_SETTINGS = {"lmbda", "steps", "batch_size", "patch_size", "lr", "seed"}

#: Published training lengths, for scale. ``steps`` and ``batch`` are ranges
#: (low, high) where the source gives one.
PUBLISHED_TRAINING = {
    "QRes-VAE 34M": {
        "cite": "Duan et al. 2023", "steps": (PAPER.train.steps,) * 2,
        "batch": (PAPER.train.batch_size,) * 2, "crop": PAPER.train.patch_size,
        "gpus": 4, "gpu_hours": None,
        "source": "duanzhiihao/lossy-vae lvae/models/qresvae/README.md, 'Reproduce "
                  "our paper's results': torchrun on 4 GPUs, batch 16 per GPU, "
                  "600,000 iterations (configs.PAPER)"},
    "Minnen et al. 2018 mean-scale (CompressAI)": {
        "cite": "Bégaint et al. 2020", "steps": (4_000_000, 5_000_000),
        "batch": (16, 32), "crop": 256, "gpus": 1, "gpu_hours": (7 * 24, 14 * 24),
        "source": "InterDigitalInc/CompressAI docs/source/zoo.rst, 'Training': "
                  "4-5M steps on 256x256 patches, batch 16 or 32, 'between one or "
                  "two weeks' per model"},
}


@dataclass
class Run:
    """One training run behind the shipped models, as a command.

    Attributes:
        index: 1, 2, … in the order the runs must be made (parents first).
        saved_as: the file name the run wrote (as recorded).
        out: the file the reproduction writes (``runs/NN-<name>.pt``).
        preset: the ``dvae train --preset`` of its architecture, or None.
        config: that architecture (a config dataclass), or None if unknown.
        lmbda, step, steps, batch_size, patch_size: as recorded (``step``
            trained of ``steps`` planned).
        parent: the index of the run it started from (``--init``), or None.
        wall_time_s, device, precision: as recorded.
        argv: the command, one word per item.
        notes: what the recipe did not record, and what was derived.
        models: the checkpoint files whose lineage contains this run.
    """

    index: int
    saved_as: str
    out: str
    preset: str | None
    config: object
    lmbda: float
    step: int
    steps: int
    batch_size: int
    patch_size: int
    parent: int | None
    wall_time_s: float
    device: str | None
    precision: str | None
    argv: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)

    @property
    def pixels(self) -> int:
        """Training pixels the run saw: steps × batch × crop²."""
        return self.step * self.batch_size * self.patch_size ** 2

    @property
    def command(self) -> str:
        """The command as one shell line."""
        return " ".join(self.argv)


def _key(node: dict, step) -> tuple:
    """One run, whatever lineage it is read from (as the history appendix)."""
    return (node.get("lmbda"), step, node.get("wall_time_s"), node.get("git_commit"))


def _chain(path: Path, ckpt: dict) -> list[dict]:
    """The file's runs, newest first: each ``{"key", "node", "file", "step",
    "widened", "holder", "train", "config", "prior", "freeze"}``;
    ``widened``: the next newer run widened this one; ``holder``: this run is
    the single-layer model whose transforms a prior (the next newer run) was
    trained over; ``train`` and ``config``: the file's own TrainConfig and
    architecture (newest run only); ``freeze``: a prior run over frozen
    transforms."""
    from .checkpoints import model_config

    recipe = ckpt.get("recipe") or {}
    shared = (ckpt.get("shared") or {}).get("file")
    config = model_config(ckpt)
    prior = isinstance(config, HierarchicalPriorConfig)
    # a variable-rate model starts from a single-layer model's transforms: its
    # parent is a holder of them, not an exact --init of the same architecture
    variable = isinstance(config, VariableRateConfig)
    runs = [{"node": recipe, "file": path.name, "step": ckpt.get("step"),
             "widened": False, "holder": False, "train": ckpt.get("train_config"),
             "config": config, "prior": prior}]
    node = recipe
    while node.get("parent"):
        parent = node["parent"]
        holder = (prior and (parent.get("transforms_file") or shared) == parent["file"]
                  or variable and node is recipe)
        prior = prior and not holder
        runs.append({"node": parent, "file": parent.get("file"),
                     "step": parent.get("step"), "widened": bool(parent.get("widened")),
                     "holder": holder, "train": parent.get("train_config"),
                     "config": None, "prior": prior})
        node = parent
    frozen = bool(recipe.get("frozen"))
    for run in runs:
        run["key"] = _key(run["node"], run["step"])
        run["freeze"] = frozen and run["prior"]
    return runs


def _narrower(config) -> object | None:
    """The largest preset architecture of the same design as ``config`` with
    fewer channels *and* fewer latent channels (the book widens both: N = 64,
    M = 96 to N = 128, M = 192), or None."""
    if not isinstance(config, _ModelConfig):
        return None
    same = [p.model for p in PRESETS.values() if isinstance(p.model, _ModelConfig)
            and dataclasses.replace(p.model, channels=config.channels,
                                    latent_channels=config.latent_channels) == config
            and p.model.channels < config.channels
            and p.model.latent_channels < config.latent_channels]
    return max(same, key=lambda c: (c.channels, c.latent_channels), default=None)


def _architectures(chains: list[list[dict]]) -> dict[tuple, tuple[object, str]]:
    """Each run's architecture and how it is known (see the module note)."""
    group = {}

    def find(k):
        while group.setdefault(k, k) != k:
            k = group[k]
        return k

    for chain in chains:
        for newer, older in zip(chain, chain[1:], strict=False):
            if not (older["holder"] or older["widened"]):  # an exact --init
                group[find(older["key"])] = find(newer["key"])
    known = {find(c[0]["key"]): c[0]["config"] for c in chains}
    out = {}
    for chain in chains:
        for i, run in enumerate(chain):
            root = find(run["key"])
            if root in known:
                out[run["key"]] = (known[root], "")
                continue
            child = out[chain[i - 1]["key"]][0]
            if run["holder"] and child is not None:
                config = _ModelConfig(channels=child.channels,
                                      latent_channels=child.latent_channels,
                                      hyperprior=False, gdn=child.gdn)
                out[run["key"]] = (config, "architecture derived: the single-layer "
                                   "model of the prior's transforms")
            elif run["widened"]:
                out[run["key"]] = (_narrower(child), "architecture derived: the "
                                   "narrower preset the next run was widened from")
            else:
                out[run["key"]] = (child, "")
    return out


def reproduction_plan(paths=None, out_dir: str = "runs") -> list[Run]:
    """Every run behind the checkpoint files ``paths`` as a ``dvae train``
    command, each run once, parents before children.

    Args:
        paths: checkpoint files; by default the shipped models and those kept
            for comparison (``weights/*.pt`` and ``weights/*/*.pt``).
        out_dir: the folder the commands write into.

    Returns:
        :class:`Run` s; a shipped file's last run also ``--export`` s the
        float16 file to ship (``<out_dir>/shipped/<name>.pt``).
    """
    from .checkpoints import PACKAGE_WEIGHTS, load_checkpoint, preset_name

    if paths is None:
        paths = sorted(PACKAGE_WEIGHTS.glob("*.pt")) + sorted(
            PACKAGE_WEIGHTS.glob("*/*.pt"))
    files = [Path(p) for p in paths]
    chains = [_chain(p, load_checkpoint(p)) for p in files]
    arch = _architectures(chains)
    best: dict[tuple, dict] = {}  # a run read from its own file knows the most
    for chain in chains:
        for entry in chain:
            if entry["key"] not in best or entry["train"] is not None:
                best[entry["key"]] = entry
    order = sorted(range(len(files)), key=lambda i: (
        not isinstance(chains[i][0]["config"], _ModelConfig), chains[i][0]["node"]
        .get("lmbda") or 0, files[i].name))  # single-layer models first, by λ
    runs: dict[tuple, Run] = {}
    for i in order:
        oldest_first = chains[i][::-1]
        for k, entry in enumerate(oldest_first):
            key = entry["key"]
            if key not in runs:
                config, how = arch[key]
                parent = None if k == 0 else runs[oldest_first[k - 1]["key"]]
                runs[key] = _run(len(runs) + 1, best[key], config, how, parent,
                                 out_dir, preset_name)
            runs[key].models.append(files[i].stem)
        runs[chains[i][0]["key"]].argv += ["--export",
                                           f"{out_dir}/shipped/{files[i].name}"]
    return list(runs.values())


def _run(index, entry, config, how, parent, out_dir, preset_name) -> Run:
    from .checkpoints import device_label

    node, step = entry["node"], entry["step"]
    preset = node.get("preset") or (preset_name(config) if config is not None
                                    else None)
    run = Run(index=index, saved_as=entry["file"],
              out=f"{out_dir}/{index:02d}-{entry['file']}", preset=preset,
              config=config, lmbda=node.get("lmbda"), step=step,
              steps=node.get("steps", step), batch_size=node.get("batch_size"),
              patch_size=node.get("patch_size"),
              parent=None if parent is None else parent.index,
              wall_time_s=node.get("wall_time_s") or 0.0,
              device=device_label(node.get("device")), precision=node.get("precision"))
    notes = [how] if how else []
    world = node.get("world_size") or 1
    argv = (["torchrun", "--nproc_per_node", str(world), "-m", "dvae_tutorial.cli"]
            if world > 1 else ["dvae"])
    argv += ["train", "--preset", preset or "?", "--lmbda", f"{run.lmbda:g}",
             "--steps", str(run.steps), "--batch", str(run.batch_size),
             "--patch", str(run.patch_size)]
    if preset is None:
        notes.append("architecture not recorded and not derivable: no preset")
    train = entry["train"]
    defaults = TRAIN_PRESETS.get(preset)
    if train is None:
        notes.append("learning rate and seed not recorded: the preset's defaults")
    elif defaults is not None:
        base = dataclasses.asdict(defaults.train)
        for name, flag in (("lr", "--lr"), ("seed", "--seed")):
            if train.get(name) != base[name]:
                argv += [flag, f"{train[name]:g}"]
        other = sorted(k for k in base if k not in CLI_SETTINGS
                       and k in train and train[k] != base[k])
        if other:
            notes.append("recorded settings dvae train cannot set, differing from "
                         "the preset: " + ", ".join(f"{k}={train[k]}" for k in other))
    if parent is not None:
        argv += ["--init", parent.out]
    if entry["freeze"]:
        argv.append("--freeze-transforms")
        if node.get("rate_warmup") is not None:
            argv += ["--rate-warmup", *map(str, node["rate_warmup"])]
        elif entry["train"] is None:
            notes.append("rate warm-up not recorded: the default")
    if run.precision == "bf16-autocast":
        argv += ["--amp", "bf16"]
    else:
        argv += ["--amp", "off"]
        if run.precision is None:
            notes.append("precision not recorded: float32 (before --amp existed)")
    if node.get("memory_format") == "channels_last":
        argv.append("--channels-last")
    if step is not None and run.steps is not None and step < run.steps:
        # a run stopped early: its learning rate followed the planned length
        argv += ["--stop-at", str(step)]
    argv += ["--out", run.out]
    run.argv, run.notes = argv, notes
    return run


#: Every preset ``dvae train`` knows (as in :mod:`~dvae_tutorial.train_cli`).
TRAIN_PRESETS = {**PRESETS, **HIERARCHICAL_PRESETS, **VARIABLE_RATE_PRESETS}


def gpu_hours(cpu_seconds: float, speedup: float) -> float:
    """GPU hours for a run that took ``cpu_seconds`` on the recorded CPU, if a
    GPU is ``speedup`` times as fast (an assumption the caller states)."""
    if speedup <= 0:
        raise ValueError(f"speedup must be positive, got {speedup}")
    return cpu_seconds / 3600 / speedup


def published_pixels(name: str) -> tuple[float, float]:
    """Training pixels (low, high) of a :data:`PUBLISHED_TRAINING` entry:
    steps × batch × crop²."""
    entry = PUBLISHED_TRAINING[name]
    crop2 = entry["crop"] ** 2
    return (entry["steps"][0] * entry["batch"][0] * crop2,
            entry["steps"][1] * entry["batch"][1] * crop2)
