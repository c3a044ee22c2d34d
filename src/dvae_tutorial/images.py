"""Image files as arrays, hashes and tensors; a dataset of random training patches.

Backs the data section of the chapter *A discretized VAE codec*; re-exported by
:mod:`dvae_tutorial.data`, which finds the files. As in Ballé et al. (2018),
models train on random square crops of photos; a 64×64 patch suits shallow
models, deeper ones need larger crops (see the book's note on patch size).

torch and torchvision are imported only when a tensor is made, so that the
``dvae`` command starts quickly.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps

from .errors import DataError

if TYPE_CHECKING:
    import torch

#: File suffixes read as images (compared in lower case).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
#: 65535 / 255: a 16-bit sample v is the 8-bit sample v / 257.
_U16_TO_U8 = 257.0
#: Pillow reads a 16-bit-per-channel colour PNG as 8-bit RGB(A) by keeping
#: each sample's high byte (v >> 8, a truncation, where 16-bit gray is
#: rounded). Decoding the file again with the little-endian raw mode of the
#: same width yields the low bytes, so the full sample can be rounded too.
_LOW_BYTE_RAWMODES = {"RGB;16B": "RGB;16L", "RGBA;16B": "RGBA;16L"}


def load_image(path: str | os.PathLike, max_pixels: int | None = None) -> np.ndarray:
    """Read an image file as RGB: a writable uint8 array of shape (H, W, 3).

    The EXIF orientation is applied (a phone's portrait JPEG, stored
    sideways with orientation 6, is returned upright, as viewers show it).
    Grayscale, palette and RGBA files go through Pillow's ``convert("RGB")``
    (gray is copied to all three channels; alpha is dropped, not composited).
    16-bit samples, gray (Pillow modes ``I;16*``, ``I``) and colour
    (16-bit RGB and RGBA PNG), are rounded to 8 bits as ``v / 257``
    (65535 → 255) — Pillow alone would clip gray at 255 and truncate colour.

    Args:
        max_pixels: refuse a larger image (width × height) before decoding
            its pixels; ``None``: no limit but Pillow's decompression-bomb check.

    Raises:
        DataError: the file is missing, corrupt, not an image or over
            ``max_pixels`` (names it).
    """
    try:
        with Image.open(path) as img:
            if max_pixels is not None and img.width * img.height > max_pixels:
                raise DataError(f"image {path} is {img.width}×{img.height} = "
                                f"{img.width * img.height:,} pixels, over the limit "
                                f"of {max_pixels:,} pixels")
            low_rawmode = _low_byte_rawmode(img)
            img.load()
            ImageOps.exif_transpose(img, in_place=True)
            if img.mode.startswith("I;16") or img.mode == "I":
                gray = _round_to_u8(np.asarray(img, dtype=np.float64))
                return np.repeat(gray[..., None], 3, axis=2)
            rgb = np.array(img.convert("RGB"))
        if low_rawmode is not None:
            return _round_to_u8(rgb * 256.0 + _low_bytes(path, low_rawmode))
        return rgb
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"cannot read image {path}: {err}") from err


def _round_to_u8(wide: np.ndarray) -> np.ndarray:
    """16-bit samples (any numeric dtype) → uint8 ``round(v / 257)``."""
    return np.round(np.clip(wide / _U16_TO_U8, 0, 255)).astype(np.uint8)


def _low_byte_rawmode(img: Image.Image) -> str | None:
    """For a not yet loaded 16-bit colour PNG, the raw mode that decodes the
    low bytes of its samples; ``None`` for every other image."""
    tile = getattr(img, "tile", None) or []
    if img.format != "PNG" or len(tile) != 1:
        return None
    return _LOW_BYTE_RAWMODES.get(tile[0][3])


def _low_bytes(path: str | os.PathLike, rawmode: str) -> np.ndarray:
    """The low bytes of a 16-bit colour PNG's RGB samples, upright (float64)."""
    with Image.open(path) as img:
        tile = img.tile[0]  # Pillow ≥ 11: a named tuple; before: a tuple
        img.tile = [tile._replace(args=rawmode) if hasattr(tile, "_replace")
                    else (*tile[:3], rawmode)]
        img.load()
        ImageOps.exif_transpose(img, in_place=True)
        return np.asarray(img, dtype=np.float64)[..., :3]


def to_tensor01(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) array → float32 tensor (3, H, W): $x = \\text{image} / 255$.

    The result lies in [0, 1], the range on which the book measures MSE.

    See: *A discretized VAE codec* (data section).
    """
    import torch

    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise DataError(f"expected a uint8 (H, W, 3) image, got {image.dtype} "
                        f"{image.shape}; read files with load_image()")
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).div(255.0)


def image_files(root: str | os.PathLike) -> list[Path]:
    """All images under ``root``: recursive, suffixes in :data:`IMAGE_SUFFIXES`
    in any case, sorted by relative POSIX path (the same order everywhere).

    Raises:
        DataError: ``root`` does not exist or holds no image.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist")
    files = [p for p in root.rglob("*")
             if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    if not files:
        raise DataError(f"no images ({' '.join(sorted(IMAGE_SUFFIXES))}) under {root}")
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


@functools.lru_cache(maxsize=1024)
def _sha256_at(path: str, stamp: tuple[int, ...], pixels: bool) -> str:
    data = load_image(path).tobytes() if pixels else Path(path).read_bytes()
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: str | os.PathLike, pixels: bool = False) -> str:
    """Hex sha256 of a file's bytes, or with ``pixels=True`` of its decoded
    pixels ``load_image(path).tobytes()`` (independent of the file format).

    Memoised per process on (resolved path, size, mtime, ctime, inode): a file
    is hashed once, and again whenever it changes. (A same-size rewrite within
    the filesystem's timestamp tick would be missed; nothing here does that.)
    """
    path = Path(path).resolve()
    st = path.stat()
    stamp = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    return _sha256_at(str(path), stamp, pixels)


def _transforms():
    """torchvision's transforms module: v2 where it exists (torchvision ≥ 0.15)."""
    try:
        from torchvision.transforms import v2 as transforms
    except ImportError:  # pragma: no cover - older torchvision
        from torchvision import transforms
    return transforms


#: What :class:`PatchDataset` (``in_memory=True``) keeps of decoded images,
#: per data-loader worker: 512 MB.
IN_MEMORY_BYTES = 512 * 2**20


class PatchDataset:
    """Random square patches of photos, for ``torch.utils.data.DataLoader``.

    Item ``i`` is a fresh random ``patch_size``² crop of image
    ``i // patches_per_image``: a float32 tensor (3, P, P) in [0, 1], flipped
    left–right with probability 1/2 (and upside down too if ``vflip``; off by
    default: photos have an up and a down). Randomness comes from torch's
    generator, so ``torch.manual_seed`` repeats a run.

    An image whose short side is below P is first resized up (bilinear) to a
    short side of P: every patch pixel is then real, if interpolated, content;
    reflection padding would show the model mirror symmetries photos lack.

    Args:
        root_or_paths: a folder (searched with :func:`image_files`) or paths.
        patch_size: P, the patch side in pixels.
        patches_per_image: patches drawn from each image per epoch; the
            dataset's length is ``len(paths) * patches_per_image``.
        vflip: also flip upside down with probability 1/2.
        in_memory: keep decoded images (uint8) after first use, so an image
            is decoded once — up to :data:`IN_MEMORY_BYTES` per data-loader
            worker (COCO-128 needs ≈ 120 MB; this project's 970 training
            photos ≈ 700 MB); images met after the budget is full are read
            from disk each time, so a large set (COCO train2017, ~100 GB
            decoded; Colab has ~12 GB) never fills the RAM.

    Raises:
        DataError: no images, or (when an item is read) a corrupt file.

    See: *A discretized VAE codec* (data section).
    """

    def __init__(self, root_or_paths: str | os.PathLike | Sequence[str | os.PathLike],
                 patch_size: int = 64, patches_per_image: int = 1,
                 vflip: bool = False, in_memory: bool = False) -> None:
        if isinstance(root_or_paths, str | os.PathLike):
            self.paths = image_files(root_or_paths)
        else:
            self.paths = [Path(p) for p in root_or_paths]
        if not self.paths:
            raise DataError("PatchDataset got an empty list of images")
        if patch_size < 1 or patches_per_image < 1:
            raise ValueError("patch_size and patches_per_image must be ≥ 1, got "
                             f"{patch_size} and {patches_per_image}")
        self.patch_size, self.patches_per_image = patch_size, patches_per_image
        tf = _transforms()
        flips = [tf.RandomHorizontalFlip()]
        if vflip:
            flips.append(tf.RandomVerticalFlip())
        self._augment = tf.Compose([tf.RandomCrop(patch_size), *flips])
        self._grow = tf.Resize(patch_size)
        self._decoded: dict[int, np.ndarray] | None = {} if in_memory else None
        self._cached_bytes = 0

    def __len__(self) -> int:
        return len(self.paths) * self.patches_per_image

    def __getitem__(self, index: int) -> torch.Tensor:
        import torch

        k = index // self.patches_per_image
        path = self.paths[k]  # IndexError ends iteration past the last item
        if self._decoded is None:
            image = load_image(path)
        elif (image := self._decoded.get(k)) is None:
            image = load_image(path)
            if self._cached_bytes + image.nbytes <= IN_MEMORY_BYTES:
                self._decoded[k] = image
                self._cached_bytes += image.nbytes
        x = torch.from_numpy(image).permute(2, 0, 1)  # uint8 (3, H, W)
        if min(x.shape[-2:]) < self.patch_size:
            x = self._grow(x)
        return self._augment(x).float().div_(255.0)
