"""One model for every rate, measured: its Kodak curve against the separate models.

Backs the chapter *Beyond* (one model for every rate). Reads what ``dvae
evaluate --json`` writes (:func:`~dvae_tutorial.evaluation.evaluation_report`):
a variable-rate model (:mod:`~dvae_tutorial.variable_rate`, after Cui et al.
2021 [cui2021asymmetric]) evaluated at several λ forms one series
``<name>-<λ>``; the separate single-layer models ``single-<λ>`` form another.
The BD-rate between them is Bjøntegaard's (cubic, log-rate over the PSNR
range both cover; :func:`~dvae_tutorial.evaluation.bd_rate`). The figures
follow the book's style (:mod:`dvae_tutorial.plotting`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np

from .errors import DVAEError
from .evaluation import bd_rate, model_series
from .plotting import COLORS, finish, labelled, new_axes

#: The variable-rate model's shipped name, and the series it is compared with.
VARIABLE_RATE_NAME = "single-vr"
SEPARATE_SERIES = "single"
#: Ship the variable-rate model if its BD-rate against the separate models is
#: at most this (percent; issue 16).
SHIP_THRESHOLD_PERCENT = 3.0


def _report(report: dict | str | os.PathLike) -> dict:
    """A report given as a dict, a committed set's name or a JSON file."""
    from .results import load_report

    return report if isinstance(report, dict) else load_report(str(report))


def _series(report: dict, series: str) -> dict[str, list]:
    """One series' points sorted by λ: ``{"model", "lmbda", "bpp", "psnr"}``."""
    rows = [r for r in report["models"] if model_series(r["model"]) == series]
    points = sorted((float(r.get("lmbda") or r["model"].rpartition("-")[2]),
                     r["model"], r["bpp"], r["psnr"]) for r in rows)
    return {"lmbda": [p[0] for p in points], "model": [p[1] for p in points],
            "bpp": [p[2] for p in points], "psnr": [p[3] for p in points]}


def kodak_curves(report: dict | str | os.PathLike,
                 separate: dict | str | os.PathLike | None = None,
                 name: str = VARIABLE_RATE_NAME,
                 levels: Sequence[float] | None = None) -> dict:
    """The variable-rate model's curve, the separate models' curve, BD-rates.

    Args:
        report: a ``dvae evaluate --json`` report (dict or file) with the
            variable-rate model's sweep (``--model single-vr``).
        separate: the report with the separate ``single-<λ>`` models, when
            another file holds them (default: ``report``).
        name: the variable-rate model's name (its series).
        levels: the λ of the separate models to compare at (default: every
            separate model whose λ the variable-rate sweep also has).

    Returns:
        ``{"variable_rate": series, "separate": series, "bd_rate_percent",
        "bd_rate_levels_percent", "psnr_gap_db", "ship"}``: a series is
        ``{"model", "lmbda", "bpp", "psnr"}`` sorted by λ;
        ``bd_rate_percent`` is the whole variable-rate sweep against the
        separate models (negative: fewer bits), ``bd_rate_levels_percent``
        its points at the levels only; ``psnr_gap_db`` per level the
        variable-rate PSNR minus the separate model's (at their own rates);
        ``ship``: ``bd_rate_percent`` ≤ :data:`SHIP_THRESHOLD_PERCENT`.

    Raises:
        DVAEError: either curve has fewer than four points.
    """
    ours = _series(_report(report), name)
    theirs = _series(_report(separate if separate is not None else report),
                     SEPARATE_SERIES)
    if levels is not None:
        keep = [i for i, v in enumerate(theirs["lmbda"]) if v in set(levels)]
        theirs = {k: [v[i] for i in keep] for k, v in theirs.items()}
    for label, curve in ((name, ours), (SEPARATE_SERIES, theirs)):
        if len(curve["bpp"]) < 4:
            raise DVAEError(f"the report has {len(curve['bpp'])} points of "
                            f"{label}; a BD-rate needs 4 (dvae evaluate --model "
                            f"{label if label == name else 'single-…'})")
    at = [ours["lmbda"].index(v) for v in theirs["lmbda"] if v in ours["lmbda"]]
    bd = bd_rate(theirs["bpp"], theirs["psnr"], ours["bpp"], ours["psnr"])
    bd_levels = (bd_rate(theirs["bpp"], theirs["psnr"], [ours["bpp"][i] for i in at],
                         [ours["psnr"][i] for i in at]) if len(at) >= 4 else None)
    gaps = {v: ours["psnr"][ours["lmbda"].index(v)] - p
            for v, p in zip(theirs["lmbda"], theirs["psnr"], strict=True)
            if v in ours["lmbda"]}
    return {"variable_rate": ours, "separate": theirs, "bd_rate_percent": bd,
            "bd_rate_levels_percent": bd_levels, "psnr_gap_db": gaps,
            "ship": bd <= SHIP_THRESHOLD_PERCENT}


@labelled
def plot_variable_rate_rd(curves: dict, ax=None, name: str = VARIABLE_RATE_NAME):
    """Kodak rate–distortion: the separate models (one per λ, squares) and the
    one variable-rate model (a line through its sweep; filled dots at the
    levels, hollow between them), with the BD-rate in the legend."""
    ax = new_axes(ax)
    sep, ours = curves["separate"], curves["variable_rate"]
    ax.plot(sep["bpp"], sep["psnr"], "s--", color=COLORS["muted"],
            label=f"{len(sep['bpp'])} separate models")
    levels = set(sep["lmbda"])
    ax.plot(ours["bpp"], ours["psnr"], "-", color=COLORS["model"],
            label=f"{name}: one model (BD-rate {curves['bd_rate_percent']:+.1f} %)")
    for at_level in (True, False):
        pts = [(b, p) for b, p, v in zip(ours["bpp"], ours["psnr"], ours["lmbda"],
                                         strict=True) if (v in levels) == at_level]
        if pts:
            ax.plot(*zip(*pts, strict=True), "o", color=COLORS["model"],
                    markerfacecolor=COLORS["model"] if at_level else "white",
                    label="at the levels" if at_level else "in between")
    ax.set_xlabel("bits per pixel (file bytes)")
    ax.set_ylabel("PSNR (dB)")
    return finish(ax, "Kodak: one model for every rate")


@labelled
def plot_gain_curves(model, ax=None, channels: int = 8, points: int = 200):
    """The learned gains ``g(λ)`` of ``channels`` latent channels against λ,
    log–log: straight between levels (geometric interpolation), the learned
    vectors at the levels (dots). The channels are spread evenly over the
    ranks of their gain at the lowest level, where the channels differ most."""
    import torch

    ax = new_axes(ax)
    lo, hi = model.lmbda_range
    grid = torch.exp(torch.linspace(math.log(lo), math.log(hi), points))
    with torch.no_grad():
        gains = model.rate_parameters(grid)[0][:, :, 0, 0].numpy()
        at_levels = model.log_gain.exp().numpy()
    ranks = np.argsort(at_levels[0])
    picks = ranks[np.linspace(0, len(ranks) - 1, min(channels, len(ranks))).round()
                  .astype(int)]
    for rank, c in enumerate(picks):
        line, = ax.loglog(grid.numpy(), gains[:, c], lw=1,
                          label="gain of a channel" if rank == 0 else None)
        ax.plot(model.config.levels, at_levels[:, c], "o", ms=3,
                color=line.get_color())
    ax.set_xlabel("λ")
    ax.set_ylabel("gain g(λ) (log scale)")
    return finish(ax, "Gains: learned at the levels, geometric between")
