"""The loss, the Gaussian emission and the slope of R–D curves.

Oracles: the model's own forward and ``train_step`` formula, torch's Normal
log-density, the closed-form Gaussian R(D) and water-filling of
:mod:`dvae_tutorial.rate_distortion`, CompressAI's λ convention.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dvae_tutorial import rate_distortion as rd
from dvae_tutorial.configs import TINY
from dvae_tutorial.errors import DVAEError
from dvae_tutorial.losses import (
    gaussian_emission_constant,
    gaussian_emission_nll,
    implied_lmbda,
    lmbda_from_8bit,
    lmbda_to_8bit,
    lmbda_to_sigma,
    match_distortion,
    rate_distortion_loss,
    sigma_to_lmbda,
)
from dvae_tutorial.single_layer_vae import SingleLayerVAE

torch.set_num_threads(1)
LN2 = math.log(2)


@pytest.mark.parametrize("training", [True, False])
def test_loss_is_exactly_what_the_model_and_train_step_compute(training):
    torch.manual_seed(0)
    model = SingleLayerVAE(TINY.model).train(training)
    x = torch.rand(2, 3, 40, 56)  # not a multiple of the stride: padded inside
    with torch.no_grad():
        out = model(x)
    terms = rate_distortion_loss(sum(out.bits.values()), out.x_hat, x, 845.0)
    assert torch.equal(terms.bpp, out.bpp)
    assert torch.equal(terms.mse, out.mse)
    assert torch.equal(terms.loss, (out.bpp + 845.0 * out.mse).mean())  # train_step
    assert terms.loss.shape == () and terms.bpp.shape == (2,)


@pytest.mark.parametrize("lmbda", [10.0, 845.0, 6000.0])
def test_emission_nll_is_a_gaussian_log_density_and_lmbda_mse_plus_const(lmbda):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 3, 8, 12, generator=g, dtype=torch.float64)
    x_hat = (x + 0.05 * torch.randn(x.shape, generator=g, dtype=torch.float64))
    sigma = lmbda_to_sigma(lmbda)
    oracle = -torch.distributions.Normal(x_hat, sigma).log_prob(x).sum((1, 2, 3))
    oracle = oracle / LN2 / (8 * 12)  # bits per pixel
    nll = gaussian_emission_nll(x, x_hat, lmbda)
    torch.testing.assert_close(nll, oracle, rtol=1e-12, atol=1e-9)
    mse = (x_hat - x).square().mean((1, 2, 3))
    torch.testing.assert_close(nll, lmbda * mse + gaussian_emission_constant(lmbda),
                               rtol=1e-12, atol=1e-9)


def test_sigma_of_the_book_lmbda_and_round_trip():
    # sigma^2 = C / (2 lmbda ln 2) with C = 3 channels: 845 -> 0.0506 on [0, 1]
    assert lmbda_to_sigma(845.0) == pytest.approx(math.sqrt(3 / (2 * 845 * LN2)))
    assert 255 * lmbda_to_sigma(845.0) == pytest.approx(12.90, abs=0.01)
    for lm in (1e-2, 3.0, 845.0, 1e5):
        assert sigma_to_lmbda(lmbda_to_sigma(lm)) == pytest.approx(lm, rel=1e-12)
        assert sigma_to_lmbda(lmbda_to_sigma(lm, 1), 1) == pytest.approx(lm, rel=1e-12)
    # the constant is (C/2) log2(2 pi sigma^2): negative for a narrow density
    assert gaussian_emission_constant(845.0) == pytest.approx(
        1.5 * math.log2(2 * math.pi * 3 / (2 * 845 * LN2)))
    assert gaussian_emission_constant(845.0) < 0


@pytest.mark.parametrize("lmbda", [2.0, 20.0, 200.0])
def test_sigma_squared_is_where_gaussian_rd_has_slope_minus_lmbda(lmbda):
    # one component, rate in bits per sample: R(D) = 1/2 log2(var / D)
    d = lmbda_to_sigma(lmbda, channels=1) ** 2
    eps = 1e-7 * d
    rate = rd.rate_gaussian(np.array([d - eps, d + eps]), 1.0)
    slope = (rate[1] - rate[0]) / (2 * eps)
    assert slope == pytest.approx(-lmbda, rel=1e-6)


def test_water_level_of_an_image_source_is_the_emission_variance():
    # 3 components per pixel, bpp per unit of MSE averaged over them
    rng = np.random.default_rng(0)
    pixels = 50
    variances = rng.lognormal(-6.0, 2.0, size=3 * pixels)
    lmbda = 845.0
    theta = lmbda_to_sigma(lmbda) ** 2

    def point(level):
        d_i, r_i = rd.reverse_water_filling(variances, level)
        return r_i.sum() / pixels, d_i.sum() / (3 * pixels)

    (r0, d0), (r1, d1) = point(theta * (1 - 1e-6)), point(theta * (1 + 1e-6))
    assert 0 < (variances > theta).sum() < variances.size  # some coded, some not
    assert -(r1 - r0) / (d1 - d0) == pytest.approx(lmbda, rel=1e-5)
    assert point(theta)[1] <= theta  # D <= sigma^2: uncoded parts are below it


def test_lmbda_scales_match_compressai():
    assert lmbda_to_8bit(845.0) == pytest.approx(0.013, abs=1e-5)
    assert lmbda_from_8bit(0.013) == pytest.approx(845.325)
    assert lmbda_from_8bit(lmbda_to_8bit(123.4)) == pytest.approx(123.4, rel=1e-15)


def test_implied_lmbda_of_a_line_and_of_gaussian_optima():
    d = np.array([0.1, 0.2, 0.4])
    np.testing.assert_allclose(implied_lmbda(3.0 - 5.0 * d, d), [5.0, 5.0])
    # optima of R + lmbda D on R(D) = 1/2 log2(1/D): chords bracketed by lmbdas
    lmbdas = np.array([1.0, 2.0, 5.0, 11.0, 40.0])
    d_opt = 1.0 / (2 * lmbdas * LN2)
    chords = implied_lmbda(rd.rate_gaussian(d_opt, 1.0), d_opt)
    assert np.all((lmbdas[:-1] < chords) & (chords < lmbdas[1:]))
    # a convex curve: the chords steepen as D shrinks (the points go that way)
    assert np.all(np.diff(chords) > 0)
    # independent of the direction the points are listed in
    np.testing.assert_allclose(implied_lmbda(rd.rate_gaussian(d_opt[::-1], 1.0),
                                             d_opt[::-1]), chords[::-1])


def test_implied_lmbda_rejects_bad_curves():
    with pytest.raises(DVAEError, match="share a distortion"):
        implied_lmbda([1.0, 0.5], [0.1, 0.1])
    with pytest.raises(DVAEError, match="equal length"):
        implied_lmbda([1.0, 0.5, 0.2], [0.1, 0.2])


def test_match_distortion_continuous_integer_and_failures():
    p, value = match_distortion(lambda t: t * t, 2.0, 0.0, 3.0, tol=1e-6)
    assert abs(value - 2.0) <= 1e-6 and p == pytest.approx(math.sqrt(2), abs=1e-6)
    p, value = match_distortion(lambda t: 1.0 / t, 4.0, 0.1, 10.0, tol=1e-3)
    assert p == pytest.approx(0.25, abs=1e-3)  # decreasing works too
    q, value = match_distortion(lambda k: 100.0 / k, 7.0, 1, 100, tol=0.0,
                                integer=True)
    assert (q, value) == (14, 100.0 / 14)  # 7.14 is nearer 7 than 6.67
    with pytest.raises(DVAEError, match="bracket"):
        match_distortion(lambda t: t, 5.0, 0.0, 1.0, tol=0.1)
    with pytest.raises(DVAEError, match="jumps"):
        match_distortion(lambda t: float(t > 0.5), 0.5, 0.0, 1.0, tol=0.1)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(DVAEError, match="lmbda"):
        lmbda_to_sigma(0.0)
    with pytest.raises(DVAEError, match="sigma"):
        sigma_to_lmbda(-1.0)
    with pytest.raises(DVAEError, match="one shape"):
        rate_distortion_loss(torch.zeros(1), torch.zeros(1, 3, 4, 4),
                             torch.zeros(1, 3, 4, 5), 1.0)
