"""Flow posteriors: a monotone spline applied to the uniform posterior.

Backs the section *Flow posteriors* of the chapter *Beyond*. Follows
Durkan et al. (2019) (monotone rational-quadratic splines) and Rezende &
Mohamed (2015) (normalizing flows for variational inference), on the toy
codec of :mod:`dvae_tutorial.rate_distortion` (Ballé, Laparra & Simoncelli
2017).

The book's posterior is the unit box, ``y_tilde = f(x) + u`` with
``u ~ U(-1/2, 1/2)``. Here each latent dimension gets a monotone map ``T``
of the noise instead,

.. math:: z = f(x) + T(u), \\qquad T(u) = a\\, S(u),

with ``S`` a rational-quadratic spline from ``[-1/2, 1/2]`` onto itself
(identity at initialisation) and ``a > 0`` a learned width. The density of
``z`` follows from the change of variables, ``q(z|x) = 1 / T'(u)``, so the
rate term of the free energy is no longer ``-log p_hat(z)`` alone:

.. math:: \\mathrm{KL}(q\\,\\|\\,\\hat p) = \\mathbb E_u\\bigl[
   -\\log T'(u) - \\log \\hat p(f(x) + T(u))\\bigr].

For the box (``T`` the identity) the first term is 0 and chapter 2's
identity comes back. ``T`` does not depend on ``x`` (the toy source is
Gaussian, whose optimal posterior has the same shape for every ``x``).

Written here in a hundred lines of torch rather than taken from a flow
library: ``nflows`` has had no release since 2020, and ``zuko`` (maintained,
pure torch) would be a new dependency for one elementwise spline; the
chapter also reads the spline's inverse as a cdf for bits-back coding (see
:mod:`dvae_tutorial.bits_back`), which the formulas here show plainly. The
tests check the inverse and the log-derivative against autograd.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812 (the usual torch alias)
from torch import Tensor, nn

from .rate_distortion import GaussianSource, LearnedQuantizer

#: Smallest bin width/height (fraction of the interval) and knot derivative of
#: the spline: keeps the map strictly monotone and its log-derivative finite.
MIN_BIN = 1e-3
MIN_DERIVATIVE = 1e-3
#: Softplus preimage of 1 - MIN_DERIVATIVE: knot derivatives start at exactly 1.
_INIT_DERIVATIVE = math.log(math.expm1(1.0 - MIN_DERIVATIVE))


class SplineFlow(nn.Module):
    """Per-dimension ``T(u) = a S(u)``, ``S`` a monotone RQ spline on [-1/2, 1/2].

    ``forward(u)`` returns ``(T(u), log T'(u))`` for ``u`` of shape
    ``(..., dim)`` in ``[-1/2, 1/2]``; :meth:`inverse` maps ``z`` back to ``u``
    (for the posterior's cdf). At initialisation ``T`` is the identity, i.e.
    the box posterior.

    See: *Beyond* (flow posteriors).
    """

    def __init__(self, dim: int, bins: int = 8) -> None:
        super().__init__()
        self.raw_widths = nn.Parameter(torch.zeros(dim, bins))
        self.raw_heights = nn.Parameter(torch.zeros(dim, bins))
        self.raw_derivatives = nn.Parameter(torch.full((dim, bins + 1), _INIT_DERIVATIVE))
        self.log_width = nn.Parameter(torch.zeros(dim))

    def _knots(self, dtype: torch.dtype):
        """Knot positions (inputs ``xk``, outputs ``yk``) and derivatives ``dk``."""
        bins = self.raw_widths.shape[-1]

        def positions(raw: Tensor) -> Tensor:
            w = MIN_BIN + (1 - MIN_BIN * bins) * F.softmax(raw.to(dtype), dim=-1)
            knots = F.pad(torch.cumsum(w, dim=-1), (1, 0)) - 0.5
            return torch.cat([knots[..., :-1], knots.new_full(knots[..., -1:].shape,
                                                              0.5)], dim=-1)

        dk = MIN_DERIVATIVE + F.softplus(self.raw_derivatives.to(dtype))
        return positions(self.raw_widths), positions(self.raw_heights), dk

    def _bin(self, knots: Tensor, v: Tensor) -> Tensor:
        """Index of the bin of each ``v`` (shape (..., dim)) among ``knots`` (dim, K+1)."""
        inner = knots[:, 1:-1].contiguous()  # (dim, K - 1)
        flat = v.reshape(-1, v.shape[-1]).T.contiguous()  # (dim, n)
        idx = torch.searchsorted(inner, flat, right=True)
        return idx.T.reshape(v.shape)

    @staticmethod
    def _gather(t: Tensor, idx: Tensor) -> Tensor:
        """``t[d, idx[..., d]]`` for ``t`` of shape (dim, m)."""
        expanded = t.expand(*idx.shape[:-1], *t.shape)
        return torch.gather(expanded, -1, idx.unsqueeze(-1)).squeeze(-1)

    def _segment(self, v: Tensor, by_output: bool):
        """The spline segment of each ``v``: its knots ``x0, y0``, width ``w``,
        height ``h``, slope ``s = h / w`` and end derivatives ``d0, d1``; the bin
        is found among the inputs (``forward``) or the outputs (``inverse``)."""
        xk, yk, dk = self._knots(v.dtype)
        k = self._bin(yk if by_output else xk, v)
        x0, x1 = self._gather(xk, k), self._gather(xk, k + 1)
        y0, y1 = self._gather(yk, k), self._gather(yk, k + 1)
        d0, d1 = self._gather(dk, k), self._gather(dk, k + 1)
        w, h = x1 - x0, y1 - y0
        return x0, y0, w, h, h / w, d0, d1

    def forward(self, u: Tensor) -> tuple[Tensor, Tensor]:
        """``z_offset = T(u)`` and ``log T'(u)`` (natural log), both shaped like ``u``.

        Rational-quadratic spline (Durkan et al. 2019, eqs. 4–5): in bin ``k``
        with ``xi = (u - x_k) / w_k`` and slope ``s_k = h_k / w_k``,

        .. math:: S(u) = y_k + h_k \\frac{s_k \\xi^2 + d_k \\xi(1-\\xi)}
           {s_k + (d_{k+1} + d_k - 2 s_k)\\xi(1-\\xi)}.
        """
        x0, y0, w, h, s, d0, d1 = self._segment(u, by_output=False)
        xi = ((u - x0) / w).clamp(0.0, 1.0)
        mix = xi * (1 - xi)
        denom = s + (d1 + d0 - 2 * s) * mix
        out = y0 + h * (s * xi**2 + d0 * mix) / denom
        deriv = s**2 * (d1 * xi**2 + 2 * s * mix + d0 * (1 - xi) ** 2) / denom**2
        a = self.log_width.to(u.dtype).exp()
        return a * out, torch.log(deriv) + self.log_width.to(u.dtype)

    def inverse(self, offset: Tensor) -> Tensor:
        """``u = T^{-1}(offset)``, clamped to [-1/2, 1/2] outside ``T``'s range.

        Solves the spline's quadratic in ``xi`` in its stable form
        ``xi = 2c / (-b - sqrt(b^2 - 4ac))`` (Durkan et al. 2019, eq. 6).
        """
        a_width = self.log_width.to(offset.dtype).exp()
        v = (offset / a_width).clamp(-0.5, 0.5)
        x0, y0, w, h, s, d0, d1 = self._segment(v, by_output=True)
        dy = v - y0
        curv = d1 + d0 - 2 * s
        qa = h * (s - d0) + dy * curv
        qb = h * d0 - dy * curv
        qc = -s * dy
        disc = (qb**2 - 4 * qa * qc).clamp(min=0.0)
        xi = (2 * qc / (-qb - disc.sqrt())).clamp(0.0, 1.0)
        return (x0 + xi * w).clamp(-0.5, 0.5)


class FlowCodec(nn.Module):
    """The toy codec of chapter 1 with the posterior ``z = f(x) + T(u)``.

    ``quantizer`` (a :class:`~dvae_tutorial.rate_distortion.LearnedQuantizer`)
    provides the encoder ``f``, the prior ``p_hat`` and the decoder ``g``;
    ``flow`` the map ``T``. ``forward(x, u)`` returns ``(rate_bits, x_hat)``
    with ``rate_bits = -log2 T'(u) - log2 p_hat(z)`` summed over dimensions:
    a one-sample estimate of ``KL(q || p_hat)`` in bits.

    See: *Beyond* (flow posteriors).
    """

    def __init__(self, quantizer: LearnedQuantizer, bins: int = 8) -> None:
        super().__init__()
        self.quantizer = quantizer
        self.flow = SplineFlow(quantizer.prior_mean.shape[0], bins)

    def posterior_sample(self, x: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        """``z = f(x) + T(u)`` and ``log q(z|x) = -sum log T'(u)`` (nats, per row)."""
        offset, log_deriv = self.flow(u)
        return self.quantizer.encoder(x) + offset, -log_deriv.sum(-1)

    def forward(self, x: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        z, log_q = self.posterior_sample(x, u)
        return log_q / math.log(2.0) + self.quantizer.bits(z), self.quantizer.decoder(z)


def free_energy_bits(codec: FlowCodec, x: Tensor, lmbda: float,
                     u: Tensor | None = None) -> Tensor:
    """Per-sample free energy ``KL(q || p_hat) + lmbda ||x - g(z)||^2`` in bits.

    One posterior sample per row (``u`` uniform on [-1/2, 1/2], drawn if not
    given); the mean over rows is an unbiased estimate of ``R + lmbda D``.
    """
    if u is None:
        u = torch.rand_like(x) - 0.5
    rate, x_hat = codec(x, u)
    return rate + lmbda * (x - x_hat).pow(2).sum(-1)


@dataclass(frozen=True)
class FlowTrainConfig:
    """Adam on fresh source samples; the learning rate drops 10x for the last 20 %."""

    steps: int = 1500
    batch_size: int = 512
    lr: float = 1e-2
    seed: int = 0


def fit_flow(
    codec: FlowCodec,
    source: GaussianSource,
    lmbda: float,
    config: FlowTrainConfig = FlowTrainConfig(),  # noqa: B008 (frozen, so safe)
) -> FlowCodec:
    """Train the parameters of ``codec`` that require grad on the free energy.

    Freeze ``codec.flow`` (``requires_grad_(False)``) to keep the box
    posterior and train the rest the same way: the fair baseline. Single
    threaded and with its own seeded RNG, like :func:`rate_distortion.fit`.

    See: *Beyond* (flow posteriors).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2x2 matrices: more threads only add overhead
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            params = [p for p in codec.parameters() if p.requires_grad]
            opt = torch.optim.Adam(params, lr=config.lr)
            sched = torch.optim.lr_scheduler.MultiStepLR(opt, [int(0.8 * config.steps)])
            for _ in range(config.steps):
                x = source.sample(config.batch_size)
                loss = free_energy_bits(codec, x, lmbda).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    finally:
        torch.set_num_threads(threads)
    return codec.eval()


def rd_lagrangian_bound(variances, lmbda: float) -> float:
    """``min_D R(D) + lmbda D`` (bits) for independent Gaussian components.

    At the water level ``theta = 1 / (2 lmbda ln 2)`` (chapter 1, exercise 1):
    no posterior, prior or decoder can bring the free energy below it, since
    ``E KL(q || p) >= I(X; Z) >= R(D)``.
    """
    theta = 1.0 / (2.0 * lmbda * math.log(2.0))
    rate = sum(0.5 * math.log2(v / min(theta, v)) for v in variances)
    return rate + lmbda * sum(min(theta, v) for v in variances)
