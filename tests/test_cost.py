"""Cost per model: parameters, bytes on disk, measured kMAC per pixel.

Oracles: the analytic multiply-accumulate count of single convolutions
(plain, strided, grouped, transposed), and for a single-layer model the count
of the codec's own ``compress`` pass.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dvae_tutorial import codec, cost
from dvae_tutorial.cli import main
from dvae_tutorial.configs import HierarchicalPriorConfig, ModelConfig
from dvae_tutorial.hierarchical_prior import HierarchicalPriorVAE
from dvae_tutorial.single_layer_vae import SingleLayerVAE

torch.set_num_threads(1)


@pytest.mark.parametrize("layer, shape, macs", [
    # output pixels × output channels × (input channels / groups) × k²
    (nn.Conv2d(3, 8, 5, stride=2, padding=2), (32, 48), 16 * 24 * 8 * 3 * 25),
    (nn.Conv2d(6, 6, 3, padding=1, groups=6), (10, 12), 10 * 12 * 6 * 1 * 9),
    (nn.Conv2d(4, 10, 1), (7, 9), 7 * 9 * 10 * 4),
    # transposed: every input pixel × input channels × output channels × k²
    (nn.ConvTranspose2d(8, 3, 5, stride=2, padding=2, output_padding=1), (16, 24),
     16 * 24 * 8 * 3 * 25),
])
def test_a_single_layer_counts_its_analytic_macs(layer, shape, macs):
    x = torch.rand(1, layer.in_channels, *shape)
    assert cost.count_macs(layer, x) == macs  # biases are not counted


def test_a_linear_layer_counts_as_a_matrix_product():
    assert cost.count_macs(nn.Linear(20, 30), torch.rand(5, 20)) == 5 * 20 * 30


def tiny_single(hyperprior: bool) -> SingleLayerVAE:
    torch.manual_seed(0)
    return SingleLayerVAE(ModelConfig(channels=8, latent_channels=12,
                                      hyperprior=hyperprior, hyper_channels=8)).eval()


def tiny_hier() -> HierarchicalPriorVAE:
    torch.manual_seed(0)
    return HierarchicalPriorVAE(HierarchicalPriorConfig(
        channels=8, latent_channels=8, widths=(8, 8), encoder_blocks=(1, 1),
        latent_blocks=(2, 1), z_channels=(3, 2), kernel_sizes=(3, 1))).eval()


@pytest.mark.parametrize("make", [lambda: tiny_single(False), lambda: tiny_single(True),
                                  tiny_hier], ids=["factorized", "hyperprior", "hier"])
def test_a_models_count_is_positive_stable_and_per_pixel(make):
    model = make()
    first = cost.model_cost(model, (128, 192))
    assert first["encode_macs"] > 0 and first["decode_macs"] > 0
    assert cost.model_cost(model, (128, 192)) == first  # the same count again
    # fully convolutional: the same count per pixel at another multiple of the stride
    other = cost.model_cost(model, (192, 128))
    assert other["encode_kmac_per_pixel"] == pytest.approx(first["encode_kmac_per_pixel"])
    assert other["decode_kmac_per_pixel"] == pytest.approx(first["decode_kmac_per_pixel"])
    assert first["parameters"] == sum(p.numel() for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())  # restored


def test_the_single_layer_passes_are_what_the_codec_runs():
    model = tiny_single(True)
    x = torch.rand(1, 3, 128, 192)
    counted = cost.model_cost(model, (128, 192))
    assert cost.count_macs(model.compress, x) == counted["encode_macs"]
    streams = model.compress(x).strings
    assert cost.count_macs(model.decompress, streams, (128, 192)) == counted["decode_macs"]
    # the decoder runs each 5×5 stride-2 transposed convolution as a 3×3
    # convolution to four phases: 36 multiply-adds per input pixel and channel
    # pair instead of 25 (oracle: the layers' shapes)
    ups = [m for m in model.g_s if isinstance(m, nn.ConvTranspose2d)]
    extra = sum(11 * (8 * 2**i) * (12 * 2**i) * m.in_channels * m.out_channels
                for i, m in enumerate(ups))
    assert counted["decode_macs"] - counted["decode_macs_transposed"] == extra


def test_the_hierarchical_encoder_runs_the_posteriors_the_decoder_does_not():
    model = tiny_hier()
    counted = cost.model_cost(model, (128, 128))
    g_a = cost.count_macs(model.g_a, torch.rand(1, 3, 128, 128))
    g_s = cost.count_macs(model.g_s, torch.rand(1, 8, 8, 8))
    prior_enc = counted["encode_macs"] - g_a
    prior_dec = counted["decode_macs_transposed"] - g_s
    assert prior_enc > prior_dec > 0  # bottom-up features and posterior heads


def test_shipped_cost_of_one_shipped_model():
    name = "single-100"
    info = {i.name: i for i in codec.shipped_models()}[name]
    (row,) = cost.shipped_cost([name])
    assert row["model"] == name and row["family"] == "single"
    assert row["file_bytes"] == info.path.stat().st_size == row["total_bytes"]
    assert row["shares"] is None
    assert row["parameters"] == sum(p.numel() for p in codec.load_shipped(name).parameters())
    assert 1 < row["encode_kmac_per_pixel"] < 1000
    # g_s mirrors g_a (a factorized prior adds nothing): the same MACs, until
    # the decoder runs its transposed convolutions in the four-phase form
    assert row["decode_macs_transposed"] == row["encode_macs"] < row["decode_macs"]


def test_dvae_models_cost_prints_a_table(tmp_path, monkeypatch, capsys):
    import dataclasses

    from dvae_tutorial.checkpoints import CHECKPOINT_VERSION, save_checkpoint
    from dvae_tutorial.configs import TrainConfig

    weights = tmp_path / "weights"
    monkeypatch.setattr(codec, "WEIGHTS_DIR", weights)
    model = tiny_single(False)
    save_checkpoint(weights / "tiny-100.pt", {
        "version": CHECKPOINT_VERSION, "family": model.family,
        "config_type": "ModelConfig", "model_config": dataclasses.asdict(model.config),
        "train_config": dataclasses.asdict(TrainConfig(lmbda=100.0)), "step": 0,
        "history": {}, "recipe": {"lmbda": 100.0}, "ema": model.state_dict()}, fp16=True)
    assert main(["models", "--cost"]) == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header.split() == ["NAME", "FAMILY", "LMBDA", "PARAMS", "MB",
                              "ENC_KMAC/PX", "DEC_KMAC/PX"]
    fields = row.split()
    expected = cost.model_cost(codec.load_shipped("tiny-100"))
    assert fields[:4] == ["tiny-100", "single", "100", str(expected["parameters"])]
    assert float(fields[5]) == pytest.approx(expected["encode_kmac_per_pixel"], abs=0.05)
