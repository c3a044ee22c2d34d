"""Flow posteriors: the spline is a bijection and the KL estimator is right."""

import copy
import math

import numpy as np
import pytest
import torch

from dvae_tutorial import rate_distortion as rd
from dvae_tutorial.distributions import discretized_gaussian_log_mass
from dvae_tutorial.flows import (
    FlowCodec,
    FlowTrainConfig,
    SplineFlow,
    fit_flow,
    free_energy_bits,
    rd_lagrangian_bound,
)
from dvae_tutorial.quantization import uniform_kl


def random_flow(dim=2, seed=0, log_width=0.4):
    torch.manual_seed(seed)
    flow = SplineFlow(dim).double()
    with torch.no_grad():
        for p in (flow.raw_widths, flow.raw_heights, flow.raw_derivatives):
            p.add_(torch.randn_like(p))
        flow.log_width.fill_(log_width)
    return flow


def test_identity_at_initialisation():
    u = torch.rand(500, 3, dtype=torch.float64) - 0.5
    z, log_d = SplineFlow(3).double()(u)
    assert torch.allclose(z, u, atol=1e-9)
    assert log_d.abs().max() < 1e-8


def test_inverse_derivative_and_range():
    flow = random_flow()
    u = torch.rand(2000, 2, dtype=torch.float64, requires_grad=True) - 0.5
    z, log_d = flow(u)
    assert torch.allclose(flow.inverse(z), u, atol=1e-10)
    (grad,) = torch.autograd.grad(z.sum(), u)  # dims are independent: diag
    assert torch.allclose(grad.log(), log_d, atol=1e-9)
    ends, _ = flow(torch.tensor([[-0.5, -0.5], [0.5, 0.5]], dtype=torch.float64))
    half = 0.5 * math.exp(0.4)
    assert torch.allclose(ends, torch.tensor([[-half, -half], [half, half]],
                                             dtype=torch.float64), atol=1e-12)
    # beyond the range the inverse clamps to the ends of the box
    far = flow.inverse(torch.tensor([[-9.0, 9.0]], dtype=torch.float64))
    assert far.tolist() == [[-0.5, 0.5]]


def log_prior(t, mean=0.3, scale=1.7):
    return discretized_gaussian_log_mass(t, torch.tensor(mean, dtype=t.dtype),
                                         torch.tensor(scale, dtype=t.dtype))


def test_affine_flow_kl_matches_uniform_closed_form():
    """Spline at identity, width a: q = U(c - a/2, c + a/2), whose KL uniform_kl
    computes by quadrature; the flow's estimator on a midpoint grid of u must
    agree to quadrature accuracy, and a Monte Carlo estimate within 4 SE."""
    flow = SplineFlow(1).double()
    a = 2.7
    with torch.no_grad():
        flow.log_width.fill_(math.log(a))
    c = torch.tensor([1.1], dtype=torch.float64)
    reference = uniform_kl(c, log_prior, width=a).item()
    u = ((torch.arange(100_000, dtype=torch.float64) + 0.5) / 100_000 - 0.5)[:, None]
    offset, log_d = flow(u)
    per_u = -log_d[:, 0] - log_prior(c + offset[:, 0])
    assert abs(per_u.mean().item() - reference) < 1e-8
    u_mc = torch.rand(200_000, 1, dtype=torch.float64,
                      generator=torch.Generator().manual_seed(1)) - 0.5
    offset, log_d = flow(u_mc)
    mc = -log_d[:, 0] - log_prior(c + offset[:, 0])
    assert abs(mc.mean().item() - reference) < 4 * mc.std().item() / math.sqrt(len(mc))


def test_spline_kl_matches_quadrature_in_z():
    """Check the change of variables independently: build q(z) on a z grid from
    the inverse, check it integrates to 1, and integrate q log(q / p_hat)."""
    flow = random_flow(dim=1, seed=3)
    c = 0.6
    z = torch.linspace(-0.5 * math.exp(0.4), 0.5 * math.exp(0.4), 400_001,
                       dtype=torch.float64)[1:-1, None]
    _, log_d = flow(flow.inverse(z))
    log_q = -log_d[:, 0]
    dz = (z[1] - z[0]).item()
    assert abs(log_q.exp().sum().item() * dz - 1.0) < 1e-4
    kl_z = (log_q.exp() * (log_q - log_prior(c + z[:, 0]))).sum().item() * dz
    u = torch.rand(400_000, 1, dtype=torch.float64,
                   generator=torch.Generator().manual_seed(2)) - 0.5
    offset, log_d = flow(u)
    mc = -log_d[:, 0] - log_prior(c + offset[:, 0])
    se = mc.std().item() / math.sqrt(len(mc))
    assert abs(mc.mean().item() - kl_z) < 4 * se + 1e-4


def test_codec_rate_is_log_q_minus_log_prior():
    quantizer = rd.LearnedQuantizer(2).double()
    codec = FlowCodec(quantizer).double()
    codec.flow = random_flow()
    x = torch.randn(64, 2, dtype=torch.float64)
    u = torch.rand(64, 2, dtype=torch.float64) - 0.5
    rate, x_hat = codec(x, u)
    z = quantizer.encoder(x) + codec.flow(u)[0]
    expected = (-codec.flow(u)[1].sum(-1) / math.log(2) + quantizer.bits(z))
    assert torch.allclose(rate, expected)
    assert torch.allclose(x_hat, quantizer.decoder(z))


def test_lagrangian_bound_is_the_minimum_over_the_rd_curve():
    variances, lmbda = (1.0, 0.1), 20.0
    d = np.geomspace(1e-3, 1.1, 4000)
    numeric = (rd.gaussian_rd_curve(variances, d) + lmbda * d).min()
    assert rd_lagrangian_bound(variances, lmbda) == pytest.approx(numeric, abs=1e-4)


def test_flow_posterior_beats_box_and_respects_the_bound():
    """Same start, same steps: the trainable flow must reach a lower free
    energy than the frozen box, and neither may go below min R + lmbda D."""
    source, lmbda = rd.GaussianSource(), 32.0
    start = rd.fit(source, lmbda, rd.TrainConfig(steps=400))
    config = FlowTrainConfig(steps=300)
    flow = fit_flow(FlowCodec(copy.deepcopy(start)), source, lmbda, config)
    box = FlowCodec(copy.deepcopy(start))
    box.flow.requires_grad_(False)
    box = fit_flow(box, source, lmbda, config)
    x = source.sample(50_000, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        f_flow = free_energy_bits(flow, x, lmbda)
        f_box = free_energy_bits(box, x, lmbda)
    se = math.hypot(f_flow.std().item(), f_box.std().item()) / math.sqrt(len(x))
    assert f_box.mean() - f_flow.mean() > 0.2  # about 0.5 bits expected
    bound = rd_lagrangian_bound(source.variances, lmbda)
    assert f_flow.mean().item() > bound - 4 * se
