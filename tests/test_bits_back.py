"""Bits-back ANS: the stack is rans made stateful, coding is exactly invertible,
and the net rate is the free energy."""

import copy
import math

import numpy as np
import pytest
import torch

from dvae_tutorial import rans
from dvae_tutorial import rate_distortion as rd
from dvae_tutorial.bits_back import (
    OP_SLACK_BITS,
    PRECISION,
    AnsStack,
    BitsBackCoder,
    leaky_cdf,
)
from dvae_tutorial.flows import FlowCodec, FlowTrainConfig, fit_flow, free_energy_bits


def random_cdfs(rng, count, n=20):
    return [leaky_cdf(np.cumsum(np.r_[0.0, rng.random(n) ** 4])) for _ in range(count)]


def test_stack_writes_what_rans_encode_writes():
    rng = np.random.default_rng(0)
    cdfs = random_cdfs(rng, 3000)
    symbols = [int(rng.integers(0, 20)) for _ in cdfs]
    words = rans.encode(symbols, [c.tolist() for c in cdfs], PRECISION)
    stack = AnsStack(state=rans.STATE_LOWER)
    for s, c in zip(reversed(symbols), reversed(cdfs), strict=True):
        stack.push(int(c[s]), int(c[s + 1] - c[s]))
    assert [stack.state >> 32, stack.state & 0xFFFFFFFF] + stack.words[::-1] == words
    # and popping rans.encode's words gives the symbols back, in order
    reader = AnsStack(state=(words[0] << 32) | words[1])
    reader.words = words[2:][::-1]
    assert [reader.pop(c) for c in cdfs] == symbols
    assert reader.state == rans.STATE_LOWER and not reader.words
    assert reader.tape_used == 0


def test_leaky_cdf_codes_every_bin():
    f = np.array([0.0, 0.0, 0.3, 0.3, 0.3, 1.0 - 1e-12, 1.0])  # empty bins
    c = leaky_cdf(f)
    assert c[0] == 0 and c[-1] == 1 << PRECISION
    assert np.all(np.diff(c) >= 1)
    n = len(f) - 1
    ideal = np.diff(f) * (1 << PRECISION)
    assert np.all(np.diff(c) <= ideal * (1 - n / 2**PRECISION) + 2)


def test_pop_then_push_restores_the_stack_and_tape():
    rng = np.random.default_rng(1)
    cdfs = random_cdfs(rng, 500)
    stack = AnsStack(seed=3)
    popped = [stack.pop(c) for c in cdfs]
    assert stack.tape_used > 0  # 500 pops need more than the initial 64 bits
    for s, c in zip(reversed(popped), reversed(cdfs), strict=True):
        stack.push(int(c[s]), int(c[s + 1] - c[s]))
    assert stack.state == stack.initial_state
    assert stack.words == stack.tape[::-1]  # the initial bits come back


@pytest.fixture(scope="module")
def trained():
    source, lmbda = rd.GaussianSource(), 32.0
    start = rd.fit(source, lmbda, rd.TrainConfig(steps=500))
    codec = fit_flow(FlowCodec(copy.deepcopy(start)), source, lmbda,
                     FlowTrainConfig(steps=300))
    return source, lmbda, codec


def test_round_trip_exact_and_initial_bits_returned(trained):
    source, lmbda, codec = trained
    coder = BitsBackCoder(codec, lmbda)
    x = source.sample(60, generator=torch.Generator().manual_seed(0)).double()
    xi = coder.x_grid.index(x.numpy())
    stack = AnsStack(seed=7)
    for row in xi:
        coder.encode(stack, row)
    # the content grows by the ideal lengths, within the derived rANS slack
    growth = stack.content_bits() - math.log2(stack.initial_state)
    assert abs(growth - stack.ideal_bits) <= stack.ops * OP_SLACK_BITS
    decoded = [coder.decode(stack) for _ in xi][::-1]
    assert np.array_equal(np.array(decoded), xi)
    assert stack.state == stack.initial_state and stack.words == stack.tape[::-1]


def test_likelihood_interval_is_the_full_tables_entry(trained):
    """The sender's 4-edge shortcut must give the receiver's table entries
    bit for bit, also for means far outside the data grid (a dirty pop)."""
    _, lmbda, codec = trained
    coder = BitsBackCoder(codec, lmbda)
    rng = np.random.default_rng(4)
    for mean in [0.0, 1.234567, -5.9, 7.5, -40.0, 300.0]:
        table = leaky_cdf(coder.likelihood_cdf(mean, coder.x_grid.edges()))
        assert np.all(np.diff(table) >= 1) and table[-1] == 1 << PRECISION
        for k in [0, coder.x_grid.n - 1, *rng.integers(0, coder.x_grid.n, 20)]:
            start, freq = coder._x_interval(mean, int(k))
            assert (start, freq) == (table[k], table[k + 1] - table[k])


def test_rounded_box_codec_round_trip(trained):
    source, lmbda, codec = trained
    coder = BitsBackCoder(codec, lmbda)
    xi = coder.x_grid.index(source.sample(40).double().numpy())
    stack = AnsStack(state=rans.STATE_LOWER)
    for row in xi:
        coder.encode_rounded(stack, row)
    decoded = [coder.decode_rounded(stack) for _ in xi][::-1]
    assert np.array_equal(np.array(decoded), xi)
    assert stack.state == rans.STATE_LOWER and not stack.words


def test_net_rate_is_the_free_energy(trained):
    """Chain-code n points; the net growth per point must equal the free energy
    of the same points (+ the grid constant).

    Tolerance, term by term:
    - Monte Carlo: the code draws one z per point; the reference averages 200
      draws per point, so the difference has standard error ~ s_z / sqrt(n),
      s_z the within-point std of the free energy: allow 4 of them.
    - rANS: each of the 6 operations per point is within OP_SLACK_BITS.
    - table leak: each of the 4 pushes loses at most -log2(1 - bins / 2**24).
    The latent grid's bias is not a tolerance but part of the reference: the
    decoder sees the bin centre, off by U(-dz/2, dz/2), which adds
    lmbda ||G||_F^2 dz^2 / 12 to the distortion term (one-sided).
    The data grid (dx = 1/256 against a likelihood std of 0.11) moves the
    masses by O(dx^2 / sigma_x^2) ~ 1e-4 relative: below all of these.
    """
    source, lmbda, codec = trained
    coder = BitsBackCoder(codec, lmbda)
    n = 600
    x = source.sample(n, generator=torch.Generator().manual_seed(11)).double()
    xi = coder.x_grid.index(x.numpy())
    stack = AnsStack(seed=1)
    start = stack.content_bits()
    for row in xi:
        coder.encode(stack, row)
    net = (stack.content_bits() - start) / n
    x_c = torch.from_numpy(coder.x_grid.centre(xi))
    torch.manual_seed(0)
    with torch.no_grad():
        draws = torch.stack([free_energy_bits(coder.codec, x_c, lmbda)
                             for _ in range(200)])
    reference = (draws.mean().item() + coder.lossless_offset_bits()
                 + coder.latent_grid_bias_bits())
    s_z = draws.var(0).mean().sqrt().item()
    bins = max([g.n for g in coder.z_grids] + [coder.x_grid.n])
    tolerance = (4 * s_z / math.sqrt(n) + 6 * OP_SLACK_BITS
                 - 4 * math.log2(1 - bins / 2**PRECISION))
    assert abs(net - reference) < tolerance, (net, reference, tolerance)


def test_latent_grid_bias_is_the_extra_distortion_of_bin_centres(trained):
    """Decode at the bin centre ``z + e`` instead of the continuous sample ``z``:
    the extra distortion term is ``lmbda (||G e||^2 + 2 (x - g(z))^T G e)``.
    Its quadratic part (Monte Carlo) matches ``latent_grid_bias_bits`` (``e``
    uniform on a bin), and the whole of it agrees within its standard error."""
    source, lmbda, codec = trained
    coder = BitsBackCoder(codec, lmbda)
    n = 200_000
    x = source.sample(n, generator=torch.Generator().manual_seed(12)).double()
    u = torch.rand(x.shape, dtype=torch.float64,
                   generator=torch.Generator().manual_seed(13)) - 0.5
    with torch.no_grad():
        z, _ = coder.codec.posterior_sample(x, u)
        centres = torch.from_numpy(np.stack([g.centre(g.index(z[:, i].numpy()))
                                             for i, g in enumerate(coder.z_grids)], 1))
        decoder = coder.codec.quantizer.decoder
        quad = lmbda * (decoder(centres) - decoder(z)).pow(2).sum(-1)
        extra = lmbda * ((x - decoder(centres)).pow(2).sum(-1)
                         - (x - decoder(z)).pow(2).sum(-1))
    bias = coder.latent_grid_bias_bits()
    se_quad = quad.std().item() / math.sqrt(n)
    se = extra.std().item() / math.sqrt(n)
    assert bias > 0 and abs(quad.mean().item() - bias) < 4 * se_quad + 0.01 * bias
    assert abs(extra.mean().item() - bias) < 4 * se
