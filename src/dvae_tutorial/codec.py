"""The codec: images ⇄ ``.dvae`` files with the models shipped in the package.

Backs *A discretized VAE codec* (compressing Kodak to files). An image is
read as 8-bit RGB (:func:`~dvae_tutorial.images.load_image`: gray and RGBA
become RGB, 16-bit becomes 8-bit), scaled to [0, 1], padded to the model's
stride inside the model, coded to streams by the model's ``compress``, and
framed by :mod:`dvae_tutorial.bitstream`. Decoding reads the model's name
from the header, checks the weights' fingerprint, decodes, crops, and
rounds to 8 bits — the PNG ``dvae decompress`` writes holds exactly those
pixels.

The shipped models live in ``dvae_tutorial/weights/<name>.pt`` (fp16 EMA
weights with their training recipe, loaded with ``map_location="cpu"``;
never downloaded at run time). Two sub-folders hold models the chapters
compare with, which are not shipped models (not listed, not usable by
name): ``weights/narrow/`` the narrow λ = 845 model of an earlier edition
(chapter 5), ``weights/resnet/`` the from-scratch ResNet VAE (QRes-VAE's
architecture, 9,000 CPU steps; chapter 6).

Shipped models are loaded with their transforms ``g_a``/``g_s`` in
PyTorch's channels-last memory layout, which reaches oneDNN's fast
convolutions on the CPU (25–30 % less time in each, measured on one thread).

**Large images** run their transforms tile by tile (:mod:`~dvae_tutorial.tiling`:
1024-pixel tiles with 64 pixels of context, equal to the whole-image
transforms up to float rounding), and a hierarchical model codes its layers
in runs of a million symbols, so memory stays bounded: a 12-megapixel photo
codes in under 2 GB, a 48-megapixel one completes (``bench/large_images.py``).

**Decoding elsewhere: exact, or refused.** What decides whether a file
decodes is the entropy coder's parameters, and they are made
machine-independent: every scale snaps to a table entry and every mean to a
grid (:mod:`~dvae_tutorial.entropy_coding`), single-layer priors are learned
constants, and the hierarchical prior runs in float64 (its last-bit
differences between machines, ~1e-15, would have to fall on a table boundary
to matter). A file written with any thread count, with oneDNN on or off,
decodes in any other setting (tested). If the coder still desynchronises —
another PyTorch whose kernels differ more, a modified model — the streams'
CRC-32 over every decoded symbol turns it into a one-line
:class:`~dvae_tutorial.errors.CodingError` ("decoded symbols fail the
checksum … decoded with other means/scales"), never a wrong image; decode
with the dvae-tutorial and PyTorch versions that wrote the file (the header's
fingerprint already refuses other weights). The pixels are a float32
synthesis rounded to 8 bits, computed with forward convolutions only and
oneDNN pinned on (:func:`~dvae_tutorial.tiling.reproducible`), whose sums do
not depend on the thread count or on the caller's oneDNN setting (tested:
the same PNG for 1–4 threads, oneDNN on and off); on another CPU family or a
GPU a few pixel values may differ by one level. Chapter 3 shows why the coder must be
exact (a desynchronised decoder) and chapter 5 points here.

Files come from anywhere, so nothing a header says is used before it is
checked: the model's name is looked up among the shipped names (never
joined into a path), λ must be finite and positive (and the shipped
model's own λ, to float32 precision; for a variable-rate model, inside its
range: the header's λ is the one the file was coded at), the image must fit the
pixel budget :data:`MAX_PIXELS` and the streams the image, the family,
fingerprint and latent shapes must be the model's — a crafted header is
refused before anything is allocated for it. ``decompress_file`` reads a
file's header before its streams, so a file that is not a ``.dvae`` file
(``/dev/zero``) is refused having read a few kilobytes. Output files are
created, never overwritten, unless ``force=True``; the input being read is
never overwritten.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import math
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import bitstream
from .checkpoints import load_checkpoint, load_model
from .errors import CodingError, DataError, DVAEError
from .images import load_image, to_tensor01
from .metrics import to_uint8

#: Folder of the shipped checkpoints (package data).
WEIGHTS_DIR = Path(__file__).parent / "weights"
#: Suffix of compressed files.
SUFFIX = ".dvae"
#: The pixel budget: the largest image (width × height) that is compressed or
#: decompressed unless the caller raises it (``max_pixels=``, ``dvae compress``
#: / ``decompress --max-pixels``). 2^24 = 4096 × 4096: a 12-megapixel photo
#: fits. Memory is bounded by tiling (about 2 GB at 12 MP), but time is not
#: (~2 s a megapixel): a corrupt or crafted size field must not make the
#: decoder work for an hour, or allocate the output of a 2^32-pixel image.
MAX_PIXELS = 2**24
#: A file's streams hold at most this many bytes a pixel (128 bpp: 5 × raw
#: RGB, 30 × noise at the highest λ), plus STREAM_SLACK_BYTES (the padding
#: of tiny images): a header announcing more is refused, and no more is read.
MAX_BYTES_PER_PIXEL = 16
STREAM_SLACK_BYTES = 2**20
#: Error messages quote at most this many characters of a name.
_QUOTE_CHARS = 60


@dataclass(frozen=True)
class ModelInfo:
    """One shipped model: ``name FAMILY lmbda`` and its checkpoint file; a
    variable-rate model also has its ``levels`` (it codes at any λ between
    the first and the last; its ``lmbda`` is the one it was validated at)."""

    name: str
    family: str
    lmbda: float
    path: Path
    levels: tuple[float, ...] = ()

    @property
    def lmbda_range(self) -> tuple[float, float] | None:
        """``(lowest, highest)`` λ of a variable-rate model, else ``None``."""
        return (self.levels[0], self.levels[-1]) if self.levels else None

    @property
    def lmbda_text(self) -> str:
        """``845``, or ``100-5000`` for a variable-rate model."""
        if self.lmbda_range is None:
            return f"{self.lmbda:g}"
        return f"{self.lmbda_range[0]:g}-{self.lmbda_range[1]:g}"


def shipped_models(family: str | None = None) -> list[ModelInfo]:
    """The models shipped in the package, ordered by family and λ.

    Args:
        family: only this family (``"single"`` or ``"hierarchical"``).
    """
    infos = [_info(path) for path in _shipped_paths().values()]
    infos = [i for i in infos if family is None or i.family == family]
    return sorted(infos, key=lambda i: (i.family, i.lmbda))


def _shipped_paths() -> dict[str, Path]:
    """Name → checkpoint of every shipped model: the files ``WEIGHTS_DIR/*.pt``."""
    return {p.stem: p for p in sorted(WEIGHTS_DIR.glob("*.pt")) if p.is_file()}


def _shipped_path(name: str) -> Path:
    """The checkpoint of the shipped model ``name``. The name is looked up among
    the shipped names, never joined into a path: ``../x``, ``resnet/…`` or an
    absolute path cannot load a file that is not a shipped model.

    Raises:
        DVAEError: no shipped model has that name (the message lists them).
    """
    path = _shipped_paths().get(name) if isinstance(name, str) else None
    if path is None:
        raise DVAEError(f"no shipped model named {_quote(name)} (shipped: "
                        f"{_shipped_names()}); `dvae models` lists them")
    return path


def _quote(name: object) -> str:
    """``repr(name)`` for a one-line message, cut to :data:`_QUOTE_CHARS`."""
    text = repr(name)
    return text if len(text) <= _QUOTE_CHARS else text[:_QUOTE_CHARS - 1] + "…"


def _info(path: Path) -> ModelInfo:
    stat = path.stat()
    return _read_info(path, stat.st_mtime_ns, stat.st_size)


@functools.cache
def _read_info(path: Path, mtime_ns: int, size: int) -> ModelInfo:
    ckpt = load_checkpoint(path)
    levels = ckpt["model_config"].get("levels") or ()
    return ModelInfo(path.stem, ckpt.get("family", "single"),
                     float(ckpt["recipe"]["lmbda"]), path,
                     tuple(float(v) for v in levels))


def check_lmbda(name: str, lmbda: float | None) -> float:
    """The λ to give :func:`compress` for the shipped model ``name``: a
    variable-rate model needs one inside its range, a fixed-rate model takes
    none (or its own λ); returns it (0.0 for none).

    Raises:
        DVAEError: unknown name, or a λ the model does not code at (one line
            naming the range, or the model's λ).
    """
    info = _info(_shipped_path(name))
    if info.lmbda_range is None:
        if lmbda is not None and lmbda != info.lmbda:
            raise DVAEError(f"{_quote(name)} codes at λ = {info.lmbda:g} only; "
                            "another λ needs a variable-rate model (`dvae models`)")
        return 0.0
    lo, hi = info.lmbda_range
    if lmbda is None or not (math.isfinite(lmbda) and lo <= lmbda <= hi):
        given = "no λ" if lmbda is None else f"λ = {lmbda:g}"
        raise DVAEError(f"{_quote(name)} is a variable-rate model for λ in "
                        f"{lo:g} … {hi:g}; {given} given (--lmbda)")
    return float(lmbda)


def load_shipped(name: str) -> torch.nn.Module:
    """The shipped model ``name`` in eval mode on the CPU (cached per file).

    Raises:
        DVAEError: no shipped model has that name (the message lists them).
    """
    path = _shipped_path(name)
    stat = path.stat()
    return _load(path, stat.st_mtime_ns, stat.st_size)


def _shipped_names() -> str:
    return ", ".join(i.name for i in shipped_models()) or "none"


@functools.lru_cache(maxsize=8)
def _load(path: Path, mtime_ns: int, size: int) -> torch.nn.Module:
    model = load_model(path)
    for part in ("g_a", "g_s"):  # the transforms in channels-last layout
        if hasattr(model, part):
            getattr(model, part).to(memory_format=torch.channels_last)
    return model


def fingerprint(model: torch.nn.Module) -> bytes:
    """The first :data:`~dvae_tutorial.bitstream.FINGERPRINT_BYTES` bytes of the
    SHA-256 of the model's weights (names and float32 values, sorted by name)."""
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.digest()[:bitstream.FINGERPRINT_BYTES]


@dataclass(frozen=True)
class Encoded:
    """A compressed image: the file's bytes and what they cost.

    Attributes:
        data: the ``.dvae`` file's bytes (header included).
        estimated_bits: ``−Σ log₂ P`` of the coded latents under the prior.
        height, width: the image's size.
    """

    data: bytes
    estimated_bits: float
    height: int
    width: int

    @property
    def bpp(self) -> float:
        """Bits per pixel of the whole file: ``8·len(data) / (H·W)``."""
        return 8 * len(self.data) / (self.height * self.width)

    @property
    def estimated_bpp(self) -> float:
        """``−Σ log₂ P / (H·W)``, the rate the training loss estimates."""
        return self.estimated_bits / (self.height * self.width)


def compress(image: np.ndarray, model: str | torch.nn.Module,
             name: str | None = None, lmbda: float = 0.0, *,
             max_pixels: int = MAX_PIXELS) -> Encoded:
    """Compress a uint8 ``(H, W, 3)`` image into the bytes of a ``.dvae`` file.

    Args:
        image: 8-bit RGB pixels (e.g. from :func:`~dvae_tutorial.images.load_image`).
        model: a shipped model's name, or a model object; for an object give
            ``name`` (stored in the header, where :func:`decompress` looks for
            the model) and optionally its ``lmbda`` (0 = not recorded).
        lmbda: for a variable-rate model (shipped or object) the λ to code
            at, required and inside its range; it is rounded to float32 (what
            the header stores) before coding, so the decoder uses the same.
            A fixed-rate shipped model takes 0 or its own λ.
        max_pixels: refuse a larger image (default :data:`MAX_PIXELS`, what
            :func:`decompress` accepts by default).

    Raises:
        DVAEError: unknown model name, a model object without ``name``,
            ``lmbda`` not finite and ≥ 0, outside a variable-rate model's
            range, or another λ than a fixed-rate shipped model's.
        DataError: not a uint8 (H, W, 3) image, or one over ``max_pixels``.

    See: *A discretized VAE codec* (compressing to bytes).
    """
    if isinstance(model, str):
        path = _shipped_path(model)
        model_obj, info = load_shipped(model), _info(path)
        if info.lmbda_range is None:  # a fixed-rate model: no λ, or its own
            check_lmbda(model, lmbda or None)
            lmbda = info.lmbda
        name = model
    else:
        model_obj = model
        if not name:
            raise DVAEError("compressing with a model object needs its name= "
                            "(stored in the file header)")
        if not (math.isfinite(lmbda) and lmbda >= 0):
            raise DVAEError(f"lmbda must be finite and ≥ 0 (0: not recorded), "
                            f"got {lmbda}")
    pixels = np.asarray(image)
    if pixels.ndim == 3 and pixels.shape[0] * pixels.shape[1] > max_pixels:
        raise DataError(f"the image is {pixels.shape[1]}×{pixels.shape[0]} = "
                        f"{pixels.shape[0] * pixels.shape[1]:,} pixels, over the "
                        f"pixel budget of {max_pixels:,} (max_pixels=, "
                        "--max-pixels raise it)")
    coded_at = ()
    if getattr(model_obj, "family", "single") == "variable-rate":
        if not lmbda:
            lo, hi = model_obj.lmbda_range
            raise DVAEError(f"{_quote(name)} is a variable-rate model: give the λ to "
                            f"code at (--lmbda, {lo:g} … {hi:g})")
        model_obj.check_lmbda(lmbda)
        lmbda = _float32(lmbda)  # what the header holds and the decoder reads
        coded_at = (lmbda,)
    # no reference kept here: the model drops the float image once it has y
    compressed = model_obj.compress(to_tensor01(pixels).unsqueeze(0),  # checks it
                                    *coded_at)
    height, width = (int(side) for side in pixels.shape[:2])
    shapes = tuple(tuple(s) for s in model_obj.stream_shapes((height, width)))
    header = bitstream.Header(getattr(model_obj, "family", "single"), name,
                              float(lmbda), fingerprint(model_obj), height, width,
                              shapes, ())
    data = bitstream.pack(header, list(compressed.strings))
    if sum(map(len, compressed.strings)) > _max_stream_bytes(height, width):
        raise CodingError("the streams are longer than a reader accepts for "
                          f"a {width}×{height} image")  # never seen: 128 bpp
    return Encoded(data, float(compressed.bits), height, width)


def decompress(data: bytes, model: torch.nn.Module | None = None,
               layers: int | None = None, *,
               max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """The bytes of a ``.dvae`` file → the uint8 ``(H, W, 3)`` reconstruction.

    Every header field is checked before anything is decoded (see
    :func:`check_header`), then the model: the shipped one named in the
    header (looked up by name), or ``model``; its family, fingerprint and
    latent shapes must be the header's.

    Args:
        data: a file written by :func:`compress`.
        model: decode with this model instead of the shipped one named in the
            header (its fingerprint must still match); a file written by
            :func:`compress` with a model object and no ``lmbda`` (λ = 0,
            not recorded) decodes only this way.
        layers: progressive decoding (hierarchical models only): decode the
            first ``layers`` latent layers and put the others at their prior
            means; ``None`` decodes them all.
        max_pixels: refuse a larger image (default :data:`MAX_PIXELS`).

    Raises:
        CodingError: empty, foreign, truncated or corrupt file, an implausible
            header (λ, size, stream lengths), or a file written by a model
            this installation does not have (names which).
        DVAEError: ``layers`` for a single-layer file, or outside ``0 … L``.

    See: *A discretized VAE codec* (compressing to bytes).
    """
    header, streams = bitstream.unpack(data)
    check_header(header, max_pixels, lmbda_recorded=model is None)
    model = _header_model(header, model)
    size = (header.height, header.width)
    if layers is not None and not hasattr(model, "decompress_progressive"):
        raise DVAEError(f"progressive decoding needs a hierarchical model; "
                        f"{_quote(header.model)} is a {header.family} model")
    if header.family == "variable-rate":  # decoded at the λ it was coded at
        x_hat = model.decompress(streams, size, header.lmbda)
    elif layers is None:
        x_hat = model.decompress(streams, size)
    else:
        x_hat = model.decompress_progressive(streams, size, layers)
    return to_uint8(x_hat[0].permute(1, 2, 0))  # HWC: (3, 1, 1) is ambiguous


def check_header(header: bitstream.Header, max_pixels: int = MAX_PIXELS,
                 lmbda_recorded: bool = True) -> None:
    """Check what a header says about itself, before a model is loaded or
    anything allocated: λ finite and > 0 (≥ 0 unless ``lmbda_recorded``),
    ``0 < height × width ≤ max_pixels``, and stream lengths within
    :data:`MAX_BYTES_PER_PIXEL` of the image.

    Raises:
        CodingError: names the field.
    """
    lmbda = header.lmbda
    if not (math.isfinite(lmbda) and (lmbda > 0 or lmbda == 0 and not lmbda_recorded)):
        raise CodingError(f"the header's λ = {lmbda} is not a model's "
                          "(finite and > 0); the file is corrupt")
    height, width = header.height, header.width
    if height * width == 0:
        raise CodingError(f"the header's image size {width}×{height} is empty")
    if height * width > max_pixels:
        raise CodingError(f"the header's image size {width}×{height} = "
                          f"{height * width:,} pixels is over the pixel budget of "
                          f"{max_pixels:,} (max_pixels=, --max-pixels raise it)")
    if sum(header.lengths) > _max_stream_bytes(height, width):
        raise CodingError(f"the header announces {sum(header.lengths):,} bytes of "
                          f"streams, more than a {width}×{height} image can need "
                          f"({_max_stream_bytes(height, width):,})")


def _float32(value: float) -> float:
    """``value`` rounded to float32, as the header stores it."""
    return struct.unpack("<f", struct.pack("<f", value))[0]


def _max_stream_bytes(height: int, width: int) -> int:
    return MAX_BYTES_PER_PIXEL * height * width + STREAM_SLACK_BYTES


def _header_model(header: bitstream.Header,
                  model: torch.nn.Module | None) -> torch.nn.Module:
    """The model that decodes the file (shipped, by the header's name, unless
    given), checked against the header's family, fingerprint and shapes."""
    if model is None:
        try:
            model = load_shipped(header.model)
        except DVAEError:
            raise CodingError(f"the file was written by model {_quote(header.model)}, "
                              "which this installation does not ship "
                              f"({_shipped_names()})") from None
        info = _info(_shipped_path(header.model))
        # (a variable-rate model's range is checked below, given or shipped)
        if info.lmbda_range is None and header.lmbda != _float32(info.lmbda):
            raise CodingError(f"the header's λ = {header.lmbda:g} is not model "
                              f"{_quote(header.model)}'s ({info.lmbda:g}); the file is "
                              "corrupt")
    if fingerprint(model) != header.fingerprint:
        raise CodingError(f"the file was written by other weights than this "
                          f"installation's model {_quote(header.model)} (fingerprint "
                          f"{header.fingerprint.hex()} vs {fingerprint(model).hex()})"
                          "; decode it with the dvae-tutorial version that wrote it")
    family = getattr(model, "family", "single")
    if header.family != family:
        raise CodingError(f"the header says a {header.family} model, but "
                          f"{_quote(header.model)} is a {family} model")
    if family == "variable-rate":
        lo, hi = model.lmbda_range
        if not lo <= header.lmbda <= hi:
            raise CodingError(f"the header's λ = {header.lmbda:g} is outside model "
                              f"{_quote(header.model)}'s range {lo:g} … {hi:g}; the "
                              "file is corrupt")
    size = (header.height, header.width)
    expected = tuple(tuple(s) for s in model.stream_shapes(size))
    if header.shapes != expected:
        raise CodingError(f"the header's latent shapes {header.shapes} do not fit "
                          f"model {_quote(header.model)} for a {size} image "
                          f"{expected}")
    return model


def output_path(source: str | os.PathLike, out_dir: str | os.PathLike,
                suffix: str) -> Path:
    """``out_dir/<stem of source><suffix>``."""
    return Path(out_dir) / (Path(source).stem + suffix)


def check_out_dir(out_dir: str | os.PathLike) -> None:
    """Refuse an output folder that exists but is not a folder.

    Raises:
        DataError: names it.
    """
    path = Path(out_dir)
    if path.exists() and not path.is_dir():
        raise DataError(f"--out-dir {out_dir} is a file, not a folder")


def compress_file(source: str | os.PathLike, out_dir: str | os.PathLike,
                  model: str, *, force: bool = False,
                  max_pixels: int = MAX_PIXELS,
                  lmbda: float = 0.0) -> tuple[Path, Encoded]:
    """Read an image file, write ``out_dir/<stem>.dvae``; return its path and
    :class:`Encoded`.

    An existing ``<stem>.dvae`` is replaced only with ``force`` (and never
    when it is ``source`` itself); an image over ``max_pixels`` is refused
    before its pixels are decoded. ``lmbda``: as in :func:`compress` (a
    variable-rate model's λ).

    Raises:
        DataError: unreadable or too large image, unwritable or existing
            output (names the file).
        CodingError: the image cannot be coded (names the file; out of
            memory included).
    """
    target = output_path(source, out_dir, SUFFIX)
    _check_target(source, target, force)
    with _out_of_memory_is_an_error(source):
        image = load_image(source, max_pixels=max_pixels)
        try:
            encoded = compress(image, model, lmbda=lmbda, max_pixels=max_pixels)
        except CodingError as err:
            raise CodingError(f"{source}: {err}") from None
    _write(target, encoded.data, force)
    return target, encoded


def decompress_file(source: str | os.PathLike, out_dir: str | os.PathLike,
                    layers: int | None = None, *, force: bool = False,
                    max_pixels: int = MAX_PIXELS) -> tuple[Path, np.ndarray]:
    """Read a ``.dvae`` file, write ``out_dir/<stem>.png`` (lossless PNG of the
    reconstruction; of the first ``layers`` layers, see :func:`decompress`);
    return its path and the pixels.

    The file is read header first (see :func:`read_dvae`). An existing
    ``<stem>.png`` is replaced only with ``force``, never when it is
    ``source`` itself.

    Raises:
        DataError: unreadable input, unwritable or existing output.
        CodingError: anything :func:`decompress` refuses, or out of memory
            (names the file).
    """
    target = output_path(source, out_dir, ".png")
    _check_target(source, target, force)
    with _out_of_memory_is_an_error(source):
        try:
            data = read_dvae(source, max_pixels)
            pixels = decompress(data, layers=layers, max_pixels=max_pixels)
        except DataError:
            raise  # cannot read it: names the file
        except DVAEError as err:
            raise CodingError(f"{source}: {err}") from None
        png = io.BytesIO()
        Image.fromarray(pixels).save(png, format="PNG")
    _write(target, png.getvalue(), force)
    return target, pixels


def read_dvae(source: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> bytes:
    """The bytes of a ``.dvae`` file, read header first: the first
    :data:`~dvae_tutorial.bitstream.MAX_HEADER_BYTES` are checked (magic and
    :func:`check_header`) before the streams are read, and no more than the
    header announces is read (``/dev/zero`` is refused at its magic).

    Raises:
        DataError: the file cannot be read (names it).
        CodingError: not a ``.dvae`` file, an implausible header, or a
            file longer than its header says.
    """
    try:
        with open(source, "rb") as file:
            data = file.read(bitstream.MAX_HEADER_BYTES)
            header, size = bitstream.unpack_header(data)
            check_header(header, max_pixels)
            need = size + sum(header.lengths)
            data += file.read(max(0, need + 1 - len(data)))
    except OSError as err:
        raise DataError(f"cannot read {source}: {err.strerror or err}") from None
    if len(data) > need:
        raise CodingError(f"the file is longer than its header says (it "
                          f"announces {need} bytes)")
    return data


def _check_target(source: str | os.PathLike, target: Path, force: bool) -> None:
    """Refuse to write over ``source`` (ever) or an existing file (unless ``force``)."""
    if not (target.exists() or target.is_symlink()):
        return
    try:
        same = os.path.samefile(source, target)
    except OSError:
        same = False
    if same:
        raise DataError(f"{source}: its output {target} is the input itself; "
                        "choose another --out-dir")
    if target.is_dir():
        raise DataError(f"{source}: its output {target} is a folder")
    if not force:
        raise DataError(f"{source}: {target} exists; --force (force=True) "
                        "overwrites it")


def _write(target: Path, data: bytes, force: bool) -> None:
    """Write ``data`` to a new file ``target`` (exclusive creation: a file that
    appeared since :func:`_check_target` is not overwritten either), or with
    ``force`` replace it atomically (a failed write leaves the old file).

    Raises:
        DataError: the folder or file cannot be written (names it).
    """
    created = False
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        if force:
            temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            try:
                temporary.write_bytes(data)
                os.replace(temporary, target)
            finally:
                temporary.unlink(missing_ok=True)
        else:
            with open(target, "xb") as file:
                created = True
                file.write(data)
    except FileExistsError:
        if not created and target.exists():
            raise DataError(f"{target} exists; --force (force=True) overwrites "
                            "it") from None
        raise DataError(f"cannot create the folder {target.parent}") from None
    except OSError as err:
        if created:
            target.unlink(missing_ok=True)
        raise DataError(f"cannot write {target}: {err.strerror or err}") from None


@contextlib.contextmanager
def _out_of_memory_is_an_error(source: str | os.PathLike) -> Iterator[None]:
    """Turn running out of memory while coding ``source`` (Python's
    MemoryError, torch's allocator errors) into a CodingError naming it, so
    that a batch goes on with the next file."""
    try:
        yield
    except (MemoryError, RuntimeError) as err:
        if isinstance(err, RuntimeError) and not _is_out_of_memory(err):
            raise
        raise CodingError(f"{source}: out of memory while coding it "
                          f"({type(err).__name__})") from None


def _is_out_of_memory(err: RuntimeError) -> bool:
    text = str(err)
    return "can't allocate memory" in text or "out of memory" in text.lower()
