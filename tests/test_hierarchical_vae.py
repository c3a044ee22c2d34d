"""The hierarchical discretized VAE: shapes, rate oracles, coding, progressive
decoding, sampling, initialisation, and a few steps of ``training.fit``.

Tiny random-init models built here (3 latent layers, stride 8); oracles are
scipy's normal cdf, the coder's real stream lengths, and hand-made draws.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import norm

from dvae_tutorial import bitstream, codec
from dvae_tutorial.configs import (
    HIERARCHICAL_PRESETS,
    PRESETS,
    RESNET3,
    RESNET12,
    HierarchicalConfig,
    TrainConfig,
)
from dvae_tutorial.errors import CodingError, DVAEError
from dvae_tutorial.hierarchical_vae import (
    ConvNeXtBlock,
    HierarchicalVAE,
    depthwise_float64,
    init_hierarchical_,
)
from dvae_tutorial.images import to_tensor01
from dvae_tutorial.layers import count_parameters, scale_
from dvae_tutorial.metrics import to_uint8
from dvae_tutorial.quantization import quantize
from dvae_tutorial.single_layer_vae import pad_to_multiple, positive_scale
from dvae_tutorial.training import fit

torch.set_num_threads(1)
HEADER_BITS = 8 * 18  # entropy_coding's stream header
#: Test priors' raw scales start near this: scale ≈ 0.11 + softplus(1.5) ≈ 1.8,
#: wide enough that no symbol is more than a few scales out (far-tail symbols
#: cost more than the coder's 24-bit floor, and estimates would beat streams).
PRIOR_RAW_SCALE = 1.5
#: 3 stages at strides 2, 4, 8; one latent layer each: z1 (4 ch, /8), z2 (3 ch,
#: /4), z3 (2 ch, /2); one plain decoder block at the finest stage.
TINY_H = HierarchicalConfig(widths=(8, 8, 8), encoder_blocks=(1, 1, 1),
                            latent_blocks=(1, 1, 1), latent_channels=(2, 3, 4),
                            decoder_blocks=(1, 0, 0), kernel_sizes=(3, 3, 1),
                            stem_stride=2)


def _model(seed: int = 0, spread: float = 20.0, random_prior: bool = True,
           config: HierarchicalConfig = TINY_H) -> HierarchicalVAE:
    """A random-init model; ``spread`` widens the posterior means (more symbols),
    ``random_prior`` replaces the zero-init prior heads (varied means, scales)."""
    torch.manual_seed(seed)
    model = HierarchicalVAE(config)
    for stage in model.latent:
        for block in stage:
            scale_(block.posterior_head[-1], spread)
            if random_prior:
                last = block.prior_head[-1]  # (mean, raw scale) channels
                with torch.no_grad():
                    last.weight.normal_(0.0, 0.3)
                    last.bias.normal_(0.0, 0.5)
                    last.bias[last.bias.numel() // 2:] += PRIOR_RAW_SCALE
    return model


def _smooth_image(height: int, width: int, seed: int = 0, batch: int = 1):
    g = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.rand(batch, 3, 8, 8, generator=g), size=(height, width),
                         mode="bilinear", align_corners=False)


def _oracle_bits(v, mean, scale) -> np.ndarray:
    """-Σ log2 [Φ((v+½-μ)/σ) - Φ((v-½-μ)/σ)] per image, float64 by scipy."""
    v, mean, scale = (t.detach().double().numpy() for t in (v, mean, scale))
    mass = norm.cdf((v + 0.5 - mean) / scale) - norm.cdf((v - 0.5 - mean) / scale)
    return -np.log2(mass).sum(axis=(1, 2, 3))


def _is_integer(t: torch.Tensor, atol: float = 1e-4) -> bool:
    return bool(((t - t.round()).abs() <= atol).all())


# --- configs ------------------------------------------------------------------

def test_configs_validate_round_trip_and_presets_fit_their_patches():
    assert TINY_H.stride == 8 and TINY_H.num_layers == 3
    assert RESNET3.model.num_layers == 3 and RESNET12.model.num_layers == 12
    as_lists = {k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(RESNET12.model).items()}
    assert HierarchicalConfig(**as_lists) == RESNET12.model  # e.g. read from JSON
    with pytest.raises(DVAEError, match="latent_blocks has 2 entries"):
        dataclasses.replace(TINY_H, latent_blocks=(1, 1))
    with pytest.raises(DVAEError, match="latent channels >= 1"):
        dataclasses.replace(TINY_H, latent_channels=(2, 0, 4))
    assert not set(HIERARCHICAL_PRESETS.values()) & set(PRESETS.values())
    for name, preset in HIERARCHICAL_PRESETS.items():
        stride = preset.model.stride
        assert stride == 64 and 768 % stride == 512 % stride == 0, name  # Kodak
        assert preset.train.patch_size % stride == 0, name
        assert preset.train.patch_size >= 4 * stride, name  # top latent >= 4×4
    counts = {name: count_parameters(HierarchicalVAE(HIERARCHICAL_PRESETS[name].model))
              for name in ("resnet3", "resnet12")}
    assert round(counts["resnet3"] / 1e6, 1) == 1.0  # the numbers in configs.py
    assert round(counts["resnet12"] / 1e6, 1) == 1.7


# --- forward ------------------------------------------------------------------

def test_shapes_padding_and_bits_per_layer():
    model = _model().eval()
    x = _smooth_image(65, 33, batch=2)
    with torch.no_grad():
        out = model(x)
        padded = model(pad_to_multiple(x, 8))
        trace = model.top_down(x[:1])
    assert out.x_hat.shape == x.shape
    assert list(out.bits) == ["z1", "z2", "z3"]
    assert all(b.shape == (2,) for b in out.bits.values())
    torch.testing.assert_close(out.bpp, sum(out.bits.values()) / (65 * 33))
    torch.testing.assert_close(out.mse, (out.x_hat - x).square().mean((1, 2, 3)))
    # padding then cropping: the same as coding the padded image, cropped
    assert torch.equal(out.x_hat, padded.x_hat[..., :65, :33])
    assert all(torch.equal(out.bits[k], padded.bits[k]) for k in out.bits)
    assert [tuple(z.shape) for z in trace.latents] == model.stream_shapes((65, 33))
    assert model.stream_shapes((65, 33)) == [(1, 4, 9, 5), (1, 3, 18, 10),
                                             (1, 2, 36, 20)]


@pytest.mark.parametrize("training", [False, True])
def test_bits_per_layer_match_scipy(training):
    model = _model().train(training)
    x = _smooth_image(32, 24, batch=2)
    torch.manual_seed(1)
    with torch.no_grad():
        out = model(x)
    torch.manual_seed(1)  # the same noise again
    with torch.no_grad():
        trace = model.top_down(x)
    assert len(trace.latents) == 3
    for layer in range(3):
        z, mean, scale = (t[layer] for t in trace[1:4])
        assert scale.min() > 0.11 and mean.std() > 0.1  # a varied prior
        expected = _oracle_bits(z, mean, scale)
        np.testing.assert_allclose(out.bits[f"z{layer + 1}"].numpy(), expected,
                                   rtol=1e-5)


def test_noise_in_training_rounding_around_the_prior_mean_in_eval():
    model, x = _model(), _smooth_image(32, 32)
    with torch.no_grad():
        first, second = model.train().top_down(x), model.top_down(x)
        rounded, again = model.eval().top_down(x), model.top_down(x)
    for z, z2, post, mean in zip(first.latents, second.latents,
                                 first.posterior_means, first.prior_means, strict=True):
        assert (z - post).abs().max() <= 0.5 and not torch.equal(z, z2)
        assert not _is_integer(z - mean)
    for z, z2, post, mean in zip(rounded.latents, again.latents,
                                 rounded.posterior_means, rounded.prior_means,
                                 strict=True):
        assert torch.equal(z, quantize(post, mean)) and torch.equal(z, z2)
        assert _is_integer(z - mean) and (z - post).abs().max() <= 0.5 + 1e-5


# --- coding -------------------------------------------------------------------

@pytest.mark.parametrize("size", [(64, 64), (65, 33)])
def test_round_trip_equals_eval_forward_and_streams_match_estimates(size):
    model = _model().eval()
    x = _smooth_image(*size)
    with torch.no_grad():
        out, trace = model(x), model.top_down(x)
    compressed = model.compress(x)
    assert compressed.shape == size and len(compressed.strings) == 3
    assert len((trace.latents[-1] - trace.prior_means[-1]).round().unique()) >= 3
    x_hat = model.decompress(compressed.strings, compressed.shape)
    assert torch.equal(x_hat, out.x_hat.clamp(0, 1))
    assert compressed.bits == pytest.approx(sum(b.item() for b in out.bits.values()),
                                            rel=1e-6)
    for layer, stream in enumerate(compressed.strings):
        estimate, payload = out.bits[f"z{layer + 1}"].item(), 8 * len(stream)
        # 18-byte frame per stream; the range coder writes whole 32-bit words
        assert 0.99 * estimate <= payload - HEADER_BITS <= 1.01 * estimate + 32


def test_the_codec_writes_and_reads_a_hierarchical_file():
    model = _model().eval()
    pixels = (_smooth_image(40, 24)[0].permute(1, 2, 0) * 255).round().byte().numpy()
    encoded = codec.compress(pixels, model, name="tiny-hier", lmbda=100.0)
    header, streams = bitstream.unpack(encoded.data)
    assert header.family == "hierarchical" and len(streams) == 3
    x = to_tensor01(pixels)[None]
    expected = to_uint8(model.decompress(model.compress(x).strings, (40, 24))[0]
                        .permute(1, 2, 0))
    assert np.array_equal(codec.decompress(encoded.data, model=model), expected)


def test_wrong_streams_raise_coding_errors():
    model = _model().eval()
    strings, shape, *_ = model.compress(_smooth_image(32, 32))
    with pytest.raises(CodingError, match="reads 3 streams"):
        model.decompress(strings[:2], shape)
    with pytest.raises(CodingError, match="reads 3 streams"):
        model.decompress([*strings, strings[0]], shape)
    with pytest.raises(CodingError):
        model.decompress([strings[0], strings[1][:-4], strings[2]], shape)
    with pytest.raises(CodingError):
        model.decompress([strings[1], strings[0], strings[2]], shape)  # order
    with pytest.raises(CodingError, match="needs 2 to 3 streams"):
        model.decompress_progressive(strings[:1], shape, 2)
    with pytest.raises(DVAEError, match="k must be between 0 and 3"):
        model.decompress_progressive(strings, shape, 4)
    with pytest.raises(DVAEError, match="one image at a time"):
        model.compress(torch.rand(2, 3, 32, 32))


def test_progressive_decoding_endpoints():
    model = _model().eval()
    strings, shape, *_ = model.compress(_smooth_image(40, 24))
    full = model.decompress(strings, shape)
    assert torch.equal(model.decompress_progressive(strings, shape, 3), full)
    # a prefix of the streams is enough for its layers
    assert torch.equal(model.decompress_progressive(strings[:2], shape, 2),
                       model.decompress_progressive(strings, shape, 2))
    # k = 0 reads no stream: every latent is its prior mean (= temperature 0)
    prior_image = model.decompress_progressive([], shape, 0)
    assert torch.equal(prior_image, model.decompress_progressive(strings, shape, 0))
    assert torch.equal(prior_image, model.sample(1, shape, temperature=0.0).x_hat)
    errors = [(model.decompress_progressive(strings, shape, k) - full).square().mean()
              for k in range(4)]
    assert errors[0] > 0 and errors[3] == 0


# --- sampling -----------------------------------------------------------------

def test_sampling_shapes_determinism_and_integer_latents():
    model = _model()  # training mode does not matter for sampling

    def draw(seed, **kw):
        return model.sample(3, (20, 13), generator=torch.Generator().manual_seed(seed),
                            **kw)

    a, b, c = draw(0), draw(0), draw(1)
    assert a.x_hat.shape == (3, 3, 20, 13)
    assert 0 <= a.x_hat.min() and a.x_hat.max() <= 1
    assert torch.equal(a.x_hat, b.x_hat) and not torch.equal(a.x_hat, c.x_hat)
    assert a.posterior_means == []
    integer = draw(0, integer=True)
    for z, mean in zip(integer.latents, integer.prior_means, strict=True):
        assert _is_integer(z - mean) and (z - mean).abs().max() >= 1
    assert not any(_is_integer(z - m) for z, m in zip(a.latents, a.prior_means,
                                                     strict=True))
    # z1's prior does not depend on earlier draws: rebuild both z1 by hand from
    # the documented order (ε first, then u) with t = 0.7
    t, shape = 0.7, a.latents[0].shape
    cont, intg = draw(5, temperature=t), draw(5, temperature=t, integer=True)
    g = torch.Generator().manual_seed(5)
    eps, u = torch.randn(shape, generator=g), torch.rand(shape, generator=g) - 0.5
    mean, scale = cont.prior_means[0], cont.prior_scales[0]
    torch.testing.assert_close(cont.latents[0], mean + t * (scale * eps + u))
    torch.testing.assert_close(intg.latents[0], mean + torch.round(t * scale * eps))


# --- initialisation -----------------------------------------------------------

def test_init_zero_priors_and_residual_scaling():
    cfg = dataclasses.replace(TINY_H, widths=(32, 32, 32), encoder_blocks=(2, 1, 1))
    torch.manual_seed(0)
    model = HierarchicalVAE(cfg)
    with torch.no_grad():
        trace = model.eval().top_down(_smooth_image(24, 16))
    start = positive_scale(torch.zeros(()))
    for mean, scale in zip(trace.prior_means, trace.prior_scales, strict=True):
        assert (mean == 0).all() and (scale == start).all()  # N(0, 0.80²)
    # residual branches adding to each stream, named independently of the code
    n_enc, n_dec = 4, 3 * 3 + 1  # encoder blocks; front/proj/end per layer + plain
    branches = {"enc": [], "dec": [], "other": []}
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Conv2d) or module.groups > 1:
            continue
        if name.startswith("encoder") and name.endswith("pw2"):
            branches["enc"].append(module)
        elif name.endswith(("front.pw2", "end.pw2", "proj.4")) or (
                name.startswith("decoder") and name.endswith("pw2")):
            branches["dec"].append(module)
        elif not name.endswith("prior_head.4"):
            branches["other"].append(module)
    assert (len(branches["enc"]), len(branches["dec"])) == (n_enc, n_dec)

    def bound_ratios(layers, n):
        """max |w| · √fan_in · √n per layer (≥ 100 weights, so the max of the
        uniform init nearly reaches its bound): default init gives 1/√fan_in."""
        return [float(m.weight.detach().abs().max()) * math.sqrt(m.weight[0].numel() * n)
                for m in layers if m.weight.numel() >= 100]

    for key, n in (("enc", n_enc), ("dec", n_dec), ("other", 1)):  # other: unscaled
        ratios = bound_ratios(branches[key], n)
        assert len(ratios) >= 4 and 0.9 < min(ratios) and max(ratios) <= 1.0, key
    before = model.encoder[0][1].pw2.weight.clone()
    init_hierarchical_(model)  # not idempotent: a second call scales again
    torch.testing.assert_close(model.encoder[0][1].pw2.weight,
                               before / math.sqrt(n_enc))


# --- training -----------------------------------------------------------------

class RandomPatches(torch.utils.data.Dataset):
    """Random smooth 16×16 patches (torch's RNG, as fit requires)."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> torch.Tensor:
        return _smooth_image(16, 16, seed=i)[0]


def test_fit_runs_a_few_steps_with_a_finite_loss():
    torch.manual_seed(0)
    model = HierarchicalVAE(TINY_H)
    cfg = TrainConfig(steps=3, batch_size=2, patch_size=16, warmup_steps=1,
                      val_every=3, log_every=1, val_crop=16, val_images=2)
    result = fit(model, cfg, RandomPatches(), val_data=_smooth_image(16, 16, batch=2),
                 device="cpu", progress=False)
    assert result.skipped == 0 and len(result.history["train"]) == 3
    assert all(math.isfinite(row["loss"]) for row in result.history["train"])
    assert math.isfinite(result.history["val"][-1]["bpp"])
    assert isinstance(result.ema, HierarchicalVAE) and not result.ema.training


def test_checkpoints_store_the_family_and_load_model_dispatches(tmp_path):
    from dvae_tutorial.checkpoints import load_model, save_checkpoint
    from dvae_tutorial.hierarchical_vae import HierarchicalVAE

    model = _model(seed=3).eval()
    ckpt = {"version": 1, "family": model.family,
            "model_config": dataclasses.asdict(model.config), "train_config": {},
            "step": 0, "history": {}, "recipe": {"lmbda": 1.0},
            "ema": model.state_dict()}
    save_checkpoint(tmp_path / "h.pt", ckpt, fp16=True)
    loaded = load_model(tmp_path / "h.pt")
    assert isinstance(loaded, HierarchicalVAE) and loaded.config == model.config
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value.half().float())


@pytest.mark.parametrize("k", [3, 5, 7])
def test_float64_depthwise_shift_and_add_equals_the_convolution(k):
    block = ConvNeXtBlock(6, k).double()
    torch.nn.init.normal_(block.dw.bias)
    x = torch.randn(2, 6, 9, 5, dtype=torch.float64)
    torch.testing.assert_close(depthwise_float64(x, block.dw), block.dw(x),
                               rtol=1e-13, atol=1e-13)
    dw_conv = torch.nn.functional.conv2d  # the block's float64 forward uses it
    normed = block.norm(dw_conv(x, block.dw.weight, block.dw.bias, padding=k // 2,
                                groups=6).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    torch.testing.assert_close(block(x), x + block.pw2(torch.nn.functional.gelu(
        block.pw1(normed))), rtol=1e-12, atol=1e-12)


def test_float64_conv_is_pytorchs_on_small_inputs_and_k_squared_products_on_large():
    """hierarchical_vae.Conv2d: bit for bit nn.Conv2d below the threshold (every
    Kodak latent), the k² matrix products of dense_float64 above it (bounded
    memory), equal to nn.Conv2d to rounding (oracle: torch)."""
    from dvae_tutorial import hierarchical_vae as hv

    torch.manual_seed(0)
    conv = hv.Conv2d(6, 5, 3, padding=1).double()
    small = torch.randn(2, 6, 8, 9, dtype=torch.float64)
    large = torch.randn(1, 6, 130, 131, dtype=torch.float64)
    assert large.shape[-1] * large.shape[-2] > hv.DENSE_FLOAT64_POSITIONS
    with torch.no_grad():
        plain = torch.nn.functional.conv2d
        assert torch.equal(conv(small), plain(small, conv.weight, conv.bias, padding=1))
        assert torch.allclose(conv(large), plain(large, conv.weight, conv.bias, padding=1),
                              rtol=0, atol=1e-12)
        assert torch.allclose(hv.dense_float64(small, conv),
                              plain(small, conv.weight, conv.bias, padding=1),
                              rtol=0, atol=1e-12)
