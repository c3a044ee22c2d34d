"""The ``.dvae`` file format: a versioned header, then the entropy-coded streams.

Backs *A discretized VAE codec* (writing real files). Everything is packed
with :mod:`struct` in little-endian byte order (never pickle), so a file is
readable by any language and a reader can say exactly which field is wrong.

Layout (sizes in bytes; "var" is an unsigned LEB128 varint: 7 bits per
byte, low bits first, high bit set on all but the last byte — 1 byte below
128, 2 below 16384)::

    magic        4   b"DVAE"
    version      1   FORMAT_VERSION
    family       1   1 = single-layer VAE, 2 = hierarchical VAE, 3 = variable-rate
    name         1+n length, then the model's name in ASCII
    lmbda        4   float32, λ of the model (bpp + λ·MSE on [0, 1]); of the
                     file for a variable-rate model (the λ it was coded at)
    fingerprint  8   first bytes of the SHA-256 of the model's weights
    height       var image height in pixels
    width        var image width in pixels
    streams      1   uint8, number of latent streams S
    S times:
      ndim       1   uint8
      shape      var × ndim, the latent's shape
      length     var bytes of the stream
    header_crc   4   CRC-32 (little-endian) of every header byte before it
    S streams back to back (each carries its own CRC-32, see
    :mod:`dvae_tutorial.entropy_coding`)

A Kodak file's header is 45 bytes (a 768×512 image, one stream): at
0.15 bpp, 0.6 % of the file. Varints rather than fixed 32-bit fields save a
third of it, which matters at low rates.

The file's length must be exactly header + Σ lengths: truncated or extended
files are refused before any decoding. Every problem raises
:class:`~dvae_tutorial.errors.CodingError` naming the field.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from .errors import CodingError

#: First bytes of every file (also how ``dvae decompress`` recognises one).
MAGIC = b"DVAE"
#: Bumped whenever the layout or the meaning of a field changes.
FORMAT_VERSION = 1
#: Family codes stored in the header.
FAMILIES = {"single": 1, "hierarchical": 2, "variable-rate": 3}
#: Longest model name the header holds (one length byte).
MAX_NAME_BYTES = 255
#: Bytes of the weights' SHA-256 kept to recognise the model.
FINGERPRINT_BYTES = 8
#: Latent tensors have at most this many dimensions (batch, channels, H, W).
MAX_NDIM = 8

_U8, _U32, _F32 = struct.Struct("<B"), struct.Struct("<I"), struct.Struct("<f")
#: Varints of at most 5 bytes: every value below 2**32.
_VARINT_MAX_BYTES = 5
#: Longest possible header (255-byte name, 255 streams of 8 five-byte varints):
#: a reader reads this much, checks the header, and only then the streams.
MAX_HEADER_BYTES = (len(MAGIC) + 3 * _U8.size + MAX_NAME_BYTES + _F32.size
                    + FINGERPRINT_BYTES + 2 * _VARINT_MAX_BYTES + _U8.size
                    + 255 * (_U8.size + (MAX_NDIM + 1) * _VARINT_MAX_BYTES)
                    + _U32.size)


def read_varint(data: bytes, pos: int, field: str) -> tuple[int, int]:
    """The varint of :func:`varint` at ``data[pos:]`` and the position after it;
    CodingError naming ``field`` when it is truncated or invalid."""
    reader = _Reader(data)
    reader.pos = pos
    return reader.varint(field), reader.pos


def varint(value: int) -> bytes:
    """Unsigned LEB128 of ``0 <= value < 2**32``."""
    if not 0 <= value < 2**32:
        raise CodingError(f"a header field is out of range: {value}")
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


@dataclass(frozen=True)
class Header:
    """What a ``.dvae`` file says about itself (everything but the streams).

    Attributes:
        family: ``"single"``, ``"hierarchical"`` or ``"variable-rate"``.
        model: name of the shipped model that wrote the file.
        lmbda: its λ (bpp + λ·MSE on [0, 1]), stored as float32; for a
            variable-rate model the λ the file was coded at.
        fingerprint: :data:`FINGERPRINT_BYTES` bytes of its weights' SHA-256.
        height, width: the image's size in pixels.
        shapes: the shape of each stream's latent tensor.
        lengths: the byte length of each stream.
    """

    family: str
    model: str
    lmbda: float
    fingerprint: bytes
    height: int
    width: int
    shapes: tuple[tuple[int, ...], ...]
    lengths: tuple[int, ...]


def pack(header: Header, streams: list[bytes]) -> bytes:
    """Header and streams → the bytes of a ``.dvae`` file.

    ``header.lengths`` is ignored and recomputed from ``streams``.

    Raises:
        CodingError: a field does not fit the format (names it).
    """
    if header.family not in FAMILIES:
        raise CodingError(f"unknown model family {header.family!r}")
    name = header.model.encode("ascii", errors="replace")
    if not 0 < len(name) <= MAX_NAME_BYTES:
        raise CodingError(f"model name must have 1–{MAX_NAME_BYTES} characters")
    if len(header.fingerprint) != FINGERPRINT_BYTES:
        raise CodingError(f"fingerprint must have {FINGERPRINT_BYTES} bytes")
    if len(header.shapes) != len(streams) or not 0 < len(streams) < 256:
        raise CodingError("need one latent shape per stream, 1–255 streams")
    out = bytearray(MAGIC)
    out += _U8.pack(FORMAT_VERSION) + _U8.pack(FAMILIES[header.family])
    try:
        out += _U8.pack(len(name)) + name + _F32.pack(header.lmbda) + header.fingerprint
    except (struct.error, OverflowError) as err:
        raise CodingError(f"a header field is out of range: {err}") from None
    out += varint(header.height) + varint(header.width)
    out += _U8.pack(len(streams))
    for shape, stream in zip(header.shapes, streams, strict=True):
        if not 0 < len(shape) <= MAX_NDIM:
            raise CodingError(f"a latent shape needs 1–{MAX_NDIM} dimensions")
        out += _U8.pack(len(shape)) + b"".join(varint(d) for d in shape)
        out += varint(len(stream))
    out += _U32.pack(zlib.crc32(out))
    return bytes(out) + b"".join(streams)


class _Reader:
    """Reads named fields in order, raising CodingError that names the field."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, size: int, field: str) -> bytes:
        if self.pos + size > len(self.data):
            raise CodingError(f"the file is truncated: it ends inside the header "
                              f"field '{field}' (byte {len(self.data)} of a header "
                              f"that needs at least {self.pos + size})")
        chunk = self.data[self.pos:self.pos + size]
        self.pos += size
        return chunk

    def number(self, fmt: struct.Struct, field: str):
        return fmt.unpack(self.take(fmt.size, field))[0]

    def varint(self, field: str) -> int:
        value = 0
        for i in range(_VARINT_MAX_BYTES):
            byte = self.take(1, field)[0]
            value |= (byte & 0x7F) << (7 * i)
            if not byte & 0x80:
                if value >= 2**32:
                    break
                return value
        raise CodingError(f"the header is corrupt: field '{field}' is not a valid "
                          "varint")


def unpack(data: bytes) -> tuple[Header, list[bytes]]:
    """The bytes of a ``.dvae`` file → its :class:`Header` and streams.

    Checks, in order: magic, version, every field's presence, the header's
    CRC-32, and that the file length is exactly header + stream lengths.

    Raises:
        CodingError: the first problem found, named (empty, foreign, newer
            version, truncated field, corrupt header, missing or extra bytes).
    """
    data = bytes(data)
    header, pos = unpack_header(data)
    need = pos + sum(header.lengths)
    if len(data) != need:
        what = "truncated" if len(data) < need else "longer than its header says"
        raise CodingError(f"the file is {what}: {len(data)} bytes, the header "
                          f"announces {need}")
    streams = []
    for n in header.lengths:
        streams.append(data[pos:pos + n])
        pos += n
    return header, streams


def unpack_header(data: bytes) -> tuple[Header, int]:
    """The header at the start of ``data`` and its size in bytes.

    ``data`` may stop anywhere after the header (the first
    :data:`MAX_HEADER_BYTES` of a file are enough): a reader can check the
    header before it reads, or allocates, the streams. The same checks as
    :func:`unpack` but the file's length.

    Raises:
        CodingError: as :func:`unpack`.
    """
    if not data:
        raise CodingError("the file is empty")
    if not data.startswith(MAGIC):
        if MAGIC.startswith(data):
            raise CodingError("the file is truncated inside the magic number")
        raise CodingError(f"not a .dvae file: it starts with {data[:4]!r}, "
                          f"not {MAGIC!r}")
    r = _Reader(data)
    r.take(len(MAGIC), "magic")
    version = r.number(_U8, "version")
    if version != FORMAT_VERSION:
        raise CodingError(f"format version {version} is not supported (this "
                          f"dvae-tutorial reads version {FORMAT_VERSION})")
    code = r.number(_U8, "family")
    name = r.take(r.number(_U8, "name length"), "name")
    lmbda = r.number(_F32, "lmbda")
    fingerprint = r.take(FINGERPRINT_BYTES, "fingerprint")
    height, width = r.varint("height"), r.varint("width")
    shapes, lengths = [], []
    for i in range(r.number(_U8, "number of streams")):
        ndim = r.number(_U8, f"stream {i} ndim")
        if not 0 < ndim <= MAX_NDIM:
            raise CodingError(f"the header is corrupt: stream {i} has {ndim} "
                              "dimensions")
        shapes.append(tuple(r.varint(f"stream {i} shape") for _ in range(ndim)))
        lengths.append(r.varint(f"stream {i} length"))
    crc = r.number(_U32, "header_crc")
    if zlib.crc32(data[:r.pos - _U32.size]) != crc:
        raise CodingError("the header is corrupt (its CRC-32 does not match)")
    families = {v: k for k, v in FAMILIES.items()}
    if code not in families or not name.isascii() or not shapes:
        raise CodingError("the header is corrupt (family, name or streams)")
    header = Header(families[code], name.decode("ascii"), lmbda, fingerprint,
                    height, width, tuple(shapes), tuple(lengths))
    return header, r.pos
