"""Discretized priors: a continuous density convolved with the unit box.

Backs the chapter *Discretized priors and entropy coding*. Follows Ballé et
al. (2018) (the discretized Gaussian prior) and the uniform-noise view of
Yang, Mandt & Theis (2023).

For a continuous cdf ``F`` (Gaussian, or logistic for contrast) the
discretized prior has density

.. math:: \\hat p(y) = F(y + \\tfrac12) - F(y - \\tfrac12).

It is the density of ``mean + scale * n + u`` with ``u ~ U(-1/2, 1/2)``: a
proper density for the noisy latent ``y_tilde`` during training, shaped like
``F``'s density, never zero, and a pmf on any lattice ``c + Z`` (the one the
coder uses is ``mean + Z``, see :mod:`dvae_tutorial.quantization`).

Numerical care (why the code is not ``F(y + 0.5) - F(y - 0.5)``): far from
the mean both cdf values round to 0 or 1 and their difference to 0, so

1. both distributions are symmetric: the bin is mirrored to the *lower* tail,
   ``t = -|y - mean|``, where the cdf is small and has full relative
   precision, and the difference is taken in log space,
   ``log F(b) + log(1 - exp(log F(a) - log F(b)))``;
2. far in the tail the two log-cdfs are huge and nearly equal, so their
   difference comes from the asymptotic expansion instead (a fallback);
3. when the bin is narrower than float resolution (enormous scales) the
   midpoint rule ``density * 1`` is used;
4. scales are clamped below by :data:`SCALE_LOWER_BOUND`.

Mixed precision: the log-masses are always evaluated in at least float32,
also inside ``torch.autocast`` (see :func:`_rate_in_float32`).
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

#: Smallest scale the priors use. At scale 0.11 and mean on the lattice, the
#: central bin already holds 1 - 6e-6 of the mass, so smaller scales change the
#: code length by < 1e-5 bits and only cause numerical trouble. Ballé et al.
#: (2018) and CompressAI use the same bound.
SCALE_LOWER_BOUND = 0.11

#: Gaussian far-tail switch, in scales from the mean. Beyond it
#: ``log Phi(x) = -x^2/2 - log(-x) - log(2 pi)/2 + O(x^-2)`` is exact to double
#: precision, and the direct difference of two log-cdfs of size ~x^2/2 loses
#: digits (at ``|y - mean| ~ 1e16`` it is exactly 0).
GAUSSIAN_FAR_TAIL = 1e3

#: Logistic far-tail switch: below -40, ``log sigmoid(x) = x - log1p(e^x)``
#: equals ``x`` to within e^-40 ~ 4e-18, below double precision.
LOGISTIC_FAR_TAIL = 40.0

#: Half-width, in scales, of the support :func:`discretized_gaussian_entropy`
#: sums over: the mass beyond 12 scales is 2 Q(12) ~ 4e-33, so the entropy is
#: exact to double precision.
ENTROPY_SUPPORT_SIGMAS = 12.0

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)

#: Dtypes too coarse for a rate: bfloat16 keeps 8 significant bits (a
#: log-mass of 10 nats rounds by up to 0.03), float16 overflows at 65504 (the
#: far-tail squares) and neither can sum 10^5 log-masses.
_HALF_DTYPES = (torch.float16, torch.bfloat16)


def _rate_in_float32(log_mass):
    """Evaluate ``log_mass(y, mean, scale)`` in float32 at least, even under autocast.

    Mixed-precision training runs the transforms under ``torch.autocast``, so
    their outputs (the latents, and means and scales from convolutions) come
    here in bfloat16. The rate is computed with autocast off and those inputs
    cast to float32; float32 and float64 inputs are untouched, so results
    outside autocast are exactly those of ``log_mass`` itself.
    """

    @functools.wraps(log_mass)
    def guarded(y: Tensor, mean: Tensor, scale: Tensor) -> Tensor:
        args = (y, mean, scale)
        device = next((t.device.type for t in args if torch.is_tensor(t)), "cpu")
        half = [torch.is_tensor(t) and t.dtype in _HALF_DTYPES for t in args]
        if not (any(half) or torch.is_autocast_enabled(device)):
            return log_mass(y, mean, scale)
        upcast = (t.float() if h else t for t, h in zip(args, half, strict=True))
        with torch.autocast(device_type=device, enabled=False):
            return log_mass(*upcast)

    return guarded


def _log_bin_mass(upper: Tensor, d: Tensor, midpoint: Tensor) -> Tensor:
    """``log(F(b) - F(a))`` from ``upper = log F(b)`` and ``d = log F(a) - upper``.

    Where ``d`` is not negative (the bin is narrower than the float spacing)
    the midpoint value is used. Inputs of the unused branch are made safe so
    that gradients stay finite (``torch.where`` back-propagates into both).
    """
    ok = d < 0
    d_safe = torch.where(ok, d, torch.full_like(d, -1.0))
    return torch.where(ok, upper + torch.log(-torch.expm1(d_safe)), midpoint)


def _mirrored_offset(y: Tensor, mean: Tensor, scale: Tensor) -> Tensor:
    """``t = -|y - mean|``, saturated at ``-cap * scale`` so squares stay finite.

    ``cap = sqrt(float max) / 4`` (4.6e18 scales in float32, 3e153 in float64):
    further out the log-mass saturates (gradient 0) instead of overflowing.
    """
    t = -torch.abs(y - mean)
    cap = math.sqrt(torch.finfo(torch.promote_types(t.dtype, scale.dtype)).max) / 4
    return torch.maximum(t, -cap * scale)


@_rate_in_float32
def discretized_gaussian_log_mass(y: Tensor, mean: Tensor, scale: Tensor) -> Tensor:
    """Natural log of ``F(y + 1/2) - F(y - 1/2)`` for ``F`` the cdf of N(mean, scale²).

    .. math:: \\log \\hat p(y) = \\log\\Big[
       \\Phi\\big(\\tfrac{y-\\mu+1/2}{\\sigma}\\big)
       - \\Phi\\big(\\tfrac{y-\\mu-1/2}{\\sigma}\\big)\\Big]

    Args:
        y: values (integers relative to the lattice at test time, ``y + u`` in
            training); any shape.
        mean, scale: broadcastable to ``y``; ``scale`` is clamped below by
            :data:`SCALE_LOWER_BOUND`.

    Returns:
        Log-mass in nats, the broadcast shape, finite with finite gradients
        for finite inputs. In float64 it matches scipy / an arbitrary-precision
        reference to ~1e-13 (relative) for scales 0.11 to 1e3 out to 50
        scales. In float32, scales above ~1e4 lose digits near the mean (the
        two cdfs agree to float32 precision); use float64 there.

    Numerics: mirrored to the lower tail (``t = -|y - mean|``) and taken in log
    space with ``log_ndtr`` and ``expm1``; beyond :data:`GAUSSIAN_FAR_TAIL`
    scales both log-cdfs come from the asymptotic expansion
    ``log Phi(z) = -z^2/2 - log(-z) - log(2 pi)/2 + log1p(-1/z^2)``, their
    difference in closed form; see the module docstring.

    See: *Discretized priors and entropy coding*.
    """
    scale = torch.clamp(scale, min=SCALE_LOWER_BOUND)
    t = _mirrored_offset(y, mean, scale)
    z = (t + 0.5) / scale  # upper edge of the mirrored bin, in scales
    far = z < -GAUSSIAN_FAR_TAIL
    # Near: exact log-cdfs. Far: asymptotic expansion of log Phi. Each branch
    # gets clamped inputs so the branch torch.where drops stays finite.
    z_near = torch.clamp(z, min=-GAUSSIAN_FAR_TAIL)
    upper_near = torch.special.log_ndtr(z_near)
    d_near = torch.special.log_ndtr(z_near - 1.0 / scale) - upper_near
    z_far = torch.clamp(z, max=-GAUSSIAN_FAR_TAIL)
    upper_far = (
        -0.5 * z_far**2 - torch.log(-z_far) - _LOG_SQRT_2PI + torch.log1p(-(z_far**-2))
    )
    d_far = z_far / scale - 0.5 / scale**2 - torch.log1p(-1.0 / (scale * z_far))
    upper = torch.where(far, upper_far, upper_near)
    d = torch.where(far, d_far, d_near)
    midpoint = -0.5 * (t / scale) ** 2 - torch.log(scale) - _LOG_SQRT_2PI
    return _log_bin_mass(upper, d, midpoint)


def discretized_gaussian_bits(y: Tensor, mean: Tensor, scale: Tensor) -> Tensor:
    """Code length :math:`-\\log_2 \\hat p(y)` in bits, elementwise.

    Same contract as :func:`discretized_gaussian_log_mass`.

    See: *Discretized priors and entropy coding*.
    """
    return -discretized_gaussian_log_mass(y, mean, scale) / math.log(2.0)


@_rate_in_float32
def discretized_logistic_log_mass(y: Tensor, mean: Tensor, scale: Tensor) -> Tensor:
    """Natural log of ``F(y + 1/2) - F(y - 1/2)`` for ``F`` a logistic cdf.

    .. math:: F(x) = \\mathrm{sigmoid}\\big(\\tfrac{x - \\mu}{s}\\big),
       \\qquad \\text{std} = s\\,\\pi/\\sqrt3 .

    The logistic has exponential (not Gaussian) tails: far from the mean a
    bin costs :math:`|y-\\mu|/s` nats instead of :math:`(y-\\mu)^2/2\\sigma^2`.

    Args:
        y: values, any shape.
        mean, scale: broadcastable to ``y``; ``scale`` is the logistic scale
            ``s`` (not the standard deviation), clamped below by
            :data:`SCALE_LOWER_BOUND`.

    Returns:
        Log-mass in nats, the broadcast shape; finite with finite gradients
        for any finite input.

    See: *Discretized priors and entropy coding*.
    """
    scale = torch.clamp(scale, min=SCALE_LOWER_BOUND)
    t, scale = torch.broadcast_tensors(_mirrored_offset(y, mean, scale), scale)
    z_hi = (t + 0.5) / scale
    upper = torch.nn.functional.logsigmoid(z_hi)
    direct = torch.nn.functional.logsigmoid((t - 0.5) / scale) - upper
    # Far tail: log sigmoid(x) = x, so the difference is exactly -1/s.
    d = torch.where(z_hi < -LOGISTIC_FAR_TAIL, -1.0 / scale, direct)
    z = t / scale
    midpoint = z - 2.0 * torch.log1p(torch.exp(z)) - torch.log(scale)
    return _log_bin_mass(upper, d, midpoint)


def discretized_gaussian_entropy(scale: float, mean: float = 0.0) -> float:
    """Entropy in bits of the pmf :math:`k \\mapsto \\hat p(k)` on the integers.

    .. math:: H = -\\sum_{k \\in \\mathbb Z} \\hat p(k) \\log_2 \\hat p(k)
       \\;\\approx\\; \\tfrac12 \\log_2(2\\pi e \\sigma^2)
       \\quad (\\sigma \\gg 1,\\ \\text{the high-rate approximation}).

    Summed in float64 over ``mean ± ENTROPY_SUPPORT_SIGMAS * scale`` (plus one
    bin), exact to double precision.

    Args:
        scale: Gaussian standard deviation, clamped below by
            :data:`SCALE_LOWER_BOUND`.
        mean: Gaussian mean (the lattice is Z, so only ``mean - round(mean)``
            matters).

    Returns:
        The entropy in bits (a float >= 0).

    See: *Discretized priors and entropy coding*.
    """
    scale = max(float(scale), SCALE_LOWER_BOUND)
    half = math.ceil(ENTROPY_SUPPORT_SIGMAS * scale) + 1
    k = torch.arange(-half, half + 1, dtype=torch.float64) + round(mean)
    log_p = discretized_gaussian_log_mass(
        k,
        torch.tensor(float(mean), dtype=torch.float64),
        torch.tensor(scale, dtype=torch.float64),
    )
    return float(-(log_p.exp() * log_p).sum() / math.log(2.0))


def gaussian_differential_entropy(scale: float) -> float:
    """Differential entropy :math:`h = \\tfrac12\\log_2(2\\pi e\\sigma^2)` in bits.

    The high-rate approximation of :func:`discretized_gaussian_entropy`
    (bin width 1): ``H ≈ h`` when ``scale >> 1``; ``h`` turns negative below
    ``scale = 1/sqrt(2 pi e) ≈ 0.242`` while ``H`` never does.

    See: *Discretized priors and entropy coding*.
    """
    return 0.5 * math.log2(2.0 * math.pi * math.e * float(scale) ** 2)
