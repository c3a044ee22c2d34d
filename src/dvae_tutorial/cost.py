"""What a model costs: parameters, bytes on disk, multiply-accumulates per pixel.

Backs the chapter *Results* (cost beside rate–distortion). The work of a
pass is **measured**, not counted by hand: the pass runs once under
PyTorch's :class:`torch.utils.flop_counter.FlopCounterMode`, which adds up
the floating-point operations of every convolution (transposed and grouped
ones included) and every matrix product (``mm``, ``addmm``, ``bmm``…) the
pass dispatches, at two FLOPs per multiply-accumulate; a MAC is FLOPs / 2.

What is **not** counted: element-wise work (biases, activations, GDN's
square root and division, LayerNorm, rounding) and the entropy coder (the
rANS / range coder of :mod:`~dvae_tutorial.entropy_coding` and the
discretized Gaussian's cdf), which run per latent symbol rather than per
pixel of a convolution. These are the conventions of the learned-compression
literature's kMAC/pixel figures (e.g. QRes-VAE, Duan et al. 2023).

The passes are those the codec runs, composed here from the model's modules
in float32 (FlopCounterMode sees only ATen operators, and the coder's
float64 prior runs its depthwise convolutions as shifted multiply-adds,
:func:`~dvae_tutorial.hierarchical_vae.depthwise_float64`, which it would not
see; the multiply-adds are the same):

- single-layer model: **encode** ``g_a`` (+ ``h_a`` and ``h_s`` with a
  hyperprior), **decode** (``h_s`` with a hyperprior +) ``g_s``, run as the
  decoder runs it (see :func:`model_cost` for its transposed convolutions);
- hierarchical prior (:class:`~dvae_tutorial.hierarchical_prior.HierarchicalPriorVAE`,
  the shipped ``hier3``/``hier12``): **encode** ``g_a``, the prior's
  bottom-up features of ``y`` and its top-down pass with every posterior
  mean; **decode** the top-down pass from the priors alone, then ``g_s``;
- ResNet VAE (:class:`~dvae_tutorial.hierarchical_vae.HierarchicalVAE`):
  **encode** its bottom-up pass and the top-down pass with posteriors (all
  of it, as ``compress`` runs it), **decode** the top-down pass alone.

Counts are per pixel of the input image, measured by default on a Kodak-sized
image (768×512, already a multiple of every model's stride, so no padding
inflates them). The models are fully convolutional, so the count per pixel
is the same for any size that is a multiple of the stride.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .configs import LATENT_STRIDE

#: (height, width) of the input every count is measured on: a landscape
#: Kodak image.
KODAK_SIZE = (512, 768)


def count_macs(fn: Callable, *args, **kwargs) -> int:
    """Multiply-accumulates of the convolutions and matrix products that
    ``fn(*args, **kwargs)`` runs, measured with ``FlopCounterMode`` (FLOPs / 2);
    element-wise operations are not counted. Runs under ``torch.no_grad``;
    when ``fn`` is a module or a module's method (``model.compress``), that
    module's parameters are frozen for the count (see :func:`_frozen`)."""
    owner = fn if isinstance(fn, nn.Module) else getattr(fn, "__self__", None)
    frozen = _frozen(owner) if isinstance(owner, nn.Module) else contextlib.nullcontext()
    with frozen, torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn(*args, **kwargs)
    return int(counter.get_total_flops()) // 2


def _image(model: nn.Module, size: tuple[int, int]) -> torch.Tensor:
    """A mid-grey image of ``size`` padded to the model's stride (as the codec
    pads it), in the dtype of the model's weights."""
    stride = int(getattr(model, "stride", 1))
    height, width = (-(-int(side) // stride) * stride for side in size)
    dtype = next(model.parameters()).dtype
    return torch.full((1, 3, height, width), 0.5, dtype=dtype)


def _passes(model: nn.Module, synthesis: Callable) -> tuple[Callable, Callable]:
    """``(encode, decode)``: functions of a padded image that run the codec's
    network passes of ``model`` (see the module docstring); ``decode`` runs
    ``g_s`` as ``synthesis(g_s, y_hat)``."""
    from .hierarchical_prior import HierarchicalPriorVAE
    from .hierarchical_vae import HierarchicalVAE
    from .quantization import quantize
    from .single_layer_vae import SingleLayerVAE
    from .variable_rate import VariableRateVAE

    def encode_choice(layer, mean, scale, post):
        return quantize(post, mean)

    def decode_choice(layer, mean, scale, post):
        return mean

    if isinstance(model, HierarchicalPriorVAE):
        def encode(x):
            y = model.g_a(x)
            model.prior.top_down(1, tuple(y.shape[-2:]), encode_choice, y)

        def decode(x):
            size = tuple(side // LATENT_STRIDE for side in x.shape[-2:])
            y_hat = model.prior.top_down(1, size, decode_choice).latents[-1]
            synthesis(model.g_s, y_hat)
    elif isinstance(model, SingleLayerVAE):
        def encode(x):
            y = model.g_a(x)
            z_hat = None
            if model.config.hyperprior:
                z = model.h_a(y)
                z_hat = quantize(z, model.z_prior(z.shape)[0])
            model.prior_parameters(y.shape, z_hat)

        def decode(x):
            y_shape, z_hat = model.stream_shapes(tuple(x.shape[-2:]))[-1], None
            if model.config.hyperprior:
                z_shape = model.stream_shapes(tuple(x.shape[-2:]))[0]
                z_hat = model.z_prior(z_shape)[0]
            mean, _ = model.prior_parameters(y_shape, z_hat)
            synthesis(model.g_s, mean)
    elif isinstance(model, VariableRateVAE):  # at its validation λ (any costs alike)
        with torch.no_grad():
            gain, inverse, mean, _ = model.rate_parameters(
                torch.full((1,), model.middle_lmbda))

        def encode(x):
            quantize(model.g_a(x) * gain, mean)

        def decode(x):
            y_shape = model.stream_shapes(tuple(x.shape[-2:]))[0]
            synthesis(model.g_s, mean.expand(y_shape) * inverse)
    elif isinstance(model, HierarchicalVAE):
        def encode(x):
            model._top_down(1, x.shape[-2:], encode_choice, model.encode(x))

        def decode(x):
            model._top_down(1, x.shape[-2:], decode_choice)
    else:
        raise TypeError(f"no cost passes for a {type(model).__name__}; cost knows "
                        "SingleLayerVAE, VariableRateVAE, HierarchicalPriorVAE and "
                        "HierarchicalVAE")
    return encode, decode


@contextlib.contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    """No parameter requires grad for the duration: FlopCounterMode's module
    tracker hooks every module output that requires grad, and a module that
    returns (a view of) its parameter (``ChannelGaussian``) gives it one
    without a grad function."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def parameter_count(model: nn.Module) -> int:
    """Number of parameters (every weight the checkpoint stores; no buffers)."""
    return sum(p.numel() for p in model.parameters())


def model_cost(model: nn.Module, size: tuple[int, int] = KODAK_SIZE) -> dict:
    """Parameters and measured encode/decode MACs of ``model`` on a ``size``
    (H, W) image.

    Returns:
        ``{"parameters", "pixels", "encode_macs", "decode_macs",
        "decode_macs_transposed", "encode_kmac_per_pixel",
        "decode_kmac_per_pixel", "decode_kmac_per_pixel_transposed"}``: MACs
        of the whole pass, and thousands of MACs per pixel of the (unpadded)
        image. ``decode`` is what the codec's decoder runs: its synthesis
        computes each 5×5 stride-2 transposed convolution of ``g_s`` as a 3×3
        convolution to four output phases and a pixel shuffle
        (:func:`~dvae_tutorial.tiling.reproducible`, for the same pixels on
        any thread count), 36 multiply-adds per input pixel and channel pair
        where the transposed convolution has 25 (the other 11 multiply zero
        taps). ``decode_…_transposed`` counts ``g_s`` as the network is
        defined (transposed convolutions), the count published figures use.
    """
    from .tiling import synthesis

    def plain(g_s, y):
        return g_s(y)

    encode, decode = _passes(model, synthesis)
    _, decode_transposed = _passes(model, plain)
    x = _image(model, size)
    pixels = int(size[0]) * int(size[1])
    with _frozen(model):
        enc, dec = count_macs(encode, x), count_macs(decode, x)
        dec_t = count_macs(decode_transposed, x)
    return {"parameters": parameter_count(model), "pixels": pixels,
            "encode_macs": enc, "decode_macs": dec, "decode_macs_transposed": dec_t,
            "encode_kmac_per_pixel": enc / pixels / 1e3,
            "decode_kmac_per_pixel": dec / pixels / 1e3,
            "decode_kmac_per_pixel_transposed": dec_t / pixels / 1e3}


def shipped_cost(names: Sequence[str] | None = None,
                 size: tuple[int, int] = KODAK_SIZE) -> list[dict]:
    """One row per shipped model (default: all, in ``dvae models`` order):
    :func:`model_cost` plus

    - ``"model"``, ``"family"``, ``"lmbda"``;
    - ``"file_bytes"``, ``"file_mb"`` (10⁶ bytes): the shipped checkpoint
      (float16 EMA weights with their recipe);
    - ``"shares"``: for a hierarchical prior trained over a single-layer
      model's frozen transforms, the file that holds those transforms (its
      own checkpoint stores only the prior; ``None`` otherwise), and
      ``"total_bytes"``, ``"total_mb"``: both files, what must be installed to
      decode with the model.

    See: *Results* (cost per model).
    """
    from .codec import load_shipped, shipped_models

    infos = {info.name: info for info in shipped_models()}
    if names is None:
        names = list(infos)
    rows = []
    for name in names:
        model = load_shipped(name)  # an unknown name: DVAEError listing them
        path = infos[name].path
        shared = _shared_file(path)
        own = path.stat().st_size
        total = own + (shared.stat().st_size if shared else 0)
        rows.append({"model": name, "family": infos[name].family,
                     "lmbda": infos[name].lmbda,
                     "file_bytes": own, "file_mb": own / 1e6,
                     "shares": shared.name if shared else None,
                     "total_bytes": total, "total_mb": total / 1e6,
                     **model_cost(model, size)})
    return rows


def _shared_file(path: Path) -> Path | None:
    """The checkpoint whose weights ``path`` shares (next to it, else among
    the package's weights, as :func:`~dvae_tutorial.checkpoints.load_checkpoint`
    looks for it), or ``None``."""
    from .checkpoints import PACKAGE_WEIGHTS

    shared = torch.load(path, map_location="cpu", weights_only=True).get("shared")
    if not shared:
        return None
    name = Path(shared["file"]).name
    for folder in (path.parent, PACKAGE_WEIGHTS):
        if (folder / name).is_file():
            return folder / name
    return None
