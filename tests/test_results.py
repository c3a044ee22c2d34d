"""Chapter 7's tables (dvae_tutorial.results): BD table, reproduction check,
the README's table generated from the committed measurement."""

import copy
import re
from pathlib import Path

import numpy as np
import pytest

from dvae_tutorial import results
from dvae_tutorial.errors import DVAEError
from dvae_tutorial.evaluation import bd_rate

README = Path(__file__).resolve().parents[1] / "README.md"


def _curve(bpp, psnr):
    return {"bpp": list(bpp), "psnr": list(psnr), "ms_ssim_db": [p / 3 for p in psnr]}


def _report(scale=0.5):
    """JPEG at bpp = exp((psnr - 20) / 5); a 'single' series needing ``scale``
    times JPEG's bits at every PSNR (BD-rate exactly 100·(scale − 1))."""
    psnr = np.linspace(26, 38, 6)
    jpeg = {**_curve(np.exp((psnr - 20) / 5), psnr), "quality": [10, 30, 50, 70, 90, 95]}
    models = []
    for i, p in enumerate(psnr[1:5]):
        rate = scale * np.exp((p - 20) / 5)
        models.append({"model": f"single-{100 * (i + 1)}", "bpp": rate, "psnr": p,
                       "ms_ssim_db": p / 3,
                       "images": [{"image": "a", "bytes": 1000 + i, "bpp": rate,
                                   "psnr": p}]})
    return {"dataset": "Toy (1 images)", "jpeg": jpeg, "codecs": {"jpeg": jpeg},
            "models": models,
            "bd_rate_per_image_percent": {"psnr": {"single": {"a": -40.0, "b": None}}}}


def test_bd_table_recovers_a_known_saving_and_sorts_best_first():
    rows = results.bd_table(_report(0.5))
    assert [r["name"] for r in rows] == ["single", "jpeg"]
    single = rows[0]
    assert single["vs_jpeg"] == pytest.approx(-50.0, abs=1e-6)
    assert single["ms_ssim_vs_jpeg"] == pytest.approx(-50.0, abs=1e-6)
    assert single["vs_single"] is None and rows[1]["vs_jpeg"] is None


def test_published_curves_are_scored_against_the_live_jpeg():
    report = _report(0.5)
    rows = {r["name"]: r for r in results.bd_table(report, published=True)}
    for key in results.PUBLISHED:
        ref = results.rd_curves(report, published=True)[key]
        want = None
        try:
            want = bd_rate(report["jpeg"]["bpp"], report["jpeg"]["psnr"],
                           ref["bpp"], ref["psnr"])
        except ValueError:
            pass
        assert rows[key]["vs_jpeg"] == (want if want is None else pytest.approx(want))
        assert rows[key]["psnr_on"] in ("8-bit", "float")
    assert rows["qres-vae"]["psnr_on"] == "float"


def test_markdown_and_readme_tables_carry_the_numbers():
    report = _report(0.5)
    text = results.markdown_bd_table(results.bd_table(report))
    assert "-50.0 %" in text and text.count("\n") == 3
    table = results.readme_table(report, report)
    assert "| single-layer (book) | -50.0 % | -50.0 % | -50.0 % | -50.0 % |" in table
    assert "Toy" in table.splitlines()[0]


def test_check_reproduced_passes_identical_and_names_a_drift():
    committed = _report()
    live = copy.deepcopy(committed)
    got = results.check_reproduced(live, committed)
    assert got == {"images": 4, "identical": 4, "max_bpp_rel": 0.0, "max_psnr_db": 0.0}
    live["models"][1]["images"][0]["psnr"] += 0.2
    with pytest.raises(DVAEError, match="single-200 on a"):
        results.check_reproduced(live, committed)
    live["models"] = [{"model": "other", "images": []}]
    with pytest.raises(DVAEError, match="share no"):
        results.check_reproduced(live, committed)


def test_per_image_gains_drop_missing_and_name_unknown():
    report = _report()
    assert results.per_image_gains(report, "single") == {"a": -40.0}
    with pytest.raises(DVAEError, match="no per-image BD-rates for 'webp'"):
        results.per_image_gains(report, "webp")


def test_unknown_or_broken_measurement_is_one_clear_error(tmp_path):
    with pytest.raises(DVAEError, match="no measurement 'nope'"):
        results.load_report("nope")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(DVAEError, match="is not a `dvae evaluate --json` report"):
        results.load_report(str(bad))


def test_training_pixels_sums_every_run():
    row = {"latent_crop": 16, "runs": [
        {"step": 10, "batch_size": 2, "patch_size": 64},
        {"step": 5, "batch_size": 4, "patch_size": None}]}
    assert results.training_pixels(row) == 10 * 2 * 64 ** 2 + 5 * 4 * 256 ** 2


@pytest.mark.skipif(not (results.MEASURED / "kodak.json").is_file(),
                    reason="no committed measurement yet")
def test_readme_results_table_is_generated_from_the_committed_measurement():
    """The README's table between its markers is exactly what the committed
    `dvae evaluate --json` reports give (chapter 7 renders the same)."""
    text = README.read_text()
    match = re.search(r"<!-- results-table -->\n(.*?)\n<!-- /results-table -->",
                      text, re.S)
    assert match, "README lacks the results-table markers"
    second = (results.load_report("bsds500_val")
              if (results.MEASURED / "bsds500_val.json").is_file() else None)
    assert match.group(1).strip() == results.readme_table(
        results.load_report("kodak"), second).strip()


@pytest.mark.skipif(not (results.MEASURED / "kodak.json").is_file(),
                    reason="no committed measurement yet")
def test_committed_bd_rates_match_the_table():
    """The report's own series BD-rates (written by `dvae evaluate`) and the
    table's (recomputed from its curves) agree."""
    report = results.load_report("kodak")
    rows = {r["name"]: r for r in results.bd_table(report)}
    checked = 0
    for series, row in report["bd_rate_percent"].items():
        if "vs_jpeg" in row:  # JPEG's own row has only vs_single
            assert rows[series]["vs_jpeg"] == pytest.approx(row["vs_jpeg"], abs=1e-9)
            checked += 1
        if "vs_single" in row and series != "single":
            assert rows[series]["vs_single"] == pytest.approx(row["vs_single"], abs=1e-9)
    assert checked >= 5  # single, hier3, hier12, webp, avif


def _two_image_report():
    jpeg = {"codec": "jpeg", "quality": [10, 50],
            "bpp": [0.3, 1.1], "psnr": [27.0, 33.0], "ms_ssim": [0.9, 0.97],
            "ms_ssim_db": [10.0, 15.2],
            "images": [{"image": "a", "bpp": [0.2, 1.0], "psnr": [26.0, 32.0],
                        "ms_ssim": [0.88, 0.96]},
                       {"image": "b", "bpp": [0.4, 1.2], "psnr": [28.0, 34.0],
                        "ms_ssim": [0.92, 0.98]}]}
    model = {"model": "single-845", "bpp": 0.5, "estimated_bpp": 0.5, "psnr": 31.0,
             "encode_s": 1.0, "decode_s": 1.0, "ms_ssim": 0.95, "ms_ssim_db": 13.0,
             "images": [{"image": "a", "bpp": 0.4, "estimated_bpp": 0.4, "psnr": 30.0,
                         "encode_s": 1.0, "decode_s": 1.0, "ms_ssim": 0.94},
                        {"image": "b", "bpp": 0.6, "estimated_bpp": 0.6, "psnr": 32.0,
                         "encode_s": 1.0, "decode_s": 1.0, "ms_ssim": 0.96}]}
    return {"dataset": "Toy (2 images, native size)",
            "images": [{"image": "a"}, {"image": "b"}], "jpeg": dict(jpeg),
            "codecs": {"jpeg": jpeg}, "models": [model], "bd_rate_percent": {}}


def test_subset_report_recomputes_every_mean_from_the_kept_images():
    out = results.subset_report(_two_image_report(), {"b.jpg"})
    model, jpeg = out["models"][0], out["codecs"]["jpeg"]
    assert out["dataset"] == "Toy (1 images)" and out["images"] == [{"image": "a"}]
    assert (model["bpp"], model["psnr"], model["ms_ssim"]) == (0.4, 30.0, 0.94)
    assert model["ms_ssim_db"] == pytest.approx(-10 * np.log10(0.06))
    assert jpeg["bpp"] == [0.2, 1.0] and out["jpeg"]["psnr"] == [26.0, 32.0]
    assert jpeg["ms_ssim"] == [0.88, 0.96] and "bd_rate_percent" not in out


def test_monitored_photos_are_the_ones_training_validated_on(tmp_path):
    """The names match the photos center_crops takes (same crops)."""
    import torch
    from PIL import Image

    from dvae_tutorial.images import load_image, to_tensor01
    from dvae_tutorial.training import center_crops

    rng = np.random.default_rng(0)
    for i in range(7):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(
            tmp_path / f"p{i}.png")
    names = results.monitored_photos(tmp_path, 3)
    assert names == ["p0.png", "p3.png", "p6.png"]
    crops = center_crops(tmp_path, 32, 3)
    for crop, name in zip(crops, names, strict=True):
        x = to_tensor01(load_image(tmp_path / name))
        assert torch.equal(crop, x[:, 4:36, 8:40])


def test_trim_codec_drops_the_high_qualities_everywhere():
    report = _two_image_report()
    out = results.trim_codec(report, "jpeg", max_quality=10)
    jpeg = out["codecs"]["jpeg"]
    assert jpeg["quality"] == [10] and jpeg["bpp"] == [0.3] and jpeg["ms_ssim"] == [0.9]
    assert [r["psnr"] for r in jpeg["images"]] == [[26.0], [28.0]]
    assert out["jpeg"]["psnr"] == [27.0] and "bd_rate_percent" not in out
    assert report["codecs"]["jpeg"]["quality"] == [10, 50]  # the input is untouched
