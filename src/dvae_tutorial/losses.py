"""The free energy as a loss: ``bpp + lmbda * mse``, its emission and its slope.

Backs the chapter *Emission distributions and distortion*. The emission
``p(x | y) ∝ exp(-λ d(g(y), x))`` with squared error is a Gaussian
(Ballé et al. 2017 [balle2017end]; Yang et al. 2023 [yang2023introduction]);
this module states its variance in the book's units, converts λ between
distortion scales, and reads λ off an operational rate–distortion curve.

Units, once: ``bits`` per image, ``bpp`` = bits / (H·W) per **pixel**,
``mse`` on images in [0, 1] averaged over the C = 3 channels, so λ is in bits
per pixel per unit of that MSE. Measures of images (8-bit MSE, PSNR, bpp of a
file) live in :mod:`dvae_tutorial.metrics`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from torch import Tensor

from .configs import MSE_SCALE_8BIT
from .errors import DVAEError

#: Channels of an RGB image: the MSE of the loss averages over them.
RGB_CHANNELS = 3
LN2 = math.log(2.0)


class RDTerms(NamedTuple):
    """``loss`` (scalar, mean over the batch), and per image ``bpp``, ``mse`` (B,)."""
    loss: Tensor
    bpp: Tensor
    mse: Tensor


def rate_distortion_loss(bits: Tensor, x_hat: Tensor, x: Tensor,
                         lmbda: float) -> RDTerms:
    """The training loss ``mean(bpp + lmbda * mse)`` of the book's image models.

    .. math:: \\mathcal L = \\frac1B\\sum_b \\Big[\\frac{\\text{bits}_b}{HW}
       + \\lambda\\,\\frac{1}{CHW}\\lVert \\hat x_b - x_b\\rVert^2\\Big]

    The same arithmetic, in the same order, as ``SingleLayerVAE.forward``
    (``bpp``, ``mse``) and ``training.train_step`` (``loss``).

    Args:
        bits: total bits of each image (all latents), shape (B,).
        x_hat, x: reconstructions and images (B, C, H, W) in [0, 1]; ``x_hat``
            is used as it is (no clamp), H·W are ``x``'s unpadded sides.
        lmbda: λ, weight of the MSE on [0, 1] (``lmbda / 255**2`` on 0–255).

    See: *Emission distributions and distortion*.
    """
    _check_images(x_hat, x)
    height, width = x.shape[-2:]
    bpp = bits / (height * width)
    mse = (x_hat - x).square().mean((1, 2, 3))
    return RDTerms((bpp + lmbda * mse).mean(), bpp, mse)


def lmbda_to_sigma(lmbda: float, channels: int = RGB_CHANNELS) -> float:
    """Standard deviation (on [0, 1]) of the Gaussian emission behind ``lmbda``.

    .. math:: \\sigma^2 = \\frac{C}{2\\lambda\\ln 2}

    With it, ``-log2 p(x | y) / (H·W) = lmbda * mse + const``. It is also the
    water level θ of a Gaussian source's R(D) where the slope is ``-lmbda``
    (C = 1 for a rate per sample and a squared error per sample).

    See: *Emission distributions and distortion* (the Gaussian emission).
    """
    _positive("lmbda", lmbda)
    return math.sqrt(channels / (2.0 * LN2 * lmbda))


def sigma_to_lmbda(sigma: float, channels: int = RGB_CHANNELS) -> float:
    """Inverse of :func:`lmbda_to_sigma`: ``lmbda = C / (2 ln2 sigma**2)``."""
    _positive("sigma", sigma)
    return channels / (2.0 * LN2 * sigma**2)


def gaussian_emission_constant(lmbda: float, channels: int = RGB_CHANNELS) -> float:
    """The constant of ``-log2 p(x|y) / (H·W) = lmbda * mse + const``, in bpp.

    .. math:: \\text{const} = \\frac C2\\log_2(2\\pi\\sigma^2)

    Negative for small σ: a density on [0, 1] can exceed 1."""
    sigma = lmbda_to_sigma(lmbda, channels)
    return 0.5 * channels * math.log2(2.0 * math.pi * sigma**2)


def gaussian_emission_nll(x: Tensor, x_hat: Tensor, lmbda: float) -> Tensor:
    """``-log2 N(x; x_hat, sigma**2)`` summed over an image, per pixel, shape (B,).

    .. math:: \\frac{1}{HW}\\sum_i \\Big[\\frac{(x_i-\\hat x_i)^2}{2\\sigma^2}
       + \\tfrac12\\ln(2\\pi\\sigma^2)\\Big] \\Big/ \\ln 2, \\qquad
       \\sigma = \\texttt{lmbda\\_to\\_sigma}(\\lambda, C)

    which equals ``lmbda * mse + gaussian_emission_constant(lmbda, C)``.

    Args: ``x``, ``x_hat`` images and means (B, C, H, W) on [0, 1]; ``lmbda``.
    """
    _check_images(x_hat, x)
    channels, height, width = x.shape[-3:]
    var = lmbda_to_sigma(lmbda, channels) ** 2
    nats = (x - x_hat).square().sum((1, 2, 3)) / (2.0 * var)
    nats = nats + channels * height * width * 0.5 * math.log(2.0 * math.pi * var)
    return nats / LN2 / (height * width)


def lmbda_to_8bit(lmbda: float) -> float:
    """λ per unit of 8-bit MSE, ``lmbda / 255**2``: 845 → CompressAI's 0.013."""
    return lmbda / MSE_SCALE_8BIT


def lmbda_from_8bit(lmbda_8bit: float) -> float:
    """λ per unit of MSE on [0, 1] from λ on 0–255: ``lmbda_8bit * 255**2``."""
    return lmbda_8bit * MSE_SCALE_8BIT


def lmbda_to_qres(lmbda: float) -> float:
    """QRes-VAE's λ for the book's ``lmbda``: its loss is nats per dimension
    (colour sample) plus λ·MSE on images in [−1, 1], which is
    ``(ln 2 / 3) · (bpp + (12 / ln 2) λ_QRes · MSE on [0, 1])``, so
    ``λ_QRes = lmbda · ln 2 / 12`` (845 → 48.8)."""
    return lmbda * LN2 / 12.0


def lmbda_per_sample(lmbda: float, channels: int = RGB_CHANNELS) -> float:
    """Chapter 1's λ, bits per unit of squared error of one sample, for the
    book's ``lmbda`` (bpp, MSE averaged over ``channels`` samples a pixel):
    ``bpp + lmbda·MSE = C · (bits per sample + (lmbda / C) · squared error)``."""
    return lmbda / channels


def implied_lmbda(rates, distortions) -> np.ndarray:
    """The λ each segment of an operational R–D curve stands for: ``-ΔR / ΔD``.

    .. math:: \\lambda_k = -\\frac{R_{k+1}-R_k}{D_{k+1}-D_k}

    At a minimum of ``R + λD`` on a differentiable convex curve the slope is
    ``dR/dD = -λ``; between the optima of ``λ_a < λ_b`` the chord's
    ``λ_k`` lies in ``[λ_a, λ_b]``. Units: those of R per unit of D.

    Args:
        rates, distortions: points of one curve, shape (n,), n ≥ 2, in order
            along the curve (distinct distortions).

    Returns:
        ``λ_k`` for the n − 1 segments, shape (n − 1,).

    See: *Emission distributions and distortion* (what λ buys).
    """
    r, d = np.asarray(rates, np.float64), np.asarray(distortions, np.float64)
    if r.ndim != 1 or r.shape != d.shape or r.size < 2:
        raise DVAEError(f"need two 1-D arrays of equal length >= 2, got shapes "
                        f"{r.shape} and {d.shape}")
    if np.any(np.diff(d) == 0):
        raise DVAEError("two points share a distortion: the slope is undefined")
    return -np.diff(r) / np.diff(d)


def match_distortion(distortion_of: Callable[[float], float], target: float,
                     lo: float, hi: float, *, tol: float,
                     integer: bool = False) -> tuple[float, float]:
    """Bisect a parameter until ``distortion_of(param)`` is within ``tol`` of target.

    ``distortion_of`` must be monotone on ``[lo, hi]`` (either way) and its
    values at the ends must bracket ``target``. With ``integer=True`` the
    parameter stays an integer (e.g. a JPEG quality) and the nearer of the two
    last neighbours is returned, within ``tol`` or not: check it.

    Returns ``(param, distortion_of(param))``. Raises DVAEError when the ends
    do not bracket ``target`` or 60 halvings miss ``tol`` (a jump).

    See: *Emission distributions and distortion* (same MSE, different pictures).
    """
    f_lo, f_hi = distortion_of(lo), distortion_of(hi)
    if (f_lo - target) * (f_hi - target) > 0:
        raise DVAEError(f"distortion {f_lo:g} at {lo:g} and {f_hi:g} at {hi:g} do "
                        f"not bracket the target {target:g}: widen [lo, hi]")
    for _ in range(60):
        if integer and hi - lo <= 1:
            return min([(lo, f_lo), (hi, f_hi)], key=lambda p: abs(p[1] - target))
        mid = (lo + hi) // 2 if integer else 0.5 * (lo + hi)
        f_mid = distortion_of(mid)
        if abs(f_mid - target) <= tol and not integer:
            return mid, f_mid
        if (f_mid - target) * (f_lo - target) > 0:
            lo, f_lo = mid, f_mid
        else:
            hi, f_hi = mid, f_mid
    raise DVAEError(f"no parameter in [{lo:g}, {hi:g}] gives a distortion within "
                    f"{tol:g} of {target:g}: the distortion jumps there")


def _positive(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise DVAEError(f"{name} must be finite and > 0, got {value!r}")


def _check_images(x_hat: Tensor, x: Tensor) -> None:
    if x.dim() != 4 or x_hat.shape != x.shape:
        raise DVAEError(f"expected x_hat and x of one shape (B, C, H, W), got "
                        f"{tuple(x_hat.shape)} and {tuple(x.shape)}")
