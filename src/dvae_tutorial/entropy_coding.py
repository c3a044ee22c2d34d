"""Entropy coding of integer symbols under per-symbol discretized Gaussians.

Backs the chapter *Discretized priors and entropy coding*. Follows Ballé et
al. (2018) (scale tables, discretized Gaussian priors), Duda (2013) (ANS)
and Bamler (2022) (``constriction``, the production range coder).

Two coders share one interface and one stream format:
:class:`ReadableCoder` (the plain-Python rANS of :mod:`dvae_tutorial.rans`
on cdf tables built here) and :class:`FastCoder` (``constriction``'s range
coder with its ``QuantizedGaussian`` model). ``encode(symbols, means,
scales)`` codes integer ``symbols`` under
``p(k) = F(k + 1/2) - F(k - 1/2)``, ``F`` the cdf of N(means, scales²).

Encoder and decoder must use *bit-identical* model parameters, or the
decoder silently drifts into garbage. So both sides reduce each parameter to
a small integer the same way (decisions made once, here):

- ``scales`` snap to :data:`SCALE_TABLE` by the nearest index in log-scale;
- ``means`` split into an integer centre ``round(mean)`` and an offset on a
  grid of ``1/MEAN_STEPS``; the coder sees ``symbol - centre`` under a
  Gaussian with that offset. Latents rounded around the prior mean
  (:func:`encode_latents`) have offset 0 and the mean never reaches the coder;
- symbols beyond ``B = ceil(TAIL_SIGMAS * scale)`` from the centre are coded
  as an escape symbol (``±(B + 1)``) plus their excess in Elias-gamma code,
  after the payload: any int32 value codes;
- an 18-byte header (magic/version, coder id, symbol count, payload and
  escape lengths, CRC32 of payload, escapes and symbols) makes a truncated,
  corrupt, foreign or mis-parameterized stream raise
  :class:`~dvae_tutorial.errors.CodingError`, never return garbage. Every
  loop is bounded by the symbol count: decoding cannot hang.
"""

from __future__ import annotations

import math
import struct
import zlib
from typing import Protocol

import constriction
import numpy as np
import torch
from numpy.typing import ArrayLike
from torch import Tensor

from . import rans
from .bitstream import read_varint, varint
from .distributions import SCALE_LOWER_BOUND, discretized_gaussian_bits
from .distributions import discretized_gaussian_log_mass as _log_mass
from .errors import CodingError
from .quantization import SYMBOL_LIMIT, from_symbols, to_symbols

#: Total of every quantized cdf is 2**CDF_PRECISION; 24 bits is what
#: constriction's Python models use (32-bit words, 64-bit state), so both
#: coders quantize probabilities equally finely (smallest probability 6e-8).
CDF_PRECISION = 24
#: Scale table: SCALE_LEVELS values spaced evenly in log between SCALE_MIN
#: (= the priors' lower bound 0.11) and SCALE_MAX (256, as in CompressAI).
SCALE_MIN = SCALE_LOWER_BOUND
SCALE_MAX = 256.0
#: 256 levels (one byte per index): neighbours differ by 3.1 %, so snapping to
#: the nearest costs (ln ratio)^2 / 12 ~ 8e-5 nats ~ 1e-4 bits per symbol.
SCALE_LEVELS = 256
#: Table entries are rounded to multiples of 2**-16, so they are exact binary
#: fractions: identical on every platform whatever its exp() rounding.
SCALE_RESOLUTION = 2.0**-16
#: Mean offsets are snapped to a 1/64 grid: the error (< 1/128) costs at most
#: ~1e-4 bits per symbol on average for scales >= 0.11 (Fisher information
#: <= 1/scale^2), and every grid value is exact in binary.
MEAN_STEPS = 64
#: Tables cover centre ± ceil(8 * scale); beyond, an escape. The Gaussian mass
#: out there, 2 Q(8) = 1e-15, is far below the smallest 24-bit probability
#: (CompressAI's default tail mass 1e-9 cuts at 6.1 scales; 8 leaves room
#: for mildly heavy-tailed real latents).
TAIL_SIGMAS = 8.0
#: Symbols and means must fit in int32, the symbol type of ``to_symbols``.
MAX_ABS_VALUE = SYMBOL_LIMIT - 1

_LOG_STEP = math.log(SCALE_MAX / SCALE_MIN) / (SCALE_LEVELS - 1)
SCALE_TABLE = (
    np.round(SCALE_MIN * np.exp(_LOG_STEP * np.arange(SCALE_LEVELS)) / SCALE_RESOLUTION)
    * SCALE_RESOLUTION
)
SCALE_TABLE.setflags(write=False)
#: Half-width B of each scale's table: symbols -B..B, escapes at ±(B + 1).
TAIL_BOUNDS = np.ceil(TAIL_SIGMAS * SCALE_TABLE).astype(np.int64)
TAIL_BOUNDS.setflags(write=False)

_MAGIC = 0xE4  # "E"ntropy-coded stream, format version 2 (CRC covers the shape)
#: Version 1 (0xE1): its CRC did not cover the symbols' shape, so a header
#: that reshaped a per-channel prior's latent (same count) decoded silently.
_MAGIC_V1 = 0xE1
#: Header, little-endian: magic, coder id, symbol count, payload bytes,
#: escape bytes, CRC32 of (payload, escapes, symbols).
_HEADER = struct.Struct("<BBIIII")
_ESCAPE_MAX_BITS = (2 * MAX_ABS_VALUE + 2).bit_length()
#: A layered stream's header: one byte that names the kind and its version (the
#: coder is the range coder), then two varints and a CRC-32.
_LAYERED_MAGIC = 0xE3
#: A layered stream codes each layer in runs of this many symbols (in the
#: latent's memory order), each run grouped by scale index: the coder's
#: temporary arrays stay ~100 MB on a 48-megapixel photo instead of growing
#: with it. A Kodak image's largest layer (295k symbols) is one run.
LAYER_CHUNK = 2**20
_LAYERED_HEAD, _CRC = struct.Struct("<B"), struct.Struct("<I")


def scale_index(scales: ArrayLike) -> np.ndarray:
    """Index of the nearest :data:`SCALE_TABLE` entry (in log-scale).

    .. math:: i = \\operatorname{clip}\\Big(\\operatorname{round}
       \\frac{\\ln\\sigma - \\ln\\sigma_{\\min}}{\\Delta}, 0, L-1\\Big)

    Encoder and decoder call this on the same floats, so they get the same
    integers even if the table's floats were computed differently.

    Args:
        scales: any shape; below :data:`SCALE_MIN` (or <= 0) maps to 0,
            above :data:`SCALE_MAX` to ``SCALE_LEVELS - 1``.

    Returns:
        int64 array of the same shape.

    See: *Discretized priors and entropy coding* (why the coder snaps).
    """
    s = np.maximum(np.asarray(scales, dtype=np.float64), SCALE_MIN)
    i = np.rint((np.log(s) - math.log(SCALE_MIN)) / _LOG_STEP)
    return np.clip(i, 0, SCALE_LEVELS - 1).astype(np.int64)


def split_means(means: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Split means into an integer centre and an offset on a 1/64 grid.

    .. math:: \\mu \\approx c + j / M, \\quad c \\in \\mathbb Z,\\;
       j \\in [-M/2, M/2), \\; M = \\texttt{MEAN\\_STEPS}

    A symbol ``k`` is coded as ``k - c`` under a Gaussian with mean ``j / M``
    (the pmf is shift-invariant on the integers).

    Args:
        means: any shape, finite.

    Returns:
        ``(centre, offset)``: int64 arrays of the same shape, with
        ``|centre + offset / M - mean| <= 1 / (2 M)``.

    See: *Discretized priors and entropy coding*.
    """
    q = np.rint(np.asarray(means, dtype=np.float64) * MEAN_STEPS).astype(np.int64)
    centre = (q + MEAN_STEPS // 2) // MEAN_STEPS
    return centre, q - centre * MEAN_STEPS


def quantized_cdf(pmf: ArrayLike, precision: int = CDF_PRECISION) -> np.ndarray:
    """Integer cdf of a pmf: every frequency >= 1, total exactly ``2**precision``.

    Each symbol first gets 1 (the "leak": a symbol with frequency 0 could not
    be coded at all), the remaining ``2**P - n`` are shared in proportion to
    ``pmf`` rounding down, and the last few units go to the largest
    remainders (largest-remainder rounding).

    Args:
        pmf: ``(..., n)``, non-negative, each row with a positive sum
            (normalized here), ``n <= 2**P``; rows are independent pmfs.
        precision: ``P``.

    Returns:
        int64 array ``cdf`` of shape ``(..., n + 1)``, ``cdf[..., 0] = 0``,
        ``cdf[..., -1] = 2**P``, strictly increasing along the last axis.

    See: *Discretized priors and entropy coding* (From probabilities to bits).
    """
    p = np.asarray(pmf, dtype=np.float64)
    total, n = 1 << precision, p.shape[-1] if p.ndim else 0
    if n == 0 or n > total or not (p >= 0).all() or not (p.sum(-1) > 0).all():
        raise CodingError(
            f"cannot quantize pmfs of shape {p.shape} to {precision} bits"
        )
    scaled = p / p.sum(-1, keepdims=True) * (total - n)
    freq = np.floor(scaled).astype(np.int64) + 1
    short = total - freq.sum(-1, keepdims=True)  # 0 <= short < n per row
    order = np.argsort(np.floor(scaled) - scaled, axis=-1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.broadcast_to(np.arange(n), order.shape), axis=-1)
    freq += rank < short  # one more unit for the largest remainders
    cdf = np.zeros(p.shape[:-1] + (n + 1,), dtype=np.int64)
    np.cumsum(freq, axis=-1, out=cdf[..., 1:])
    return cdf


def gaussian_cdfs(scale_idx: int) -> np.ndarray:
    """Quantized cdfs of one scale, for every mean offset: escape, ``-B..B``, escape.

    Row ``j + MEAN_STEPS // 2`` is the discretized Gaussian with scale
    ``SCALE_TABLE[scale_idx]`` and mean ``j / MEAN_STEPS`` on ``-B..B``
    (``B = TAIL_BOUNDS[scale_idx]``); the mass beyond each end goes to its
    escape symbol. Column ``s + B + 1`` holds symbol ``s``.

    Returns:
        int64 array of shape ``(MEAN_STEPS, 2 * B + 4)`` (see
        :func:`quantized_cdf`).

    See: *Discretized priors and entropy coding*.
    """
    b = int(TAIL_BOUNDS[scale_idx])
    sigma = torch.tensor(SCALE_TABLE[scale_idx], dtype=torch.float64)
    offsets = torch.arange(-(MEAN_STEPS // 2), MEAN_STEPS // 2, dtype=torch.float64)
    mu = (offsets / MEAN_STEPS)[:, None]
    k = torch.arange(-b, b + 1, dtype=torch.float64)
    inner = _log_mass(k, mu, sigma).exp()
    low = torch.special.ndtr((-b - 0.5 - mu) / sigma)
    high = torch.special.ndtr((mu - b - 0.5) / sigma)
    return quantized_cdf(torch.cat([low, inner, high], dim=1).numpy())


def information_content(
    symbols: ArrayLike, means: ArrayLike, scales: ArrayLike
) -> float:
    """Ideal code length :math:`-\\sum_n \\log_2 \\hat p(k_n)` in bits (float64).

    Uses the exact, unsnapped parameters: the yardstick real streams are
    measured against.

    Args:
        symbols: integers, any shape; means, scales: broadcastable to it.

    Returns:
        The total in bits, a float.

    See: *Discretized priors and entropy coding*.
    """
    k, m, s = (
        torch.as_tensor(np.asarray(a, dtype=np.float64))
        for a in (symbols, means, scales)
    )
    return float(discretized_gaussian_bits(k, m, s).sum())


class EntropyCoder(Protocol):
    """What both coders offer: integer symbols ⇄ bytes under given parameters."""

    def encode(
        self, symbols: ArrayLike, means: ArrayLike, scales: ArrayLike
    ) -> bytes: ...

    def decode(
        self, data: bytes, means: ArrayLike, scales: ArrayLike
    ) -> np.ndarray: ...


class _FramedCoder:
    """The shared part: validation, parameter snapping, escapes and framing.

    Subclasses set ``coder_id`` and code the in-table part (``coded``: symbols
    relative to the centre, clipped to ``±(B + 1)``) in ``_encode_core`` /
    ``_decode_core``.
    """

    coder_id = 0
    #: Whether streams over :data:`LAYER_CHUNK` symbols are coded in runs.
    runs = False

    def encode(self, symbols: ArrayLike, means: ArrayLike, scales: ArrayLike) -> bytes:
        """Code integer ``symbols`` under the discretized N(means, scales²).

        Args:
            symbols: integers within ±``MAX_ABS_VALUE``, any shape.
            means, scales: finite, broadcastable to ``symbols``.

        Returns:
            The stream: header, payload, escape section.

        Raises:
            CodingError: non-integer or out-of-range symbols, non-finite or
                non-broadcastable parameters.
        """
        sym = _integers(symbols)
        shape = sym.shape
        if self.runs and sym.size > LAYER_CHUNK:
            sym = sym.ravel()
            payload, excess = self._encode_runs(sym, *_flat_parameters(means, scales,
                                                                       shape))
        else:
            centre, si, oi = _parameters(means, scales, shape)
            sym = sym.ravel()
            coded, excess = _clip_escapes(sym - centre, si)
            payload = self._encode_core(coded, si, oi)
        escapes = rans.gamma_encode(excess)
        crc = _checksum(payload + escapes, sym, shape)
        header = _HEADER.pack(
            _MAGIC, self.coder_id, sym.size, len(payload), len(escapes), crc
        )
        return header + payload + escapes

    def decode(self, data: bytes, means: ArrayLike, scales: ArrayLike) -> np.ndarray:
        """Decode the symbols of a stream written by :meth:`encode`.

        Args:
            data: the stream (bytes).
            means, scales: the encoder's parameters; their broadcast shape is
                the symbols' shape.

        Returns:
            int64 array of symbols, the broadcast shape of ``means``/``scales``.

        Raises:
            CodingError: ``data`` is not exactly a stream this coder wrote for
                these parameters (empty, truncated, extended, corrupt, foreign,
                other parameters).
        """
        shape = np.broadcast_shapes(np.shape(means), np.shape(scales))
        count = math.prod(shape)
        payload, escapes, crc = _split_stream(data, self.coder_id, count)
        reader = rans.GammaReader(escapes)
        if self.runs and count > LAYER_CHUNK:
            sym = self._decode_runs(payload, reader,
                                    *_flat_parameters(means, scales, shape))
        else:
            centre, si, oi = _parameters(means, scales, shape)
            coded = self._decode_core(payload, si, oi)
            sym = _restore_escapes(coded, si, reader) + centre
        reader.finish()
        if _checksum(payload + escapes, sym, shape) != crc:
            raise CodingError(
                "decoded symbols fail the checksum: the stream is corrupt or was "
                "decoded with other means/scales than it was encoded with"
            )
        return sym.reshape(shape)

    def _encode_core(self, coded: np.ndarray, si: np.ndarray, oi: np.ndarray) -> bytes:
        raise NotImplementedError

    def _decode_core(
        self, payload: bytes, si: np.ndarray, oi: np.ndarray
    ) -> np.ndarray:
        raise NotImplementedError


class ReadableCoder(_FramedCoder):
    """The plain-Python rANS of :mod:`dvae_tutorial.rans` on :func:`gaussian_cdfs`.

    Tables are built once per scale index met (one row per mean offset). The
    per-symbol loop is Python: about 1 M symbols/s, exact, for reading. Its
    tables are floating-point results computed at both ends, identical on the
    same software stack; a platform whose math differs in the last bit is
    caught by the stream's checksum.

    See: *Discretized priors and entropy coding* (From probabilities to bits).
    """

    coder_id = 1

    def __init__(self) -> None:
        self._tables: dict[int, np.ndarray] = {}  # scale index -> gaussian_cdfs

    def _cdfs(self, si: np.ndarray, oi: np.ndarray) -> list[list[int]]:
        """One cdf (a list of ints) per symbol; equal parameters share one."""
        keys, inverse = np.unique(si * MEAN_STEPS + oi, return_inverse=True)
        tables = []
        for key in keys.tolist():
            i, j = divmod(key + MEAN_STEPS // 2, MEAN_STEPS)
            if i not in self._tables:
                self._tables[i] = gaussian_cdfs(i)
            tables.append(self._tables[i][j].tolist())
        return [tables[u] for u in inverse.ravel().tolist()]

    def _encode_core(self, coded, si, oi):
        index = (coded + TAIL_BOUNDS[si] + 1).tolist()  # table index of each symbol
        words = rans.encode(index, self._cdfs(si, oi), CDF_PRECISION)
        return np.asarray(words, dtype="<u4").tobytes()

    def _decode_core(self, payload, si, oi):
        if len(payload) % 4:
            raise CodingError("rANS payload is not a whole number of 32-bit words")
        words = np.frombuffer(payload, dtype="<u4").tolist()
        index = np.asarray(rans.decode(words, self._cdfs(si, oi), CDF_PRECISION))
        return index.astype(np.int64) - TAIL_BOUNDS[si] - 1


class FastCoder(_FramedCoder):
    """``constriction``'s range coder with ``QuantizedGaussian`` models.

    Symbols are coded grouped by scale index (one vectorized call per table
    entry, whose support ``-B-1..B+1`` depends on the scale); the decoder
    forms the same groups from the same scales. See: *Discretized priors and
    entropy coding* (the production coder).
    """

    coder_id = 2

    @staticmethod
    def _groups(si: np.ndarray):
        """Order that sorts symbols by scale index, and one (slice of that
        order, model, stds) per index met. A stable sort of uint8 keys is a
        radix sort in NumPy: O(n)."""
        order = np.argsort(si.astype(np.uint8), kind="stable")
        ends = np.cumsum(np.bincount(si, minlength=SCALE_LEVELS))
        groups = []
        for level in np.flatnonzero(np.diff(ends, prepend=0)).tolist():
            b = int(TAIL_BOUNDS[level])
            model = constriction.stream.model.QuantizedGaussian(-b - 1, b + 1)
            start, stop = int(ends[level - 1]) if level else 0, int(ends[level])
            groups.append((slice(start, stop), model, SCALE_TABLE[level]))
        return order, groups

    @classmethod
    def _encode_into(cls, encoder, coded, si, oi) -> None:
        """Append symbols ``coded`` (relative to their centres) to ``encoder``."""
        order, groups = cls._groups(si)
        coded, means = coded[order].astype(np.int32), oi[order] / MEAN_STEPS
        for part, model, std in groups:
            stds = np.full(part.stop - part.start, std)
            encoder.encode(coded[part], model, means[part], stds)

    @classmethod
    def _decode_from(cls, decoder, si, oi) -> np.ndarray:
        """The next ``si.size`` symbols of ``decoder``, inverse of
        :meth:`_encode_into`."""
        order, groups = cls._groups(si)
        means, decoded = oi[order] / MEAN_STEPS, np.empty(si.size, dtype=np.int64)
        try:
            for part, model, std in groups:
                stds = np.full(part.stop - part.start, std)
                decoded[part] = decoder.decode(model, means[part], stds)
        except Exception as err:  # constriction reports invalid data as it likes
            raise CodingError(f"range-coded payload is corrupt ({err})") from None
        coded = np.empty_like(decoded)
        coded[order] = decoded
        return coded

    #: Code more than :data:`LAYER_CHUNK` symbols in runs of that many (each
    #: run grouped by scale index): bounded memory on large photos; a
    #: stream of at most that many symbols (every Kodak latent) is one run.
    runs = True

    def _encode_runs(self, sym, means, scales) -> tuple[bytes, list[int]]:
        encoder, excess = constriction.stream.queue.RangeEncoder(), []
        for part in _chunks(sym.size):
            centre, si, oi = _parameters(means[part], scales[part],
                                         (part.stop - part.start,))
            coded, more = _clip_escapes(sym[part] - centre, si)
            self._encode_into(encoder, coded, si, oi)
            excess += more
        return encoder.get_compressed().astype("<u4").tobytes(), excess

    def _decode_runs(self, payload, reader, means, scales) -> np.ndarray:
        decoder, sym = _range_decoder(payload), np.empty(scales.size, np.int64)
        for part in _chunks(scales.size):
            centre, si, oi = _parameters(means[part], scales[part],
                                         (part.stop - part.start,))
            coded = self._decode_from(decoder, si, oi)
            sym[part] = _restore_escapes(coded, si, reader) + centre
        _check_exhausted(decoder)
        return sym

    def _encode_core(self, coded, si, oi):
        encoder = constriction.stream.queue.RangeEncoder()
        self._encode_into(encoder, coded, si, oi)
        return encoder.get_compressed().astype("<u4").tobytes()

    def _decode_core(self, payload, si, oi):
        decoder = _range_decoder(payload)
        coded = self._decode_from(decoder, si, oi)
        _check_exhausted(decoder)
        return coded


class LayeredEncoder:
    """Every latent layer of one image in a single range-coded stream.

    A hierarchical model codes ``L`` layers, each under a prior that depends on
    the layers before it. One :class:`FastCoder` stream per layer would pay
    its 18-byte header, the file's per-stream fields and the coder's final
    words ``L`` times — at 0.13 bpp on a Kodak image, 12 layers made the file
    6 % larger than ``−Σ log₂ P``. Here the layers share one range coder (a
    queue: the decoder reads them in the order they were written), one escape
    section and one header of 7–9 bytes (lengths as varints, no symbol
    count), whose CRC-32 covers every symbol. Call
    :meth:`encode` once per layer, in decoding order, then :meth:`finish`;
    :class:`LayeredDecoder` reads them back. ``layer_bits`` holds what each
    layer added to the payload (whole 32-bit words, as the coder counts).

    See: *Hierarchical VAEs* (bits per layer from real streams).
    """

    def __init__(self) -> None:
        self._encoder = constriction.stream.queue.RangeEncoder()
        self._symbols: list[np.ndarray] = []
        self._excess: list[int] = []
        self.layer_bits: list[int] = []

    def encode(self, y: Tensor, mean: Tensor | float, scale: Tensor | float) -> None:
        """Append one layer: symbols ``round(y - mean)`` under N(0, scale²), as
        :func:`encode_latents`."""
        sym, scales = _latent_symbols(y, mean, scale)
        sym, scales = sym.ravel(), scales.ravel()
        before = self._encoder.num_bits()
        for part in _chunks(sym.size):
            centre, si, oi = _parameters(0.0, scales[part], (part.stop - part.start,))
            coded, excess = _clip_escapes(sym[part] - centre, si)
            FastCoder._encode_into(self._encoder, coded, si, oi)
            self._excess += excess
        self.layer_bits.append(self._encoder.num_bits() - before)
        self._symbols.append(sym)

    def finish(self) -> bytes:
        """The stream: a compact header (one magic byte for the kind and
        version, payload and escape lengths as varints, CRC-32 — no symbol
        count, which the decoder knows from the layers' shapes), the payload,
        the escape section."""
        payload = self._encoder.get_compressed().astype("<u4").tobytes()
        escapes = rans.gamma_encode(self._excess)
        sym = np.concatenate(self._symbols) if self._symbols else np.zeros(0, np.int64)
        crc = _checksum(payload + escapes, sym)
        return (_LAYERED_HEAD.pack(_LAYERED_MAGIC) + varint(len(payload))
                + varint(len(escapes)) + _CRC.pack(crc) + payload + escapes)


class LayeredDecoder:
    """Reads a :class:`LayeredEncoder` stream back, one layer at a time.

    ``count`` is the total number of symbols the decoder expects (the sum of
    the layers' sizes, from their shapes; the header does not repeat it). :meth:`decode` may stop
    after any layer (progressive decoding); :meth:`finish`, after the last,
    checks that the payload and escapes are used up and the CRC-32 matches.
    Every problem raises :class:`~dvae_tutorial.errors.CodingError`.
    """

    def __init__(self, data: bytes, count: int) -> None:
        payload, escapes, self._crc = _split_layered(data)
        self._body = payload + escapes
        self._decoder = _range_decoder(payload)
        self._escapes = rans.GammaReader(escapes)
        self._symbols: list[np.ndarray] = []
        self._left = count

    def decode(self, mean: Tensor | float, scale: Tensor | float,
               shape: tuple[int, ...]) -> Tensor:
        """The next layer's ``y_hat = symbols + mean`` (as :func:`decode_latents`)."""
        mean, scale = torch.as_tensor(mean).detach(), torch.as_tensor(scale).detach()
        scales = torch.broadcast_to(scale.cpu().double(), tuple(shape)).numpy()
        count = math.prod(shape)
        if count > self._left:
            raise CodingError(f"the stream holds {self._left} more symbols, the next "
                              f"layer needs {count}")
        self._left -= count
        scales, sym = scales.reshape(-1), np.empty(count, np.int64)
        for part in _chunks(count):
            centre, si, oi = _parameters(0.0, scales[part], (part.stop - part.start,))
            coded = FastCoder._decode_from(self._decoder, si, oi)
            sym[part] = _restore_escapes(coded, si, self._escapes) + centre
        self._symbols.append(sym)
        return _latents_from(sym.reshape(shape), mean)

    def finish(self) -> None:
        """After the last layer: CodingError unless every symbol, payload word and
        escape was used and the checksum matches."""
        if self._left:
            raise CodingError(f"{self._left} symbols of the stream were not decoded")
        _check_exhausted(self._decoder)
        self._escapes.finish()
        if _checksum(self._body, np.concatenate(self._symbols)) != self._crc:
            raise CodingError(
                "decoded symbols fail the checksum: the stream is corrupt or was "
                "decoded with other means/scales than it was encoded with"
            )


def encode_latents(
    y: Tensor,
    mean: Tensor | float,
    scale: Tensor | float,
    coder: EntropyCoder | None = None,
) -> bytes:
    """Latents to bytes: symbols ``round(y - mean)`` coded under N(0, scale²).

    Rounding around the prior mean makes the symbol's pmf exactly the
    discretized N(0, scale²) (``P(round(y - mu) = k) = F(k + 1/2) - F(k - 1/2)``
    for ``y ~ N(mu, scale²)``), so the mean never enters the coder and cannot
    desynchronize it.

    Args:
        y: latents, any shape and device.
        mean, scale: prior parameters, broadcastable to ``y``.
        coder: :class:`FastCoder` (default) or :class:`ReadableCoder`.

    Returns:
        The stream (bytes).

    See: *Discretized priors and entropy coding*.
    """
    symbols, scales = _latent_symbols(y, mean, scale)
    return (coder or FastCoder()).encode(symbols, 0.0, scales)


def decode_latents(
    data: bytes,
    mean: Tensor | float,
    scale: Tensor | float,
    shape: tuple[int, ...] | None = None,
    coder: EntropyCoder | None = None,
) -> Tensor:
    """Bytes to ``y_hat = symbols + mean``, inverse of :func:`encode_latents`.

    Args:
        data: a stream from :func:`encode_latents`.
        mean, scale: the same prior parameters as the encoder's (the mean
            may differ slightly: it only shifts ``y_hat``).
        shape: the latent's shape (default: the broadcast shape of ``mean``
            and ``scale``).
        coder: the coder that wrote ``data``.

    Returns:
        ``y_hat`` on the device (and in the float dtype) of ``mean``.

    Raises:
        CodingError: the stream is corrupt, foreign, or for other parameters.
    """
    mean, scale = torch.as_tensor(mean).detach(), torch.as_tensor(scale).detach()
    if shape is None:
        shape = torch.broadcast_shapes(mean.shape, scale.shape)
    scales = torch.broadcast_to(scale.cpu().double(), tuple(shape)).numpy()
    symbols = (coder or FastCoder()).decode(data, np.zeros(tuple(shape)), scales)
    return _latents_from(symbols, mean)


def _integers(symbols: ArrayLike) -> np.ndarray:
    arr = np.asarray(symbols)
    if not np.issubdtype(arr.dtype, np.integer):
        arr = np.asarray(arr, dtype=np.float64)
        if not np.isfinite(arr).all() or (arr != np.rint(arr)).any():
            raise CodingError("symbols must be integers (use quantization.to_symbols)")
    if arr.size and max(-int(arr.min()), int(arr.max())) > MAX_ABS_VALUE:
        raise CodingError(f"symbols must lie within ±{MAX_ABS_VALUE} (int32)")
    return arr.astype(np.int64)


def _parameters(means: ArrayLike, scales: ArrayLike, shape: tuple[int, ...]):
    """Flattened (centre, scale index, offset index) for ``shape`` symbols."""
    try:
        m = np.broadcast_to(np.asarray(means, dtype=np.float64), shape).ravel()
        s = np.broadcast_to(np.asarray(scales, dtype=np.float64), shape).ravel()
    except ValueError as err:
        raise CodingError(f"means/scales do not broadcast to {shape}: {err}") from None
    if not (np.isfinite(m).all() and np.isfinite(s).all()):
        raise CodingError("means and scales must be finite (NaN or inf given)")
    if m.size and np.abs(m).max() > MAX_ABS_VALUE:
        raise CodingError(f"means must lie within ±{MAX_ABS_VALUE}")
    centre, offset = split_means(m)
    return centre, scale_index(s), offset


def _split_stream(data: bytes, coder_id: int, n: int) -> tuple[bytes, bytes, int]:
    """Check a stream's header against what the decoder expects.

    Returns (payload, escape section, CRC32); raises :class:`CodingError`.
    """
    data = _as_bytes(data)
    if len(data) < _HEADER.size:
        raise CodingError(
            f"stream of {len(data)} bytes is shorter than its "
            f"{_HEADER.size}-byte header (empty or truncated)"
        )
    magic, coder, count, n_payload, n_escapes, crc = _HEADER.unpack_from(data)
    for bad, why in [
        (magic == _MAGIC_V1, "stream format 1, written by an older dvae-tutorial "
                             "(this one reads format 2); decode it with that version"),
        (magic != _MAGIC, "not an entropy-coded stream of this package (bad magic)"),
        (coder != coder_id, f"stream was written by coder {coder}, not {coder_id}"),
        (count != n, f"stream holds {count} symbols, the parameters are for {n}"),
        (
            len(data) != _HEADER.size + n_payload + n_escapes,
            "stream length does not match its header (truncated or extended)",
        ),
    ]:
        if bad:
            raise CodingError(why)
    body = data[_HEADER.size :]
    return body[:n_payload], body[n_payload:], crc


def _split_layered(data: bytes) -> tuple[bytes, bytes, int]:
    """Check a :class:`LayeredEncoder` stream's header; (payload, escapes, CRC)."""
    data = _as_bytes(data)
    if len(data) < _LAYERED_HEAD.size:
        raise CodingError(f"stream of {len(data)} bytes is shorter than its header "
                          "(empty or truncated)")
    (magic,) = _LAYERED_HEAD.unpack_from(data)
    if magic == _MAGIC:
        raise CodingError("this is a stream of one layer, not one stream for all "
                          "layers (a file of another model?)")
    if magic != _LAYERED_MAGIC:
        raise CodingError("not an entropy-coded stream of this package (bad magic)")
    n_payload, pos = read_varint(data, _LAYERED_HEAD.size, "payload length")
    n_escapes, pos = read_varint(data, pos, "escape length")
    if len(data) < pos + _CRC.size:
        raise CodingError("stream is truncated inside its header")
    (crc,), pos = _CRC.unpack_from(data, pos), pos + _CRC.size
    if len(data) != pos + n_payload + n_escapes:
        raise CodingError("stream length does not match its header (truncated or "
                          "extended)")
    return data[pos:pos + n_payload], data[pos + n_payload:], crc


def _checksum(body: bytes, symbols: np.ndarray,
              shape: tuple[int, ...] | None = None) -> int:
    """CRC32 of the coded bytes, the symbols and (plain streams) their shape:
    catches any single-bit flip of the stream, a decode with other parameters
    (different symbols), and a decode into another shape of the same size (a
    per-channel prior decodes a reshaped latent without a desync)."""
    data = np.ascontiguousarray(symbols, dtype="<i8")  # no copy on little-endian
    crc = zlib.crc32(memoryview(data).cast("B"), zlib.crc32(body))
    if shape is not None:
        crc = zlib.crc32(b"".join(varint(int(d)) for d in shape), crc)
    return crc


def _flat_parameters(means: ArrayLike, scales: ArrayLike,
                     shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """``means`` and ``scales`` as flat float64 arrays of ``shape``'s size, for
    slicing run by run (a scalar stays a zero-stride view: no copy)."""
    m = np.broadcast_to(np.asarray(means, dtype=np.float64), shape).reshape(-1)
    s = np.broadcast_to(np.asarray(scales, dtype=np.float64), shape).reshape(-1)
    return m, s


def _chunks(count: int):
    """Slices of :data:`LAYER_CHUNK` symbols covering ``range(count)``."""
    return [slice(start, min(start + LAYER_CHUNK, count))
            for start in range(0, count, LAYER_CHUNK)]


def _clip_escapes(rel: np.ndarray, si: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Symbols relative to their centres → (what the table codes: clipped to
    the escapes ``±(B + 1)``, the excess ``|rel| - B`` of each escaped one)."""
    bound = TAIL_BOUNDS[si]
    escaped = np.abs(rel) > bound
    return np.clip(rel, -bound - 1, bound + 1), (np.abs(rel[escaped])
                                                 - bound[escaped]).tolist()


def _restore_escapes(coded: np.ndarray, si: np.ndarray,
                     reader: rans.GammaReader) -> np.ndarray:
    """Inverse of :func:`_clip_escapes`, reading the excess from ``reader``."""
    bound = TAIL_BOUNDS[si]
    escaped = np.abs(coded) > bound
    excess = np.array(reader.read(int(escaped.sum()), _ESCAPE_MAX_BITS), dtype=np.int64)
    rel = coded.astype(np.int64)
    rel[escaped] = np.sign(rel[escaped]) * (bound[escaped] + excess)
    return rel


def _range_decoder(payload: bytes):
    if len(payload) % 4:
        raise CodingError("range-coded payload is not a whole number of words")
    words = np.frombuffer(payload, dtype="<u4").astype(np.uint32)
    return constriction.stream.queue.RangeDecoder(words)


def _check_exhausted(decoder) -> None:
    if not decoder.maybe_exhausted():
        raise CodingError(
            "range-coded payload has data left after the last symbol: the "
            "stream is corrupt or was decoded with other means/scales"
        )


def _latent_symbols(y: Tensor, mean, scale) -> tuple[np.ndarray, np.ndarray]:
    """Latents → (int symbols ``round(y - mean)``, their scales as float64),
    NumPy arrays of ``y``'s shape: what a coder codes under N(0, scale²)."""
    mean, scale = torch.as_tensor(mean).detach(), torch.as_tensor(scale).detach()
    symbols = _integers(to_symbols(y.detach(), mean).cpu().numpy())
    return symbols, torch.broadcast_to(scale.cpu().double(), symbols.shape).numpy()


def _latents_from(symbols: np.ndarray, mean) -> Tensor:
    """Decoded symbols → ``y_hat = symbols + mean`` on ``mean``'s device."""
    mean = torch.as_tensor(mean).detach()
    return from_symbols(torch.from_numpy(symbols.astype(np.int32)).to(mean.device), mean)


def _as_bytes(data) -> bytes:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise CodingError(f"expected the stream as bytes, got {type(data).__name__}")
    return bytes(data)
