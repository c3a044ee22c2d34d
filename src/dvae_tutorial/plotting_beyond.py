"""Figures of chapter 8, *Beyond*: flow posteriors and bits-back coding.

The posterior densities a flow learns against the box (Rezende & Mohamed
2015; Durkan et al. 2019), the free-energy gain per λ against chapter 1's
bound, and the cost per data point of bits-back ANS chains (Townsend, Bird &
Barber 2019) against the rounding codec. Each helper takes an optional
``ax`` (or makes its own figure) and returns it; the shared style comes from
:mod:`dvae_tutorial.plotting`.
"""

from __future__ import annotations

import numpy as np

from .plotting import COLORS, finish, labelled, new_axes


@labelled
def plot_posterior_densities(z, densities: dict, *, prior=None, ax=None, title=None):
    """Posterior densities ``q(z | x)`` of one latent dimension.

    Args:
        z: 1-D grid of latent values.
        densities: ``{label: density on z}``; the first is drawn as the box.
        prior: optional density of the prior on ``z`` (dashed, for scale).
        ax, title: optional axis and title.

    See: *Beyond* (flow posteriors).
    """
    ax = new_axes(ax)
    colors = [COLORS["muted"], COLORS["model"], COLORS["alt"], COLORS["accent"]]
    for (label, dens), color in zip(densities.items(), colors, strict=False):
        ax.plot(z, dens, color=color, lw=2, label=label)
    if prior is not None:
        ax.plot(z, prior, color=COLORS["bound"], ls="--", lw=1, label="prior $\\hat p(z)$")
    ax.set_xlabel("latent $z$")
    ax.set_ylabel("density")
    return finish(ax, title)


@labelled
def plot_free_energy_gain(lmbdas, excess: dict, gain, gain_se, reference: dict,
                          *, axes=None, title=None):
    """Left: free energy above ``min R + λD`` per λ; right: the flow's gain.

    Args:
        lmbdas: the λ values (bits per unit squared error).
        excess: ``{label: F - bound}`` arrays, one per posterior.
        gain: ``F_box - F_flow`` per λ (bits per sample); ``gain_se`` its
            standard error (error bars of ±2 SE).
        reference: ``{label: value}`` horizontal lines on the gain panel.
        axes: optional pair of axes.

    See: *Beyond* (flow posteriors).
    """
    import matplotlib.pyplot as plt

    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    ax_f, ax_g = (new_axes(a) for a in axes)
    colors = [COLORS["muted"], COLORS["model"]]
    for (label, values), color in zip(excess.items(), colors, strict=False):
        ax_f.plot(lmbdas, values, "o-", color=color, label=label)
    ax_f.axhline(0, color=COLORS["bound"], lw=1, label="$\\min_D R(D)+\\lambda D$")
    ax_f.set_xscale("log", base=2)
    ax_f.set_xlabel("$\\lambda$ (bits per unit squared error)")
    ax_f.set_ylabel("free energy above the bound (bits/sample)")
    finish(ax_f, "Free energy above the bound")
    ax_g.errorbar(lmbdas, gain, yerr=2 * np.asarray(gain_se), fmt="o-",
                  color=COLORS["model"], capsize=3, label="gain of the flow (±2 SE)")
    styles = ["--", ":"]
    for (label, value), ls in zip(reference.items(), styles, strict=False):
        ax_g.axhline(value, color=COLORS["accent"], ls=ls, label=label)
    ax_g.set_xscale("log", base=2)
    ax_g.set_xlabel("$\\lambda$ (bits per unit squared error)")
    ax_g.set_ylabel("$F_{box} - F_{flow}$ (bits/sample)")
    finish(ax_g, title or "Free energy gained by the flow posterior")
    return ax_f, ax_g


@labelled
def plot_chain_cost(n_points, curves: dict, levels: dict, *, ax=None, title=None):
    """Bits per data point of a message of ``n`` points, against ``n``.

    Args:
        n_points: 1-D array, number of points coded so far.
        curves: ``{label: message bits / n}`` arrays (solid lines).
        levels: ``{label: value}`` horizontal reference lines (free energies).
        ax, title: optional axis and title.

    See: *Beyond* (bits-back, for real).
    """
    ax = new_axes(ax, figsize=(6.5, 4.0))
    colors = [COLORS["model"], COLORS["jpeg"], COLORS["alt"]]
    for (label, values), color in zip(curves.items(), colors, strict=False):
        ax.plot(n_points, values, color=color, lw=2, label=label)
    line_colors = [COLORS["model"], COLORS["alt"], COLORS["muted"]]
    for (label, value), color in zip(levels.items(), line_colors, strict=False):
        ax.axhline(value, color=color, ls="--", lw=1, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("data points in the message $n$")
    ax.set_ylabel("bits per point (message length / $n$)")
    return finish(ax, title)
