"""Tests of dvae_tutorial.data / dvae_tutorial.images and the `dvae data` command.

The Kodak and photo tests read the mirror named by DVAE_DATA (else
../shared/data beside the repository) and are skipped only when it is absent.
No test touches the network: every test runs with DVAE_OFFLINE=1 and a
downloader that fails loudly, except those that put a fake downloader in place.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import urllib.error
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dvae_tutorial import data, images
from dvae_tutorial.cli import main
from dvae_tutorial.errors import ChecksumError, DataError

REPO = Path(__file__).resolve().parents[1]
MIRROR = Path(os.environ.get("DVAE_DATA") or REPO.parent / "shared" / "data").resolve()
GRAY_COCO = MIRROR / "train" / "coco128_train2017" / "000000000086.jpg"
needs_mirror = pytest.mark.skipif(
    not (MIRROR / "kodak" / "kodim24.png").is_file(),
    reason=f"dataset mirror {MIRROR} is absent (set DVAE_DATA)")


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """Cache in tmp, the shared mirror, no network."""
    monkeypatch.setenv("DVAE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("DVAE_DATA", str(MIRROR))
    monkeypatch.setenv("DVAE_OFFLINE", "1")

    def no_network(url, dest):
        raise AssertionError(f"a test tried to download {url}")

    monkeypatch.setattr(data, "_download", no_network)


def online_with(monkeypatch, downloader):
    """Allow downloads, served by ``downloader(url, dest)``; returns the URL log."""
    calls = []

    def logged(url, dest):
        calls.append(url)
        downloader(url, dest)

    monkeypatch.delenv("DVAE_OFFLINE")
    monkeypatch.setattr(data, "_download", logged)
    return calls


def save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, "PNG")
    return path


def one_pixel_changed(name: str, dest: Path) -> Path:
    x = data.load_image(MIRROR / "kodak" / name)
    x[100, 200, 1] ^= 1
    return save(dest, x)


# --- Kodak ---------------------------------------------------------------------

@needs_mirror
def test_manifest_matches_the_mirror_lists():
    rows = [line.split() for line in
            (MIRROR / "kodak" / "PIXEL_SHA256").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    manifest = data.kodak_manifest()
    assert [im.name for im in manifest] == [f"kodim{i:02d}.png" for i in range(1, 25)]
    assert [(im.pixel_sha256, im.name, f"{im.width}x{im.height}")
            for im in manifest] == [tuple(r) for r in rows]
    assert sum(im.r0k_bytes for im in manifest) == 15_394_305  # shared/data README


@needs_mirror
def test_all_24_kodak_images_verify_from_the_mirror():
    assert data.kodak_dir() == MIRROR / "kodak"
    manifest = data.kodak_manifest()
    for path, im, x in zip(data.kodak_paths(), manifest, data.kodak_images(),
                           strict=True):
        assert data.file_sha256(path, pixels=True) == im.pixel_sha256
        assert x.shape == (im.height, im.width, 3) and x.dtype == np.uint8
    assert data.load_kodak(4).shape == (768, 512, 3)  # a portrait one
    with pytest.raises(DataError, match="1 … 24"):
        data.load_kodak(0)


@needs_mirror
def test_a_changed_pixel_in_the_mirror_raises_checksum_error(monkeypatch, tmp_path):
    kodak = tmp_path / "mirror" / "kodak"
    kodak.mkdir(parents=True)
    for im in data.kodak_manifest():
        if im.name != "kodim07.png":
            (kodak / im.name).symlink_to(MIRROR / "kodak" / im.name)
    one_pixel_changed("kodim07.png", kodak / "kodim07.png")
    monkeypatch.setenv("DVAE_DATA", str(tmp_path / "mirror"))
    with pytest.raises(ChecksumError, match="kodim07.png"):
        data.kodak_dir()


def test_missing_kodak_offline_says_where_it_looked(monkeypatch, tmp_path):
    monkeypatch.setenv("DVAE_DATA", str(tmp_path / "empty"))
    with pytest.raises(DataError) as info:
        data.kodak_dir()
    message = str(info.value)
    for needle in ("DVAE_DATA", str(tmp_path / "empty"), str(data.cache_dir()),
                   "DVAE_OFFLINE=1", "dvae data kodak", "(0/24)"):
        assert needle in message
    assert not isinstance(info.value, ChecksumError)


def test_a_network_error_gives_data_error_after_one_try(monkeypatch, tmp_path):
    def unreachable(url, dest):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    calls = online_with(monkeypatch, unreachable)
    monkeypatch.setenv("DVAE_DATA", str(tmp_path / "empty"))
    with pytest.raises(DataError, match="could not download https://r0k.us.*DVAE_DATA"):
        data.kodak_dir()
    assert len(calls) == 1
    assert not list((data.cache_dir() / "kodak").glob("*"))  # no .part left behind


@needs_mirror
def test_download_lands_in_the_cache_and_verifies(monkeypatch, tmp_path):
    # The mirror's files are re-encoded: their bytes are not r0k.us's, so the
    # decoded-pixel hash is what accepts them.
    assert data.file_sha256(MIRROR / "kodak" / "kodim02.png") != \
        data.kodak_manifest()[1].r0k_sha256
    calls = online_with(monkeypatch, lambda url, dest: shutil.copyfile(
        MIRROR / "kodak" / url.rsplit("/", 1)[-1], dest))
    monkeypatch.setenv("DVAE_DATA", str(tmp_path / "empty"))
    cache = data.cache_dir() / "kodak"
    assert data.kodak_dir() == cache
    assert calls[0] == "https://r0k.us/graphics/kodak/kodak/kodim01.png"
    assert len(calls) == 24 and sorted(os.listdir(cache)) == sorted(
        im.name for im in data.kodak_manifest())
    (cache / "kodim09.png").unlink()
    assert data.kodak_dir() == cache and len(calls) == 25  # only the missing one
    monkeypatch.setenv("DVAE_OFFLINE", "1")
    assert data.kodak_dir() == cache  # the cache serves offline


@needs_mirror
def test_a_wrong_download_is_rejected_and_not_kept(monkeypatch, tmp_path):
    def serve(url, dest):
        name = url.rsplit("/", 1)[-1]
        if name == "kodim05.png":
            one_pixel_changed(name, dest)
        else:
            shutil.copyfile(MIRROR / "kodak" / name, dest)

    online_with(monkeypatch, serve)
    monkeypatch.setenv("DVAE_DATA", str(tmp_path / "empty"))
    with pytest.raises(ChecksumError, match="kodim05.png"):
        data.kodak_dir()
    left = sorted(os.listdir(data.cache_dir() / "kodak"))
    assert left == [f"kodim0{i}.png" for i in range(1, 5)]


def test_file_sha256_follows_changes_to_the_file(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"aaaa")
    first = data.file_sha256(path)
    assert first == "61be55a8e2f6b4e172338bddf184d6dbee29c98853e0a0485ecee7f27b9af0b4"
    path.write_bytes(b"bbbb")  # same size: the stamp changes through mtime
    os.utime(path, ns=(1, path.stat().st_mtime_ns + 10**9))
    assert data.file_sha256(path) != first
    assert data.file_sha256(path) == hashlib.sha256(b"bbbb").hexdigest()
    path.write_bytes(b"aaaaa")  # another size
    assert data.file_sha256(path) == hashlib.sha256(b"aaaaa").hexdigest()


# --- cache, COCO, photo folders -----------------------------------------------------

def test_default_cache_is_repo_data_cache_in_a_checkout(monkeypatch):
    monkeypatch.delenv("DVAE_CACHE")
    from_checkout = Path(data.__file__).resolve().parents[2] == REPO
    assert data.cache_dir() == (REPO / "data" / "cache" if from_checkout
                                else Path.home() / ".cache" / "dvae-tutorial")


def tiny_coco_zip(tmp_path: Path) -> Path:
    zpath = tmp_path / "served" / "val2017.zip"
    zpath.parent.mkdir()
    with zipfile.ZipFile(zpath, "w") as zf:
        for name, color in (("000000000139.jpg", 40), ("sub/000000000285.PNG", 200)):
            buf = io.BytesIO()
            Image.new("RGB", (96, 80), (color, 0, 0)).save(buf, name[-3:].replace(
                "jpg", "jpeg"))
            zf.writestr(f"val2017/{name}", buf.getvalue())
        zf.writestr("val2017/README.txt", "not an image")
    return zpath


def test_coco_download_checks_size_and_unpacks_into_the_cache(monkeypatch, tmp_path):
    zpath = tiny_coco_zip(tmp_path)
    calls = online_with(monkeypatch, lambda url, dest: shutil.copyfile(zpath, dest))
    spec = data.COCO_ZIPS["val"]
    monkeypatch.setitem(data.COCO_ZIPS, "val", data.CocoZip(
        spec.url, zpath.stat().st_size, spec.folder))
    folder = data.coco_dir("val")
    assert folder == data.cache_dir() / "coco" / "val2017"
    assert calls == ["http://images.cocodataset.org/zips/val2017.zip"]
    assert [p.relative_to(folder).as_posix() for p in data.image_files(folder)] == [
        "000000000139.jpg", "sub/000000000285.PNG"]
    assert sorted(os.listdir(folder.parent)) == ["val2017"]  # zip removed
    assert data.coco_dir("val") == folder and len(calls) == 1
    monkeypatch.setenv("DVAE_DATA", str(tmp_path / "empty"))
    assert data.val_dir() == folder  # the cache stands in for a mirror


def test_coco_download_of_the_wrong_size_is_refused(monkeypatch, tmp_path):
    zpath = tiny_coco_zip(tmp_path)
    online_with(monkeypatch, lambda url, dest: shutil.copyfile(zpath, dest))
    with pytest.raises(DataError, match="815,585,330"):
        data.coco_dir("val")
    assert not list((data.cache_dir() / "coco").iterdir())


def test_coco_offline_and_bad_split(monkeypatch):
    with pytest.raises(DataError, match="DVAE_DATA.*DVAE_OFFLINE=1"):
        data.coco_dir("val")
    with pytest.raises(DataError, match="split"):
        data.coco_dir("test")


@needs_mirror
def test_train_and_val_folders_come_from_the_mirror(monkeypatch, tmp_path):
    assert data.train_dir() == MIRROR / "train"
    assert len(data.image_files(data.train_dir())) == 970  # shared/data README
    assert len(data.image_files(data.val_dir())) == 228
    monkeypatch.setenv("DVAE_DATA", str(tmp_path / "empty"))
    with pytest.raises(DataError, match="DVAE_DATA.*dvae data coco --split train"):
        data.train_dir()


def test_image_files_is_recursive_case_blind_and_sorted(tmp_path):
    for name in ("b.JPG", "a.png", "notes.txt", "sub/d.WebP", "c.jpeg", "x.gif",
                 "sub/a.BMP"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    names = [p.relative_to(tmp_path).as_posix() for p in data.image_files(tmp_path)]
    assert names == ["a.png", "b.JPG", "c.jpeg", "sub/a.BMP", "sub/d.WebP"]
    with pytest.raises(DataError, match="does not exist"):
        data.image_files(tmp_path / "nothing_here")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        data.image_files(tmp_path / "empty")


# --- images and patches ----------------------------------------------------------

def test_load_image_converts_every_mode_to_rgb(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    rgba = np.dstack([rgb, np.full((5, 7), 9, np.uint8)])
    assert np.array_equal(data.load_image(save(tmp_path / "a.png", rgba)), rgb)
    gray = data.load_image(save(tmp_path / "g.png", rgb[..., 0]))
    assert gray.shape == (5, 7, 3) and np.array_equal(gray[..., 2], rgb[..., 0])
    palette = Image.fromarray(rgb).quantize(8)
    palette.save(tmp_path / "p.png")
    x = data.load_image(tmp_path / "p.png")
    assert x.shape == (5, 7, 3) and x.dtype == np.uint8 and x.flags.writeable
    assert np.array_equal(x, np.asarray(palette.convert("RGB")))


def test_to_tensor01():
    x = np.array([[[0, 128, 255]]], np.uint8)
    t = data.to_tensor01(x)
    assert t.shape == (3, 1, 1) and t.dtype == torch.float32
    assert torch.equal(t.flatten(), torch.tensor([0, 128, 255]) / 255.0)
    with pytest.raises(DataError, match="uint8"):
        data.to_tensor01(x.astype(np.float32))


@needs_mirror
def test_patches_are_float_rgb_in_unit_range():
    ds = data.PatchDataset(MIRROR / "val" / "coco128_val2017", patch_size=64)
    assert len(ds) == 128
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4, shuffle=True)))
    assert batch.shape == (4, 3, 64, 64) and batch.dtype == torch.float32
    assert 0.0 <= batch.min() and batch.max() <= 1.0 and batch.std() > 0.01


@needs_mirror
def test_a_grayscale_photo_gives_three_equal_channels():
    assert Image.open(GRAY_COCO).mode == "L"  # the premise
    x = data.PatchDataset([GRAY_COCO], patch_size=64)[0]
    assert x.shape == (3, 64, 64)
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2]) and x.std() > 0


@pytest.mark.parametrize("api", ["v2", "v1"])
def test_a_patch_is_a_crop_of_the_image_possibly_flipped(api, monkeypatch, tmp_path):
    if api == "v1":  # what older torchvision (no transforms.v2) gets
        import torchvision.transforms

        monkeypatch.setattr(images, "_transforms", lambda: torchvision.transforms)
    image = np.random.default_rng(1).integers(0, 256, (70, 80, 3), dtype=np.uint8)
    ds = data.PatchDataset([save(tmp_path / "n.png", image)], patch_size=64,
                           vflip=True)
    img = torch.from_numpy(image).permute(2, 0, 1)
    seen = set()
    torch.manual_seed(0)
    for _ in range(60):
        patch = (ds[0] * 255).round().to(torch.uint8)
        found = [(h, v) for h in (0, 1) for v in (0, 1)
                 for i in range(7) for j in range(17)
                 if torch.equal(_flip(patch, h, v), img[:, i:i + 64, j:j + 64])]
        assert found, "patch is not a crop of the image"
        seen.update(found)
    assert seen == {(0, 0), (0, 1), (1, 0), (1, 1)}
    torch.manual_seed(5)
    a = ds[0]
    torch.manual_seed(5)
    assert torch.equal(a, ds[0])


def _flip(x: torch.Tensor, h: int, v: int) -> torch.Tensor:
    return x.flip([d for d, on in ((-1, h), (-2, v)) if on]) if h or v else x


@pytest.mark.parametrize("api", ["v2", "v1"])
def test_a_small_image_is_resized_up(api, monkeypatch, tmp_path):
    if api == "v1":
        import torchvision.transforms

        monkeypatch.setattr(images, "_transforms", lambda: torchvision.transforms)
    rows = np.repeat(np.arange(0, 200, 10, dtype=np.uint8)[:, None, None], 40, 1)
    path = save(tmp_path / "small.png", np.repeat(rows, 3, 2))  # 20 x 40 ramp
    x = data.PatchDataset([path], patch_size=64)[0] * 255
    assert x.shape == (3, 64, 64)
    # Resized (not padded): the ramp spans all 64 rows, still rising, 0 → 190.
    steps = x[:, 1:] - x[:, :-1]
    assert steps.min() >= 0 and 0 < steps.max() <= 10
    assert torch.allclose(x[:, 0], torch.tensor(0.0)) and \
        torch.allclose(x[:, -1], torch.tensor(190.0))


def test_patches_per_image_and_in_memory(monkeypatch, tmp_path):
    red = save(tmp_path / "r.png", np.full((64, 64, 3), (255, 0, 0), np.uint8))
    blue = save(tmp_path / "b.png", np.full((64, 64, 3), (0, 0, 255), np.uint8))
    decoded = []
    real = images.load_image
    monkeypatch.setattr(images, "load_image", lambda p: decoded.append(p) or real(p))
    ds = data.PatchDataset([red, blue], patch_size=32, patches_per_image=3,
                           in_memory=True)
    assert len(ds) == 6
    assert [int(ds[i][0, 0, 0]) for i in range(6)] == [1, 1, 1, 0, 0, 0]
    assert decoded == [red, blue]
    with pytest.raises(IndexError):
        ds[6]
    # Over the budget (room for one 64×64 image): the rest is read from disk.
    monkeypatch.setattr(images, "IN_MEMORY_BYTES", 64 * 64 * 3)
    decoded.clear()
    ds = data.PatchDataset([red, blue], patch_size=32, patches_per_image=3,
                           in_memory=True)
    assert [int(ds[i][0, 0, 0]) for i in range(6)] == [1, 1, 1, 0, 0, 0]
    assert decoded == [red, blue, blue, blue]


def test_a_corrupt_file_gives_data_error_naming_it(tmp_path):
    good = io.BytesIO()
    Image.new("RGB", (100, 100), "white").save(good, "jpeg")
    bad = tmp_path / "truncated.jpg"
    bad.write_bytes(good.getvalue()[:300])
    text = tmp_path / "text.png"
    text.write_text("not a png")
    for path in (bad, text):
        with pytest.raises(DataError, match=path.name):
            data.load_image(path)
    with pytest.raises(DataError, match="truncated.jpg"):
        data.PatchDataset(tmp_path, patch_size=16)[1]


# --- the `dvae data` command ---------------------------------------------------

@needs_mirror
def test_cli_status_and_kodak(capsys):
    assert main(["data", "status"]) == 0
    out = capsys.readouterr().out
    assert "24/24 verified" in out and "970 images" in out and "228 images" in out
    assert main(["data", "kodak"]) == 0
    assert capsys.readouterr().out.strip() == str(MIRROR / "kodak")


def test_cli_kodak_offline_without_data_fails_in_one_line(monkeypatch, tmp_path,
                                                          capsys):
    monkeypatch.setenv("DVAE_DATA", str(tmp_path / "empty"))
    assert main(["data", "kodak"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dvae data: error: ") and err.count("\n") == 1
    assert "DVAE_DATA" in err and "Traceback" not in err
    assert main(["data", "status"]) == 0
    assert "missing" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["--help"], ["data", "--help"]])
def test_cli_help(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "data" in out and ("status" in out) == (argv[0] == "data")
