"""The standard discretized VAE: one latent ``y``, optionally a hyperprior ``z``.

Backs the chapter *A discretized VAE codec*. Follows Ballé, Laparra &
Simoncelli (2017) [balle2017end] (GDN transforms, uniform noise), Ballé et
al. (2018) [balle2018variational] (the discretized Gaussian prior, the
hyperprior) and Minnen, Ballé & Toderici (2018) [minnen2018joint] (the
hyper-decoder predicts a mean and a scale per element).

The model, in the book's notation::

    x (B,3,H,W) in [0,1] --g_a--> y (B,M,H/16,W/16) --h_a--> z (B,Nz,H/64,W/64)
    z: one discretized Gaussian per channel (learned mean, scale)
    y: discretized Gaussian, (mean, scale) per element from h_s(z_hat), or
       (without hyperprior) one learned (mean, scale) per channel
    x_hat = g_s(y_hat)

``p_hat(y) = F(y + 1/2) - F(y - 1/2)`` is evaluated at ``y_tilde = y + u``
in training and at ``y_hat = round(y - mean) + mean`` in evaluation and
coding. One method, :meth:`SingleLayerVAE.prior_parameters`, gives the
(mean, scale) of ``y`` to the training forward, the evaluation forward,
:meth:`~SingleLayerVAE.compress` and :meth:`~SingleLayerVAE.decompress`, so
encoder and decoder cannot drift.

There is no ``update()``: :mod:`dvae_tutorial.entropy_coding` builds its
models on the fly from scales snapped to a fixed table, so there are no
coding tables to freeze after training.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import tiling
from .configs import HYPER_STRIDE, LATENT_STRIDE, ModelConfig
from .distributions import SCALE_LOWER_BOUND, discretized_gaussian_bits
from .entropy_coding import decode_latents, encode_latents
from .errors import CodingError, DVAEError
from .layers import GDN, ResidualBlock, conv, downsample, upsample
from .quantization import add_uniform_noise, quantize

#: Scales are ``SCALE_LOWER_BOUND + softplus(raw)``: never below the priors'
#: bound (where their clamp would stop the gradient), smooth, linear for large
#: ``raw``. A raw value of 0 gives 0.11 + log 2 ≈ 0.80.
_INIT_RAW_SCALE = 0.0


def positive_scale(raw: Tensor) -> Tensor:
    """Map an unconstrained tensor to a scale: ``0.11 + softplus(raw)`` > 0.11.

    See: *A discretized VAE codec* (the prior of ``y``).
    """
    return SCALE_LOWER_BOUND + F.softplus(raw)


def pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Pad ``(B, C, H, W)`` on the bottom and right to sides divisible by ``multiple``.

    Replicate padding: the border pixels are repeated, which costs few bits
    and no edges. Returns ``x`` itself when nothing is needed.

    See: *A discretized VAE codec* (images of any size).
    """
    height, width = x.shape[-2:]
    pad_h, pad_w = -height % multiple, -width % multiple
    if pad_h == 0 and pad_w == 0:
        return x
    return F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")


def crop(x: Tensor, size: tuple[int, int]) -> Tensor:
    """The top-left ``size = (H, W)`` of ``x``: undoes :func:`pad_to_multiple`."""
    return x[..., : size[0], : size[1]]


class VAEOutput(NamedTuple):
    """What :meth:`SingleLayerVAE.forward` returns.

    Attributes:
        x_hat: reconstruction (B, 3, H, W), not clamped.
        bits: per latent tensor (``"y"``, and ``"z"`` with a hyperprior), the
            bits of each image, shape (B,); estimated at ``y_tilde`` in
            training, at ``y_hat`` in evaluation.
        bpp: total bits / (H·W) per pixel, (B,).
        mse: mean squared error on [0, 1] per image, (B,).
    """

    x_hat: Tensor
    bits: dict[str, Tensor]
    bpp: Tensor
    mse: Tensor


class Compressed(NamedTuple):
    """Streams of one image: ``strings`` (``[z, y]`` or ``[y]``), its ``(H, W)``,
    and ``bits`` = ``−Σ log₂ P`` of the coded latents (what the streams should
    cost, up to the coder's overhead); ``layer_bits``, where several layers
    share one stream, each layer's share of its payload in bits."""

    strings: list[bytes]
    shape: tuple[int, int]
    bits: float = float("nan")
    layer_bits: tuple[int, ...] = ()


class ChannelGaussian(nn.Module):
    """One learned Gaussian per channel: ``(mean_c, scale_c)``, shared by all positions.

    The seed's prior for ``y`` (and the book's prior for ``z``).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.mean = nn.Parameter(torch.zeros(channels))
        self.raw_scale = nn.Parameter(torch.full((channels,), _INIT_RAW_SCALE))

    def forward(self, shape: torch.Size | tuple[int, ...]) -> tuple[Tensor, Tensor]:
        """``(mean, scale)`` broadcast (no copy) to ``shape = (B, C, h, w)``."""
        mean = self.mean.view(1, -1, 1, 1).expand(shape)
        return mean, positive_scale(self.raw_scale).view(1, -1, 1, 1).expand(shape)


def _transforms(cfg: ModelConfig) -> tuple[nn.Sequential, nn.Sequential]:
    """g_a: four stride-2 5×5 convs; g_s: four stride-2 transposed convs."""
    n, m = cfg.channels, cfg.latent_channels

    def mid(inverse: bool) -> nn.Module:
        return GDN(n, inverse=inverse) if cfg.gdn else ResidualBlock(n)

    g_a = nn.Sequential(downsample(3, n), mid(False), downsample(n, n), mid(False),
                        downsample(n, n), mid(False), downsample(n, m))
    g_s = nn.Sequential(upsample(m, n), mid(True), upsample(n, n), mid(True),
                        upsample(n, n), mid(True), upsample(n, 3))
    return g_a, g_s


def _hyper_transforms(cfg: ModelConfig) -> tuple[nn.Sequential, nn.Sequential]:
    """h_a: y → z (stride 4); h_s: z_hat → (mean, raw scale) of y, 2M channels."""
    m, k = cfg.latent_channels, cfg.hyper_channels
    h_a = nn.Sequential(conv(m, k, 3), nn.LeakyReLU(), downsample(k, k),
                        nn.LeakyReLU(), downsample(k, k))
    h_s = nn.Sequential(upsample(k, m), nn.LeakyReLU(), upsample(m, m * 3 // 2),
                        nn.LeakyReLU(), conv(m * 3 // 2, 2 * m, 3))
    return h_a, h_s


class SingleLayerVAE(tiling.TiledTransforms, nn.Module):
    """The seed's discretized VAE as a codec; see the module docstring.

    Args:
        config: the architecture; ``config.hyperprior`` picks the prior of ``y``.

    See: *A discretized VAE codec*.
    """

    #: The family written in ``.dvae`` headers and listed by ``dvae models``.
    family = "single"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.g_a, self.g_s = _transforms(config)
        if config.hyperprior:
            self.h_a, self.h_s = _hyper_transforms(config)
            self.z_prior = ChannelGaussian(config.hyper_channels)
        else:
            self.y_prior = ChannelGaussian(config.latent_channels)

    @property
    def stride(self) -> int:
        """Images are padded to multiples of this (16, or 64 with a hyperprior)."""
        return self.config.stride

    def prior_parameters(self, y_shape: torch.Size | tuple[int, ...],
                         z_hat: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The one prior path of ``y``: ``(mean, scale)``, each of shape ``y_shape``.

        Args:
            y_shape: ``(B, M, h, w)``.
            z_hat: the hyper-latent (``z_tilde`` in training), ``(B, Nz, h/4,
                w/4)``; required with a hyperprior, ignored without.

        Returns:
            ``mean`` and ``scale`` (> 0.11) for the discretized Gaussian of ``y``.
        """
        if not self.config.hyperprior:
            return self.y_prior(y_shape)
        if z_hat is None:
            raise DVAEError("a hyperprior model needs z_hat to compute y's prior")
        mean, raw_scale = self.h_s(z_hat).chunk(2, dim=1)
        if mean.shape != torch.Size(y_shape):
            raise DVAEError(f"h_s gave {tuple(mean.shape)}, expected {tuple(y_shape)}")
        return mean, positive_scale(raw_scale)

    def _noisy_or_rounded(self, v: Tensor, mean: Tensor) -> Tensor:
        """``v + u`` in training mode, ``round(v - mean) + mean`` in eval mode."""
        return add_uniform_noise(v) if self.training else quantize(v, mean)

    def forward(self, x: Tensor) -> VAEOutput:
        """Rate and distortion: uniform noise in ``train()``, rounding in ``eval()``.

        .. math:: \\text{bits}(y) = -\\sum \\log_2 \\big[F(y_q + \\tfrac12)
           - F(y_q - \\tfrac12)\\big], \\quad y_q = \\tilde y \\text{ (train) or }
           \\hat y \\text{ (eval)}

        and likewise for ``z``. In eval mode ``x_hat`` and the bits are exactly
        those of :meth:`compress` / :meth:`decompress` (up to the clamp to
        [0, 1] that :meth:`decompress` applies and the coder's overhead).

        Args:
            x: images ``(B, 3, H, W)`` in [0, 1], any ``H, W`` (padded to the
                stride inside, ``x_hat`` cropped back).

        Returns:
            :class:`VAEOutput`; ``bpp`` divides by the unpadded ``H·W``.
        """
        _check_images(x)
        size = x.shape[-2:]
        y = self.g_a(pad_to_multiple(x, self.stride))
        bits, z_q = {}, None
        if self.config.hyperprior:
            z = self.h_a(y)
            z_mean, z_scale = self.z_prior(z.shape)
            z_q = self._noisy_or_rounded(z, z_mean)
            bits["z"] = discretized_gaussian_bits(z_q, z_mean, z_scale).sum((1, 2, 3))
        mean, scale = self.prior_parameters(y.shape, z_q)
        y_q = self._noisy_or_rounded(y, mean)
        bits["y"] = discretized_gaussian_bits(y_q, mean, scale).sum((1, 2, 3))
        x_hat = crop(self.g_s(y_q) if self.training else self._synthesize(y_q),
                     size)
        bpp = sum(bits.values()) / (size[0] * size[1])
        mse = (x_hat - x).square().mean((1, 2, 3))
        return VAEOutput(x_hat, bits, bpp, mse)

    @torch.no_grad()
    def compress(self, x: Tensor) -> Compressed:
        """Encode one image to byte strings (``z`` first, then ``y`` given ``z_hat``).

        Args:
            x: ``(1, 3, H, W)`` or ``(3, H, W)`` in [0, 1], any ``H, W``.

        Returns:
            :class:`Compressed`: the streams of
            :func:`~dvae_tutorial.entropy_coding.encode_latents` (FastCoder)
            and the image's ``(H, W)``.

        See: *A discretized VAE codec* (compressing to bytes).
        """
        x = x.unsqueeze(0) if x.dim() == 3 else x
        _check_images(x, single=True)
        size = (int(x.shape[-2]), int(x.shape[-1]))
        y = self._analyze(x)
        del x  # the image is not needed any more (large photos: memory)
        strings, z_hat, bits = [], None, 0.0
        if self.config.hyperprior:
            z = self.h_a(y)
            z_mean, z_scale = self.z_prior(z.shape)
            strings.append(encode_latents(z, z_mean, z_scale))
            z_hat = quantize(z, z_mean)
            bits += float(discretized_gaussian_bits(z_hat, z_mean, z_scale).sum())
        mean, scale = self.prior_parameters(y.shape, z_hat)
        strings.append(encode_latents(y, mean, scale))
        bits += float(discretized_gaussian_bits(quantize(y, mean), mean, scale).sum())
        return Compressed(strings, size, bits)

    def stream_shapes(self, shape: tuple[int, int]) -> list[tuple[int, ...]]:
        """Shapes of the latents :meth:`compress` codes for an ``(H, W)`` image,
        in stream order (``z`` first when there is a hyperprior, then ``y``)."""
        # Latent sides of the padded image: ceil(side / stride) * stride / step.
        h, w = (-(-side // self.stride) * self.stride for side in shape)
        y_shape = (1, self.config.latent_channels, h // LATENT_STRIDE,
                   w // LATENT_STRIDE)
        if not self.config.hyperprior:
            return [y_shape]
        return [(1, self.config.hyper_channels, h // HYPER_STRIDE, w // HYPER_STRIDE),
                y_shape]

    @torch.no_grad()
    def decompress(self, strings: list[bytes], shape: tuple[int, int]) -> Tensor:
        """Decode :meth:`compress`'s streams to ``x_hat`` ``(1, 3, H, W)`` in [0, 1].

        Args:
            strings: ``Compressed.strings``; shape: the image's ``(H, W)``.

        The decoder recomputes the prior with the same weights; its scales
        must snap to the same table entries as the encoder's, so decode on the
        same software and device type as the encoder (a last-bit difference
        at a table boundary desynchronises the coder; the streams' checksum
        then raises CodingError instead of returning garbage).

        Raises:
            CodingError: wrong number of streams, or a stream that does not
                decode under this model's prior (corrupt, or another model's).

        See: *A discretized VAE codec* (compressing to bytes).
        """
        if len(strings) != 1 + self.config.hyperprior:
            raise CodingError(f"this model reads {1 + self.config.hyperprior} "
                              f"stream(s), got {len(strings)}")
        *z_shapes, y_shape = self.stream_shapes(shape)
        z_hat = None
        if self.config.hyperprior:
            z_shape = z_shapes[0]
            z_mean, z_scale = self.z_prior(z_shape)
            z_hat = decode_latents(strings[0], z_mean, z_scale, z_shape)
        mean, scale = self.prior_parameters(y_shape, z_hat)
        y_hat = decode_latents(strings[-1], mean, scale, y_shape)
        return crop(self._synthesize(y_hat), shape).clamp(0.0, 1.0)

    @torch.no_grad()
    def sample(self, n: int, shape: tuple[int, int] = (64, 64),
               temperature: float = 1.0, integer: bool = False,
               generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Draw ``y`` from the factorized prior and decode it: ``(x_hat, y)``.

        As :meth:`~dvae_tutorial.hierarchical_vae.HierarchicalVAE.sample` (and
        in the same order: ``ε ~ N(0, 1)`` first, then ``u ~ U(-½, ½)``),

        .. math:: y = \\mu_c + t(\\sigma_c \\varepsilon + u)
           \\quad\\text{or}\\quad
           y = \\mu_c + \\mathrm{round}(t\\sigma_c\\varepsilon)

        (``integer``: on the coder's lattice ``μ_c + Z``, drawn from its pmf at
        ``t = 1``). Factorized models only: a hyperprior model would need a
        prior for ``z`` first. Returns ``x_hat`` (n, 3, *shape*) clamped to
        [0, 1] and ``y`` (n, M, ⌈H/16⌉, ⌈W/16⌉). ``generator`` must live on the
        model's device.

        Raises:
            DVAEError: a hyperprior model, ``n < 1``, an empty shape or ``t < 0``.

        See: *Hierarchical VAEs* (samples).
        """
        if self.config.hyperprior:
            raise DVAEError("sample draws from the factorized prior; this model has "
                            "a hyperprior (build it with hyperprior=False)")
        if n < 1 or min(shape) < 1 or not temperature >= 0:
            raise DVAEError(f"sample needs n >= 1, positive sides and a temperature "
                            f">= 0, got n={n}, shape={shape}, t={temperature}")
        *_, y_shape = self.stream_shapes(shape)
        mean, scale = self.prior_parameters((n, *y_shape[1:]))
        eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype,
                          device=mean.device)
        u = torch.rand(mean.shape, generator=generator, dtype=mean.dtype,
                       device=mean.device) - 0.5
        if integer:
            y = mean + torch.round(temperature * scale * eps)
        else:
            y = mean + temperature * (scale * eps + u)
        return crop(self.g_s(y), shape).clamp(0.0, 1.0), y


def _check_images(x: Tensor, single: bool = False) -> None:
    """Raise a clear DVAEError unless ``x`` is a float ``(B, 3, H, W)`` batch."""
    if x.dim() != 4 or x.shape[1] != 3 or not x.is_floating_point():
        raise DVAEError(f"expected float images of shape (B, 3, H, W) in [0, 1], got "
                        f"{x.dtype} {tuple(x.shape)}")
    if single and x.shape[0] != 1:
        raise DVAEError(f"compress codes one image at a time, got a batch of "
                        f"{x.shape[0]}; call it per image")
