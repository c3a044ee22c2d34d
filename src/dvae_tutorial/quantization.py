"""Quantization and its training-time relaxations.

Backs the chapter *Quantization and the uniform-noise relaxation*. Follows
Ballé, Laparra & Simoncelli (2017) (additive uniform noise), Theis et al.
(2017) (straight-through rounding) and the variational reading of Yang,
Mandt & Theis (2023).

Rounding is deterministic and has zero gradient almost everywhere, so a model
is trained with the uniform posterior
``q(y_tilde | x) = U(y - 1/2, y + 1/2)``, i.e. ``y_tilde = y + u`` with
``u ~ U(-1/2, 1/2)``, and coded with ``y_hat = round(y - mean) + mean``.

Decisions made once, here, for the whole book:

- **Rounding centre.** Latents are rounded *around the prior mean*:
  the symbols ``round(y - mean)`` are small integers centred on zero whose
  pmf is the discretized N(0, scale²) whatever the mean, so the entropy
  coder's tables depend on the scale only; the decoder, which computes the
  same prior and so knows ``mean``, adds it back.
- **Bin width 1.** The lattice is ``mean + Z``; a coarser or finer
  quantizer is obtained by scaling ``y`` in the encoder, not here.
- **Symbol type int32**, the type the entropy coders take.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from .errors import DVAEError

#: A relaxation maps the encoder output ``y`` (and the prior mean) to the pair
#: ``(y_for_rate, y_for_decoder)`` used by a training step: the rate term is
#: ``-log p_hat(y_for_rate)``, the distortion term ``d(g(y_for_decoder), x)``.
Relaxation = Callable[[Tensor, Tensor | float], tuple[Tensor, Tensor]]

#: dtype of coded symbols: the entropy coders (rANS, constriction) take int32.
SYMBOL_DTYPE = torch.int32

#: Symbols must satisfy ``|symbol| < 2**31`` to fit int32 (a latent this far from
#: its mean means the model diverged; converting it would silently wrap).
#: 2**31 is exact in float32, so the comparison is exact in every dtype.
SYMBOL_LIMIT = 2**31

#: Number of Simpson panels for :func:`uniform_kl` (error ~ panels**-4). At 2048,
#: doubling the panels changes the KL to a discretized Gaussian prior by less
#: than 1e-14 nats for scales from ``SCALE_LOWER_BOUND = 0.11`` to 20
#: (measured); the tests check the rule against a closed form.
KL_QUADRATURE_PANELS = 2048


def add_uniform_noise(y: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Sample ``y_tilde = y + u``, ``u ~ U(-1/2, 1/2)`` i.i.d. per element.

    A sample from the uniform posterior ``q(y_tilde | x) = U(y - 1/2, y + 1/2)``
    (training only). The noise carries no gradient, so
    :math:`\\partial \\tilde y / \\partial y = 1` exactly.

    Args:
        y: encoder output, any shape, floating point.
        generator: optional torch generator for reproducible noise.

    Returns:
        ``y_tilde``, same shape and device as ``y``, with ``|y_tilde - y| <= 1/2``;
        float32 for half-precision ``y`` (under autocast a bf16 ``y + u`` would
        sit on a grid of 1/8 for ``|y| >= 16``), else ``y``'s dtype.

    See: *Quantization and the uniform-noise relaxation*.
    """
    dtype = torch.promote_types(y.dtype, torch.float32)
    u = torch.rand(y.shape, generator=generator, dtype=dtype, device=y.device)
    return y.to(dtype) + (u - 0.5)


def round_st(y: Tensor) -> Tensor:
    """Round to the nearest integer with a straight-through gradient of 1.

    Forward ``round(y)`` (ties to even, as :func:`torch.round`); backward the
    identity, :math:`\\partial\\,\\mathrm{round\\_st}(y)/\\partial y = 1`,
    whereas :func:`torch.round` has gradient 0 everywhere.

    Args:
        y: any shape, floating point.

    Returns:
        Integer-valued tensor, same shape and dtype as ``y``.

    See: *Quantization and the uniform-noise relaxation*.
    """
    return y + (torch.round(y) - y).detach()


def to_symbols(y: Tensor, mean: Tensor | float = 0.0) -> Tensor:
    """Integer symbols :math:`s = \\mathrm{round}(y - \\mu)` that the coder writes.

    Args:
        y: latents, any shape, finite.
        mean: prior mean :math:`\\mu`, broadcastable to ``y``.

    Returns:
        ``int32`` tensor of the broadcast shape, centred on 0 when ``y`` is
        distributed around ``mean``.

    Raises:
        DVAEError: if ``round(y - mean)`` is not finite or ``|symbol| >= 2**31``.

    See: *Quantization and the uniform-noise relaxation* (rounding around the
    prior mean).
    """
    centred = torch.round(y - mean)
    if not torch.isfinite(centred).all():
        raise DVAEError(
            "to_symbols got NaN or infinite latents; the encoder output is not "
            "finite (did training diverge?), so it cannot be entropy coded."
        )
    if centred.numel() and centred.abs().max() >= SYMBOL_LIMIT:
        raise DVAEError(
            f"to_symbols got a latent {SYMBOL_LIMIT} or more away from its prior "
            "mean; it does not fit in int32 (check the encoder's scale)."
        )
    return centred.to(SYMBOL_DTYPE)


def from_symbols(symbols: Tensor, mean: Tensor | float = 0.0) -> Tensor:
    """Dequantize: :math:`\\hat y = s + \\mu`, the inverse of :func:`to_symbols`.

    Args:
        symbols: integer tensor, any shape.
        mean: prior mean :math:`\\mu`, broadcastable to ``symbols``; the
            decoder knows it because it runs the same prior as the encoder.

    Returns:
        ``y_hat`` in the dtype of ``mean`` if it is a floating tensor, else in
        torch's default dtype. ``from_symbols(to_symbols(y, m), m)`` equals
        ``quantize(y, m)``.

    See: *Quantization and the uniform-noise relaxation*.
    """
    floating_mean = isinstance(mean, Tensor) and mean.is_floating_point()
    dtype = mean.dtype if floating_mean else torch.get_default_dtype()
    return symbols.to(dtype) + mean


def quantize(y: Tensor, mean: Tensor | float = 0.0) -> Tensor:
    """Test-time quantization :math:`\\hat y = \\mathrm{round}(y - \\mu) + \\mu`.

    Deterministic, no gradient (use a relaxation to train). ``y_hat`` lies on
    the lattice ``mean + Z`` and ``|y_hat - y| <= 1/2``.

    Args:
        y: latents, any shape.
        mean: prior mean, broadcastable to ``y``.

    Returns:
        ``y_hat``, the broadcast shape.

    See: *Quantization and the uniform-noise relaxation*.
    """
    return torch.round(y - mean) + mean


def noise_relaxation(y: Tensor, mean: Tensor | float = 0.0) -> tuple[Tensor, Tensor]:
    """Uniform noise for both the rate and the decoder (the book's models).

    Returns ``(y_tilde, y_tilde)`` with one shared draw ``y_tilde = y + u``;
    ``mean`` is unused (noise is shift-invariant) and only kept so that all
    relaxations share one signature, :data:`Relaxation`.

    See: *Quantization and the uniform-noise relaxation*.
    """
    y_tilde = add_uniform_noise(y)
    return y_tilde, y_tilde


def ste_relaxation(y: Tensor, mean: Tensor | float = 0.0) -> tuple[Tensor, Tensor]:
    """Straight-through rounding around ``mean`` for both rate and decoder.

    Returns ``(y_hat, y_hat)`` with ``y_hat = round_st(y - mean) + mean``:
    the test-time value in the forward pass, gradient 1 in the backward pass.

    See: *Quantization and the uniform-noise relaxation*.
    """
    y_hat = round_st(y - mean) + mean
    return y_hat, y_hat


def mixed_relaxation(y: Tensor, mean: Tensor | float = 0.0) -> tuple[Tensor, Tensor]:
    """Noise for the rate, straight-through rounding for the decoder.

    Returns ``(y + u, round_st(y - mean) + mean)``: the rate is the uniform
    posterior's KL, the decoder sees the values it will decode at test time.

    See: *Quantization and the uniform-noise relaxation*.
    """
    return add_uniform_noise(y), round_st(y - mean) + mean


def uniform_kl(
    center: Tensor,
    log_prior: Callable[[Tensor], Tensor],
    width: float = 1.0,
    panels: int = KL_QUADRATURE_PANELS,
) -> Tensor:
    """KL from a uniform posterior to a prior density, by Simpson quadrature.

    For :math:`q = \\mathcal U(c - w/2,\\, c + w/2)` (density :math:`1/w`)

    .. math:: \\mathrm{KL}(q\\,\\|\\,\\hat p)
       = \\int q \\log\\frac{q}{\\hat p}
       = -\\log w - \\frac1w \\int_{c-w/2}^{c+w/2} \\log \\hat p(t)\\,dt .

    For the unit box (:math:`w = 1`) the entropy term vanishes and the KL is
    the expected code length :math:`\\mathbb E_q[-\\log \\hat p(\\tilde y)]`.
    This is a deterministic reference for Monte-Carlo estimates.

    Args:
        center: centres ``c`` of the posteriors, any shape (float64 advised).
        log_prior: elementwise natural-log density of the prior, e.g.
            ``lambda t: discretized_gaussian_log_mass(t, mu, sigma)``; called
            once on a tensor of shape ``center.shape + (2 * panels + 1,)``.
        width: width ``w`` of the uniform, > 0.
        panels: number of Simpson panels (the integrand must be smooth).

    Returns:
        KL in nats, shape of ``center``.

    See: *Quantization and the uniform-noise relaxation* (the KL identity).
    """
    if width <= 0 or panels < 1:
        raise DVAEError(
            f"uniform_kl needs width > 0 and panels >= 1, got {width} and {panels}"
        )
    offsets = torch.linspace(-0.5, 0.5, 2 * panels + 1, dtype=center.dtype) * width
    weights = torch.ones_like(offsets)
    weights[1:-1:2], weights[2:-1:2] = 4.0, 2.0
    weights = weights / weights.sum()  # Simpson weights, normalised to a mean
    mean_log_p = (log_prior(center.unsqueeze(-1) + offsets) * weights).sum(-1)
    return -math.log(width) - mean_log_p
