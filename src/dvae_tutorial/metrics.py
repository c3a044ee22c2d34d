"""Distortion and rate measures: MSE, PSNR, bits and bits per pixel.

Backs the chapter *Emission distributions and distortion* and every results
table. Conventions (stated once, used everywhere):

- images are float in ``[0, 1]`` or uint8 in ``0..255``; PSNR is always
  computed on the **8-bit** values a decoder would write to a PNG;
- ``bpp`` is bits per **pixel** (bits / (H·W)), not per sub-pixel.
"""

from __future__ import annotations

import math

import numpy as np

#: Peak value of 8-bit images, the PSNR reference of the literature.
PEAK_8BIT = 255.0


def to_uint8(image) -> np.ndarray:
    """Float ``[0, 1]`` (numpy or torch, HWC or CHW with C=3) or uint8 → uint8 HWC.

    Floats are clipped to ``[0, 1]`` and rounded half-to-even times 255, the
    value a PNG writer stores.
    """
    if hasattr(image, "detach"):
        image = image.detach().cpu().numpy()
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = np.moveaxis(array, 0, -1)
    if array.dtype == np.uint8:
        return array
    return np.round(np.clip(array, 0.0, 1.0) * PEAK_8BIT).astype(np.uint8)


def mse_8bit(a, b) -> float:
    """Mean squared error between two images on the 0–255 scale."""
    a8, b8 = to_uint8(a).astype(np.float64), to_uint8(b).astype(np.float64)
    if a8.shape != b8.shape:
        raise ValueError(f"image shapes differ: {a8.shape} vs {b8.shape}")
    return float(np.mean((a8 - b8) ** 2))


def psnr_8bit(a, b) -> float:
    """PSNR in dB on 8-bit values: :math:`10\\log_{10}(255^2/\\mathrm{MSE})`.

    Identical images give ``inf``.
    """
    mse = mse_8bit(a, b)
    return math.inf if mse == 0 else 10.0 * math.log10(PEAK_8BIT**2 / mse)


def bpp(nbits: float, height: int, width: int) -> float:
    """Bits per pixel: ``nbits / (height * width)``."""
    return float(nbits) / (height * width)
