"""The .dvae file format: round trip, and a clear CodingError for every bad file.

Bad files: empty, foreign, truncated at every byte of the header (so inside
every field), every single-byte flip in the header, random bytes, extra bytes.
"""

from __future__ import annotations

import dataclasses
import struct
import zlib

import numpy as np
import pytest

from dvae_tutorial import bitstream
from dvae_tutorial.bitstream import FORMAT_VERSION, MAGIC, Header, pack, unpack
from dvae_tutorial.errors import CodingError

HEADER = Header("single", "single-845", 845.0, bytes(range(8)), 512, 768,
                ((1, 96, 32, 48), (1, 4)), ())
STREAMS = [b"\xe1" + bytes(range(40)), b"zz"]


def header_size(data: bytes) -> int:
    return len(data) - sum(len(s) for s in STREAMS)


def test_round_trip_keeps_every_field():
    data = pack(HEADER, STREAMS)
    header, streams = unpack(data)
    assert streams == STREAMS
    assert header == dataclasses.replace(HEADER, lengths=(41, 2))


def test_layout_is_the_documented_one():
    data = pack(HEADER, STREAMS)
    assert data[:4] == MAGIC and data[4] == FORMAT_VERSION and data[5] == 1
    n = data[6]
    assert data[7:7 + n] == b"single-845"
    (lmbda,) = struct.unpack_from("<f", data, 7 + n)
    assert lmbda == 845.0
    pos = 7 + n + 4
    assert data[pos:pos + 8] == bytes(range(8))
    pos += 8
    # varints: 512 = 0x80 0x04, 768 = 0x80 0x06; 1 stream of ndim 4
    assert data[pos:pos + 6] == bytes([0x80, 0x04, 0x80, 0x06, 2, 4])
    # shape (1, 96, 32, 48) one byte each, length 41
    assert data[pos + 6:pos + 11] == bytes([1, 96, 32, 48, 41])
    size = header_size(data)
    (crc,) = struct.unpack_from("<I", data, size - 4)
    assert crc == zlib.crc32(data[:size - 4])
    assert size == 4 + 1 + 1 + 1 + n + 4 + 8 + 4 + 1 + (1 + 4 + 1) + (1 + 2 + 1) + 4


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 16383, 16384, 2**32 - 1])
def test_varints_round_trip_through_the_size_fields(value):
    header = dataclasses.replace(HEADER, height=value, width=max(value, 1))
    assert unpack(pack(header, STREAMS))[0].height == value


def test_overlong_varint_is_a_corrupt_header():
    data = bytearray(pack(HEADER, STREAMS))
    n = data[6]
    pos = 7 + n + 4 + 8
    bad = bytes(data[:pos]) + bytes([0xFF] * 6) + bytes(data[pos + 2:])
    with pytest.raises(CodingError, match="'height' is not a valid varint"):
        unpack(bad)


@pytest.mark.parametrize("cut", range(0, 120))
def test_truncated_anywhere_is_refused(cut):
    data = pack(HEADER, STREAMS)
    if cut >= len(data):
        pytest.skip("past the end")
    with pytest.raises(CodingError, match="empty|truncated"):
        unpack(data[:cut])


def test_truncation_names_the_field():
    data = pack(HEADER, STREAMS)
    fields = set()
    for cut in range(1, header_size(data)):
        with pytest.raises(CodingError) as info:
            unpack(data[:cut])
        fields.add(str(info.value).split("'")[1] if "'" in str(info.value) else "magic")
    for field in ("version", "family", "name", "lmbda", "fingerprint", "height",
                  "width", "number of streams", "stream 0 shape", "stream 1 length",
                  "header_crc"):
        assert field in fields, field


def test_every_header_byte_flip_is_detected():
    data = bytearray(pack(HEADER, STREAMS))
    for pos in range(header_size(data)):
        for bit in (0, 7):
            bad = bytearray(data)
            bad[pos] ^= 1 << bit
            with pytest.raises(CodingError):
                unpack(bytes(bad))


@pytest.mark.parametrize("data, message", [
    (b"", "empty"),
    (b"DV", "truncated inside the magic"),
    (b"\x89PNG\r\n\x1a\n" + bytes(30), "not a .dvae file"),
    (MAGIC + bytes([FORMAT_VERSION + 1]) + bytes(40), "version"),
])
def test_foreign_and_future_files(data, message):
    with pytest.raises(CodingError, match=message):
        unpack(data)


def test_random_bytes_and_extra_bytes():
    rng = np.random.default_rng(0)
    for _ in range(300):
        blob = rng.integers(0, 256, int(rng.integers(1, 200)), dtype=np.uint8).tobytes()
        for candidate in (blob, MAGIC + blob, MAGIC + bytes([FORMAT_VERSION]) + blob):
            with pytest.raises(CodingError):
                unpack(candidate)
    data = pack(HEADER, STREAMS)
    with pytest.raises(CodingError, match="longer than its header says"):
        unpack(data + b"\0")
    with pytest.raises(CodingError, match="truncated"):
        unpack(data[:-1])


def test_pack_refuses_what_the_format_cannot_hold():
    with pytest.raises(CodingError, match="family"):
        pack(Header("flow", "m", 1.0, bytes(8), 1, 1, ((1,),), ()), [b""])
    with pytest.raises(CodingError, match="name"):
        pack(Header("single", "m" * 300, 1.0, bytes(8), 1, 1, ((1,),), ()), [b""])
    with pytest.raises(CodingError, match="out of range"):
        pack(Header("single", "m", 1.0, bytes(8), 2**32, 1, ((1,),), ()), [b""])
    with pytest.raises(CodingError, match="out of range"):
        pack(Header("single", "m", 1e300, bytes(8), 1, 1, ((1,),), ()), [b""])
    with pytest.raises(CodingError, match="one latent shape per stream"):
        pack(Header("single", "m", 1.0, bytes(8), 1, 1, ((1,),), ()), [b"", b""])
    assert bitstream.MAX_NAME_BYTES == 255
