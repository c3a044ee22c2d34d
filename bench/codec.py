"""Acceptance bench for the codecs (issues 4, 5, 13): speed, size, portability on Kodak.

For each shipped model (or ``--model NAME``, repeatable) and each Kodak
image, times :func:`dvae_tutorial.codec.compress` (image → ``.dvae`` bytes,
the model's analysis transform included) and
:func:`dvae_tutorial.codec.decompress` (bytes → 8-bit pixels, the synthesis
transform included), best of ``--repeats`` per image, with
``torch.set_num_threads(--threads)`` (default 2, this machine's cores), after
one warm-up image. Prints ONE JSON object on stdout:

- per model: ``encode_s`` / ``decode_s`` / ``total_s`` (mean over images and
  the slowest image's ``max_total_s``), ``bpp`` from file bytes,
  ``estimated_bpp`` = −Σlog₂P / pixels, ``overhead_percent`` (mean over
  images of file bits / −Σlog₂P − 1, header included) and ``exact`` (every
  decoded image equals the in-memory reconstruction);
- ``cross_threads``: every file written with ``--threads`` threads and read
  with the other count of 1 and 2 (and the reverse), and each read once more
  with 3 threads and oneDNN off: how many decode (``decoded``, out of
  ``decodes`` = 4 × images) and how many to the same pixels as where they
  were written (``identical_pixels``);
- the targets: ``max_total_s`` ≤ 1.5 s, ``overhead_percent`` ≤ 1 %, and
  every file decodes to the same pixels in every setting (issue 17).

Usage: ``python bench/codec.py [--family single|hierarchical] [--model NAME]
[--images N] [--repeats R]`` (default: every shipped model)
(needs the Kodak images: ``DVAE_DATA`` or the cache).
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

from dvae_tutorial import codec
from dvae_tutorial.data import kodak_images
from dvae_tutorial.errors import CodingError
from dvae_tutorial.images import to_tensor01
from dvae_tutorial.metrics import to_uint8

#: The issues' targets: encode + decode seconds of one Kodak image per family
#: (issue 4: single-layer, issue 13: hierarchical), and the file's overhead.
TARGET_SECONDS = {"single": 1.5, "hierarchical": 1.5}
TARGET_OVERHEAD_PERCENT = 1.0


def best_of(repeats: int, fn):
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def bench_model(name: str, images: list, repeats: int) -> dict:
    model = codec.load_shipped(name)
    codec.decompress(codec.compress(images[0], name).data)  # warm-up
    rows = []
    for image in images:
        enc_s, encoded = best_of(repeats, lambda im=image: codec.compress(im, name))
        dec_s, pixels = best_of(repeats, lambda e=encoded: codec.decompress(e.data))
        with torch.no_grad():
            ref = to_uint8(model(to_tensor01(image)[None]).x_hat[0].permute(1, 2, 0))
        rows.append((enc_s, dec_s, encoded.bpp, encoded.estimated_bpp,
                     bool((pixels == ref).all())))
    enc, dec, rate, est, exact = (np.array(c) for c in zip(*rows, strict=True))
    cross = cross_threads(name, images)
    family = getattr(model, "family", "single")
    return {
        "model": name, "family": family, "images": len(images),
        "encode_s": round(float(enc.mean()), 3), "decode_s": round(float(dec.mean()), 3),
        "total_s": round(float((enc + dec).mean()), 3),
        "max_total_s": round(float((enc + dec).max()), 3),
        "bpp": round(float(rate.mean()), 4), "estimated_bpp": round(float(est.mean()), 4),
        "overhead_percent": round(float(np.mean(100 * (rate / est - 1))), 3),
        "exact": bool(exact.all()), "cross_threads": cross,
        "target_max_total_s": TARGET_SECONDS[family],
    }


def cross_threads(name: str, images: list) -> dict:
    """Write with one thread count, read with the other (1 ↔ 2), both ways;
    and read each file once more with 3 threads and oneDNN off."""
    threads, decoded, identical = torch.get_num_threads(), 0, 0
    other = 1 if threads != 1 else 2
    try:
        for write, read in ((threads, other), (other, threads)):
            for image in images:
                torch.set_num_threads(write)
                data = codec.compress(image, name).data
                here = codec.decompress(data)
                for count, onednn in ((read, True), (3, False)):
                    torch.set_num_threads(count)
                    torch.backends.mkldnn.enabled = onednn
                    try:
                        there = codec.decompress(data)
                    except CodingError:
                        continue
                    finally:
                        torch.backends.mkldnn.enabled = True
                    decoded += 1
                    identical += bool((here == there).all())
    finally:
        torch.set_num_threads(threads)
    return {"threads": [threads, other], "also_read_with": "3 threads, oneDNN off",
            "files": 2 * len(images), "decodes": 4 * len(images),
            "decoded": decoded, "identical_pixels": identical}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", action="append")
    parser.add_argument("--family", choices=sorted(TARGET_SECONDS))
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    images = list(kodak_images())[: args.images]
    names = args.model or [i.name for i in codec.shipped_models(args.family)]
    results = [bench_model(name, images, args.repeats) for name in names]
    print(json.dumps({
        "bench": "codec", "device": f"cpu {platform.machine()}, "
        f"{torch.get_num_threads()} threads", "torch": torch.__version__,
        "models": results,
        "target_overhead_percent": TARGET_OVERHEAD_PERCENT,
        "meets_targets": all(r["max_total_s"] <= r["target_max_total_s"] and r["exact"]
                             and r["overhead_percent"] <= TARGET_OVERHEAD_PERCENT
                             and r["cross_threads"]["decoded"]
                             == r["cross_threads"]["identical_pixels"]
                             == r["cross_threads"]["decodes"] for r in results),
    }, indent=1))


if __name__ == "__main__":
    main()
