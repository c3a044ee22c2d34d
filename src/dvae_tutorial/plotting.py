"""The book's figure style and figure files: one palette, one axis style, names.

Every chapter's figures are drawn by the plotting module of its part of the
book, and they all build on the helpers here (the lower module):

* :mod:`dvae_tutorial.plotting_foundations` — Parts I–II, chapters 1–4;
* :mod:`dvae_tutorial.plotting_codecs` — Part III, chapters 5–6;
* ``plotting_results`` (chapter 7) and ``plotting_beyond`` (chapter 8).

Each helper there takes an optional ``ax`` and returns it (or returns the
figure it made), and is decorated with :func:`labelled`, which gives its figure
a stable name (``plot_rd_kodak`` → ``rd-kodak``). With ``DVAE_FIGURES_DIR`` set,
every figure a chapter shows is also written there as SVG and PDF, named
``<DVAE_FIGURES_PREFIX>-<label>.svg`` (e.g. ``ch05-rd-kodak.svg``; ``-2``,
``-3`` … when a chapter draws the same kind twice): in Jupyter at the end of
the cell that drew it (so panels a cell adds after the helper are in the
file), in a plain script at exit. ``dvae figures`` sets both variables and runs
the chapters. Unset, nothing is written and nothing else changes.
"""

from __future__ import annotations

import atexit
import functools
import os
import re
import weakref
from collections.abc import Callable
from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

#: One palette for the whole book (colour-blind safe, Okabe–Ito).
COLORS = {
    "bound": "#000000",
    "model": "#0072B2",
    "jpeg": "#D55E00",
    "alt": "#009E73",
    "accent": "#CC79A7",
    "muted": "#999999",
}

#: Where figure files go (unset: no files) and how their names begin.
FIGURES_DIR_ENV = "DVAE_FIGURES_DIR"
FIGURES_PREFIX_ENV = "DVAE_FIGURES_PREFIX"
FIGURE_FORMATS = ("svg", "pdf")


def finish(ax, title=None):
    """Add the legend (small font) and an optional title; return ``ax``."""
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return ax


def new_axes(ax=None, figsize=(5.0, 3.6)):
    """Return ``ax`` or a fresh axis with the book's style."""
    if ax is None:
        _, ax = plt.subplots(figsize=figsize, layout="constrained")
    ax.grid(True, alpha=0.3)
    return ax


# --- Figure files: stable names, SVG and PDF ---------------------------------

_drawn: list[Figure] = []  # labelled figures not yet written (strong refs)
_written: weakref.WeakSet = weakref.WeakSet()
_names_used: set[str] = set()
_hook_installed = False


def labelled(fn: Callable) -> Callable:
    """Name the figure ``fn`` draws after ``fn`` (``plot_rd_kodak`` → ``rd-kodak``).

    The figure keeps the first label it gets (a figure of several panels is
    named by the first helper that drew into it). With ``DVAE_FIGURES_DIR``
    set, the figure is also queued for :func:`export_figures`.
    """
    label = fn.__name__.removeprefix("plot_").replace("_", "-")

    @functools.wraps(fn)
    def draw(*args, **kwargs):
        out = fn(*args, **kwargs)
        first = out[0] if isinstance(out, tuple | list) else out  # e.g. (ax1, ax2)
        fig = first if isinstance(first, Figure) else first.figure
        while not isinstance(fig, Figure):  # a sub-figure: name the whole figure
            fig = fig.figure
        if not fig.get_label():
            fig.set_label(label)
        if os.environ.get(FIGURES_DIR_ENV):
            if fig not in _drawn:
                _drawn.append(fig)
            _install_hook()
        return out

    return draw


def export_figures(figures=None, directory=None, prefix=None) -> list[Path]:
    """Write figures as SVG and PDF under their stable names; return the files.

    Args:
        figures: the figures to write; default: those the plotting helpers drew
            and every figure still open, each once per process.
        directory: default ``$DVAE_FIGURES_DIR`` (nothing is written when
            neither is given).
        prefix: default ``$DVAE_FIGURES_PREFIX`` or ``"fig"`` (the chapter,
            e.g. ``ch05``).

    Names are ``<prefix>-<label>.<format>``; an unlabelled figure is called
    ``figure``, and a name already written by this process gets ``-2``, ``-3``…
    Files carry no date, so a rerun that draws the same writes the same bytes.
    """
    directory = directory or os.environ.get(FIGURES_DIR_ENV)
    if not directory:
        return []
    prefix = prefix or os.environ.get(FIGURES_PREFIX_ENV) or "fig"
    if figures is None:
        figures = _drawn + [plt.figure(n) for n in plt.get_fignums()]
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for fig in dict.fromkeys(figures):  # unique, in drawing order
        if fig in _written:
            continue
        stem = _unique(f"{prefix}-{_slug(fig.get_label() or 'figure')}")
        for fmt in FIGURE_FORMATS:
            path = out / f"{stem}.{fmt}"
            meta = {"Date": None} if fmt == "svg" else {"CreationDate": None}
            with plt.rc_context({"svg.hashsalt": "dvae"}):  # ids: no random salt
                fig.savefig(path, format=fmt, bbox_inches="tight", metadata=meta)
            files.append(path)
        _written.add(fig)
    _drawn.clear()
    return files


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "figure"


def _unique(stem: str) -> str:
    name, k = stem, 1
    while name in _names_used:
        k += 1
        name = f"{stem}-{k}"
    _names_used.add(name)
    return name


def _install_hook() -> None:
    """Write the figures after each cell (Jupyter) or at exit (a script).

    In IPython the callback goes first in ``post_execute``, before the inline
    backend shows and closes the cell's figures.
    """
    global _hook_installed
    if _hook_installed:
        return
    _hook_installed = True
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython comes with matplotlib-inline
        get_ipython = None
    shell = get_ipython() if get_ipython else None
    if shell is None:
        atexit.register(export_figures)
        return
    shell.events.callbacks["post_execute"].insert(0, lambda: export_figures())
