"""Quantization and its training-time relaxation.

Backs the chapter *Quantization and the uniform-noise relaxation*. Follows
Ballé, Laparra & Simoncelli (2017) (additive uniform noise), Theis et al.
(2017) (straight-through rounding) and Yang, Mandt & Theis (2023).

Rounding is deterministic and has zero gradient almost everywhere, so a model
is trained with the uniform posterior ``q(y_tilde | x) = U(y - 1/2, y + 1/2)``,
i.e. ``y_tilde = y + u`` with ``u ~ U(-1/2, 1/2)``, and coded with
``y_hat = round(y - mean) + mean`` (rounding *around the prior mean*, so the
symbols ``round(y - mean)`` are small integers centred on zero).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

#: A relaxation maps the encoder output ``y`` (and the prior mean) to the pair
#: ``(y_for_rate, y_for_decoder)`` used by a training step.
Relaxation = Callable[[Tensor, Tensor | float], tuple[Tensor, Tensor]]


def add_uniform_noise(y: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Sample ``y_tilde = y + u`` with ``u ~ U(-1/2, 1/2)`` elementwise.

    This is a sample from the uniform posterior ``q(y_tilde | x)``; its
    gradient with respect to ``y`` is exactly 1.

    See: *Quantization and the uniform-noise relaxation*.
    """
    u = torch.rand(y.shape, generator=generator, dtype=y.dtype, device=y.device)
    return y + (u - 0.5)


def round_st(y: Tensor) -> Tensor:
    """Round to the nearest integer with a straight-through gradient of 1.

    Forward: ``round(y)``; backward: identity, i.e. ``d round_st(y) / dy = 1``.
    """
    return y + (torch.round(y) - y).detach()


def to_symbols(y: Tensor, mean: Tensor | float = 0.0) -> Tensor:
    """Integer symbols ``round(y - mean)`` (int32) that the entropy coder writes."""
    return torch.round(y - mean).to(torch.int32)


def from_symbols(symbols: Tensor, mean: Tensor | float = 0.0) -> Tensor:
    """Dequantize: ``y_hat = symbols + mean`` (inverse of :func:`to_symbols`)."""
    return symbols.to(torch.get_default_dtype()) + mean


def quantize(y: Tensor, mean: Tensor | float = 0.0) -> Tensor:
    """Test-time quantization ``y_hat = round(y - mean) + mean``."""
    return torch.round(y - mean) + mean


def noise_relaxation(y: Tensor, mean: Tensor | float = 0.0) -> tuple[Tensor, Tensor]:
    """Uniform noise for both the rate and the decoder (the book's models)."""
    y_tilde = add_uniform_noise(y)
    return y_tilde, y_tilde


def ste_relaxation(y: Tensor, mean: Tensor | float = 0.0) -> tuple[Tensor, Tensor]:
    """Straight-through rounding (around ``mean``) for both rate and decoder."""
    y_hat = round_st(y - mean) + mean
    return y_hat, y_hat


def mixed_relaxation(y: Tensor, mean: Tensor | float = 0.0) -> tuple[Tensor, Tensor]:
    """Noise for the rate, straight-through rounding for the decoder."""
    return add_uniform_noise(y), round_st(y - mean) + mean
