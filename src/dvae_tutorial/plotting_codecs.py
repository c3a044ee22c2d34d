"""Figures of Part III (chapters 5–6): training curves, Kodak R–D, images, bits.

Chapter 5 (the single-layer codec, Ballé et al. 2018) and chapter 6 (the
hierarchical VAE, Duan et al. 2023) draw through these: training history,
PSNR against bpp on Kodak, reconstructions beside JPEG, where the bits go (per
channel, per layer), and samples. Each helper returns its axis or figure; the
shared style (colours, axes, legend) comes from :mod:`dvae_tutorial.plotting`.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from .plotting import COLORS, finish, labelled, new_axes

# --- Chapter 5: a discretized VAE codec ---------------------------------------


@labelled
def plot_training_history(history, *, lmbda, title=None):
    """Training curves of :func:`~dvae_tutorial.training.fit`: loss, bpp, PSNR.

    Args:
        history: ``FitResult.history`` (``"train"`` rows every ``log_every``
            steps, ``"val"`` rows of the EMA weights). Training rows with
            ``mse`` 0 (the prior trained on cached latents) draw no PSNR.
        lmbda: the run's λ (for the axis label of the loss).

    Returns:
        The figure (three panels sharing the step axis).

    See: *A discretized VAE codec* (training).
    """
    train, val = history["train"], history["val"]
    steps = [r["step"] for r in train]
    fig, axes = plt.subplots(1, 3, figsize=(11.0, 3.2), layout="constrained")
    for ax in axes:
        ax.grid(True, alpha=0.3)
        ax.set_xlabel("optimizer step")
    axes[0].plot(steps, [r["loss"] for r in train], color=COLORS["model"],
                 label="train (noisy $\\tilde y$)")
    axes[0].set_ylabel(f"bpp + λ·MSE  (λ = {lmbda:g}, MSE on [0, 1])")
    axes[0].set_yscale("log")
    axes[1].plot(steps, [r["bpp"] for r in train], color=COLORS["model"],
                 label="train")
    if all(r["mse"] > 0 for r in train):  # a prior-only stage has no distortion
        axes[2].plot(steps, [10 * np.log10(1 / r["mse"]) for r in train],
                     color=COLORS["model"], label="train")
    if val:
        vs = [r["step"] for r in val]
        axes[1].plot(vs, [r["bpp"] for r in val], "o-", color=COLORS["jpeg"],
                     label="validation (EMA, rounded $\\hat y$)")
        axes[2].plot(vs, [r["psnr"] for r in val], "o-", color=COLORS["jpeg"],
                     label="validation")
    axes[1].set_ylabel("rate (bits per pixel)")
    axes[2].set_ylabel("PSNR (dB)")
    for ax in axes:
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return fig


@labelled
def plot_rd_kodak(curves, *, annotate=None, ax=None, title=None,
                  xlim=None, ylim=None):
    """PSNR against bpp on Kodak, one line per codec.

    Args:
        curves: ``{label: (bpp, psnr)}`` in drawing order; labels containing
            "JPEG" are drawn in the JPEG colour, "(published" ones dashed.
        annotate: optional ``{label: [text per point]}`` (e.g. λ values).
        ax, title, xlim, ylim: optional.

    See: *A discretized VAE codec* (Kodak against JPEG).
    """
    ax = new_axes(ax, figsize=(6.4, 4.4))
    # seven distinct colours (Okabe–Ito) before any repeats
    palette = [COLORS["model"], COLORS["alt"], COLORS["accent"], "#56B4E9",
               "#E69F00", COLORS["muted"], COLORS["bound"]]
    k = 0
    for label, (rate, psnr) in curves.items():
        if "JPEG" in label:
            color, style = COLORS["jpeg"], "s-"
        else:
            color, style = palette[k % len(palette)], "o-"
            k += 1
        if "published" in label:
            style = "--"
        ax.plot(rate, psnr, style, color=color, ms=5, lw=1.5, label=label)
        for text, r, p in zip((annotate or {}).get(label, []), rate, psnr,
                              strict=False):
            ax.annotate(text, (r, p), xytext=(5, -10), textcoords="offset points",
                        fontsize=7, color=color)
    ax.set_xlabel("rate (bits per pixel, file bytes)")
    ax.set_ylabel("PSNR (dB, 8-bit RGB)")
    if xlim:
        ax.set_xlim(*xlim)
    if ylim:
        ax.set_ylim(*ylim)
    return finish(ax, title)


@labelled
def plot_image_row(images, titles, *, crop=None, suptitle=None):
    """Images (or square crops) side by side with titles.

    Args:
        images: uint8 ``(H, W, 3)`` arrays.
        titles: one per image (e.g. codec, bpp, PSNR).
        crop: optional ``(top, left, size)``.

    See: *A discretized VAE codec* (reconstructions next to JPEG).
    """
    n = len(images)
    fig, axes = plt.subplots(1, n, figsize=(2.9 * n, 3.2), layout="constrained")
    for ax, image, text in zip(np.atleast_1d(axes), images, titles, strict=True):
        image = np.asarray(image)
        if crop:
            top, left, size = crop
            image = image[top:top + size, left:left + size]
        ax.imshow(image, interpolation="nearest")
        ax.set_title(text, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    if suptitle:
        fig.suptitle(suptitle)
    return fig


@labelled
def plot_bits_per_channel(bits, *, ax=None, title=None):
    """Bits each latent channel costs, channels sorted by cost, per model.

    Args:
        bits: ``{label: array of bits per channel}`` (e.g. per model's λ).

    See: *A discretized VAE codec* (where the bits go).
    """
    ax = new_axes(ax, figsize=(6.4, 3.6))
    palette = [COLORS["model"], COLORS["alt"], COLORS["accent"], COLORS["jpeg"],
               COLORS["muted"]]
    for j, (label, values) in enumerate(bits.items()):
        values = np.sort(np.asarray(values, dtype=float))[::-1]
        ax.plot(np.arange(1, values.size + 1), values, "-", color=palette[j % 5],
                lw=1.6, label=label)
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_xlabel("latent channel, sorted by cost")
    ax.set_ylabel("bits (−Σ log₂ P over the channel)")
    return finish(ax, title)



# --- Chapter 6: hierarchical VAEs ---------------------------------------------


@labelled
def plot_prior_adaptivity(channel_scales, image, scale_map, *, map_label,
                          title=None):
    """A fixed prior next to an adaptive one: σ per channel, an image, a σ map.

    Args:
        channel_scales: the factorized prior's σ_c, shape (M,): the same at
            every position of every image.
        image: uint8 ``(H, W, 3)``.
        scale_map: (h, w) prior scales of one hierarchical layer for ``image``
            (e.g. the mean over its channels), drawn over the image's extent.
        map_label: colour-bar label (which layer, which statistic).

    See: *Hierarchical VAEs* (why a hierarchy).
    """
    fig, axes = plt.subplots(1, 3, figsize=(11.5, 3.3), layout="constrained",
                             gridspec_kw={"width_ratios": [1.0, 1.05, 1.25]})
    scales = np.sort(np.asarray(channel_scales, dtype=float))[::-1]
    axes[0].bar(np.arange(1, scales.size + 1), scales, width=1.0,
                color=COLORS["model"])
    axes[0].set_xlabel("latent channel c, sorted")
    axes[0].set_ylabel("prior scale σ_c (latent units)")
    axes[0].set_title("single-layer: one σ per channel,\nevery image, every position",
                      fontsize=9)
    axes[0].grid(True, alpha=0.3)
    height, width = np.asarray(image).shape[:2]
    axes[1].imshow(image)
    axes[1].set_title("the image", fontsize=9)
    shown = axes[2].imshow(scale_map, cmap="magma", extent=(0, width, height, 0))
    fig.colorbar(shown, ax=axes[2], label=map_label)
    axes[2].set_title("hierarchical: σ given the layers above", fontsize=9)
    for ax in axes[1:]:
        ax.set_xlabel("x (pixels)")
        ax.set_ylabel("y (pixels)")
    if title:
        fig.suptitle(title)
    return fig


@labelled
def plot_bits_per_layer(layers, estimated, file, per_element, *, title=None):
    """Where a hierarchical model's bits go: per layer, and per latent element.

    Args:
        layers: layer labels in coding order (``"z1"`` … ``"zL"``).
        estimated: ``−Σ log₂ P`` of each layer in bits per pixel (mean over
            images); the values add up to the model's estimated bpp.
        file: the same from the real stream, each layer's payload bits / (H·W).
        per_element: bits per latent element of each layer.

    See: *Hierarchical VAEs* (bits per layer).
    """
    fig, axes = plt.subplots(1, 2, figsize=(11.0, 3.6), layout="constrained")
    pos = np.arange(len(layers))
    axes[0].bar(pos - 0.2, estimated, width=0.4, color=COLORS["model"],
                label="−Σ log₂ P (estimate)")
    axes[0].bar(pos + 0.2, file, width=0.4, color=COLORS["jpeg"],
                label="its share of the real stream (payload bits)")
    axes[0].set_ylabel("rate of the layer (bits per pixel)")
    axes[1].bar(pos, per_element, width=0.6, color=COLORS["alt"],
                label="−Σ log₂ P / number of elements")
    axes[1].set_ylabel("bits per latent element")
    for ax in axes:
        ax.set_xticks(pos, layers)
        ax.set_xlabel("latent layer (coding order: coarse → fine)")
        ax.grid(True, alpha=0.3, axis="y")
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return fig


@labelled
def plot_image_grid(images, titles, *, ncols, crop=None, suptitle=None):
    """Images in a grid of ``ncols`` columns, a title on each (empty slots hidden).

    Args:
        images: uint8 ``(H, W, 3)`` arrays; titles: one per image.
        crop: optional ``(top, left, size)``.

    See: *Hierarchical VAEs* (progressive decoding).
    """
    nrows = -(-len(images) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.3 * ncols, 1.9 * nrows),
                             layout="constrained", squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= len(images):
            ax.set_axis_off()
            continue
        image = np.asarray(images[i])
        if crop:
            top, left, size = crop
            image = image[top:top + size, left:left + size]
        ax.imshow(image, interpolation="nearest")
        ax.set_title(titles[i], fontsize=8)
    if suptitle:
        fig.suptitle(suptitle)
    return fig


@labelled
def plot_sample_rows(rows, *, suptitle=None):
    """Rows of samples, one row per setting, its label on the left.

    Args:
        rows: ``{label: images}`` with images (n, 3, H, W) in [0, 1] (a torch
            tensor or array) or a list of uint8 ``(H, W, 3)``.

    See: *Hierarchical VAEs* (samples).
    """
    rows = {k: [np.asarray(im) for im in v] for k, v in rows.items()}
    n = max(len(v) for v in rows.values())
    fig, axes = plt.subplots(len(rows), n, figsize=(1.25 * n + 1.6, 1.35 * len(rows)),
                             layout="constrained", squeeze=False)
    for r, (label, images) in enumerate(rows.items()):
        for c, ax in enumerate(axes[r]):
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(images):
                ax.set_axis_off()
                continue
            image = images[c]
            if image.ndim == 3 and image.shape[0] == 3:  # CHW in [0, 1]
                image = np.clip(image.transpose(1, 2, 0), 0.0, 1.0)
            ax.imshow(image, interpolation="nearest")
        axes[r][0].set_ylabel(label, fontsize=8, rotation=0, ha="right", va="center")
    if suptitle:
        fig.suptitle(suptitle)
    return fig
