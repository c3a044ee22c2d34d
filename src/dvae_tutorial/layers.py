"""Building blocks of the book's transforms: convolutions, GDN, residual blocks.

Backs the model chapters (*A discretized VAE codec*, *Hierarchical VAEs*).
Follows Ballé, Laparra & Simoncelli (2017) [balle2017end] (GDN, strided 5×5
convolutions) and Ballé et al. (2018) [balle2018variational] (transposed
convolutions in the decoder).

Shapes: every block maps ``(B, C_in, H, W)`` to ``(B, C_out, H', W')`` with
``H' = H / 2`` for :func:`downsample`, ``2 H`` for :func:`upsample` and ``H``
otherwise; ``H`` and ``W`` must be even where they are halved.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Smallest GDN offset β. The normalizer is sqrt(β + Σ γ x²); a floor keeps it
#: (and its gradient) finite when all inputs are 0. Ballé et al. (2017) use 1e-6.
GDN_BETA_MIN = 1e-6
#: GDN starts close to the identity up to a gain: β = 1, γ = 0.1 I (the
#: initialisation of TensorFlow Compression's GDN layer).
GDN_GAMMA_INIT = 0.1
#: γ = g² has gradient 0 at g = 0, so an off-diagonal g started at exactly 0
#: would stay there; it starts at 2**-18 instead (γ ≈ 1.5e-11, no effect at
#: init), the reparametrization offset of Ballé et al. (2017). Adam's
#: normalised steps then move it as fast as any other weight.
GDN_REPARAM_OFFSET = 2.0**-18


def conv(in_channels: int, out_channels: int, kernel_size: int = 5,
         stride: int = 1) -> nn.Conv2d:
    """A "same"-padded convolution: ``(B, C_in, H, W) -> (B, C_out, H/s, W/s)``."""
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                     padding=kernel_size // 2)


def downsample(in_channels: int, out_channels: int) -> nn.Conv2d:
    """5×5 convolution with stride 2: halves ``H`` and ``W`` (even sizes).

    See: *A discretized VAE codec* (the transforms).
    """
    return conv(in_channels, out_channels, kernel_size=5, stride=2)


def upsample(in_channels: int, out_channels: int) -> nn.ConvTranspose2d:
    """5×5 transposed convolution with stride 2: exactly doubles ``H`` and ``W``.

    ``output_padding=1`` makes the output ``2 H`` (not ``2 H - 1``), so that it
    inverts the shape change of :func:`downsample`.

    See: *A discretized VAE codec* (the transforms).
    """
    return nn.ConvTranspose2d(in_channels, out_channels, kernel_size=5, stride=2,
                              padding=2, output_padding=1)


class GDN(nn.Module):
    """Generalized divisive normalization and its inverse (Ballé et al. 2017).

    .. math:: \\text{GDN: } v_i = \\frac{u_i}{\\sqrt{\\beta_i + \\sum_j
       \\gamma_{ij} u_j^2}}, \\qquad
       \\text{IGDN: } u_i = v_i \\sqrt{\\beta_i + \\sum_j \\gamma_{ij} v_j^2}

    applied at every pixel across channels (a 1×1 convolution of ``u²``).
    The parameters must stay positive (β) and non-negative (γ), so they are
    reparametrized as squares: ``β = β_min + b²`` and ``γ = g²`` with free
    ``b`` and ``g``; gradient descent on ``b, g`` can never make the
    normalizer imaginary or zero (see :data:`GDN_REPARAM_OFFSET` for the
    start of ``g``).

    Args:
        channels: C; input and output are ``(B, C, H, W)``.
        inverse: compute IGDN (the decoder's nonlinearity) instead.

    See: *A discretized VAE codec* (the transforms).
    """

    def __init__(self, channels: int, inverse: bool = False) -> None:
        super().__init__()
        self.inverse = inverse
        self.beta_sqrt = nn.Parameter(torch.ones(channels))
        eye = torch.eye(channels)
        self.gamma_sqrt = nn.Parameter(
            GDN_GAMMA_INIT**0.5 * eye + GDN_REPARAM_OFFSET * (1 - eye))

    def normalizer(self, u: Tensor) -> Tensor:
        """``sqrt(β_i + Σ_j γ_ij u_j²)``, shape of ``u``."""
        beta = GDN_BETA_MIN + self.beta_sqrt**2
        gamma = self.gamma_sqrt**2
        channels = gamma.shape[0]
        return torch.sqrt(F.conv2d(u * u, gamma.view(channels, channels, 1, 1), beta))

    def forward(self, u: Tensor) -> Tensor:
        norm = self.normalizer(u)
        return u * norm if self.inverse else u / norm


class ResidualBlock(nn.Module):
    """``x + conv3(act(conv3(act(x))))``: two 3×3 convolutions and a skip.

    The second convolution is initialised at ``residual_scale`` times its
    default weights, so a deep stack starts close to the identity (the block
    adds a small correction) — the same idea as VDVAE's scaled last layers.

    Args:
        channels: C; input and output are ``(B, C, H, W)``.
        residual_scale: initial gain of the residual branch.

    See: *A discretized VAE codec*, *Hierarchical VAEs*.
    """

    def __init__(self, channels: int, residual_scale: float = 0.1) -> None:
        super().__init__()
        self.conv1 = conv(channels, channels, kernel_size=3)
        self.conv2 = conv(channels, channels, kernel_size=3)
        self.act = nn.GELU()
        scale_(self.conv2, residual_scale)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(self.act(self.conv1(self.act(x))))


@torch.no_grad()
def scale_(module: nn.Module, factor: float) -> nn.Module:
    """Multiply a layer's weights (not its bias) by ``factor`` in place.

    An init helper: e.g. ``scale_(conv, 0.1)`` shrinks a residual branch.
    Returns ``module``.
    """
    module.weight.mul_(factor)
    return module


def count_parameters(module: nn.Module) -> int:
    """Number of trainable scalars of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
