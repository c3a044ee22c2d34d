"""Model and training configurations: frozen dataclasses and named presets.

Backs the chapter *A discretized VAE codec* (the model and how it is
trained). The architectures follow Ballé et al. (2018)
[balle2018variational] (factorized and hyperprior models) and Minnen et al.
(2018) [minnen2018joint] (the mean–scale hyperprior); the loss is the book's
free energy ``bpp + lmbda * mse``.

A config is plain data: it is stored in every checkpoint as a dict
(:func:`dataclasses.asdict`) and rebuilt with ``ModelConfig(**d)``.

**Patch size vs depth.** A model sees ``patch_size / stride`` latent
positions per side while training. The hyperprior model's total stride is 64,
so on 64×64 patches its hyper-latent ``z`` is a single position per patch:
it never learns interior statistics, and its rate on large images blows up
(measured: 0.51 bpp on a 64×64 crop, 2.1 bpp on a 512×512 crop of the same
image). Hyperprior presets therefore train on 256×256 patches (``z`` 4×4, as
in Ballé et al. 2018 and Minnen et al. 2018); the factorized model
(stride 16, no spatial context in its prior) is fine on 128×128.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import DVAEError

#: Downsampling factor of the analysis transform: four stride-2 convolutions.
LATENT_STRIDE = 16
#: The hyper-analysis adds two more stride-2 convolutions: 16 * 4.
HYPER_STRIDE = 64
#: 255**2: ``lmbda`` for MSE on [0, 1] equals ``lmbda / 255**2`` for MSE on the
#: 0–255 scale; e.g. 845 here is CompressAI's λ = 0.013 (their ``λ·255²·mse``).
MSE_SCALE_8BIT = 255.0**2
#: Precision modes of training (``dvae train --amp``, ``training.fit(amp=...)``):
#: bfloat16 autocast on a capable CUDA GPU, on any device, or never.
AMP_MODES = ("auto", "bf16", "off")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of :class:`~dvae_tutorial.single_layer_vae.SingleLayerVAE`.

    The defaults are the :data:`BOOK` model's; the recipe defaults of
    :class:`TrainConfig` are its recipe.

    Attributes:
        channels: N, channels of the hidden layers of the transforms.
        latent_channels: M, channels of the latent ``y`` (H/16 × W/16).
        hyperprior: add the mean–scale hyperprior (``z`` at H/64 × W/64 with
            ``hyper_channels`` channels predicts each element's mean and scale);
            without it the prior of ``y`` is one learned Gaussian per channel.
        hyper_channels: channels of ``z`` and of the hyper transforms.
        gdn: GDN/IGDN nonlinearities between the strided convolutions (Ballé et
            al. 2017); ``False`` puts a residual block there instead.
    """

    channels: int = 64
    latent_channels: int = 96
    hyperprior: bool = True
    hyper_channels: int = 64
    gdn: bool = True

    @property
    def stride(self) -> int:
        """Input sides must be multiples of this (the model pads to it)."""
        return HYPER_STRIDE if self.hyperprior else LATENT_STRIDE


@dataclass(frozen=True)
class TrainConfig:
    """How :func:`~dvae_tutorial.training.fit` trains a model.

    The loss per image is ``bpp + lmbda * mse`` with ``bpp`` bits per pixel
    (estimated with uniform noise) and ``mse`` on images in [0, 1]; on the
    0–255 scale the same trade-off is ``lmbda / 255**2`` per unit of MSE.

    Attributes:
        lmbda: λ, weight of the distortion (MSE on [0, 1]).
        steps: optimizer steps (skipped steps count).
        batch_size: patches per step.
        patch_size: side of the random square training crops, a multiple of
            the model's stride (see the module note on patch size vs depth).
        lr: Adam learning rate after the warm-up, until the final decay.
        warmup_steps: the learning rate rises linearly from ``lr / warmup_steps``
            to ``lr`` over these first steps: Adam's first updates move every
            weight by about ``lr`` whatever its gradient, which at 1e-3 throws a
            fresh GDN model's outputs far outside [0, 1].
        lr_decay_fraction: final fraction of the steps trained at
            ``lr * lr_decay``.
        lr_decay: factor of the final learning-rate drop.
        grad_clip: gradients are clipped to this global L2 norm.
        grad_skip: a step whose gradient norm (before clipping) exceeds this,
            or whose loss is NaN/inf, is skipped and counted. Measured norms at
            λ = 845 are 50–2000 (they grow about in proportion to λ), so 1e5 only
            catches blow-ups; a long run of skips stops training with an error.
        ema_decay: decay of the exponential moving average of the weights
            (validated and shipped), with warm-up ``min(decay, (1+t)/(10+t))``.
        val_every: validate the EMA weights every this many steps (and at the
            end); checkpoints are written at the same steps.
        val_crop: side of the validation photos' centre crops.
        val_images: number of validation photos (spread over the folder).
        log_every: steps per row of the training history (means over them).
        seed: seeds weights, patch choice, crops and noise.
    """

    lmbda: float = 845.0
    steps: int = 8_000
    batch_size: int = 8
    patch_size: int = 256
    lr: float = 1e-3
    warmup_steps: int = 500
    lr_decay_fraction: float = 0.15
    lr_decay: float = 0.1
    grad_clip: float = 1.0
    grad_skip: float = 1e5
    ema_decay: float = 0.999
    val_every: int = 1000
    val_crop: int = 256
    val_images: int = 16
    log_every: int = 100
    seed: int = 0

    def lr_at(self, step: int) -> float:
        """Learning rate of optimizer step ``step`` (0-based): warm-up, flat, drop."""
        decay_start = round(self.steps * (1.0 - self.lr_decay_fraction))
        warmup = min(1.0, (step + 1) / max(self.warmup_steps, 1))
        return self.lr * warmup * (self.lr_decay if step >= decay_start else 1.0)


@dataclass(frozen=True)
class Preset:
    """A named pair of model and training configs."""

    model: ModelConfig
    train: TrainConfig


#: For tests and CI: 112 k parameters, a step takes ~20 ms on a CPU core. Its
#: 64×64 patches give a 1×1 ``z``: fine for exercising code, not for rates.
TINY = Preset(
    ModelConfig(channels=16, latent_channels=24, hyperprior=True, hyper_channels=16),
    TrainConfig(steps=200, batch_size=4, patch_size=64, lr=1e-3, warmup_steps=10,
                val_every=100, val_crop=64, val_images=4, log_every=10),
)

#: The model the book ships: a mean–scale hyperprior (Minnen et al. 2018
#: without the context model) at N = 64, M = 96, hyper N = 64: 1.76 M
#: parameters (N = 128, M = 192 has 7.0 M and 4× the compute). Trained on
#: 8 patches of 256×256 (``z`` 4×4, see the module note) per step, measured
#: at 1.4–1.5 s/step on 2 CPU cores: 8 000 steps ≈ 3–3.5 h; a GPU does them
#: in minutes and can afford ``--steps 100000``.
BOOK = Preset(
    ModelConfig(channels=64, latent_channels=96, hyperprior=True, hyper_channels=64),
    TrainConfig(steps=8_000, batch_size=8, patch_size=256, lr=1e-3),
)

#: The seed's standard model and recipe: GDN transforms and one learned
#: Gaussian per latent channel, N = 64, M = 96 (0.75 M parameters), batch 16
#: of 64×64 patches, Adam 1e-3 then 1e-4 for the last 15 %. Stride 16 and no
#: spatial context in the prior, so small patches are fine (measured: the same
#: rate, 0.53–0.56 bpp, on 64² to 512² Kodak crops). 6–9 steps/s on 2 CPU
#: cores: 30 000 steps ≈ 1–1.4 h.
FACTORIZED = Preset(
    ModelConfig(channels=64, latent_channels=96, hyperprior=False),
    TrainConfig(steps=30_000, batch_size=16, patch_size=64, lr=1e-3),
)

#: :data:`FACTORIZED` with twice the latent channels, M = 192 (Ballé et al.'s
#: latent for their lower rates [balle2018variational]), ~10 % more compute.
#: Why: the M = 96 models decode their *unquantized* latents at only
#: 32.8–33.0 dB on Kodak whatever λ (2 500 … 20 000), so raising λ buys bits,
#: not quality. Measured: widened from the λ = 6 000 model (``--init``) and
#: trained 5 000 steps at λ = 5 000, the ceiling rose only to 33.3 dB — the
#: transforms' width N matters more (:data:`FACTORIZED_WIDE`).
FACTORIZED_HR = Preset(
    ModelConfig(channels=64, latent_channels=192, hyperprior=False),
    FACTORIZED.train,
)

#: N = 128, M = 192: Ballé et al.'s factorized model for their lower rates
#: [balle2018variational] (they use N = 192, M = 320 above ~0.7 bpp), for
#: the book's high-rate end. About 3–4× the compute of :data:`FACTORIZED`
#: per step; on a CPU, start it from a narrower run with ``--init`` (the
#: parent's weights fill the leading channels).
FACTORIZED_WIDE = Preset(
    ModelConfig(channels=128, latent_channels=192, hyperprior=False),
    FACTORIZED.train,
)
#: Presets by the name ``dvae train --preset`` takes.
PRESETS: dict[str, Preset] = {"tiny": TINY, "book": BOOK, "factorized": FACTORIZED,
                              "factorized-hr": FACTORIZED_HR,
                              "factorized-wide": FACTORIZED_WIDE}


# --- one model for every rate (chapter *Beyond*) ------------------------------

#: The λ of the shipped single-layer models: the variable-rate model's levels.
SINGLE_LEVELS = (100.0, 300.0, 845.0, 2500.0, 5000.0)


@dataclass(frozen=True)
class VariableRateConfig:
    """Architecture of :class:`~dvae_tutorial.variable_rate.VariableRateVAE`:
    the factorized single-layer transforms (N, M, GDN) and the λ ``levels``
    at which gain vectors and priors are learned (interpolated in between;
    the model codes at any λ in ``[levels[0], levels[-1]]``)."""

    channels: int = 128
    latent_channels: int = 192
    gdn: bool = True
    levels: tuple[float, ...] = SINGLE_LEVELS

    def __post_init__(self) -> None:
        levels = tuple(float(v) for v in self.levels)
        object.__setattr__(self, "levels", levels)  # lists (JSON) become tuples
        if len(levels) < 2 or levels[0] <= 0 or any(
                a >= b for a, b in zip(levels[:-1], levels[1:], strict=True)):
            raise DVAEError(f"levels must be >= 2 increasing positive λ, got {levels}")

    @property
    def hyperprior(self) -> bool:
        """No hyperprior: one (interpolated) Gaussian per latent channel."""
        return False

    @property
    def stride(self) -> int:
        """Input sides must be multiples of this (the model pads to it)."""
        return LATENT_STRIDE

    @property
    def transforms(self) -> ModelConfig:
        """The single-layer architecture whose ``g_a``/``g_s`` this model has."""
        return ModelConfig(self.channels, self.latent_channels, hyperprior=False,
                           gdn=self.gdn)


#: The recipe of the variable-rate model, fine-tuned from ``single-845``
#: (``dvae train --preset variable-rate --init single-845``): the
#: :data:`FACTORIZED` batch (16 patches of 64×64) with each patch's λ drawn
#: anew (a level, or log-uniform over the range), Adam 2e-4 after a 200-step
#: warm-up, the last 15 % at 2e-5. ``lmbda`` is only the validation λ.
#: Measured: 0.3 s a step alone on one CPU thread (bf16, channels-last),
#: 0.7 s on a thread shared with other work: 11 000 steps ≈ 1–2 h.
VARIABLE_RATE = Preset(
    VariableRateConfig(),
    TrainConfig(lmbda=845.0, steps=11_000, batch_size=16, patch_size=64, lr=2e-4,
                warmup_steps=200, val_every=1_000),
)
#: Variable-rate presets by name (``dvae train --preset``).
VARIABLE_RATE_PRESETS: dict[str, Preset] = {"variable-rate": VARIABLE_RATE}


# --- hierarchical models (chapter *Hierarchical VAEs*) -------------------------

#: Stage ``s`` of a hierarchical model halves the resolution of stage ``s - 1``.
STAGE_FACTOR = 2


@dataclass(frozen=True)
class HierarchicalConfig:
    """Architecture of :class:`~dvae_tutorial.hierarchical_vae.HierarchicalVAE`.

    The model is a pyramid of *stages*, listed finest first: stage ``s`` works
    at stride ``stem_stride * 2**s``; every per-stage tuple has one entry per
    stage. The defaults are the :data:`RESNET12` model (QRes-VAE's layout of 12
    latent layers over 5 resolutions [duan2023qresvae], narrower).

    Attributes:
        widths: feature channels of each stage (encoder and decoder).
        encoder_blocks: residual blocks of the bottom-up encoder per stage.
        latent_blocks: latent layers per stage; the total is the number of
            layers ``L``; decoded coarsest stage first (``z1`` is coarsest).
        latent_channels: channels of each latent at that stage (0 where the
            stage has no latent layer).
        decoder_blocks: plain residual blocks after the latent layers of a
            stage (decoding capacity where a stage has few or no latents).
        kernel_sizes: depthwise kernel of the stage's blocks (odd).
        stem_stride: the first (patchifying) convolution's stride and kernel.
    """

    widths: tuple[int, ...] = (64, 96, 96, 96, 96)
    encoder_blocks: tuple[int, ...] = (2, 2, 2, 1, 1)
    latent_blocks: tuple[int, ...] = (3, 3, 3, 2, 1)
    latent_channels: tuple[int, ...] = (8, 10, 12, 14, 16)
    decoder_blocks: tuple[int, ...] = (0, 0, 0, 0, 0)
    kernel_sizes: tuple[int, ...] = (7, 7, 5, 3, 1)
    stem_stride: int = 4

    def __post_init__(self) -> None:
        names = ("widths", "encoder_blocks", "latent_blocks", "latent_channels",
                 "decoder_blocks", "kernel_sizes")
        for name in names:  # lists (e.g. from JSON) become tuples: hashable, frozen
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        stages = len(self.widths)
        problems = [f"{n} has {len(getattr(self, n))} entries, widths {stages}"
                    for n in names if len(getattr(self, n)) != stages]
        if stages == 0 or self.stem_stride < 1 or min(self.widths, default=0) < 4:
            problems.append("need >= 1 stage, stem_stride >= 1 and widths >= 4")
        if not problems and (sum(self.latent_blocks) < 1 or any(
                k < 1 or k % 2 == 0 for k in self.kernel_sizes) or any(
                n < 0 or (n > 0 and c < 1) for n, c in
                zip(self.latent_blocks, self.latent_channels, strict=True))):
            problems.append("need >= 1 latent layer, odd kernels, and latent "
                            "channels >= 1 where a stage has latent layers")
        if problems:
            raise DVAEError("invalid HierarchicalConfig: " + "; ".join(problems))

    @property
    def stride(self) -> int:
        """Input sides must be multiples of this (the model pads to it)."""
        return self.stem_stride * STAGE_FACTOR ** (len(self.widths) - 1)

    @property
    def num_layers(self) -> int:
        """``L``, the number of latent layers (and of streams per image)."""
        return sum(self.latent_blocks)


#: 3 latent layers, one each at strides 4, 16 and 64 (a coarse-to-fine chain
#: like a two-level hyperprior whose every level also feeds the decoder).
#: Stride 64: 64×64 samples have a 1×1 top latent, Kodak's 768×512 needs no
#: padding, and 256×256 patches give a 4×4 top latent (see the module note).
#: 1.02 M parameters. Measured on one (shared) CPU thread: 0.03 s forward,
#: 0.19 s forward + backward for 4 images of 64×64; 2.9–3.4 s per step of 8
#: patches of 256×256 (8 000 steps: 7 h on a CPU). On a GPU we would
#: train batch 16 for 100 k–200 k steps (QRes-VAE's public script: Adam 2e-4,
#: batch 16 per GPU, 600 k steps [duan2023qresvae]). lr 5e-4 with a longer
#: warm-up is our untested middle between the book's 1e-3 and QRes-VAE's 2e-4.
RESNET3 = Preset(
    HierarchicalConfig(latent_blocks=(1, 0, 1, 0, 1),
                       latent_channels=(12, 0, 24, 0, 32),
                       decoder_blocks=(2, 2, 1, 1, 0)),
    TrainConfig(steps=8_000, batch_size=8, patch_size=256, lr=5e-4,
                warmup_steps=1_000),
)

#: QRes-VAE's layout (12 latent layers: 1, 2, 3, 3, 3 from stride 64 down to
#: stride 4; latent channels 16 … 8) at about 1/20 of its parameters: 1.67 M.
#: The book's hierarchical model. Measured on one (shared) CPU thread: 0.06 s
#: forward, 0.26–0.29 s forward + backward for 4 images of 64×64; 4.9–6.2 s
#: per step of 8 patches of 256×256 (8 000 steps: 11–14 h on a CPU). GPU
#: recipe as for :data:`RESNET3`.
RESNET12 = Preset(
    HierarchicalConfig(),
    TrainConfig(steps=8_000, batch_size=8, patch_size=256, lr=5e-4,
                warmup_steps=1_000),
)

#: QRes-VAE (34 M) as published [duan2023qresvae]: widths 192/384, encoder
#: blocks 6, 6, 6, 4, 2, kernels 7, 7, 5, 3, 1, the RESNET12 latent layout; its
#: public recipe: 256×256 COCO crops, Adam 2e-4 constant, gradient clip 2,
#: EMA 0.9999, 4 GPUs × 16 per step, 600 k steps. For reference, not shipped:
#: our blocks differ in detail: 31.7 M parameters here, not 34 M.
PAPER = Preset(
    HierarchicalConfig(widths=(192, 384, 384, 384, 384),
                       encoder_blocks=(6, 6, 6, 4, 2)),
    TrainConfig(steps=600_000, batch_size=64, patch_size=256, lr=2e-4,
                warmup_steps=0, lr_decay_fraction=0.0, grad_clip=2.0,
                ema_decay=0.9999),
)


@dataclass(frozen=True)
class HierarchicalPriorConfig:
    """Architecture of :class:`~dvae_tutorial.hierarchical_prior.HierarchicalPriorVAE`.

    The single-layer transforms (``channels`` N, ``latent_channels`` M, GDN)
    under a hierarchy of latent layers over ``y``: per-stage tuples list the
    stages finest first, stage ``s`` at stride ``16 · 2**s``. ``dvae train
    --init`` with a single-layer checkpoint takes N and M from it.

    Attributes:
        channels, latent_channels, gdn: the transforms (as :class:`ModelConfig`).
        widths: feature channels of the prior's stages.
        encoder_blocks: ConvNeXt blocks of the bottom-up path over ``y``.
        latent_blocks: latent layers ``z`` per stage (``y`` not counted;
            ``L = sum + 1``); decoded coarsest first.
        z_channels: channels of each ``z`` at that stage.
        kernel_sizes: depthwise kernel of the stage's blocks (odd).
    """

    channels: int = 128
    latent_channels: int = 192
    gdn: bool = True
    widths: tuple[int, ...] = (128, 128, 128)
    encoder_blocks: tuple[int, ...] = (1, 1, 1)
    latent_blocks: tuple[int, ...] = (2, 4, 5)
    z_channels: tuple[int, ...] = (16, 16, 16)
    kernel_sizes: tuple[int, ...] = (5, 3, 3)

    def __post_init__(self) -> None:
        names = ("widths", "encoder_blocks", "latent_blocks", "z_channels",
                 "kernel_sizes")
        for name in names:  # lists (e.g. from JSON) become tuples
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        if any(len(getattr(self, n)) != len(self.widths) for n in names) or not (
                self.widths and min(self.widths) >= 4 and self.channels >= 1
                and self.latent_channels >= 1 and min(self.z_channels) >= 1
                and min(self.latent_blocks) >= 0
                and all(k % 2 for k in self.kernel_sizes)):
            raise DVAEError(f"invalid HierarchicalPriorConfig: {self}")

    @property
    def stride(self) -> int:
        """Input sides must be multiples of this (the model pads to it)."""
        return LATENT_STRIDE * STAGE_FACTOR ** (len(self.widths) - 1)

    @property
    def num_layers(self) -> int:
        """``L``: the ``z`` layers and ``y`` (streams per image)."""
        return sum(self.latent_blocks) + 1


#: The recipe of the hierarchical prior (stage 2, ``--freeze-transforms``):
#: 16×16 latent crops (256² pixels: a 4×4 top layer, the patch-size note),
#: batch 16, Adam 1e-3 after a 200-step warm-up, the last 15 % at 1e-4; the
#: rate warm-up of the ``z`` layers ends at step 1000
#: (:data:`~dvae_tutorial.hierarchical_prior.RATE_WARMUP`). Measured on one
#: CPU thread: 0.6 s per step (hier12), 0.4 s (hier3); 2 000 steps ≈ 20 min.
PRIOR_TRAIN = TrainConfig(steps=2_000, batch_size=16, patch_size=256, lr=1e-3,
                          warmup_steps=200, val_every=500)

#: 3 latent layers: ``z_1`` at stride 64, ``z_2`` at stride 32, ``y`` (16) —
#: a two-level hyperprior whose every level is a discretized VAE layer.
HIER3 = Preset(HierarchicalPriorConfig(latent_blocks=(0, 1, 1)), PRIOR_TRAIN)
#: 12 latent layers: 5 at stride 64, 4 at stride 32, 2 at stride 16 and ``y``.
HIER12 = Preset(HierarchicalPriorConfig(), PRIOR_TRAIN)

#: Hierarchical presets by name: the book's models over single-layer latents
#: (``hier3``, ``hier12``) and the from-scratch ResNet VAE (``resnet3``,
#: ``resnet12``, and QRes-VAE's size, ``paper``).
HIERARCHICAL_PRESETS: dict[str, Preset] = {"hier3": HIER3, "hier12": HIER12,
                                           "resnet3": RESNET3, "resnet12": RESNET12,
                                           "paper": PAPER}
