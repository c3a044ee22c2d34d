"""The image loader: EXIF orientation, 16-bit colour, and the pixel limit.

Pillow cannot write 16-bit colour PNGs, so :func:`png16` writes them by hand
(plain and Adam7-interlaced), as a scanner or a raw converter would.
"""

from __future__ import annotations

import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from dvae_tutorial.errors import DataError
from dvae_tutorial.images import load_image

#: Adam7 passes: first row, first column, row step, column step.
ADAM7 = ((0, 0, 8, 8), (0, 4, 8, 8), (4, 0, 8, 4), (0, 2, 4, 4), (2, 0, 4, 2),
         (0, 1, 2, 2), (1, 0, 2, 1))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data)))


def png16(path, samples: np.ndarray, interlace: bool = False):
    """Write uint16 samples (H, W), (H, W, 3) or (H, W, 4) as a 16-bit PNG."""
    height, width = samples.shape[:2]
    channels = 1 if samples.ndim == 2 else samples.shape[2]
    colour = {1: 0, 3: 2, 4: 6}[channels]
    passes = ADAM7 if interlace else ((0, 0, 1, 1),)
    raw = b""
    for row, col, dy, dx in passes:
        for line in samples[row::dy, col::dx]:
            if line.size:
                raw += b"\0" + line.astype(">u2").tobytes()  # filter type 0
    ihdr = struct.pack(">IIBBBBB", width, height, 16, colour, 0, 0, int(interlace))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr)
                     + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b""))
    return path


def test_exif_orientation_is_applied(tmp_path):
    """A JPEG stored sideways with orientation 6 ("rotate 90° clockwise to
    show") loads upright: the stored pixels rotated clockwise."""
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:6] = 255  # a bright top band, stored as a 40×20 landscape
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "portrait.jpg", exif=exif, quality=95)
    with Image.open(tmp_path / "portrait.jpg") as img:
        raw = np.asarray(img.convert("RGB"))  # the decoded, not yet rotated pixels
    upright = load_image(tmp_path / "portrait.jpg")
    assert upright.shape == (40, 20, 3)
    np.testing.assert_array_equal(upright, np.rot90(raw, k=-1))
    assert upright[:, -4:].mean() > 200 and upright[:, :10].mean() < 50  # band: right


@pytest.mark.parametrize("interlace", [False, True])
def test_sixteen_bit_colour_is_rounded_like_sixteen_bit_gray(tmp_path, interlace):
    """16-bit RGB and RGBA PNGs become round(v / 257), as 16-bit gray does;
    Pillow alone keeps the high byte (v >> 8), one level off for 1/2 of v."""
    rng = np.random.default_rng(0)
    wide = rng.integers(0, 65536, (13, 11, 3), dtype=np.uint16)
    wide[0, :3] = [[0, 0, 0], [65535, 65535, 65535], [257 * 200 + 129] * 3]
    expected = np.round(wide / 257).astype(np.uint8)
    assert (expected != wide >> 8).any()  # the test tells rounding from truncation
    rgb = load_image(png16(tmp_path / "rgb.png", wide, interlace))
    np.testing.assert_array_equal(rgb, expected)
    alpha = np.full((13, 11, 1), 1000, np.uint16)
    rgba = load_image(png16(tmp_path / "rgba.png", np.dstack([wide, alpha]), interlace))
    np.testing.assert_array_equal(rgba, expected)
    gray = load_image(png16(tmp_path / "gray.png", wide[..., 0], interlace))
    np.testing.assert_array_equal(gray[..., 0], rgb[..., 0])


def test_max_pixels_refuses_an_image_before_decoding_it(tmp_path):
    """A PNG claiming 5000×5000 (with no pixel data) is refused by its size,
    at once, not by its missing data after decoding."""
    ihdr = struct.pack(">IIBBBBB", 5000, 5000, 8, 2, 0, 0, 0)
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr)
                    + _chunk(b"IDAT", zlib.compress(b"\0" * 100)) + _chunk(b"IEND", b""))
    start = time.perf_counter()
    with pytest.raises(DataError, match=r"5000×5000 = 25,000,000 pixels, over the limit"):
        load_image(big, max_pixels=2**24)
    assert time.perf_counter() - start < 5
    with pytest.raises(DataError, match="cannot read image"):
        load_image(big)  # no limit: Pillow finds the data missing
    Image.fromarray(np.zeros((10, 20, 3), np.uint8)).save(tmp_path / "small.png")
    assert load_image(tmp_path / "small.png", max_pixels=200).shape == (10, 20, 3)
    with pytest.raises(DataError, match="over the limit of 199 pixels"):
        load_image(tmp_path / "small.png", max_pixels=199)
