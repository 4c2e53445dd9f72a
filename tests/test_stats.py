"""Tests of exact channel histograms, normalization fitting and normalization."""

from __future__ import annotations

import json
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from imgprep.config import NormalizeSettings
from imgprep.stats import (
    ChannelHistogram,
    ChannelSummary,
    NormalizationParams,
    ZeroVarianceWarning,
    fit_normalization,
    normalize_pixels,
)

QS = (0.0, 0.5, 1.0, 12.345, 25.0, 50.0, 75.0, 99.0, 99.5, 100.0)
METHODS = ("minmax", "zscore", "robust", "per_image_minmax", "per_image_zscore")


def load_rgb(folder: Path) -> dict[str, np.ndarray]:
    """Load every PNG under ``folder`` as an RGB uint8 array, keyed by file name."""
    images = {}
    for path in sorted(folder.rglob("*.png")):
        with Image.open(path) as image:
            images[path.name] = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return images


def random_pixels(dtype: type, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    top = np.iinfo(dtype).max
    # A skewed distribution makes percentiles fall between distinct values.
    values = rng.gamma(2.0, top / 8, size=shape)
    return np.clip(values, 0, top).astype(dtype)


# --- histogram statistics against numpy ---------------------------------------


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_summary_matches_numpy(dtype: type) -> None:
    pixels = random_pixels(dtype, (9, 17, 23, 3))
    histogram = ChannelHistogram.of(pixels)
    summary = histogram.summary(QS)
    columns = pixels.reshape(-1, 3)
    reference = columns.astype(np.float64)

    assert histogram.dtype == np.dtype(dtype).name
    assert histogram.n_pixels == columns.shape[0]
    assert summary.n_pixels == columns.shape[0]
    assert summary.min == columns.min(axis=0).tolist()
    assert summary.max == columns.max(axis=0).tolist()
    np.testing.assert_allclose(summary.mean, reference.mean(axis=0), rtol=1e-9)
    np.testing.assert_allclose(summary.std, reference.std(axis=0), rtol=1e-9)
    for q in QS:
        expected = [float(np.percentile(columns[:, c], q)) for c in range(3)]
        assert summary.percentiles[format(q, "g")] == expected, q
    assert summary.zero_variance == [False, False, False]


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_summary_percentiles_match_numpy_small(dtype: type) -> None:
    # Few pixels make (n - 1) * q / 100 land between ranks with varied fractions.
    for n in range(1, 40):
        pixels = random_pixels(dtype, (1, n, 1, 1), seed=n)
        histogram = ChannelHistogram.of(pixels)
        for q in (*QS, 33.3, 66.6, 0.1, 99.9):
            expected = float(np.percentile(pixels.ravel(), q))
            got = histogram.summary([q]).percentiles[format(q, "g")][0]
            assert got == expected, (n, q)


def test_summary_default_percentile_keys() -> None:
    summary = ChannelHistogram.of(random_pixels(np.uint8, (4, 4, 1))).summary()

    assert list(summary.percentiles) == ["0.5", "1", "99", "99.5"]


def test_summary_empty_histogram_raises() -> None:
    with pytest.raises(ValueError, match="empty"):
        ChannelHistogram(3).summary()


def test_summary_rejects_percentile_out_of_range() -> None:
    histogram = ChannelHistogram.of(random_pixels(np.uint8, (4, 4, 1)))

    with pytest.raises(ValueError, match="101"):
        histogram.summary([101.0])


def test_summary_to_dict_is_json() -> None:
    summary = ChannelHistogram.of(random_pixels(np.uint16, (5, 5, 3))).summary()
    data = json.loads(json.dumps(summary.to_dict()))

    assert ChannelSummary.from_dict(data) == summary
    assert set(data) >= {"min", "max", "mean", "std", "percentiles", "n_pixels"}
    assert data["zero_variance"] == [False, False, False]


# --- merging and subtracting ----------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    pixels=hnp.arrays(
        dtype=st.sampled_from([np.uint8, np.uint16]),
        shape=hnp.array_shapes(min_dims=4, max_dims=4, min_side=1, max_side=6),
    ),
    cuts=st.lists(st.integers(min_value=0, max_value=6), max_size=4),
)
def test_histogram_chunks_sum_to_whole(pixels: np.ndarray, cuts: list[int]) -> None:
    whole = ChannelHistogram.of(pixels)
    bounds = sorted({min(cut, pixels.shape[0]) for cut in cuts} | {0, pixels.shape[0]})
    chunks = [pixels[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

    merged = ChannelHistogram(pixels.shape[-1], pixels.dtype.name)
    for chunk in chunks:
        merged += ChannelHistogram.of(chunk)
    added = ChannelHistogram(pixels.shape[-1], pixels.dtype.name)
    for chunk in chunks:
        added.add(chunk)

    assert merged == whole
    assert added == whole
    assert sum(ChannelHistogram.of(chunk) for chunk in chunks) == whole
    assert merged.summary(QS) == whole.summary(QS)


def test_subtract_undoes_add() -> None:
    first = random_pixels(np.uint8, (6, 8, 8, 3), seed=1)
    second = random_pixels(np.uint8, (4, 8, 8, 3), seed=2)
    both = ChannelHistogram.of(first) + ChannelHistogram.of(second)

    assert both - ChannelHistogram.of(second) == ChannelHistogram.of(first)
    both -= ChannelHistogram.of(first)
    assert both == ChannelHistogram.of(second)
    both -= ChannelHistogram.of(second)
    assert both == ChannelHistogram(3, "uint8")
    assert both.n_pixels == 0


def test_subtract_below_zero_raises() -> None:
    pixels = np.zeros((2, 2, 3), dtype=np.uint8)
    histogram = ChannelHistogram.of(pixels)
    other = pixels.copy()
    other[0, 0, 1] = 7
    before = histogram.counts.copy()

    with pytest.raises(ValueError, match=r"channel 1, bin 7"):
        histogram -= ChannelHistogram.of(other)
    np.testing.assert_array_equal(histogram.counts, before)


def test_add_operands_must_match() -> None:
    rgb = ChannelHistogram(3, "uint8")

    with pytest.raises(ValueError, match="uint16"):
        rgb + ChannelHistogram(3, "uint16")
    with pytest.raises(ValueError, match="1 uint8"):
        rgb + ChannelHistogram(1, "uint8")
    with pytest.raises(ValueError, match="dtype uint16"):
        rgb.add(np.zeros((2, 2, 3), dtype=np.uint16))
    with pytest.raises(ValueError, match="4 channels"):
        rgb.add(np.zeros((2, 2, 4), dtype=np.uint8))


def test_of_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="float32"):
        ChannelHistogram.of(np.zeros((2, 2, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"pixels\[\.\.\., None\]"):
        ChannelHistogram.of(np.zeros((4, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match="int8"):
        ChannelHistogram(3, "int8")


# --- hostile magnitudes -------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_saturated_pixels_do_not_overflow(dtype: type) -> None:
    top = np.iinfo(dtype).max
    # 2**24 pixels cross several bincount chunks.
    pixels = np.full((1, 4096, 4096, 1), top, dtype=dtype)
    summary = ChannelHistogram.of(pixels).summary()

    assert summary.n_pixels == 4096 * 4096
    assert summary.mean == [float(top)]
    assert summary.std == [0.0]
    assert summary.min == [top]
    assert summary.max == [top]
    assert summary.zero_variance == [True]
    assert summary.percentiles["99.5"] == [float(top)]


def test_huge_counts_exact_moments() -> None:
    counts = np.zeros((2, 65536), dtype=np.int64)
    counts[0, 0] = 10**12
    counts[0, 65535] = 10**12
    counts[1, 1] = 2 * 10**12 - 1
    counts[1, 65534] = 1
    histogram = ChannelHistogram.from_counts(counts)
    summary = histogram.summary([0.0, 50.0, 100.0])

    assert histogram.dtype == "uint16"
    assert histogram.n_pixels == 2 * 10**12
    assert summary.mean[0] == 32767.5
    assert summary.mean[1] == float(Fraction(2 * 10**12 - 1 + 65534, 2 * 10**12))
    assert summary.std[0] == 32767.5
    assert summary.percentiles["0"] == [0.0, 1.0]
    assert summary.percentiles["100"] == [65535.0, 65534.0]
    # The median of 10**12 zeros and 10**12 values 65535 interpolates halfway
    # between positions 10**12 - 1 and 10**12.
    assert summary.percentiles["50"][0] == 32767.5


def test_counts_beyond_int64_sum_exactly() -> None:
    big = 2**62
    counts = np.zeros((1, 65536), dtype=np.int64)
    counts[0, 65535] = big
    counts[0, 65534] = big
    histogram = ChannelHistogram.from_counts(counts)
    summary = histogram.summary()

    assert histogram.n_pixels == 2**63
    assert summary.mean == [65534.5]
    assert summary.std == [0.5]
    assert summary.min == [65534]
    assert summary.max == [65535]
    assert summary.percentiles["1"] == [65534.0]
    assert summary.percentiles["99.5"] == [65535.0]


def test_add_beyond_int64_raises() -> None:
    counts = np.zeros((1, 256), dtype=np.int64)
    counts[0, 3] = np.iinfo(np.int64).max
    histogram = ChannelHistogram.from_counts(counts)

    with pytest.raises(OverflowError, match="int64"):
        histogram.add(np.full((1, 1, 1), 3, dtype=np.uint8))


# --- serialization ------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["auto", "sparse", "base64_int64_le"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_to_dict_round_trip(dtype: type, encoding: str) -> None:
    histogram = ChannelHistogram.of(random_pixels(dtype, (3, 9, 9, 3)))
    histogram.counts[2, -1] = 10**15
    histogram.counts[:2, 0] += 10**15
    text = json.dumps(histogram.to_dict(encoding=encoding))
    restored = ChannelHistogram.from_dict(json.loads(text))

    assert restored == histogram
    assert restored.counts.dtype == np.int64


def test_from_dict_rejects_inconsistent_totals() -> None:
    data = ChannelHistogram.of(random_pixels(np.uint8, (4, 4, 2))).to_dict("sparse")
    data["counts"][1]["0"] = data["counts"][1].get("0", 0) + 1

    with pytest.raises(ValueError, match="different numbers of pixels"):
        ChannelHistogram.from_dict(data)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_save_load_round_trip(tmp_path: Path, dtype: type) -> None:
    histogram = ChannelHistogram.of(random_pixels(dtype, (2, 5, 5, 1)))
    path = histogram.save(tmp_path / "train_hist.npy")
    restored = ChannelHistogram.load(path)

    assert path == tmp_path / "train_hist.npy"
    assert restored == histogram
    assert restored.dtype == histogram.dtype


def test_load_rejects_wrong_bins(tmp_path: Path) -> None:
    path = tmp_path / "bad.npy"
    np.save(path, np.zeros((3, 100), dtype=np.int64))

    with pytest.raises(ValueError, match="100 bins"):
        ChannelHistogram.load(path)


# --- normalization ------------------------------------------------------------


def reference_normalize(pixels: np.ndarray, params: NormalizationParams) -> np.ndarray:
    """Compute the documented formula directly in float64."""
    values = pixels.astype(np.float64)
    if params.method == "per_image_minmax":
        low = values.min(axis=(-3, -2), keepdims=True)
        span = values.max(axis=(-3, -2), keepdims=True) - low
        return (values - low) / np.where(span == 0, 1.0, span)
    if params.method == "per_image_zscore":
        mean = values.mean(axis=(-3, -2), keepdims=True)
        std = values.std(axis=(-3, -2), keepdims=True)
        return (values - mean) / np.where(std == 0, 1.0, std)
    if params.clip_low is not None and params.clip_high is not None:
        values = np.clip(values, params.clip_low, params.clip_high)
    return (values - np.asarray(params.offset)) / np.asarray(params.scale)


@pytest.mark.parametrize("output_range", ["0_1", "-1_1"])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_normalize_matches_formula(dtype: type, method: str, output_range: str) -> None:
    pixels = random_pixels(dtype, (5, 12, 10, 3), seed=3)
    histogram = ChannelHistogram.of(pixels)
    config = NormalizeSettings(
        method=method, minmax_range=output_range, robust_percentiles=(2.0, 97.0)
    )
    params = fit_normalization(histogram, config)
    output = normalize_pixels(pixels, params)
    expected = reference_normalize(pixels, params)

    assert output.dtype == np.float32
    assert output.shape == pixels.shape
    np.testing.assert_allclose(output, expected, rtol=2e-7, atol=1e-6)
    single = normalize_pixels(pixels[0], params)
    assert single.shape == pixels[0].shape
    np.testing.assert_array_equal(single, output[0])


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_fitted_parameters_follow_definitions(dtype: type) -> None:
    pixels = random_pixels(dtype, (4, 9, 9, 3), seed=4)
    columns = pixels.reshape(-1, 3).astype(np.float64)
    low, high = columns.min(axis=0), columns.max(axis=0)
    histogram = ChannelHistogram.of(pixels)

    minmax = fit_normalization(histogram, NormalizeSettings(method="minmax"))
    np.testing.assert_array_equal(minmax.offset, low)
    np.testing.assert_array_equal(minmax.scale, high - low)
    symmetric = fit_normalization(
        histogram, NormalizeSettings(method="minmax", minmax_range="-1_1")
    )
    np.testing.assert_array_equal(symmetric.offset, (low + high) / 2)
    np.testing.assert_array_equal(symmetric.scale, (high - low) / 2)
    zscore = fit_normalization(histogram, NormalizeSettings(method="zscore"))
    np.testing.assert_allclose(zscore.offset, columns.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(zscore.scale, columns.std(axis=0), rtol=1e-12)
    robust = fit_normalization(
        histogram, NormalizeSettings(method="robust", robust_percentiles=(5.0, 95.0))
    )
    clip_low = np.percentile(columns, 5.0, axis=0)
    clip_high = np.percentile(columns, 95.0, axis=0)
    np.testing.assert_array_equal(robust.clip_low, clip_low)
    np.testing.assert_array_equal(robust.clip_high, clip_high)
    np.testing.assert_array_equal(robust.offset, clip_low)
    np.testing.assert_array_equal(robust.scale, clip_high - clip_low)
    assert zscore.max_value == np.iinfo(dtype).max
    assert zscore.fitted_on == "train"


def test_robust_output_is_clipped() -> None:
    pixels = random_pixels(np.uint8, (6, 16, 16, 3), seed=5)
    params = fit_normalization(
        ChannelHistogram.of(pixels), NormalizeSettings(method="robust")
    )
    output = normalize_pixels(pixels, params)

    assert float(output.min()) == 0.0
    assert float(output.max()) == 1.0


@pytest.mark.parametrize("method", METHODS)
def test_params_dict_round_trip(method: str) -> None:
    pixels = random_pixels(np.uint16, (2, 6, 6, 3), seed=6)
    params = fit_normalization(
        ChannelHistogram.of(pixels), NormalizeSettings(method=method), "train"
    )
    data = json.loads(json.dumps(params.to_dict()))

    assert NormalizationParams.from_dict(data) == params
    assert data["method"] == method
    assert data["max_value"] == 65535


def test_params_dict_has_zero_to_one_scale() -> None:
    pixels = random_pixels(np.uint8, (2, 6, 6, 3), seed=7)
    params = fit_normalization(
        ChannelHistogram.of(pixels), NormalizeSettings(method="zscore")
    )
    data = params.to_dict()
    mean_0_1 = [value / 255 for value in params.offset]
    std_0_1 = [value / 255 for value in params.scale]

    assert data["mean_0_1"] == mean_0_1
    assert data["std_0_1"] == std_0_1
    assert data["torchvision_normalize"] == {"mean": mean_0_1, "std": std_0_1}
    assert data["output_range"] == ""


def test_params_reject_zero_scale() -> None:
    with pytest.raises(ValueError, match="scale must be > 0"):
        NormalizationParams(
            method="zscore",
            max_value=255,
            offset=[1.0],
            scale=[0.0],
            zero_variance=[False],
        )


def test_normalize_rejects_other_dtype() -> None:
    params = fit_normalization(
        ChannelHistogram.of(random_pixels(np.uint8, (4, 4, 3))),
        NormalizeSettings(method="zscore"),
    )

    with pytest.raises(ValueError, match="pass uint8 pixels"):
        normalize_pixels(np.zeros((4, 4, 3), dtype=np.uint16), params)


# --- zero variance ------------------------------------------------------------


@pytest.mark.parametrize("method", ["minmax", "zscore", "robust"])
@pytest.mark.parametrize("output_range", ["0_1", "-1_1"])
def test_zero_variance_warns_once(method: str, output_range: str) -> None:
    pixels = random_pixels(np.uint8, (3, 8, 8, 3), seed=8)
    pixels[..., 1] = 0
    pixels[..., 2] = 200
    histogram = ChannelHistogram.of(pixels)
    config = NormalizeSettings(method=method, minmax_range=output_range)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        params = fit_normalization(histogram, config)
    zero_warnings = [w for w in caught if issubclass(w.category, ZeroVarianceWarning)]

    assert len(zero_warnings) == 1
    assert "channels 1, 2" in str(zero_warnings[0].message)
    assert params.zero_variance == [False, True, True]
    assert params.scale[1] == 1.0
    assert params.scale[2] == 1.0
    output = normalize_pixels(pixels, params)
    assert np.isfinite(output).all()
    assert np.all(output[..., 1] == 0.0)
    assert np.all(output[..., 2] == 0.0)
    other = np.full((4, 4, 3), 255, dtype=np.uint8)
    assert np.isfinite(normalize_pixels(other, params)).all()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_constant_images_give_finite_output(method: str, dtype: type) -> None:
    top = np.iinfo(dtype).max
    for value in (0, 1, top):
        pixels = np.full((2, 5, 5, 3), value, dtype=dtype)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ZeroVarianceWarning)
            params = fit_normalization(
                ChannelHistogram.of(pixels), NormalizeSettings(method=method)
            )
        output = normalize_pixels(pixels, params)

        assert params.zero_variance == [True, True, True]
        assert np.isfinite(output).all()
        assert np.all(output == 0.0)


@settings(max_examples=60, deadline=None)
@given(
    fit_pixels=hnp.arrays(
        np.uint8,
        st.tuples(st.integers(1, 3), st.integers(1, 5), st.integers(1, 5), st.just(2)),
    ),
    pixels=hnp.arrays(np.uint8, (2, 3, 3, 2)),
    method=st.sampled_from(METHODS),
    output_range=st.sampled_from(["0_1", "-1_1"]),
)
def test_normalize_never_returns_nan_or_inf(
    fit_pixels: np.ndarray, pixels: np.ndarray, method: str, output_range: str
) -> None:
    config = NormalizeSettings(method=method, minmax_range=output_range)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ZeroVarianceWarning)
        params = fit_normalization(ChannelHistogram.of(fit_pixels), config)

    assert np.isfinite(normalize_pixels(pixels, params)).all()
    assert np.isfinite(normalize_pixels(fit_pixels, params)).all()


# --- fixture datasets ---------------------------------------------------------


def test_zero_std_channel_dataset(cases_dir: Path) -> None:
    case = cases_dir / "C14-zero-std-channel"
    expected = json.loads((case / "expected.json").read_text(encoding="utf-8"))
    assert "no NaN/inf" in expected["dataset_stats"]
    images = load_rgb(case / "dataset")
    no_blue = np.stack(
        [pixels for name, pixels in images.items() if name != "flat_grey.png"]
    )
    flat = images["flat_grey.png"]
    assert no_blue.shape[0] == 4

    with pytest.warns(ZeroVarianceWarning, match="channel 2"):
        params = fit_normalization(ChannelHistogram.of(no_blue), NormalizeSettings())
    assert ChannelHistogram.of(no_blue).summary().std[2] == 0.0
    assert params.zero_variance == [False, False, True]
    assert np.isfinite(normalize_pixels(no_blue, params)).all()
    assert np.isfinite(normalize_pixels(flat, params)).all()

    everything = ChannelHistogram.of(no_blue) + ChannelHistogram.of(flat)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ZeroVarianceWarning)
        with_flat = fit_normalization(everything, NormalizeSettings())
    assert everything.summary().std[2] > 0.0
    assert with_flat.zero_variance == [False, False, False]
    assert np.isfinite(normalize_pixels(no_blue, with_flat)).all()

    for method in ("per_image_minmax", "per_image_zscore"):
        per_image = fit_normalization(everything, NormalizeSettings(method=method))
        flat_output = normalize_pixels(flat, per_image)
        assert np.isfinite(flat_output).all()
        assert np.all(flat_output == 0.0)
        assert np.isfinite(normalize_pixels(no_blue, per_image)).all()


def test_bright_uint8_statistics(cases_dir: Path) -> None:
    case = cases_dir / "C15-uint8-stats-overflow"
    expected = json.loads((case / "expected.json").read_text(encoding="utf-8"))
    tolerance = expected["tolerance"]
    images = load_rgb(case / "dataset")
    batch = np.stack(list(images.values()))
    histogram = sum(ChannelHistogram.of(pixels) for pixels in images.values())
    assert histogram == ChannelHistogram.of(batch)

    params = fit_normalization(histogram, NormalizeSettings(method="zscore"))
    data = params.to_dict()
    summary = histogram.summary()

    np.testing.assert_allclose(
        data["mean_0_1"], expected["per_channel_mean_0to1"], rtol=0, atol=tolerance
    )
    np.testing.assert_allclose(
        data["std_0_1"],
        expected["per_channel_std_0to1_population"],
        rtol=0,
        atol=tolerance,
    )
    assert summary.min == expected["per_channel_min_0to255"]
    assert summary.max == expected["per_channel_max_0to255"]
    reference = batch.reshape(-1, 3).astype(np.float64) / 255
    np.testing.assert_allclose(data["mean_0_1"], reference.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(data["std_0_1"], reference.std(axis=0), rtol=1e-12)
