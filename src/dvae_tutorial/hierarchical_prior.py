"""The book's hierarchical VAE: a hierarchy of latent layers over a single-layer latent.

Backs the chapter *Hierarchical VAEs*. The finest latent is the single-layer
model's ``y`` (stride 16, from :mod:`~dvae_tutorial.single_layer_vae`'s
``g_a``); above it sit ``L - 1`` latent layers ``z_1 … z_{L-1}`` at strides
16, 32, 64 (several per stride), decoded top-down from a learned constant by
QRes-VAE's latent blocks [duan2023qresvae] (:class:`~dvae_tutorial.
hierarchical_vae.LatentBlock`). Every layer, ``y`` included, is the seed's
construction: a uniform posterior ``U(post_mean - ½, post_mean + ½)`` and a
discretized Gaussian prior whose mean and scale come from the layers above::

    x --g_a--> y --bottom-up--> e_s (one feature map per stage)
    h = learned constant (stride 64); for l = 1 … L-1 (top-down):
        p(z_l | z_<l) from h, q(z_l | y, z_<l) from [h, e_s]; h <- merge(h, z_l)
    p(y | z_<L) = N(prior_mean, prior_scale²) ⊛ U(-½, ½), from h at stride 16
    x_hat = g_s(y_hat)

This is a Ballé-style hyperprior [balle2018variational, minnen2018joint]
made deep: with ``L = 2`` it *is* the mean–scale hyperprior. Why this design
(and not the from-scratch ResNet VAE of :mod:`~dvae_tutorial.
hierarchical_vae`): the single-layer models' transforms are already trained;
what they lack is a prior that adapts to the image. Warm-started from them,
the prior trains on cached latents at 1/16 of the image resolution (the
transforms frozen: same PSNR, only the rate changes), then end to end.

One loop, :meth:`HierarchicalPriorVAE._top_down`, runs the prior for the
training forward, :meth:`~HierarchicalPriorVAE.compress`,
:meth:`~HierarchicalPriorVAE.decompress`, progressive decoding and sampling.

**Decoding elsewhere.** A layer's prior scale comes out of a network, and
the coder snaps it to a table index: a last-bit difference between encoder
and decoder at a table boundary desynchronises the stream. Convolutions in
float32 differ in their last bits between thread counts (measured: 9 of 24
Kodak files of a float32 prior failed to decode with another thread count).
So :meth:`compress` and :meth:`decompress` run the prior in **float64**: the
same differences are then ~1e-16 relative, and a flip needs a scale within
that of a table boundary (≈ 3e-14 per element, ~1e-8 per Kodak image). The
transforms ``g_a``/``g_s`` stay float32 (they do not touch the coder).

**One stream per image.** All ``L`` layers go into one range-coded stream
(:class:`~dvae_tutorial.entropy_coding.LayeredEncoder`), ``z_1`` first: one
stream per layer cost ~30 bytes of framing each, +6 % on a Kodak file at
0.13 bpp. The decoder still reads layer by layer, so progressive decoding
stops after any ``k`` layers.
"""

from __future__ import annotations

import copy
import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

from . import tiling
from .configs import LATENT_STRIDE, STAGE_FACTOR, HierarchicalPriorConfig, ModelConfig
from .distributions import discretized_gaussian_bits
from .entropy_coding import LAYER_CHUNK, LayeredDecoder, LayeredEncoder
from .errors import CodingError, DVAEError
from .hierarchical_vae import (
    ChooseLatent,
    Conv2d,
    ConvNeXtBlock,
    LatentBlock,
    TopDownPass,
    _head,
    sample_choice,
)
from .quantization import add_uniform_noise, quantize
from .single_layer_vae import (
    Compressed,
    VAEOutput,
    _check_images,
    _transforms,
    crop,
    pad_to_multiple,
    positive_scale,
)


class PriorPass(NamedTuple):
    """One run of the prior, per layer in top-down order ``z_1 … z_{L-1}, y``.

    Attributes:
        latents: the values the prior conditioned on (noisy, rounded, decoded…);
            the last one is ``y``'s.
        prior_means, prior_scales: each layer's prior.
    """

    latents: list[Tensor]
    prior_means: list[Tensor]
    prior_scales: list[Tensor]


class LatentHierarchy(nn.Module):
    """The prior of ``y``: bottom-up features of ``y``, top-down latent layers.

    Stage ``s`` works at stride ``16 · 2^s`` of the image (``y``'s grid is
    stage 0). See: *Hierarchical VAEs* (the structure).
    """

    def __init__(self, config: HierarchicalPriorConfig) -> None:
        super().__init__()
        c, m = config, config.latent_channels
        stages = range(len(c.widths))

        def blocks(s: int, n: int) -> list[ConvNeXtBlock]:
            return [ConvNeXtBlock(c.widths[s], c.kernel_sizes[s]) for _ in range(n)]

        def into(s: int) -> nn.Conv2d:  # y → stage 0, or stage s-1 → s (2×2 patches)
            if s == 0:
                return Conv2d(m, c.widths[0], 3, padding=1)  # float64: dense_float64
            return nn.Conv2d(c.widths[s - 1], c.widths[s], STAGE_FACTOR,
                             stride=STAGE_FACTOR)

        self.encoder = nn.ModuleList(nn.Sequential(into(s), *blocks(s, c.encoder_blocks[s]))
                                     for s in stages)
        self.bias = nn.Parameter(torch.zeros(1, c.widths[-1], 1, 1))
        self.latent = nn.ModuleList(nn.ModuleList(
            LatentBlock(c.widths[s], c.z_channels[s], c.kernel_sizes[s])
            for _ in range(c.latent_blocks[s])) for s in stages)
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(c.widths[s], c.widths[s - 1], STAGE_FACTOR,
                               stride=STAGE_FACTOR) for s in stages if s > 0)
        # y's prior: one more block, then a head as wide as the stage (the
        # z-layers' heads are width/4 wide; y has M = 96-192 channels to predict)
        self.y_front = ConvNeXtBlock(c.widths[0], c.kernel_sizes[0])
        self.y_head = _head(c.widths[0], c.widths[0], 2 * m)
        self._init()

    @torch.no_grad()
    def _init(self) -> None:
        """The ``z`` priors start as N(0, 0.80²) (zero last layers of their
        heads); everything else keeps PyTorch's default initialisation.

        Unlike :func:`~dvae_tutorial.hierarchical_vae.init_hierarchical_`, no
        residual branch is scaled down and ``y``'s head is not zeroed: here the
        only signal that makes a ``z`` worth its bits is how much it sharpens
        ``y``'s prior, and that path must carry gradient from the first step.
        Measured (hier3 on ``single-845``'s latents, 500 steps): with the
        VDVAE-style init every ``z`` collapsed onto its prior within 100 steps
        and the rate stayed at the factorized prior's (0.92 bpp on noisy
        training crops); with this init and the rate warm-up of
        :class:`PriorTraining`, 0.82 bpp and falling. ``dvae train --init``
        sets ``y``'s head bias to the parent's per-channel prior, so the
        hierarchy starts where the single-layer model stands.
        """
        for stage in self.latent:
            for block in stage:
                nn.init.zeros_(block.prior_head[-1].weight)
                nn.init.zeros_(block.prior_head[-1].bias)

    @torch.no_grad()
    def start_from_factorized(self, mean: Tensor, raw_scale: Tensor) -> None:
        """Set ``y``'s head bias to a factorized prior's per-channel ``(mean,
        raw scale)`` (a single-layer model's ``y_prior``), the warm start."""
        self.y_head[-1].bias.copy_(torch.cat([mean.flatten(), raw_scale.flatten()]))

    def encode(self, y: Tensor) -> list[Tensor]:
        """Bottom-up features ``e_s`` of ``y``, finest first."""
        features, e = [], y
        for stage in self.encoder:
            e = stage(e)
            features.append(e)
        return features

    def y_prior(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """``(prior_mean, prior_scale)`` of ``y`` from the stride-16 stream ``h``."""
        mean, raw_scale = self.y_head(self.y_front(h)).chunk(2, dim=1)
        return mean, positive_scale(raw_scale)

    def top_down(self, batch: int, size: tuple[int, int], choose: ChooseLatent,
                 y: Tensor | None = None) -> PriorPass:
        """The one prior path. ``size`` is ``y``'s (h, w) (multiples of the
        stage factor ``2^(S-1)``); with ``y`` the posteriors are available.

        ``choose(l, prior_mean, prior_scale, post_mean or None)`` picks layer
        ``l``'s value (``l = L - 1`` is ``y``, whose ``post_mean`` is ``y``).
        """
        top = STAGE_FACTOR ** (len(self.latent) - 1)
        if y is not None:  # one memory layout, whatever g_a's (channels-last when shipped):
            y = y.contiguous()  # random draws like rand_like(post) follow the layout
        features = None if y is None else self.encode(y)
        h = self.bias.expand(batch, -1, size[0] // top, size[1] // top)
        latents, means, scales = [], [], []
        for s in reversed(range(len(self.latent))):
            for block in self.latent[s]:
                h, mean, scale = block.prior(h)
                post = None if y is None else block.posterior_mean(h, features[s])
                z = choose(len(latents), mean, scale, post)
                h = block.merge(h, z)
                latents.append(z)
                means.append(mean)
                scales.append(scale)
            if s > 0:
                h = self.up[s - 1](h)
        mean, scale = self.y_prior(h)
        latents.append(choose(len(latents), mean, scale, y))
        means.append(mean)
        scales.append(scale)
        return PriorPass(latents, means, scales)

    def bits(self, y: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        """Bits per image of every layer given ``y`` (B, M, h, w), keyed ``"z1"``
        … ``"z{L-1}"``, ``"y"`` (``-Σ log₂ p̂`` of each), and the ``y`` the
        decoder gets: noisy latents in ``train()``, rounded around the prior
        means in ``eval()``."""

        def choose(layer, mean, scale, post):
            return add_uniform_noise(post) if self.training else quantize(post, mean)

        out = self.top_down(y.shape[0], tuple(y.shape[-2:]), choose, y)
        names = [f"z{i + 1}" for i in range(len(out.latents) - 1)] + ["y"]
        bits = {name: discretized_gaussian_bits(z, m, s).sum((1, 2, 3))
                for name, z, m, s in zip(names, out.latents, out.prior_means,
                                         out.prior_scales, strict=True)}
        return bits, out.latents[-1]


class HierarchicalPriorVAE(tiling.TiledTransforms, nn.Module):
    """The single-layer transforms ``g_a``/``g_s`` with a hierarchical prior.

    See the module docstring and *Hierarchical VAEs*. ``g_a`` and ``g_s`` have
    the names and shapes of :class:`~dvae_tutorial.single_layer_vae.
    SingleLayerVAE`'s, so ``dvae train --init`` takes them from a shipped
    single-layer checkpoint.
    """

    #: The family written in ``.dvae`` headers and listed by ``dvae models``.
    family = "hierarchical"

    def __init__(self, config: HierarchicalPriorConfig) -> None:
        super().__init__()
        self.config = config
        self.g_a, self.g_s = _transforms(ModelConfig(
            channels=config.channels, latent_channels=config.latent_channels,
            hyperprior=False, gdn=config.gdn))
        self.prior = LatentHierarchy(config)

    @property
    def stride(self) -> int:
        """Images are padded to multiples of this (64 for three stages)."""
        return self.config.stride

    def padded_size(self, shape: tuple[int, int]) -> tuple[int, int]:
        """(H, W) rounded up to multiples of :attr:`stride`."""
        return tuple(-(-int(side) // self.stride) * self.stride for side in shape)

    def forward(self, x: Tensor) -> VAEOutput:
        """Rate and distortion per image (as :func:`~dvae_tutorial.training.fit`
        needs); ``bits`` keyed ``"z1" … "z{L-1}", "y"``, ``bpp`` per unpadded
        pixel. Uniform noise in ``train()``; in ``eval()`` rounding, with the
        prior in float64 as :meth:`compress` runs it, so ``x_hat.clamp(0, 1)``
        is exactly :meth:`decompress`'s and the bits are the streams' ``-Σ log₂ P``."""
        _check_images(x)
        size = x.shape[-2:]
        y = self.g_a(pad_to_multiple(x, self.stride))
        if self.training:
            bits, y_q = self.prior.bits(y)
        else:  # the coder's float64 prior: x_hat is exactly decompress's
            bits, y_q = self._coding_prior().bits(y.double())
            y_q = y_q.to(y.dtype)
        x_hat = crop(self.g_s(y_q) if self.training else self._synthesize(y_q),
                     size)
        bpp = sum(bits.values()) / (size[0] * size[1])
        mse = (x_hat - x).square().mean((1, 2, 3))
        return VAEOutput(x_hat, bits, bpp, mse)

    @torch.no_grad()
    def top_down(self, x: Tensor) -> TopDownPass:
        """Every layer of an image batch ``x`` (B, 3, H, W) as the codec sees it:
        rounded latents, priors and posterior means (float64, the coder's
        prior), ``x_hat`` cropped. ``posterior_means[-1]`` is ``y = g_a(x)``.
        For inspection (the chapter's figures); :meth:`forward` trains.
        """
        _check_images(x)
        y = self.g_a(pad_to_multiple(x, self.stride)).double()
        posts = []

        def choose(layer, mean, scale, post):
            posts.append(post)
            return quantize(post, mean)

        out = self._coding_prior().top_down(x.shape[0], tuple(y.shape[-2:]), choose, y)
        x_hat = crop(self._synthesize(out.latents[-1].float()), x.shape[-2:])
        return TopDownPass(x_hat, out.latents, out.prior_means, out.prior_scales, posts)

    def _coding_prior(self) -> LatentHierarchy:
        """A float64 copy of the prior for coding (see the module docstring).

        Kept between calls (a copy costs ~0.1 s, a tenth of a Kodak decode)
        and made anew when any weight of the prior has changed: moved
        (``data_ptr``) or written in place (``_version``: optimizer steps,
        ``load_state_dict``)."""
        key = tuple((t.data_ptr(), t._version) for t in self.prior.state_dict(
            keep_vars=True).values())
        cached = self.__dict__.get("_coding_cache")  # not a submodule
        if cached is None or cached[0] != key:
            cached = (key, copy.deepcopy(self.prior).double().eval())
            self.__dict__["_coding_cache"] = cached
        return cached[1]

    def layer_shapes(self, shape: tuple[int, int]) -> list[tuple[int, ...]]:
        """Latent shapes :meth:`compress` codes for an (H, W) image, in coding
        order (``z_1`` … ``z_{L-1}``, then ``y``)."""
        c = self.config
        h, w = (side // LATENT_STRIDE for side in self.padded_size(shape))
        return [(1, c.z_channels[s], h // STAGE_FACTOR**s, w // STAGE_FACTOR**s)
                for s in reversed(range(len(c.widths)))
                for _ in range(c.latent_blocks[s])] + [(1, c.latent_channels, h, w)]

    def stream_shapes(self, shape: tuple[int, int]) -> list[tuple[int, ...]]:
        """The file header's shapes: one stream, named by ``y``'s shape (the
        ``z`` layers' follow from it, :meth:`layer_shapes`)."""
        return self.layer_shapes(shape)[-1:]

    @torch.no_grad()
    def compress(self, x: Tensor) -> Compressed:
        """One image (1, 3, H, W) in [0, 1] → one stream holding every layer,
        ``z_1`` first (``Compressed.layer_bits``: each layer's share of it).

        See: *Hierarchical VAEs* (layer-by-layer coding).
        """
        x = x.unsqueeze(0) if x.dim() == 3 else x
        _check_images(x, single=True)
        size = (int(x.shape[-2]), int(x.shape[-1]))
        y = self._analyze(x).double()
        del x  # the image is not needed any more (large photos: memory)
        encoder, bits = LayeredEncoder(), 0.0

        def choose(layer, mean, scale, post):
            nonlocal bits
            encoder.encode(post, mean, scale)
            z_hat = quantize(post, mean)
            bits += _total_bits(z_hat, mean, scale)
            return z_hat

        self._coding_prior().top_down(1, tuple(y.shape[-2:]), choose, y)
        return Compressed([encoder.finish()], size, bits, tuple(encoder.layer_bits))

    @torch.no_grad()
    def decompress(self, strings: list[bytes], shape: tuple[int, int]) -> Tensor:
        """Decode the stream of :meth:`compress` to ``x_hat`` (1, 3, H, W) in [0, 1].

        Raises:
            CodingError: not exactly one stream, or one that does not decode
                under this model's prior (corrupt, truncated, foreign).
        """
        return self.decompress_progressive(strings, shape, self.config.num_layers)

    @torch.no_grad()
    def decompress_progressive(self, strings: list[bytes], shape: tuple[int, int],
                               k: int) -> Tensor:
        """Decode the first ``k`` layers of the stream, the others at their
        prior means.

        ``k = L`` is :meth:`decompress` (and checks the whole stream); ``k = L - 1``
        decodes every ``z`` and shows ``y``'s prior mean; ``k = 0`` the image
        of the learned constant (``strings`` may then be empty: nothing is
        read). Raises DVAEError for ``k`` outside ``0 … L``, CodingError for
        anything but one stream.

        See: *Hierarchical VAEs* (progressive decoding).
        """
        layers = self.config.num_layers
        if not 0 <= k <= layers:
            raise DVAEError(f"k must be between 0 and {layers} layers, got {k}")
        if len(strings) != 1 and (k or strings):
            raise CodingError(f"this model reads one stream (all {layers} layers), "
                              f"got {len(strings)}")
        sizes = [math.prod(s) for s in self.layer_shapes(shape)]
        decoder = LayeredDecoder(strings[0], sum(sizes)) if k else None

        def choose(layer, mean, scale, post):
            if layer >= k:
                return mean
            return decoder.decode(mean, scale, tuple(mean.shape))

        size = tuple(side // LATENT_STRIDE for side in self.padded_size(shape))
        y_hat = self._coding_prior().top_down(1, size, choose).latents[-1]
        if k == layers:
            decoder.finish()
        return crop(self._synthesize(y_hat.float()), shape).clamp(0.0, 1.0)

    @torch.no_grad()
    def sample(self, n: int, shape: tuple[int, int] = (64, 64),
               temperature: float = 1.0, integer: bool = False,
               generator: torch.Generator | None = None) -> TopDownPass:
        """Ancestral sampling, ``z_1`` first and ``y`` last, then ``g_s``.

        As :meth:`~dvae_tutorial.hierarchical_vae.HierarchicalVAE.sample`: each
        layer draws ``ε ~ N(0, 1)`` then ``u ~ U(-½, ½)``, continuous
        ``μ + t(σε + u)`` or (``integer``) ``μ + round(tσε)`` on the coder's
        lattice — one generator seed, the same ``ε`` in both modes. Returns a
        :class:`~dvae_tutorial.hierarchical_vae.TopDownPass` with ``x_hat``
        (n, 3, *shape*) clamped to [0, 1] (no posterior means).

        See: *Hierarchical VAEs* (samples).
        """
        if n < 1 or min(shape) < 1 or not temperature >= 0:
            raise DVAEError(f"sample needs n >= 1, positive sides and a temperature "
                            f">= 0, got n={n}, shape={shape}, t={temperature}")
        size = tuple(side // LATENT_STRIDE for side in self.padded_size(shape))
        out = self.prior.top_down(n, size, sample_choice(temperature, integer,
                                                         generator))
        x_hat = crop(self.g_s(out.latents[-1]), shape).clamp(0.0, 1.0)
        return TopDownPass(x_hat, out.latents, out.prior_means, out.prior_scales, [])


def _total_bits(z: Tensor, mean: Tensor, scale: Tensor) -> float:
    """``-Σ log₂ p̂(z)`` of one layer; over runs of ``LAYER_CHUNK`` elements
    when it is larger (the temporaries of a 12-megapixel photo's ``y`` would
    take half a gigabyte), whole otherwise (every Kodak image: the same sum)."""
    if z.numel() <= LAYER_CHUNK:
        return float(discretized_gaussian_bits(z, mean, scale).sum())
    z, mean, scale = (t.expand_as(z).reshape(-1) for t in (z, mean, scale))
    return sum(float(discretized_gaussian_bits(z[i:i + LAYER_CHUNK],
                                               mean[i:i + LAYER_CHUNK],
                                               scale[i:i + LAYER_CHUNK]).sum())
               for i in range(0, z.numel(), LAYER_CHUNK))


#: Rate warm-up of :class:`PriorTraining`: the ``z`` layers' bits enter the
#: loss with weight 0 for the first 500 steps, rising linearly to 1 at step
#: 1000 (KL annealing, Bowman et al. 2016; Sønderby et al. 2016). Without it
#: the ``z`` layers are cheaper switched off than learned, and they collapse
#: onto their priors before ``y``'s prior has learned to read them.
#: Measured (hier3 over ``single-300``, 16 crops of 16×16, step 1200): with
#: (100, 400) every ``z`` collapsed (0.543 bpp, the factorized prior's); with
#: (500, 1000), 0.486 bpp (−11 %). At λ = 845, (100, 400) was enough.
RATE_WARMUP = (500, 1000)


class PriorTraining(nn.Module):
    """Stage 2 of the recipe: train ``model.prior`` on cached latents ``y``.

    Holds ``model``'s own submodules under the same names (``g_a``, ``g_s``
    frozen; ``prior``), so its ``state_dict`` *is* the model's and a
    checkpoint of it loads into :class:`HierarchicalPriorVAE`. ``forward(y)``
    takes latent crops (B, M, h, w) — the transforms never run — and returns
    the rate only (``mse`` 0: the distortion does not depend on the prior).
    ``validation_model`` is the full model (same weights) for
    :func:`~dvae_tutorial.training.validate` on images.

    During the rate warm-up ``warmup = (start, end)`` (default
    :data:`RATE_WARMUP`; ``(0, 0)``: none, for fine-tuning a trained prior)
    the returned ``bpp`` is the objective's, ``y``'s bits plus ``β`` times
    the ``z`` bits (``bits`` stay the true ones); ``step`` counts
    training-mode forwards (one per optimizer step; set it when resuming).

    See: *Hierarchical VAEs* (the value of hierarchy, measured).
    """

    def __init__(self, model: HierarchicalPriorVAE,
                 warmup: tuple[int, int] = RATE_WARMUP) -> None:
        super().__init__()
        if not 0 <= warmup[0] <= warmup[1]:
            raise DVAEError(f"the rate warm-up needs 0 <= start <= end, got {warmup}")
        self.warmup = tuple(warmup)
        self.g_a, self.g_s, self.prior = model.g_a, model.g_s, model.prior
        self.g_a.requires_grad_(False)
        self.g_s.requires_grad_(False)
        self.config, self.family = model.config, model.family
        object.__setattr__(self, "validation_model", model)  # not a submodule
        self.step = 0

    @property
    def stride(self) -> int:
        return self.config.stride

    def forward(self, y: Tensor) -> VAEOutput:
        if y.dim() != 4 or y.shape[1] != self.config.latent_channels:
            raise DVAEError(f"PriorTraining takes latent crops (B, "
                            f"{self.config.latent_channels}, h, w), got "
                            f"{tuple(y.shape)}")
        bits, y_q = self.prior.bits(y)
        start, end = self.warmup
        beta = 1.0
        if self.training:
            beta = (1.0 if self.step >= end else 0.0 if self.step <= start
                    else (self.step - start) / (end - start))
            self.step += 1
        rate = bits["y"] + beta * sum(v for k, v in bits.items() if k != "y")
        pixels = y.shape[-2] * y.shape[-1] * LATENT_STRIDE**2
        return VAEOutput(y_q, bits, rate / pixels, y.new_zeros(y.shape[0]))
