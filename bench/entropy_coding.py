"""Acceptance bench for the entropy coders (issue 3): size and speed.

Draws symbols from per-symbol discretized Gaussians (means uniform in
[-3, 3], scales log-uniform in [0.11, 20]), codes them with
:class:`~dvae_tutorial.entropy_coding.FastCoder` (constriction) and
:class:`~dvae_tutorial.entropy_coding.ReadableCoder` (plain-Python rANS) and
prints ONE JSON list on stdout, one object per coder:

- ``ideal_bits``: :math:`-\\sum \\log_2 \\hat p(k)` with the exact, unsnapped
  parameters (so scale-table and mean-grid snapping count as overhead);
- ``written_bits``: 8 × the whole stream, header and checksum included;
- ``encode_msym_s`` / ``decode_msym_s``: million symbols per second, wall
  clock, single-threaded, best of ``--repeats`` (3), tables built inside the
  timed call (a fresh coder each time);
- ``exact``: the decoded symbols equal the encoded ones.

Targets: FastCoder overhead <= 0.1 % and decode >= 2 Msym/s; ReadableCoder
overhead <= 0.5 % and exact. ``--readable-symbols N`` times the slow coder
on the first N symbols only (default: all of them).

Usage: ``python bench/entropy_coding.py [--symbols N] [--readable-symbols N]``
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from dvae_tutorial.entropy_coding import FastCoder, ReadableCoder, information_content

#: The issue's workload.
MEAN_RANGE = (-3.0, 3.0)
SCALE_RANGE = (0.11, 20.0)


def sample(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` (symbols, means, scales); ``round(mean + scale * noise)`` has pmf
    ``F(k + 1/2) - F(k - 1/2)``, the discretized Gaussian."""
    rng = np.random.default_rng(seed)
    means = rng.uniform(*MEAN_RANGE, n)
    scales = np.exp(rng.uniform(*np.log(SCALE_RANGE), n))
    symbols = np.rint(means + scales * rng.standard_normal(n)).astype(np.int64)
    return symbols, means, scales


def measure(coder_cls, symbols, means, scales, repeats: int) -> dict:
    """Encode and decode with fresh coders, best time of ``repeats``."""
    encode_s = decode_s = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        data = coder_cls().encode(symbols, means, scales)
        encoded = time.perf_counter()
        decoded = coder_cls().decode(data, means, scales)
        done = time.perf_counter()
        encode_s, decode_s = (
            min(encode_s, encoded - start),
            min(decode_s, done - encoded),
        )
    ideal = information_content(symbols, means, scales)
    written = 8 * len(data)
    return {
        "coder": coder_cls.__name__,
        "symbols": int(symbols.size),
        "ideal_bits": round(ideal, 1),
        "written_bits": written,
        "overhead_pct": round(100.0 * (written - ideal) / ideal, 4),
        "encode_msym_s": round(symbols.size / encode_s / 1e6, 3),
        "decode_msym_s": round(symbols.size / decode_s / 1e6, 3),
        "exact": bool(np.array_equal(decoded, symbols)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--symbols", type=int, default=1_000_000)
    parser.add_argument("--readable-symbols", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="best time of")
    args = parser.parse_args()
    # Single-threaded, like the coders themselves: torch's thread pool only
    # adds noise to the table building on a shared machine.
    torch.set_num_threads(1)
    symbols, means, scales = sample(args.symbols, args.seed)
    n_readable = min(args.readable_symbols or args.symbols, args.symbols)
    results = [
        measure(FastCoder, symbols, means, scales, args.repeats),
        measure(
            ReadableCoder,
            symbols[:n_readable],
            means[:n_readable],
            scales[:n_readable],
            args.repeats,
        ),
    ]
    print(json.dumps(results))


if __name__ == "__main__":
    main()
