"""Data-parallel training: two real CPU processes (gloo) against one process.

The oracle: with the uniform noise replaced by zeros (each rank draws its own
noise, so with noise the runs differ by design), two processes that each take
half of every global batch must end with the weights of one process that
takes the whole batch, up to float summation order. Also: one noise pattern
per rank, a NaN on one rank skips the step on all, resume on every rank,
only rank 0 writes, the recipe's world size,
``torchrun`` running ``dvae train``, and a batch the processes cannot share.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import SmoothPatches, tiny_model
from PIL import Image

from dvae_tutorial import single_layer_vae, training
from dvae_tutorial.cli import main
from dvae_tutorial.configs import TINY
from dvae_tutorial.distributed import World, noise_seed, shard
from dvae_tutorial.errors import DVAEError
from dvae_tutorial.training import fit, load_checkpoint

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="this torch build has no torch.distributed with the gloo backend")

WORLD = 2
#: Global batch 4 (2 patches per process); a checkpoint after 3 of 6 steps;
#: no final lr drop, so a 3-step run is the first half of the 6-step one.
CFG = dataclasses.replace(TINY.train, steps=6, batch_size=4, val_every=3,
                          log_every=1, lr_decay=1.0)
HALF = 3


def _no_noise(y, generator=None):
    """The training noise replaced by zeros: ``y_tilde = y``."""
    return y


def _ddp_worker(rank: int, tmp: str) -> None:
    """One of the two processes; writes what it saw to ``tmp/rank{rank}.pt``."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous",
                            rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=60))  # no hang
    try:
        data, tmp = SmoothPatches(), Path(tmp)
        saves = []
        real_save = training.save_checkpoint
        real_noise = single_layer_vae.add_uniform_noise

        def save(path, ckpt, **kwargs):
            saves.append(Path(path).name)
            return real_save(path, ckpt, **kwargs)

        training.save_checkpoint = save
        noise = []

        def recorded_noise(y, generator=None):
            with torch.random.fork_rng(devices=[]):  # the same draw on zeros: u - 1/2
                noise.append(real_noise(torch.zeros_like(y).detach(), generator))
            return real_noise(y, generator)

        single_layer_vae.add_uniform_noise = recorded_noise
        fit(tiny_model(0), dataclasses.replace(CFG, steps=1), data, progress=False)
        single_layer_vae.add_uniform_noise = _no_noise
        sizes = []

        def batch_size(module, args):
            if module.training:  # not the EMA's validation
                sizes.append(args[0].shape[0])

        first = tiny_model(seed=rank)  # rank 1 starts elsewhere: DDP copies rank 0's
        first.register_forward_pre_hook(batch_size)
        fit(first, dataclasses.replace(CFG, steps=HALF), data,
            val_data=data.x[:2], checkpoint_path=tmp / "ddp.pt", progress=False)
        resumed = tiny_model(seed=100 + rank)  # every rank must load the checkpoint
        resumed.register_forward_pre_hook(batch_size)
        result = fit(resumed, CFG, data, val_data=data.x[:2],
                     checkpoint_path=tmp / "ddp.pt", progress=False)
        with pytest.raises(DVAEError, match="not divisible by the 2 processes"):
            fit(tiny_model(0), dataclasses.replace(CFG, batch_size=3), data,
                progress=False)
        poisoned, calls = tiny_model(0), []

        def nan_on_rank_1(module, args, output):  # step 2 of rank 1 only
            calls.append(1)
            return output * float("nan") if rank == 1 and len(calls) == 2 else output

        poisoned.g_s.register_forward_hook(nan_on_rank_1)
        skipped = fit(poisoned, dataclasses.replace(CFG, steps=3), data,
                      progress=False).skipped  # rank 0 must skip too, or DDP hangs
        torch.save({"weights": resumed.state_dict(), "ema": result.ema.state_dict(),
                    "history": result.history, "recipe": result.recipe,
                    "saves": saves, "sizes": sizes, "noise": noise[0],
                    "skipped": skipped, "poisoned": poisoned.state_dict()},
                   tmp / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_processes_train_like_one_process_with_the_same_global_batch(
        tmp_path, monkeypatch):
    torch.set_num_threads(1)
    mp.spawn(_ddp_worker, args=(str(tmp_path),), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True)
             for r in range(WORLD)]
    monkeypatch.setattr(single_layer_vae, "add_uniform_noise", _no_noise)
    alone = tiny_model(0)
    expected = fit(alone, CFG, SmoothPatches(), progress=False)
    for r in ranks:
        assert r["sizes"] == [CFG.batch_size // WORLD] * CFG.steps
        for key, value in alone.state_dict().items():
            torch.testing.assert_close(r["weights"][key], value, rtol=0, atol=1e-5)
            torch.testing.assert_close(r["ema"][key], expected.ema.state_dict()[key],
                                       rtol=0, atol=1e-5)
        # the logged loss is the mean over both halves of the batch
        for got, want in zip(r["history"]["train"], expected.history["train"],
                             strict=True):
            assert got["loss"] == pytest.approx(want["loss"], rel=1e-5)
    for name in ("weights", "poisoned"):  # one gradient, one decision: equal weights
        for key, value in ranks[0][name].items():
            assert torch.equal(ranks[1][name][key], value)
    assert ranks[0]["skipped"] == ranks[1]["skipped"] == 1
    assert ranks[0]["noise"].shape == ranks[1]["noise"].shape
    assert not torch.equal(ranks[0]["noise"], ranks[1]["noise"])
    assert ranks[0]["saves"] == ["ddp.pt", "ddp.pt"] and ranks[1]["saves"] == []
    assert [v["step"] for v in ranks[0]["history"]["val"]] == [3, 6]
    # rank 1 validated nothing: its val history is what it resumed from rank 0's file
    assert [v["step"] for v in ranks[1]["history"]["val"]] == [3]
    ckpt = load_checkpoint(tmp_path / "ddp.pt")
    assert ckpt["step"] == CFG.steps
    assert ckpt["recipe"]["world_size"] == WORLD == ranks[0]["recipe"]["world_size"]
    assert ckpt["recipe"]["precision"] == "fp32"


def test_shards_cover_the_global_batch_once_and_noise_seeds_differ():
    slots = [list(shard(8, World(rank, 4))) for rank in range(4)]
    assert sorted(sum(slots, [])) == list(range(8)) and slots[1] == [1, 5]
    assert list(shard(8, World(0, 1))) == list(range(8))
    with pytest.raises(DVAEError, match="not divisible by the 3 processes"):
        shard(8, World(0, 3))
    assert noise_seed(7, 0) == 7  # a single process keeps its noise
    seeds = {noise_seed(7, rank, step) for rank in range(4) for step in (0, 500)}
    assert len(seeds) == 8


def _photos(folder: Path) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(((80, 96), (70, 64), (64, 90))):
        pixels = rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)
        Image.fromarray(pixels).resize((w, h), Image.BILINEAR).save(folder / f"{i}.png")
    return folder


def test_torchrun_runs_dvae_train_on_two_processes(tmp_path):
    photos, out = _photos(tmp_path / "photos"), tmp_path / "tiny.pt"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", str(WORLD), "-m", "dvae_tutorial.cli", "train",
               "--preset", "tiny", "--steps", "2", "--batch", "2", "--device", "cpu",
               "--quiet", "--out", str(out), "--train-dir", str(photos),
               "--val-dir", str(photos), "--export", str(tmp_path / "ship.pt")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(command, capture_output=True, text=True, env=env,
                         timeout=180)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = [line for line in run.stdout.splitlines() if line.startswith("trained")]
    assert len(summary) == 1 and "2 processes on cpu" in summary[0]  # rank 0 only
    ckpt = load_checkpoint(out)
    assert ckpt["step"] == 2 and ckpt["recipe"]["world_size"] == WORLD
    assert ckpt["train_config"]["batch_size"] == 2
    assert (tmp_path / "ship.pt").is_file()


def test_dvae_train_refuses_a_batch_the_processes_cannot_share(
        tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it
    code = main(["train", "--preset", "tiny", "--batch", "3", "--device", "cpu",
                 "--out", str(tmp_path / "x.pt")])
    err = capsys.readouterr().err
    assert code == 2 and "not divisible by the 2 processes" in err
    assert err.count("\n") == 1 and not (tmp_path / "x.pt").exists()
