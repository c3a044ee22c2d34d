"""Rate–distortion: the bound every lossy codec is measured against.

Backs chapter 1, *Free energy and rate–distortion*:

* the closed-form R(D) of Gaussian sources and reverse water-filling over
  independent components (Cover & Thomas 2006, §10.3);
* the Blahut–Arimoto algorithm for the R(D) of a discrete source (Blahut 1972;
  Arimoto 1972);
* a tiny learned transform quantizer trained on the free energy
  ``rate + lmbda * distortion`` (Ballé, Laparra & Simoncelli 2017), measured
  against the bound.

Units everywhere: rates in **bits per sample**; distortion is the squared
error per sample, summed over the sample's components, ``E ||x - x_hat||^2``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import norm
from torch import Tensor, nn

from .distributions import discretized_gaussian_bits
from .errors import DVAEError
from .quantization import Relaxation, noise_relaxation, quantize

# ---------------------------------------------------------------- Gaussian R(D)


def _positive(name: str, values) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise DVAEError(f"{name} must be finite and > 0, got {values!r}")
    return arr


def rate_gaussian(distortion, variance: float) -> np.ndarray:
    """R(D) of a Gaussian source N(0, variance) under squared error, in bits.

    .. math:: R(D) = \\max\\bigl(0, \\tfrac12 \\log_2(\\sigma^2 / D)\\bigr)

    Args:
        distortion: D > 0, scalar or array (mean squared error).
        variance: sigma^2 > 0 of the source.

    Returns:
        Rate in bits per sample, same shape as ``distortion``.

    See: *Free energy and rate–distortion*, Gaussian R(D).
    """
    d = _positive("distortion", distortion)
    return np.maximum(0.0, 0.5 * np.log2(_positive("variance", variance) / d))


def distortion_gaussian(rate, variance: float) -> np.ndarray:
    """D(R) of a Gaussian source, the inverse of :func:`rate_gaussian` for R >= 0.

    .. math:: D(R) = \\sigma^2\\, 2^{-2R}
    """
    r = np.asarray(rate, dtype=np.float64)
    if np.any(r < 0):
        raise DVAEError(f"rate must be >= 0 bits, got {rate!r}")
    return _positive("variance", variance) * 2.0 ** (-2.0 * r)


def reverse_water_filling(variances, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-component distortion and rate of independent Gaussians at water level θ.

    .. math:: D_i = \\min(\\theta, \\sigma_i^2), \\qquad
              R_i = \\tfrac12 \\log_2(\\sigma_i^2 / D_i)

    Components with sigma_i^2 <= θ get zero rate: they are not sent at all and
    decoded as their mean. The totals ``D_i.sum()``, ``R_i.sum()`` are a point
    on the R(D) curve of the vector source.

    Args:
        variances: shape (n,), the sigma_i^2 (eigenvalues of the covariance).
        theta: water level > 0.

    Returns:
        ``(D_i, R_i)``, each of shape (n,); rates in bits.

    See: *Free energy and rate–distortion*, reverse water-filling.
    """
    var = _positive("variances", variances)
    d = np.minimum(_positive("theta", theta), var)
    return d, 0.5 * np.log2(var / d)


def water_level(variances, total_distortion: float, *, rtol: float = 1e-12) -> float:
    """Solve ``sum_i min(θ, sigma_i^2) = D`` for θ by bisection.

    The left side is continuous and non-decreasing in θ, from 0 at θ = 0 to
    ``sum(variances)`` at θ = max(variances), so bisection on that bracket
    converges. For D >= sum(variances) the rate is 0 and max(variances) is
    returned.

    Args:
        variances: shape (n,), positive.
        total_distortion: target D > 0 (summed over components).
        rtol: stop when the bracket is narrower than ``rtol * max(variances)``.

    Returns:
        The water level θ.
    """
    var = _positive("variances", variances)
    target = float(_positive("total_distortion", total_distortion))
    lo, hi = 0.0, float(var.max())
    if target >= var.sum():
        return hi
    while hi - lo > rtol * var.max():
        mid = 0.5 * (lo + hi)
        if np.minimum(mid, var).sum() < target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def gaussian_rd_curve(variances, distortions) -> np.ndarray:
    """R(D) in bits of independent Gaussian components at each total distortion.

    .. math:: R(D) = \\sum_i \\tfrac12\\log_2\\frac{\\sigma_i^2}{\\min(\\theta,
              \\sigma_i^2)}, \\quad \\theta \\text{ such that }
              \\sum_i \\min(\\theta, \\sigma_i^2) = D

    Args:
        variances: shape (n,), the component variances.
        distortions: shape (m,), total distortions D > 0.

    Returns:
        Rates, shape (m,), in bits per sample (a vector of n components).
    """
    ds = np.atleast_1d(_positive("distortions", distortions))
    rates = [
        reverse_water_filling(variances, water_level(variances, d))[1].sum()
        for d in ds
    ]
    return np.asarray(rates)


# ---------------------------------------------------------------- Blahut–Arimoto

#: Floor on log q(x_hat): keeps every reproduction letter alive (a letter at
#: q = 0 could never come back, and Blahut's lower bound needs every letter's
#: c). e^-700 is ~1e-304, far below any mass that changes a rate.
_LOG_Q_FLOOR = -700.0


@dataclass(frozen=True)
class BlahutArimotoResult:
    """One point of a discrete source's R(D) curve.

    ``rate_bits`` is the mutual information I(X; X_hat) of ``conditional``, so
    it is achievable at ``distortion``; the true R(distortion) lies in
    ``[rate_bits - gap_bits, rate_bits]`` (Blahut's bounds).
    """

    rate_bits: float
    distortion: float
    conditional: np.ndarray  #: Q(x_hat | x), shape (n_source, n_reproduction)
    output: np.ndarray  #: q(x_hat) = sum_x p(x) Q(x_hat | x), shape (n_reproduction,)
    gap_bits: float
    iterations: int


def blahut_arimoto(
    p_x,
    distortion,
    beta: float,
    *,
    tol_bits: float = 1e-3,
    max_iter: int = 20_000,
    q_init=None,
) -> BlahutArimotoResult:
    """R(D) of a discrete source at slope β by Blahut–Arimoto, in log domain.

    Alternates, from an output marginal q(x_hat),

    .. math:: Q(\\hat x|x) = \\frac{q(\\hat x)\\, e^{-\\beta d(x,\\hat x)}}
              {\\Lambda(x)}, \\qquad
              q(\\hat x) \\leftarrow \\sum_x p(x)\\, Q(\\hat x|x)
              = q(\\hat x)\\, c(\\hat x),

    which minimises I(X; X_hat) + β E[d] (rate in nats). The slope of R(D) at
    the returned point is -β nats per unit distortion. It stops when Blahut's
    certified gap ``max log c - sum q c log c`` (upper minus lower bound on
    R(D)) is below ``tol_bits``. Exponents are shifted by their row maximum, so
    nothing overflows or turns into 0/0 for large β.

    Args:
        p_x: source pmf, shape (n,), non-negative, sums to 1.
        distortion: d(x, x_hat), shape (n, m), finite.
        beta: slope parameter β > 0 (Blahut's -s); larger β, lower distortion.
        tol_bits: required certified accuracy of ``rate_bits``.
        max_iter: iteration cap; raises :class:`DVAEError` when reached.
        q_init: optional starting q(x_hat), shape (m,) (warm start).

    Returns:
        A :class:`BlahutArimotoResult`.

    See: *Free energy and rate–distortion*, Blahut–Arimoto.
    """
    p = np.asarray(p_x, dtype=np.float64)
    d = np.asarray(distortion, dtype=np.float64)
    if d.ndim != 2 or p.shape != (d.shape[0],) or not np.all(np.isfinite(d)):
        raise DVAEError(f"need p_x of shape (n,) and finite d of shape (n, m); "
                        f"got {p.shape} and {d.shape}")
    if np.any(p < 0) or abs(p.sum() - 1.0) > 1e-9:
        raise DVAEError("p_x must be a pmf: non-negative and summing to 1")
    beta = float(_positive("beta", beta))
    m = d.shape[1]
    q = np.full(m, 1.0 / m) if q_init is None else _positive("q_init", q_init)
    log_q = np.log(q / q.sum())
    neg_bd = -beta * d
    iterations, gap = 0, math.inf
    while gap / math.log(2) >= tol_bits:
        if iterations == max_iter:
            raise DVAEError(
                f"Blahut–Arimoto did not reach tol_bits={tol_bits} in {max_iter} "
                f"iterations (gap {gap / math.log(2):.2e} bits); raise max_iter "
                "or loosen tol_bits")
        iterations += 1
        logits = log_q[None, :] + neg_bd  # log q(x_hat) - β d(x, x_hat)
        row_max = logits.max(axis=1, keepdims=True)
        w = np.exp(logits - row_max)  # <= 1: no overflow for any β
        lam = w.sum(axis=1, keepdims=True)
        cond = w / lam  # Q(x_hat | x), rows sum to 1
        log_lam = row_max[:, 0] + np.log(lam[:, 0])  # log Λ(x)
        q_out = p @ cond  # = q c, sums to 1
        with np.errstate(divide="ignore"):  # c underflows to 0 far from the data
            log_q_out = np.log(q_out)
        log_c = log_q_out - log_q
        used = q_out > 0
        gap = float(log_c.max() - q_out[used] @ log_c[used])  # nats, >= 0
        log_q = np.maximum(log_q_out, _LOG_Q_FLOOR)
    dist = float(p @ (cond * d).sum(axis=1))
    # I(Q) = sum p Q log(Q / (q c)) = -βD - sum_x p log Λ - sum q c log c (nats)
    rate = -beta * dist - float(p @ log_lam) - float(q_out[used] @ log_c[used])
    return BlahutArimotoResult(
        rate_bits=max(rate, 0.0) / math.log(2), distortion=dist,
        conditional=cond, output=q_out, gap_bits=gap / math.log(2), iterations=iterations,
    )


def discretize_gaussian(variance: float, step: float, width: float = 6.0):
    """A Gaussian source on the grid ``step * k``, ``|k step| <= width sigma``.

    Each grid point gets the Gaussian mass of its bin [k - 1/2, k + 1/2] step;
    the pmf is renormalised over the (truncated) grid. The reproduction
    alphabet is the same grid, with squared-error distortion.

    Returns:
        ``(points, p_x, distortion)`` of shapes (n,), (n,), (n, n).
    """
    sigma = math.sqrt(float(_positive("variance", variance)))
    half = math.ceil(width * sigma / float(_positive("step", step)))
    points = step * np.arange(-half, half + 1, dtype=np.float64)
    p = np.diff(norm.cdf(np.append(points - step / 2, points[-1] + step / 2), 0, sigma))
    return points, p / p.sum(), (points[:, None] - points[None, :]) ** 2


def blahut_arimoto_curve(p_x, distortion, betas, **kwargs) -> tuple[np.ndarray, ...]:
    """Trace R(D) with one :func:`blahut_arimoto` run per β (keyword args passed on).

    Each run starts from the uniform q(x_hat): a warm start from a larger
    slope's narrow q would leave tail letters at tiny mass, and growing them
    back by the factor c per iteration takes thousands of iterations.

    Returns:
        ``(distortions, rates_bits, gaps_bits)``, each of shape ``(len(betas),)``.
    """
    runs = [blahut_arimoto(p_x, distortion, beta, **kwargs) for beta in betas]
    return (np.array([r.distortion for r in runs]),
            np.array([r.rate_bits for r in runs]),
            np.array([r.gap_bits for r in runs]))


# ---------------------------------------------------------------- learned quantizer


@dataclass(frozen=True)
class GaussianSource:
    """A zero-mean 2-D Gaussian with eigenvalues ``variances``, rotated by ``angle``.

    Its R(D) is water-filling on ``variances`` (rotation does not change it).
    """

    variances: tuple[float, float] = (1.0, 0.1)
    angle: float = math.pi / 6  #: radians; the encoder must learn to undo it

    def __post_init__(self) -> None:
        if len(self.variances) != 2 or min(self.variances) <= 0:
            raise DVAEError(f"GaussianSource needs two positive variances (the "
                            f"eigenvalues), got {self.variances!r}")

    def basis(self) -> Tensor:
        c, s = math.cos(self.angle), math.sin(self.angle)
        return torch.tensor([[c, -s], [s, c]])

    def covariance(self) -> Tensor:
        u = self.basis()
        return u @ torch.diag(torch.tensor(self.variances)) @ u.T

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` samples, shape (n, 2), float32."""
        z = torch.randn(n, 2, generator=generator) * torch.tensor(self.variances).sqrt()
        return z @ self.basis().T


#: Initial gain of the affine encoder (measured on GaussianSource(), 2000 steps).
#: A latent much narrower than one quantization bin (PyTorch's default init)
#: sits on a plateau of R + λD: at λ = 16–32 the second component never came
#: alive. Starting wide lets training switch unneeded components off, which it
#: does readily. A random orthogonal start also worked but left the encoder
#: rotated away from the source's axes at λ = 128 after 2000 steps.
INIT_GAIN = 4.0


class LearnedQuantizer(nn.Module):
    """Encoder f, per-dimension discretized Gaussian prior p_hat, decoder g.

    ``forward(x, relaxation)`` returns ``(bits, x_hat)``: the code length of
    the relaxed latent under p_hat (bits per sample, shape (n,)) and the
    decoded output (n, dim). ``hidden=0`` makes f and g affine.
    """

    def __init__(self, dim: int = 2, hidden: int = 0):
        super().__init__()

        def net() -> nn.Module:
            if hidden == 0:
                return nn.Linear(dim, dim)
            return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(),
                                 nn.Linear(hidden, dim))

        self.encoder, self.decoder = net(), net()
        if hidden == 0:  # f = INIT_GAIN * identity, g its inverse: every latent
            with torch.no_grad():  # starts several bins wide
                self.encoder.weight.copy_(INIT_GAIN * torch.eye(dim))
                self.decoder.weight.copy_(torch.eye(dim) / INIT_GAIN)
                self.encoder.bias.zero_()
                self.decoder.bias.zero_()
        self.prior_mean = nn.Parameter(torch.zeros(dim))
        self.prior_log_scale = nn.Parameter(torch.zeros(dim))

    def bits(self, y: Tensor) -> Tensor:
        """``-log2 p_hat(y)`` summed over dimensions, shape (n,)."""
        scale = self.prior_log_scale.exp()
        return discretized_gaussian_bits(y, self.prior_mean, scale).sum(-1)

    def forward(
        self, x: Tensor, relaxation: Relaxation = noise_relaxation
    ) -> tuple[Tensor, Tensor]:
        y_rate, y_dec = relaxation(self.encoder(x), self.prior_mean)
        return self.bits(y_rate), self.decoder(y_dec)


@dataclass(frozen=True)
class TrainConfig:
    """Adam on fresh source samples; the learning rate drops 10× for the last 20 %."""

    steps: int = 2000
    batch_size: int = 512
    lr: float = 3e-2
    hidden: int = 0
    seed: int = 0


def fit(
    source: GaussianSource,
    lmbda: float,
    config: TrainConfig = TrainConfig(),  # noqa: B008 (frozen, so safe)
    relaxation: Relaxation = noise_relaxation,
) -> LearnedQuantizer:
    """Train a :class:`LearnedQuantizer` on the free energy ``R + lmbda * D``.

    .. math:: \\mathcal L = \\mathbb E\\bigl[-\\log_2 \\hat p(\\tilde y)\\bigr]
              + \\lambda\\, \\mathbb E \\lVert x - g(\\tilde y) \\rVert^2

    with R in bits per sample and D the squared error per sample (so λ is in
    bits per unit squared error). The global torch RNG is forked and seeded
    with ``config.seed``, so a call is repeatable and leaves the caller's RNG
    untouched.

    See: *Free energy and rate–distortion*, a learned quantizer.
    """
    _positive("lmbda", lmbda)
    threads = torch.get_num_threads()
    # 2x2 matrices: extra intra-op threads only add overhead, and on a busy
    # 2-core machine their spin-waits turned a 1 s fit into 50 s (measured).
    torch.set_num_threads(1)
    try:
        return _fit(source, lmbda, config, relaxation)
    finally:
        torch.set_num_threads(threads)


def _fit(source, lmbda, config, relaxation) -> LearnedQuantizer:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = LearnedQuantizer(len(source.variances), config.hidden)
        opt = torch.optim.Adam(model.parameters(), lr=config.lr)
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, [int(0.8 * config.steps)])
        for _ in range(config.steps):
            x = source.sample(config.batch_size)
            bits, x_hat = model(x, relaxation)
            loss = bits.mean() + lmbda * (x - x_hat).pow(2).sum(-1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


@dataclass(frozen=True)
class QuantizerEval:
    """Operational (rounded) and relaxed (training-time) rate and distortion."""

    rate_bits: float  #: mean -log2 p_hat(y_hat), the ideal code length per sample
    distortion: float  #: mean ||x - g(y_hat)||^2 per sample
    relaxed_rate_bits: float  #: the same under the training relaxation
    relaxed_distortion: float


@torch.no_grad()
def evaluate(
    model: LearnedQuantizer, x: Tensor, relaxation: Relaxation = noise_relaxation
) -> QuantizerEval:
    """Measure ``model`` on samples ``x`` (n, dim), rounding around the prior mean.

    Test time codes ``y_hat = round(f(x) - mu) + mu``; its ideal code length
    ``-log2 p_hat(y_hat)`` is what an entropy coder achieves to within a few
    bytes per file.
    """
    y_hat = quantize(model.encoder(x), model.prior_mean)
    rate, x_hat = model.bits(y_hat), model.decoder(y_hat)
    relaxed_rate, relaxed_x_hat = model(x, relaxation)
    return QuantizerEval(
        rate_bits=rate.mean().item(),
        distortion=(x - x_hat).pow(2).sum(-1).mean().item(),
        relaxed_rate_bits=relaxed_rate.mean().item(),
        relaxed_distortion=(x - relaxed_x_hat).pow(2).sum(-1).mean().item(),
    )
