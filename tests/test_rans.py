"""The readable rANS core: exact round trips, near-ideal size, strict decoding."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dvae_tutorial import rans
from dvae_tutorial.entropy_coding import quantized_cdf
from dvae_tutorial.errors import CodingError


def _random_problem(n: int, alphabet: int, precision: int, seed: int = 0):
    """``n`` symbols, each with its own random pmf, drawn from that pmf."""
    rng = np.random.default_rng(seed)
    pmfs = rng.dirichlet(np.full(alphabet, 0.3), size=n)
    cdfs = [quantized_cdf(p, precision).tolist() for p in pmfs]
    symbols = [int(rng.choice(alphabet, p=p)) for p in pmfs]
    return symbols, cdfs


def _ideal_bits(symbols, cdfs, precision) -> float:
    return sum(
        precision - math.log2(cdf[s + 1] - cdf[s])
        for s, cdf in zip(symbols, cdfs, strict=True)
    )


@pytest.mark.parametrize("precision", [8, 16, 24, 32])
def test_round_trip_and_size_within_64_bits_of_the_information_content(precision):
    symbols, cdfs = _random_problem(2000, 7, precision, seed=precision)
    words = rans.encode(symbols, cdfs, precision)
    assert all(0 <= w < 2**32 for w in words)
    assert rans.decode(words, cdfs, precision) == symbols
    ideal = _ideal_bits(symbols, cdfs, precision)
    # The final 64-bit state is the only overhead, plus < 1 word of slack.
    assert ideal <= 32 * len(words) <= ideal + 64 + 32 + 1e-3 * ideal


def test_one_shared_table_and_an_empty_message():
    cdf = [0, 1, 3, 1 << 16]  # symbol 0 has the smallest non-zero frequency
    symbols = [0, 2, 2, 1, 0, 2]
    words = rans.encode(symbols, [cdf] * 6, 16)
    assert rans.decode(words, [cdf] * 6, 16) == symbols
    assert rans.encode([], [], 16) == [1, 0]  # just the initial state 2**32
    assert rans.decode([1, 0], [], 16) == []


def test_a_symbol_of_frequency_zero_or_outside_the_table_is_refused():
    cdf = [0, 0, 1 << 8]  # symbol 0 has frequency 0: cannot be coded
    with pytest.raises(CodingError, match="frequency 0"):
        rans.encode([0], [cdf], 8)
    with pytest.raises(CodingError, match="outside"):
        rans.encode([2], [cdf], 8)
    with pytest.raises(CodingError, match="precision"):
        rans.encode([1], [cdf], 33)


def test_truncated_extended_and_wrong_streams_raise():
    symbols, cdfs = _random_problem(300, 5, 16, seed=1)
    words = rans.encode(symbols, cdfs, 16)
    for bad in ([], words[:1], words[:-1], words[:10], words + [0], words + words):
        with pytest.raises(CodingError):
            rans.decode(bad, cdfs, 16)
    # Decoding with other tables desynchronizes; the final-state check sees it.
    _, other = _random_problem(300, 5, 16, seed=2)
    with pytest.raises(CodingError):
        rans.decode(words, other, 16)
