"""The training loop: loss goes down, skips, bit-identical resume, checkpoints, CLI.

TINY models on synthetic smooth patches (and a few generated PNGs for the
``dvae train`` command); no dataset mirror needed, every test runs on CPU.
"""

from __future__ import annotations

import dataclasses
import math
import shlex

import numpy as np
import pytest
import torch
from conftest import SmoothPatches, tiny_model
from PIL import Image

from dvae_tutorial import recipes, training
from dvae_tutorial.checkpoints import lineage
from dvae_tutorial.cli import main
from dvae_tutorial.configs import TINY
from dvae_tutorial.errors import DVAEError
from dvae_tutorial.runtime import seed_everything
from dvae_tutorial.single_layer_vae import SingleLayerVAE
from dvae_tutorial.training import (
    center_crops,
    fit,
    load_checkpoint,
    load_model,
    load_or_train,
    save_checkpoint,
    train_step,
    validate,
)

torch.set_num_threads(1)
CFG = dataclasses.replace(TINY.train, steps=8, val_every=4, log_every=2, lr_decay=0.5)


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class Interrupt(Exception):
    pass


def _interrupt_after(model: SingleLayerVAE, calls: int):
    """Make the model's forward raise on call number ``calls + 1``."""
    count = {"n": 0}

    def hook(module, args):
        count["n"] += 1
        if count["n"] > calls:
            raise Interrupt

    return model.register_forward_pre_hook(hook)


def test_a_few_steps_reduce_the_loss_on_a_fixed_batch():
    model, x = tiny_model(), SmoothPatches().x[:4]
    cfg = dataclasses.replace(CFG, steps=1000)
    optimizer = torch.optim.Adam(model.parameters())
    before = validate(model, x, cfg.lmbda)["loss"]
    for step in range(30):
        stats = train_step(model, optimizer, x, cfg, step)
        assert stats is not None and all(np.isfinite(stats))
    after = validate(model, x, cfg.lmbda)["loss"]
    assert after < 0.5 * before


def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path):
    data = SmoothPatches()
    straight = tiny_model()
    expected = fit(straight, CFG, data, progress=False)
    interrupted = tiny_model()
    handle = _interrupt_after(interrupted, 6)  # dies in step 7; last checkpoint: 4
    with pytest.raises(Interrupt):
        fit(interrupted, CFG, data, checkpoint_path=tmp_path / "run.pt", progress=False)
    handle.remove()
    assert load_checkpoint(tmp_path / "run.pt")["step"] == 4
    resumed = tiny_model(seed=123)  # other initial weights: the checkpoint wins
    result = fit(resumed, CFG, data, checkpoint_path=tmp_path / "run.pt",
                 progress=False)
    assert _same_state(resumed.state_dict(), straight.state_dict())
    ckpt = load_checkpoint(tmp_path / "run.pt")
    assert ckpt["step"] == CFG.steps
    assert _same_state(ckpt["ema"], result.ema.state_dict())
    assert _same_state(ckpt["ema"], expected.ema.state_dict())
    assert result.history["train"] == expected.history["train"]


def test_stop_at_then_resume_is_the_uninterrupted_run(tmp_path):
    """``stop_at`` stops a run on purpose (as the shipped lineages' early
    runs were): checkpointed at that step with the learning rate of the full
    length, and ``resume`` continues it bit for bit."""
    data, path = SmoothPatches(), tmp_path / "run.pt"
    val = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    straight = tiny_model()
    expected = fit(straight, CFG, data, val, progress=False)
    stopped = fit(tiny_model(), CFG, data, val, checkpoint_path=path, progress=False,
                  stop_at=5)
    ckpt = load_checkpoint(path)
    assert ckpt["step"] == 5 and ckpt["train_config"]["steps"] == CFG.steps
    assert stopped.history["val"][-1]["step"] == 5  # validated where it stopped
    assert all(r["lr"] == CFG.lr_at(r["step"] - 1) for r in ckpt["history"]["train"])
    resumed = tiny_model(seed=123)
    fit(resumed, CFG, data, val, checkpoint_path=path, progress=False)
    assert _same_state(resumed.state_dict(), straight.state_dict())
    assert _same_state(load_checkpoint(path)["ema"], expected.ema.state_dict())


def test_resume_may_change_the_number_of_steps_only(tmp_path):
    data, path = SmoothPatches(), tmp_path / "run.pt"
    parent = {"file": "base.pt", "step": 3, "lmbda": 845.0, "steps": 3}
    fit(tiny_model(), dataclasses.replace(CFG, steps=4), data, checkpoint_path=path,
        progress=False, parent=parent)
    longer = dataclasses.replace(CFG, steps=8)
    fit(tiny_model(), longer, data, checkpoint_path=path, progress=False)
    ckpt = load_checkpoint(path)
    assert ckpt["step"] == 8 and ckpt["train_config"]["steps"] == 8
    assert ckpt["recipe"]["parent"] == parent  # the lineage survives the resume
    lrs = [r["lr"] for r in ckpt["history"]["train"] if r["step"] > 4]
    assert lrs and lrs[-1] == longer.lr_at(7)
    with pytest.raises(DVAEError, match="past the 6 steps"):
        fit(tiny_model(), dataclasses.replace(CFG, steps=6), data, checkpoint_path=path,
            progress=False)
    with pytest.raises(DVAEError, match="train_config differs"):
        fit(tiny_model(), dataclasses.replace(longer, lmbda=1.0), data,
            checkpoint_path=path, progress=False)


def test_nan_loss_and_huge_gradient_steps_are_skipped():
    data, cfg = SmoothPatches(), dataclasses.replace(CFG, steps=3, lr_decay=1.0)
    clean = tiny_model()
    fit(clean, dataclasses.replace(cfg, steps=2), data, progress=False)
    poisoned = tiny_model()
    calls = {"n": 0}

    def nan_on_third_call(module, args, output):
        calls["n"] += 1
        return output * float("nan") if calls["n"] == 3 else output

    poisoned.g_s.register_forward_hook(nan_on_third_call)
    result = fit(poisoned, cfg, data, progress=False)
    assert result.skipped == 1 and result.history["train"][-1]["skipped"] == 1
    assert _same_state(poisoned.state_dict(), clean.state_dict())
    frozen = tiny_model()
    start = {k: v.clone() for k, v in frozen.state_dict().items()}
    result = fit(frozen, dataclasses.replace(cfg, grad_skip=1e-9), data, progress=False)
    assert result.skipped == cfg.steps
    assert _same_state(frozen.state_dict(), start)


def test_a_long_run_of_skips_stops_with_an_error(monkeypatch):
    monkeypatch.setattr(training, "MAX_SKIPS_IN_A_ROW", 3)
    cfg = dataclasses.replace(CFG, steps=5, grad_skip=1e-9)
    with pytest.raises(DVAEError, match="diverged: 3 steps in a row up to step 3"):
        fit(tiny_model(), cfg, SmoothPatches(), progress=False)


def test_checkpoints_round_trip_full_and_fp16(tmp_path):
    model, val = tiny_model(), SmoothPatches().x[:2]
    result = fit(model, CFG, SmoothPatches(), val_data=val,
                 checkpoint_path=tmp_path / "full.pt", progress=False)
    full = load_checkpoint(tmp_path / "full.pt")
    assert full["train_config"] == dataclasses.asdict(CFG)
    assert full["model_config"] == dataclasses.asdict(TINY.model)
    assert {"lmbda", "steps", "batch_size", "patch_size", "train_images", "device",
            "wall_time_s", "torch_version", "git_commit", "date"
            } <= full["recipe"].keys()
    assert [r["step"] for r in full["history"]["val"]] == [4, 8]
    loaded = load_model(tmp_path / "full.pt", map_location="cpu")
    assert loaded.config == TINY.model and not loaded.training
    assert _same_state(loaded.state_dict(), result.ema.state_dict())
    save_checkpoint(tmp_path / "ship.pt", full, fp16=True)
    sizes = [(tmp_path / name).stat().st_size for name in ("ship.pt", "full.pt")]
    assert sizes[0] < 0.3 * sizes[1]  # fp16 EMA only vs float32 model, EMA, Adam
    shipped = load_model(tmp_path / "ship.pt")
    assert _same_state(shipped.state_dict(), {
        k: v.half().float() for k, v in result.ema.state_dict().items()})
    with pytest.raises(DVAEError, match="cannot be resumed"):
        fit(tiny_model(), CFG, SmoothPatches(), checkpoint_path=tmp_path / "ship.pt",
            progress=False)
    with pytest.raises(DVAEError, match="train_config differs"):
        fit(tiny_model(), dataclasses.replace(CFG, lmbda=1.0), SmoothPatches(),
            checkpoint_path=tmp_path / "full.pt", progress=False)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DVAEError, match="not a readable checkpoint"):
        load_model(tmp_path / "junk.pt")


def test_load_or_train_trains_once_then_loads(tmp_path, monkeypatch):
    path, cfg = tmp_path / "m.pt", dataclasses.replace(CFG, steps=2)
    data = SmoothPatches()
    first = load_or_train(path, TINY.model, cfg, train_data=data,
                          val_data=data.x[:2], progress=False)
    monkeypatch.setattr(training, "fit", lambda *a, **k: pytest.fail("trained again"))
    second = load_or_train(path, TINY.model, cfg, progress=False)
    assert _same_state(first.state_dict(), second.state_dict())
    with pytest.raises(DVAEError, match="holds a model"):
        load_or_train(path, dataclasses.replace(TINY.model, channels=8), cfg)


def test_ema_follows_the_weights_with_a_warm_up():
    model = tiny_model()
    result = fit(model, CFG, SmoothPatches(), progress=False)
    assert not _same_state(result.ema.state_dict(), model.state_dict())
    model = tiny_model()
    result = fit(model, dataclasses.replace(CFG, ema_decay=0.0), SmoothPatches(),
                 progress=False)
    assert _same_state(result.ema.state_dict(), model.state_dict())
    ema, weights = torch.nn.Linear(1, 1, bias=False), torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        ema.weight.fill_(0.0)
        weights.weight.fill_(1.0)
    training._ema_update(ema, weights, decay=0.999, step=0)  # d = 1/10
    assert ema.weight.item() == pytest.approx(0.9)
    training._ema_update(ema, weights, decay=0.5, step=10)  # d = min(0.5, 11/20)
    assert ema.weight.item() == pytest.approx(0.95)


def test_patch_size_must_be_a_multiple_of_the_stride():
    with pytest.raises(DVAEError, match="multiple of the model's stride"):
        fit(tiny_model(), dataclasses.replace(CFG, patch_size=80), SmoothPatches(),
            progress=False)


def _photos(folder, sizes=((80, 96), (70, 64), (64, 90))):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(sizes):
        pixels = rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)
        Image.fromarray(pixels).resize((w, h), Image.BILINEAR).save(folder / f"{i}.png")
    return folder


def test_center_crops_are_fixed_and_resize_small_photos(tmp_path):
    folder = _photos(tmp_path / "val", sizes=((80, 96), (40, 50)))
    crops = center_crops(folder, 64, 5)
    assert crops.shape == (2, 3, 64, 64)
    assert 0 <= crops.min() and crops.max() <= 1
    assert torch.equal(crops, center_crops(folder, 64, 5))


def test_dvae_train_tiny_writes_a_checkpoint(tmp_path, capsys):
    photos, out = _photos(tmp_path / "photos"), tmp_path / "tiny.pt"
    argv = ["train", "--preset", "tiny", "--steps", "3", "--out", str(out),
            "--train-dir", str(photos), "--val-dir", str(photos), "--device", "cpu",
            "--quiet", "--export", str(tmp_path / "ship.pt")]
    assert main(argv) == 0
    summary = capsys.readouterr().out.strip().splitlines()
    assert len(summary) == 1 and "3 steps" in summary[0] and "dB" in summary[0]
    assert load_checkpoint(out)["step"] == 3
    assert load_model(tmp_path / "ship.pt").config == TINY.model
    assert main(argv) == 2  # exists, no --resume
    assert "--resume" in capsys.readouterr().err


def test_dvae_train_amp_bf16_and_channels_last_on_cpu_are_recorded(tmp_path, capsys):
    photos, out = _photos(tmp_path / "photos"), tmp_path / "bf16.pt"
    assert main(["train", "--preset", "tiny", "--steps", "3", "--out", str(out),
                 "--train-dir", str(photos), "--val-dir", str(photos), "--device",
                 "cpu", "--quiet", "--amp", "bf16", "--channels-last"]) == 0
    assert "bf16-autocast" in capsys.readouterr().out
    recipe = load_checkpoint(out)["recipe"]
    assert recipe["precision"] == "bf16-autocast"
    assert recipe["memory_format"] == "channels_last"
    # the saved weights load into a model in the usual (contiguous) format
    assert load_model(out).config == TINY.model


def test_dvae_train_init_fine_tunes_and_records_the_lineage(tmp_path, capsys):
    photos = _photos(tmp_path / "photos")
    common = ["--preset", "tiny", "--train-dir", str(photos), "--val-dir",
              str(photos), "--device", "cpu", "--quiet"]
    base_argv = ["train", *common, "--steps", "3", "--lmbda", "845", "--lr", "7e-4",
                 "--seed", "3", "--out", str(tmp_path / "base.pt")]
    assert main(base_argv) == 0
    assert main(["train", *common, "--steps", "2", "--lmbda", "100", "--lr", "5e-4",
                 "--init", str(tmp_path / "base.pt"), "--out",
                 str(tmp_path / "ft.pt")]) == 0
    base, ft = load_checkpoint(tmp_path / "base.pt"), load_checkpoint(tmp_path / "ft.pt")
    assert ft["train_config"]["lr"] == 5e-4
    parent = ft["recipe"]["parent"]
    assert parent["file"] == "base.pt" and parent["lmbda"] == 845
    assert parent["step"] == 3
    assert [r["steps"] for r in lineage(ft["recipe"])] == [3, 2]
    assert [r["lmbda"] for r in lineage(ft["recipe"])] == [845, 100]
    # each run records its preset and command line; the child keeps its
    # parent's, and its TrainConfig, so the whole chain can be remade
    assert base["recipe"]["preset"] == "tiny"
    assert shlex.split(base["recipe"]["command"]) == ["dvae", *base_argv]
    assert parent["command"] == base["recipe"]["command"]
    assert parent["train_config"]["lr"] == 7e-4 and parent["train_config"]["seed"] == 3
    plan = recipes.reproduction_plan([tmp_path / "ft.pt"], out_dir="again")
    first = plan[0].argv
    assert [r.parent for r in plan] == [None, 1]
    assert first[first.index("--preset") + 1] == "tiny"
    assert first[first.index("--lr") + 1] == "0.0007"
    assert first[first.index("--seed") + 1] == "3"
    assert not any("not recorded" in n for r in plan for n in r.notes)
    assert lineage(base["recipe"]) == [{"lmbda": 845, "steps": 3,
                                        "wall_time_s": base["recipe"]["wall_time_s"]}]
    # the fine-tune started from the base's EMA weights, not from a fresh init
    torch.manual_seed(0)
    fresh = SingleLayerVAE(TINY.model).state_dict()
    moved = {k: (ft["ema"][k] - base["ema"][k]).abs().max().item() for k in fresh}
    jumped = {k: (ft["ema"][k] - fresh[k]).abs().max().item() for k in fresh}
    assert max(moved.values()) < max(jumped.values())
    capsys.readouterr()
    assert main(["train", "--preset", "factorized", *common[2:], "--steps", "2",
                 "--init", str(tmp_path / "base.pt"), "--out",
                 str(tmp_path / "x.pt")]) == 2
    assert "the weights do not fit this model" in capsys.readouterr().err


def test_transfer_weights_widens_the_latent_and_refuses_other_designs():
    """A wider latent (M 8 → 16) gets the parent's weights in its leading
    slices and keeps its own initialisation elsewhere; the reverse is refused."""
    from dvae_tutorial.checkpoints import transfer_weights
    from dvae_tutorial.configs import ModelConfig

    narrow_cfg = ModelConfig(channels=8, latent_channels=8, hyperprior=False)
    wide_cfg = dataclasses.replace(narrow_cfg, latent_channels=16)
    torch.manual_seed(0)
    narrow = SingleLayerVAE(narrow_cfg)
    torch.manual_seed(1)
    wide = SingleLayerVAE(wide_cfg)
    fresh = {k: v.clone() for k, v in wide.state_dict().items()}
    partial = transfer_weights(wide, narrow.state_dict())
    assert partial and all(narrow.state_dict()[k].shape != fresh[k].shape
                           for k in partial)
    for name, value in wide.state_dict().items():
        parent = narrow.state_dict()[name]
        lead = tuple(slice(0, n) for n in parent.shape)
        assert torch.equal(value[lead], parent)
        rest = value.clone()
        rest[lead] = fresh[name][lead]
        assert torch.equal(rest, fresh[name])  # untouched outside the slice
    with pytest.raises(DVAEError, match="is \\(16"):
        transfer_weights(narrow, wide.state_dict())
    with pytest.raises(DVAEError, match="missing"):
        transfer_weights(SingleLayerVAE(TINY.model), narrow.state_dict())


def test_dvae_train_builds_hierarchical_presets(tmp_path, capsys):
    from dvae_tutorial.hierarchical_vae import HierarchicalVAE

    photos, out = _photos(tmp_path / "photos"), tmp_path / "h.pt"
    assert main(["train", "--preset", "resnet3", "--steps", "2", "--batch", "2",
                 "--patch", "64", "--train-dir", str(photos), "--device", "cpu",
                 "--quiet", "--out", str(out), "--export",
                 str(tmp_path / "h16.pt")]) == 0
    assert load_checkpoint(out)["family"] == "hierarchical"
    model = load_model(tmp_path / "h16.pt")
    assert isinstance(model, HierarchicalVAE) and model.config.num_layers == 3
    capsys.readouterr()


def test_dvae_train_missing_folder_is_a_one_line_error(tmp_path, capsys):
    code = main(["train", "--preset", "tiny", "--steps", "3", "--out",
                 str(tmp_path / "x.pt"), "--train-dir", str(tmp_path / "nowhere")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "nowhere" in err and "does not exist" in err
    assert not (tmp_path / "x.pt").exists()


def test_the_rate_stays_float32_under_bf16_autocast():
    from dvae_tutorial.distributions import discretized_gaussian_bits

    g = torch.Generator().manual_seed(0)
    y = (torch.randn(2, 8, 4, 4, generator=g) * 3).bfloat16()
    mean = torch.zeros(8, 1, 1)
    scale = (0.2 + 2 * torch.rand(8, 1, 1, generator=g)).bfloat16()
    exact = discretized_gaussian_bits(y.float(), mean, scale.float())
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as a GPU run computes it
        bits = discretized_gaussian_bits(y, mean.bfloat16(), scale)
    assert bits.dtype == torch.float32
    torch.testing.assert_close(bits, exact, rtol=1e-6, atol=1e-6)
    model, x = tiny_model().eval(), SmoothPatches().x[:2]
    latents = []
    model.g_a.register_forward_hook(lambda m, a, out: latents.append(out.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert latents == [torch.bfloat16]  # the transforms did run in bfloat16
    assert {v.dtype for v in out.bits.values()} == {torch.float32}
    assert out.bpp.dtype == torch.float32


def test_train_step_runs_the_forward_in_the_autocast_dtype():
    x, cfg, dtypes = SmoothPatches().x[:4], dataclasses.replace(CFG, steps=100), []
    losses = []
    for amp_dtype in (None, torch.bfloat16):
        model = tiny_model()
        model.g_s.register_forward_hook(lambda m, a, out: dtypes.append(out.dtype))
        optimizer = torch.optim.Adam(model.parameters())
        losses.append(train_step(model, optimizer, x, cfg, 0, amp_dtype)[0])
    assert dtypes == [torch.float32, torch.bfloat16]
    assert losses[1] == pytest.approx(losses[0], rel=0.05)


def test_autocast_is_bf16_on_a_cuda_gpu_that_has_it_and_never_on_cpu(monkeypatch):
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert training.autocast_dtype(cuda) is torch.bfloat16
    assert training.autocast_dtype(cuda, amp=False) is None
    assert training.autocast_dtype(torch.device("cpu")) is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert training.autocast_dtype(cuda) is None  # float16 would need a GradScaler
    # a T4 (Colab) emulates bfloat16, slower than float32: auto does not pick it
    monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                        lambda including_emulation=True: including_emulation)
    assert training.autocast_dtype(cuda) is None
    with pytest.raises(DVAEError, match="no bfloat16"):
        training.autocast_dtype(cuda, "bf16")
    result = fit(tiny_model(), dataclasses.replace(CFG, steps=1), SmoothPatches(),
                 device="cpu", progress=False)
    assert result.recipe["precision"] == "fp32" and result.recipe["world_size"] == 1


def test_amp_bf16_autocasts_on_any_device_and_bad_modes_are_refused(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert training.autocast_dtype(cpu, "bf16") is torch.bfloat16
    assert training.autocast_dtype(cpu, "auto") is None
    assert training.autocast_dtype(cpu, "off") is None
    with pytest.raises(DVAEError, match="amp must be one of"):
        training.autocast_dtype(cpu, "fp16")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    with pytest.raises(DVAEError, match="no bfloat16"):
        training.autocast_dtype(cuda, "bf16")


def test_channels_last_trains_the_same_run_and_bf16_on_cpu_is_recorded():
    cfg = dataclasses.replace(CFG, steps=20, val_every=20)

    def run(**kw):
        seed_everything(0)
        return fit(tiny_model(), cfg, SmoothPatches(), device="cpu", progress=False,
                   **kw)

    plain, last = run(), run(channels_last=True)
    assert "memory_format" not in plain.recipe
    assert last.recipe["memory_format"] == "channels_last"
    for a, b in zip(plain.history["train"], last.history["train"], strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-3)  # float rounding only
    for p, q in zip(plain.ema.parameters(), last.ema.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=1e-3, atol=1e-4)
    bf16 = run(amp="bf16", channels_last=True)
    assert bf16.recipe["precision"] == "bf16-autocast"
    losses = [r["loss"] for r in bf16.history["train"]]
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] == pytest.approx(plain.history["train"][-1]["loss"], rel=0.1)
