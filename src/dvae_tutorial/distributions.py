"""Discretized priors: a Gaussian convolved with the unit box.

Backs the chapter *Discretized priors and entropy coding*. Follows Ballé et
al. (2018) and the uniform-noise view of Yang, Mandt & Theis (2023).

The discretized Gaussian has mass (or, for a non-integer ``y``, density)

.. math:: \\hat p(y) = F(y + \\tfrac12) - F(y - \\tfrac12),
   \\qquad F = \\text{cdf of } \\mathcal N(\\mu, \\sigma^2).

It is the density of ``mu + sigma * n + u`` with ``u ~ U(-1/2, 1/2)``, so it is
a proper density for the noisy latent ``y_tilde`` during training and a pmf at
the integers used for coding.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

#: Smallest scale the priors use. Below ~0.11 a unit bin holds essentially all
#: the mass of N(mu, sigma^2) at mu = k; smaller sigmas only cause numerical
#: trouble (CompressAI and the Ballé et al. code use the same bound).
SCALE_LOWER_BOUND = 0.11

_SQRT_HALF = math.sqrt(0.5)


def discretized_gaussian_log_mass(y: Tensor, mean: Tensor, scale: Tensor) -> Tensor:
    """Natural log of ``F(y + 1/2) - F(y - 1/2)`` for ``F`` the cdf of N(mean, scale²).

    Args:
        y: values (integers at test time, ``y + u`` in training); any shape.
        mean, scale: broadcastable to ``y``; ``scale`` is clamped below by
            :data:`SCALE_LOWER_BOUND`.

    Returns:
        Log-mass in nats, same shape as the broadcast inputs; finite for any
        finite input.

    Numerics: the Gaussian is symmetric, so the bin is mirrored to the lower
    tail (``t = -|y - mean|``) where the cdf is small and has full relative
    precision; the difference of cdfs is taken in log space with
    ``log_ndtr`` and ``expm1``, which stays finite tens of sigmas out.

    See: *Discretized priors and entropy coding*.
    """
    scale = torch.clamp(scale, min=SCALE_LOWER_BOUND)
    t = -torch.abs(y - mean)
    upper = torch.special.log_ndtr((t + 0.5) / scale)
    lower = torch.special.log_ndtr((t - 0.5) / scale)
    return upper + torch.log(-torch.expm1(lower - upper))


def discretized_gaussian_bits(y: Tensor, mean: Tensor, scale: Tensor) -> Tensor:
    """Code length ``-log2 p_hat(y)`` in bits, elementwise."""
    return -discretized_gaussian_log_mass(y, mean, scale) / math.log(2.0)
