"""Comparing codecs: JPEG, WebP and AVIF baselines, MS-SSIM and the BD-rate.

Backs the chapters *A discretized VAE codec* and *Results*. The classical
codecs are measured live with Pillow (real file bytes, 8-bit PSNR, the same
images as the models); MS-SSIM comes from the maintained ``pytorch-msssim``
(:func:`ms_ssim_8bit`); the BD-rate follows Bjøntegaard (2001): a cubic fit
of log-rate against quality (PSNR, or MS-SSIM in dB) per curve, averaged
over the quality range both curves cover. :func:`evaluation_report` is what
``dvae evaluate`` writes with ``--json``.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import DataError, DVAEError
from .metrics import bpp, psnr_8bit, to_uint8

#: Pillow JPEG qualities of the default sweep: from ~0.15 to ~3 bpp on Kodak.
JPEG_QUALITIES = (5, 10, 15, 20, 30, 40, 50, 60, 70, 80, 90, 95)
#: Pillow WebP qualities (lossy, method 4, 4:2:0): ~0.13 to ~2.8 bpp on Kodak.
WEBP_QUALITIES = (1, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95)
#: Pillow AVIF qualities (libavif, speed 6, 4:2:0): ~0.09 to ~3.2 bpp on Kodak.
AVIF_QUALITIES = (10, 20, 30, 40, 50, 60, 70, 80, 90, 95)
#: The classical codecs :func:`codec_curve` measures, and their sweeps.
CODEC_QUALITIES = {"jpeg": JPEG_QUALITIES, "webp": WEBP_QUALITIES,
                   "avif": AVIF_QUALITIES}
#: Pillow's format name and its ``PIL.features`` name per codec.
_PILLOW_FORMATS = {"jpeg": ("JPEG", "jpg"), "webp": ("WEBP", "webp"),
                   "avif": ("AVIF", "avif")}
#: MS-SSIM's five scales with its 11-tap window need the short side of an
#: image above (11 − 1)·2⁴ = 160 pixels; smaller images get no MS-SSIM.
MS_SSIM_MIN_SIDE = 161


@dataclass(frozen=True)
class RDPoint:
    """One operating point of one image: real bytes, bpp, 8-bit PSNR and
    (when asked for) MS-SSIM, ``None`` for an image under
    :data:`MS_SSIM_MIN_SIDE` or when not measured."""

    nbytes: int
    bpp: float
    psnr: float
    ms_ssim: float | None = None


def available_codecs() -> list[str]:
    """The codecs of :data:`CODEC_QUALITIES` that the installed Pillow writes
    (JPEG always; WebP and AVIF when Pillow was built with libwebp/libavif)."""
    from PIL import features

    return [name for name, (_, feature) in _PILLOW_FORMATS.items()
            if name == "jpeg" or features.check(feature)]


def check_codec(name: str) -> None:
    """Raise :class:`~dvae_tutorial.errors.DVAEError` (one line) for a codec
    that is not in :data:`CODEC_QUALITIES` or that this Pillow cannot write."""
    import PIL

    if name not in _PILLOW_FORMATS:
        raise DVAEError(f"unknown codec {name!r}; known: {', '.join(_PILLOW_FORMATS)}")
    if name not in available_codecs():
        raise DVAEError(f"the installed Pillow {PIL.__version__} cannot write "
                        f"{name.upper()} (PIL.features.check({_PILLOW_FORMATS[name][1]!r})"
                        f" is False); it writes {', '.join(available_codecs())}")


def codec_point(image, codec: str, quality: int, ms_ssim: bool = False) -> RDPoint:
    """Encode an RGB image with Pillow's ``codec`` at ``quality`` and measure it.

    ``image`` is uint8 HWC or float ``[0, 1]``; the rate is the byte size of
    the file Pillow writes (every option but ``quality`` at Pillow's default:
    4:2:0 chroma for all three), decoded back to 8-bit RGB to measure PSNR and,
    with ``ms_ssim=True``, :func:`ms_ssim_8bit`.
    """
    pixels = to_uint8(image)
    data, decoded = _round_trip(pixels, codec, quality)
    height, width = pixels.shape[:2]
    return RDPoint(len(data), bpp(8 * len(data), height, width),
                   psnr_8bit(pixels, decoded),
                   ms_ssim_8bit(pixels, decoded) if ms_ssim else None)


def jpeg_point(image, quality: int) -> RDPoint:
    """Encode an RGB image with Pillow's JPEG (default 4:2:0) and measure it.

    ``image`` is uint8 HWC or float ``[0, 1]``; the rate is the byte size of
    the JPEG file Pillow writes, decoded back to measure PSNR.
    """
    return codec_point(image, "jpeg", quality)


def _round_trip(pixels: np.ndarray, codec: str, quality: int) -> tuple[bytes, np.ndarray]:
    """Pillow ``codec`` file bytes of uint8 ``pixels`` and the decoded uint8 image."""
    check_codec(codec)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=_PILLOW_FORMATS[codec][0],
                                 quality=int(quality))
    data = buffer.getvalue()
    return data, np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _jpeg_round_trip(pixels: np.ndarray, quality: int) -> tuple[bytes, np.ndarray]:
    """Pillow JPEG file bytes of uint8 ``pixels`` and the decoded uint8 image."""
    return _round_trip(pixels, "jpeg", quality)


def ms_ssim_8bit(a, b) -> float | None:
    """MS-SSIM (Wang et al. 2003) of two images on their 8-bit values.

    Computed by ``pytorch_msssim.ms_ssim`` (the maintained implementation,
    not a hand-written one) with its defaults: five scales, an 11-tap
    Gaussian window of σ = 1.5, the paper's scale weights, ``data_range``
    255, on float32 copies of the uint8 pixels (NCHW), averaged over the
    three RGB channels as CompressAI's evaluation does. It runs on one
    thread (the caller's setting is restored): the same value whatever the
    thread count, and on this project's busy 2-core machine two threads were
    8–15× slower than one for its small grouped convolutions (a Kodak image:
    0.15–0.3 s on one thread, 2.3–2.7 s on two).

    Rule for small images: five scales need a short side of at least
    :data:`MS_SSIM_MIN_SIDE` (161) pixels; a smaller image gets ``None`` (no
    fewer scales, no padding: either would be another metric), and the means
    of :func:`evaluate_model` and :func:`codec_curve` leave it out.
    """
    from pytorch_msssim import ms_ssim

    a8, b8 = to_uint8(a), to_uint8(b)
    if a8.shape != b8.shape:
        raise ValueError(f"image shapes differ: {a8.shape} vs {b8.shape}")
    if min(a8.shape[:2]) < MS_SSIM_MIN_SIDE:
        return None
    import torch

    def tensor(x: np.ndarray):  # a float32 copy: x may be read-only
        return torch.from_numpy(np.array(x, dtype=np.float32)).permute(2, 0, 1)[None]

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see the docstring
    try:
        with torch.no_grad():
            return float(ms_ssim(tensor(a8), tensor(b8), data_range=255.0))
    finally:
        torch.set_num_threads(threads)


def ms_ssim_db(value: float | None) -> float | None:
    """MS-SSIM in decibels, :math:`-10\\log_{10}(1 - \\text{MS-SSIM})` (the
    literature's plotting scale); ``inf`` for 1, ``None`` for ``None``."""
    if value is None:
        return None
    return math.inf if value >= 1.0 else -10.0 * math.log10(1.0 - value)


def _ms_ssim_summary(values: Sequence[float | None]) -> dict:
    """Mean MS-SSIM over the images that have one, its dB form (of the mean,
    as CompressAI's tables convert it) and how many images it averages."""
    have = [v for v in values if v is not None]
    mean = float(np.mean(have)) if have else None
    return {"ms_ssim": mean, "ms_ssim_db": ms_ssim_db(mean), "ms_ssim_images": len(have)}


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


def codec_curve(codec: str, images: Sequence, qualities: Sequence[int] | None = None,
                names: Sequence[str] | None = None, ms_ssim: bool = True) -> dict:
    """One classical codec's RD curve over ``images``, measured live.

    Args:
        codec: ``"jpeg"``, ``"webp"`` or ``"avif"`` (see :func:`available_codecs`).
        images: uint8 ``(H, W, 3)`` arrays (or float ``[0, 1]``), any sizes.
        qualities: Pillow ``quality`` settings (default
            :data:`CODEC_QUALITIES` ``[codec]``).
        names: one label per image (default ``image00``, ``image01``…).
        ms_ssim: also measure :func:`ms_ssim_8bit` (0.3–0.5 s per Kodak image
            and quality on one CPU thread).

    Returns:
        ``{"codec", "quality", "bpp", "psnr", "ms_ssim", "ms_ssim_db",
        "ms_ssim_images", "images"}``: per quality, mean file bpp and mean
        8-bit PSNR over images (in dB, as the literature averages), mean
        MS-SSIM over the images it is defined on and its dB form (``None``
        without ``ms_ssim``); ``images`` holds one row per image, ``{"image",
        "bytes", "bpp", "psnr", "ms_ssim", "ms_ssim_db"}``, each a list over
        qualities (the per-image curves of :func:`per_image_bd_rates`).

    Raises:
        DVAEError: an unknown codec or one this Pillow cannot write.
    """
    check_codec(codec)
    qualities = list(CODEC_QUALITIES[codec] if qualities is None else qualities)
    points = [[codec_point(img, codec, q, ms_ssim) for q in qualities] for img in images]
    rows = [{"image": names[i] if names else f"image{i:02d}",
             "bytes": [p.nbytes for p in row], "bpp": [p.bpp for p in row],
             "psnr": [p.psnr for p in row], "ms_ssim": [p.ms_ssim for p in row],
             "ms_ssim_db": [ms_ssim_db(p.ms_ssim) for p in row]}
            for i, row in enumerate(points)]
    by_quality = [_ms_ssim_summary([row[j].ms_ssim for row in points])
                  for j in range(len(qualities))]
    return {"codec": codec, "quality": qualities,
            "bpp": [float(np.mean([row[j].bpp for row in points]))
                    for j in range(len(qualities))],
            "psnr": [float(np.mean([row[j].psnr for row in points]))
                     for j in range(len(qualities))],
            "ms_ssim": [m["ms_ssim"] for m in by_quality],
            "ms_ssim_db": [m["ms_ssim_db"] for m in by_quality],
            "ms_ssim_images": by_quality[0]["ms_ssim_images"] if by_quality else 0,
            "images": rows}


def bd_rate(rate_ref, psnr_ref, rate_test, psnr_test, metric: str = "PSNR") -> float:
    """Bjøntegaard delta rate of ``test`` against ``ref``, in percent.

    .. math:: \\Delta R = \\exp\\Big(\\frac{1}{P_1-P_0}\\int_{P_0}^{P_1}
       [\\hat r_t(P) - \\hat r_r(P)]\\,dP\\Big) - 1

    with :math:`\\hat r` a cubic fit (least squares) of the natural log of
    the rate as a function of quality ``P`` — PSNR, or any other quality in
    dB such as MS-SSIM's :func:`ms_ssim_db` (``metric`` names it in errors) —
    and :math:`[P_0, P_1]` the overlap of the two quality ranges. Negative
    means ``test`` needs fewer bits for the same quality. Each curve needs at
    least four points.

    Outside the overlap nothing is compared: points there still shape their
    curve's cubic, but the integral covers only ``[P_0, P_1]`` (no
    extrapolation), so a codec that reaches qualities the other never does is
    neither credited nor charged for them. Curves that do not overlap raise
    ``ValueError``; :func:`series_bd_rates` reports them as ``None``.
    """
    def fit(rate, psnr):
        rate, psnr = np.asarray(rate, float), np.asarray(psnr, float)
        if rate.size < 4 or rate.size != psnr.size:
            raise ValueError(f"BD-rate needs at least 4 (rate, {metric}) points per curve")
        if np.any(rate <= 0):
            raise ValueError("rates must be positive")
        if not np.all(np.isfinite(psnr)):
            raise ValueError(f"{metric} values must be finite")
        return np.polyfit(psnr, np.log(rate), 3), psnr.min(), psnr.max()

    (p_ref, lo_r, hi_r), (p_test, lo_t, hi_t) = fit(rate_ref, psnr_ref), fit(
        rate_test, psnr_test
    )
    lo, hi = max(lo_r, lo_t), min(hi_r, hi_t)
    if hi <= lo:
        raise ValueError(f"the two curves share no {metric} range")
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
                   name: str | None = None, ms_ssim: bool = False,
                   lmbda: float | None = None) -> dict:
    """Compress and decompress every image through real ``.dvae`` file bytes.

    Args:
        model: a shipped model's name, or a model object (then give ``name``).
        images: uint8 ``(H, W, 3)`` arrays.
        names: one label per image (default ``image00``, ``image01``…).
        ms_ssim: also measure :func:`ms_ssim_8bit` of each decoded file (off
            by default: 0.3–0.5 s per Kodak image on one CPU thread).
        lmbda: a variable-rate model's λ to code at; the result's ``model``
            is then ``<name>-<λ>`` (one point of the series ``<name>``) and
            it has ``lmbda``.

    Returns:
        ``{"model", "images": [per-image rows], "bpp", "estimated_bpp",
        "psnr", "overhead_percent", "encode_s", "decode_s"}``: a row has the
        file's ``bytes`` and ``bpp`` (header included), the ``estimated_bpp``
        ``−Σ log₂ P / (H·W)``, the 8-bit ``psnr`` of the decoded file and the
        seconds to encode and to decode; the summary values are means over
        images (``overhead_percent``: mean of ``100·(file bits / −Σ log₂ P − 1)``).
        With ``ms_ssim``, each row also has ``ms_ssim`` and ``ms_ssim_db``
        (``None`` under :data:`MS_SSIM_MIN_SIDE`) and the summary the mean
        ``ms_ssim`` over the images that have one, its ``ms_ssim_db`` and
        ``ms_ssim_images`` (how many).

    See: *A discretized VAE codec* (Kodak against JPEG).
    """
    import time

    from . import codec

    label = model if isinstance(model, str) else name
    obj = codec.load_shipped(model) if isinstance(model, str) else model
    rows = []
    for i, image in enumerate(images):
        start = time.perf_counter()
        encoded = codec.compress(image, model, name=name, lmbda=lmbda or 0.0)
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
        if ms_ssim:
            value = ms_ssim_8bit(image, decoded)
            rows[-1].update(ms_ssim=value, ms_ssim_db=ms_ssim_db(value))
    summary = {key: float(np.mean([r[key] for r in rows]))
               for key in ("bpp", "estimated_bpp", "psnr", "encode_s", "decode_s")}
    overhead = np.mean([100 * (r["bpp"] / r["estimated_bpp"] - 1) for r in rows])
    if ms_ssim:
        summary.update(_ms_ssim_summary([r["ms_ssim"] for r in rows]))
    at = {} if lmbda is None else {"model": f"{label}-{lmbda:g}", "lmbda": lmbda}
    return {"model": label, **summary, "overhead_percent": float(overhead),
            **at, "images": rows}


def model_series(name: str) -> str:
    """The series a model belongs to: its name without a trailing ``-<λ>``
    (``"hier12-845"`` → ``"hier12"``); one RD curve and BD-rate per series."""
    stem, _, last = name.rpartition("-")
    try:
        float(last)
    except ValueError:
        return name
    return stem or name


#: The quality axes of the BD-rate: key in the curves → name in messages.
BD_METRICS = {"psnr": "PSNR", "ms_ssim_db": "MS-SSIM (dB)"}


def _usable(rates, qualities) -> tuple[list[float], list[float]] | None:
    """A curve's points with a finite quality (a small image's MS-SSIM is
    ``None``, a lossless point's PSNR ``inf``), or ``None`` if fewer than
    four remain (a cubic needs four)."""
    points = [(r, q) for r, q in zip(rates, qualities, strict=True)
              if q is not None and math.isfinite(q)]
    if len(points) < 4:
        return None
    return [r for r, _ in points], [q for _, q in points]


def _bd_or_none(ref, test, metric: str) -> float | None:
    """:func:`bd_rate` of two ``(rates, qualities)`` curves, ``None`` when
    their quality ranges do not overlap."""
    try:
        return bd_rate(*ref, *test, metric=BD_METRICS[metric])
    except ValueError as err:
        if "share no" in str(err):
            return None
        raise


def series_bd_rates(results: Sequence[dict], jpeg: dict, metric: str = "psnr",
                    codecs: dict[str, dict] | None = None) -> dict[str, dict]:
    """BD-rates (%) of every series of :func:`evaluate_model` results with at
    least four points (a cubic needs four): ``vs_jpeg`` against ``jpeg``
    (``{"bpp": [...], "psnr": [...]}``), ``vs_single`` against the ``single``
    series, and a hierarchical series against every shallower one
    (``hier12`` ``vs_hier3``). Negative: fewer bits for the same quality.

    Args:
        metric: the quality axis, ``"psnr"`` (default) or ``"ms_ssim_db"``
            (MS-SSIM in dB; the results need ``evaluate_model(…, ms_ssim=True)``
            and ``jpeg`` a :func:`codec_curve`); points without a finite value
            are left out of their curve.
        codecs: more classical codecs' curves (:func:`codec_curve`, keyed by
            codec): each gets a row with ``vs_jpeg`` (not JPEG itself) and
            ``vs_single``.

    Outside the overlap of two curves' quality ranges nothing is compared
    (see :func:`bd_rate`); two curves that do not overlap at all get ``None``.
    """
    series: dict[str, list[dict]] = {}  # single-100 … single-5000 form "single"
    for result in results:
        series.setdefault(model_series(result["model"]), []).append(result)
    curves = {}
    for key, rows in series.items():
        curve = _usable([r["bpp"] for r in rows], [r.get(metric) for r in rows])
        if curve is not None:
            curves[key] = curve
    reference = _usable(jpeg["bpp"], jpeg.get(metric, [None] * len(jpeg["bpp"])))

    def depth(name: str) -> int:  # "hier12" -> 12; 0 for a name without digits
        digits = "".join(c for c in name if c.isdigit())
        return int(digits) if digits else 0

    table = {}
    for key, curve in curves.items():
        row = {} if reference is None else {"vs_jpeg": _bd_or_none(reference, curve,
                                                                   metric)}
        for other in curves:
            if other != key and (other == "single" or (
                    key.startswith("hier") and other.startswith("hier")
                    and depth(other) < depth(key))):
                row[f"vs_{other}"] = _bd_or_none(curves[other], curve, metric)
        if row:
            table[key] = row
    for name, data in (codecs or {}).items():
        curve = _usable(data["bpp"], data.get(metric, [None] * len(data["bpp"])))
        if curve is None:
            continue
        row = {}
        if name != "jpeg" and reference is not None:
            row["vs_jpeg"] = _bd_or_none(reference, curve, metric)
        if "single" in curves:
            row["vs_single"] = _bd_or_none(curves["single"], curve, metric)
        if row:
            table[name] = row
    return table


def per_image_bd_rates(results: Sequence[dict], jpeg: dict, metric: str = "psnr",
                       codecs: dict[str, dict] | None = None) -> dict[str, dict]:
    """BD-rate (%) against JPEG **per image**: ``{series: {image: value}}``.

    For every series of :func:`evaluate_model` results with at least four
    models, and every codec of ``codecs`` but JPEG, each image's own curve
    (its file bpp and quality at each point) against that image's JPEG curve
    from ``jpeg`` (a :func:`codec_curve`, which keeps per-image curves);
    ``None`` where the two do not overlap or a curve has fewer than four
    finite points. For the per-image scatter of gain over JPEG.
    """
    reference = {row["image"]: row for row in jpeg["images"]}
    series: dict[str, list[dict]] = {}
    for result in results:
        series.setdefault(model_series(result["model"]), []).append(result)
    curves: dict[str, dict[str, tuple[list, list]]] = {}
    for key, rows in series.items():
        if len(rows) < 4:
            continue
        by_image = [{r["image"]: r for r in result["images"]} for result in rows]
        curves[key] = {image: ([m[image]["bpp"] for m in by_image],
                               [m[image].get(metric) for m in by_image])
                       for image in by_image[0]}
    for name, data in (codecs or {}).items():
        if name != "jpeg":
            curves[name] = {row["image"]: (row["bpp"], row.get(metric))
                            for row in data["images"]}
    table = {}
    for key, per_image in curves.items():
        table[key] = {}
        for image, (rates, qualities) in per_image.items():
            ref = reference.get(image)
            test = None if qualities is None else _usable(rates, qualities)
            ref = None if ref is None or ref.get(metric) is None else _usable(
                ref["bpp"], ref[metric])
            table[key][image] = (None if test is None or ref is None
                                 else _bd_or_none(ref, test, metric))
    return table


def folder_images(folder: str | os.PathLike, limit: int | None = None,
                  max_pixels: int | None = None) -> tuple[list[np.ndarray], list[str]]:
    """Every image under ``folder`` (recursive, sorted; see
    :func:`~dvae_tutorial.images.image_files`) at its native size, as uint8
    ``(H, W, 3)`` arrays, with their paths relative to ``folder`` as labels.

    Args:
        limit: only the first ``limit`` images.
        max_pixels: refuse a larger image (default: the codec's
            :data:`~dvae_tutorial.codec.MAX_PIXELS`).

    Raises:
        DataError (one line, naming the folder or file): the folder is
            missing, not a folder, unreadable or holds no image; an image is
            unreadable, corrupt or over ``max_pixels``.
    """
    from .images import image_files, load_image

    path = Path(folder)
    if not path.exists():
        raise DataError(f"image folder {path} does not exist")
    if not path.is_dir():
        raise DataError(f"{path} is not a folder (--images wants a folder of images)")
    if not os.access(path, os.R_OK | os.X_OK):
        raise DataError(f"cannot read the image folder {path} (permission denied)")
    if max_pixels is None:
        from .codec import MAX_PIXELS

        max_pixels = MAX_PIXELS
    files = image_files(path)[:limit]
    return ([load_image(f, max_pixels) for f in files],
            [f.relative_to(path).as_posix() for f in files])


def evaluation_report(images: Sequence, labels: Sequence[str], dataset: str,
                      models: Sequence[str] = (), codecs: Sequence[str] = ("jpeg",),
                      cost: bool = False, ms_ssim: bool = True,
                      progress: Callable[[str], None] | None = None,
                      lmbdas: Sequence[float] | None = None) -> dict:
    """Everything ``dvae evaluate --json`` writes: models and classical codecs
    on the same images, on one footing (real file bytes, 8-bit PSNR, MS-SSIM).

    Args:
        images, labels: uint8 ``(H, W, 3)`` arrays (any sizes) and their names.
        dataset: a description for the report (``"Kodak (24 images)"``).
        models: shipped model names (:func:`evaluate_model` each).
        codecs: classical codecs (:func:`codec_curve` each); JPEG is always
            measured, first: it is the reference of every ``vs_jpeg``.
        cost: add :func:`~dvae_tutorial.cost.shipped_cost` rows of ``models``.
        ms_ssim: measure MS-SSIM (else its fields are ``None``/absent).
        progress: called with one line per model and codec measured.
        lmbdas: the λ at which a variable-rate model of ``models`` is
            evaluated, one series ``<name>-<λ>`` (default:
            :func:`~dvae_tutorial.variable_rate.sweep_lmbdas` of its levels).

    Returns:
        ``{"dataset", "images": [{"image", "width", "height"}], "versions",
        "jpeg": {"quality", "bpp", "psnr"}, "codecs": {codec: codec_curve},
        "models": [evaluate_model rows], "bd_rate_percent",
        "bd_rate_ms_ssim_percent", "bd_rate_per_image_percent": {"psnr",
        "ms_ssim"}}`` and with ``cost``, ``"cost"``. ``jpeg`` is the JPEG
        curve as it always was (:func:`jpeg_curve`'s keys); ``bd_rate_percent``
        is :func:`series_bd_rates` on PSNR (model series and codecs),
        ``bd_rate_ms_ssim_percent`` the same on MS-SSIM in dB, and
        ``bd_rate_per_image_percent`` :func:`per_image_bd_rates` against JPEG.
    """
    say = progress or (lambda line: None)
    names = ["jpeg"] + [c for c in dict.fromkeys(codecs) if c != "jpeg"]
    for name in names:
        check_codec(name)  # before any work: one line if AVIF is not there
    curves = {}
    for name in names:
        curve = codec_curve(name, images, names=labels, ms_ssim=ms_ssim)
        curves[name] = curve
        say(f"{name}: {len(curve['quality'])} qualities, "
            f"{min(curve['bpp']):.3f}–{max(curve['bpp']):.3f} bpp, "
            f"{min(curve['psnr']):.2f}–{max(curve['psnr']):.2f} dB")
    results = []
    for name, lmbda in _operating_points(models, lmbdas):
        result = evaluate_model(name, images, labels, ms_ssim=ms_ssim, lmbda=lmbda)
        name = result["model"]
        results.append(result)
        extra = ("" if result.get("ms_ssim") is None
                 else f", MS-SSIM {result['ms_ssim']:.4f} ({result['ms_ssim_db']:.2f} dB)")
        say(f"{name}: {result['bpp']:.4f} bpp (−Σlog₂P {result['estimated_bpp']:.4f},"
            f" +{result['overhead_percent']:.2f} %), {result['psnr']:.2f} dB{extra}, "
            f"encode {result['encode_s']:.2f} s, decode {result['decode_s']:.2f} s"
            " per image")
    jpeg = curves["jpeg"]
    report = {
        "dataset": dataset,
        "images": [{"image": label, "width": int(img.shape[1]),
                    "height": int(img.shape[0])} for label, img in zip(
                        labels, images, strict=True)],
        "versions": _versions(),
        "jpeg": {key: jpeg[key] for key in ("quality", "bpp", "psnr")},
        "codecs": curves,
        "models": results,
        "bd_rate_percent": series_bd_rates(results, jpeg, "psnr", curves),
        "bd_rate_ms_ssim_percent": (series_bd_rates(results, jpeg, "ms_ssim_db", curves)
                                    if ms_ssim else {}),
        "bd_rate_per_image_percent": {
            "psnr": per_image_bd_rates(results, jpeg, "psnr", curves),
            "ms_ssim": (per_image_bd_rates(results, jpeg, "ms_ssim_db", curves)
                        if ms_ssim else {})},
    }
    if cost:
        from .cost import shipped_cost

        report["cost"] = shipped_cost(list(models))
    return report


def _operating_points(models: Sequence[str], lmbdas: Sequence[float] | None
                      ) -> list[tuple[str, float | None]]:
    """``(name, λ)`` to evaluate: ``(name, None)`` for a fixed-rate model, a
    variable-rate model at each of ``lmbdas`` (default: its sweep)."""
    from .codec import shipped_models
    from .variable_rate import sweep_lmbdas

    ranges = {i.name: i for i in shipped_models() if i.lmbda_range is not None}
    points: list[tuple[str, float | None]] = []
    for name in models:
        if name not in ranges:
            points.append((name, None))
            continue
        levels = ranges[name].levels
        points += [(name, float(v)) for v in (lmbdas or sweep_lmbdas(levels))]
    return points


def _versions() -> dict[str, str]:
    """The versions of what measured the numbers: this package, Pillow and
    the codec libraries it was built with, PyTorch, pytorch-msssim."""
    from importlib import metadata

    from PIL import features

    versions = {}
    for package in ("dvae-tutorial", "pillow", "torch", "pytorch-msssim"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    for name, (_, feature) in _PILLOW_FORMATS.items():
        versions[f"pillow-{name}"] = (features.version(feature)
                                      if name in available_codecs() else None)
    return versions


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
