"""Where the code runs: CI mode, device choice and seeding.

The book's notebooks call :func:`in_ci` to shrink work (fewer steps, fewer
images) while running exactly the same code path; ``.ci/run`` sets ``CI=true``.
"""

from __future__ import annotations

import os
import random

import numpy as np


def env_flag(name: str) -> bool:
    """True when environment variable ``name`` is set to anything but
    empty, ``0``, ``false`` or ``no`` (case-insensitive)."""
    return os.environ.get(name, "").strip().lower() not in {"", "0", "false", "no"}


def in_ci() -> bool:
    """True when the environment variable ``CI`` is set to a true-ish value.

    CI mode shrinks the work a notebook does (training steps, image counts);
    it never switches to a different code path.
    """
    return env_flag("CI")


def pick(full, ci):
    """Return ``ci`` in CI mode and ``full`` otherwise (e.g. ``pick(4000, 300)``)."""
    return ci if in_ci() else full


def default_device() -> str:
    """``"cuda"`` when a GPU is visible to torch, else ``"cpu"``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def seed_everything(seed: int = 0) -> None:
    """Seed Python, NumPy and torch so that a notebook run is repeatable."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
