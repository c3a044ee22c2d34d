"""The standard discretized VAE: shapes, padding, rate oracles, codec round trip.

Tiny random-init models (the TINY preset, with and without hyperprior);
oracles are scipy's normal cdf and entropy_coding.information_content.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import norm

from dvae_tutorial.configs import (
    BOOK,
    FACTORIZED,
    PRESETS,
    TINY,
    ModelConfig,
    TrainConfig,
)
from dvae_tutorial.entropy_coding import information_content
from dvae_tutorial.errors import CodingError, DVAEError
from dvae_tutorial.layers import (
    GDN,
    GDN_BETA_MIN,
    ResidualBlock,
    count_parameters,
    downsample,
    scale_,
    upsample,
)
from dvae_tutorial.quantization import to_symbols
from dvae_tutorial.single_layer_vae import SingleLayerVAE, crop, pad_to_multiple

torch.set_num_threads(1)
HEADER_BITS = 8 * 18  # entropy_coding's stream header
MODELS = {
    "hyperprior": TINY.model,
    "factorized": dataclasses.replace(TINY.model, hyperprior=False),
    "residual": dataclasses.replace(TINY.model, hyperprior=False, gdn=False),
}


def _model(name: str, seed: int = 0, spread: float = 1.0) -> SingleLayerVAE:
    """A random-init TINY model; ``spread`` widens its latents (more symbols)."""
    torch.manual_seed(seed)
    model = SingleLayerVAE(MODELS[name])
    scale_(model.g_a[-1], spread)
    if model.config.hyperprior:
        scale_(model.h_a[-1], spread)
    return model


def _smooth_image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A random smooth image (1, 3, H, W) in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.rand(1, 3, 8, 8, generator=g), size=(height, width),
                         mode="bilinear", align_corners=False)


def _oracle_bits(v: torch.Tensor, mean: torch.Tensor,
                 scale: torch.Tensor) -> np.ndarray:
    """-Σ log2 [Φ((v+½-μ)/σ) - Φ((v-½-μ)/σ)] per image, in float64 by scipy."""
    v, mean, scale = (t.detach().double().numpy() for t in (v, mean, scale))
    mass = norm.cdf((v + 0.5 - mean) / scale) - norm.cdf((v - 0.5 - mean) / scale)
    return -np.log2(mass).sum(axis=(1, 2, 3))


# --- layers -------------------------------------------------------------------

def test_gdn_matches_its_equation_and_igdn_multiplies():
    torch.manual_seed(0)
    gdn, igdn = GDN(4), GDN(4, inverse=True)
    with torch.no_grad():
        for layer in (gdn, igdn):
            layer.beta_sqrt.normal_()
            layer.gamma_sqrt.normal_()
    u = torch.randn(2, 4, 3, 5)
    beta = GDN_BETA_MIN + gdn.beta_sqrt.detach() ** 2
    gamma = gdn.gamma_sqrt.detach() ** 2
    norm_ = torch.sqrt(beta[None, :, None, None]
                       + torch.einsum("ij,bjhw->bihw", gamma, u**2))
    torch.testing.assert_close(gdn(u), u / norm_)
    beta = GDN_BETA_MIN + igdn.beta_sqrt.detach() ** 2
    gamma = igdn.gamma_sqrt.detach() ** 2
    norm_ = torch.sqrt(beta[None, :, None, None]
                       + torch.einsum("ij,bjhw->bihw", gamma, u**2))
    torch.testing.assert_close(igdn(u), u * norm_)


def test_gdn_cross_channel_weights_get_gradients_from_the_start():
    gdn = GDN(3)
    gdn(torch.randn(2, 3, 4, 4)).square().sum().backward()
    off_diagonal = gdn.gamma_sqrt.grad[~torch.eye(3, dtype=torch.bool)]
    assert (off_diagonal != 0).all()
    # zero inputs: the normalizer is sqrt(beta) >= sqrt(1e-6), finite
    with torch.no_grad():
        gdn.beta_sqrt.zero_()
    assert torch.isfinite(gdn(torch.zeros(1, 3, 2, 2))).all()


def test_resampling_shapes_and_residual_block_starts_near_identity():
    x = torch.randn(2, 8, 12, 20)
    assert downsample(8, 5)(x).shape == (2, 5, 6, 10)
    assert upsample(8, 5)(x).shape == (2, 5, 24, 40)
    torch.manual_seed(0)
    block = ResidualBlock(8)
    y = block(x)
    assert y.shape == x.shape
    assert 0 < (y - x).norm() < 0.2 * x.norm()


# --- configs ------------------------------------------------------------------

def test_presets_respect_stride_and_patch_size_rule():
    for name, preset in PRESETS.items():
        assert preset.train.patch_size % preset.model.stride == 0, name
        assert preset.train.val_crop % preset.model.stride == 0, name
        if preset.model.hyperprior and name != "tiny":
            # GUIDE §7: z must be at least 4×4 per training patch
            assert preset.train.patch_size >= 4 * preset.model.stride, name
    assert BOOK.model.hyperprior and not FACTORIZED.model.hyperprior


def test_parameter_counts_match_the_preset_comments():
    counts = {name: count_parameters(SingleLayerVAE(p.model))
              for name, p in PRESETS.items()}
    assert round(counts["book"] / 1e6, 1) == 1.8
    assert round(counts["factorized"] / 1e6, 2) == 0.75
    assert counts["tiny"] < 150_000


def test_lr_schedule_warms_up_then_drops_for_the_last_fraction():
    cfg = TrainConfig(steps=100, lr=1e-3, warmup_steps=10, lr_decay_fraction=0.15,
                      lr_decay=0.1)
    assert cfg.lr_at(0) == pytest.approx(1e-4) and cfg.lr_at(4) == pytest.approx(5e-4)
    assert cfg.lr_at(9) == cfg.lr_at(84) == 1e-3
    assert cfg.lr_at(85) == cfg.lr_at(99) == pytest.approx(1e-4)


# --- model --------------------------------------------------------------------

@pytest.mark.parametrize("name", list(MODELS))
def test_shapes_for_odd_sizes_crop_back_exactly(name):
    model = _model(name)
    x = torch.rand(2, 3, 65, 33)
    padded = pad_to_multiple(x, model.stride)
    side = 128 if model.config.hyperprior else 80
    assert padded.shape == (2, 3, side, 64 if model.config.hyperprior else 48)
    assert side % model.stride == 0
    assert torch.equal(crop(padded, (65, 33)), x)
    last_row = x[:, :, 64:65].expand(-1, -1, side - 65, -1)
    assert torch.equal(padded[:, :, 65:, :33], last_row)  # replicated, no edge
    assert pad_to_multiple(padded, model.stride) is padded
    y = model.g_a(padded)
    assert y.shape == (2, model.config.latent_channels, side // 16,
                       padded.shape[-1] // 16)
    out = model(x)
    assert out.x_hat.shape == x.shape
    assert out.bpp.shape == out.mse.shape == (2,)
    assert set(out.bits) == ({"y", "z"} if model.config.hyperprior else {"y"})
    total = sum(out.bits.values())
    torch.testing.assert_close(out.bpp, total / (65 * 33))
    torch.testing.assert_close(out.mse, (out.x_hat - x).square().mean((1, 2, 3)))


@pytest.mark.parametrize("name", ["hyperprior", "factorized"])
def test_training_rate_is_minus_log2_discretized_gaussian_at_y_tilde(name):
    model = _model(name, spread=5.0).train()
    x = torch.rand(2, 3, 64, 64)
    torch.manual_seed(7)
    out = model(x)
    torch.manual_seed(7)  # replay: same noise draws, z's first
    y, z_tilde = model.g_a(x), None
    if model.config.hyperprior:
        z = model.h_a(y)
        z_tilde = z + (torch.rand(z.shape) - 0.5)
        z_mean, z_scale = model.z_prior(z.shape)
        np.testing.assert_allclose(out.bits["z"].detach().numpy(),
                                   _oracle_bits(z_tilde, z_mean, z_scale), rtol=1e-4)
    mean, scale = model.prior_parameters(y.shape, z_tilde)
    y_tilde = y + (torch.rand(y.shape) - 0.5)
    np.testing.assert_allclose(out.bits["y"].detach().numpy(),
                               _oracle_bits(y_tilde, mean, scale), rtol=1e-4)
    torch.testing.assert_close(out.x_hat, model.g_s(y_tilde))
    # every parameter is trained by the loss (no detached path)
    (out.bpp + 100 * out.mse).sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", ["hyperprior", "factorized"])
def test_eval_bits_are_the_information_content_of_the_rounded_symbols(name):
    model = _model(name, spread=5.0).eval()
    x = torch.rand(1, 3, 64, 128)
    with torch.no_grad():
        out = model(x)
        y, z_hat = model.g_a(x), None
        if model.config.hyperprior:
            z = model.h_a(y)
            z_mean, z_scale = model.z_prior(z.shape)
            z_symbols = to_symbols(z, z_mean)
            z_hat = z_symbols + z_mean
            assert out.bits["z"].item() == pytest.approx(
                information_content(z_symbols, 0.0, z_scale), rel=1e-5)
        mean, scale = model.prior_parameters(y.shape, z_hat)
        symbols = to_symbols(y, mean)
    assert len(symbols.unique()) >= 3  # not a trivial all-zero latent
    assert out.bits["y"].item() == pytest.approx(
        information_content(symbols, 0.0, scale), rel=1e-5)
    torch.testing.assert_close(out.x_hat, model.g_s(symbols + mean))


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("size", [(64, 64), (65, 33)])
def test_decompress_equals_eval_forward_and_streams_match_estimates(name, size):
    model = _model(name, spread=20.0).eval()
    x = _smooth_image(*size)
    with torch.no_grad():
        out = model(x)
    compressed = model.compress(x)
    assert compressed.shape == size
    assert compressed.bits == pytest.approx(sum(b.item() for b in out.bits.values()),
                                            rel=1e-6)
    x_hat = model.decompress(compressed.strings, compressed.shape)
    assert torch.equal(x_hat, out.x_hat.clamp(0, 1))
    names = ["z", "y"] if model.config.hyperprior else ["y"]
    assert len(compressed.strings) == len(names)
    for key, stream in zip(names, compressed.strings, strict=True):
        estimate, payload = out.bits[key].item(), 8 * len(stream) - HEADER_BITS
        # the range coder writes whole 32-bit words: at most one word of slack
        assert 0.99 * estimate <= payload <= 1.01 * estimate + 32, key


def test_compress_rejects_batches_and_decompress_rejects_wrong_streams():
    model = _model("hyperprior").eval()
    with pytest.raises(DVAEError, match="one image at a time"):
        model.compress(torch.rand(2, 3, 64, 64))
    with pytest.raises(DVAEError, match="shape"):
        model(torch.rand(1, 64, 64))
    strings, shape, *_ = model.compress(_smooth_image(64, 64))
    with pytest.raises(CodingError, match="stream"):
        model.decompress(strings[1:], shape)
    with pytest.raises(CodingError):
        model.decompress([strings[0], strings[1][:-4]], shape)
    other = _model("hyperprior", seed=1, spread=20.0).eval()
    with pytest.raises(CodingError):
        other.decompress(strings, (128, 128))  # other sizes: other symbol counts


def test_config_stride():
    assert ModelConfig(hyperprior=True).stride == 64
    assert ModelConfig(hyperprior=False).stride == 16


# --- sampling -----------------------------------------------------------------

def test_sample_draws_from_the_factorized_prior_on_the_coders_lattice():
    model = _model("factorized").eval()
    channels = model.config.latent_channels
    with torch.no_grad():  # varied means (off the integers) and scales 0.4 … 2.2
        model.y_prior.mean.copy_(torch.linspace(-2.3, 1.7, channels))
        model.y_prior.raw_scale.copy_(torch.linspace(-1.0, 2.0, channels))

    def draw(seed, n=3, shape=(40, 24), **kw):
        return model.sample(n, shape, generator=torch.Generator().manual_seed(seed),
                            **kw)

    (x, y), (x_again, y_again), (x_other, _) = draw(0), draw(0), draw(1)
    assert x.shape == (3, 3, 40, 24) and y.shape == (3, channels, 3, 2)  # ⌈·/16⌉
    assert torch.equal(x, x_again) and torch.equal(y, y_again)
    assert not torch.equal(x, x_other)
    assert 0 <= x.min() and x.max() <= 1
    with torch.no_grad():
        torch.testing.assert_close(x, crop(model.g_s(y), (40, 24)).clamp(0, 1))
    # the documented draw order, ε then u: rebuild both modes by hand at t = 0.6
    mean, scale = model.prior_parameters(y.shape)
    g = torch.Generator().manual_seed(5)
    eps, u = torch.randn(y.shape, generator=g), torch.rand(y.shape, generator=g) - 0.5
    torch.testing.assert_close(draw(5, temperature=0.6)[1],
                               mean + 0.6 * (scale * eps + u))
    integer = draw(5, temperature=0.6, integer=True)[1]
    torch.testing.assert_close(integer, mean + torch.round(0.6 * scale * eps))
    # on the lattice mean + Z that compress codes: the symbols are exact
    assert torch.equal(to_symbols(integer, mean).float(), (integer - mean).round())
    assert ((integer - mean) - (integer - mean).round()).abs().max() < 1e-5
    assert ((y - mean) - (y - mean).round()).abs().max() > 0.1  # continuous: not
    for flag in (False, True):  # t = 0: every latent at its prior mean
        torch.testing.assert_close(draw(2, temperature=0.0, integer=flag)[1], mean)


def test_integer_samples_follow_the_discretized_prior_pmf():
    model = _model("factorized").eval()
    channels = model.config.latent_channels
    with torch.no_grad():
        model.y_prior.mean.copy_(torch.linspace(-2.3, 1.7, channels))
        model.y_prior.raw_scale.copy_(torch.linspace(-1.0, 2.0, channels))
    g = torch.Generator().manual_seed(0)
    _, y = model.sample(40, (160, 160), integer=True, generator=g)  # 100 per map
    mean, scale = (t.detach() for t in model.prior_parameters(y.shape))
    symbols = (y - mean).round().flatten().numpy()
    sigma = scale.flatten().double().numpy()
    ks = np.arange(-4, 5)
    expected = [(norm.cdf((k + 0.5) / sigma) - norm.cdf((k - 0.5) / sigma)).sum()
                for k in ks]
    observed = [(symbols == k).sum() for k in ks]
    for k, obs, exp in zip(ks, observed, expected, strict=True):
        assert abs(obs - exp) <= 5 * np.sqrt(exp) + 1, (k, obs, exp)
    # continuous draws: N(μ, σ²) ⊛ U(-½, ½) has variance σ² + 1/12
    _, y = model.sample(40, (160, 160), generator=g)
    ratio = ((y - mean).square() / (scale.square() + 1 / 12)).mean().item()
    assert ratio == pytest.approx(1.0, abs=0.03)


def test_sample_rejects_hyperprior_models_and_bad_arguments():
    with pytest.raises(DVAEError, match="hyperprior"):
        _model("hyperprior").sample(1)
    model = _model("factorized")
    for kwargs in ({"n": 0}, {"n": 1, "shape": (0, 8)}, {"n": 1, "temperature": -1}):
        with pytest.raises(DVAEError, match="sample needs"):
            model.sample(**kwargs)
