"""Figures for the book: one function per kind of plot.

Notebooks draw through these helpers so that every chapter shares one look.
Each helper takes an optional ``ax`` and returns it.
"""

from __future__ import annotations

import matplotlib.pyplot as plt

#: One palette for the whole book (colour-blind safe, Okabe–Ito).
COLORS = {
    "bound": "#000000",
    "model": "#0072B2",
    "jpeg": "#D55E00",
    "alt": "#009E73",
    "accent": "#CC79A7",
    "muted": "#999999",
}


def new_axes(ax=None, figsize=(5.0, 3.6)):
    """Return ``ax`` or a fresh axis with the book's style."""
    if ax is None:
        _, ax = plt.subplots(figsize=figsize, layout="constrained")
    ax.grid(True, alpha=0.3)
    return ax
