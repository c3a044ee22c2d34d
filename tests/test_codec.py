"""The codec and its commands: odd images, exact round trips, bad files, CLI.

Most tests use tiny random-init models written to a temporary weights folder
(fast, and independent of the shipped checkpoints); the last ones use the
shipped models on Kodak.
"""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
import time
from pathlib import Path

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


@pytest.mark.parametrize("family", ["single", "hierarchical"])
def test_files_decode_to_the_same_pixels_with_any_threads_and_onednn(kodak, family):
    """A shipped model's files, written with 1, 2 or 3 threads and oneDNN on
    or off, decode in every setting to the same pixels, bit for bit: the
    priors snap every scale to the same table entry (float64 prior for the
    hierarchical family), and the synthesis runs forward convolutions only
    with oneDNN pinned on (:func:`tiling.reproducible`; oneDNN's transposed
    convolution summed otherwise with 3 threads). The caller's settings are
    restored."""
    shipped = codec.shipped_models(family)
    if not shipped:
        pytest.skip(f"no shipped {family} model")
    name = shipped[-1].name
    threads, onednn = torch.get_num_threads(), torch.backends.mkldnn.enabled
    settings = [(1, True), (2, True), (3, True), (1, False), (4, False)]
    try:
        for image in (kodak[4][:256, :384], kodak[12][128:384]):
            decoded = []
            for write in ((1, True), (3, False)):
                torch.set_num_threads(write[0])
                torch.backends.mkldnn.enabled = write[1]
                data = codec.compress(image, name).data
                for read in settings:
                    torch.set_num_threads(read[0])
                    torch.backends.mkldnn.enabled = read[1]
                    decoded.append(codec.decompress(data))
                    assert torch.backends.mkldnn.enabled == read[1]
            for i in range(0, len(decoded), len(settings)):  # each file: one image
                assert all(np.array_equal(d, decoded[i])
                           for d in decoded[i:i + len(settings)])
    finally:
        torch.set_num_threads(threads)
        torch.backends.mkldnn.enabled = onednn


# --- hostile input: model names, headers, outputs ----------------------------

#: Names that must not reach a file: paths into, out of and beside the
#: weights folder (two of them load a checkpoint if joined into a path).
PATH_NAMES = ["narrow/single-845-narrow", "../weights/single-100", "..", "a\\b",
              str(codec.WEIGHTS_DIR / "single-100"), "m" * 300, "nope", ""]


def shipped_list() -> str:
    return f"(shipped: {', '.join(i.name for i in codec.shipped_models())})"


@pytest.mark.parametrize("name", PATH_NAMES)
def test_model_names_are_looked_up_never_joined_into_a_path(name):
    for call in (lambda: codec.load_shipped(name),
                 lambda: codec.compress(photo(8, 8), name)):
        with pytest.raises(DVAEError, match="no shipped model named") as info:
            call()
        message = str(info.value)
        assert shipped_list() in message
        assert "\n" not in message and len(message) < 400


def test_cli_model_must_be_a_shipped_name(tmp_path, capsys):
    Image.fromarray(photo(8, 8)).save(tmp_path / "a.png")
    for name in ("narrow/single-845-narrow", str(codec.WEIGHTS_DIR / "single-100")):
        assert main(["compress", str(tmp_path / "a.png"), "--model", name,
                     "--out-dir", str(tmp_path / "c")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "no shipped model named" in err[0]
        assert shipped_list() in err[0]
    assert not (tmp_path / "c").exists()


def test_a_header_cannot_name_a_checkpoint_path(tmp_path, capsys):
    """A file whose header names single-100 by a path (its weights, shapes and
    streams right) is refused: the name is not a shipped one."""
    model, image = codec.load_shipped("single-100"), photo(16, 16)
    for i, name in enumerate([str(codec.WEIGHTS_DIR / "single-100"),
                              "../weights/single-100"]):
        data = codec.compress(image, model, name=name, lmbda=100.0).data
        np.testing.assert_array_equal(codec.decompress(data, model=model),
                                      reference(model, image))  # a sound file
        with pytest.raises(CodingError, match="which this installation does not ship"):
            codec.decompress(data)
        (tmp_path / f"f{i}.dvae").write_bytes(data)
        assert main(["decompress", str(tmp_path / f"f{i}.dvae"), "--out-dir",
                     str(tmp_path / "d")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "does not ship" in err[0]
        assert ", ".join(i.name for i in codec.shipped_models()) in err[0]
    assert not (tmp_path / "d").exists()


def with_header(data: bytes, **fields) -> bytes:
    """``data`` with header fields replaced (header CRC recomputed)."""
    header, streams = codec.bitstream.unpack(data)
    return codec.bitstream.pack(dataclasses.replace(header, **fields), streams)


@pytest.mark.parametrize("lmbda", [float("nan"), float("inf"), float("-inf"), -1.0, 0.0,
                                   1e30, 100.5])
def test_header_lambda_must_be_the_models(models, tmp_path, capsys, lmbda):
    """Not finite, not positive, or not the shipped model's own λ: refused."""
    bad = with_header(codec.compress(photo(16, 16), "tiny-f").data, lmbda=lmbda)
    with pytest.raises(CodingError, match="λ"):
        codec.decompress(bad)
    (tmp_path / "bad.dvae").write_bytes(bad)
    assert main(["decompress", str(tmp_path / "bad.dvae"), "--out-dir",
                 str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.dvae: the header's λ" in err[0]
    assert not (tmp_path / "d" / "bad.png").exists()


def test_unrecorded_lambda_decodes_only_with_the_callers_model(models):
    """compress with a model object and no lmbda records λ = 0 ("not
    recorded", as evaluate_model does): the caller's model decodes it, the
    shipped name alone does not; a non-finite lmbda is refused when writing."""
    model, image = models["tiny-f"], photo(16, 16)
    data = codec.compress(image, model, name="tiny-f").data
    assert codec.bitstream.unpack(data)[0].lmbda == 0
    np.testing.assert_array_equal(codec.decompress(data, model=model),
                                  reference(model, image))
    with pytest.raises(CodingError, match="λ"):
        codec.decompress(data)
    with pytest.raises(CodingError, match="λ"):
        codec.decompress(with_header(data, lmbda=-1.0), model=model)
    for lmbda in (float("nan"), float("inf"), -1.0):
        with pytest.raises(DVAEError, match="lmbda must be finite"):
            codec.compress(image, model, name="tiny-f", lmbda=lmbda)


def test_header_family_must_be_the_models(models):
    data = codec.compress(photo(16, 16), "tiny-f").data
    with pytest.raises(CodingError, match="header says a hierarchical model"):
        codec.decompress(with_header(data, family="hierarchical"))


@pytest.mark.parametrize("size", [(16384, 16384), (1, 268435456)])
def test_crafted_huge_image_is_refused_before_decoding(tmp_path, capsys, monkeypatch,
                                                      size):
    """A header with single-100's weights and latent shapes for a 2^28-pixel
    image: everything consistent but the size, which is over the budget."""
    model = codec.load_shipped("single-100")
    shapes = tuple(tuple(s) for s in model.stream_shapes(size))
    header = codec.bitstream.Header("single", "single-100", 100.0,
                                    codec.fingerprint(model), *size, shapes, ())
    data = codec.bitstream.pack(header, [bytes(18)] * len(shapes))

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoding started")

    monkeypatch.setattr(type(model), "decompress", no_decoding)
    with pytest.raises(AssertionError, match="decoding started"):
        codec.decompress(data, max_pixels=2**28)  # only the budget stops it
    start = time.perf_counter()
    with pytest.raises(CodingError, match="over the pixel budget of 16,777,216"):
        codec.decompress(data)
    (tmp_path / "huge.dvae").write_bytes(data)
    assert main(["decompress", str(tmp_path / "huge.dvae"), "--out-dir",
                 str(tmp_path / "d")]) == 2
    assert time.perf_counter() - start < 10
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert (f"huge.dvae: the header's image size {size[1]}×{size[0]} = "
            "268,435,456 pixels is over the pixel budget") in err[0]


def test_a_header_announcing_too_many_stream_bytes_is_refused(models, tmp_path,
                                                             capsys):
    data = codec.compress(photo(16, 16), "tiny-f").data
    header, streams = codec.bitstream.unpack(data)
    padding = bytes(codec.MAX_BYTES_PER_PIXEL * 16 * 16 + codec.STREAM_SLACK_BYTES)
    big = codec.bitstream.pack(header, [streams[0] + padding])
    with pytest.raises(CodingError, match="announces .* bytes of streams, more than"):
        codec.decompress(big)
    (tmp_path / "big.dvae").write_bytes(big)
    (tmp_path / "long.dvae").write_bytes(data + b"\0")
    assert main(["decompress", str(tmp_path / "big.dvae"), str(tmp_path / "long.dvae"),
                 "--out-dir", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "big.dvae: the header announces" in err[0]
    assert "long.dvae: the file is longer than its header says" in err[1]


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="no /dev/zero")
def test_decompress_dev_zero_is_refused_at_its_magic(tmp_path):
    """In a child process limited to 4 GiB of address space: reading all of
    /dev/zero would end in a MemoryError traceback (or never)."""
    resource = pytest.importorskip("resource")

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (4 * 2**30, 4 * 2**30))

    run = subprocess.run([sys.executable, "-m", "dvae_tutorial.cli", "decompress",
                          "/dev/zero", "--out-dir", str(tmp_path / "d")],
                         capture_output=True, text=True, timeout=300, preexec_fn=cap)
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.splitlines() == ["dvae decompress: error: /dev/zero: not a .dvae "
                                       "file: it starts with b'\\x00\\x00\\x00\\x00', "
                                       "not b'DVAE'"]


def test_outputs_are_not_overwritten_without_force(models, tmp_path, capsys):
    """`compress d/photo.png --out-dir d` then `decompress d/photo.dvae --out-dir
    d`: the second would replace photo.png; only --force does that."""
    d, image = tmp_path / "d", photo(20, 24)
    d.mkdir()
    Image.fromarray(image).save(d / "photo.png")
    original = (d / "photo.png").read_bytes()
    compress = ["compress", str(d / "photo.png"), "--model", "tiny-f", "--out-dir",
                str(d)]
    assert main(compress) == 0
    written = (d / "photo.dvae").read_bytes()
    (d / "photo.dvae").write_bytes(b"keep")
    assert main(compress) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "photo.dvae exists; --force" in err[0]
    assert (d / "photo.dvae").read_bytes() == b"keep"
    assert main([*compress, "--force"]) == 0
    assert (d / "photo.dvae").read_bytes() == written

    decompress = ["decompress", str(d / "photo.dvae"), "--out-dir", str(d)]
    assert main(decompress) == 2
    assert "photo.png exists; --force" in capsys.readouterr().err
    assert (d / "photo.png").read_bytes() == original
    assert main([*decompress, "--force"]) == 0  # another file than the input: allowed
    with Image.open(d / "photo.png") as out:
        np.testing.assert_array_equal(np.asarray(out), reference(models["tiny-f"], image))
    assert sorted(p.name for p in d.iterdir()) == ["photo.dvae", "photo.png"]


def test_the_input_is_never_overwritten_even_with_force(models, tmp_path, capsys):
    data = codec.compress(photo(16, 16), "tiny-f").data
    (tmp_path / "x.png").write_bytes(data)  # a .dvae file named x.png
    Image.fromarray(photo(16, 16)).save(tmp_path / "y.dvae", format="PNG")
    png = (tmp_path / "y.dvae").read_bytes()
    (tmp_path / "link").symlink_to(tmp_path)
    for out in ("", "link"):
        assert main(["decompress", str(tmp_path / "x.png"), "--out-dir",
                     str(tmp_path / out), "--force"]) == 2
        assert main(["compress", str(tmp_path / "y.dvae"), "--model", "tiny-f",
                     "--out-dir", str(tmp_path / out), "--force"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 2 and all("is the input itself" in line for line in err)
    assert (tmp_path / "x.png").read_bytes() == data
    assert (tmp_path / "y.dvae").read_bytes() == png


def test_out_dir_naming_a_file_is_one_error(models, tmp_path, capsys):
    for name in ("a", "b"):
        Image.fromarray(photo(8, 8)).save(tmp_path / f"{name}.png")
    assert main(["compress", str(tmp_path / "a.png"), "--model", "tiny-f",
                 "--out-dir", str(tmp_path / "c")]) == 0
    (tmp_path / "file").write_text("not a folder")
    for args in (["compress", str(tmp_path / "a.png"), str(tmp_path / "b.png"),
                  "--model", "tiny-f"],
                 ["decompress", str(tmp_path / "c" / "a.dvae")]):
        capsys.readouterr()
        assert main([*args, "--out-dir", str(tmp_path / "file")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"dvae {args[0]}: error: --out-dir {tmp_path / 'file'} is a "
                       "file, not a folder"]
    assert (tmp_path / "file").read_text() == "not a folder"


def test_out_of_memory_on_one_file_does_not_stop_the_batch(models, tmp_path, capsys,
                                                          monkeypatch):
    Image.fromarray(photo(20, 20)).save(tmp_path / "a.png")
    Image.fromarray(photo(24, 24)).save(tmp_path / "b.png")
    real_compress, real_decompress = codec.compress, codec.decompress

    def compress(image, *args, **kwargs):
        if image.shape[0] == 20:
            raise MemoryError
        return real_compress(image, *args, **kwargs)

    monkeypatch.setattr(codec, "compress", compress)
    out = tmp_path / "c"
    assert main(["compress", str(tmp_path / "a.png"), str(tmp_path / "b.png"),
                 "--model", "tiny-f", "--out-dir", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "a.png: out of memory" in err[0]
    assert (out / "b.dvae").is_file() and not (out / "a.dvae").exists()

    (out / "c.dvae").write_bytes((out / "b.dvae").read_bytes())
    calls = []

    def decompress(data, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:  # torch's CPU allocator raises RuntimeError
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] "
                               "DefaultCPUAllocator: can't allocate memory")
        return real_decompress(data, *args, **kwargs)

    monkeypatch.setattr(codec, "decompress", decompress)
    assert main(["decompress", str(out / "b.dvae"), str(out / "c.dvae"), "--out-dir",
                 str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "b.dvae: out of memory" in err[0]
    assert (tmp_path / "d" / "c.png").is_file() and not (tmp_path / "d" / "b.png").exists()
    monkeypatch.setattr(codec, "decompress", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):  # other errors are bugs, not bad input
        codec.decompress_file(out / "c.dvae", tmp_path / "e")


def test_max_pixels_option(models, tmp_path, capsys):
    Image.fromarray(photo(20, 30)).save(tmp_path / "p.png")
    compress = ["compress", str(tmp_path / "p.png"), "--model", "tiny-f", "--out-dir",
                str(tmp_path / "c")]
    assert main([*compress, "--max-pixels", "599"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "30×20 = 600 pixels, over the limit of 599" in err[0]
    assert main([*compress, "--max-pixels", "600"]) == 0
    decompress = ["decompress", str(tmp_path / "c" / "p.dvae"), "--out-dir",
                  str(tmp_path / "d")]
    assert main([*decompress, "--max-pixels", "599"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and ("p.dvae: the header's image size 30×20 = 600 pixels is "
                              "over the pixel budget of 599") in err[0]
    assert main(decompress) == 0
    with pytest.raises(DataError, match="over the pixel budget of 599"):
        codec.compress(photo(20, 30), "tiny-f", max_pixels=599)
    with pytest.raises(SystemExit):
        main([*decompress, "--max-pixels", "0"])
    with pytest.raises(SystemExit):
        main(["decompress", "--help"])
    assert f"{codec.MAX_PIXELS:,}" in capsys.readouterr().out


def test_shipped_transforms_are_channels_last_with_the_same_weights_and_pixels():
    """Shipped models' transforms run channels-last (oneDNN's fast path); the
    fingerprint and the decoded pixels are those of the plain checkpoint."""
    from dvae_tutorial.checkpoints import load_model

    name = "single-100"
    shipped = codec.load_shipped(name)
    plain = load_model(codec.WEIGHTS_DIR / f"{name}.pt")
    for weight in (shipped.g_a[0].weight, shipped.g_s[0].weight):
        assert weight.is_contiguous(memory_format=torch.channels_last)
    assert not plain.g_s[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert codec.fingerprint(shipped) == codec.fingerprint(plain)
    data = codec.compress(photo(64, 96, seed=3), name).data
    assert np.array_equal(codec.decompress(data), codec.decompress(data, plain))


def test_a_header_that_reshapes_the_latent_is_refused(models):
    """A per-channel prior codes a reshaped latent of the same size with the
    same symbols, so a crafted header (CRC recomputed) that transposes the
    image's size would decode to a scrambled image; the stream's CRC covers
    the latent's shape (stream format 2), so it is refused (found by
    bench/fuzz.py's size_consistent edits)."""
    data = codec.compress(photo(64, 96), "tiny-f").data
    header, _ = codec.bitstream.unpack(data)
    model = codec.load_shipped("tiny-f")
    shapes = tuple(tuple(s) for s in model.stream_shapes((96, 64)))
    assert math.prod(shapes[0]) == math.prod(header.shapes[0]) and shapes != header.shapes
    with pytest.raises(CodingError, match="checksum"):
        codec.decompress(with_header(data, height=96, width=64, shapes=shapes))
