"""Figures of Parts I–II (chapters 1–4): toy sources, quantization, coding, λ.

One function per kind of plot, in chapter order: reverse water-filling and R(D)
curves (chapter 1, Cover & Thomas 2006, §10.3); the rounding staircase and the
uniform-noise relaxation (chapter 2, Ballé, Laparra & Simoncelli 2017);
discretized pmfs, code lengths and coder speeds (chapter 3); emission
densities, degradations and the λ trade-off (chapter 4). Each helper takes an
optional ``ax`` (or makes its own figure) and returns it; the shared style
(colours, axes, legend) comes from :mod:`dvae_tutorial.plotting`.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from .plotting import COLORS, finish, labelled, new_axes

# --- Chapter 1: free energy and rate–distortion -------------------------------


@labelled
def plot_water_filling(variances, theta, *, ax=None, title=None):
    """Reverse water-filling: component variances as bars, the water level θ.

    The part of each bar below θ (at most its variance) is the distortion
    ``D_i = min(θ, sigma_i^2)``; the part above θ is what gets coded, and its
    rate ``R_i = 1/2 log2(sigma_i^2 / D_i)`` is written on top of the bar.

    Args:
        variances: 1-D array of component variances sigma_i^2.
        theta: the water level (same units as the variances).
        ax, title: optional axis and title.

    See: *Free energy and rate–distortion* (reverse water-filling).
    """
    ax = new_axes(ax)
    var = np.asarray(variances, dtype=float)
    d = np.minimum(theta, var)
    rates = 0.5 * np.log2(var / d)
    i = np.arange(len(var))
    ax.bar(i, d, color=COLORS["muted"], label=r"distortion $D_i=\min(\theta,\sigma_i^2)$")
    ax.bar(i, var - d, bottom=d, color=COLORS["model"],
           label=r"coded part $\sigma_i^2-\theta$")
    ax.axhline(theta, color=COLORS["jpeg"], ls="--", lw=1.5,
               label=rf"water level $\theta={theta:g}$")
    for k in i:
        ax.annotate(f"{rates[k]:.2f} bits", (k, var[k]), xytext=(0, 3),
                    textcoords="offset points", ha="center", fontsize=8)
    ax.set_xticks(i, [f"{k + 1}" for k in i])
    ax.set_xlabel("component $i$")
    ax.set_ylabel(r"variance $\sigma_i^2$ (squared units)")
    ax.set_ylim(0, 1.15 * var.max())
    ax.legend(fontsize=8, loc="upper right")
    ax.set_title(title or "Reverse water-filling")
    return ax


@labelled
def plot_rate_distortion(curves, points=None, *, point_labels=None, ax=None,
                         title=None, logx=True,
                         xlabel="distortion $D$ (squared error per sample)",
                         ylabel="rate $R$ (bits per sample)"):
    """R(D) curves (lines) and operational or computed points (markers).

    Args:
        curves: ``{label: (D, R)}``; the first is drawn as the bound (solid
            black), the others dashed in the book's secondary colours.
        points: optional ``{label: (D, R)}``, drawn as markers.
        point_labels: optional text per point of the first ``points`` entry
            (e.g. ``"λ=4"``), written beside it.
        ax, title: optional axis and title; ``logx`` puts D on a log axis.
        xlabel, ylabel: axis labels with units.

    See: *Free energy and rate–distortion*.
    """
    ax = new_axes(ax, figsize=(6.0, 4.0))
    line_colors = [COLORS["bound"], COLORS["jpeg"], COLORS["accent"], COLORS["muted"]]
    for j, (label, (d, r)) in enumerate(curves.items()):
        ax.plot(d, r, color=line_colors[j % len(line_colors)],
                ls="-" if j == 0 else "--", lw=1.8 if j == 0 else 1.3, label=label)
    point_colors = [COLORS["model"], COLORS["alt"], COLORS["jpeg"]]
    markers = ["o", "s", "^"]
    for j, (label, (d, r)) in enumerate((points or {}).items()):
        ax.plot(d, r, markers[j % 3], color=point_colors[j % 3], ms=6, mfc="none",
                mew=1.5, label=label)
        for text, dk, rk in zip(point_labels if j == 0 and point_labels else [], d, r,
                                strict=False):
            ax.annotate(text, (dk, rk), xytext=(6, 2), textcoords="offset points",
                        fontsize=7, color=point_colors[0])
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return finish(ax, title)


@labelled
def plot_rd_gap(rates, gaps, references, *, ax=None, title=None):
    """Gap of an operational codec to R(D), in bits, against its rate.

    Args:
        rates: operational rates (bits per sample), shape (n,).
        gaps: operational rate minus R(D) at the measured distortion, (n,).
        references: ``{label: bits}`` drawn as horizontal dashed lines (e.g.
            the high-rate gap of entropy-coded scalar quantization).
        ax, title: optional axis and title.

    See: *Free energy and rate–distortion* (a learned quantizer).
    """
    ax = new_axes(ax)
    ax.plot(rates, gaps, "o-", color=COLORS["model"], ms=6, label="learned quantizer")
    ref_colors = [COLORS["jpeg"], COLORS["accent"], COLORS["alt"]]
    for j, (label, bits) in enumerate(references.items()):
        ax.axhline(bits, color=ref_colors[j % 3], ls="--", lw=1.2, label=label)
    ax.axhline(0.0, color=COLORS["bound"], lw=1.0, label="$R(D)$ bound")
    ax.set_xlabel("operational rate $R$ (bits per sample)")
    ax.set_ylabel("gap to $R(D)$ (bits per sample)")
    return finish(ax, title)



# --- Chapter 2: quantization and the uniform-noise relaxation -----------------


@labelled
def plot_quantizer_maps(y, y_hat, y_tilde, ax=None):
    """Rounding as a staircase next to noisy samples ``y_tilde = y + u``.

    Args:
        y: sorted encoder outputs, shape (n,).
        y_hat: ``round(y)`` (or rounded around a mean), shape (n,).
        y_tilde: ``y + u`` for the same ``y``, shape (n,).
    """
    ax = new_axes(ax)
    ax.plot(y, y, color=COLORS["muted"], lw=1, ls="--", label="identity $y$")
    ax.scatter(
        y,
        y_tilde,
        s=3,
        alpha=0.35,
        color=COLORS["alt"],
        label=r"training: $\tilde y = y + u$",
    )
    ax.plot(
        y,
        y_hat,
        color=COLORS["model"],
        lw=2,
        label=r"test: $\hat y = \mathrm{round}(y)$",
    )
    ax.set_xlabel("encoder output $y$ (latent units)")
    ax.set_ylabel("value given to rate and decoder")
    ax.set_title("Rounding is a staircase; noise is a band of width 1")
    ax.legend(loc="upper left", fontsize=8)
    return ax


@labelled
def plot_noisy_prior_density(
    samples, grid, p_hat, p_gauss, lattice, pmf, pmf_empirical, ax=None
):
    """Histogram of ``y + u`` against the box-convolved prior, with the pmf.

    Args:
        samples: draws of ``y_tilde = y + u`` with ``y`` from the prior, (n,).
        grid, p_hat, p_gauss: where and what the analytic densities are:
            the discretized Gaussian ``p_hat`` and the Gaussian ``p``.
        lattice, pmf, pmf_empirical: points ``mu + k``, the pmf ``p_hat`` there
            and the observed frequencies of ``round(y - mu) + mu``.
    """
    ax = new_axes(ax, figsize=(6.0, 3.8))
    ax.hist(
        samples,
        bins=120,
        density=True,
        color=COLORS["alt"],
        alpha=0.35,
        label=r"histogram of $\tilde y = y + u$",
    )
    ax.plot(
        grid,
        p_hat,
        color=COLORS["model"],
        lw=2,
        label=r"$\hat p = p \circledast \mathcal{U}$ (discretized Gaussian)",
    )
    ax.plot(
        grid,
        p_gauss,
        color=COLORS["bound"],
        lw=1,
        ls="--",
        label=r"prior $p = \mathcal{N}(\mu, \sigma^2)$",
    )
    ax.vlines(lattice, 0, pmf, color=COLORS["jpeg"], lw=1.5)
    ax.plot(
        lattice, pmf, "o", color=COLORS["jpeg"], ms=5, label=r"pmf $\hat p(\mu + k)$"
    )
    ax.plot(
        lattice,
        pmf_empirical,
        "x",
        color=COLORS["bound"],
        ms=7,
        label=r"frequency of $\hat y = \mathrm{round}(y-\mu)+\mu$",
    )
    ax.set_xlabel(r"latent value ($\tilde y$ or $\hat y$)")
    ax.set_ylabel("density  /  probability")
    ax.set_title("One function: density of $y+u$, pmf of the rounded $y$")
    ax.legend(fontsize=7, loc="upper right")
    return ax


@labelled
def plot_relaxation_rd(results, bound_d, bound_r, point_labels=None, ax=None):
    """Train-time estimates and test-time values of (D, R) for each relaxation.

    Args:
        results: ``{name: [(d_train, r_train, d_test, r_test), ...]}``, one
            tuple per trained model (e.g. per λ); rates in bits per sample.
        bound_d, bound_r: the source's R(D) curve to draw for reference.
        point_labels: optional text per tuple (e.g. ``"λ = 10"``), written
            next to the first relaxation's test point.
    """
    ax = new_axes(ax, figsize=(6.4, 4.2))
    ax.plot(bound_d, bound_r, color=COLORS["bound"], lw=1.5, label="$R(D)$ bound")
    palette = [COLORS["model"], COLORS["jpeg"], COLORS["alt"], COLORS["accent"]]
    markers = ["o", "s", "^", "D"]
    for j, (name, points) in enumerate(results.items()):
        color, marker = palette[j % len(palette)], markers[j % len(markers)]
        for i, (d_tr, r_tr, d_te, r_te) in enumerate(points):
            ax.annotate("", (d_te, r_te), (d_tr, r_tr),
                        arrowprops=dict(arrowstyle="->", color=color, alpha=0.7))
            ax.plot(d_tr, r_tr, marker, mfc="none", color=color, ms=7,
                    label=f"{name}: training estimate" if i == 0 else None)
            ax.plot(d_te, r_te, marker, color=color, ms=5,
                    label=f"{name}: test (rounded)" if i == 0 else None)
            if point_labels is not None and j == 0:
                ax.annotate(point_labels[i], (d_te, r_te), xytext=(0, -18),
                            textcoords="offset points", fontsize=8, ha="center",
                            bbox=dict(boxstyle="round,pad=0.15", fc="white",
                                      ec="none", alpha=0.85))
    ax.set_xlabel("distortion $D$ (squared error per sample)")
    ax.set_ylabel("rate $R$ (bits per sample)")
    ax.set_title("From training estimate (open) to test with rounding (filled)")
    ax.legend(fontsize=7, ncols=2, loc="upper right")
    return ax



# --- Chapter 3: discretized priors and entropy coding -------------------------


@labelled
def plot_pmfs(k, pmfs, labels, *, densities=None, ax=None, title=None):
    """Grouped bars of several pmfs on the integers ``k``.

    Args:
        k: 1-D integer support shared by all pmfs.
        pmfs: sequence of 1-D arrays (same length as ``k``).
        labels: one legend label per pmf.
        densities: optional sequence of ``(x, density)`` pairs, drawn as
            dashed curves in the matching colour (the continuous density the
            pmf discretizes).
        ax, title: optional axis and title.

    See: *Discretized priors and entropy coding*.
    """
    ax = new_axes(ax)
    colors = [COLORS["model"], COLORS["jpeg"], COLORS["alt"], COLORS["accent"]]
    width = 0.8 / len(pmfs)
    for i, (pmf, label) in enumerate(zip(pmfs, labels, strict=True)):
        shift = (i - (len(pmfs) - 1) / 2) * width
        color = colors[i % len(colors)]
        ax.bar(np.asarray(k) + shift, pmf, width=width, color=color, label=label)
        if densities is not None:
            x, dens = densities[i]
            ax.plot(x, dens, "--", color=color, lw=1.2)
    ax.set_xlabel("symbol $k$ (integer)")
    ax.set_ylabel(r"probability $\hat p(k)$")
    return finish(ax, title)


@labelled
def plot_bits_vs_distance(distance, curves, *, ax=None, title=None):
    """Code length ``-log2 p`` (bits) against the distance from the mean.

    Args:
        distance: 1-D array, distance ``|k - mean|`` in scales.
        curves: ``{label: bits}``; infinite entries (a mass that rounded to
            0) are drawn as crosses on the top edge of the axis.
        ax, title: optional axis and title.

    See: *Discretized priors and entropy coding* (tail-stable log-mass).
    """
    ax = new_axes(ax)
    palette = [COLORS["bound"], COLORS["jpeg"], COLORS["model"], COLORS["alt"]]
    finite_max = max(
        np.max(np.asarray(b)[np.isfinite(b)], initial=1.0) for b in curves.values()
    )
    for i, (label, bits) in enumerate(curves.items()):
        bits = np.asarray(bits, dtype=float)
        ok = np.isfinite(bits)
        color = palette[i % len(palette)]
        if i == 0:
            ax.plot(distance[ok], bits[ok], "-", color=color, label=label)
        else:  # open markers, shrinking, so coinciding curves stay visible
            ms = max(7.0 - 2.5 * (i - 1), 3.0)
            ax.plot(
                distance[ok], bits[ok], "o", mfc="none", color=color, ms=ms, label=label
            )
        if (~ok).any():  # one row of crosses per curve, above the data
            ax.plot(
                distance[~ok],
                np.full((~ok).sum(), finite_max * 1.5 ** (i + 1)),
                "x",
                color=color,
                ms=6,
                label=f"{label}: mass rounded to 0, ∞ bits",
            )
    ax.set_yscale("log")
    ax.set_xlabel(r"distance from the mean $|k - \mu| / \sigma$")
    ax.set_ylabel(r"code length $-\log_2 \hat p(k)$ [bits]")
    return finish(ax, title)


@labelled
def plot_entropy_vs_scale(scales, entropy, high_rate, *, ax=None, title=None):
    """Entropy of the discretized Gaussian and its high-rate approximation.

    Args:
        scales: 1-D array of prior scales ``sigma``.
        entropy: ``H(sigma)`` in bits (exact, from the pmf).
        high_rate: ``h(sigma) = 1/2 log2(2 pi e sigma^2)`` in bits.
        ax, title: optional axis and title.

    See: *Discretized priors and entropy coding*.
    """
    ax = new_axes(ax)
    ax.plot(scales, entropy, color=COLORS["model"], lw=2, label=r"$H(\hat p)$ (exact)")
    ax.plot(
        scales,
        high_rate,
        "--",
        color=COLORS["bound"],
        label=r"$h = \frac{1}{2}\log_2(2\pi e\sigma^2)$",
    )
    ax.axhline(0.0, color=COLORS["muted"], lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel(r"prior scale $\sigma$ (latent units)")
    ax.set_ylabel("bits per symbol")
    return finish(ax, title)


@labelled
def plot_coder_speeds(names, encode_msym_s, decode_msym_s, *, ax=None, title=None):
    """Bars of encode and decode speed (million symbols per second), labelled.

    See: *Discretized priors and entropy coding* (the production coder).
    """
    ax = new_axes(ax)
    x = np.arange(len(names))
    for shift, values, color, label in [
        (-0.2, encode_msym_s, COLORS["model"], "encode"),
        (0.2, decode_msym_s, COLORS["jpeg"], "decode"),
    ]:
        bars = ax.bar(x + shift, values, width=0.4, color=color, label=label)
        ax.bar_label(bars, fmt="%.2f", fontsize=8)
    ax.set_xticks(x, names)
    ax.set_ylabel("speed [million symbols / s]")
    return finish(ax, title)


@labelled
def plot_model_vs_sample(k, pmf, counts, *, ax=None, title=None):
    """A model pmf (bars) against the empirical frequencies of a sample (dots).

    Args:
        k: integer support; pmf: model probabilities on ``k``;
        counts: how often each ``k`` occurs in the sample.
        ax, title: optional axis and title.

    See: *Discretized priors and entropy coding* (interactive).
    """
    ax = new_axes(ax)
    ax.bar(
        k, pmf, width=0.8, color=COLORS["model"], alpha=0.8, label="model $\\hat p(k)$"
    )
    freq = np.asarray(counts, dtype=float) / max(np.sum(counts), 1)
    ax.plot(k, freq, "o", color=COLORS["jpeg"], ms=4, label="sample frequency")
    ax.set_xlabel("symbol $k$ (integer)")
    ax.set_ylabel("probability")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    return ax



# --- Chapter 4: emission distributions and distortion -------------------------


@labelled
def plot_residual_histogram(residuals, densities, *, ax=None, title=None):
    """Histogram of reconstruction errors against emission densities (log y).

    Args:
        residuals: 1-D array of errors ``x - x_hat`` in 8-bit units (integers).
        densities: ``{label: (grid, density)}`` in the same units, as lines.
        ax, title: optional axis and title.

    See: *Emission distributions and distortion* (the Gaussian emission).
    """
    ax = new_axes(ax, figsize=(6.0, 3.8))
    r = np.asarray(residuals)
    edges = np.arange(np.floor(r.min()), np.ceil(r.max()) + 2) - 0.5
    ax.hist(r, bins=edges, density=True, color=COLORS["muted"], alpha=0.6,
            label="errors of the reconstruction")
    palette = [COLORS["model"], COLORS["jpeg"], COLORS["alt"]]
    for j, (label, (grid, dens)) in enumerate(densities.items()):
        ax.plot(grid, dens, color=palette[j % 3], lw=1.8, label=label)
    ax.set_yscale("log")
    ax.set_ylim(bottom=1e-6)
    ax.set_xlabel(r"error $x - \hat x$ (8-bit units, one sub-pixel)")
    ax.set_ylabel("density")
    return finish(ax, title)


@labelled
def plot_degradations(reference, images, titles, *, crop, error_limit=40.0):
    """Crops of degraded images (top) and their error maps (bottom).

    Args:
        reference: the original, uint8 (H, W, 3).
        images: degraded versions, uint8 (H, W, 3) each; the first panel
            shows ``reference`` itself.
        titles: one title per image (e.g. its MSE and PSNR).
        crop: ``(top, left, size)`` of the square region shown.
        error_limit: top of the colour range of the error maps (8-bit units).

    Returns:
        The figure. The error map of a pixel is the RMS over its R, G, B errors
        (8-bit units), on one colour scale for all panels: the mean of its
        square over the whole image is the image's MSE.

    See: *Emission distributions and distortion* (what MSE misses).
    """
    top, left, size = crop
    region = (slice(top, top + size), slice(left, left + size))
    n = len(images) + 1
    fig, axes = plt.subplots(2, n, figsize=(1.9 * n, 4.4), dpi=80,
                             layout="constrained")  # 80 dpi: ~1 crop pixel per dot
    ref = np.asarray(reference, dtype=np.float64)
    for j, (img, title) in enumerate(zip([reference, *images],
                                         ["original", *titles], strict=True)):
        axes[0, j].imshow(np.asarray(img)[region])
        axes[0, j].set_title(title, fontsize=8)
        err = np.sqrt(np.square(np.asarray(img, dtype=np.float64) - ref).mean(-1))
        shown = axes[1, j].imshow(err[region], cmap="magma", vmin=0.0,
                                  vmax=error_limit)
        for ax in axes[:, j]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[1, 0].set_ylabel("error, RMS over R, G, B", fontsize=8)
    fig.colorbar(shown, ax=axes[1, :], shrink=0.8,
                 label=r"$|\hat x - x|$ (8-bit units)")
    return fig


@labelled
def plot_iso_loss(rates, distortions, lmbdas, *, labels=None, ax=None, title=None):
    """An operational R–D curve and, per λ, its best point and line ``R + λD``.

    For each λ the point of the curve with the smallest ``R + λD`` is ringed
    and the line of slope ``-λ`` through it is drawn: no point of the curve
    lies below it (for the points of a convex curve).

    Args:
        rates: bits per pixel, shape (n,); distortions: MSE on [0, 1], (n,).
        lmbdas: λ values (bpp per unit of MSE on [0, 1]).
        labels: optional text per point (e.g. JPEG qualities).
        ax, title: optional axis and title.

    See: *Emission distributions and distortion* (what λ buys).
    """
    ax = new_axes(ax, figsize=(6.0, 4.0))
    r, d = np.asarray(rates, float), np.asarray(distortions, float)
    ax.plot(d, r, "o-", color=COLORS["jpeg"], ms=4, label="operational points")
    for text, dk, rk in zip(labels or [], d, r, strict=False):
        ax.annotate(text, (dk, rk), xytext=(4, 3), textcoords="offset points",
                    fontsize=7, color=COLORS["jpeg"])
    palette = [COLORS["model"], COLORS["alt"], COLORS["accent"], COLORS["bound"]]
    grid = np.linspace(0.0, d.max() * 1.05, 2)
    for j, lm in enumerate(lmbdas):
        best = int(np.argmin(r + lm * d))
        color = palette[j % len(palette)]
        ax.plot(grid, r[best] + lm * (d[best] - grid), "--", color=color, lw=1.2,
                label=rf"$R + {lm:g}\,D$ = min")
        ax.plot(d[best], r[best], "o", ms=11, mfc="none", mew=1.5, color=color)
    ax.set_ylim(0.0, r.max() * 1.05)
    ax.set_xlim(0.0, d.max() * 1.05)
    ax.set_xlabel("distortion $D$: MSE on [0, 1]")
    ax.set_ylabel("rate $R$ [bits per pixel]")
    return finish(ax, title)


@labelled
def plot_implied_lmbda(curves, *, brackets=None, ax=None, title=None):
    """Implied λ = −ΔR/ΔD per segment of R–D curves, against the rate (log y).

    Args:
        curves: ``{label: (bpp, lmbda)}``, one marker per segment (e.g. at the
            mean rate of its two end points); λ per unit of MSE on [0, 1].
        brackets: optional ``{label: (bpp, lo, hi)}``, vertical bars for the
            interval each segment's λ must lie in (the λ its end points were
            trained with).
        ax, title: optional axis and title. A right axis gives λ on 0–255.

    See: *Emission distributions and distortion* (what λ buys).
    """
    ax = new_axes(ax, figsize=(6.0, 4.0))
    palette = [COLORS["jpeg"], COLORS["model"], COLORS["alt"]]
    for j, (label, (rate, lm)) in enumerate(curves.items()):
        ax.plot(rate, lm, "os^"[j % 3] + "-", color=palette[j % 3], ms=5, label=label)
    for label, (rate, lo, hi) in (brackets or {}).items():
        ax.vlines(rate, lo, hi, color=COLORS["model"], lw=5, alpha=0.3, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("rate [bits per pixel]")
    ax.set_ylabel(r"$\lambda = -\Delta R/\Delta D$ (MSE on [0, 1])")
    scale = 255.0**2
    right = ax.secondary_yaxis("right", functions=(lambda v: v / scale,
                                                   lambda v: v * scale))
    right.set_ylabel(r"$\lambda$ per unit of 8-bit MSE")
    return finish(ax, title)
