"""Shared fixtures: the dataset mirror (DVAE_DATA, else ../shared/data)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
