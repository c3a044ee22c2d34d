"""Comparing codecs: the JPEG baseline and the Bjøntegaard delta rate.

Backs the chapters *A discretized VAE codec* and *Results on Kodak*. JPEG is
measured live with Pillow (real file bytes, 8-bit PSNR); the BD-rate follows
Bjøntegaard (2001): a cubic fit of log-rate against PSNR per curve, averaged
over the PSNR range both curves cover.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .metrics import bpp, psnr_8bit, to_uint8

#: Pillow JPEG qualities of the default sweep: from ~0.15 to ~3 bpp on Kodak.
JPEG_QUALITIES = (5, 10, 15, 20, 30, 40, 50, 60, 70, 80, 90, 95)


@dataclass(frozen=True)
class RDPoint:
    """One operating point of one image: real bytes, bpp and 8-bit PSNR."""

    nbytes: int
    bpp: float
    psnr: float


def jpeg_point(image, quality: int) -> RDPoint:
    """Encode an RGB image with Pillow's JPEG (default 4:2:0) and measure it.

    ``image`` is uint8 HWC or float ``[0, 1]``; the rate is the byte size of
    the JPEG file Pillow writes, decoded back to measure PSNR.
    """
    pixels = to_uint8(image)
    data, decoded = _jpeg_round_trip(pixels, quality)
    height, width = pixels.shape[:2]
    return RDPoint(len(data), bpp(8 * len(data), height, width), psnr_8bit(pixels, decoded))


def _jpeg_round_trip(pixels: np.ndarray, quality: int) -> tuple[bytes, np.ndarray]:
    """Pillow JPEG file bytes of uint8 ``pixels`` and the decoded uint8 image."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=int(quality))
    data = buffer.getvalue()
    return data, np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def jpeg_curve(images: Sequence, qualities: Sequence[int] = JPEG_QUALITIES):
    """Mean bpp and mean PSNR over ``images`` per JPEG quality.

    Returns a dict ``{"quality": [...], "bpp": [...], "psnr": [...]}``
    (means over images, PSNR averaged in dB as the literature does).
    """
    rows = [[jpeg_point(img, q) for img in images] for q in qualities]
    return {
        "quality": list(qualities),
        "bpp": [float(np.mean([p.bpp for p in row])) for row in rows],
        "psnr": [float(np.mean([p.psnr for p in row])) for row in rows],
    }


def bd_rate(rate_ref, psnr_ref, rate_test, psnr_test) -> float:
    """Bjøntegaard delta rate of ``test`` against ``ref``, in percent.

    .. math:: \\Delta R = \\exp\\Big(\\frac{1}{P_1-P_0}\\int_{P_0}^{P_1}
       [\\hat r_t(P) - \\hat r_r(P)]\\,dP\\Big) - 1

    with :math:`\\hat r` a cubic fit of the natural log of the rate as a
    function of PSNR and :math:`[P_0, P_1]` the overlap of the two PSNR
    ranges. Negative means ``test`` needs fewer bits for the same quality.
    Each curve needs at least four points.
    """
    def fit(rate, psnr):
        rate, psnr = np.asarray(rate, float), np.asarray(psnr, float)
        if rate.size < 4 or rate.size != psnr.size:
            raise ValueError("BD-rate needs at least 4 (rate, PSNR) points per curve")
        if np.any(rate <= 0):
            raise ValueError("rates must be positive")
        return np.polyfit(psnr, np.log(rate), 3), psnr.min(), psnr.max()

    (p_ref, lo_r, hi_r), (p_test, lo_t, hi_t) = fit(rate_ref, psnr_ref), fit(
        rate_test, psnr_test
    )
    lo, hi = max(lo_r, lo_t), min(hi_r, hi_t)
    if hi <= lo:
        raise ValueError("the two curves share no PSNR range")
    int_ref, int_test = np.polyint(p_ref), np.polyint(p_test)
    mean_diff = (
        np.polyval(int_test, hi) - np.polyval(int_test, lo)
        - np.polyval(int_ref, hi) + np.polyval(int_ref, lo)
    ) / (hi - lo)
    return float((np.exp(mean_diff) - 1.0) * 100.0)


def psnr_at_rate(rates, psnrs, rate: float) -> float | None:
    """A curve's PSNR at ``rate``, interpolated linearly between its points;
    ``None`` outside the curve's rate range (no extrapolation)."""
    rates, psnrs = _sorted_by(rates, psnrs)
    return float(np.interp(rate, rates, psnrs)) if rates[0] <= rate <= rates[-1] else None


def rate_at_psnr(rates, psnrs, psnr: float) -> float | None:
    """The rate a curve needs for ``psnr``: log-rate interpolated linearly in
    PSNR (the quantity BD-rate averages); ``None`` outside its PSNR range.

    Point by point, ``1 - rate / rate_at_psnr(ref_rates, ref_psnrs, psnr)``
    is the share of bits saved against ``ref`` at equal quality.
    """
    psnrs, rates = _sorted_by(psnrs, rates)
    if not psnrs[0] <= psnr <= psnrs[-1]:
        return None
    return float(np.exp(np.interp(psnr, psnrs, np.log(rates))))


def _sorted_by(keys, values) -> tuple[np.ndarray, np.ndarray]:
    keys, values = np.asarray(keys, float), np.asarray(values, float)
    order = np.argsort(keys)
    return keys[order], values[order]


def evaluate_model(model, images: Sequence, names: Sequence[str] | None = None,
                   name: str | None = None) -> dict:
    """Compress and decompress every image through real ``.dvae`` file bytes.

    Args:
        model: a shipped model's name, or a model object (then give ``name``).
        images: uint8 ``(H, W, 3)`` arrays.
        names: one label per image (default ``image00``, ``image01``…).

    Returns:
        ``{"model", "images": [per-image rows], "bpp", "estimated_bpp",
        "psnr", "overhead_percent", "encode_s", "decode_s"}``: a row has the
        file's ``bytes`` and ``bpp`` (header included), the ``estimated_bpp``
        ``−Σ log₂ P / (H·W)``, the 8-bit ``psnr`` of the decoded file and the
        seconds to encode and to decode; the summary values are means over
        images (``overhead_percent``: mean of ``100·(file bits / −Σ log₂ P − 1)``).

    See: *A discretized VAE codec* (Kodak against JPEG).
    """
    import time

    from . import codec

    label = model if isinstance(model, str) else name
    obj = codec.load_shipped(model) if isinstance(model, str) else model
    rows = []
    for i, image in enumerate(images):
        start = time.perf_counter()
        encoded = codec.compress(image, model, name=name)
        middle = time.perf_counter()
        decoded = codec.decompress(encoded.data, model=obj)
        end = time.perf_counter()
        rows.append({
            "image": names[i] if names else f"image{i:02d}",
            "bytes": len(encoded.data), "bpp": encoded.bpp,
            "estimated_bpp": encoded.estimated_bpp,
            "psnr": psnr_8bit(image, decoded),
            "encode_s": middle - start, "decode_s": end - middle,
        })
    summary = {key: float(np.mean([r[key] for r in rows]))
               for key in ("bpp", "estimated_bpp", "psnr", "encode_s", "decode_s")}
    overhead = np.mean([100 * (r["bpp"] / r["estimated_bpp"] - 1) for r in rows])
    return {"model": label, **summary, "overhead_percent": float(overhead),
            "images": rows}


def model_series(name: str) -> str:
    """The series a model belongs to: its name without a trailing ``-<λ>``
    (``"hier12-845"`` → ``"hier12"``); one RD curve and BD-rate per series."""
    stem, _, last = name.rpartition("-")
    try:
        float(last)
    except ValueError:
        return name
    return stem or name


def series_bd_rates(results: Sequence[dict], jpeg: dict) -> dict[str, dict[str, float]]:
    """BD-rates (%) of every series of :func:`evaluate_model` results with at
    least four points (a cubic needs four): ``vs_jpeg`` against ``jpeg``
    (``{"bpp": [...], "psnr": [...]}``), ``vs_single`` against the ``single``
    series, and a hierarchical series against every shallower one
    (``hier12`` ``vs_hier3``). Negative: fewer bits for the same PSNR.
    """
    series: dict[str, list[dict]] = {}  # single-100 … single-5000 form "single"
    for result in results:
        series.setdefault(model_series(result["model"]), []).append(result)
    curves = {k: ([r["bpp"] for r in v], [r["psnr"] for r in v])
              for k, v in series.items() if len(v) >= 4}

    def depth(name: str) -> int:  # "hier12" -> 12; 0 for a name without digits
        digits = "".join(c for c in name if c.isdigit())
        return int(digits) if digits else 0

    table = {}
    for key, (rates, psnrs) in curves.items():
        row = {"vs_jpeg": bd_rate(jpeg["bpp"], jpeg["psnr"], rates, psnrs)}
        for other in curves:
            if other != key and (other == "single" or (
                    key.startswith("hier") and other.startswith("hier")
                    and depth(other) < depth(key))):
                row[f"vs_{other}"] = bd_rate(*curves[other], rates, psnrs)
        table[key] = row
    return table


#: Published Kodak RD numbers shipped with the package (numbers only, cited).
PUBLISHED_FILE = "reference/kodak_published.json"


def published_curve(key: str) -> dict:
    """A published Kodak RD curve shipped with the package.

    Args:
        key: ``"bmshj2018-factorized"``, ``"mbt2018-mean"`` or ``"mbt2018"``
            (CompressAI's re-implementations of Ballé et al. 2018 and Minnen et
            al. 2018, without and with the context model, with their pretrained
            weights, metrics on 8-bit reconstructions), or ``"qres-vae"``
            (Duan et al. 2023, the authors' 34 M model; PSNR on float
            reconstructions, see the entry's ``source``).

    Returns:
        ``{"label", "cite", "source", "bpp": [...], "psnr": [...]}``.
    """
    import json
    from pathlib import Path

    curves = json.loads((Path(__file__).parent / PUBLISHED_FILE).read_text())["curves"]
    if key not in curves:
        raise KeyError(f"no published curve {key!r}; have {sorted(curves)}")
    return curves[key]


def jpeg_at_rate(image, target_bpp: float) -> tuple[int, RDPoint, np.ndarray]:
    """The highest Pillow JPEG quality whose file stays within ``target_bpp``.

    For pictures "at matched rate": JPEG gets at most the bits of the codec it
    is compared with (quality 1 if even that is larger).

    Returns:
        ``(quality, point, decoded uint8 pixels)``.
    """
    pixels = to_uint8(image)
    lo, hi = 1, 95
    while lo < hi:  # bpp grows with quality: bisect the last one within budget
        mid = (lo + hi + 1) // 2
        if jpeg_point(pixels, mid).bpp <= target_bpp:
            lo = mid
        else:
            hi = mid - 1
    return lo, jpeg_point(pixels, lo), _jpeg_round_trip(pixels, lo)[1]
