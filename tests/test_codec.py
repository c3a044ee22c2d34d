"""The codec and its commands: odd images, exact round trips, bad files, CLI.

Most tests use tiny random-init models written to a temporary weights folder
(fast, and independent of the shipped checkpoints); the last ones use the
shipped models on Kodak.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from conftest import MIRROR
from PIL import Image

from dvae_tutorial import codec
from dvae_tutorial.checkpoints import CHECKPOINT_VERSION, build_model, save_checkpoint
from dvae_tutorial.cli import main
from dvae_tutorial.configs import (
    HierarchicalConfig,
    HierarchicalPriorConfig,
    ModelConfig,
    TrainConfig,
)
from dvae_tutorial.entropy_coding import decode_latents
from dvae_tutorial.errors import CodingError, DataError, DVAEError
from dvae_tutorial.images import load_image, to_tensor01
from dvae_tutorial.metrics import to_uint8
from dvae_tutorial.quantization import quantize
from dvae_tutorial.single_layer_vae import pad_to_multiple

torch.set_num_threads(1)
FACT = ModelConfig(channels=8, latent_channels=8, hyperprior=False)
HYPER = ModelConfig(channels=8, latent_channels=8, hyperprior=True, hyper_channels=8)
HIER = HierarchicalConfig(widths=(8, 8, 8), encoder_blocks=(1, 1, 1),
                          latent_blocks=(2, 1, 1), latent_channels=(2, 3, 4),
                          decoder_blocks=(1, 0, 0), kernel_sizes=(3, 3, 1),
                          stem_stride=2)
#: The book's hierarchical model, tiny: 8-channel transforms, z1 (stride 32),
#: z2, z3 (stride 16) and y.
PRIOR = HierarchicalPriorConfig(channels=8, latent_channels=8, widths=(8, 8),
                                encoder_blocks=(1, 1), latent_blocks=(2, 1),
                                z_channels=(3, 2), kernel_sizes=(3, 1))


def write_model(folder, name, config, lmbda, seed):
    torch.manual_seed(seed)
    model = build_model(config).eval()
    ckpt = {"version": CHECKPOINT_VERSION, "family": model.family,
            "config_type": type(config).__name__,
            "model_config": dataclasses.asdict(config),
            "train_config": dataclasses.asdict(TrainConfig(lmbda=lmbda)), "step": 0,
            "history": {}, "recipe": {"lmbda": lmbda}, "ema": model.state_dict()}
    save_checkpoint(folder / f"{name}.pt", ckpt, fp16=True)
    return codec.load_shipped(name)


@pytest.fixture
def models(tmp_path, monkeypatch):
    folder = tmp_path / "weights"
    monkeypatch.setattr(codec, "WEIGHTS_DIR", folder)
    return {"tiny-f": write_model(folder, "tiny-f", FACT, 100.0, 0),
            "tiny-h": write_model(folder, "tiny-h", HYPER, 400.0, 1),
            "tiny-q": write_model(folder, "tiny-q", HIER, 200.0, 2),
            "tiny-p": write_model(folder, "tiny-p", PRIOR, 300.0, 3)}


def photo(h, w, seed=0):
    """A smooth image with some texture (random noise codes to many bits)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([np.sin(xx / 7 + c) * np.cos(yy / 5 - c) for c in range(3)], -1)
    return np.clip(127 + 100 * base + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(
        np.uint8)


def reference(model, image):
    """The in-memory reconstruction: the eval forward's x_hat, as 8-bit pixels."""
    with torch.no_grad():
        return to_uint8(model(to_tensor01(image)[None]).x_hat[0].permute(1, 2, 0))


ODD = {  # name -> (Pillow image to save, suffix)
    "one_pixel": (Image.fromarray(photo(1, 1)), ".png"),
    "odd_65x33": (Image.fromarray(photo(33, 65)), ".png"),
    "gray": (Image.fromarray(photo(40, 50)[..., 0]), ".png"),
    "rgba": (Image.fromarray(np.dstack([photo(30, 20), np.full((30, 20), 128,
                                                               np.uint8)])), ".png"),
    "gray16": (Image.fromarray(photo(20, 70)[..., 1].astype(np.uint16) * 257),
               ".png"),
    "palette": (Image.fromarray(photo(48, 48)).convert("P"), ".png"),
    "photo_jpeg": (Image.fromarray(photo(64, 80)), ".jpg"),
}


@pytest.mark.parametrize("name", sorted(ODD))
@pytest.mark.parametrize("model_name", ["tiny-f", "tiny-h", "tiny-q", "tiny-p"])
def test_odd_images_round_trip_through_files(models, tmp_path, name, model_name,
                                             capsys):
    image, suffix = ODD[name]
    source = tmp_path / f"{name}{suffix}"
    image.save(source)
    assert main(["compress", str(source), "--model", model_name, "--out-dir",
                 str(tmp_path / "c")]) == 0
    assert main(["decompress", str(tmp_path / "c" / f"{name}.dvae"), "--out-dir",
                 str(tmp_path / "d")]) == 0
    with Image.open(tmp_path / "d" / f"{name}.png") as out:
        assert out.mode == "RGB" and out.size == image.size
        pixels = np.asarray(out)
    rgb = load_image(source)
    np.testing.assert_array_equal(pixels, reference(models[model_name], rgb))
    assert "bpp" in capsys.readouterr().out


def test_sixteen_bit_gray_is_scaled_not_clipped(tmp_path):
    wide = np.linspace(0, 65535, 16 * 16).reshape(16, 16).astype(np.uint16)
    Image.fromarray(wide).save(tmp_path / "g.png")
    rgb = load_image(tmp_path / "g.png")
    np.testing.assert_array_equal(rgb[..., 0], np.round(wide / 257).astype(np.uint8))
    assert rgb.max() == 255 and (rgb[..., 0] == rgb[..., 2]).all()


@pytest.mark.parametrize("model_name", ["tiny-f", "tiny-h"])
def test_decoded_latents_equal_encoded_ones(models, model_name):
    model, image = models[model_name], photo(70, 90, seed=3)
    encoded = codec.compress(image, model_name)
    _, streams = codec.bitstream.unpack(encoded.data)
    x = pad_to_multiple(to_tensor01(image)[None], model.stride)
    with torch.no_grad():
        y = model.g_a(x)
        z_hat = None
        if model.config.hyperprior:
            z = model.h_a(y)
            z_mean, z_scale = model.z_prior(z.shape)
            z_hat = quantize(z, z_mean)
            torch.testing.assert_close(
                decode_latents(streams[0], z_mean, z_scale, tuple(z.shape)), z_hat,
                rtol=0, atol=0)
        mean, scale = model.prior_parameters(y.shape, z_hat)
        y_hat = decode_latents(streams[-1], mean, scale, tuple(y.shape))
    torch.testing.assert_close(y_hat, quantize(y, mean), rtol=0, atol=0)


def test_file_bits_track_the_estimate(models):
    encoded = codec.compress(photo(256, 384, seed=5), "tiny-h")
    file_bits, est = 8 * len(encoded.data), encoded.estimated_bits
    header_bits = 8 * (len(encoded.data) - sum(
        codec.bitstream.unpack(encoded.data)[0].lengths))
    assert est > 1000
    # Each stream: 18-byte frame + the coder's overhead (< 1 %) + 4 bytes slack.
    assert est <= file_bits <= est * 1.01 + header_bits + 2 * 8 * (18 + 4)


def test_every_truncation_and_every_flip_is_an_error(models):
    data = codec.compress(photo(16, 16, seed=1), "tiny-f").data
    assert codec.decompress(data).shape == (16, 16, 3)
    for cut in range(len(data)):
        with pytest.raises(CodingError):
            codec.decompress(data[:cut])
    rng = np.random.default_rng(0)
    for pos in range(len(data)):
        bad = bytearray(data)
        bad[pos] ^= 1 << int(rng.integers(8))
        with pytest.raises(CodingError):
            codec.decompress(bytes(bad))


def test_random_bytes_foreign_files_and_other_models(models, tmp_path):
    rng = np.random.default_rng(1)
    for n in (1, 3, 10, 100, 5000):
        with pytest.raises(CodingError):
            codec.decompress(rng.integers(0, 256, n, dtype=np.uint8).tobytes())
    Image.fromarray(photo(8, 8)).save(tmp_path / "x.png")
    with pytest.raises(CodingError, match="not a .dvae file"):
        codec.decompress((tmp_path / "x.png").read_bytes())
    data = codec.compress(photo(32, 32), "tiny-f").data
    with pytest.raises(CodingError, match="other weights"):
        codec.decompress(data, model=models["tiny-h"])
    write_model(codec.WEIGHTS_DIR, "tiny-f", FACT, 100.0, seed=7)  # retrained
    with pytest.raises(CodingError, match="other weights"):
        codec.decompress(data)
    (codec.WEIGHTS_DIR / "tiny-f.pt").unlink()
    with pytest.raises(CodingError, match="does not ship"):
        codec.decompress(data)


def test_compress_needs_a_name_for_a_model_object(models):
    with pytest.raises(DVAEError, match="name"):
        codec.compress(photo(8, 8), models["tiny-f"])
    with pytest.raises(DVAEError, match="no shipped model named"):
        codec.compress(photo(8, 8), "nope")
    with pytest.raises(DataError, match="uint8"):
        codec.compress(np.zeros((8, 8)), "tiny-f")


def test_cli_reports_each_bad_input_on_one_line(models, tmp_path, capsys):
    good, corrupt = tmp_path / "good.png", tmp_path / "corrupt.png"
    Image.fromarray(photo(20, 20)).save(good)
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(50))
    out = tmp_path / "c"
    code = main(["compress", str(good), str(corrupt), str(tmp_path / "missing.png"),
                 "--model", "tiny-f", "--out-dir", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 2
    assert "corrupt.png" in err[0] and "missing.png" in err[1]
    assert (out / "good.dvae").is_file() and not (out / "corrupt.dvae").exists()

    assert main(["compress", str(good), "--model", "nope", "--out-dir", str(out)]) == 2
    assert "no shipped model named 'nope'" in capsys.readouterr().err

    (out / "cut.dvae").write_bytes((out / "good.dvae").read_bytes()[:30])
    (out / "empty.dvae").write_bytes(b"")
    code = main(["decompress", str(out / "good.dvae"), str(out / "cut.dvae"),
                 str(out / "empty.dvae"), "--out-dir", str(tmp_path / "d")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 2
    assert "cut.dvae: the file is truncated" in err[0] and "empty" in err[1]
    assert (tmp_path / "d" / "good.png").is_file()


def test_cli_refuses_two_inputs_with_one_output_name(models, tmp_path, capsys):
    for suffix in (".png", ".jpg"):
        Image.fromarray(photo(8, 8)).save(tmp_path / f"a{suffix}")
    code = main(["compress", str(tmp_path / "a.png"), str(tmp_path / "a.jpg"),
                 "--model", "tiny-f", "--out-dir", str(tmp_path)])
    assert code == 2 and "both be written" in capsys.readouterr().err


def test_dvae_evaluate_writes_kodak_rows_from_real_files(models, kodak, tmp_path,
                                                       monkeypatch, capsys):
    monkeypatch.setenv("DVAE_DATA", str(MIRROR))
    monkeypatch.setenv("DVAE_OFFLINE", "1")
    report = tmp_path / "r.json"
    assert main(["evaluate", "--model", "tiny-f", "--model", "tiny-h", "--limit", "2",
                 "--json", str(report)]) == 0
    data = json.loads(report.read_text())
    assert [m["model"] for m in data["models"]] == ["tiny-f", "tiny-h"]
    assert len(data["jpeg"]["bpp"]) == len(data["jpeg"]["psnr"]) >= 4
    assert data["bd_rate_percent"] == {}  # needs four models of one series
    for result in data["models"]:
        assert [r["image"] for r in result["images"]] == ["kodim01", "kodim02"]
        row = result["images"][0]
        encoded = codec.compress(kodak[0], result["model"])
        assert row["bytes"] == len(encoded.data)
        assert row["bpp"] == pytest.approx(8 * len(encoded.data) / (512 * 768))
        assert row["estimated_bpp"] < row["bpp"]
    assert "tiny-h:" in capsys.readouterr().err


# --- the shipped models ------------------------------------------------------


def test_dvae_models_lists_the_shipped_single_layer_models(capsys):
    assert main(["models"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    singles = [r for r in rows if r[1] == "single"]
    assert len(singles) >= 4
    lmbdas = [float(r[2]) for r in singles]
    assert lmbdas == sorted(lmbdas) and len(set(lmbdas)) == len(lmbdas)


@pytest.mark.parametrize("family", ["single", "hierarchical"])
def test_every_kodak_image_round_trips_through_the_commands(kodak, tmp_path, capsys,
                                                           family):
    """One shipped model per family, all 24 images: dvae compress, dvae
    decompress, and the PNG equals the in-memory reconstruction."""
    shipped = codec.shipped_models(family)
    if not shipped:
        pytest.skip(f"no shipped {family} model")
    name = shipped[min(1, len(shipped) - 1)].name
    model = codec.load_shipped(name)
    sources = []
    for i, image in enumerate(kodak):
        sources.append(tmp_path / f"kodim{i + 1:02d}.png")
        Image.fromarray(image).save(sources[-1])
    assert main(["compress", *map(str, sources), "--model", name, "--out-dir",
                 str(tmp_path / "c")]) == 0
    files = sorted((tmp_path / "c").glob("*.dvae"))
    assert len(files) == 24
    assert main(["decompress", *map(str, files), "--out-dir", str(tmp_path / "d")]) == 0
    capsys.readouterr()
    for source, image in zip(sources, kodak, strict=True):
        decoded = np.asarray(Image.open(tmp_path / "d" / f"{source.stem}.png"))
        np.testing.assert_array_equal(decoded, reference(model, image))


def test_progressive_decoding_through_the_command(models, tmp_path, capsys):
    """``dvae decompress --layers K`` writes the model's K-layer reconstruction:
    K = L is the full decode, K = 0 the prior-mean image (no stream read)."""
    source = tmp_path / "p.png"
    Image.fromarray(photo(40, 56, seed=3)).save(source)
    assert main(["compress", str(source), "--model", "tiny-q", "--out-dir",
                 str(tmp_path / "c")]) == 0
    data = (tmp_path / "c" / "p.dvae").read_bytes()
    model, layers = models["tiny-q"], HIER.num_layers
    strings = list(compressed_streams(data))
    outputs = []
    for k in range(layers + 1):
        assert main(["decompress", str(tmp_path / "c" / "p.dvae"), "--out-dir",
                     str(tmp_path / f"d{k}"), "--layers", str(k)]) == 0
        with Image.open(tmp_path / f"d{k}" / "p.png") as out:
            outputs.append(np.asarray(out))
        expected = to_uint8(model.decompress_progressive(strings, (40, 56), k)[0]
                            .permute(1, 2, 0))
        np.testing.assert_array_equal(outputs[-1], expected)
    np.testing.assert_array_equal(outputs[-1], codec.decompress(data))
    assert not np.array_equal(outputs[0], outputs[-1])  # the layers carry the image
    assert "first 0 latent layers" in capsys.readouterr().out


def compressed_streams(data):
    from dvae_tutorial import bitstream
    return bitstream.unpack(data)[1]


def test_progressive_decoding_refuses_single_layer_files_and_bad_k(models, tmp_path,
                                                                  capsys):
    source = tmp_path / "p.png"
    Image.fromarray(photo(32, 32)).save(source)
    for name in ("tiny-f", "tiny-q"):
        assert main(["compress", str(source), "--model", name, "--out-dir",
                     str(tmp_path / name)]) == 0
    capsys.readouterr()
    assert main(["decompress", str(tmp_path / "tiny-f" / "p.dvae"), "--out-dir",
                 str(tmp_path / "d"), "--layers", "1"]) == 2
    err = capsys.readouterr().err
    assert "progressive decoding needs a hierarchical model" in err
    assert len(err.strip().splitlines()) == 1
    assert main(["decompress", str(tmp_path / "tiny-q" / "p.dvae"), "--out-dir",
                 str(tmp_path / "d"), "--layers", str(HIER.num_layers + 1)]) == 2
    assert "k must be between 0 and 4" in capsys.readouterr().err


def test_hierarchical_files_decode_with_another_thread_count(kodak):
    """A shipped hierarchical model's files, written with 1 thread and read with
    2 (and the reverse), decode: the float64 prior snaps every scale to the same
    table entry. (The float32 synthesis may still move a pixel by 1.)"""
    shipped = codec.shipped_models("hierarchical")
    if not shipped:
        pytest.skip("no shipped hierarchical model")
    name = max(shipped, key=lambda i: codec.load_shipped(i.name).config.num_layers).name
    threads = torch.get_num_threads()
    try:
        for write, read in ((1, 2), (2, 1)):
            for image in kodak[:2]:
                torch.set_num_threads(write)
                data = codec.compress(image, name).data
                here = codec.decompress(data).astype(int)
                torch.set_num_threads(read)
                there = codec.decompress(data).astype(int)
                assert np.abs(here - there).max() <= 1
    finally:
        torch.set_num_threads(threads)
