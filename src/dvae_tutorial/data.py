"""Datasets: where the Kodak test images and the training photos come from.

Backs the data section of the chapter *A discretized VAE codec* and the
``dvae data`` command (:mod:`.data_cli`); image files become arrays, hashes,
tensors and random patches in :mod:`.images`, re-exported here. As in Ballé
et al. (2018) and Minnen et al. (2018), models train on random crops of photos
(COCO, Lin et al. 2014) and are tested on the 24 Kodak images (Franzen 1999).

Every dataset is looked up in this order:

1. a local mirror: the folder named by ``DVAE_DATA``, laid out as ``kodak/``,
   ``train/`` and ``val/`` (as ``shared/data`` is);
2. the download cache, :func:`cache_dir`;
3. a download (Kodak from r0k.us, the COCO 2017 zips) into the cache, unless
   ``DVAE_OFFLINE=1``. :func:`_download` is the package's only network access.

A Kodak image is accepted only if its bytes are the r0k.us original or its
decoded pixels have the sha256 in ``manifests/kodak.json``; the pixel hash
does not depend on the PNG encoding, so it also checks re-encoded mirrors.
"""

from __future__ import annotations

import functools
import http.client
import json
import os
import shutil
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from .errors import ChecksumError, DataError
from .images import (
    IMAGE_SUFFIXES,
    PatchDataset,
    file_sha256,
    image_files,
    load_image,
    to_tensor01,
)
from .runtime import env_flag

__all__ = [  # with the helpers of .images, re-exported
    "IMAGE_SUFFIXES", "PatchDataset", "file_sha256", "image_files", "load_image",
    "to_tensor01", "offline", "mirror_dir", "cache_dir", "kodak_manifest",
    "kodak_dir", "kodak_paths", "load_kodak", "kodak_images", "coco_dir",
    "train_dir", "val_dir"]

ENV_DATA, ENV_CACHE, ENV_OFFLINE = "DVAE_DATA", "DVAE_CACHE", "DVAE_OFFLINE"

#: Seconds a download waits for the server per read (urllib's timeout): short,
#: so that a machine without internet fails in seconds, not minutes.
DOWNLOAD_TIMEOUT_S = 15.0

#: Where the Kodak originals live (Franzen 1999); ``name`` is ``kodimNN.png``.
KODAK_URL = "https://r0k.us/graphics/kodak/kodak/{name}"


@dataclass(frozen=True)
class KodakImage:
    """One row of ``manifests/kodak.json`` (hashes as lower-case hex)."""

    name: str
    width: int
    height: int
    pixel_sha256: str
    r0k_sha256: str
    r0k_bytes: int
    r0k_byte_verified: bool


@dataclass(frozen=True)
class CocoZip:
    """A COCO 2017 image zip: its URL, exact size and the folder it unpacks to."""

    url: str
    nbytes: int
    folder: str


#: COCO 2017 image zips (Lin et al. 2014); sizes as pinned by public download
#: scripts and a wget log (see shared/data/README.md).
COCO_ZIPS = {
    "val": CocoZip("http://images.cocodataset.org/zips/val2017.zip",
                   815_585_330, "val2017"),
    "train": CocoZip("http://images.cocodataset.org/zips/train2017.zip",
                     19_336_861_798, "train2017"),
}


# --- where data lives ---------------------------------------------------------

def offline() -> bool:
    """True when ``DVAE_OFFLINE`` is set to a true-ish value: no downloads at all."""
    return env_flag(ENV_OFFLINE)


def mirror_dir() -> Path | None:
    """The local mirror named by ``DVAE_DATA``, or ``None`` when it is unset."""
    value = os.environ.get(ENV_DATA, "").strip()
    return Path(value).expanduser() if value else None


def cache_dir() -> Path:
    """The download cache: ``DVAE_CACHE``; else ``<repo>/data/cache`` in a source
    checkout (git-ignored); else ``~/.cache/dvae-tutorial``."""
    value = os.environ.get(ENV_CACHE, "").strip()
    if value:
        return Path(value).expanduser()
    repo = Path(__file__).resolve().parents[2]
    if (repo / "pyproject.toml").is_file() and (repo / "src").is_dir():
        return repo / "data" / "cache"
    return Path.home() / ".cache" / "dvae-tutorial"


def _looked_in(mirror_sub: str, cache_sub: str, found: str = "") -> str:
    mirror = mirror_dir()
    where = f"{ENV_DATA}={mirror}/{mirror_sub}{found}" if mirror else "DVAE_DATA unset"
    return f"looked in {where} and the cache {cache_dir() / cache_sub}"


def _download(url: str, dest: Path) -> None:
    """Copy ``url`` to ``dest``: the package's only network access."""
    from tqdm.auto import tqdm

    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
        total = int(response.headers.get("Content-Length") or 0)
        with open(dest, "wb") as out, tqdm(total=total, unit="B", unit_scale=True,
                                           desc=dest.name, disable=total < 5e7) as bar:
            while chunk := response.read(1 << 20):
                out.write(chunk)
                bar.update(len(chunk))


def _fetch(url: str, dest: Path, check: Callable[[Path], None]) -> None:
    """Download ``url`` to ``dest`` via ``dest.part``; ``check`` must pass first."""
    if offline():
        raise DataError(f"{ENV_OFFLINE}=1 forbids downloading {url}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    try:
        try:
            _download(url, part)
        except (OSError, ValueError, http.client.HTTPException) as err:
            raise DataError(f"could not download {url}: {err}") from err
        check(part)
        os.replace(part, dest)
    finally:
        part.unlink(missing_ok=True)


# --- Kodak --------------------------------------------------------------------

@functools.cache
def kodak_manifest() -> tuple[KodakImage, ...]:
    """The 24 Kodak images' sizes and hashes, from ``manifests/kodak.json``."""
    text = resources.files(__package__).joinpath("manifests/kodak.json").read_text()
    return tuple(KodakImage(**row) for row in json.loads(text)["images"])


def _check_kodak(path: Path, image: KodakImage, fix: str) -> None:
    if file_sha256(path) == image.r0k_sha256:
        return  # byte-identical to the r0k.us original
    got = file_sha256(path, pixels=True)
    if got != image.pixel_sha256:
        raise ChecksumError(
            f"{path} is not Kodak {image.name}: its decoded pixels have sha256 "
            f"{got[:16]}…, expected {image.pixel_sha256[:16]}…; {fix}")


def kodak_dir(download: bool = True) -> Path:
    """The folder holding the 24 verified Kodak PNGs (mirror, cache or download).

    Each image must be byte-identical to its r0k.us original or have the
    decoded-pixel sha256 of ``manifests/kodak.json``; hashes are memoised per
    process (:func:`file_sha256`), so repeated calls cost only ``stat``.

    Args:
        download: fetch missing images into the cache (unless ``DVAE_OFFLINE``).

    Returns:
        ``$DVAE_DATA/kodak`` if it holds all 24, else ``cache_dir() / "kodak"``.

    Raises:
        ChecksumError: an image there has the wrong pixels (names the file).
        DataError: images are missing and cannot be downloaded (says where it
            looked and what to do).

    See: *A discretized VAE codec* (data section).
    """
    images = kodak_manifest()
    mirror, cache = mirror_dir(), cache_dir() / "kodak"
    folders = ([mirror / "kodak"] if mirror else []) + [cache]
    for folder in folders:
        if all((folder / im.name).is_file() for im in images):
            fix = (f"replace it or unset {ENV_DATA}" if folder != cache
                   else "delete it and run `dvae data kodak`")
            for im in images:
                _check_kodak(folder / im.name, im, fix)
            return folder
    missing = [im for im in images if not (cache / im.name).is_file()]
    reason = f"{ENV_OFFLINE}=1 forbids downloads"
    if not download:
        reason = "downloading was not asked for"
    elif not offline():
        try:
            for im in missing:
                url = KODAK_URL.format(name=im.name)
                _fetch(url, cache / im.name, functools.partial(
                    _check_kodak, image=im, fix=f"download from {url} rejected"))
            return kodak_dir(download=False)
        except ChecksumError:
            raise
        except DataError as err:
            reason = str(err)
    have = f" ({sum((folders[0] / im.name).is_file() for im in images)}/24)"
    raise DataError(
        f"Kodak images missing: {_looked_in('kodak', 'kodak', have if mirror else '')}"
        f" ({24 - len(missing)}/24); {reason}. Fix: set {ENV_DATA} to a mirror "
        f"folder holding kodak/kodim01.png … kodim24.png, or run `dvae data kodak` "
        f"while online")


def kodak_paths(download: bool = True) -> list[Path]:
    """Paths of the 24 verified Kodak images, kodim01 … kodim24 in order
    (``download`` as in :func:`kodak_dir`)."""
    folder = kodak_dir(download)
    return [folder / im.name for im in kodak_manifest()]


def load_kodak(index: int) -> np.ndarray:
    """Kodak image number ``index`` — 1 … 24, as in ``kodimNN``, not 0-based —
    as a verified uint8 (H, W, 3) array, H × W = 512 × 768 or 768 × 512.

    See: *A discretized VAE codec* (data section).
    """
    if not 1 <= index <= 24:
        raise DataError(f"Kodak images are numbered 1 … 24, got {index}")
    return load_image(kodak_paths()[index - 1])


def kodak_images() -> list[np.ndarray]:
    """All 24 Kodak images as uint8 (H, W, 3) arrays (768×512 or 512×768)."""
    return [load_image(p) for p in kodak_paths()]


# --- training photos ----------------------------------------------------------

def coco_dir(split: str = "val", download: bool = True) -> Path:
    """COCO 2017 images in the cache, downloaded and unpacked if needed.

    The zip (:data:`COCO_ZIPS`) goes to ``<cache>/coco/`` through a ``.part``
    file, must have its exact pinned size, is unpacked, then deleted; a
    ``.complete`` marker makes later calls instant.

    Args:
        split: ``"val"`` (5,000 images, 0.8 GB) or ``"train"`` (118,287, 19.3 GB).
        download: allow the download (unless ``DVAE_OFFLINE``).

    Returns:
        ``cache_dir() / "coco" / "val2017"`` (or ``train2017``).
    """
    if split not in COCO_ZIPS:
        raise DataError(f"COCO split must be one of {sorted(COCO_ZIPS)}, got {split!r}")
    spec, root = COCO_ZIPS[split], cache_dir() / "coco"
    folder = root / spec.folder
    if (folder / ".complete").is_file():
        return folder
    hint = (f"COCO {spec.folder} is not in the cache {root}; run `dvae data coco "
            f"--split {split}` online, or set {ENV_DATA} to a mirror with {split}/")
    if not download:
        raise DataError(hint)
    archive = root / f"{spec.folder}.zip"
    if not archive.is_file():  # an archive already here passed the size check
        root.mkdir(parents=True, exist_ok=True)
        if shutil.disk_usage(root).free < 2 * spec.nbytes:
            raise DataError(f"{spec.url} needs {2 * spec.nbytes / 1e9:.1f} GB free "
                            f"in {root} (zip + images); point {ENV_CACHE} elsewhere")

        def check_size(part: Path) -> None:
            if part.stat().st_size != spec.nbytes:
                raise DataError(f"{spec.url} gave {part.stat().st_size:,} bytes, "
                                f"expected {spec.nbytes:,}; try again")
        try:
            _fetch(spec.url, archive, check_size)
        except DataError as err:
            raise DataError(f"{hint} ({err})") from err
    tmp = root / f".{spec.folder}.unpacking"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(tmp)  # zipfile drops ".." and absolute parts of names
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp / spec.folder, folder)
    except (zipfile.BadZipFile, OSError) as err:
        archive.unlink(missing_ok=True)
        raise DataError(f"cannot unpack {spec.folder}/ from {archive} ({err}); "
                        "run again to download it anew") from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    archive.unlink()
    (folder / ".complete").touch()
    return folder


def _photo_dir(split: str) -> Path:
    mirror = mirror_dir()
    if mirror and (mirror / split).is_dir():
        return mirror / split
    coco = cache_dir() / "coco" / COCO_ZIPS[split].folder
    if (coco / ".complete").is_file():
        return coco
    raise DataError(
        f"no {split} photos: {_looked_in(split, f'coco/{coco.name}')}. Fix: set "
        f"{ENV_DATA} to a mirror folder with train/ and val/, or run "
        f"`dvae data coco --split {split}` while online")


def train_dir() -> Path:
    """Training photos: ``$DVAE_DATA/train``, else COCO train2017 in the cache."""
    return _photo_dir("train")


def val_dir() -> Path:
    """Validation photos: ``$DVAE_DATA/val``, else COCO val2017 in the cache."""
    return _photo_dir("val")
