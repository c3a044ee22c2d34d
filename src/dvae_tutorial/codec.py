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
"""

from __future__ import annotations

import functools
import hashlib
import os
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
#: Largest image the decoder accepts (pixels): a corrupt size field must not
#: allocate gigabytes. 2^28 ≈ 16k × 16k.
MAX_PIXELS = 2**28


@dataclass(frozen=True)
class ModelInfo:
    """One shipped model: ``name FAMILY lmbda`` and its checkpoint file."""

    name: str
    family: str
    lmbda: float
    path: Path


def shipped_models(family: str | None = None) -> list[ModelInfo]:
    """The models shipped in the package, ordered by family and λ.

    Args:
        family: only this family (``"single"`` or ``"hierarchical"``).
    """
    infos = [_info(path) for path in sorted(WEIGHTS_DIR.glob("*.pt"))]
    infos = [i for i in infos if family is None or i.family == family]
    return sorted(infos, key=lambda i: (i.family, i.lmbda))


def _info(path: Path) -> ModelInfo:
    stat = path.stat()
    return _read_info(path, stat.st_mtime_ns, stat.st_size)


@functools.cache
def _read_info(path: Path, mtime_ns: int, size: int) -> ModelInfo:
    ckpt = load_checkpoint(path)
    return ModelInfo(path.stem, ckpt.get("family", "single"),
                     float(ckpt["recipe"]["lmbda"]), path)


def load_shipped(name: str) -> torch.nn.Module:
    """The shipped model ``name`` in eval mode on the CPU (cached per file).

    Raises:
        DVAEError: no shipped model has that name (the message lists them).
    """
    path = WEIGHTS_DIR / f"{name}.pt"
    if not path.is_file():
        raise DVAEError(f"no shipped model named {name!r} (shipped: "
                        f"{_shipped_names()}); `dvae models` lists them")
    stat = path.stat()
    return _load(path, stat.st_mtime_ns, stat.st_size)


def _shipped_names() -> str:
    return ", ".join(i.name for i in shipped_models()) or "none"


@functools.lru_cache(maxsize=8)
def _load(path: Path, mtime_ns: int, size: int) -> torch.nn.Module:
    return load_model(path)


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
             name: str | None = None, lmbda: float = 0.0) -> Encoded:
    """Compress a uint8 ``(H, W, 3)`` image into the bytes of a ``.dvae`` file.

    Args:
        image: 8-bit RGB pixels (e.g. from :func:`~dvae_tutorial.images.load_image`).
        model: a shipped model's name, or a model object; for an object give
            ``name`` (stored in the header, where :func:`decompress` looks for
            the model) and optionally its ``lmbda`` (0 = not recorded).

    See: *A discretized VAE codec* (compressing to bytes).
    """
    if isinstance(model, str):
        model_obj = load_shipped(model)
        name, lmbda = model, _info(WEIGHTS_DIR / f"{model}.pt").lmbda
    else:
        model_obj = model
        if not name:
            raise DVAEError("compressing with a model object needs its name= "
                            "(stored in the file header)")
    x = to_tensor01(np.asarray(image)).unsqueeze(0)
    height, width = (int(side) for side in x.shape[-2:])
    compressed = model_obj.compress(x)
    shapes = tuple(tuple(s) for s in model_obj.stream_shapes((height, width)))
    header = bitstream.Header(getattr(model_obj, "family", "single"), name,
                              float(lmbda), fingerprint(model_obj), height, width,
                              shapes, ())
    data = bitstream.pack(header, list(compressed.strings))
    return Encoded(data, float(compressed.bits), height, width)


def decompress(data: bytes, model: torch.nn.Module | None = None,
               layers: int | None = None) -> np.ndarray:
    """The bytes of a ``.dvae`` file → the uint8 ``(H, W, 3)`` reconstruction.

    Args:
        data: a file written by :func:`compress`.
        model: decode with this model instead of the shipped one named in the
            header (its fingerprint must still match).
        layers: progressive decoding (hierarchical models only): decode the
            first ``layers`` latent layers and put the others at their prior
            means; ``None`` decodes them all.

    Raises:
        CodingError: empty, foreign, truncated or corrupt file, or a file
            written by a model this installation does not have (names which).
        DVAEError: ``layers`` for a single-layer file, or outside ``0 … L``.

    See: *A discretized VAE codec* (compressing to bytes).
    """
    header, streams = bitstream.unpack(data)
    if model is None:
        try:
            model = load_shipped(header.model)
        except DVAEError:
            raise CodingError(f"the file was written by model {header.model!r}, "
                              "which this installation does not ship "
                              f"({_shipped_names()})") from None
    if fingerprint(model) != header.fingerprint:
        raise CodingError(f"the file was written by other weights than this "
                          f"installation's model {header.model!r} (fingerprint "
                          f"{header.fingerprint.hex()} vs {fingerprint(model).hex()})"
                          "; decode it with the dvae-tutorial version that wrote it")
    size = (header.height, header.width)
    if not 0 < header.height * header.width <= MAX_PIXELS:
        raise CodingError(f"the header's image size {size} is not plausible")
    expected = tuple(tuple(s) for s in model.stream_shapes(size))
    if header.shapes != expected:
        raise CodingError(f"the header's latent shapes {header.shapes} do not fit "
                          f"model {header.model!r} for a {size} image {expected}")
    if layers is None:
        x_hat = model.decompress(streams, size)
    elif not hasattr(model, "decompress_progressive"):
        raise DVAEError(f"progressive decoding needs a hierarchical model; "
                        f"{header.model!r} is a {header.family} model")
    else:
        x_hat = model.decompress_progressive(streams, size, layers)
    return to_uint8(x_hat[0].permute(1, 2, 0))  # HWC: (3, 1, 1) is ambiguous


def output_path(source: str | os.PathLike, out_dir: str | os.PathLike,
                suffix: str) -> Path:
    """``out_dir/<stem of source><suffix>``."""
    return Path(out_dir) / (Path(source).stem + suffix)


def compress_file(source: str | os.PathLike, out_dir: str | os.PathLike,
                  model: str) -> tuple[Path, Encoded]:
    """Read an image file, write ``out_dir/<stem>.dvae``; return its path and
    :class:`Encoded`. Errors name the file (DataError: unreadable image)."""
    image = load_image(source)
    try:
        encoded = compress(image, model)
    except CodingError as err:
        raise CodingError(f"{source}: {err}") from None
    target = output_path(source, out_dir, SUFFIX)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(encoded.data)
    return target, encoded


def decompress_file(source: str | os.PathLike, out_dir: str | os.PathLike,
                    layers: int | None = None) -> tuple[Path, np.ndarray]:
    """Read a ``.dvae`` file, write ``out_dir/<stem>.png`` (lossless PNG of the
    reconstruction; of the first ``layers`` layers, see :func:`decompress`);
    return its path and the pixels."""
    try:
        data = Path(source).read_bytes()
    except OSError as err:
        raise DataError(f"cannot read {source}: {err.strerror or err}") from None
    try:
        pixels = decompress(data, layers=layers)
    except DVAEError as err:
        raise CodingError(f"{source}: {err}") from None
    target = output_path(source, out_dir, ".png")
    target.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(target)
    return target, pixels
