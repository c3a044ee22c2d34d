"""Tiled transforms (:mod:`dvae_tutorial.tiling`): exact against whole-image
transforms, covering, and used by the codec for large images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dvae_tutorial import codec, tiling
from dvae_tutorial.checkpoints import build_model
from dvae_tutorial.configs import ModelConfig
from dvae_tutorial.images import to_tensor01


def smooth(h, w, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([np.sin(xx / 9 + c) * np.cos(yy / 6 - c) for c in range(3)], -1)
    return np.clip(127 + 100 * base + rng.normal(0, 6, (h, w, 3)), 0, 255).astype(
        np.uint8)


@pytest.mark.parametrize("height,width,tile,halo", [(7, 5, 3, 2), (1, 1, 4, 4),
                                                     (8, 8, 8, 0), (9, 17, 4, 1)])
def test_tiles_cover_the_grid_once_with_clipped_regions(height, width, tile, halo):
    count = np.zeros((height, width), int)
    for rows, cols, region_rows, region_cols in tiling.tiles(height, width, tile, halo):
        count[rows, cols] += 1
        assert 0 <= region_rows.start <= rows.start and rows.stop <= region_rows.stop
        assert region_rows.stop <= height and region_cols.stop <= width
        assert rows.start - region_rows.start == min(halo, rows.start)
        assert region_cols.stop - cols.stop == min(halo, width - cols.stop)
    assert (count == 1).all()


def model64(gdn=True):
    torch.manual_seed(0)
    model = build_model(ModelConfig(channels=8, latent_channels=6, hyperprior=False,
                                    gdn=gdn))
    return model.eval().double()


@pytest.mark.parametrize("gdn", [True, False])
@pytest.mark.parametrize("tile", [1, 3, 5])
def test_tiled_transforms_equal_whole_ones_with_the_models_halo(gdn, tile):
    """In float64 the tiled result is the whole-image one with the halo the
    model's transforms need (2 latents for GDN transforms, 4 with residual
    blocks); one latent less is not enough (the test can fail)."""
    model = model64(gdn)
    halo = tiling.halo_for(model.config)
    assert halo == (2 if gdn else 4)
    x = to_tensor01(smooth(160, 192))[None].double()
    with torch.no_grad():
        y = model.g_a(x)
        y_hat = torch.randint(-3, 4, y.shape, generator=torch.Generator().manual_seed(1),
                              dtype=torch.float64)
        x_hat = model.g_s(y_hat)
        for h in (halo, halo + 2):
            assert torch.allclose(tiling.analysis(model.g_a, x, tile, h), y,
                                  rtol=0, atol=1e-12)
            assert torch.allclose(tiling.synthesis(model.g_s, y_hat, tile, h),
                                  x_hat, rtol=0, atol=1e-12)
        short = halo - 1
        assert (tiling.analysis(model.g_a, x, tile, short) - y).abs().max() > 1e-8
        assert (tiling.synthesis(model.g_s, y_hat, tile, short) - x_hat).abs().max() > 1e-8


def test_small_images_run_whole_and_bad_arguments_are_refused():
    calls, model = [], model64()

    def g_a(x):
        calls.append(tuple(x.shape))
        return model.g_a(x)

    x = torch.rand(1, 3, 64, 48, dtype=torch.float64)
    tiling.analysis(g_a, x, tile=2, halo=2)  # 4×3 latents ≤ tile + halo
    assert calls == [(1, 3, 64, 48)]
    with pytest.raises(ValueError, match="multiples of 16"):
        tiling.analysis(g_a, x, tile=2, halo=2, multiple=24)
    with pytest.raises(ValueError, match="tile >= 1"):
        tiling.synthesis(model.g_s, torch.zeros(1, 6, 2, 2), tile=0)


def test_codec_tiles_large_images_exactly_enough(monkeypatch):
    """A shipped model with 64-pixel tiles (TILE = 4 latents) on a 208×304
    photo: the file decodes, its latents are the whole-image ones but for
    float32 summation order, and the pixels are within one level (in practice
    nearly all equal) of the whole-image codec's; the decoder's restored
    settings are untouched."""
    name = codec.shipped_models("single")[0].name
    image = smooth(208, 304, seed=1)
    whole = codec.compress(image, name)
    whole_pixels = codec.decompress(whole.data)
    monkeypatch.setattr(tiling, "TILE", 4)
    tiled = codec.compress(image, name)
    assert abs(len(tiled.data) - len(whole.data)) <= 8
    pixels = codec.decompress(tiled.data)
    diff = np.abs(pixels.astype(int) - whole_pixels.astype(int))
    assert diff.max() <= 1 and np.count_nonzero(diff) < 1e-3 * diff.size
    assert codec.decompress(whole.data).shape == image.shape
    assert torch.backends.mkldnn.enabled


@pytest.mark.parametrize("c_in,c_out,h,w", [(3, 5, 4, 6), (8, 3, 1, 1), (2, 2, 7, 3)])
def test_upsample_as_convolution_equals_the_transposed_convolution(c_in, c_out, h, w):
    """The sub-pixel form of the 5×5 stride-2 transposed convolution (oracle:
    torch's ConvTranspose2d), in float64 and channels-last float32."""
    from dvae_tutorial.layers import upsample

    torch.manual_seed(c_in * 10 + c_out)
    layer = upsample(c_in, c_out).double()
    x = torch.randn(2, c_in, h, w, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(tiling.upsample_as_convolution(layer, x), layer(x),
                              rtol=0, atol=1e-12)
        layer32, x32 = layer.float(), x.float().contiguous(memory_format=torch.channels_last)
        assert torch.allclose(tiling.upsample_as_convolution(layer32, x32), layer32(x32),
                              rtol=0, atol=1e-5)


def test_synthesis_pins_onednn_and_restores_the_callers_setting():
    model = codec.load_shipped(codec.shipped_models("single")[0].name)
    seen = []
    layer = torch.nn.Identity()
    layer.register_forward_hook(lambda *a: seen.append(torch.backends.mkldnn.enabled))
    g_s = torch.nn.Sequential(layer)
    torch.backends.mkldnn.enabled = False
    try:
        tiling.synthesis(g_s, torch.zeros(1, 3, 2, 2))
        assert not torch.backends.mkldnn.enabled
    finally:
        torch.backends.mkldnn.enabled = True
    assert seen == [torch.backends.mkldnn.is_available()]
    with torch.no_grad():
        y = torch.randn(1, model.g_s[0].in_channels, 3, 4).round()
        assert torch.allclose(tiling.synthesis(model.g_s, y), model.g_s(y), atol=1e-4)


@pytest.mark.parametrize("height,width,multiple", [(70, 41, 16), (100, 130, 64),
                                                   (16, 16, 64)])
def test_tiles_pad_their_own_regions_like_the_whole_image(height, width, multiple):
    """Each tile replicate-pads its own region (no padded copy of the image):
    the result is g_a of the padded image, in float64 to rounding."""
    from dvae_tutorial.single_layer_vae import pad_to_multiple

    model = model64()
    x = to_tensor01(smooth(height, width, seed=2))[None].double()
    with torch.no_grad():
        whole = model.g_a(pad_to_multiple(x, multiple))
        for tile in (1, 2, 50):
            tiled = tiling.analysis(model.g_a, x, tile, 2, multiple=multiple)
            assert tiled.shape == whole.shape
            assert torch.allclose(tiled, whole, rtol=0, atol=1e-12)
