"""Bounded memory for any image size: the transforms run tile by tile.

Backs *A discretized VAE codec* (images of any size). Coding a 12-megapixel
photo whole needs some 600 bytes a pixel — nearly all of it the activations
of the analysis and synthesis transforms ``g_a``/``g_s`` at high resolution
(a 192-channel layer at half resolution is 192 bytes a pixel by itself),
while the latent ``y`` is 16× smaller on each side and the entropy coder
works on it whole. So only the transforms are tiled:

- the latent grid is cut into tiles of :data:`TILE` × :data:`TILE` latents
  (1024 × 1024 pixels);
- each tile is computed from its region *plus a halo* of :data:`HALO`
  latents on every side (clipped at the image's border, where the
  transforms' own zero padding applies as for the whole image), and only
  the tile's own part of the result is kept.

A latent of ``g_a`` depends on the pixels within two latents of it and a
pixel of ``g_s`` on the latents within two of it (measured: one pixel moves
latents ±1 away, one latent moves pixels ±2 latents away; the 5×5 stride-2
layers give these radii), so with a halo of 2 (:data:`HALO_GDN`; 4 for the
residual-block transforms) every kept value is computed from exactly the
inputs the whole-image transform uses: tiled equals whole to rounding
(1e-15 in float64, tested). In float32 the convolution library
may sum in another order for another tile shape; that can move a latent by
~1e-6 and, very rarely, the rounding of one symbol — the file is still a
valid file, and the decoder is defined by the tiling it runs. The tile grid
is fixed (it does not depend on the machine or on free memory), so one file
always decodes to the same pixels. Images of at most ``TILE + halo`` latents
a side (1056 pixels: Kodak, every chapter) run whole, exactly as before.

Cost: the halo makes each tile's work ``((TILE + 2·halo)/TILE)² ≈ 1.13``
times its share (halo 2); ``bench/large_images.py`` measures seconds and
peak memory per megapixel, tiled and whole.

Written here rather than taken from a library: CompressAI and the other
learned-codec libraries code images whole (their users hit this wall; see
the issue that asked for it), and generic tilers (e.g. for segmentation)
blend overlapping tiles, which is not exact.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .configs import LATENT_STRIDE

#: Side of a tile, in latents (× 16 pixels: 1024). Part of the decoder's
#: definition: a file decodes to the same pixels wherever this is the same.
TILE = 64
#: Latents of context computed around each tile: the transforms' reach.
#: GDN transforms (every shipped model): 2 — their 5×5 stride-2 layers reach
#: two latents (a halo of 1 is not exact, 2 is: tested in float64).
HALO_GDN = 2
#: Transforms with residual blocks (``gdn=False``; their 3×3 layers reach
#: further): 4 (3 is not exact, 4 is). Also the default of :func:`analysis`.
HALO = 4


def halo_for(config: object) -> int:
    """The halo a model's transforms need: :data:`HALO_GDN` for GDN
    transforms (``config.gdn``), else :data:`HALO`."""
    return HALO_GDN if getattr(config, "gdn", False) else HALO


def tiles(height: int, width: int, tile: int = TILE,
          halo: int = HALO) -> Iterator[tuple[slice, slice, slice, slice]]:
    """The tiles of an ``height × width`` latent grid, row by row: for each,
    the rows/columns it covers and the rows/columns of the region (tile plus
    halo, clipped to the grid) it is computed from, as ``(rows, cols,
    region_rows, region_cols)``."""
    for r0 in range(0, height, tile):
        r1 = min(r0 + tile, height)
        for c0 in range(0, width, tile):
            c1 = min(c0 + tile, width)
            yield (slice(r0, r1), slice(c0, c1),
                   slice(max(0, r0 - halo), min(height, r1 + halo)),
                   slice(max(0, c0 - halo), min(width, c1 + halo)))


def _fits(height: int, width: int, tile: int, halo: int) -> bool:
    return max(height, width) <= tile + halo


def _scaled(s: slice, factor: int) -> slice:
    return slice(s.start * factor, s.stop * factor)


def _inner(part: slice, region: slice, factor: int = 1) -> slice:
    """Where ``part`` lies inside ``region``'s result (``factor`` units a latent)."""
    start = (part.start - region.start) * factor
    return slice(start, start + (part.stop - part.start) * factor)


def analysis(g_a: Callable[[Tensor], Tensor], x: Tensor, tile: int | None = None,
             halo: int | None = None, multiple: int = LATENT_STRIDE) -> Tensor:
    """``g_a`` of ``x`` (B, 3, H, W) replicate-padded on the bottom and right
    to sides divisible by ``multiple`` (a multiple of 16), tile by tile → ``y``
    (B, M, H'/16, W'/16). Each tile pads its own region (row and column
    indices clamped to the image), so no padded copy of a large image is made.
    ``tile`` and ``halo`` default to :data:`TILE` and :data:`HALO` (read at
    call time).

    Raises:
        ValueError: ``multiple`` not a multiple of 16, ``tile < 1``, ``halo < 0``.
    """
    tile, halo = _checked(tile, halo)
    if multiple % LATENT_STRIDE:
        raise ValueError(f"analysis pads to multiples of {LATENT_STRIDE}, got {multiple}")
    height, width = (-(-int(side) // multiple) * multiple // LATENT_STRIDE
                     for side in x.shape[-2:])
    if _fits(height, width, tile, halo):
        return g_a(_replicate_pad(x, height * LATENT_STRIDE, width * LATENT_STRIDE))
    out = None
    for rows, cols, region_rows, region_cols in tiles(height, width, tile, halo):
        part = g_a(_region(x, _scaled(region_rows, LATENT_STRIDE),
                           _scaled(region_cols, LATENT_STRIDE)))
        if out is None:
            out = part.new_empty((*part.shape[:2], height, width))
        out[..., rows, cols] = part[..., _inner(rows, region_rows),
                                    _inner(cols, region_cols)]
    return out


def _replicate_pad(x: Tensor, height: int, width: int) -> Tensor:
    """``x`` padded on the bottom and right to ``height × width`` by repeating
    its last row and column (``x`` itself when nothing is needed)."""
    pad_h, pad_w = height - x.shape[-2], width - x.shape[-1]
    if pad_h == 0 and pad_w == 0:
        return x
    return F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")


def _region(x: Tensor, rows: slice, cols: slice) -> Tensor:
    """``x`` replicate-padded, then ``[..., rows, cols]``: the rows and
    columns past the image repeat its last ones."""
    height, width = x.shape[-2:]
    if rows.start >= height or cols.start >= width:  # wholly in the padding
        index_r = torch.arange(rows.start, rows.stop, device=x.device).clamp_(max=height - 1)
        index_c = torch.arange(cols.start, cols.stop, device=x.device).clamp_(max=width - 1)
        return x.index_select(-2, index_r).index_select(-1, index_c)
    part = x[..., rows.start:min(rows.stop, height), cols.start:min(cols.stop, width)]
    return _replicate_pad(part, rows.stop - rows.start, cols.stop - cols.start)


def synthesis(g_s: Callable[[Tensor], Tensor], y: Tensor, tile: int | None = None,
              halo: int | None = None) -> Tensor:
    """``g_s(y)`` tile by tile: ``y`` (B, M, h, w) → (B, 3, 16h, 16w), contiguous;
    ``tile``/``halo`` as for :func:`analysis`. The same pixels for any thread
    count and any oneDNN setting: see :func:`reproducible`.

    Raises:
        ValueError: ``tile < 1`` or ``halo < 0``.
    """
    tile, halo = _checked(tile, halo)
    height, width = y.shape[-2:]
    run = reproducible(g_s)
    with onednn_pinned():
        if _fits(height, width, tile, halo):
            return run(y).contiguous()
        out = None
        for rows, cols, region_rows, region_cols in tiles(height, width, tile, halo):
            part = run(y[..., region_rows, region_cols])
            if out is None:
                out = part.new_empty((*part.shape[:2], height * LATENT_STRIDE,
                                      width * LATENT_STRIDE))
            out[..., _scaled(rows, LATENT_STRIDE), _scaled(cols, LATENT_STRIDE)] = part[
                ..., _inner(rows, region_rows, LATENT_STRIDE),
                _inner(cols, region_cols, LATENT_STRIDE)]
        return out


def reproducible(g_s: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """``g_s`` with each stride-2 transposed convolution run as a stride-1
    convolution and a pixel shuffle (:func:`upsample_as_convolution`).

    Why: the synthesis runs in float32, so the order of its sums shows in the
    8-bit pixels. oneDNN's *transposed* convolution picks its kernel by thread
    count: on this machine 3 threads summed one layer of ``single-845`` in
    another order than 1, 2 or 4 threads (4 Kodak pixel values one level
    apart), and PyTorch's own convolution (oneDNN off) another again (21 of
    1.2 million). oneDNN's *forward* convolution gave the same bits for 1 to 8
    threads, at the same speed. So the decoder runs forward convolutions only,
    with oneDNN pinned on (:func:`onednn_pinned`), and a file decodes to the
    same PNG for any thread count and oneDNN setting (tested). Training keeps
    the transposed convolutions (same weights, same function up to rounding).
    """
    if not isinstance(g_s, nn.Sequential):
        return g_s
    layers = list(g_s)

    def run(h: Tensor) -> Tensor:
        if h.dtype == torch.float32 and h.device.type == "cpu":
            h = h.contiguous(memory_format=torch.channels_last)  # oneDNN's layout
        for layer in layers:
            h = (upsample_as_convolution(layer, h) if _is_upsample(layer)
                 else layer(h))
        return h

    return run


def _is_upsample(layer: nn.Module) -> bool:
    return (isinstance(layer, nn.ConvTranspose2d) and layer.stride == (2, 2)
            and layer.kernel_size == (5, 5) and layer.padding == (2, 2)
            and layer.output_padding == (1, 1) and layer.groups == 1
            and layer.dilation == (1, 1))


def upsample_as_convolution(layer: nn.ConvTranspose2d, x: Tensor) -> Tensor:
    """``layer(x)`` for a 5×5 stride-2 transposed convolution (padding 2,
    output padding 1) as a 3×3 convolution to ``4 · C_out`` channels, one per
    output phase, and ``pixel_shuffle(2)`` (the sub-pixel form, Shi et al.
    2016): output pixel ``2i + r`` takes kernel tap ``r + 2 - 2d`` from input
    ``i + d``, ``d ∈ {-1, 0, 1}``. Equal to ``layer(x)`` up to float rounding
    (tested against it in float64)."""
    weight = layer.weight  # (C_in, C_out, 5, 5)
    c_in, c_out = weight.shape[:2]
    phases = weight.new_zeros(c_out, 2, 2, c_in, 3, 3)
    for r in range(2):
        for d in range(3):
            tap = r + 2 - 2 * (d - 1)
            if not 0 <= tap < 5:
                continue
            for s in range(2):
                for e in range(3):
                    tap_w = s + 2 - 2 * (e - 1)
                    if 0 <= tap_w < 5:
                        phases[:, r, s, :, d, e] = weight[:, :, tap, tap_w].t()
    phases = phases.reshape(4 * c_out, c_in, 3, 3)
    if x.is_contiguous(memory_format=torch.channels_last):
        phases = phases.contiguous(memory_format=torch.channels_last)
    bias = None if layer.bias is None else layer.bias.repeat_interleave(4)
    return F.pixel_shuffle(F.conv2d(x, phases, bias, padding=1), 2)


@contextlib.contextmanager
def onednn_pinned() -> Iterator[None]:
    """oneDNN on for the block (where PyTorch has it), whatever the caller set;
    restored after."""
    mkldnn = torch.backends.mkldnn
    before = mkldnn.enabled
    mkldnn.enabled = mkldnn.is_available()
    try:
        yield
    finally:
        mkldnn.enabled = before


def _checked(tile: int | None, halo: int | None) -> tuple[int, int]:
    tile = TILE if tile is None else tile
    halo = HALO if halo is None else halo
    if tile < 1 or halo < 0:
        raise ValueError(f"tiles need tile >= 1 and halo >= 0, got {tile}, {halo}")
    return tile, halo


class TiledTransforms:
    """``_analyze``/``_synthesize`` for a model with ``g_a``, ``g_s``,
    ``stride`` and a ``config`` (its ``gdn`` picks the halo): the codec's
    transforms, in tiles. Mixed into both model families."""

    def _analyze(self, x: Tensor) -> Tensor:
        """``g_a`` of ``x`` padded to the stride, in tiles (:func:`analysis`)."""
        return analysis(self.g_a, x, halo=halo_for(self.config), multiple=self.stride)

    def _synthesize(self, y: Tensor) -> Tensor:
        """``g_s(y)`` in tiles, the same pixels in every setting (:func:`synthesis`)."""
        return synthesis(self.g_s, y, halo=halo_for(self.config))
