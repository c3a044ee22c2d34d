"""The variable-rate model: gain interpolation, coding at any λ of its range,
clear errors outside it, the warm start, training, and the commands."""

from __future__ import annotations

import dataclasses
import math
import struct

import numpy as np
import pytest
import torch
from conftest import SmoothPatches

from dvae_tutorial import bitstream, codec
from dvae_tutorial.checkpoints import (
    CHECKPOINT_VERSION,
    build_model,
    load_checkpoint,
    save_checkpoint,
)
from dvae_tutorial.cli import main
from dvae_tutorial.configs import ModelConfig, TrainConfig, VariableRateConfig
from dvae_tutorial.errors import CodingError, DVAEError
from dvae_tutorial.evaluation import evaluate_model, model_series
from dvae_tutorial.images import to_tensor01
from dvae_tutorial.metrics import to_uint8
from dvae_tutorial.single_layer_vae import SingleLayerVAE
from dvae_tutorial.training import fit
from dvae_tutorial.variable_rate import (
    VariableRateVAE,
    interpolation_weights,
    sample_lmbdas,
    sweep_lmbdas,
)

torch.set_num_threads(1)
LEVELS = (100.0, 400.0, 1600.0)
TINY_VR = VariableRateConfig(channels=8, latent_channels=8, levels=LEVELS)


def tiny_vr(seed: int = 0) -> VariableRateVAE:
    """A tiny model warm-started from a random single-layer one at λ = 400 (gains
    ½, 1, 2 and the prior scaled alike), then perturbed per channel, so that
    coding at a wrong λ would show."""
    torch.manual_seed(seed)
    parent = SingleLayerVAE(ModelConfig(8, 8, hyperprior=False))
    with torch.no_grad():
        parent.y_prior.mean.normal_(0.0, 0.3)
        parent.y_prior.raw_scale.normal_(1.0, 0.3)
    model = VariableRateVAE(TINY_VR).eval()
    model.start_from_single(parent.state_dict(), 400.0)
    with torch.no_grad():
        model.log_gain.add_(0.2 * torch.rand_like(model.log_gain))
        model.log_inverse_gain.add_(0.1 * torch.randn_like(model.log_gain))
        model.prior_mean.add_(0.1 * torch.randn_like(model.log_gain))
    return model


def photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([np.sin(xx / 7 + c) * np.cos(yy / 5 - c) for c in range(3)], -1)
    return np.clip(127 + 100 * base + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(
        np.uint8)


def test_gains_hit_the_learned_vectors_exactly_at_the_levels():
    model = tiny_vr()
    for k, level in enumerate(LEVELS):
        gain, inverse, mean, scale = model.rate_parameters(torch.tensor([level]))
        assert torch.equal(gain[0, :, 0, 0], model.log_gain[k].exp())
        assert torch.equal(inverse[0, :, 0, 0], model.log_inverse_gain[k].exp())
        assert torch.equal(mean[0, :, 0, 0], model.prior_mean[k])
        expected = torch.log(0.11 + torch.nn.functional.softplus(
            model.prior_raw_scale[k])).exp()
        torch.testing.assert_close(scale[0, :, 0, 0], expected, rtol=0, atol=0)


def test_gains_are_geometric_and_monotone_between_levels():
    model = tiny_vr()
    grid = torch.exp(torch.linspace(math.log(LEVELS[0]), math.log(LEVELS[-1]), 301))
    gain = model.rate_parameters(grid)[0][:, :, 0, 0]
    # the levels' gains rise with λ in every channel, so the curve must too
    assert (model.log_gain.diff(dim=0) > 0).all()
    assert (gain.diff(dim=0) >= -1e-6 * gain[1:]).all()
    # the geometric middle of two levels gets the geometric mean of their gains
    middle = math.sqrt(LEVELS[0] * LEVELS[1])
    mid_gain = model.rate_parameters(torch.tensor([middle]))[0][0, :, 0, 0]
    torch.testing.assert_close(mid_gain, (0.5 * model.log_gain[:2].sum(0)).exp())
    # any levels: within a segment, each channel stays between its two ends
    weights = interpolation_weights(grid, LEVELS)
    assert torch.allclose(weights.sum(1), torch.ones(len(grid)))
    assert ((weights > 0).sum(1) <= 2).all() and (weights >= 0).all()


def test_sampled_lmbdas_cover_the_range_and_the_levels():
    torch.manual_seed(0)
    lmbdas = sample_lmbdas(4000, LEVELS)
    assert lmbdas.min() >= LEVELS[0] and lmbdas.max() <= LEVELS[-1]
    at_levels = sum((lmbdas == v).sum().item() for v in LEVELS) / len(lmbdas)
    assert 0.45 < at_levels < 0.55
    assert sweep_lmbdas(LEVELS) == [100.0, 200.0, 400.0, 800.0, 1600.0]


def test_warm_start_reproduces_the_parent_at_its_lambda():
    torch.manual_seed(3)
    parent = SingleLayerVAE(ModelConfig(8, 8, hyperprior=False)).eval()
    with torch.no_grad():
        parent.y_prior.mean.normal_(0, 0.5)
        parent.y_prior.raw_scale.normal_(1.0, 0.3)
    model = VariableRateVAE(TINY_VR).eval()
    model.start_from_single(parent.state_dict(), 400.0)
    x = to_tensor01(photo(48, 64))[None]
    with torch.no_grad():
        ours, theirs = model(x, 400.0), parent(x)
        torch.testing.assert_close(ours.x_hat, theirs.x_hat)
        torch.testing.assert_close(ours.bpp, theirs.bpp)
        # λ = 4 × the parent's: gain 2 (√4), a finer quantiser, more bits
        assert model(x, 1600.0).bpp > ours.bpp


def test_round_trip_at_an_in_between_lambda():
    model = tiny_vr()
    image = photo(40, 70)
    lmbda = 250.3  # between levels, and not a float32: the header rounds it
    encoded = codec.compress(image, model, name="tiny-vr", lmbda=lmbda)
    header, _ = bitstream.unpack(encoded.data)
    as_float32 = struct.unpack("<f", struct.pack("<f", lmbda))[0]
    assert header.family == "variable-rate" and header.lmbda == as_float32
    decoded = codec.decompress(encoded.data, model=model)
    with torch.no_grad():
        out = model(to_tensor01(image)[None], as_float32)
    assert np.array_equal(decoded, to_uint8(out.x_hat[0].permute(1, 2, 0)))
    # the rate follows λ: finer quantisation at the top level
    high = codec.compress(image, model, name="tiny-vr", lmbda=1600.0)
    assert high.estimated_bits > encoded.estimated_bits


@pytest.mark.parametrize("lmbda", [50.0, 1600.5, math.inf, math.nan])
def test_a_lambda_outside_the_range_is_a_clear_error(lmbda):
    model = tiny_vr()
    expected = ("outside this variable-rate model's range 100 … 1600"
                if math.isfinite(lmbda) else "must be finite")
    with pytest.raises(DVAEError, match=expected):
        codec.compress(photo(16, 16), model, name="tiny-vr", lmbda=lmbda)
    with pytest.raises(DVAEError, match="variable-rate model: give the λ"):
        codec.compress(photo(16, 16), model, name="tiny-vr")


@pytest.fixture
def shipped(tmp_path, monkeypatch):
    """A weights folder with a tiny variable-rate and a tiny fixed-rate model."""
    folder = tmp_path / "weights"
    monkeypatch.setattr(codec, "WEIGHTS_DIR", folder)
    for name, model, lmbda in (("tiny-vr", tiny_vr(), 400.0),
                               ("tiny-f", build_model(ModelConfig(
                                   8, 8, hyperprior=False)), 100.0)):
        ckpt = {"version": CHECKPOINT_VERSION, "family": model.family,
                "config_type": type(model.config).__name__,
                "model_config": dataclasses.asdict(model.config),
                "train_config": dataclasses.asdict(TrainConfig(lmbda=lmbda)),
                "step": 0, "history": {}, "recipe": {"lmbda": lmbda},
                "ema": model.state_dict()}
        save_checkpoint(folder / f"{name}.pt", ckpt, fp16=True)
    return folder


def test_commands_code_at_any_lambda_and_refuse_others(shipped, tmp_path, capsys):
    from PIL import Image

    source = tmp_path / "img.png"
    Image.fromarray(photo(33, 65)).save(source)
    assert main(["models"]) == 0
    assert "tiny-vr variable-rate 100-1600" in capsys.readouterr().out.splitlines()
    assert main(["models", "--family", "variable-rate"]) == 0
    assert capsys.readouterr().out.split() == ["tiny-vr", "variable-rate", "100-1600"]
    out = tmp_path / "out"
    for argv in (["--model", "tiny-vr", "--lmbda", "99"], ["--model", "tiny-vr"],
                 ["--model", "tiny-f", "--lmbda", "300"]):
        assert main(["compress", str(source), *argv, "--out-dir", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and err.startswith("dvae compress: error:")
        assert ("100 … 1600" in err) if argv[1] == "tiny-vr" else "λ = 100" in err
    assert not out.exists()
    assert main(["compress", str(source), "--model", "tiny-vr", "--lmbda", "700",
                 "--out-dir", str(out)]) == 0
    assert main(["decompress", str(out / "img.dvae"), "--out-dir", str(out)]) == 0
    capsys.readouterr()
    model = codec.load_shipped("tiny-vr")
    with torch.no_grad():
        x_hat = model(to_tensor01(photo(33, 65))[None], 700.0).x_hat
    decoded = np.asarray(Image.open(out / "img.png"))
    assert np.array_equal(decoded, to_uint8(x_hat[0].permute(1, 2, 0)))
    # a header λ outside the range (crafted) is refused, naming the range
    data = (out / "img.dvae").read_bytes()
    header, streams = bitstream.unpack(data)
    bad = bitstream.pack(dataclasses.replace(header, lmbda=3000.0), streams)
    with pytest.raises(CodingError, match="outside model 'tiny-vr'"):
        codec.decompress(bad)


def test_evaluation_sweeps_a_variable_rate_model_as_one_series(shipped):
    images = [photo(32, 48, seed) for seed in range(2)]
    result = evaluate_model("tiny-vr", images, lmbda=200.0)
    assert result["model"] == "tiny-vr-200" and result["lmbda"] == 200.0
    assert model_series(result["model"]) == "tiny-vr"
    from dvae_tutorial.evaluation import _operating_points

    assert _operating_points(["tiny-f", "tiny-vr"], None) == [
        ("tiny-f", None), *(("tiny-vr", v) for v in sweep_lmbdas(LEVELS))]
    assert _operating_points(["tiny-vr"], [150.0, 900.0]) == [
        ("tiny-vr", 150.0), ("tiny-vr", 900.0)]


def test_evaluate_refuses_a_lambda_it_cannot_sweep(shipped, capsys):
    for argv, message in ((["--model", "tiny-f", "--lmbda", "300"],
                           "--lmbda sweeps a variable-rate model"),
                          (["--model", "tiny-vr", "--lmbda", "150,3000"],
                           "for λ in 100 … 1600; λ = 3000 given")):
        assert main(["evaluate", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and message in err, err


def test_training_uses_each_images_lambda_and_resumes(tmp_path):
    cfg = TrainConfig(lmbda=400.0, steps=6, batch_size=4, patch_size=64,
                      warmup_steps=2, val_every=3, log_every=3)
    torch.manual_seed(0)
    model = VariableRateVAE(TINY_VR)
    path = tmp_path / "vr.pt"
    fit(model, dataclasses.replace(cfg, steps=3), SmoothPatches(), device="cpu",
        checkpoint_path=path, progress=False)
    result = fit(VariableRateVAE(TINY_VR), cfg, SmoothPatches(), device="cpu",
                 checkpoint_path=path, progress=False)
    torch.manual_seed(0)
    straight = fit(VariableRateVAE(TINY_VR), cfg, SmoothPatches(), device="cpu",
                   progress=False)
    for a, b in zip(result.ema.state_dict().values(),
                    straight.ema.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # resumed == uninterrupted, λ draws included
    ckpt = load_checkpoint(path)
    assert ckpt["family"] == "variable-rate" and ckpt["step"] == 6
    assert all(math.isfinite(row["loss"]) for row in ckpt["history"]["train"])
    model.train()
    out = model(torch.rand(8, 3, 32, 32))
    assert out.lmbda.unique().numel() > 1  # one λ per image
    assert torch.allclose(out.loss_weight, (out.lmbda / 400.0) ** -0.5)


def test_kodak_curves_and_figures_from_a_report():
    import matplotlib

    matplotlib.use("Agg")
    from dvae_tutorial.variable_rate_results import (
        kodak_curves,
        plot_gain_curves,
        plot_variable_rate_rd,
    )

    levels = [100.0, 300.0, 845.0, 2500.0, 5000.0]
    sweep = sweep_lmbdas(levels)

    def point(lmbda):  # a smooth made-up RD curve: PSNR rises with log-rate
        bpp = 0.016 * lmbda ** 0.55
        return bpp, 30 + 6 * math.log2(bpp / 0.7)

    rows = [{"model": f"single-{v:g}", "bpp": point(v)[0], "psnr": point(v)[1]}
            for v in levels]
    rows += [{"model": f"single-vr-{v:g}", "lmbda": v, "bpp": 1.05 * point(v)[0],
              "psnr": point(v)[1]} for v in sweep]
    curves = kodak_curves({"models": rows})
    assert curves["variable_rate"]["lmbda"] == sweep
    assert curves["separate"]["lmbda"] == levels
    assert curves["bd_rate_percent"] == pytest.approx(5.0, abs=0.01)
    assert curves["bd_rate_levels_percent"] == pytest.approx(5.0, abs=0.01)
    assert not curves["ship"] and all(abs(g) < 1e-9
                                      for g in curves["psnr_gap_db"].values())
    with pytest.raises(DVAEError, match="BD-rate needs 4"):
        kodak_curves({"models": rows[:3]})
    assert plot_variable_rate_rd(curves).figure.get_label() == "variable-rate-rd"
    assert len(plot_gain_curves(tiny_vr(), channels=3).get_lines()) == 6


def test_cost_counts_the_single_layer_passes_and_the_gain_tables():
    from dvae_tutorial.cost import model_cost

    ours = model_cost(tiny_vr(), (64, 64))
    theirs = model_cost(SingleLayerVAE(ModelConfig(8, 8, hyperprior=False)).eval(),
                        (64, 64))
    k, m = len(LEVELS), 8
    assert ours["parameters"] == theirs["parameters"] + 4 * k * m - 2 * m
    assert ours["decode_macs"] == pytest.approx(theirs["decode_macs"], rel=1e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_training_and_coding_run_on_cuda():
    cfg = TrainConfig(lmbda=400.0, steps=2, batch_size=4, patch_size=64,
                      warmup_steps=1, val_every=2, log_every=1)
    torch.manual_seed(0)
    result = fit(VariableRateVAE(TINY_VR), cfg, SmoothPatches(), device="cuda",
                 progress=False, amp="auto")
    assert next(result.ema.parameters()).is_cuda
    model = tiny_vr().cuda()
    x = to_tensor01(photo(32, 48))[None].cuda()
    compressed = model.compress(x, 300.0)
    x_hat = model.decompress(compressed.strings, compressed.shape, 300.0)
    with torch.no_grad():
        torch.testing.assert_close(x_hat, model(x, 300.0).x_hat.clamp(0, 1))
