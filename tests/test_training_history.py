"""checkpoints.training_history: the appendix's table, read from the recipes."""

from __future__ import annotations

import dataclasses

import pytest
from conftest import tiny_model

from dvae_tutorial import codec
from dvae_tutorial.checkpoints import (
    preset_name,
    save_checkpoint,
    training_history,
)
from dvae_tutorial.configs import (
    FACTORIZED,
    FACTORIZED_WIDE,
    HIER12,
    RESNET12,
    TINY,
    ModelConfig,
)


def test_preset_names():
    assert preset_name(FACTORIZED.model) == "factorized"
    assert preset_name(FACTORIZED_WIDE.model) == "factorized-wide"
    assert preset_name(RESNET12.model) == "resnet12"
    # a prior takes N and M from its parent: its layout names it
    assert preset_name(dataclasses.replace(HIER12.model, channels=64,
                                           latent_channels=96)) == "hier12"
    assert preset_name(ModelConfig(channels=7, latent_channels=5)) is None


def _recipe(lmbda, steps, seconds, commit, parent=None):
    return {"lmbda": lmbda, "steps": steps, "batch_size": 4, "patch_size": 64,
            "device": "cpu test", "wall_time_s": seconds, "git_commit": commit,
            "parent": parent}


def test_a_lineage_is_read_oldest_first(tmp_path):
    """A file trained from a parent that was itself trained from another:
    three runs, the middle one stopped early, the last one widening."""
    model = tiny_model()
    grandparent = {"file": "base.pt", "step": 100, "widened": [],
                   **_recipe(845.0, 100, 60.0, "aaa")}
    parent = {"file": "mid.pt", "step": 30, "widened": ["g_a.0.weight", "g_s.0.bias"],
              **_recipe(300.0, 50, 30.0, "bbb", grandparent)}
    ckpt = {"version": 1, "family": "single", "config_type": "ModelConfig",
            "model_config": dataclasses.asdict(TINY.model),
            "train_config": dataclasses.asdict(dataclasses.replace(
                TINY.train, lr=3e-4, warmup_steps=7)),
            "step": 20, "history": {"train": [], "val": []},
            "recipe": {**_recipe(300.0, 20, 12.0, "ccc", parent), "train_images": 9,
                       "precision": "bf16-autocast"},
            "ema": model.state_dict()}
    path = save_checkpoint(tmp_path / "child.pt", ckpt)

    [row] = training_history([path])
    assert row["name"] == "child" and row["family"] == "single"
    assert row["preset"] == "tiny" and row["lmbda"] == 300.0
    assert row["parameters"] == row["trained_parameters"] == sum(
        p.numel() for p in model.parameters())
    assert row["init"] == ("mid.pt", 30) and row["widened"] == 2
    assert row["transforms_file"] is None and row["frozen"] == []
    assert (row["step"], row["steps"], row["lr"], row["warmup_steps"]) == (20, 20, 3e-4, 7)
    assert row["precision"] == "bf16-autocast" and row["train_images"] == 9
    assert [(r["file"], r["step"], r["steps"], r["init"], r["widened"])
            for r in row["runs"]] == [("base.pt", 100, 100, None, 0),
                                      ("mid.pt", 30, 50, ("base.pt", 100), 0),
                                      ("child.pt", 20, 20, ("mid.pt", 30), 2)]
    assert row["total_steps"] == 150 and row["total_wall_time_s"] == 102.0
    assert row["file_bytes"] == path.stat().st_size


def test_a_checkpoint_without_a_parent_is_one_run(tmp_path):
    ckpt = {"version": 1, "model_config": dataclasses.asdict(TINY.model),
            "train_config": dataclasses.asdict(TINY.train), "step": 5,
            "recipe": _recipe(100.0, 5, 1.0, "ddd"), "ema": tiny_model().state_dict()}
    [row] = training_history([save_checkpoint(tmp_path / "solo.pt", ckpt)])
    assert row["family"] == "single" and row["init"] is None and row["widened"] == 0
    assert [r["file"] for r in row["runs"]] == ["solo.pt"] and row["total_steps"] == 5


@pytest.fixture(scope="module")
def shipped():
    return training_history()


def test_every_shipped_model_has_a_row(shipped):
    assert sorted(r["name"] for r in shipped) == sorted(
        i.name for i in codec.shipped_models())
    families = [r["family"] for r in shipped]
    assert families == sorted(families, key=lambda f: f != "single"), "parents first"


def test_shipped_rows_agree_with_their_lineage(shipped):
    names = {r["name"] for r in shipped}
    for row in shipped:
        assert row["preset"] is not None, row["name"]
        assert row["runs"][-1]["file"] == f"{row['name']}.pt"
        assert row["runs"][-1]["step"] == row["step"]
        assert row["runs"][0]["init"] is None  # every lineage starts from scratch
        for older, newer in zip(row["runs"][:-1], row["runs"][1:], strict=True):
            assert newer["init"] == (older["file"], older["step"])
        assert row["total_steps"] == sum(r["step"] for r in row["runs"])
        if row["family"] == "hierarchical":  # a prior over frozen transforms
            assert row["frozen"] == ["g_a", "g_s"]
            assert row["transforms_file"].removesuffix(".pt") in names
            assert row["trained_parameters"] < row["parameters"]
            assert row["rate_warmup"] is not None
        else:
            assert row["trained_parameters"] == row["parameters"]
