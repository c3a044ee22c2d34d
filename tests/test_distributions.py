"""Discretized Gaussian / logistic log-masses against scipy, tails, entropy.

Oracle: scipy.stats evaluated on the tail side that keeps precision
(``logsf`` above the mean, ``logcdf`` below), combined in log space. All
comparisons in float64 with a relative tolerance of 1e-9 (the implementation
agrees to ~1e-13; scipy's log-cdfs are accurate to a few ulps).
"""

from __future__ import annotations

import math
from itertools import pairwise

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from dvae_tutorial.distributions import (
    GAUSSIAN_FAR_TAIL,
    SCALE_LOWER_BOUND,
    discretized_gaussian_bits,
    discretized_gaussian_entropy,
    discretized_gaussian_log_mass,
    discretized_logistic_log_mass,
    gaussian_differential_entropy,
)
from dvae_tutorial.entropy_coding import SCALE_TABLE, TAIL_BOUNDS, TAIL_SIGMAS

RTOL = 1e-9
SCALES = [0.11, 0.2, 0.5, 1.0, 3.3, 10.0, 100.0, 1000.0]
DISTANCES = [0.0, 0.3, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 35.0, 50.0]  # in scales
MEANS = [0.0, 0.37, -1.5, 12.25]


def _t(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x, dtype=np.float64))


def _oracle(dist, y, mean, scale):
    """log(F(y + 1/2) - F(y - 1/2)) with scipy, on the precise tail side."""
    y, mean, scale = np.broadcast_arrays(
        *(np.asarray(a, float) for a in (y, mean, scale))
    )
    lo, hi = (y - 0.5 - mean) / scale, (y + 0.5 - mean) / scale
    upper_side = y >= mean
    # Above the mean: sf(lo) - sf(hi); below: cdf(hi) - cdf(lo).
    big = np.where(upper_side, dist.logsf(lo), dist.logcdf(hi))
    small = np.where(upper_side, dist.logsf(hi), dist.logcdf(lo))
    return big + np.log(-np.expm1(small - big))


def _grid():
    y, mean, scale = [], [], []
    for s in SCALES:
        for d in DISTANCES:
            for m in MEANS:
                for sign in (1, -1):
                    y.append(np.round(m + sign * d * s))
                    mean.append(m)
                    scale.append(s)
    return np.array(y), np.array(mean), np.array(scale)


def test_gaussian_log_mass_matches_scipy_from_0p11_to_1e3_out_to_50_sigma():
    y, mean, scale = _grid()
    got = discretized_gaussian_log_mass(_t(y), _t(mean), _t(scale)).numpy()
    want = _oracle(stats.norm, y, mean, scale)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, rtol=RTOL)
    assert want.min() < -1000  # the grid really reaches the far tail


def test_gaussian_log_mass_also_matches_scipy_at_non_integer_y():
    rng = np.random.default_rng(0)
    y = rng.uniform(-30, 30, 500)
    mean = rng.uniform(-3, 3, 500)
    scale = np.exp(rng.uniform(np.log(0.11), np.log(50), 500))
    got = discretized_gaussian_log_mass(_t(y), _t(mean), _t(scale)).numpy()
    np.testing.assert_allclose(got, _oracle(stats.norm, y, mean, scale), rtol=RTOL)


def test_logistic_log_mass_matches_scipy():
    y, mean, scale = _grid()
    got = discretized_logistic_log_mass(_t(y), _t(mean), _t(scale)).numpy()
    np.testing.assert_allclose(got, _oracle(stats.logistic, y, mean, scale), rtol=RTOL)


def test_bits_are_minus_log2_of_the_mass():
    y, mean, scale = _t([3.0, -2.0]), _t([0.2, 0.0]), _t([1.5, 0.4])
    bits = discretized_gaussian_bits(y, mean, scale)
    mass = discretized_gaussian_log_mass(y, mean, scale).exp()
    torch.testing.assert_close(bits, -torch.log2(mass))


def test_far_tail_fallback_matches_scipy_and_its_own_asymptotics():
    # Just past the switch both branches must agree with scipy.
    scale = np.array([1.0, 0.5, 7.0])
    y = np.round(1.5 * GAUSSIAN_FAR_TAIL * scale)
    got = discretized_gaussian_log_mass(_t(y), _t(0.0), _t(scale)).numpy()
    np.testing.assert_allclose(got, _oracle(stats.norm, y, 0.0, scale), rtol=RTOL)
    # Where t ± 1/2 rounds away (|y| ~ 1e20) the direct formula gives -inf; the
    # fallback gives the leading asymptotics -(y/s)^2/2 - log(y/s) - ...
    y, s = 1e20, 3.0
    got = discretized_gaussian_log_mass(_t(y), _t(0.0), _t(s)).item()
    z = (y - 0.5) / s
    want = -0.5 * z**2 - math.log(z * s) - 0.5 * math.log(2 * math.pi)
    assert math.isfinite(got) and got == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "log_mass", [discretized_gaussian_log_mass, discretized_logistic_log_mass]
)
def test_log_mass_and_gradients_stay_finite_at_extremes(dtype, log_mass):
    y = torch.tensor([0.0, 3.0, -1e3, 1e6, 1e20, -3e38, 7.0], dtype=dtype)
    scale = torch.tensor([1e30, 0.11, 1.0, 1.0, 0.11, 1.0, 1e-6], dtype=dtype)
    y.requires_grad_(True)
    scale.requires_grad_(True)
    out = log_mass(y, torch.zeros((), dtype=dtype), scale)
    out.sum().backward()
    assert torch.isfinite(out).all() and (out <= 0).all()
    assert torch.isfinite(y.grad).all() and torch.isfinite(scale.grad).all()


def test_scales_below_the_bound_are_clamped():
    y = _t([0.0, 1.0, 2.0])
    tiny = discretized_gaussian_log_mass(y, _t(0.0), _t(1e-4))
    bound = discretized_gaussian_log_mass(y, _t(0.0), _t(SCALE_LOWER_BOUND))
    torch.testing.assert_close(tiny, bound)


@pytest.mark.parametrize("index", [0, 40, 120, 200, 255])
@pytest.mark.parametrize("mean", [0.0, 0.4999, -0.25, 3.1])
def test_pmf_sums_to_one_within_the_tail_bound(index, mean):
    scale, b = SCALE_TABLE[index], int(TAIL_BOUNDS[index])
    centre = round(mean)
    k = torch.arange(centre - b, centre + b + 1, dtype=torch.float64)
    inside = discretized_gaussian_log_mass(k, _t(mean), _t(scale)).exp().sum().item()
    tail_mass = 2 * stats.norm.sf(TAIL_SIGMAS)  # bound on what lies outside
    assert 1.0 - tail_mass - 1e-12 <= inside <= 1.0 + 1e-12


@pytest.mark.parametrize("scale", [0.11, 0.7, 4.0])
def test_density_integrates_to_one_and_is_the_law_of_mean_plus_noise(scale):
    mean = 0.3

    def dens(v: float) -> float:
        return math.exp(
            discretized_gaussian_log_mass(_t(v), _t(mean), _t(scale)).item()
        )

    def quad(f) -> float:  # p_hat has kinks at mean ± 1/2: split there
        lo, hi = mean - 12 * scale - 1, mean + 12 * scale + 1
        edges = [lo, mean - 0.5, mean + 0.5, hi]
        return sum(integrate.quad(f, a, b, limit=200)[0] for a, b in pairwise(edges))

    assert quad(dens) == pytest.approx(1.0, abs=1e-9)
    # y_tilde = mean + scale * n + u has density p_hat: the Monte-Carlo cross
    # entropy E[-log p_hat(y_tilde)] equals the entropy of p_hat.
    gen = torch.Generator().manual_seed(0)
    n = 200_000
    y_tilde = mean + scale * torch.randn(n, generator=gen, dtype=torch.float64)
    y_tilde += torch.rand(n, generator=gen, dtype=torch.float64) - 0.5
    nll = -discretized_gaussian_log_mass(y_tilde, _t(mean), _t(scale))
    entropy = quad(lambda v: -dens(v) * math.log(dens(v)))
    stderr = nll.std().item() / math.sqrt(n)
    assert abs(nll.mean().item() - entropy) < 4 * stderr


def test_entropy_matches_a_direct_sum_and_the_high_rate_limit():
    for scale, mean in [(0.11, 0.0), (0.3, 0.5), (2.0, 0.2), (40.0, 0.0)]:
        k = np.arange(-2000, 2001)
        log_p = _oracle(stats.norm, k, mean, scale)
        direct = -(np.exp(log_p) * log_p).sum() / math.log(2)
        assert discretized_gaussian_entropy(scale, mean) == pytest.approx(
            direct, rel=1e-10
        )
    # H >= 0 always, h < 0 for small scales; H -> h as the scale grows.
    assert discretized_gaussian_entropy(0.11) > 0 > gaussian_differential_entropy(0.11)
    for scale in (10.0, 100.0):
        gap = discretized_gaussian_entropy(scale) - gaussian_differential_entropy(scale)
        assert 0 < gap < 0.01 / scale
    assert gaussian_differential_entropy(1.0) == pytest.approx(
        0.5 * math.log2(2 * math.pi * math.e)
    )
