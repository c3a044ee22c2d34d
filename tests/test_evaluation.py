"""Metrics, the JPEG baseline and the BD-rate: oracles and golden numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dvae_tutorial.evaluation import (
    bd_rate,
    jpeg_curve,
    jpeg_point,
    psnr_at_rate,
    rate_at_psnr,
)
from dvae_tutorial.metrics import bpp, mse_8bit, psnr_8bit, to_uint8


def test_psnr_matches_the_definition():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, size=(16, 24, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.choice([-3, 3], size=a.shape), 0, 255).astype(np.uint8)
    mse = np.mean((a.astype(float) - b) ** 2)
    assert mse_8bit(a, b) == pytest.approx(mse)
    assert psnr_8bit(a, b) == pytest.approx(10 * math.log10(255**2 / mse))
    assert psnr_8bit(a, a) == math.inf


def test_to_uint8_accepts_float_chw_and_clips():
    x = np.full((3, 2, 5), 0.5)
    x[0, 0, 0] = 1.7
    out = to_uint8(x)
    assert out.shape == (2, 5, 3) and out.dtype == np.uint8
    assert out[0, 0, 0] == 255 and out[1, 1, 1] == 128


def test_bpp_is_per_pixel():
    assert bpp(768 * 512 * 8, 512, 768) == 8.0


def test_bd_rate_of_a_constant_rate_ratio_is_that_ratio():
    psnr = np.array([26.0, 29.0, 32.0, 35.0, 38.0])
    rate = 0.05 * np.exp(0.17 * psnr) + 0.01 * psnr
    assert bd_rate(rate, psnr, 0.8 * rate, psnr) == pytest.approx(-20.0, abs=1e-9)
    assert bd_rate(rate, psnr, 1.25 * rate, psnr + 0.0) == pytest.approx(25.0, abs=1e-9)
    assert bd_rate(rate, psnr, rate, psnr) == pytest.approx(0.0, abs=1e-12)


def test_bd_rate_uses_only_the_overlapping_psnr_range():
    psnr = np.linspace(25, 40, 6)
    rate = np.exp(0.2 * psnr - 6)
    shifted = psnr + 1.0  # same curve, 1 dB better everywhere
    expected = (math.exp(-0.2) - 1) * 100  # log-rate linear in PSNR, slope 0.2
    assert bd_rate(rate, psnr, rate, shifted) == pytest.approx(expected, rel=1e-9)
    with pytest.raises(ValueError, match="share no PSNR range"):
        bd_rate(rate, psnr, rate, psnr + 30)
    with pytest.raises(ValueError, match="at least 4"):
        bd_rate(rate[:3], psnr[:3], rate, psnr)


def test_jpeg_point_counts_real_bytes_and_gets_better_with_quality():
    rng = np.random.default_rng(1)
    image = (rng.random((64, 96, 3)) * 255).astype(np.uint8)
    low, high = jpeg_point(image, 10), jpeg_point(image, 90)
    assert low.bpp == pytest.approx(8 * low.nbytes / (64 * 96))
    assert high.nbytes > low.nbytes and high.psnr > low.psnr


def test_jpeg_on_kodak_matches_the_numbers_measured_for_the_guide(kodak):
    # Golden numbers measured independently on this project's machines (GUIDE
    # section 7): Pillow defaults (4:2:0), mean over the 24 Kodak images.
    curve = jpeg_curve(kodak, qualities=(5, 20, 60, 90))
    assert curve["bpp"] == pytest.approx([0.221, 0.508, 1.037, 2.346], abs=6e-4)
    assert curve["psnr"] == pytest.approx([23.85, 29.14, 32.91, 38.03], abs=6e-3)


def test_rate_at_psnr_interpolates_log_rate_and_refuses_to_extrapolate():
    # a curve that doubles its rate per 6 dB: log-rate is linear in PSNR, so
    # the interpolation is exact between points
    psnrs = [36.0, 24.0, 30.0]  # unsorted on purpose
    rates = [0.25 * 2 ** ((p - 24) / 6) for p in psnrs]
    assert rate_at_psnr(rates, psnrs, 27.0) == pytest.approx(0.25 * 2 ** 0.5)
    assert rate_at_psnr(rates, psnrs, 36.0) == pytest.approx(1.0)
    assert rate_at_psnr(rates, psnrs, 23.9) is None
    assert rate_at_psnr(rates, psnrs, 36.1) is None


def test_psnr_at_rate_is_linear_between_points():
    rates, psnrs = [1.0, 0.5, 0.25], [36.0, 30.0, 24.0]
    assert psnr_at_rate(rates, psnrs, 0.75) == pytest.approx(33.0)
    assert psnr_at_rate(rates, psnrs, 0.2) is None
    assert psnr_at_rate(rates, psnrs, 1.5) is None


def test_model_series_drops_the_lambda_suffix():
    from dvae_tutorial.evaluation import model_series

    assert model_series("hier12-845") == "hier12"
    assert model_series("single-2.5e3") == "single"
    assert model_series("single-845-narrow") == "single-845-narrow"
    assert model_series("tiny") == "tiny" and model_series("-5") == "-5"


def test_series_bd_rates_oracle_a_constant_rate_ratio():
    """Same PSNRs at 0.8× (and 0.7×) the rates: BD-rate −20 % (−30 %) exactly,
    since the curves are the same shape shifted in log-rate."""
    from dvae_tutorial.evaluation import series_bd_rates

    psnr = [26.0, 29.0, 32.0, 35.0]
    rates = [0.15, 0.35, 0.7, 1.25]

    def rows(name, factor, n=4):
        return [{"model": f"{name}-{i}", "bpp": r * factor, "psnr": p}
                for i, (r, p) in enumerate(zip(rates[:n], psnr[:n], strict=True))]

    jpeg = {"bpp": [r * 1.25 for r in rates], "psnr": psnr}
    table = series_bd_rates(rows("single", 1.0) + rows("hier12", 0.7)
                            + rows("hier3", 0.8) + rows("tiny", 0.5, n=3), jpeg)
    assert set(table) == {"single", "hier12", "hier3"}  # tiny: only 3 points
    assert table["single"] == {"vs_jpeg": pytest.approx(-20.0)}
    assert table["hier3"] == {"vs_jpeg": pytest.approx(-36.0),
                              "vs_single": pytest.approx(-20.0)}
    assert table["hier12"] == {"vs_jpeg": pytest.approx(-44.0),
                               "vs_single": pytest.approx(-30.0),
                               "vs_hier3": pytest.approx(-12.5)}


def test_series_bd_rates_on_ms_ssim_db_with_codec_rows():
    """The same oracle on the MS-SSIM (dB) axis, and the classical codecs'
    rows: WebP at 0.9× JPEG's rates is −10 % vs JPEG; JPEG and WebP against
    the single-layer series follow from the ratios."""
    from dvae_tutorial.evaluation import series_bd_rates

    db = [10.0, 12.0, 14.0, 16.0]
    rates = [0.15, 0.35, 0.7, 1.25]
    rows = [{"model": f"single-{i}", "bpp": r * 0.8, "psnr": 30.0 + i,
             "ms_ssim_db": q} for i, (r, q) in enumerate(zip(rates, db, strict=True))]
    jpeg = {"bpp": rates, "psnr": [29.0, 31.0, 33.0, 35.0], "ms_ssim_db": db}
    webp = {"bpp": [r * 0.9 for r in rates], "ms_ssim_db": db, "psnr": jpeg["psnr"]}
    table = series_bd_rates(rows, jpeg, "ms_ssim_db", {"jpeg": jpeg, "webp": webp})
    assert table["single"] == {"vs_jpeg": pytest.approx(-20.0)}
    assert table["webp"] == {"vs_jpeg": pytest.approx(-10.0),
                             "vs_single": pytest.approx(12.5)}
    assert table["jpeg"] == {"vs_single": pytest.approx(25.0)}
    # a curve without the metric (MS-SSIM not measured) has no row
    assert series_bd_rates(rows, {"bpp": rates, "psnr": jpeg["psnr"]},
                           "ms_ssim_db") == {}


def test_series_bd_rates_is_none_where_curves_do_not_overlap():
    from dvae_tutorial.evaluation import series_bd_rates

    rates = [0.15, 0.35, 0.7, 1.25]
    rows = [{"model": f"single-{i}", "bpp": r, "psnr": 40.0 + 2 * i}
            for i, r in enumerate(rates)]
    jpeg = {"bpp": rates, "psnr": [26.0, 28.0, 30.0, 32.0]}
    assert series_bd_rates(rows, jpeg) == {"single": {"vs_jpeg": None}}


def test_per_image_bd_rates_compare_each_images_own_curves():
    """Image A's model curve is at 0.5× its JPEG rates, image B's at 0.8×:
    −50 % and −20 % (oracle: constant ratios), one entry per image."""
    from dvae_tutorial.evaluation import per_image_bd_rates

    psnr = [26.0, 29.0, 32.0, 35.0]
    rates = {"A": [0.2, 0.4, 0.8, 1.6], "B": [0.1, 0.3, 0.6, 1.0]}
    factor = {"A": 0.5, "B": 0.8}
    results = [{"model": f"single-{j}", "images": [
        {"image": name, "bpp": rates[name][j] * factor[name], "psnr": psnr[j]}
        for name in rates]} for j in range(4)]
    jpeg = {"images": [{"image": name, "bpp": r, "psnr": psnr} for name, r in rates.items()]}
    webp = {"images": [{"image": name, "bpp": [x * 0.9 for x in r], "psnr": psnr}
                       for name, r in rates.items()]}
    table = per_image_bd_rates(results, jpeg, "psnr", {"jpeg": jpeg, "webp": webp})
    assert table["single"] == {"A": pytest.approx(-50.0), "B": pytest.approx(-20.0)}
    assert table["webp"] == {"A": pytest.approx(-10.0), "B": pytest.approx(-10.0)}
    assert set(table) == {"single", "webp"}  # JPEG is the reference, not a row


def test_codec_curve_keeps_jpeg_numbers_and_per_image_rows():
    from dvae_tutorial.evaluation import codec_curve

    rng = np.random.default_rng(2)
    images = [(rng.random((40, 56, 3)) * 255).astype(np.uint8) for _ in range(2)]
    curve = codec_curve("jpeg", images, qualities=(10, 50, 90), ms_ssim=False)
    assert curve["bpp"] == jpeg_curve(images, (10, 50, 90))["bpp"]
    assert curve["psnr"] == jpeg_curve(images, (10, 50, 90))["psnr"]
    assert [row["image"] for row in curve["images"]] == ["image00", "image01"]
    assert curve["images"][1]["bytes"] == [jpeg_point(images[1], q).nbytes
                                           for q in (10, 50, 90)]
    assert curve["ms_ssim"] == [None] * 3 and curve["ms_ssim_images"] == 0
