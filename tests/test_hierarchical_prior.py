"""The book's hierarchical VAE (a hierarchical prior over a single-layer latent):
rate oracles, coding and its thread-count independence, progressive decoding,
sampling, warm start from a single-layer model, and the frozen-transform stage.

Tiny random-init models built here; oracles are scipy's normal cdf, the
coder's streams, and the single-layer model the transforms came from.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import SmoothPatches
from scipy.stats import norm

from dvae_tutorial.checkpoints import (
    load_checkpoint,
    load_model,
    model_config,
    transfer_weights,
)
from dvae_tutorial.cli import main
from dvae_tutorial.configs import (
    HIER3,
    HIER12,
    LATENT_STRIDE,
    HierarchicalPriorConfig,
    ModelConfig,
    TrainConfig,
)
from dvae_tutorial.entropy_coding import encode_latents
from dvae_tutorial.errors import CodingError, DVAEError
from dvae_tutorial.hierarchical_prior import HierarchicalPriorVAE, PriorTraining
from dvae_tutorial.latent_cache import LatentCrops, cache_latents
from dvae_tutorial.single_layer_vae import SingleLayerVAE
from dvae_tutorial.training import fit

torch.set_num_threads(1)
#: 8-channel transforms; z1 (stride 32), z2 and z3 (stride 16), then y.
TINY_P = HierarchicalPriorConfig(channels=8, latent_channels=8, widths=(8, 8),
                                 encoder_blocks=(1, 1), latent_blocks=(2, 1),
                                 z_channels=(3, 2), kernel_sizes=(3, 1))


def _model(seed: int = 0) -> HierarchicalPriorVAE:
    """Random init with varied prior means and scales (the heads start at 0)."""
    torch.manual_seed(seed)
    model = HierarchicalPriorVAE(TINY_P)
    heads = [b.prior_head[-1] for s in model.prior.latent for b in s]
    with torch.no_grad():
        for head in [*heads, model.prior.y_head[-1]]:
            head.weight.normal_(0.0, 0.2)
            head.bias.normal_(0.0, 0.3)
            head.bias[head.bias.numel() // 2:] += 1.0
        for s in model.prior.latent:
            for b in s:
                b.posterior_head[-1].weight.mul_(10.0)
    return model.eval()


def _image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.rand(1, 3, 6, 6, generator=g), size=(h, w),
                         mode="bilinear", align_corners=False)


def test_presets_count_layers_and_shapes_follow_the_strides():
    assert HIER3.model.num_layers == 3 and HIER12.model.num_layers == 12
    assert HIER12.model.stride == 64 and HIER12.train.patch_size >= 4 * 64
    model = HierarchicalPriorVAE(HIER3.model)
    shapes = model.layer_shapes((512, 768))
    assert shapes == [(1, 16, 8, 12), (1, 16, 16, 24), (1, 192, 32, 48)]
    assert model.stream_shapes((512, 768)) == shapes[-1:]  # one stream, named by y
    as_lists = {k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(HIER12.model).items()}
    assert HierarchicalPriorConfig(**as_lists) == HIER12.model
    with pytest.raises(DVAEError, match="invalid HierarchicalPriorConfig"):
        dataclasses.replace(TINY_P, kernel_sizes=(3, 2))


def test_eval_bits_equal_the_scipy_oracle_on_the_latents_the_prior_used():
    model = _model()
    with torch.no_grad():
        y = model.g_a(_image(64, 96)).double()
        prior = model._coding_prior()
        out = prior.top_down(1, tuple(y.shape[-2:]),
                             lambda i, m, s, post: torch.round(post - m) + m, y)
        bits, y_hat = prior.bits(y)
    assert list(bits) == ["z1", "z2", "z3", "y"]
    for name, z, m, s in zip(bits, out.latents, out.prior_means, out.prior_scales,
                             strict=True):
        z, m, s = (t.numpy() for t in (z, m, s))
        oracle = -np.log2(norm.cdf((z + .5 - m) / s) - norm.cdf((z - .5 - m) / s)).sum()
        assert float(bits[name]) == pytest.approx(oracle, rel=1e-9)
    torch.testing.assert_close(y_hat, out.latents[-1], rtol=0, atol=0)


def test_compress_decompress_equals_the_eval_forward_and_its_bits():
    model, x = _model(), _image(70, 100, seed=1)
    comp = model.compress(x)
    assert len(comp.strings) == 1 and len(comp.layer_bits) == TINY_P.num_layers == 4
    x_hat = model.decompress(comp.strings, comp.shape)
    with torch.no_grad():
        out = model(x)
    torch.testing.assert_close(x_hat, out.x_hat.clamp(0, 1), rtol=0, atol=0)
    trace = model.top_down(x)
    torch.testing.assert_close(trace.x_hat, out.x_hat, rtol=0, atol=0)
    torch.testing.assert_close(trace.posterior_means[-1],
                               model.g_a(F.pad(x, (0, 28, 0, 26), mode="replicate"))
                               .double(), rtol=0, atol=0)
    assert comp.bits == pytest.approx(float(sum(out.bits.values())), rel=1e-12)
    # one header of 7-9 bytes and the range coder's last words for all 4 layers
    stream_bits = 8 * len(comp.strings[0])
    assert comp.bits > 200 and comp.bits <= stream_bits <= comp.bits * 1.01 + 8 * 26
    assert sum(comp.layer_bits) <= stream_bits - 8 * 7
    with pytest.raises(CodingError, match="reads one stream"):
        model.decompress(comp.strings * 2, comp.shape)


def test_a_damaged_stream_is_refused_not_decoded_to_garbage():
    model, x = _model(seed=4), _image(64, 96, seed=4)
    data = model.compress(x).strings[0]
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x10
    for bad, why in ((data[:-4], "truncated"), (data + b"\0" * 4, "truncated"),
                     (bytes(flipped), "checksum|corrupt|left after")):
        with pytest.raises(CodingError, match=why):
            model.decompress([bad], (64, 96))
    with pytest.raises(CodingError, match="corrupt|checksum|left after|more symbols"):  # another size
        model.decompress([data], (128, 96))
    one_layer = encode_latents(torch.zeros(1, 4, 2, 2), 0.0, 1.0)  # a FastCoder stream
    with pytest.raises(CodingError, match="stream of one layer"):
        model.decompress([one_layer], (64, 96))


def test_decoding_does_not_depend_on_the_thread_count():
    """Written with 1 thread, read with 2 (and the reverse): every stream decodes
    (the float64 prior snaps to the same scales) to the same latents; the
    float32 synthesis ``g_s`` may still differ in its last bit."""
    model, x = _model(seed=2), _image(128, 192, seed=2)
    threads = torch.get_num_threads()
    try:
        for write, read in ((1, 2), (2, 1)):
            torch.set_num_threads(write)
            comp = model.compress(x)
            torch.set_num_threads(read)
            a = model.decompress(comp.strings, comp.shape)
            torch.set_num_threads(write)
            b = model.decompress(comp.strings, comp.shape)
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    finally:
        torch.set_num_threads(threads)


def test_progressive_decoding_reads_the_first_layers_and_ends_at_the_full_decode():
    model, x = _model(seed=3), _image(64, 64, seed=3)
    comp = model.compress(x)
    full = model.decompress(comp.strings, comp.shape)
    layers = TINY_P.num_layers
    outs = [model.decompress_progressive(comp.strings, comp.shape, k)
            for k in range(layers + 1)]
    torch.testing.assert_close(outs[-1], full, rtol=0, atol=0)
    assert not torch.equal(outs[0], full)  # the prior-mean image is not the decode
    assert not torch.equal(outs[-2], full)  # y's prior mean is not y_hat
    with pytest.raises(DVAEError, match="between 0 and 4"):
        model.decompress_progressive(comp.strings, comp.shape, 5)


def test_samples_continuous_and_integer_share_the_draw():
    model = _model(seed=4)
    pa = model.sample(2, (64, 64), generator=torch.Generator().manual_seed(0))
    pb = model.sample(2, (64, 64), integer=True,
                      generator=torch.Generator().manual_seed(0))
    a, b = pa.x_hat, pb.x_hat
    assert a.shape == b.shape == (2, 3, 64, 64) and 0 <= a.min() and a.max() <= 1
    # the top layer's prior is the same; integer latents sit on mean + Z
    torch.testing.assert_close(pa.prior_means[0], pb.prior_means[0])
    offsets = [(z - m) for z, m in zip(pb.latents, pb.prior_means, strict=True)]
    assert all(((o - o.round()).abs() < 1e-5).all() for o in offsets)
    assert not torch.equal(a, b)


def test_warm_start_copies_the_single_layer_transforms_only():
    torch.manual_seed(0)
    parent = SingleLayerVAE(ModelConfig(channels=8, latent_channels=8, hyperprior=False))
    model = HierarchicalPriorVAE(TINY_P)
    prior_before = {k: v.clone() for k, v in model.prior.state_dict().items()}
    assert transfer_weights(model, parent.state_dict(), only=("g_a.", "g_s.")) == []
    for name, value in parent.state_dict().items():
        if name.startswith(("g_a.", "g_s.")):
            assert torch.equal(model.state_dict()[name], value)
    for name, value in model.prior.state_dict().items():
        assert torch.equal(value, prior_before[name])
    with pytest.raises(DVAEError, match="missing"):
        transfer_weights(model, parent.state_dict())  # the prior is not in it


def test_prior_training_shares_the_models_weights_and_learns(tmp_path):
    model = HierarchicalPriorVAE(TINY_P)
    stage = PriorTraining(model)
    assert list(stage.state_dict()) == list(model.state_dict())
    assert not any(p.requires_grad for p in model.g_a.parameters())
    with pytest.raises(DVAEError, match="latent crops"):
        stage(torch.zeros(1, 3, 16, 16))
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, x in enumerate(SmoothPatches(6).x):
        from PIL import Image
        Image.fromarray((x.permute(1, 2, 0) * 255).byte().numpy()).save(
            photos / f"{i}.png")
    cache = cache_latents(model.g_a, photos, tmp_path / "c.pt", progress=False)
    assert cache_latents(model.g_a, photos, tmp_path / "c.pt")["latents"][0].equal(
        cache["latents"][0])  # loaded, not recomputed
    crops = LatentCrops(cache, 4)
    assert crops[0].shape == (8, 4, 4) and crops.skipped == 0
    cfg = TrainConfig(steps=60, batch_size=4, patch_size=64, lr=3e-3, warmup_steps=5,
                      val_every=60, log_every=20, lmbda=100.0)
    result = fit(stage, cfg, crops, SmoothPatches(4).x, device="cpu", progress=False)
    rows = result.history["train"]
    assert rows[-1]["bpp"] < rows[0]["bpp"]  # the prior learned something
    assert result.history["val"][-1]["psnr"] > 0  # validated through the full model
    g_a = {k: v for k, v in model.state_dict().items() if k.startswith("g_a.")}
    assert all(torch.equal(v, result.ema.state_dict()[k]) for k, v in g_a.items())


def test_dvae_train_freeze_transforms_from_a_single_layer_parent(tmp_path, capsys):
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    for i, x in enumerate(SmoothPatches(4).x):
        Image.fromarray((x.permute(1, 2, 0) * 255).byte().numpy()).save(
            photos / f"{i}.png")
    parent = tmp_path / "single.pt"
    assert main(["train", "--preset", "tiny", "--steps", "2", "--batch", "2",
                 "--patch", "64", "--train-dir", str(photos), "--quiet",
                 "--out", str(parent)]) == 0
    out = tmp_path / "h.pt"
    args = ["train", "--preset", "hier3", "--steps", "2", "--batch", "2", "--patch",
            "64", "--train-dir", str(photos), "--val-dir", str(photos), "--quiet",
            "--init", str(parent), "--freeze-transforms", "--out", str(out),
            "--export", str(tmp_path / "h16.pt")]
    assert main(args) == 0
    ckpt = load_checkpoint(out)
    config = model_config(ckpt)
    assert isinstance(config, HierarchicalPriorConfig)
    assert (config.channels, config.latent_channels) == (16, 24)  # the parent's
    assert ckpt["recipe"]["frozen"] == ["g_a", "g_s"]
    assert ckpt["recipe"]["parent"]["file"] == "single.pt"
    model, single = load_model(tmp_path / "h16.pt"), load_checkpoint(parent)
    assert torch.equal(model.state_dict()["g_a.0.weight"],
                       single["ema"]["g_a.0.weight"].half().float())
    raw = torch.load(tmp_path / "h16.pt", weights_only=True)  # shares the transforms
    assert raw["shared"]["file"] == "single.pt"
    assert not any(k.startswith(("g_a.", "g_s.")) for k in raw["ema"])
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    (tmp_path / "h16.pt").rename(moved / "h16.pt")
    with pytest.raises(DVAEError, match="not next to it nor shipped"):
        load_model(moved / "h16.pt")
    changed = load_checkpoint(parent)
    changed["ema"]["g_s.0.bias"] = changed["ema"]["g_s.0.bias"] + 1
    torch.save(changed, moved / "single.pt")
    with pytest.raises(DVAEError, match="changed since"):
        load_model(moved / "h16.pt")
    tune = ["train", "--preset", "hier3", "--steps", "1", "--batch", "2", "--patch",
            "64", "--train-dir", str(photos), "--quiet", "--init", str(out),
            "--freeze-transforms", "--rate-warmup", "0", "0"]
    assert main([*tune, "--out", str(tmp_path / "tuned.pt"), "--export",
                 str(tmp_path / "tuned16.pt")]) == 0  # from a trained prior
    tuned = load_checkpoint(tmp_path / "tuned.pt")["recipe"]
    assert tuned["rate_warmup"] == [0, 0] and tuned["parent"]["file"] == "h.pt"
    # the transforms still come from the single-layer file, which the export shares
    assert tuned["parent"]["transforms_file"] == "single.pt"
    assert torch.load(tmp_path / "tuned16.pt", weights_only=True)["shared"]["file"] \
        == "single.pt"
    load_model(tmp_path / "tuned16.pt")
    assert main([*tune[:-2], "5", "2", "--out", str(tmp_path / "bad.pt")]) == 2
    assert "0 <= start <= end" in capsys.readouterr().err
    assert main([*args[:4], "4", *args[5:], "--resume"]) == 0  # resumes
    assert load_checkpoint(out)["step"] == 4
    assert main(["train", "--preset", "tiny", "--freeze-transforms", "--out",
                 str(tmp_path / "x.pt"), "--train-dir", str(photos)]) == 2
    assert "hier3 or hier12" in capsys.readouterr().err


def test_the_rate_warm_up_weighs_the_z_bits_from_0_to_1():
    model = _model()
    y = torch.randn(2, TINY_P.latent_channels, 4, 4) * 3
    pixels = 4 * 4 * LATENT_STRIDE**2
    for warmup, step, beta in (((2, 4), 0, 0.0), ((2, 4), 3, 0.5), ((2, 4), 4, 1.0),
                               ((0, 0), 0, 1.0), ((3, 3), 2, 0.0)):
        stage = PriorTraining(model, warmup).train()
        stage.step = step
        torch.manual_seed(0)
        out = stage(y)
        z = sum(v for k, v in out.bits.items() if k != "y")
        torch.testing.assert_close(out.bpp, (out.bits["y"] + beta * z) / pixels)
        assert stage.step == step + 1
    with pytest.raises(DVAEError, match="0 <= start <= end"):
        PriorTraining(model, (5, 2))


def test_the_prior_does_not_depend_on_the_latents_memory_layout():
    """Shipped transforms are channels-last; the prior's noise and outputs must
    be those of the contiguous latent (same seed, same draws)."""
    model = _model().train()
    y = torch.randn(1, TINY_P.latent_channels, 4, 8) * 2
    out = []
    for layout in (torch.contiguous_format, torch.channels_last):
        torch.manual_seed(3)
        bits, y_q = model.prior.bits(y.contiguous(memory_format=layout))
        out.append((bits, y_q))
    for name in out[0][0]:
        torch.testing.assert_close(out[0][0][name], out[1][0][name], rtol=0, atol=0)
    torch.testing.assert_close(out[0][1], out[1][1], rtol=0, atol=0)
