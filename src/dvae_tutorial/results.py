"""Chapter 7's tables, from one measurement: what ``dvae evaluate --json`` wrote.

Backs the chapter *Results*. The measurements themselves (real file bytes,
8-bit PSNR, MS-SSIM from ``pytorch-msssim``, the Pillow codecs) are made by
:func:`~dvae_tutorial.evaluation.evaluation_report`; this module only reads
its JSON and arranges it: the RD curves of every codec on one footing
(:func:`rd_curves`), the BD-rate table (:func:`bd_table`), the per-image gains,
the cost table and the README's results table (:func:`readme_table`), so the
chapter and the README are rendered from the same file and cannot disagree.

The full-mode measurements ship with the package (``measured/*.json``,
written by the commands in :data:`COMMANDS`); the chapter re-measures some of
them live and checks them with :func:`check_reproduced`.

BD-rates are the cubic Bjøntegaard delta of :func:`~dvae_tutorial.evaluation.bd_rate`
(Bjøntegaard 2001): log-rate as a cubic in quality, averaged over the quality
range both curves cover, nothing extrapolated.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

from .errors import DVAEError
from .evaluation import (
    _bd_or_none,
    _ms_ssim_summary,
    _usable,
    model_series,
    published_curve,
)

#: The committed full-mode measurements: set name → file under ``measured/``.
MEASURED = Path(__file__).parent / "measured"
SETS = {"kodak": "kodak.json", "bsds500_val": "bsds500_val.json",
        "kodak_variable_rate": "kodak_variable_rate.json"}

#: The commands that wrote :data:`SETS` (run from the repository root with
#: ``DVAE_DATA`` set; the second set at native size).
COMMANDS = {
    "kodak": ("dvae evaluate " + " ".join(
        f"--model {family}-{lmbda}" for family in ("hier12", "hier3")
        for lmbda in (100, 300, 845, 2500))
        + " " + " ".join(f"--model single-{lmbda}" for lmbda in (100, 300, 845, 2500, 5000))
        + " --codec webp,avif --cost --json kodak.json"),
    "bsds500_val": ("dvae evaluate --model single-100 --model single-300 "
                    "--model single-845 --model single-2500 --model single-5000 "
                    "--model hier12-100 --model hier12-300 --model hier12-845 "
                    "--model hier12-2500 --codec webp,avif "
                    "--images $DVAE_DATA/val/bsds500_val --json bsds500_val.json"),
    "kodak_variable_rate": "dvae evaluate --model single-vr --json kodak_variable_rate.json",
}

#: Published curves of chapter 7, in legend order (keys of ``published_curve``).
PUBLISHED = ("bmshj2018-factorized", "bmshj2018-hyperprior", "mbt2018-mean",
             "mbt2018", "qres-vae", "vtm")

#: Display names of the book's series and the live codecs.
NAMES = {"single": "single-layer (book)", "hier3": "3-layer prior (book)",
         "hier12": "12-layer prior (book)", "jpeg": "JPEG (Pillow)",
         "webp": "WebP (Pillow)", "avif": "AVIF (Pillow)"}


def load_report(name: str) -> dict:
    """A committed ``dvae evaluate --json`` report (a name of :data:`SETS`),
    or a path to one."""
    path = Path(name) if name not in SETS else MEASURED / SETS[name]
    if not path.is_file():
        raise DVAEError(f"no measurement {name!r}: expected {path} "
                        f"(have {sorted(SETS)}, or give a JSON path)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DVAEError(f"{path} is not a `dvae evaluate --json` report: {err}") from None


def rd_curves(report: dict, published: bool = False) -> dict[str, dict]:
    """Every RD curve of ``report`` on one footing, keyed by name.

    Each curve: ``label``, ``kind`` (``"codec"`` measured live with Pillow,
    ``"book"`` the book's models, ``"published"``), ``psnr_on`` (``"8-bit"``
    or ``"float"``), ``bpp`` and ``psnr`` sorted by rate, ``ms_ssim_db`` (or
    ``None`` per point where not measured), and ``models`` for the book's
    series. With ``published``, the cited curves of :data:`PUBLISHED`
    (Kodak only: they were measured on Kodak).
    """
    curves: dict[str, dict] = {}
    for name, data in report.get("codecs", {"jpeg": report["jpeg"]}).items():
        curves[name] = {"label": NAMES.get(name, name), "kind": "codec",
                        "psnr_on": "8-bit", "bpp": list(data["bpp"]),
                        "psnr": list(data["psnr"]),
                        "ms_ssim_db": list(data.get("ms_ssim_db")
                                           or [None] * len(data["bpp"]))}
    series: dict[str, list[dict]] = {}
    for result in report["models"]:
        series.setdefault(model_series(result["model"]), []).append(result)
    order = {"single": 0, "hier3": 1, "hier12": 2}  # deepest drawn last (on top)
    for key, rows in sorted(series.items(), key=lambda kv: order.get(kv[0], 3)):
        rows = sorted(rows, key=lambda r: r["bpp"])
        curves[key] = {"label": NAMES.get(key, key), "kind": "book",
                       "psnr_on": "8-bit", "models": [r["model"] for r in rows],
                       "bpp": [r["bpp"] for r in rows],
                       "psnr": [r["psnr"] for r in rows],
                       "ms_ssim_db": [r.get("ms_ssim_db") for r in rows]}
    if published:
        for key in PUBLISHED:
            ref = published_curve(key)
            curves[key] = {"label": ref["label"], "kind": "published",
                           "psnr_on": ref.get("psnr_on", "8-bit"),
                           "cite": ref["cite"], "bpp": ref["bpp"], "psnr": ref["psnr"],
                           "ms_ssim_db": [None] * len(ref["bpp"])}
    return curves


def bd_between(ref: dict, test: dict, metric: str = "psnr") -> float | None:
    """BD-rate (%) of curve ``test`` against curve ``ref`` (two curves of
    :func:`rd_curves`) on ``metric`` (``"psnr"`` or ``"ms_ssim_db"``); ``None``
    when either lacks four usable points or their ranges do not overlap."""
    a, b = _usable(ref["bpp"], ref[metric]), _usable(test["bpp"], test[metric])
    return None if a is None or b is None else _bd_or_none(a, b, metric)


def bd_table(report: dict, published: bool = False) -> list[dict]:
    """One row per curve of :func:`rd_curves`, best PSNR BD-rate vs JPEG first:
    ``name``, ``label``, ``kind``, ``psnr_on``, ``points``, the bpp range
    (``bpp_min``, ``bpp_max``), ``vs_jpeg`` and ``vs_single`` (PSNR BD-rate in
    %, negative = fewer bits) and ``ms_ssim_vs_jpeg`` (MS-SSIM in dB; ``None``
    where a curve has no MS-SSIM or the ranges do not overlap)."""
    curves = rd_curves(report, published)
    jpeg, single = curves["jpeg"], curves.get("single")
    rows = []
    for name, curve in curves.items():
        rows.append({
            "name": name, "label": curve["label"], "kind": curve["kind"],
            "psnr_on": curve["psnr_on"], "points": len(curve["bpp"]),
            "bpp_min": min(curve["bpp"]), "bpp_max": max(curve["bpp"]),
            "vs_jpeg": None if name == "jpeg" else bd_between(jpeg, curve, "psnr"),
            "vs_single": (None if single is None or name == "single"
                          else bd_between(single, curve, "psnr")),
            "ms_ssim_vs_jpeg": (None if name == "jpeg"
                                else bd_between(jpeg, curve, "ms_ssim_db")),
        })
    return sorted(rows, key=lambda r: math.inf if r["vs_jpeg"] is None
                  and r["name"] != "jpeg" else (r["vs_jpeg"] or 0.0))


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{value:+.1f} %"


def markdown_bd_table(rows: list[dict]) -> str:
    """:func:`bd_table` rows as a Markdown table (PSNR and MS-SSIM BD-rates)."""
    lines = ["| codec | PSNR on | bpp range | BD-rate vs JPEG | vs single-layer "
             "| MS-SSIM BD vs JPEG |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['label']} | {r['psnr_on']} | {r['bpp_min']:.2f}–"
                     f"{r['bpp_max']:.2f} | {_percent(r['vs_jpeg'])} | "
                     f"{_percent(r['vs_single'])} | {_percent(r['ms_ssim_vs_jpeg'])} |")
    return "\n".join(lines)


def ranking(report: dict) -> list[str]:
    """Names of the live codecs and the book's series, best PSNR BD-rate vs
    JPEG first (JPEG itself at 0)."""
    rows = [r for r in bd_table(report) if r["kind"] != "published"]
    return [r["name"] for r in sorted(rows, key=lambda r: r["vs_jpeg"] or 0.0)]


def per_image_gains(report: dict, name: str, metric: str = "psnr") -> dict[str, float]:
    """Per-image BD-rate (%) of a series or codec against that image's JPEG
    curve (``{image: value}``; images without an overlap left out)."""
    table = report["bd_rate_per_image_percent"][metric].get(name)
    if table is None:
        raise DVAEError(f"no per-image BD-rates for {name!r} in this report; have "
                        f"{sorted(report['bd_rate_per_image_percent'][metric])}")
    return {image: value for image, value in table.items() if value is not None}


def check_reproduced(live: dict, committed: dict, bpp_rel: float = 5e-3,
                     psnr_db: float = 0.05) -> dict:
    """Check a live re-measurement against the committed report, image by
    image, for every model the two share: file bpp within ``bpp_rel``
    (relative) and PSNR within ``psnr_db``. Files are byte-identical on the
    machine that made the report; elsewhere the encoder's float32 analysis
    may round a latent near a half-integer the other way (the codec's
    cross-device policy), hence the tolerances.

    Returns ``{"images": n, "identical": k, "max_bpp_rel": …, "max_psnr_db": …}``.
    Raises :class:`DVAEError` naming the first image that disagrees.
    """
    old = {(m["model"], row["image"]): row
           for m in committed["models"] for row in m["images"]}
    checked = identical = 0
    worst_bpp = worst_psnr = 0.0
    for model in live["models"]:
        for row in model["images"]:
            ref = old.get((model["model"], row["image"]))
            if ref is None:
                continue
            d_bpp = abs(row["bpp"] / ref["bpp"] - 1)
            d_psnr = abs(row["psnr"] - ref["psnr"])
            if d_bpp > bpp_rel or d_psnr > psnr_db:
                raise DVAEError(
                    f"{model['model']} on {row['image']}: {row['bpp']:.4f} bpp, "
                    f"{row['psnr']:.3f} dB now, {ref['bpp']:.4f} bpp, "
                    f"{ref['psnr']:.3f} dB in the committed report")
            checked += 1
            identical += row["bytes"] == ref["bytes"] and d_psnr == 0
            worst_bpp, worst_psnr = max(worst_bpp, d_bpp), max(worst_psnr, d_psnr)
    if not checked:
        raise DVAEError("the live and the committed reports share no (model, image)")
    return {"images": checked, "identical": identical,
            "max_bpp_rel": worst_bpp, "max_psnr_db": worst_psnr}


def cost_table(report: dict) -> list[dict]:
    """Per model of a report made with ``--cost``: parameters, MB to install,
    encode/decode kMAC per pixel, and the measured seconds per image."""
    if "cost" not in report:
        raise DVAEError("this report has no cost: make it with `dvae evaluate --cost`")
    seconds = {m["model"]: m for m in report["models"]}
    return [{"model": c["model"], "series": model_series(c["model"]),
             "parameters": c["parameters"], "total_mb": c["total_mb"],
             "encode_kmac": c["encode_kmac_per_pixel"],
             "decode_kmac": c["decode_kmac_per_pixel"],
             "encode_s": seconds[c["model"]]["encode_s"],
             "decode_s": seconds[c["model"]]["decode_s"]} for c in report["cost"]]


def training_pixels(history_row: dict) -> float:
    """Pixels of training crops a shipped model's lineage saw: Σ over its runs
    of steps × batch × crop² (crop in pixels; a prior trained on cached
    latents counts its crop at 16 pixels per latent)."""
    total = 0.0
    for run in history_row["runs"]:
        crop = run.get("patch_size") or 16 * (history_row.get("latent_crop") or 0)
        total += (run["step"] or 0) * (run["batch_size"] or 0) * crop ** 2
    return total


#: JPEG qualities kept when the test images are JPEG files themselves: at
#: quality 95 Pillow lands near the source's own quantisation grid and its
#: PSNR jumps (BSDS500: 37 dB at 90, 51 dB at 95), a point every other codec
#: lacks that would still bend JPEG's least-squares cubic.
JPEG_SOURCE_MAX_QUALITY = 90


def trim_codec(report: dict, codec: str = "jpeg",
               max_quality: int = JPEG_SOURCE_MAX_QUALITY) -> dict:
    """A copy of ``report`` whose ``codec`` curve keeps only the qualities up
    to ``max_quality`` (means and per-image rows alike); for test sets whose
    images are JPEG files (see :data:`JPEG_SOURCE_MAX_QUALITY`)."""
    out = copy.deepcopy(report)
    curve = out["codecs"][codec]
    keep = [i for i, q in enumerate(curve["quality"]) if q <= max_quality]
    for key in ("quality", "bpp", "psnr", "ms_ssim", "ms_ssim_db"):
        if isinstance(curve.get(key), list):
            curve[key] = [curve[key][i] for i in keep]
    for row in curve.get("images", []):
        for key, value in row.items():
            if isinstance(value, list):
                row[key] = [value[i] for i in keep]
    if codec == "jpeg":
        out["jpeg"] = {k: curve[k] for k in ("quality", "bpp", "psnr")}
    for key in ("bd_rate_percent", "bd_rate_ms_ssim_percent"):
        out.pop(key, None)  # stale: bd_table recomputes
    return out


def readme_table(kodak: dict, second: dict | None = None) -> str:
    """The README's results table: BD-rate vs JPEG of the live codecs and the
    book's series on Kodak (and on the second set), PSNR and MS-SSIM."""
    rows = {r["name"]: r for r in bd_table(kodak)}
    other = {r["name"]: r for r in bd_table(trim_codec(second))} if second else {}
    head = "| codec | Kodak BD-rate vs JPEG (PSNR) | (MS-SSIM) |"
    rule = "|---|---|---|"
    if second:
        name = second["dataset"].split(" (")[0]
        head += (f" {name} (PSNR; JPEG up to q{JPEG_SOURCE_MAX_QUALITY}, its photos "
                 "are JPEGs) | (MS-SSIM) |")
        rule += "---|---|"
    lines = [head, rule]
    for key, r in rows.items():
        if key == "jpeg":
            continue
        line = f"| {r['label']} | {_percent(r['vs_jpeg'])} | {_percent(r['ms_ssim_vs_jpeg'])} |"
        if second:
            o = other.get(key)
            line += (" — | — |" if o is None else
                     f" {_percent(o['vs_jpeg'])} | {_percent(o['ms_ssim_vs_jpeg'])} |")
        lines.append(line)
    return "\n".join(lines)


def monitored_photos(val_root: str | Path, count: int = 16) -> list[str]:
    """The names of the validation photos whose centre crops a training run
    logged (``TrainConfig.val_images`` of them, evenly spaced over the sorted
    folder, as :func:`~dvae_tutorial.training.center_crops` picks them). None
    was trained on, and no shipped checkpoint was chosen by them (each is the
    last of its run), but a strict test set leaves them out."""
    from .training import validation_paths

    return [Path(path).name for path in validation_paths(val_root, count)]


def subset_report(report: dict, drop: set[str] | list[str]) -> dict:
    """``report`` without the images named in ``drop`` (labels as in the
    report, e.g. ``"101085"`` or ``"101085.jpg"``): every model's and codec's
    means recomputed from their per-image rows; BD-rates are then computed
    from the new means by :func:`bd_table`. Per-image BD-rates stay per image."""
    import numpy as np

    def gone(label: str) -> bool:
        return label in drop or Path(label).stem in {Path(d).stem for d in drop}

    out = copy.deepcopy(report)
    kept = [i for i in out["images"] if not gone(i["image"])]
    out["images"] = kept
    out["dataset"] = f"{report['dataset'].split(' (')[0]} ({len(kept)} images)"
    for model in out["models"]:
        model["images"] = [r for r in model["images"] if not gone(r["image"])]
        for key in ("bpp", "estimated_bpp", "psnr", "encode_s", "decode_s"):
            model[key] = float(np.mean([r[key] for r in model["images"]]))
        if "ms_ssim" in model:
            model.update(_ms_ssim_summary([r.get("ms_ssim") for r in model["images"]]))
    for curve in out.get("codecs", {}).values():
        rows = [r for r in curve["images"] if not gone(r["image"])]
        curve["images"] = rows
        curve["bpp"] = [float(v) for v in np.mean([r["bpp"] for r in rows], axis=0)]
        curve["psnr"] = [float(v) for v in np.mean([r["psnr"] for r in rows], axis=0)]
        by_quality = [_ms_ssim_summary([r["ms_ssim"][j] for r in rows])
                      for j in range(len(curve["quality"]))]
        curve["ms_ssim"] = [m["ms_ssim"] for m in by_quality]
        curve["ms_ssim_db"] = [m["ms_ssim_db"] for m in by_quality]
    out["jpeg"] = {k: out["codecs"]["jpeg"][k] for k in ("quality", "bpp", "psnr")}
    for key in ("bd_rate_percent", "bd_rate_ms_ssim_percent"):
        out.pop(key, None)  # stale: bd_table recomputes from the means
    return out
