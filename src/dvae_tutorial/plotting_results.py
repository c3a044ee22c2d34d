"""Figures of Part IV, chapter 7 (*Results*): every codec on one footing.

Draws what :mod:`dvae_tutorial.results` arranges from a ``dvae evaluate
--json`` report; the style (palette, axes) comes from
:mod:`dvae_tutorial.plotting`.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from .plotting import COLORS, labelled, new_axes

#: Colour and marker per curve: live codecs warm, the book blue/green,
#: published curves grey-ish and dashed.
STYLE = {
    "jpeg": (COLORS["jpeg"], "s-"), "webp": ("#E69F00", "^-"),
    "avif": ("#F0E442", "v-"), "single": (COLORS["model"], "o-"),
    "hier3": ("#56B4E9", "d:"), "hier12": (COLORS["alt"], "o-"),
    "bmshj2018-factorized": ("#999999", "--"), "bmshj2018-hyperprior": ("#444444", "-."),
    "mbt2018-mean": (COLORS["accent"], "--"), "mbt2018": ("#8E3A6E", "-."),
    "qres-vae": ("#000000", "--"), "vtm": ("#AA4400", ":"),
}


def _style(name: str) -> tuple[str, str]:
    return STYLE.get(name, (COLORS["muted"], "-"))


def _label(curve: dict) -> str:
    return curve["label"] + (" [float PSNR]" if curve["psnr_on"] == "float" else "")


@labelled
def plot_rd_twice(curves: dict[str, dict], *, max_bpp: float = 3.5, title=None):
    """The RD figure twice from one table: the seed's (MSE on a log axis
    against bpp) and the field's (PSNR against bpp). The MSE axis shows
    255²·10^(−PSNR/10), i.e. the geometric mean of the per-image MSEs (0–255
    scale), so both panels carry the same numbers."""
    fig, axes = plt.subplots(1, 2, figsize=(13.5, 4.6), layout="constrained")
    for name, curve in curves.items():
        color, style = _style(name)
        bpp = np.asarray(curve["bpp"])
        psnr = np.asarray(curve["psnr"])
        keep = bpp <= max_bpp
        kw = {"color": color, "label": _label(curve), "lw": 1.6,
              "ms": 4 if curve["kind"] != "published" else 0}
        axes[0].plot(bpp[keep], 255.0 ** 2 * 10 ** (-psnr[keep] / 10), style, **kw)
        axes[1].plot(bpp[keep], psnr[keep], style, **kw)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("MSE, geometric mean over images (0–255 scale, log)")
    axes[0].set_title("the seed's axes")
    axes[1].set_ylabel("PSNR (dB)")
    axes[1].set_title("the field's axes")
    for ax in axes:
        ax.set_xlabel("bits per pixel (file bytes)")
        ax.set_xlim(0, max_bpp)
        ax.grid(True, alpha=0.3)
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    if title:
        fig.suptitle(title)
    return fig


@labelled
def plot_per_image_gains(gains_by_set: dict[str, dict[str, dict[str, float]]], *,
                         names: dict[str, str] | None = None, title=None):
    """Per-image BD-rate vs JPEG, one panel per test set: one column of dots
    per codec (an image each), its median as a bar; best and worst image of
    the first codec named."""
    fig, axes = plt.subplots(1, len(gains_by_set), figsize=(5.6 * len(gains_by_set), 4.2),
                             layout="constrained", squeeze=False)
    rng, names = np.random.default_rng(0), names or {}
    for ax, (dataset, gains) in zip(axes[0], gains_by_set.items(), strict=True):
        for i, (name, per_image) in enumerate(gains.items()):
            values = np.asarray(list(per_image.values()))
            color, _ = _style(name)
            ax.scatter(i + rng.uniform(-0.18, 0.18, values.size), values, s=12,
                       color=color, alpha=0.7)
            ax.hlines(np.median(values), i - 0.3, i + 0.3, color="k", lw=2)
        first = next(iter(gains.values()))
        for image, where in ((min(first, key=first.get), "best"),
                             (max(first, key=first.get), "worst")):
            ax.annotate(f"{where}: {image}", (0, first[image]), xytext=(8, 0),
                        textcoords="offset points", fontsize=7, va="center")
        ax.axhline(0, color=COLORS["jpeg"], lw=1, ls=":")
        ax.set_xticks(range(len(gains)), [names.get(n, n) for n in gains], fontsize=7)
        ax.set_ylabel("BD-rate vs JPEG per image (%; below 0: fewer bits)")
        ax.set_title(dataset, fontsize=10)
        ax.grid(True, axis="y", alpha=0.3)
    if title:
        fig.suptitle(title)
    return fig


@labelled
def plot_gain_vs_cost(points: list[dict], *, title=None):
    """Gain over JPEG (Kodak BD-rate) against decode cost: kMAC per pixel
    (measured, the book's models) and seconds per Kodak image (the book's
    models here, published CPU times elsewhere: marked as such)."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    for p in points:
        color, _ = _style(p["name"])
        marker = "o" if p["kind"] == "book" else "D"
        for ax, key in zip(axes, ("decode_kmac", "decode_s"), strict=True):
            if p.get(key) is None:
                continue
            ax.scatter(p[key], p["vs_jpeg"], color=color, s=40, marker=marker)
            ax.annotate(p["label"], (p[key], p["vs_jpeg"]),
                        xytext=p.get("offset", (5, 4)), textcoords="offset points",
                        fontsize=7)
    axes[0].set_xlabel("decode kMAC per pixel (flop_counter)")
    axes[1].set_xlabel("decode s per Kodak image (◆ published, other CPU)")
    axes[0].set_xlim(0, 1.25 * max([p["decode_kmac"] for p in points
                                    if p.get("decode_kmac") is not None] or [1]))
    axes[1].set_xscale("log")
    for ax in axes:
        ax.set_ylabel("Kodak BD-rate vs JPEG (%)")
        ax.axhline(0, color=COLORS["jpeg"], lw=1, ls=":")
        ax.grid(True, alpha=0.3)
    if title:
        fig.suptitle(title)
    return fig


@labelled
def plot_bd_bars(rows: list[dict], *, ax=None, title=None):
    """Horizontal bars of the PSNR BD-rate vs JPEG of :func:`results.bd_table`
    rows (published ones hatched)."""
    rows = [r for r in rows if r["vs_jpeg"] is not None]
    ax = new_axes(ax, figsize=(6.5, 0.32 * len(rows) + 1.2))
    for i, r in enumerate(rows):
        color, _ = _style(r["name"])
        ax.barh(i, r["vs_jpeg"], color=color,
                hatch="//" if r["kind"] == "published" else None, edgecolor="k", lw=0.4)
    ax.set_yticks(range(len(rows)), [r["label"] + (" [float PSNR]" if r["psnr_on"] == "float"
                                                   else "") for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("BD-rate vs JPEG on Kodak (%), PSNR; fewer bits ←")
    if title:
        ax.set_title(title)
    return ax
