"""Tests for dvae_tutorial.quantization: gradients, noise statistics, symbols,
relaxations and the KL identity of the uniform posterior."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from dvae_tutorial.distributions import discretized_gaussian_log_mass
from dvae_tutorial.errors import DVAEError
from dvae_tutorial.quantization import (
    SYMBOL_DTYPE,
    add_uniform_noise,
    from_symbols,
    mixed_relaxation,
    noise_relaxation,
    quantize,
    round_st,
    ste_relaxation,
    to_symbols,
    uniform_kl,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _is_integer(t: torch.Tensor, atol: float = 1e-5) -> bool:
    return bool(torch.allclose(t, torch.round(t), rtol=0.0, atol=atol))


# ------------------------------------------------------------------ gradients


def test_torch_round_has_zero_gradient():
    y = torch.linspace(-3.3, 3.3, 101, requires_grad=True)
    torch.round(y).sum().backward()
    assert torch.equal(y.grad, torch.zeros_like(y))


def test_round_st_rounds_forward_and_has_gradient_exactly_one():
    y = torch.linspace(-3.3, 3.3, 101, dtype=torch.float64, requires_grad=True)
    out = round_st(y)
    assert torch.equal(out, torch.round(y.detach()))
    (out * torch.arange(101.0, dtype=torch.float64)).sum().backward()
    assert torch.equal(y.grad, torch.arange(101.0, dtype=torch.float64))


# ------------------------------------------------------------------ noise


def test_add_uniform_noise_is_within_half_and_has_gradient_one():
    y = (torch.randn(1000, generator=_gen(1)) * 5).requires_grad_()
    y_tilde = add_uniform_noise(y, generator=_gen(2))
    assert y_tilde.shape == y.shape and y_tilde.dtype == y.dtype
    assert (y_tilde - y).abs().max() <= 0.5
    y_tilde.sum().backward()
    assert torch.equal(y.grad, torch.ones_like(y))


def test_add_uniform_noise_has_mean_zero_and_variance_one_twelfth():
    n = 1_000_000
    u = add_uniform_noise(torch.zeros(n, dtype=torch.float64), generator=_gen(3))
    # Standard errors of the sample mean and variance of U(-1/2, 1/2):
    # Var u = 1/12, Var u^2 = E u^4 - (E u^2)^2 = 1/80 - 1/144.
    se_mean = math.sqrt(1 / 12 / n)
    se_var = math.sqrt((1 / 80 - 1 / 144) / n)
    assert abs(u.mean().item()) < 4 * se_mean
    assert abs(u.var().item() - 1 / 12) < 4 * se_var
    # and it is uniform: Kolmogorov–Smirnov against U(-1/2, 1/2)
    assert stats.kstest(u[:20_000].numpy(), stats.uniform(-0.5, 1).cdf).pvalue > 1e-3


def test_add_uniform_noise_is_reproducible_with_a_generator():
    y = torch.zeros(10)
    assert torch.equal(add_uniform_noise(y, _gen(7)), add_uniform_noise(y, _gen(7)))


def _box_convolved_gaussian_cdf(t: np.ndarray, mu: float, sigma: float) -> np.ndarray:
    """CDF of mu + sigma n + u: integral of Phi over [t - 1/2, t + 1/2]."""

    def antiderivative(s):  # d/ds sigma (z Phi(z) + phi(z)) = Phi(z), z = (s-mu)/sigma
        z = (s - mu) / sigma
        return sigma * (z * stats.norm.cdf(z) + stats.norm.pdf(z))

    return antiderivative(t + 0.5) - antiderivative(t - 0.5)


@pytest.mark.parametrize("mu, sigma", [(0.0, 0.3), (0.4, 1.5)])
def test_noisy_prior_samples_follow_the_discretized_gaussian_density(mu, sigma):
    # y ~ N(mu, sigma^2), y_tilde = y + u has density p * box = discretized Gaussian
    g = _gen(4)
    y = mu + sigma * torch.randn(20_000, generator=g, dtype=torch.float64)
    y_tilde = add_uniform_noise(y, generator=g).numpy()
    cdf = lambda t: _box_convolved_gaussian_cdf(t, mu, sigma)  # noqa: E731
    assert stats.kstest(y_tilde, cdf).pvalue > 1e-3
    # ... and that density is distributions' log-mass at non-integers
    lo, hi = mu - 4 * sigma - 1, mu + 4 * sigma + 1
    grid = torch.linspace(lo, hi, 20_001, dtype=torch.float64)
    density = discretized_gaussian_log_mass(grid, torch.tensor(mu), torch.tensor(sigma))
    numeric_cdf = torch.cumulative_trapezoid(density.exp(), grid).numpy()
    exact_cdf = cdf(grid.numpy()[1:]) - cdf(grid.numpy()[0])
    np.testing.assert_allclose(numeric_cdf, exact_cdf, atol=1e-6)


# ------------------------------------------------------------------ symbols


def test_symbols_round_trip_integers_around_arbitrary_means():
    g = _gen(5)
    mean = torch.randn(4, 50, generator=g, dtype=torch.float64) * 10
    ints = torch.randint(-300, 300, (4, 50), generator=g).to(torch.float64)
    y = ints + mean
    symbols = to_symbols(y, mean)
    assert symbols.dtype == SYMBOL_DTYPE == torch.int32
    assert torch.equal(symbols, ints.to(torch.int32))
    torch.testing.assert_close(from_symbols(symbols, mean), y, rtol=0, atol=1e-12)


def test_symbols_are_round_of_y_minus_mean_and_centred():
    g = _gen(6)
    mean = torch.rand(100_000, generator=g) * 40 - 20
    y = mean + 2.0 * torch.randn(100_000, generator=g)
    symbols = to_symbols(y, mean)
    assert (symbols.to(torch.float32) - torch.round(y - mean)).abs().max() == 0
    assert abs(symbols.double().mean().item()) < 0.05  # centred on zero
    assert symbols.abs().max() <= 12  # a few prior scales, not |mean| ~ 20
    torch.testing.assert_close(from_symbols(symbols, mean), quantize(y, mean))


def test_from_symbols_follows_the_mean_dtype_and_scalar_means_work():
    s = torch.tensor([-2, 0, 3], dtype=torch.int32)
    assert from_symbols(s, torch.zeros(3, dtype=torch.float64)).dtype == torch.float64
    torch.testing.assert_close(from_symbols(s, 0.25), torch.tensor([-1.75, 0.25, 3.25]))
    assert torch.equal(to_symbols(torch.tensor([-1.75, 0.25, 3.25]), 0.25), s)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -3e9, 2.0**31])
def test_to_symbols_refuses_latents_it_cannot_code(bad, dtype):
    with pytest.raises(DVAEError, match="to_symbols"):
        to_symbols(torch.tensor([0.0, bad], dtype=dtype))


def test_to_symbols_accepts_symbols_up_to_the_int32_limit():
    y = torch.tensor([-(2.0**31) + 1, 2.0**31 - 1], dtype=torch.float64)
    assert to_symbols(y).tolist() == [-(2**31) + 1, 2**31 - 1]


def test_quantize_is_within_half_and_on_the_shifted_lattice():
    g = _gen(8)
    y = torch.randn(10_000, generator=g, dtype=torch.float64) * 7
    mean = torch.rand(10_000, generator=g, dtype=torch.float64) * 3 - 1.5
    y_hat = quantize(y, mean)
    assert (y_hat - y).abs().max() <= 0.5
    assert _is_integer(y_hat - mean, atol=1e-9)


# ------------------------------------------------------------------ relaxations


def _y_and_mean():
    g = _gen(9)
    y = (torch.randn(2000, generator=g) * 3).requires_grad_()
    return y, torch.rand(2000, generator=g) - 0.5


def test_noise_relaxation_feeds_the_same_noisy_latent_to_rate_and_decoder():
    y, mean = _y_and_mean()
    torch.manual_seed(0)
    y_rate, y_dec = noise_relaxation(y, mean)
    assert torch.equal(y_rate, y_dec)
    assert (y_rate - y).abs().max() <= 0.5
    assert not _is_integer(y_rate.detach() - mean)  # noisy, not on the lattice
    y_rate.sum().backward()
    assert torch.equal(y.grad, torch.ones_like(y))


def test_ste_relaxation_is_the_test_time_value_with_gradient_one():
    y, mean = _y_and_mean()
    y_rate, y_dec = ste_relaxation(y, mean)
    assert torch.equal(y_rate, y_dec)
    torch.testing.assert_close(y_rate.detach(), quantize(y.detach(), mean))
    assert _is_integer(y_rate.detach() - mean)
    y_rate.sum().backward()
    assert torch.equal(y.grad, torch.ones_like(y))


def test_mixed_relaxation_noises_the_rate_and_rounds_the_decoder_input():
    y, mean = _y_and_mean()
    y_rate, y_dec = mixed_relaxation(y, mean)
    assert (y_rate - y).abs().max() <= 0.5
    assert not _is_integer(y_rate.detach() - mean)
    torch.testing.assert_close(y_dec.detach(), quantize(y.detach(), mean))
    (y_rate.sum() + 2 * y_dec.sum()).backward()
    assert torch.equal(y.grad, torch.full_like(y, 3.0))


# ------------------------------------------------------------------ KL identity


def test_uniform_kl_matches_the_closed_form_for_a_gaussian_prior():
    # KL(U(c-w/2, c+w/2) || N(mu, s^2)) = -log w + log(s sqrt(2 pi))
    #                                      + ((c-mu)^2 + w^2/12) / (2 s^2)
    c = torch.tensor([-1.3, 0.0, 0.7, 4.0], dtype=torch.float64)
    mu, s = 0.2, 0.8
    for w in (0.25, 1.0, 3.0):
        kl = uniform_kl(c, lambda t: stats_norm_logpdf(t, mu, s), width=w)
        exact = (-math.log(w) + math.log(s * math.sqrt(2 * math.pi))
                 + ((c - mu) ** 2 + w**2 / 12) / (2 * s**2))
        torch.testing.assert_close(kl, exact, rtol=1e-10, atol=1e-10)


def stats_norm_logpdf(t: torch.Tensor, mu: float, s: float) -> torch.Tensor:
    return -0.5 * ((t - mu) / s) ** 2 - math.log(s * math.sqrt(2 * math.pi))


def test_uniform_kl_rejects_a_bad_width():
    with pytest.raises(DVAEError, match="width"):
        uniform_kl(torch.zeros(1), lambda t: t, width=0.0)


@pytest.mark.parametrize(
    "y, mu, sigma",
    [(0.3, 0.0, 1.0), (0.0, 0.0, 0.11), (0.8, 0.2, 0.11), (-1.2, 0.5, 0.6),
     (5.0, 0.0, 20.0), (-37.0, 3.0, 20.0)],
)
def test_kl_of_the_uniform_posterior_is_the_expected_code_length(y, mu, sigma):
    """The MC mean of -log p_hat(y + u) equals the quadrature KL(q || p_hat)."""
    y, mu, sigma = (torch.tensor(v, dtype=torch.float64) for v in (y, mu, sigma))
    log_p_hat = lambda t: discretized_gaussian_log_mass(t, mu, sigma)  # noqa: E731
    n = 200_000
    code_length = -log_p_hat(add_uniform_noise(y.expand(n), generator=_gen(10)))
    mc, se = code_length.mean().item(), code_length.std().item() / math.sqrt(n)
    kl = uniform_kl(y, log_p_hat).item()
    assert kl >= 0
    assert abs(mc - kl) < 4 * se, (mc, kl, se)


def test_noise_for_half_precision_latents_is_added_in_float32():
    """Under autocast ``y`` may be bf16, whose grid is 1/8 at |y| >= 16: the
    noisy latent must not be rounded back onto it."""
    y = torch.full((4096,), 20.0, dtype=torch.bfloat16)
    y_tilde = add_uniform_noise(y, torch.Generator().manual_seed(0))
    assert y_tilde.dtype == torch.float32
    assert len(torch.unique(y_tilde)) > 4000  # bf16 would leave ~9 values
    assert float((y_tilde - 20.0).abs().max()) <= 0.5
    y64 = torch.zeros(3, dtype=torch.float64)
    assert add_uniform_noise(y64).dtype == torch.float64
