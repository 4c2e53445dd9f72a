"""Tests of the class-balance and channel-histogram PNG charts."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgprep.config import NormalizeSettings
from imgprep.plots import plot_channel_histograms, plot_class_balance
from imgprep.stats import (
    ChannelHistogram,
    ZeroVarianceWarning,
    fit_normalization,
)

MIN_BYTES = 5_000


def check_png(path: Path, min_width: int = 400, min_height: int = 300) -> None:
    """Assert that ``path`` is a decodable PNG of at least the given size."""
    assert path.is_file()
    assert path.stat().st_size > MIN_BYTES
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.load()
        width, height = image.size
    assert width >= min_width
    assert height >= min_height


def test_class_balance_few_classes(tmp_path: Path) -> None:
    before = {
        "train": {"cat": 800, "dog": 120, "fox": 30},
        "val": {"cat": 100, "dog": 15, "fox": 4},
        "test": {"cat": 100, "dog": 15},
    }
    after = {"cat": 800, "dog": 800, "fox": 800}
    path = plot_class_balance(
        before, after, ["cat", "dog", "fox"], tmp_path / "balance.png", title="demo"
    )

    assert path == tmp_path / "balance.png"
    check_png(path)


def test_class_balance_one_class(tmp_path: Path) -> None:
    path = plot_class_balance(
        {"train": {"only": 10}}, None, ["only"], tmp_path / "a.png"
    )

    check_png(path)


def test_class_balance_fifty_classes(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    classes = [f"class_{index:02d}_{'long' * (index % 6)}" for index in range(50)]
    train = {name: int(rng.integers(1, 5000)) for name in classes}
    before = {
        "train": train,
        "val": {name: count // 8 for name, count in train.items()},
        "test": {name: count // 8 for name, count in train.items()},
    }
    after = {name: 5000 for name in classes}
    path = plot_class_balance(before, after, classes, tmp_path / "many.png")

    check_png(path, min_width=1200)


def test_class_balance_zero_count_and_linear_axis(tmp_path: Path) -> None:
    before = {"train": {"a": 30, "b": 20}, "val": {"a": 3}}
    for log_scale in (None, True, False):
        path = plot_class_balance(
            before, None, ["a", "b"], tmp_path / f"{log_scale}.png", log_scale=log_scale
        )
        check_png(path)


def test_class_balance_empty_split(tmp_path: Path) -> None:
    path = plot_class_balance(
        {"train": {"a": 0, "b": 0}}, {"a": 0, "b": 0}, ["a", "b"], tmp_path / "e.png"
    )

    check_png(path)


def test_class_balance_creates_parent_folder(tmp_path: Path) -> None:
    path = tmp_path / "reports" / "v1" / "balance.png"
    plot_class_balance({"train": {"a": 1}}, None, ["a"], path)

    check_png(path)


def test_class_balance_rejects_unknown_class(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"split 'val' counts classes \['bird'\]"):
        plot_class_balance(
            {"train": {"a": 1}, "val": {"bird": 1}}, None, ["a"], tmp_path / "x.png"
        )
    with pytest.raises(ValueError, match="classes is empty"):
        plot_class_balance({"train": {}}, None, [], tmp_path / "x.png")


@pytest.mark.parametrize("method", ["zscore", "robust", "minmax", "per_image_zscore"])
def test_channel_histograms_rgb(tmp_path: Path, method: str) -> None:
    rng = np.random.default_rng(1)
    pixels = np.clip(rng.normal(140, 50, (8, 32, 32, 3)), 0, 255).astype(np.uint8)
    histogram = ChannelHistogram.of(pixels)
    params = fit_normalization(histogram, NormalizeSettings(method=method))
    path = plot_channel_histograms(histogram, params, tmp_path / f"{method}.png")

    check_png(path)


def test_channel_histograms_gray_uint16(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    pixels = np.clip(rng.normal(30000, 9000, (4, 32, 32, 1)), 0, 65535)
    histogram = ChannelHistogram.of(pixels.astype(np.uint16))
    path = plot_channel_histograms(histogram, None, tmp_path / "gray.png")

    check_png(path, min_height=200)


def test_channel_histograms_zero_variance(tmp_path: Path) -> None:
    pixels = np.zeros((2, 8, 8, 3), dtype=np.uint8)
    pixels[..., 0] = np.arange(64, dtype=np.uint8).reshape(8, 8)
    histogram = ChannelHistogram.of(pixels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ZeroVarianceWarning)
        params = fit_normalization(histogram, NormalizeSettings())
    path = plot_channel_histograms(
        histogram, params, tmp_path / "zero.png", channel_names=["R", "G", "B"]
    )

    check_png(path)


def test_channel_histograms_empty(tmp_path: Path) -> None:
    path = plot_channel_histograms(ChannelHistogram(1), None, tmp_path / "empty.png")

    check_png(path, min_height=200)


def test_channel_histograms_rejects_mismatch(tmp_path: Path) -> None:
    histogram = ChannelHistogram.of(np.zeros((2, 2, 3), dtype=np.uint8) + 1)
    gray = ChannelHistogram.of(np.arange(4, dtype=np.uint8).reshape(2, 2, 1))
    params = fit_normalization(gray, NormalizeSettings())

    with pytest.raises(ValueError, match="2 names"):
        plot_channel_histograms(histogram, None, tmp_path / "x.png", ["R", "G"])
    with pytest.raises(ValueError, match="1 channels"):
        plot_channel_histograms(histogram, params, tmp_path / "x.png")


def test_plots_leave_no_pyplot_figures(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    plot_class_balance({"train": {"a": 1}}, None, ["a"], tmp_path / "a.png")
    plot_channel_histograms(ChannelHistogram(3), None, tmp_path / "b.png")

    assert plt.get_fignums() == before
