"""Training speed per preset and precision: seconds per optimizer step.

For each preset (``--preset``, repeatable; default ``factorized``,
``factorized-wide``, ``hier3`` and ``hier12``) and each of the modes ``fp32``,
``fp32+channels_last``, ``bf16`` and ``bf16+channels_last`` (``--amp bf16``
and ``--channels-last`` of ``dvae train``), times
:func:`dvae_tutorial.training.train_step` on random patches of the preset's
own batch and patch size (or ``--batch`` / ``--patch``), best of
``--repeats`` after two warm-up steps, with ``torch.set_num_threads(--threads)``
(default 1: how the shipped models were trained, one run per core). Prints
ONE JSON object on stdout: per preset and mode ``s_per_step`` and
``speedup`` over fp32, plus whether the CPU has AMX (bfloat16 matrix
units, where bf16 pays). The hierarchical priors (``hier3``, ``hier12``) are
timed twice: the prior stage (``dvae train --freeze-transforms``: the prior
alone on random cached-latent crops, ``patch / 16`` a side) and end to end
(images through ``g_a``, the prior and ``g_s``).

Usage: ``python bench/training.py [--preset NAME] [--threads T] [--repeats R]``
(no data needed: the patches are random, the timing does not depend on them).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path

import torch

from dvae_tutorial.checkpoints import build_model
from dvae_tutorial.configs import LATENT_STRIDE, HierarchicalPriorConfig
from dvae_tutorial.hierarchical_prior import PriorTraining
from dvae_tutorial.train_cli import TRAIN_PRESETS
from dvae_tutorial.training import autocast_dtype, train_step

#: Mode name → (amp, channels_last), as ``dvae train --amp … [--channels-last]``.
MODES = {"fp32": ("off", False), "fp32+channels_last": ("off", True),
         "bf16": ("bf16", False), "bf16+channels_last": ("bf16", True)}
#: Batch and patch of the runs a shipped model comes from (preset defaults
#: otherwise): the from-scratch resnet12-845 was trained on 4 × 128².
SHIPPED_SHAPES = {"resnet12": (4, 128), "resnet3": (4, 128)}


def cpu_has_amx() -> bool:
    cpuinfo = Path("/proc/cpuinfo")
    return cpuinfo.is_file() and "amx_bf16" in cpuinfo.read_text()


def seconds_per_step(preset: str, mode: str, batch: int, patch: int,
                     repeats: int, prior_stage: bool = False) -> float:
    amp, channels_last = MODES[mode]
    torch.manual_seed(0)
    model = build_model(TRAIN_PRESETS[preset].model).train()
    cfg = dataclasses.replace(TRAIN_PRESETS[preset].train, batch_size=batch,
                              patch_size=patch, warmup_steps=1)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if prior_stage:  # the prior alone, on latent crops (std 3, like real y)
        model = PriorTraining(model)
        side = patch // LATENT_STRIDE
        x = 3 * torch.randn(batch, model.config.latent_channels, side, side)
    else:
        x = torch.rand(batch, 3, patch, patch)
    model = model.to(memory_format=fmt)
    x = x.contiguous(memory_format=fmt)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad],
                                 lr=1e-5)
    dtype = autocast_dtype(torch.device("cpu"), amp)
    times = []
    for step in range(2 + repeats):
        start = time.perf_counter()
        train_step(model, optimizer, x, cfg, step, dtype)
        times.append(time.perf_counter() - start)
    return min(times[2:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", action="append", choices=sorted(TRAIN_PRESETS),
                        help="preset to time (repeatable)")
    parser.add_argument("--batch", type=int, help="patches per step")
    parser.add_argument("--patch", type=int, help="patch side")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = []
    for preset in args.preset or ["factorized", "factorized-wide", "hier3", "hier12"]:
        default = SHIPPED_SHAPES.get(preset, (TRAIN_PRESETS[preset].train.batch_size,
                                              TRAIN_PRESETS[preset].train.patch_size))
        batch, patch = args.batch or default[0], args.patch or default[1]
        prior = isinstance(TRAIN_PRESETS[preset].model, HierarchicalPriorConfig)
        for stage in (["prior (cached latents)", "end to end"] if prior else [None]):
            times = {m: seconds_per_step(preset, m, batch, patch, args.repeats,
                                         prior_stage=stage == "prior (cached latents)")
                     for m in MODES}
            results.append({"preset": preset, "batch": batch, "patch": patch,
                            **({"stage": stage} if stage else {}),
                            "modes": {m: {"s_per_step": round(t, 4),
                                          "speedup": round(times["fp32"] / t, 2)}
                                      for m, t in times.items()}})
    print(json.dumps({"bench": "training", "threads": args.threads,
                      "cpu": platform.processor() or platform.machine(),
                      "amx_bf16": cpu_has_amx(), "torch": torch.__version__,
                      "results": results}, indent=1))


if __name__ == "__main__":
    main()
