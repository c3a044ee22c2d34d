"""One model for every rate: a λ-conditioned single-layer VAE with gain units.

Backs the chapter *Beyond* (one model for every rate). Follows Cui et al.
(2021) [cui2021asymmetric]: a per-channel *gain* vector scales the analysis
output before quantisation and an *inverse gain* vector scales the quantised
latent before synthesis, both learned at a few λ (the *levels*) and
interpolated geometrically — linearly in ``log λ`` — in between::

    y = g_a(x),  y_s = g(λ) ⊙ y,  ŷ_s = round(y_s − μ(λ)) + μ(λ),
    x̂ = g_s(g⁻(λ) ⊙ ŷ_s),   ŷ_s ~ discretized N(μ(λ), σ(λ)²) per channel

For ``λ`` between levels ``λ_i ≤ λ ≤ λ_{i+1}`` and
``t = (log λ − log λ_i) / (log λ_{i+1} − log λ_i)``:
``g(λ) = g_i^{1−t} g_{i+1}^t`` (and ``g⁻``, ``σ`` alike), ``μ(λ) = (1−t)μ_i + tμ_{i+1}``.
At a level the learned vectors come back exactly (``t`` is 0 or 1). A larger
gain is a finer quantiser (more bits, less distortion); the factorized prior
follows the gain because it is learned per level and interpolated too.

Training (:func:`sample_lmbdas`) draws each patch's λ anew — a level half of
the time, else log-uniform over the range — and weighs its loss
``bpp + λ·mse`` by ``(λ/λ_mid)^{-1/2}``: the loss grows about as √λ over the
range, so every λ counts about equally in relative terms (as the BD-rate,
a mean of log-rate differences, counts them).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from . import tiling
from .configs import LATENT_STRIDE, VariableRateConfig
from .distributions import SCALE_LOWER_BOUND, discretized_gaussian_bits
from .entropy_coding import decode_latents, encode_latents
from .errors import CodingError, DVAEError
from .quantization import add_uniform_noise, quantize
from .single_layer_vae import (
    Compressed,
    _check_images,
    _transforms,
    crop,
    pad_to_multiple,
    positive_scale,
)

#: Fraction of training patches whose λ is one of the levels (the others are
#: log-uniform over the range).
LEVEL_FRACTION = 0.5
#: Each patch's loss is weighed by ``(λ / λ_mid) ** -LOSS_EXPONENT``.
LOSS_EXPONENT = 0.5


class VariableRateOutput(NamedTuple):
    """:class:`~dvae_tutorial.single_layer_vae.VAEOutput` plus each image's
    ``lmbda`` (B,) and ``loss_weight`` (B,): the training loss is
    ``mean(loss_weight · (bpp + lmbda · mse))``."""

    x_hat: Tensor
    bits: dict[str, Tensor]
    bpp: Tensor
    mse: Tensor
    lmbda: Tensor
    loss_weight: Tensor


def interpolation_weights(lmbda: Tensor, levels: Sequence[float]) -> Tensor:
    """Weights ``(B, K)`` of the K levels at each λ: ``1 − t`` and ``t`` on the two
    levels around it (``t`` linear in ``log λ``), zero elsewhere; one-hot at a
    level. λ outside the range is clamped to it (callers check the range)."""
    knots = torch.tensor([math.log(v) for v in levels], dtype=torch.float64,
                         device=lmbda.device)
    x = torch.log(lmbda.to(torch.float64)).clamp(knots[0], knots[-1])
    i = (torch.searchsorted(knots, x, right=True) - 1).clamp(0, len(levels) - 2)
    t = ((x - knots[i]) / (knots[i + 1] - knots[i])).clamp(0.0, 1.0)
    w = torch.zeros(x.shape[0], len(levels), dtype=torch.float64, device=x.device)
    w.scatter_(1, i[:, None], (1.0 - t)[:, None])
    w.scatter_add_(1, (i + 1)[:, None], t[:, None])
    return w.float()


def sample_lmbdas(n: int, levels: Sequence[float],
                  generator: torch.Generator | None = None) -> Tensor:
    """``n`` training λ (CPU, float32): each a random level with probability
    :data:`LEVEL_FRACTION`, else log-uniform on ``[levels[0], levels[-1]]``."""
    u, pick, which = torch.rand(3, n, generator=generator, dtype=torch.float64)
    lo, hi = math.log(levels[0]), math.log(levels[-1])
    between = torch.exp(lo + (hi - lo) * u)
    at_level = torch.tensor(levels, dtype=torch.float64)[
        (which * len(levels)).long().clamp(max=len(levels) - 1)]
    return torch.where(pick < LEVEL_FRACTION, at_level, between).float()


def sweep_lmbdas(levels: Sequence[float]) -> list[float]:
    """The λ at which ``dvae evaluate`` measures a variable-rate model: the
    levels and the geometric middle of each pair of neighbours (rounded to
    3 significant digits), ascending."""
    middles = [float(f"{math.sqrt(a * b):.3g}") for a, b in
               zip(levels[:-1], levels[1:], strict=True)]
    return sorted([float(v) for v in levels] + middles)


class VariableRateVAE(tiling.TiledTransforms, nn.Module):
    """The factorized single-layer VAE conditioned on λ; see the module docstring.

    Parameters (K levels, M channels): ``log_gain``, ``log_inverse_gain``,
    ``prior_mean`` and ``prior_raw_scale``, each ``(K, M)``; ``g_a``, ``g_s``
    as :class:`~dvae_tutorial.single_layer_vae.SingleLayerVAE`'s.

    See: *Beyond* (one model for every rate).
    """

    #: The family written in ``.dvae`` headers and listed by ``dvae models``.
    family = "variable-rate"

    def __init__(self, config: VariableRateConfig) -> None:
        super().__init__()
        self.config = config
        self.g_a, self.g_s = _transforms(config.transforms)
        k, m = len(config.levels), config.latent_channels
        self.log_gain = nn.Parameter(torch.zeros(k, m))
        self.log_inverse_gain = nn.Parameter(torch.zeros(k, m))
        self.prior_mean = nn.Parameter(torch.zeros(k, m))
        self.prior_raw_scale = nn.Parameter(torch.zeros(k, m))

    @property
    def stride(self) -> int:
        """Images are padded to multiples of this (16)."""
        return LATENT_STRIDE

    @property
    def lmbda_range(self) -> tuple[float, float]:
        """The λ this model codes at: ``(levels[0], levels[-1])``."""
        return self.config.levels[0], self.config.levels[-1]

    @property
    def middle_lmbda(self) -> float:
        """The level nearest the range's geometric middle: the λ of an eval-mode
        forward without ``lmbda`` (what ``fit`` validates), weight 1 in the loss."""
        mid = 0.5 * sum(math.log(v) for v in self.lmbda_range)
        return min(self.config.levels, key=lambda v: abs(math.log(v) - mid))

    def check_lmbda(self, lmbda: float) -> float:
        """``lmbda`` as a float, if inside :attr:`lmbda_range`.

        Raises:
            DVAEError: one line naming the range.
        """
        lo, hi = self.lmbda_range
        if not (isinstance(lmbda, int | float) and lo <= lmbda <= hi):
            raise DVAEError(f"λ = {lmbda} is outside this variable-rate model's range "
                            f"{lo:g} … {hi:g}; choose a λ in it")
        return float(lmbda)

    def rate_parameters(self, lmbda: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(gain, inverse_gain, mean, scale)`` at each λ, each ``(B, M, 1, 1)``."""
        w = interpolation_weights(lmbda, self.config.levels).to(self.log_gain.dtype)
        with torch.autocast(w.device.type, enabled=False):  # float32 under AMP too
            log_scale = torch.log(positive_scale(self.prior_raw_scale))

            def at(table: Tensor) -> Tensor:
                return (w @ table)[:, :, None, None]

            scale = at(log_scale).exp().clamp_min(SCALE_LOWER_BOUND)
            return (at(self.log_gain).exp(), at(self.log_inverse_gain).exp(),
                    at(self.prior_mean), scale)

    def _lmbdas(self, lmbda: float | Tensor | None, n: int, device) -> Tensor:
        if lmbda is None:
            lmbda = (sample_lmbdas(n, self.config.levels) if self.training
                     else torch.full((n,), self.middle_lmbda))
        elif not isinstance(lmbda, Tensor):
            lmbda = torch.full((n,), self.check_lmbda(lmbda))
        return lmbda.to(device=device, dtype=torch.float32).expand(n)

    def forward(self, x: Tensor, lmbda: float | Tensor | None = None
                ) -> VariableRateOutput:
        """Rate and distortion at ``lmbda`` (a float, or one λ per image); by
        default random λ in ``train()`` (:func:`sample_lmbdas`) and
        :attr:`middle_lmbda` in ``eval()``. Uniform noise in ``train()``,
        rounding in ``eval()``, as ``SingleLayerVAE.forward``."""
        _check_images(x)
        size = x.shape[-2:]
        lmbdas = self._lmbdas(lmbda, x.shape[0], x.device)
        y = self.g_a(pad_to_multiple(x, self.stride))
        gain, inverse, mean, scale = self.rate_parameters(lmbdas)
        y = y * gain
        y_q = add_uniform_noise(y) if self.training else quantize(y, mean)
        bits = {"y": discretized_gaussian_bits(y_q, mean.expand_as(y_q),
                                               scale.expand_as(y_q)).sum((1, 2, 3))}
        y_q = y_q * inverse
        x_hat = crop(self.g_s(y_q) if self.training else self._synthesize(y_q), size)
        bpp = bits["y"] / (size[0] * size[1])
        mse = (x_hat - x).square().mean((1, 2, 3))
        weight = (lmbdas / self.middle_lmbda) ** -LOSS_EXPONENT
        return VariableRateOutput(x_hat, bits, bpp, mse, lmbdas, weight)

    def _parameters_at(self, lmbda: float, shape: tuple[int, ...]):
        lmbdas = torch.full((1,), self.check_lmbda(lmbda),
                            device=self.log_gain.device)
        gain, inverse, mean, scale = self.rate_parameters(lmbdas)
        return gain, inverse, mean.expand(shape), scale.expand(shape)

    @torch.no_grad()
    def compress(self, x: Tensor, lmbda: float) -> Compressed:
        """Encode one image ``(1, 3, H, W)`` in [0, 1] at ``lmbda`` (in range).

        Raises:
            DVAEError: λ outside :attr:`lmbda_range`, or not one image.
        """
        x = x.unsqueeze(0) if x.dim() == 3 else x
        _check_images(x, single=True)
        self.check_lmbda(lmbda)
        size = (int(x.shape[-2]), int(x.shape[-1]))
        y = self._analyze(x)
        del x
        gain, _, mean, scale = self._parameters_at(lmbda, tuple(y.shape))
        y = y * gain
        bits = float(discretized_gaussian_bits(quantize(y, mean), mean, scale).sum())
        return Compressed([encode_latents(y, mean, scale)], size, bits)

    def stream_shapes(self, shape: tuple[int, int]) -> list[tuple[int, ...]]:
        """The one latent's shape for an ``(H, W)`` image: ``[(1, M, ⌈H/16⌉, ⌈W/16⌉)]``."""
        h, w = (-(-side // self.stride) for side in shape)
        return [(1, self.config.latent_channels, h, w)]

    @torch.no_grad()
    def decompress(self, strings: list[bytes], shape: tuple[int, int],
                   lmbda: float) -> Tensor:
        """Decode :meth:`compress`'s stream at the same ``lmbda`` to ``x_hat``
        ``(1, 3, H, W)`` in [0, 1].

        Raises:
            CodingError: not one stream, or one that fails its checksum.
            DVAEError: λ outside :attr:`lmbda_range`.
        """
        if len(strings) != 1:
            raise CodingError(f"this model reads 1 stream, got {len(strings)}")
        y_shape = self.stream_shapes(shape)[0]
        _, inverse, mean, scale = self._parameters_at(lmbda, y_shape)
        y_hat = decode_latents(strings[0], mean, scale, y_shape)
        return crop(self._synthesize(y_hat * inverse), shape).clamp(0.0, 1.0)

    @torch.no_grad()
    def start_from_single(self, state: dict[str, Tensor], lmbda: float) -> None:
        """Warm start from a factorized single-layer model trained at ``lmbda``.

        ``g_a``/``g_s`` are copied; level ``k`` starts with the scalar gain
        ``√(λ_k/λ)`` on every channel (a uniform quantiser's step goes as
        ``λ^{-1/2}`` at high rate), the inverse gain ``1/g``, and the parent's
        prior scaled by ``g`` (mean ``g·μ``, scale ``g·σ``, at least the
        prior's bound).
        """
        from .checkpoints import transfer_weights

        transfer_weights(self, state, only=("g_a.", "g_s."))
        mean = state["y_prior.mean"].float()
        scale = positive_scale(state["y_prior.raw_scale"].float())
        for k, level in enumerate(self.config.levels):
            gain = math.sqrt(level / lmbda)
            self.log_gain[k] = math.log(gain)
            self.log_inverse_gain[k] = -math.log(gain)
            self.prior_mean[k] = gain * mean
            excess = (gain * scale - SCALE_LOWER_BOUND).clamp_min(1e-3)
            self.prior_raw_scale[k] = excess + torch.log(-torch.expm1(-excess))

    def recipe_fields(self) -> dict:
        """What the training recipe records about the λ conditioning."""
        return {"levels": list(self.config.levels), "level_fraction": LEVEL_FRACTION,
                "loss_weight": f"(lmbda/{self.middle_lmbda:g})**-{LOSS_EXPONENT:g}"}
