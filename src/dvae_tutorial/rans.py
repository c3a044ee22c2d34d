"""A small, readable rANS entropy coder (and an Elias-gamma code) in plain Python.

Backs the section *From probabilities to bits* of the chapter *Discretized
priors and entropy coding*. Follows Duda (2013) (asymmetric numeral systems)
and the presentation of Bamler (2022); the production coder of the package
is ``constriction``'s range coder (see :mod:`dvae_tutorial.entropy_coding`).

The whole coder is one integer, the *state* ``x``. Each symbol has an
integer frequency ``freq`` and a start ``start`` (its cdf) out of a total of
``2**precision``; encoding ``s`` maps

.. math:: x \\mapsto \\Big\\lfloor \\frac{x}{f_s} \\Big\\rfloor 2^{P}
   + (x \\bmod f_s) + c_s ,

which grows ``x`` by a factor ~``2**P / f_s``, i.e. by ``-log2 p(s)`` bits.
Decoding inverts it exactly: ``x mod 2**P`` falls in the interval
``[c_s, c_s + f_s)`` of the symbol that was encoded last. rANS is a *stack*
(last in, first out), so the encoder runs over the symbols backwards and
the decoder forwards. To keep ``x`` in 64 bits, the encoder moves its low 32
bits to the output whenever the next step would overflow, and the decoder
reads them back when ``x`` drops below ``2**32``.

Every symbol must have ``freq >= 1`` (a "leaky" cdf): a symbol of frequency
0 cannot be encoded at all. Pure Python integers, about a million symbols
per second on one core. Readability first; do not use it in production.

:func:`gamma_encode` is the Elias-gamma code, a prefix code for any integer
``v >= 1`` in ``2 floor(log2 v) + 1`` bits with no table at all; the streams
of :mod:`dvae_tutorial.entropy_coding` use it for the rare values beyond
their tables.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence

from .errors import CodingError

#: Bits moved to or from the stream at a time: a 32-bit word.
WORD_BITS = 32
_WORD_MASK = (1 << WORD_BITS) - 1
#: Lower end of the state interval ``[STATE_LOWER, STATE_LOWER << WORD_BITS)``:
#: with 32-bit words the state is a 64-bit integer (as in constriction's
#: default ANS coder), so any cdf precision up to 32 bits works.
STATE_LOWER = 1 << WORD_BITS
#: Largest cdf precision this coder accepts: ``STATE_LOWER`` must be a
#: multiple of ``2**precision`` for the renormalization to be exact.
MAX_PRECISION = WORD_BITS


def _check_precision(precision: int) -> None:
    if not 1 <= precision <= MAX_PRECISION:
        raise CodingError(
            f"cdf precision must be in 1..{MAX_PRECISION}, got {precision}"
        )


def encode(
    symbols: Sequence[int], cdfs: Sequence[Sequence[int]], precision: int
) -> list[int]:
    """Encode ``symbols[n]`` with the integer cdf ``cdfs[n]``; return 32-bit words.

    ``cdfs[n]`` is non-decreasing with ``cdf[0] = 0`` and ``cdf[-1] =
    2**precision``; symbol ``s`` owns ``[cdf[s], cdf[s + 1])`` and must have
    ``cdf[s + 1] > cdf[s]``. Many symbols may share one cdf object.

    Args:
        symbols: table indices, ``0 <= symbols[n] < len(cdfs[n]) - 1``.
        cdfs: one cdf per symbol (a list of ints each).
        precision: ``P``, the cdfs' total is ``2**P`` (``P <= 32``).

    Returns:
        The words (ints in ``[0, 2**32)``) in the order :func:`decode` reads
        them; their count times 32 is the size in bits, about
        :math:`-\\sum_n \\log_2 p_n(s_n)` + 64.

    Raises:
        CodingError: a symbol outside its table or with frequency 0.

    See: *Discretized priors and entropy coding* (From probabilities to bits).
    """
    _check_precision(precision)
    if len(symbols) != len(cdfs):
        raise CodingError(f"{len(symbols)} symbols but {len(cdfs)} cdfs")
    x = STATE_LOWER
    words = []
    # A state at or above this bound, times 2**P / freq, would leave 64 bits.
    bound_per_freq = (STATE_LOWER >> precision) << WORD_BITS
    for s, cdf in zip(reversed(symbols), reversed(cdfs), strict=True):
        if not 0 <= s < len(cdf) - 1:
            raise CodingError(f"symbol {s} is outside its table of {len(cdf) - 1}")
        start, freq = cdf[s], cdf[s + 1] - cdf[s]
        if freq <= 0:
            raise CodingError(f"symbol {s} has frequency 0 and cannot be coded")
        if x >= bound_per_freq * freq:  # renormalize: one word suffices
            words.append(x & _WORD_MASK)
            x >>= WORD_BITS
        x = ((x // freq) << precision) + (x % freq) + start
    words += [x & _WORD_MASK, x >> WORD_BITS]  # flush the final state
    return words[::-1]


def decode(
    words: Sequence[int], cdfs: Sequence[Sequence[int]], precision: int
) -> list[int]:
    """Decode ``len(cdfs)`` symbols written by :func:`encode` with the same cdfs.

    Args:
        words: the 32-bit words from :func:`encode`.
        cdfs: the same cdfs, in the same order, as the encoder used.
        precision: the same ``P``.

    Returns:
        The table indices, a list of ints.

    Raises:
        CodingError: when the words cannot have come from :func:`encode` with
            these cdfs: too few or too many words, or a final state other
            than the initial one (rANS's built-in integrity check; it catches
            most, not all, corruptions: add a checksum for certainty). The
            loop runs once per symbol and reads at most one word per step, so
            it always terminates.

    See: *Discretized priors and entropy coding* (From probabilities to bits).
    """
    _check_precision(precision)
    if len(words) < 2:
        raise CodingError(
            "rANS stream too short: it must hold at least the 64-bit state"
        )
    mask = (1 << precision) - 1
    x = (words[0] << WORD_BITS) | words[1]
    pos = 2
    symbols = []
    for cdf in cdfs:
        slot = x & mask
        s = bisect_right(cdf, slot) - 1  # cdf[s] <= slot < cdf[s + 1]
        start, freq = cdf[s], cdf[s + 1] - cdf[s]
        x = freq * (x >> precision) + slot - start
        if x < STATE_LOWER:  # renormalize: one word suffices
            if pos == len(words):
                raise CodingError("rANS stream truncated: ran out of words mid-stream")
            x = (x << WORD_BITS) | words[pos]
            pos += 1
        symbols.append(s)
    if pos != len(words) or x != STATE_LOWER:
        raise CodingError(
            "rANS stream corrupt: the final state or length does not match what "
            "the encoder wrote (wrong stream, or decoded with other parameters)"
        )
    return symbols


def gamma_encode(values: Sequence[int]) -> bytes:
    """Elias-gamma code of integers ``>= 1``, zero-padded to whole bytes.

    ``v`` is written as ``bit_length(v) - 1`` zeros followed by ``v`` in
    binary (which starts with a 1): ``1 -> 1``, ``2 -> 010``, ``5 -> 00101``.

    See: *Discretized priors and entropy coding* (escapes).
    """
    if any(v < 1 for v in values):
        raise CodingError("Elias-gamma codes integers >= 1 only")
    bits = "".join("0" * (v.bit_length() - 1) + format(v, "b") for v in values)
    bits += "0" * (-len(bits) % 8)
    return int(bits, 2).to_bytes(len(bits) // 8, "big") if bits else b""


def gamma_decode(data: bytes, count: int, max_bits: int = 64) -> list[int]:
    """Decode ``count`` values written by :func:`gamma_encode`.

    Args:
        data: bytes from :func:`gamma_encode`.
        count: how many values to read.
        max_bits: longest value accepted (a guard against garbage).

    Returns:
        The values, a list of ints >= 1.

    Raises:
        CodingError: fewer than ``count`` values, a value longer than
            ``max_bits`` bits, or anything but zero padding after the last.
            One loop step per value: it always terminates.

    See: *Discretized priors and entropy coding* (escapes).
    """
    reader = GammaReader(data)
    values = reader.read(count, max_bits)
    reader.finish()
    return values


class GammaReader:
    """Reads :func:`gamma_encode` data a few values at a time (the escapes of a
    layered stream, whose counts are known one layer at a time)."""

    def __init__(self, data: bytes) -> None:
        self.bits = format(int.from_bytes(data, "big"), f"0{8 * len(data)}b") \
            if data else ""
        self.pos = 0

    def read(self, count: int, max_bits: int = 64) -> list[int]:
        """The next ``count`` values; CodingError if they are not there."""
        values, bits, pos = [], self.bits, self.pos
        for _ in range(count):
            first_one = bits.find("1", pos)
            width = first_one - pos + 1  # the value's bit length
            if first_one < 0 or width > max_bits or first_one + width > len(bits):
                raise CodingError("Elias-gamma data is truncated or corrupt")
            values.append(int(bits[first_one : first_one + width], 2))
            pos = first_one + width
        self.pos = pos
        return values

    def finish(self) -> None:
        """CodingError unless only zero padding (< 1 byte) is left."""
        if len(self.bits) - self.pos >= 8 or "1" in self.bits[self.pos:]:
            raise CodingError("Elias-gamma data has trailing bits after the last value")
