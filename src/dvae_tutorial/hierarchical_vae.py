"""The hierarchical discretized VAE: ``L`` latent layers coded top-down.

Backs the chapter *Hierarchical VAEs*. Follows Duan et al. (2023)
[duan2023qresvae] (QRes-VAE: uniform posteriors, discretized Gaussian priors,
layer-by-layer coding, progressive decoding) and Child (2021)
[child2021vdvae] (the bottom-up / top-down ResNet VAE, scaled initialisation).

The model, in the book's notation (stage ``s`` at stride ``stem·2^s``, 4·2^s here)::

    x (B,3,H,W) in [0,1] --bottom-up encoder--> features e_s, one per stage
    h = a learned constant at the coarsest stage; for l = 1 … L (top-down):
        prior      p(z_l | z_<l)    = N(prior_mean, prior_scale²) ⊛ U(-½, ½)
        posterior  q(z_l | x, z_<l) = U(post_mean - ½, post_mean + ½)
        h <- end(h + proj(z_l))       (and a 2× upsampling between stages)
    x_hat = the last upsampling of h

``prior_mean, prior_scale`` come from ``h`` alone, ``post_mean`` from
``[h, e_s]``. Layer ``l`` costs ``-log2 p̂(z_l)`` bits with ``z_l = post_mean
+ u`` in training and ``round(post_mean - prior_mean) + prior_mean`` in
evaluation and coding; the unit box has zero entropy, so this is the layer's
KL term. One loop, :meth:`HierarchicalVAE._top_down`, runs the decoder for
training, evaluation, :meth:`~HierarchicalVAE.compress`,
:meth:`~HierarchicalVAE.decompress`, progressive decoding and sampling, and
each layer's prior comes from one method, :meth:`LatentBlock.prior`, so the
encoder and decoder cannot drift.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .configs import STAGE_FACTOR, HierarchicalConfig
from .distributions import discretized_gaussian_bits
from .entropy_coding import decode_latents, encode_latents
from .errors import CodingError, DVAEError
from .layers import conv, scale_
from .quantization import add_uniform_noise, quantize
from .single_layer_vae import (
    Compressed,
    VAEOutput,
    _check_images,
    crop,
    pad_to_multiple,
    positive_scale,
)

#: The network sees ``(x - 0.5) * 2`` in [-1, 1] and outputs ``out / 2 + 0.5``:
#: zero-centred inputs, and an all-zero decoder output is mid-gray.
IMAGE_SHIFT, IMAGE_GAIN = 0.5, 2.0
#: Pointwise MLP widening of the residual blocks (QRes-VAE uses 2).
MLP_RATIO = 2
#: Hidden channels of the prior, posterior and projection heads: width / 4,
#: VDVAE's bottleneck ratio [child2021vdvae].
HEAD_BOTTLENECK = 4
#: Epsilon of the blocks' LayerNorm (ConvNeXt's value).
NORM_EPS = 1e-6


class ConvNeXtBlock(nn.Module):
    """``x + pw2(gelu(pw1(norm(dw(x)))))``: a depthwise k×k conv, then an MLP.

    The ConvNeXt block (Liu et al. 2022) as QRes-VAE uses it; ``(B, C, H, W)``
    in and out. ``norm`` is a LayerNorm over the channels of each pixel (so
    nothing depends on the image size); ``pw2`` ends the residual branch.
    """

    def __init__(self, channels: int, kernel_size: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(channels, channels, kernel_size,
                            padding=kernel_size // 2, groups=channels)
        self.norm = nn.LayerNorm(channels, eps=NORM_EPS)
        self.pw1 = conv(channels, MLP_RATIO * channels, 1)
        self.pw2 = conv(MLP_RATIO * channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        dw = depthwise_float64(x, self.dw) if x.dtype == torch.float64 else self.dw(x)
        normed = self.norm(dw.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return x + self.pw2(F.gelu(self.pw1(normed)))


def depthwise_float64(x: Tensor, conv: nn.Conv2d) -> Tensor:
    """``conv(x)`` for a depthwise, stride-1, zero-padded ``conv`` in float64,
    as ``k²`` shifted multiply-adds.

    Hand-written because PyTorch has no fast float64 grouped convolution: it
    falls back to its reference path, one small matrix product per channel,
    which made the depthwise convolutions half the time of the hierarchical
    prior's coding pass (float64, see :mod:`~dvae_tutorial.hierarchical_prior`).
    Shift-and-add halves that pass on a Kodak image, and being elementwise it
    gives the same bits whatever the thread count. Agrees with ``conv`` to
    ~1e-15 (another summation order).
    """
    k, pad = conv.kernel_size[0], conv.padding[0]
    h, w = x.shape[-2:]
    padded = F.pad(x, (pad, pad, pad, pad))
    out = conv.bias.view(1, -1, 1, 1).expand_as(x).clone()
    for i in range(k):
        for j in range(k):
            out.addcmul_(padded[..., i:i + h, j:j + w],
                         conv.weight[:, :, i, j].view(1, -1, 1, 1))
    return out


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` (same parameters, same state dict) whose float64 forward,
    for a stride-1 zero-padded k×k kernel, is :func:`dense_float64`."""

    def forward(self, x: Tensor) -> Tensor:
        if (x.dtype == torch.float64 and self.kernel_size[0] > 1
                and x.shape[-2] * x.shape[-1] > DENSE_FLOAT64_POSITIONS
                and self.stride == (1, 1) and self.groups == 1
                and self.padding_mode == "zeros"):
            return dense_float64(x, self)
        return super().forward(x)


#: :class:`Conv2d` takes the k² route on float64 inputs of more positions
#: than this (a 4-megapixel photo's latent); smaller ones — every Kodak image —
#: keep PyTorch's convolution, which is faster there and leaves their files as
#: they were.
DENSE_FLOAT64_POSITIONS = 2**14


def dense_float64(x: Tensor, conv: nn.Conv2d) -> Tensor:
    """``conv(x)`` for a stride-1, zero-padded k×k ``conv`` in float64, as the
    sum of ``k²`` 1×1 convolutions of shifted copies of ``x``.

    Hand-written for memory: PyTorch's float64 convolution unfolds its whole
    input first (im2col), ``k²`` times the input's size — 650 MB for the
    prior's first 3×3 convolution on a 12-megapixel photo's latent, the peak
    of the coding pass. Here the largest temporary is one shifted copy, and
    each tap is one matrix product. Agrees with ``conv`` to ~1e-15 (another
    summation order).
    """
    k, pad = conv.kernel_size, conv.padding
    batch, channels, h, w = x.shape
    padded = F.pad(x, (pad[1], pad[1], pad[0], pad[0]))
    out = None
    for i in range(k[0]):
        for j in range(k[1]):
            shifted = padded[..., i:i + h, j:j + w].reshape(batch, channels, h * w)
            term = torch.matmul(conv.weight[:, :, i, j], shifted)  # (B, C_out, h·w)
            out = term if out is None else out.add_(term)
    if conv.bias is not None:
        out.add_(conv.bias.view(1, -1, 1))
    return out.view(batch, -1, h, w)


def _head(in_channels: int, hidden: int, out_channels: int) -> nn.Sequential:
    """VDVAE's bottleneck without the skip: 1×1, GELU, 3×3, GELU, 1×1."""
    return nn.Sequential(conv(in_channels, hidden, 1), nn.GELU(),
                         Conv2d(hidden, hidden, 3, padding=1), nn.GELU(),
                         conv(hidden, out_channels, 1))


class LatentBlock(nn.Module):
    """One latent layer ``z_l``: its prior, its posterior, and how it enters ``h``.

    ``h`` is (B, width, h, w), ``z_l`` (B, latent_channels, h, w).
    See: *Hierarchical VAEs* (the latent block).
    """

    def __init__(self, width: int, latent_channels: int, kernel_size: int) -> None:
        super().__init__()
        hidden = max(width // HEAD_BOTTLENECK, 1)
        self.front = ConvNeXtBlock(width, kernel_size)
        self.prior_head = _head(width, hidden, 2 * latent_channels)
        self.posterior_head = _head(2 * width, hidden, latent_channels)
        self.proj = _head(latent_channels, hidden, width)
        self.end = ConvNeXtBlock(width, kernel_size)

    def prior(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The one prior path: ``(h', prior_mean, prior_scale)`` from ``h`` alone.

        ``prior_scale = 0.11 + softplus(raw) > 0.11`` (gradient kept at the
        bound, see :func:`~dvae_tutorial.single_layer_vae.positive_scale`).
        """
        h = self.front(h)
        mean, raw_scale = self.prior_head(h).chunk(2, dim=1)
        return h, mean, positive_scale(raw_scale)

    def posterior_mean(self, h: Tensor, e: Tensor) -> Tensor:
        """``post_mean`` from ``h'`` (after :meth:`prior`) and the encoder feature."""
        return self.posterior_head(torch.cat([h, e], dim=1))

    def merge(self, h: Tensor, z: Tensor) -> Tensor:
        """Add the latent's information: ``end(h' + proj(z))``."""
        return self.end(h + self.proj(z))


class TopDownPass(NamedTuple):
    """One run of the decoder, per layer in top-down order ``z1 … zL``.

    Attributes:
        x_hat: the image (B, 3, H, W), cropped; clamped only by :meth:`sample`.
        latents: the ``z_l`` the decoder used (noisy, rounded, decoded, …).
        prior_means, prior_scales: the prior of each layer.
        posterior_means: ``post_mean`` of each layer (empty without an image).
    """

    x_hat: Tensor
    latents: list[Tensor]
    prior_means: list[Tensor]
    prior_scales: list[Tensor]
    posterior_means: list[Tensor]


#: How a use of the decoder picks ``z_l``: ``(l, prior_mean, prior_scale,
#: post_mean or None) -> z_l`` (``l`` counts from 0 in top-down order).
ChooseLatent = Callable[[int, Tensor, Tensor, Tensor | None], Tensor]


class HierarchicalVAE(nn.Module):
    """A QRes-VAE-style hierarchical discretized VAE; see the module docstring.

    See: *Hierarchical VAEs*.
    """

    #: The family written in ``.dvae`` headers and listed by ``dvae models``.
    family = "hierarchical"

    def __init__(self, config: HierarchicalConfig) -> None:
        super().__init__()
        self.config = c = config
        stages = range(len(c.widths))

        def blocks(s: int, n: int) -> list[ConvNeXtBlock]:
            return [ConvNeXtBlock(c.widths[s], c.kernel_sizes[s]) for _ in range(n)]

        self.encoder = nn.ModuleList(
            nn.Sequential(self._resample(s, nn.Conv2d), *blocks(s, c.encoder_blocks[s]))
            for s in stages)
        self.bias = nn.Parameter(torch.zeros(1, c.widths[-1], 1, 1))
        self.latent = nn.ModuleList(nn.ModuleList(
            LatentBlock(c.widths[s], c.latent_channels[s], c.kernel_sizes[s])
            for _ in range(c.latent_blocks[s])) for s in stages)
        self.decoder = nn.ModuleList(nn.Sequential(*blocks(s, c.decoder_blocks[s]))
                                     for s in stages)
        self.up = nn.ModuleList(self._resample(s, nn.ConvTranspose2d) for s in stages)
        init_hierarchical_(self)

    def _resample(self, s: int, kind: type[nn.Conv2d | nn.ConvTranspose2d]):
        """Patch conv into stage ``s`` (from ``s - 1`` or the image) or its
        transpose out of it; kernel = stride = 2, or ``stem_stride`` at s = 0."""
        c = self.config
        outer, factor = (c.widths[s - 1], STAGE_FACTOR) if s else (3, c.stem_stride)
        channels = (outer, c.widths[s]) if kind is nn.Conv2d else (c.widths[s], outer)
        return kind(*channels, factor, stride=factor)

    def padded_size(self, shape: tuple[int, int]) -> tuple[int, int]:
        """(H, W) rounded up to multiples of :attr:`stride`."""
        return tuple(-(-int(side) // self.stride) * self.stride for side in shape)

    @property
    def stride(self) -> int:
        """Images are padded to multiples of this (64 for the presets)."""
        return self.config.stride

    def encode(self, x: Tensor) -> list[Tensor]:
        """Bottom-up features ``e_s`` (B, C_s, H/(4·2^s), W/(4·2^s)), finest first.

        ``x``: (B, 3, H, W) in [0, 1], sides multiples of :attr:`stride`.
        """
        features, e = [], (x - IMAGE_SHIFT) * IMAGE_GAIN
        for stage in self.encoder:
            e = stage(e)
            features.append(e)
        return features

    def _top_down(self, batch: int, size: tuple[int, int], choose: ChooseLatent,
                  features: list[Tensor] | None = None) -> TopDownPass:
        """The decoder loop shared by every use; ``size`` is the padded (H, W)."""
        h = self.bias.expand(batch, -1, size[0] // self.stride, size[1] // self.stride)
        latents, means, scales, posts = [], [], [], []
        for s in reversed(range(len(self.latent))):
            for block in self.latent[s]:
                h, mean, scale = block.prior(h)
                post = None if features is None else block.posterior_mean(h, features[s])
                z = choose(len(latents), mean, scale, post)
                h = block.merge(h, z)
                latents.append(z)
                means.append(mean)
                scales.append(scale)
                posts += [] if post is None else [post]
            h = self.up[s](self.decoder[s](h))
        return TopDownPass(h / IMAGE_GAIN + IMAGE_SHIFT, latents, means, scales, posts)

    def top_down(self, x: Tensor) -> TopDownPass:
        """Encode and decode ``x`` (B, 3, H, W) in [0, 1], any ``H, W``.

        ``latents[l]`` is ``post_mean + u`` in ``train()``, ``round(post_mean -
        prior_mean) + prior_mean`` in ``eval()``; ``x_hat`` is cropped back.
        """
        _check_images(x)
        size = x.shape[-2:]
        padded = pad_to_multiple(x, self.stride)

        def choose(layer, mean, scale, post):
            return add_uniform_noise(post) if self.training else quantize(post, mean)

        out = self._top_down(x.shape[0], padded.shape[-2:], choose, self.encode(padded))
        return out._replace(x_hat=crop(out.x_hat, size))

    def forward(self, x: Tensor) -> VAEOutput:
        """Rate and distortion per image, as :func:`~dvae_tutorial.training.fit` needs.

        .. math:: \\text{bits}(z_l) = -\\sum \\log_2\\big[F_l(z_l + \\tfrac12)
           - F_l(z_l - \\tfrac12)\\big], \\quad F_l \\text{ the cdf of }
           \\mathcal N(\\mu_l, \\sigma_l^2) \\text{ given } z_{<l}

        Returns :class:`~dvae_tutorial.single_layer_vae.VAEOutput` for ``x``
        (B, 3, H, W) in [0, 1]: ``bits`` keyed ``"z1" … "zL"`` (top-down), ``bpp``
        per unpadded pixel. In eval mode ``x_hat.clamp(0, 1)`` is exactly
        ``decompress(*compress(x)[:2])`` for one image.
        """
        out = self.top_down(x)
        bits = {f"z{layer + 1}": discretized_gaussian_bits(z, m, s).sum((1, 2, 3))
                for layer, (z, m, s) in enumerate(zip(
                    out.latents, out.prior_means, out.prior_scales, strict=True))}
        bpp = sum(bits.values()) / (x.shape[-2] * x.shape[-1])
        mse = (out.x_hat - x).square().mean((1, 2, 3))
        return VAEOutput(out.x_hat, bits, bpp, mse)

    @torch.no_grad()
    def compress(self, x: Tensor) -> Compressed:
        """One image (1, 3, H, W) in [0, 1] → one stream per latent layer.

        ``z1`` (coarsest) first: each layer's prior depends on the layers
        before it, so the decoder reads the streams in this order.

        See: *Hierarchical VAEs* (layer-by-layer coding).
        """
        x = x.unsqueeze(0) if x.dim() == 3 else x
        _check_images(x, single=True)
        padded = pad_to_multiple(x, self.stride)
        strings, bits = [], 0.0

        def choose(layer, mean, scale, post):
            nonlocal bits
            strings.append(encode_latents(post, mean, scale))
            z_hat = quantize(post, mean)
            bits += float(discretized_gaussian_bits(z_hat, mean, scale).sum())
            return z_hat

        self._top_down(1, padded.shape[-2:], choose, self.encode(padded))
        return Compressed(strings, (int(x.shape[-2]), int(x.shape[-1])), bits)

    def stream_shapes(self, shape: tuple[int, int]) -> list[tuple[int, ...]]:
        """Latent shapes :meth:`compress` codes for an (H, W) image, stream order."""
        c = self.config
        h, w = self.padded_size(shape)
        steps = [c.stem_stride * STAGE_FACTOR**s for s in range(len(c.widths))]
        return [(1, c.latent_channels[s], h // steps[s], w // steps[s])
                for s in reversed(range(len(c.widths)))
                for _ in range(c.latent_blocks[s])]

    @torch.no_grad()
    def decompress(self, strings: list[bytes], shape: tuple[int, int]) -> Tensor:
        """Decode all ``L`` streams to ``x_hat`` (1, 3, H, W) in [0, 1].

        Raises:
            CodingError: not exactly ``L`` streams, or a stream that does not
                decode under this model's prior (corrupt, or another model's).

        See: *Hierarchical VAEs* (layer-by-layer coding).
        """
        if len(strings) != self.config.num_layers:
            raise CodingError(f"this model reads {self.config.num_layers} streams "
                              f"(one per latent layer), got {len(strings)}")
        return self.decompress_progressive(strings, shape, len(strings))

    @torch.no_grad()
    def decompress_progressive(self, strings: list[bytes], shape: tuple[int, int],
                               k: int) -> Tensor:
        """Decode the first ``k`` layers, the others at their prior means: ``x_hat``.

        Only ``strings[:k]`` are read (a prefix of the streams is enough);
        ``k = L`` is :meth:`decompress`, ``k = 0`` the "prior-mean image".
        Returns (1, 3, H, W) in [0, 1]. Raises DVAEError for ``k`` outside
        ``0 … L``, CodingError for fewer than ``k`` or more than ``L`` streams
        or a stream that does not decode.

        See: *Hierarchical VAEs* (progressive decoding).
        """
        choose = prefix_choice(strings, k, self.config.num_layers)
        x_hat = self._top_down(1, self.padded_size(shape), choose).x_hat
        return crop(x_hat, shape).clamp(0.0, 1.0)

    @torch.no_grad()
    def sample(self, n: int, shape: tuple[int, int] = (64, 64),
               temperature: float = 1.0, integer: bool = False,
               generator: torch.Generator | None = None) -> TopDownPass:
        """Ancestral sampling from the priors, ``z1`` first.

        Each layer draws ``ε ~ N(0, 1)`` and then ``u ~ U(-½, ½)`` (both, in
        both modes), so one generator seed gives the same ``ε`` with and
        without ``integer``:

        .. math:: z_l = \\mu_l + t(\\sigma_l \\varepsilon + u)
           \\quad\\text{or}\\quad
           z_l = \\mathrm{round}(\\mu_l + t\\sigma_l\\varepsilon - \\mu_l) + \\mu_l

        (temperature ``t >= 0``): a draw from ``N(μ, σ²) ⊛ U`` at ``t = 1``, or
        (``integer``) from the pmf the coder uses, on the lattice ``μ + Z``.
        ``t = 0`` gives the prior-mean image (:meth:`decompress_progressive`,
        ``k = 0``). ``generator`` must live on the model's device. Returns a
        :class:`TopDownPass` with ``x_hat`` (n, 3, *shape*) clamped to [0, 1].

        See: *Hierarchical VAEs* (samples).
        """
        if n < 1 or min(shape) < 1 or not temperature >= 0:
            raise DVAEError(f"sample needs n >= 1, positive sides and a temperature "
                            f">= 0, got n={n}, shape={shape}, t={temperature}")

        out = self._top_down(n, self.padded_size(shape),
                             sample_choice(temperature, integer, generator))
        return out._replace(x_hat=crop(out.x_hat, shape).clamp(0.0, 1.0))


def prefix_choice(strings: list[bytes], k: int, layers: int) -> ChooseLatent:
    """The :data:`ChooseLatent` of progressive decoding, one stream per layer:
    layers ``< k`` decoded from ``strings``, the others at their prior means.

    Raises DVAEError for ``k`` outside ``0 … layers``, CodingError for fewer
    than ``k`` or more than ``layers`` streams.
    """
    if not 0 <= k <= layers:
        raise DVAEError(f"k must be between 0 and {layers} layers, got {k}")
    if not k <= len(strings) <= layers:
        raise CodingError(f"decoding {k} layers needs {k} to {layers} streams, "
                          f"got {len(strings)}")

    def choose(layer, mean, scale, post):
        if layer >= k:
            return mean
        return decode_latents(strings[layer], mean, scale, tuple(mean.shape))

    return choose


def sample_choice(temperature: float, integer: bool,
                  generator: torch.Generator | None) -> ChooseLatent:
    """The :data:`ChooseLatent` of ancestral sampling (both hierarchical models).

    Draws ``ε ~ N(0, 1)``, then ``u ~ U(-½, ½)`` (both, in both modes, so one
    seed gives the same ``ε`` with and without ``integer``) and returns
    ``μ + t(σε + u)``, or ``μ + round(tσε)`` on the coder's lattice.
    """

    def choose(layer, mean, scale, post):
        eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype,
                          device=mean.device)
        u = torch.rand(mean.shape, generator=generator, dtype=mean.dtype,
                       device=mean.device) - 0.5
        if integer:
            return mean + torch.round(temperature * scale * eps)
        return mean + temperature * (scale * eps + u)

    return choose


@torch.no_grad()
def init_hierarchical_(model: HierarchicalVAE) -> HierarchicalVAE:
    """Initialise ``model`` for a stable start (called once by its constructor).

    1. The last convolution of every prior head is zero, so every prior
       starts as N(0, ``positive_scale(0)`` ≈ 0.80²) whatever the features.
    2. The last layer of every residual branch adding to the encoder's stream
       (``N_enc`` blocks) or to the decoder's (``front``, ``proj``, ``end`` of
       every latent block and the plain decoder blocks: ``N_dec``) is scaled
       by ``1/√N`` of its stream, so the stream's variance grows by O(1) over
       the whole depth instead of O(N) (VDVAE [child2021vdvae]).

    The reference QRes-VAE code scales by ``math.sqrt(1 / 3*N)``, which by
    precedence is ``√(N/3)`` (growing with depth), not the intended
    ``1/√(3N)``; here it is ``1 / math.sqrt(n)``, ``n`` the branches counted.
    Returns ``model``; not idempotent (each call scales again).

    See: *Hierarchical VAEs* (initialisation).
    """
    encoder = [b.pw2 for stage in model.encoder for b in stage[1:]]
    decoder = [b.pw2 for plain in model.decoder for b in plain]
    for stage in model.latent:
        decoder += [x for b in stage for x in (b.front.pw2, b.proj[-1], b.end.pw2)]
    for branches in (encoder, decoder):
        for layer in branches:
            scale_(layer, 1.0 / math.sqrt(len(branches)))
    for stage in model.latent:
        for block in stage:
            nn.init.zeros_(block.prior_head[-1].weight)
            nn.init.zeros_(block.prior_head[-1].bias)
    return model
