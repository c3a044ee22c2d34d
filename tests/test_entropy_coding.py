"""Coding tables, both coders' round trips, escapes, and corrupt streams."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
import torch

from dvae_tutorial.distributions import discretized_gaussian_log_mass
from dvae_tutorial.entropy_coding import (
    CDF_PRECISION,
    MEAN_STEPS,
    SCALE_LEVELS,
    SCALE_MAX,
    SCALE_MIN,
    SCALE_RESOLUTION,
    SCALE_TABLE,
    TAIL_BOUNDS,
    FastCoder,
    ReadableCoder,
    decode_latents,
    encode_latents,
    gaussian_cdfs,
    information_content,
    quantized_cdf,
    scale_index,
    split_means,
)
from dvae_tutorial.errors import CodingError
from dvae_tutorial.quantization import quantize

CODERS = [ReadableCoder, FastCoder]


def _problem(n: int, seed: int = 0):
    """Symbols drawn from discretized Gaussians with random means and scales."""
    rng = np.random.default_rng(seed)
    means = rng.uniform(-3, 3, n)
    scales = np.exp(rng.uniform(math.log(0.11), math.log(20.0), n))
    return (
        np.rint(means + scales * rng.standard_normal(n)).astype(np.int64),
        means,
        scales,
    )


# --- tables -----------------------------------------------------------------


def test_scale_table_is_geometric_exact_in_binary_and_golden():
    assert SCALE_TABLE.shape == (SCALE_LEVELS,)
    assert SCALE_TABLE[0] == 0.1100006103515625 and SCALE_TABLE[-1] == SCALE_MAX
    assert np.all(
        SCALE_TABLE / SCALE_RESOLUTION == np.round(SCALE_TABLE / SCALE_RESOLUTION)
    )
    ratios = SCALE_TABLE[1:] / SCALE_TABLE[:-1]
    expected = (SCALE_MAX / SCALE_MIN) ** (1 / (SCALE_LEVELS - 1))
    np.testing.assert_allclose(ratios, expected, rtol=2e-3)
    assert zlib.crc32(SCALE_TABLE.tobytes()) == 0xDA198BEE  # any change breaks streams
    assert TAIL_BOUNDS[0] == 1 and TAIL_BOUNDS[-1] == 8 * 256


def test_scale_index_snaps_to_the_nearest_entry_in_log_and_clamps():
    assert np.array_equal(scale_index(SCALE_TABLE), np.arange(SCALE_LEVELS))
    rng = np.random.default_rng(0)
    s = np.exp(rng.uniform(math.log(SCALE_MIN), math.log(SCALE_MAX), 10_000))
    err = np.abs(np.log(SCALE_TABLE[scale_index(s)] / s))
    assert err.max() <= 0.5 * math.log(SCALE_TABLE[1] / SCALE_TABLE[0]) + 1e-3
    assert scale_index([0.0, -1.0, 1e-9]).tolist() == [0, 0, 0]
    assert scale_index([1e9]).tolist() == [SCALE_LEVELS - 1]


def test_split_means_reconstructs_the_mean_on_a_1_over_64_grid():
    means = np.array([-3.7, -0.5, -0.49, 0.0, 0.25, 0.5078125, 2.999, 1e6 + 0.3])
    centre, offset = split_means(means)
    assert (offset >= -MEAN_STEPS // 2).all() and (offset < MEAN_STEPS // 2).all()
    assert np.abs(centre + offset / MEAN_STEPS - means).max() <= 0.5 / MEAN_STEPS


def test_quantized_cdf_is_leaky_exact_and_close_to_the_pmf():
    pmf = np.array([0.5, 0.25, 1e-30, 0.0, 0.25 - 1e-9, 1e-9])
    cdf = quantized_cdf(pmf, 16)
    freq = np.diff(cdf)
    assert cdf[0] == 0 and cdf[-1] == 2**16 and (freq >= 1).all()
    np.testing.assert_allclose(freq / 2**16, pmf, atol=5 / 2**16)
    rows = np.random.default_rng(0).dirichlet(np.ones(50), size=20)
    cdfs = quantized_cdf(rows, CDF_PRECISION)
    assert (cdfs[:, -1] == 2**CDF_PRECISION).all() and (np.diff(cdfs) >= 1).all()
    kl = (rows * np.log2(rows / (np.diff(cdfs) / 2**CDF_PRECISION))).sum(-1)
    assert kl.max() < 1e-5  # bits per symbol lost to 24-bit quantization
    for bad in ([], [-0.1, 1.1], [0.0, 0.0], np.ones(2**4 + 1)):
        with pytest.raises(CodingError):
            quantized_cdf(bad, 4)


def test_gaussian_cdfs_rows_follow_the_discretized_gaussian():
    index = 100
    cdfs = gaussian_cdfs(index)
    b = int(TAIL_BOUNDS[index])
    assert cdfs.shape == (MEAN_STEPS, 2 * b + 4)
    row = cdfs[MEAN_STEPS // 2 + 16]  # mean offset 16/64 = 0.25
    k = torch.arange(-b, b + 1, dtype=torch.float64)
    sigma = torch.tensor(SCALE_TABLE[index], dtype=torch.float64)
    exact = discretized_gaussian_log_mass(k, torch.tensor(0.25), sigma).exp().numpy()
    p = np.diff(row)[1:-1] / 2**CDF_PRECISION
    # Off by the leak (1 unit of 2**-24 each, which also rescales the rest by
    # 1 - n / 2**24, n = 39) plus rounding (1 unit).
    np.testing.assert_allclose(p, exact, rtol=1e-5, atol=2.0**-23)
    assert np.diff(row)[0] == np.diff(row)[-1] == 1  # escapes: tiny, but codable


# --- round trips ----------------------------------------------------------------


@pytest.mark.parametrize("coder_cls", CODERS)
def test_round_trip_is_exact_and_costs_the_information_content(coder_cls):
    symbols, means, scales = _problem(20_000)
    data = coder_cls().encode(symbols, means, scales)
    assert np.array_equal(coder_cls().decode(data, means, scales), symbols)
    ideal = information_content(symbols, means, scales)
    assert ideal < 8 * len(data) < 1.005 * ideal


def test_both_coders_write_the_same_size_up_to_a_few_words():
    symbols, means, scales = _problem(5000, seed=3)
    sizes = [len(c().encode(symbols, means, scales)) for c in CODERS]
    assert abs(sizes[0] - sizes[1]) <= 16


@pytest.mark.parametrize("coder_cls", CODERS)
def test_extreme_symbols_escape_and_round_trip(coder_cls):
    cases = []
    for index in (0, 57, 255):
        b, scale = int(TAIL_BOUNDS[index]), SCALE_TABLE[index]
        for mean in (0.0, 0.49, -2.26):
            c = round(mean)
            for rel in (0, b, b + 1, b + 2, 2 * b + 5, 10**6, 2**31 - 1 - abs(c)):
                for sign in (1, -1):
                    cases.append((c + sign * rel, mean, scale))
    symbols, means, scales = map(np.array, zip(*cases, strict=True))
    coder = coder_cls()
    data = coder.encode(symbols, means, scales)
    assert np.array_equal(coder.decode(data, means, scales), symbols)


@pytest.mark.parametrize("coder_cls", CODERS)
def test_shapes_broadcasting_and_empty_input(coder_cls):
    symbols = np.arange(24).reshape(2, 3, 4) - 12
    scales = np.linspace(1, 8, 4)  # broadcasts along the last axis
    data = coder_cls().encode(symbols, 0.5, scales)
    decoded = coder_cls().decode(data, np.full((2, 3, 1), 0.5), scales)
    assert decoded.shape == (2, 3, 4) and np.array_equal(decoded, symbols)
    empty = coder_cls().encode(np.zeros(0, np.int32), 0.0, np.ones(0))
    assert coder_cls().decode(empty, np.zeros(0), np.ones(0)).shape == (0,)


def test_golden_stream_decodes_with_this_version():
    symbols = np.array([0, 1, -2, 5, 300, -7])
    means = np.array([0.0, 0.5, -1.25, 2.0, 0.0, 0.0])
    scales = np.array([1.0, 0.3, 2.0, 10.0, 1.0, 0.11])
    golden = {  # stream format 2: the CRC covers the symbols' shape
        ReadableCoder: "e401060000000c00000003000000f496578d01a9e102"
        "3c715d4900000000009198",
        FastCoder: "e402060000000800000003000000b8cb0f01d8000000689ce327009198",
    }
    for coder_cls, hex_stream in golden.items():
        data = coder_cls().encode(symbols, means, scales)
        assert data.hex() == hex_stream
        assert np.array_equal(coder_cls().decode(data, means, scales), symbols)
        with pytest.raises(CodingError, match="checksum"):  # same size, other shape
            coder_cls().decode(data, means.reshape(2, 3), scales.reshape(2, 3))
    version_1 = bytes.fromhex("e10206000000080000000300000061ced0dbd8000000689ce327009198")
    with pytest.raises(CodingError, match="older dvae-tutorial"):
        FastCoder().decode(version_1, means, scales)


def test_latents_round_trip_to_y_hat_rounded_around_the_mean():
    gen = torch.Generator().manual_seed(0)
    y = 4 * torch.randn(2, 3, 5, 7, generator=gen)
    mean = torch.randn(2, 3, 5, 7, generator=gen)
    scale = torch.tensor([0.2, 1.0, 30.0]).view(1, 3, 1, 1)
    y[0, 0, 0, :3] = torch.tensor([1e5, -1e5, 0.0])  # escapes
    for coder in (ReadableCoder(), FastCoder()):
        data = encode_latents(y, mean, scale, coder=coder)
        y_hat = decode_latents(data, mean, scale, shape=y.shape, coder=coder)
        assert torch.equal(y_hat, quantize(y, mean))


# --- bad input and bad streams ---------------------------------------------------


def test_invalid_inputs_raise_coding_error():
    coder = FastCoder()
    for symbols, means, scales in [
        ([0.5, 1.0], 0.0, 1.0),  # not integers
        ([1, 2], [np.nan, 0.0], 1.0),  # NaN mean
        ([1, 2], 0.0, [1.0, np.inf]),  # infinite scale
        ([2**40], 0.0, 1.0),  # beyond int32
        ([1, 2, 3], [0.0, 1.0], 1.0),  # shapes do not broadcast
    ]:
        with pytest.raises(CodingError):
            coder.encode(symbols, means, scales)
    with pytest.raises(CodingError, match="bytes"):
        coder.decode("not bytes", np.zeros(1), np.ones(1))


def test_a_stream_from_the_other_coder_or_for_other_shapes_is_refused():
    symbols, means, scales = _problem(50)
    data = ReadableCoder().encode(symbols, means, scales)
    with pytest.raises(CodingError, match="coder"):
        FastCoder().decode(data, means, scales)
    with pytest.raises(CodingError, match="symbols"):
        ReadableCoder().decode(data, means[:-1], scales[:-1])


@pytest.mark.parametrize("coder_cls", CODERS)
def test_decoding_with_other_scales_raises_not_returns_garbage(coder_cls):
    symbols, means, scales = _problem(1000, seed=5)
    data = coder_cls().encode(symbols, means, scales)
    # A relative change of 1e-9 snaps to the same table entry: still exact.
    same = coder_cls().decode(data, means, scales * (1 + 1e-9))
    assert np.array_equal(same, symbols)
    # Scales straddling a boundary between two entries snap to different
    # entries: the decoder desynchronizes and the checksum catches it.
    i = scale_index(scales)
    border = SCALE_MIN * (SCALE_MAX / SCALE_MIN) ** ((i + 0.5) / (SCALE_LEVELS - 1))
    below, above = border * (1 - 1e-9), border * (1 + 1e-9)
    assert (scale_index(below) != scale_index(above)).all()
    data = coder_cls().encode(symbols, means, below)
    with pytest.raises(CodingError):
        coder_cls().decode(data, means, above)
    with pytest.raises(CodingError):
        coder_cls().decode(data, means + 0.1, below)


def _corruptions(data: bytes, rng: np.random.Generator, count: int):
    """Truncations, single bit flips, random bytes and header-valid noise."""
    for t in range(count):
        kind = t % 5
        if kind == 0:
            yield data[: rng.integers(0, len(data))]
        elif kind == 1:
            flipped = bytearray(data)
            bit = int(rng.integers(0, 8 * len(data)))
            flipped[bit // 8] ^= 1 << (bit % 8)
            yield bytes(flipped)
        elif kind == 2:
            yield rng.bytes(int(rng.integers(0, 2 * len(data))))
        elif kind == 3:  # correct header, random payload of the same length
            yield data[:18] + rng.bytes(len(data) - 18)
        else:
            yield b"" if t % 10 == 4 else data + rng.bytes(int(rng.integers(1, 9)))


@pytest.mark.parametrize("coder_cls", CODERS)
def test_corrupt_streams_raise_coding_error_never_garbage(coder_cls):
    """600 corrupted streams per coder (1200 in all); every one must raise."""
    rng = np.random.default_rng(coder_cls.coder_id)
    coder = coder_cls()  # one instance: its tables are built once
    tried = 0
    for seed in range(4):
        symbols, means, scales = _problem(40, seed=seed)
        symbols[:2] = [5000, -123456]  # streams with an escape section
        data = coder.encode(symbols, means, scales)
        for bad in _corruptions(data, rng, 150):
            assert bad != data
            with pytest.raises(CodingError):
                coder.decode(bad, means, scales)
            tried += 1
    assert tried == 600


@pytest.mark.parametrize("chunk", [7, 64, 2**20])
def test_layered_stream_round_trips_in_runs_of_any_length(monkeypatch, chunk):
    """Layers coded in runs of LAYER_CHUNK symbols (bounded memory on large
    photos) decode exactly, escapes included, whatever the run length; a run
    as long as the layer is the format of every Kodak file."""
    from dvae_tutorial import entropy_coding

    monkeypatch.setattr(entropy_coding, "LAYER_CHUNK", chunk)
    gen = torch.Generator().manual_seed(chunk)
    layers = []
    for shape in [(1, 3, 4, 5), (1, 6, 9, 11)]:
        mean = torch.randn(shape, generator=gen, dtype=torch.float64)
        scale = 0.11 + 3 * torch.rand(shape, generator=gen, dtype=torch.float64)
        y = mean + scale * torch.randn(shape, generator=gen, dtype=torch.float64)
        y.view(-1)[::37] += 500  # far tails: escapes
        layers.append((y, mean, scale))
    encoder = entropy_coding.LayeredEncoder()
    for y, mean, scale in layers:
        encoder.encode(y, mean, scale)
    data = encoder.finish()
    decoder = entropy_coding.LayeredDecoder(data, sum(y.numel() for y, _, _ in layers))
    for y, mean, scale in layers:
        assert torch.equal(decoder.decode(mean, scale, tuple(y.shape)), quantize(y, mean))
    decoder.finish()
    if chunk >= 6 * 9 * 11:
        return  # one run per layer: no other run length to compare
    monkeypatch.setattr(entropy_coding, "LAYER_CHUNK", chunk + 1)  # another run length
    decoder = entropy_coding.LayeredDecoder(data, sum(y.numel() for y, _, _ in layers))
    with pytest.raises(CodingError):
        for y, mean, scale in layers:
            decoder.decode(mean, scale, tuple(y.shape))
        decoder.finish()


@pytest.mark.parametrize("chunk", [5, 50, 2**20])
def test_fast_coder_runs_round_trip_and_one_run_is_the_whole_stream(monkeypatch, chunk):
    """FastCoder codes streams over LAYER_CHUNK symbols in runs (bounded
    memory on large photos): exact round trip with escapes and broadcast
    parameters; a stream within one run is byte for byte the unchunked one."""
    from dvae_tutorial import entropy_coding

    rng = np.random.default_rng(chunk)
    shape = (1, 4, 6, 5)
    scales = 0.11 + 5 * rng.random((1, 4, 1, 1))
    symbols = np.rint(rng.normal(0, 3, shape)).astype(np.int64)
    symbols.flat[::17] = 4000  # escapes
    whole = FastCoder().encode(symbols, 0.0, scales)
    monkeypatch.setattr(entropy_coding, "LAYER_CHUNK", chunk)
    data = FastCoder().encode(symbols, 0.0, scales)
    assert (data == whole) == (chunk >= symbols.size)
    assert np.array_equal(FastCoder().decode(data, np.zeros(shape), scales), symbols)
    with pytest.raises(CodingError):
        FastCoder().decode(data[:-1], np.zeros(shape), scales)
