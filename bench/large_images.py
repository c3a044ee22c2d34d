"""Bench for issue 17: peak memory and seconds per megapixel on phone-sized photos.

For each size (default 1, 12 and 48 megapixels: 1152×864, 4000×3000,
8000×6000) and each model (default ``single-845`` and ``hier12-845``, one per
family), runs ``dvae compress`` and ``dvae decompress`` on a test photo of
that size, each in a fresh subprocess (so its peak resident memory is its
own), and prints ONE JSON object: per case ``seconds``, ``seconds_per_mp``,
``peak_rss_gb`` (``ru_maxrss`` of the child, from :mod:`resource`), the
file's ``bpp`` and, after decoding, ``psnr`` against the photo.

The photo is a mosaic of the 24 Kodak images (768×512, each placed whole,
turned where the row needs it; the last row and column cropped): real
photographic content at the size a phone writes, without shipping a
third-party photo. With ``--whole`` the transforms run on the whole image
(``tiling.TILE`` set past the image's side), which is how the codec ran
before tiling: the "before" numbers. ``--compare-whole`` runs both and
reports whether the tiled file and decoded pixels equal the whole-image
ones (``same_file``, ``pixels_differing``, ``max_pixel_difference``; see
:mod:`dvae_tutorial.tiling` for why they are the same up to float32
summation order), and the seconds of each.

Targets (issue 17): peak RSS ≤ 2 GB at 12 MP, 48 MP completes, seconds per MP
no worse than whole-image coding. A 48 MP photo is over the codec's default
pixel budget (``codec.MAX_PIXELS``, 16.8 MP), so the commands get
``--max-pixels``, as a user with such a photo would.

Usage: ``python bench/large_images.py [--sizes 1 12 48] [--model NAME ...]
[--whole | --compare-whole] [--threads 2]`` (needs the Kodak images:
``DVAE_DATA`` or the cache).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from dvae_tutorial import tiling
from dvae_tutorial.data import kodak_images
from dvae_tutorial.metrics import psnr_8bit as psnr

#: Megapixels → (width, height) of the test photo.
SIZES = {1: (1152, 864), 12: (4000, 3000), 48: (8000, 6000)}
TARGET_GB_AT_12MP = 2.0

#: The child: run one CLI command in-process, then print its own peak RSS.
_CHILD = """
import resource, sys, time
from dvae_tutorial import tiling
if {whole}:
    tiling.TILE = 10**6
from dvae_tutorial.cli import main
start = time.perf_counter()
code = main({argv!r})
seconds = time.perf_counter() - start
print("RESULT", code, seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def mosaic(width: int, height: int) -> np.ndarray:
    """A ``height × width`` RGB photo tiled from the Kodak images (landscape
    ones as they are, portrait ones turned), row by row."""
    images = [img if img.shape[1] > img.shape[0] else np.rot90(img)
              for img in kodak_images()]
    th, tw = images[0].shape[:2]
    out = np.empty((height, width, 3), np.uint8)
    k = 0
    for top in range(0, height, th):
        for left in range(0, width, tw):
            img = images[k % len(images)]
            k += 1
            h, w = min(th, height - top), min(tw, width - left)
            out[top:top + h, left:left + w] = img[:h, :w]
    return out


def run_child(argv: list[str], whole: bool, threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    code = _CHILD.format(whole=whole, argv=argv)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True,
                          text=True, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")]
    if proc.returncode or not lines:
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1],
                "returncode": proc.returncode}
    _, rc, seconds, rss_kb = lines[-1].split()
    return {"returncode": int(rc), "seconds": round(float(seconds), 2),
            "peak_rss_gb": round(int(rss_kb) / 2**20, 3)}


def code_photo(photo: Path, original: np.ndarray, name: str, out: Path,
               whole: bool, threads: int) -> dict:
    """Compress then decompress ``photo`` with ``name`` in two subprocesses."""
    result = {"tiled": not whole}
    width, height = original.shape[1], original.shape[0]
    dvae, png = out / f"{photo.stem}.dvae", out / f"{photo.stem}.png"
    budget = ["--max-pixels", str(max(width * height, 2**24))]  # 48 MP: over the default
    for op, argv in (("compress", ["compress", str(photo), "--model", name,
                                   "--out-dir", str(out), "--force", *budget]),
                     ("decompress", ["decompress", str(dvae), "--out-dir", str(out),
                                     "--force", *budget])):
        step = run_child(argv, whole, threads)
        if "seconds" in step:
            step["seconds_per_mp"] = round(step["seconds"] * 1e6 / (width * height), 3)
        result[op] = step
        print(name, photo.stem, "whole" if whole else "tiled", op, step,
              file=sys.stderr, flush=True)
    if dvae.exists():
        result["bpp"] = round(8 * dvae.stat().st_size / (width * height), 4)
    if png.exists():
        result["psnr"] = round(psnr(original, np.asarray(Image.open(png))), 3)
    return result


def compare(tiled: Path, whole: Path, stem: str) -> dict:
    """Are the tiled run's file and pixels the whole-image run's?"""
    a, b = (np.asarray(Image.open(d / f"{stem}.png")).astype(int) for d in (tiled, whole))
    diff = np.abs(a - b)
    return {"same_file": (tiled / f"{stem}.dvae").read_bytes()
            == (whole / f"{stem}.dvae").read_bytes(),
            "pixels_differing": int((diff > 0).sum()),
            "max_pixel_difference": int(diff.max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=sorted(SIZES),
                        choices=sorted(SIZES))
    parser.add_argument("--model", nargs="+", default=["single-845", "hier12-845"])
    parser.add_argument("--whole", action="store_true",
                        help="no tiling (the codec before issue 17)")
    parser.add_argument("--compare-whole", action="store_true",
                        help="also code each photo whole; compare files and pixels")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    cases = []
    with tempfile.TemporaryDirectory() as tmp:
        for mp in args.sizes:
            width, height = SIZES[mp]
            photo = Path(tmp, f"photo{mp}mp.png")
            original = mosaic(width, height)
            Image.fromarray(original).save(photo, compress_level=1)
            for name in args.model:
                modes = [False, True] if args.compare_whole else [args.whole]
                runs = [code_photo(photo, original, name, Path(tmp, f"{name}-{whole}"),
                                   whole, args.threads) for whole in modes]
                case = {"model": name, "megapixels": round(width * height / 1e6, 2),
                        "size": f"{width}x{height}", **runs[0]}
                if args.compare_whole:
                    case["whole"] = runs[1]
                    case.update(compare(Path(tmp, f"{name}-False"),
                                        Path(tmp, f"{name}-True"), photo.stem))
                cases.append(case)
    at12 = [c["compress"].get("peak_rss_gb", 1e9) for c in cases if c["megapixels"] == 12]
    at12 += [c["decompress"].get("peak_rss_gb", 1e9) for c in cases
             if c["megapixels"] == 12]
    print(json.dumps({
        "bench": "large_images", "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": platform.machine(), "threads": args.threads,
        "tile_latents": tiling.TILE,
        "halo_latents": {"gdn": tiling.HALO_GDN, "residual_blocks": tiling.HALO},
        "cases": cases,
        "targets": {"peak_rss_gb_at_12mp": TARGET_GB_AT_12MP,
                    "met_12mp": bool(at12) and max(at12) <= TARGET_GB_AT_12MP,
                    "all_completed": all(c["compress"].get("returncode") == 0
                                         and c["decompress"].get("returncode") == 0
                                         for c in cases)},
    }, indent=1))


if __name__ == "__main__":
    main()
