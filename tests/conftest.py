"""Shared fixtures and helpers: the dataset mirror (DVAE_DATA, else
../shared/data), and the small synthetic training set and model that the
training and distributed tests share."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
MIRROR = Path(os.environ.get("DVAE_DATA") or REPO.parent / "shared" / "data").resolve()


@pytest.fixture(scope="session")
def kodak():
    """The 24 Kodak images as uint8 HWC arrays, verified; skips without a mirror."""
    if not (MIRROR / "kodak" / "kodim24.png").is_file():
        pytest.skip(f"dataset mirror {MIRROR} is absent (set DVAE_DATA)")
    from dvae_tutorial.data import kodak_images

    mp = pytest.MonkeyPatch()
    mp.setenv("DVAE_DATA", str(MIRROR))
    mp.setenv("DVAE_OFFLINE", "1")
    try:
        return list(kodak_images())
    finally:
        mp.undo()


class SmoothPatches(torch.utils.data.Dataset):
    """Random smooth 64×64 patches, randomly flipped with torch's RNG."""

    def __init__(self, n: int = 12) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = F.interpolate(torch.rand(n, 3, 8, 8, generator=g), size=64,
                               mode="bilinear", align_corners=False)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.x[i].flip(-1) if torch.rand(()) < 0.5 else self.x[i]


def tiny_model(seed: int = 0):
    """A fresh ``TINY`` single-layer model with weights drawn from ``seed``."""
    from dvae_tutorial.configs import TINY
    from dvae_tutorial.single_layer_vae import SingleLayerVAE

    torch.manual_seed(seed)
    return SingleLayerVAE(TINY.model)
