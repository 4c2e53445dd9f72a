"""Hostile and odd inputs through the prepare flow, checked where users see them.

Each test runs the real flow on small files (or reads real Parquet files) and checks
the manifest, the version's sources table and the reader. Decode-level checks of the
same files live in test_decode.py, test_stats.py and test_resampling.py.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageFile, PngImagePlugin

import imgprep
from imgprep.config import PrepareConfig
from imgprep.errors import ConfigError, SchemaMismatchError
from imgprep.shards import (
    check_schema,
    pixels_from_column,
    read_shard,
    schema_description,
)
from imgprep.store import Store
from imgprep.version import load_manifest, read_object_table
from tests.helpers import make_config, read_manifest, run_flow

pytestmark = pytest.mark.usefixtures("cases_dir")

TRAIN_ONLY = {"fractions": {"train": 1.0, "val": 0.0, "test": 0.0}}


class Prepared:
    """A finished flow run: its config, manifest, sources table and reader."""

    def __init__(self, config: PrepareConfig, store: Path) -> None:
        self.config = config
        self.store = store
        self.manifest = read_manifest(store)
        handle = Store(store)
        rows = read_object_table(handle, load_manifest(handle), "sources")
        self.sources = {row["key"]: row for row in rows}
        self.version = imgprep.open_version(store)

    def pixels_by_key(self, split: str = "train") -> dict[str, np.ndarray]:
        """Return the stored raw pixels of ``split`` keyed by source path."""
        batch = self.version.load(split, resampled=False)
        key_of = {
            row["sample_id"]: key
            for key, row in self.sources.items()
            if row["status"] == "ingested"
        }
        return {
            key_of[sample_id]: pixels
            for sample_id, pixels in zip(batch.sample_ids, batch.pixels, strict=True)
        }


def prepare(root: Path, store: Path, **sections: Any) -> Prepared:
    """Run the flow with the thread runner and return what it wrote."""
    sections.setdefault("runner", {"type": "thread", "workers": 2})
    sections.setdefault("split", TRAIN_ONLY)
    config = make_config(root, store, **sections)
    run_flow(config)
    return Prepared(config, store)


def copy_into_class(files: list[Path], root: Path, label: str = "x") -> Path:
    """Copy ``files`` into ``root/label/`` and return ``root``."""
    folder = root / label
    folder.mkdir(parents=True)
    for path in files:
        shutil.copyfile(path, folder / path.name)
    return root


def with_jpeg_comment(data: bytes, text: str) -> bytes:
    """Return JPEG bytes with a COM segment after SOI, leaving the pixels unchanged."""
    assert data[:2] == b"\xff\xd8", "not a JPEG"
    payload = text.encode()
    return (
        data[:2]
        + b"\xff\xfe"
        + struct.pack(">H", len(payload) + 2)
        + payload
        + data[2:]
    )


def with_png_text(path: Path, target: Path, text: str) -> None:
    """Write ``path`` again as PNG with a tEXt chunk, leaving the pixels unchanged."""
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", text)
    with Image.open(path) as image:
        image.save(target, pnginfo=info)


def status_and_reason(row: dict[str, Any]) -> tuple[str, str | None]:
    return row["status"], row["reason"]


# ---------------------------------------------------------------------------
# EXIF orientation


@pytest.mark.usefixtures("prefect_harness")
def test_orientation_stored_upright(cases_dir: Path, tmp_path: Path):
    folder = cases_dir / "C01-exif-orientation"
    expected = json.loads((folder / "expected.json").read_text())
    root = copy_into_class(sorted(folder.glob("*.jpg")), tmp_path / "root")
    # 40 x 80 is the upright size, so the stored pixels are not resized.
    run = prepare(root, tmp_path / "store", image={"width": 40, "height": 80})
    pixels = run.pixels_by_key()
    reference = pixels["x/orientation_1.jpg"].astype(int)
    for name, facts in expected.items():
        key = f"x/{name}"
        row = run.sources[key]
        orientation = int(name.removeprefix("orientation_").removesuffix(".jpg"))
        assert row["status"] == "ingested", row
        assert row["orientation"] == orientation, name
        assert ("exif_transpose" in row["conversions"]) == (orientation != 1), name
        stored_wh = [row["source_width"], row["source_height"]]
        assert stored_wh == facts["stored_size_wh"], name
        assert "resize" not in row["conversions"], name

        image = pixels[key].astype(int)
        assert image.shape == (80, 40, 3), name
        top_left = image[2:18, 2:8].reshape(-1, 3).mean(axis=0)
        red = facts["upright_top_left_rgb_approx"]
        assert np.abs(top_left - red).max() < 16, f"{name}: top-left is {top_left}"
        difference = np.abs(image - reference).mean()
        assert difference < 4, f"{name}: differs from upright by {difference:.1f}"


# ---------------------------------------------------------------------------
# Corrupt, truncated and empty files


@pytest.mark.usefixtures("prefect_harness")
def test_corrupt_files_quarantined(cases_dir: Path, tmp_path: Path):
    folder = cases_dir / "C02-corrupt-files"
    files = sorted(p for p in folder.iterdir() if p.name != "expected.json")
    root = copy_into_class(files, tmp_path / "root")
    run = prepare(root, tmp_path / "store", ingest={"max_rejected_fraction": 1.0})
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    expected = {
        "x/empty.jpg": "empty",
        "x/png_half.png": "truncated",
        "x/text_named_jpg.jpg": "not_an_image",
        "x/truncated_60pct.jpg": "truncated",
    }
    source = run.manifest["source"]
    listed = {item["path"]: item for item in source["quarantine"]}
    assert {path: item["reason"] for path, item in listed.items()} == expected
    for path, item in listed.items():
        assert item["message"], f"{path} has no message"
    assert source["quarantined_by_reason"] == {
        "empty": 1,
        "not_an_image": 1,
        "truncated": 2,
    }
    assert source["rejected_fraction"] == pytest.approx(4 / 6)
    assert status_and_reason(run.sources["x/ok.jpg"]) == ("ingested", None)

    # The PNG without IEND has complete pixel rows, so it is kept with a warning.
    row = run.sources["x/png_missing_iend.png"]
    assert row["status"] == "ingested", row
    assert row["warnings"] == ["missing_iend"]
    with Image.open(folder / "png_missing_iend.png") as image:
        image.load()
        decoded = image.convert("RGB").resize((64, 64), Image.Resampling.BILINEAR)
    stored = run.pixels_by_key()["x/png_missing_iend.png"]
    assert np.array_equal(stored, np.asarray(decoded))


# ---------------------------------------------------------------------------
# Hidden, system and non-image files


@pytest.mark.usefixtures("prefect_harness")
def test_junk_files_skipped_with_reason(cases_dir: Path, tmp_path: Path):
    case = cases_dir / "C03-hidden-junk-files"
    expected = json.loads((case / "expected.json").read_text())
    run = prepare(case / "dataset", tmp_path / "store")

    assert run.manifest["classes"] == expected["classes"]
    assert run.manifest["source"]["empty_classes"] == ["empty_class"]
    assert "empty_class" not in run.manifest["counts"]["before"]["train"]
    assert run.manifest["counts"]["before"]["train"] == expected["images"]

    skipped = {item["path"]: item for item in run.manifest["source"]["skipped_files"]}
    for entry in expected["skipped_with_reason"]:
        path = entry.replace(" (hidden dir)", "")
        assert path in skipped, f"{path} not listed; skipped: {sorted(skipped)}"
        assert skipped[path]["reason"], path
        assert skipped[path]["message"], path
    assert skipped[".ipynb_checkpoints/"]["reason"] == "hidden"
    assert skipped["dog/Thumbs.db"]["reason"] == "system_file"
    assert skipped["cat/._cat_0.jpg"]["reason"] == "hidden"
    assert skipped["README.txt"]["reason"] == "no_class_folder"
    ingested = {key for key, row in run.sources.items() if row["status"] == "ingested"}
    assert ingested == {
        "cat/cat_0.jpg",
        "cat/cat_1.jpg",
        "cat/cat_2.jpg",
        "dog/dog_0.jpg",
        "dog/dog_1.jpg",
    }
    # The five images share their bytes: kept by default, listed as one group whose
    # labels conflict.
    groups = run.manifest["source"]["duplicate_groups"]
    assert len(groups) == 1
    assert groups[0]["labels"] == ["cat", "dog"]
    assert len(groups[0]["keys"]) == 5
    assert run.manifest["source"]["conflicting_duplicate_groups"] == 1


@pytest.mark.usefixtures("prefect_harness")
def test_duplicate_policy_drop_quarantines_conflicts(cases_dir: Path, tmp_path: Path):
    case = cases_dir / "C03-hidden-junk-files"
    root = tmp_path / "root"
    shutil.copytree(case / "dataset", root)
    # Give dog_0 bytes of its own and remove dog_1, so the three cats form a group
    # of identical files without a label conflict.
    (root / "dog" / "dog_0.jpg").write_bytes(
        with_jpeg_comment((root / "dog" / "dog_0.jpg").read_bytes(), "unique")
    )
    (root / "dog" / "dog_1.jpg").unlink()
    run = prepare(
        root,
        tmp_path / "store",
        ingest={"duplicates": "drop", "max_rejected_fraction": 1.0},
    )
    statuses = {key: row["status"] for key, row in run.sources.items()}
    assert statuses["cat/cat_0.jpg"] == "ingested"
    assert statuses["cat/cat_1.jpg"] == "duplicate"
    assert statuses["cat/cat_2.jpg"] == "duplicate"
    assert statuses["dog/dog_0.jpg"] == "ingested"
    assert (
        run.manifest["counts"]["totals_before"]["train"]
        + run.manifest["counts"]["totals_before"]["val"]
        + run.manifest["counts"]["totals_before"]["test"]
        == 2
    )


@pytest.mark.usefixtures("prefect_harness")
def test_duplicate_policy_drop_conflicting_labels(tmp_path: Path):
    root = tmp_path / "root"
    rng = np.random.default_rng(3)
    for name, folder in (
        ("shared", "cat"),
        ("shared", "dog"),
        ("b", "cat"),
        ("c", "dog"),
    ):
        (root / folder).mkdir(parents=True, exist_ok=True)
        seed = 0 if name == "shared" else int(rng.integers(1, 1000))
        pixels = np.random.default_rng(seed).integers(0, 256, (8, 8), dtype=np.uint8)
        Image.fromarray(pixels).save(root / folder / f"{name}.png")
    run = prepare(
        root,
        tmp_path / "store",
        ingest={"duplicates": "drop", "max_rejected_fraction": 1.0},
        split={"fractions": {"train": 1.0, "val": 0.0, "test": 0.0}},
    )
    for key in ("cat/shared.png", "dog/shared.png"):
        assert run.sources[key]["status"] == "quarantined", key
        assert run.sources[key]["reason"] == "conflicting_label", key
    assert run.sources["cat/b.png"]["status"] == "ingested"
    assert run.sources["dog/c.png"]["status"] == "ingested"


# ---------------------------------------------------------------------------
# Extension case and files without an extension


@pytest.mark.usefixtures("prefect_harness")
def test_extension_case_format_from_content(cases_dir: Path, tmp_path: Path):
    case = cases_dir / "C04-extension-case"
    expected = json.loads((case / "expected.json").read_text())
    run = prepare(case / "dataset", tmp_path / "store")
    found = {key.removeprefix("leaf/"): row for key, row in run.sources.items()}
    stored_ids = set(run.version.load("train", resampled=False).sample_ids)
    for name in [*expected["found"], "no_extension"]:
        row = found[name]
        # Files with the same bytes are one sample, so some are duplicates.
        assert row["status"] in ("ingested", "duplicate"), row
        assert row["sample_id"] in stored_ids, name
    for name, real in expected["real_format"].items():
        assert found[name]["format"] == real, name
    assert found["no_extension"]["format"] == "PNG"
    assert found["IMG_0001.JPG"]["format"] == "JPEG"
    assert found["photo.Jpeg"]["format"] == "JPEG"
    assert run.manifest["config_resolved"]["source"]["extensionless"] == "sniff"
    assert run.manifest["source"]["skipped"] == 0, run.manifest["source"][
        "skipped_files"
    ]


@pytest.mark.usefixtures("prefect_harness")
def test_extensionless_skipped_when_asked(cases_dir: Path, tmp_path: Path):
    case = cases_dir / "C04-extension-case"
    run = prepare(
        case / "dataset", tmp_path / "store", source={"extensionless": "skip"}
    )
    row = run.sources["leaf/no_extension"]
    assert status_and_reason(row) == ("skipped", "no_extension")
    assert "source.extensionless" in row["message"]
    assert run.sources["leaf/really_png.jpg"]["format"] == "PNG"
    assert run.manifest["source"]["skipped_by_reason"]["no_extension"] == 1


# ---------------------------------------------------------------------------
# 16-bit gray, transparency and palettes, mixed modes


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize("rule", ["shift", "rescale"])
def test_sixteen_bit_rule_recorded(cases_dir: Path, tmp_path: Path, rule: str):
    folder = cases_dir / "C05-16bit-gray"
    files = sorted(p for p in folder.iterdir() if p.suffix in (".png", ".tif"))
    run = prepare(
        copy_into_class(files, tmp_path / "root"),
        tmp_path / "store",
        # 256 x 32 is the ramps' own size, so each column keeps its level.
        image={"width": 256, "height": 32, "color_mode": "L", "sixteen_bit": rule},
    )
    assert run.manifest["config_resolved"]["image"]["sixteen_bit"] == rule
    for path in files:
        row = run.sources[f"x/{path.name}"]
        assert row["status"] == "ingested", row
        assert (row["mode"], row["bit_depth"]) == ("I;16", 16), path.name
        assert f"sixteen_bit_{rule}" in row["conversions"], row["conversions"]
    pixels = run.pixels_by_key()
    ramp_png = pixels["x/gray16_full_ramp.png"]
    ramp_tif = pixels["x/gray16_full_ramp.tif"]
    assert np.array_equal(ramp_png, ramp_tif), "PNG and TIFF ramps differ"
    assert (ramp_png.min(), ramp_png.max()) == (0, 255)
    assert len(np.unique(ramp_png)) == 256, "the ramp lost levels"
    twelve = pixels["x/gray16_12bit_values.png"]
    assert twelve.max() > 0, "12-bit data came out all black"
    assert twelve.mean() < 200, "12-bit data came out mostly white"
    if rule == "rescale":
        assert (twelve.min(), twelve.max()) == (0, 255)
    else:
        assert twelve.max() == 4095 >> 8


def blend(colour: int, alpha: int, background: int) -> float:
    return colour * alpha / 255 + background * (1 - alpha / 255)


@pytest.mark.usefixtures("prefect_harness")
def test_alpha_composited_on_background(
    cases_dir: Path, tmp_path: Path, recwarn: pytest.WarningsRecorder
):
    folder = cases_dir / "C06-alpha-palette"
    files = sorted(p for p in folder.iterdir() if p.name != "expected.json")
    run = prepare(
        copy_into_class(files, tmp_path / "root"),
        tmp_path / "store",
        image={"width": 32, "height": 32, "background": [255, 255, 255]},
    )
    centre = {
        "gray_alpha_LA.png": (200, 200, 200),
        "palette_trns.gif": (200, 30, 30),
        "palette_trns_index0.png": (200, 30, 30),
        "rgba_transparent_black_bg.png": (200, 30, 30),
        # Palette index 1 has alpha 160 in the PNG's alpha table.
        "palette_trns_bytes.png": (
            blend(200, 160, 255),
            blend(30, 160, 255),
            blend(30, 160, 255),
        ),
    }
    modes = {
        "gray_alpha_LA.png": "LA",
        "palette_trns.gif": "P",
        "palette_trns_bytes.png": "P",
        "palette_trns_index0.png": "P",
        "rgba_transparent_black_bg.png": "RGBA",
    }
    pixels = run.pixels_by_key()
    for path in files:
        key = f"x/{path.name}"
        row = run.sources[key]
        assert row["status"] == "ingested", row
        assert row["mode"] == modes[path.name], path.name
        assert "alpha_composite" in row["conversions"], row["conversions"]
        assert row["warnings"] == [], row["warnings"]
        image = pixels[key].astype(float)
        assert image[0, 0].tolist() == [255, 255, 255], f"{path.name} corner"
        assert np.abs(image[16, 16] - centre[path.name]).max() <= 1, path.name
    pillow_warnings = [w for w in recwarn if "PIL" in Path(w.filename).parts]
    assert not pillow_warnings, [str(w.message) for w in pillow_warnings]


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize("wide_modes", ["reject", "rescale"])
def test_mixed_modes_shape_and_record(cases_dir: Path, tmp_path: Path, wide_modes: str):
    dataset = cases_dir / "C10-mixed-modes" / "dataset"
    run = prepare(
        dataset,
        tmp_path / "store",
        image={"width": 24, "height": 24, "wide_modes": wide_modes},
    )
    modes = {
        "x/bilevel_1.png": "1",
        "x/gray_L.png": "L",
        "x/rgb.jpg": "RGB",
        "x/rgba.png": "RGBA",
        "x/float_F.tif": "F",
        "x/int32_I.tif": "I",
    }
    pixels = run.pixels_by_key()
    for key, mode in modes.items():
        row = run.sources[key]
        if mode in ("F", "I") and wide_modes == "reject":
            assert status_and_reason(row) == ("quarantined", "unsupported_mode")
            assert "image.wide_modes" in row["message"]
            continue
        assert row["status"] == "ingested", row
        assert row["mode"] == mode, key
        assert pixels[key].shape == (24, 24, 3), key
        assert pixels[key].dtype == np.uint8, key
    assert np.all(pixels["x/gray_L.png"] == 90), "L 90 did not stay 90"
    assert np.all(pixels["x/bilevel_1.png"] == 255), "1-bit white is not 255"
    if wide_modes == "rescale":
        # Both wide images are constant, and a constant image rescales to 0.
        for key in ("x/float_F.tif", "x/int32_I.tif"):
            assert "wide_rescale" in run.sources[key]["conversions"], key
            assert run.sources[key]["bit_depth"] == 32, key
            assert np.all(pixels[key] == 0), key


# ---------------------------------------------------------------------------
# Decompression bomb and the pixel limit


def write_gray_png(path: Path, size: int, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (size, size), value).save(path)


def write_numbered_png(path: Path, number: int) -> None:
    """Write a 2x1 gray PNG whose two pixels encode ``number`` (distinct bytes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.array([[number % 256, number // 256]], dtype=np.uint8)
    Image.fromarray(pixels).save(path)


@pytest.mark.usefixtures("prefect_harness")
def test_bomb_quarantined_and_limit_local(cases_dir: Path, tmp_path: Path):
    bomb = cases_dir / "C08-decompression-bomb" / "bomb_1bit_20000x20000.png"
    root = copy_into_class([bomb], tmp_path / "root")
    for value in (10, 20, 30):
        write_gray_png(root / "x" / f"small_{value}.png", 20, value)
    write_gray_png(root / "x" / "over_limit.png", 40, 40)
    pillow_limit = Image.MAX_IMAGE_PIXELS
    run = prepare(root, tmp_path / "store", image={"max_image_pixels": 1000})
    assert Image.MAX_IMAGE_PIXELS == pillow_limit, "the run changed Pillow's limit"

    bomb_row = run.sources[f"x/{bomb.name}"]
    assert status_and_reason(bomb_row) == ("quarantined", "too_many_pixels")
    # Pillow's own bomb check may fire first; either message gives the pixel count.
    assert "400000000" in bomb_row["message"].replace(",", ""), bomb_row["message"]
    over = run.sources["x/over_limit.png"]
    assert status_and_reason(over) == ("quarantined", "too_many_pixels")
    assert "image.max_image_pixels = 1,000" in over["message"]
    for value in (10, 20, 30):
        assert run.sources[f"x/small_{value}.png"]["status"] == "ingested"
    assert run.manifest["source"]["quarantined_by_reason"] == {"too_many_pixels": 2}


# ---------------------------------------------------------------------------
# Impossible sampling_strategy


@pytest.mark.usefixtures("prefect_harness")
def test_sampling_request_fails_before_decode(cases_dir: Path, tmp_path: Path):
    case = cases_dir / "C12-sampling-strategy-dict"
    with (case / "features.csv").open(newline="") as handle:
        labels = [row["label"] for row in csv.DictReader(handle)]
    requested = json.loads((case / "requested_strategy.json").read_text())
    counts = {name: labels.count(name) for name in sorted(set(labels))}
    assert counts == {"benign": 357, "malignant": 212}, (
        "features.csv has other label counts"
    )

    root = tmp_path / "root"
    rows = []
    for index, label in enumerate(labels):
        path = root / "img" / f"{index:04d}.png"
        write_numbered_png(path, index)
        rows.append({"path": f"img/{index:04d}.png", "label": label, "split": "train"})
    table = tmp_path / "labels.csv"
    with table.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "label", "split"])
        writer.writeheader()
        writer.writerows(rows)

    store = tmp_path / "store"
    config = make_config(
        root,
        store,
        source={"labels": str(table)},
        runner={"type": "thread", "workers": 2},
        resample={
            "method": requested["method"].lower(),
            "sampling_strategy": requested["sampling_strategy"],
        },
    )
    with pytest.raises(ConfigError) as caught:
        run_flow(config)
    message = str(caught.value)
    assert "'benign'" in message, message
    assert "357" in message, message
    assert "300" in message, message
    written = [path for path in (store / "objects").rglob("*") if path.is_file()]
    assert written == [], f"objects were written before the check: {written}"
    assert not (store / "versions").exists() or not any((store / "versions").iterdir())


# ---------------------------------------------------------------------------
# Zero-variance channels, bright uint8 statistics, fitting on train only


@pytest.mark.usefixtures("prefect_harness")
def test_zero_variance_channel_flagged(
    cases_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    dataset = cases_dir / "C14-zero-std-channel" / "dataset"
    table = tmp_path / "labels.csv"
    # flat_grey.png goes to the test split, so blue is 0 in every training image.
    lines = ["path,label,split"] + [
        f"a/{path.name},a,{'test' if path.name == 'flat_grey.png' else 'train'}"
        for path in sorted((dataset / "a").iterdir())
    ]
    table.write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING):
        run = prepare(
            dataset,
            tmp_path / "store",
            source={"labels": str(table)},
            image={"width": 16, "height": 16},
        )
    normalization = run.manifest["normalization"]
    assert normalization["stats"]["zero_variance"] == [False, False, True]
    assert normalization["params"]["zero_variance"] == [False, False, True]
    warned = [r for r in caplog.records if "variance" in r.getMessage().lower()]
    assert warned, "no warning about the zero-variance channel was logged"
    for split in ("train", "test"):
        batch = run.version.load(split, normalize=True)
        assert len(batch) > 0, split
        assert np.isfinite(batch.pixels).all(), f"{split} has NaN or inf"


@pytest.mark.usefixtures("prefect_harness")
def test_per_image_zscore_flat_image_finite(cases_dir: Path, tmp_path: Path):
    dataset = cases_dir / "C14-zero-std-channel" / "dataset"
    run = prepare(
        dataset,
        tmp_path / "store",
        image={"width": 16, "height": 16},
        normalize={"method": "per_image_zscore"},
    )
    batch = run.version.load("train", normalize=True)
    assert len(batch) == 5
    assert np.isfinite(batch.pixels).all()
    flat = run.sources["a/flat_grey.png"]["sample_id"]
    assert np.all(batch.pixels[batch.sample_ids.index(flat)] == 0)


@pytest.mark.usefixtures("prefect_harness")
def test_bright_uint8_statistics_exact(cases_dir: Path, tmp_path: Path):
    case = cases_dir / "C15-uint8-stats-overflow"
    expected = json.loads((case / "expected.json").read_text())
    run = prepare(
        case / "dataset", tmp_path / "store", image={"width": 64, "height": 64}
    )
    stats = run.manifest["normalization"]["stats"]
    tolerance = expected["tolerance"]
    mean = np.asarray(stats["mean"]) / 255
    std = np.asarray(stats["std"]) / 255
    assert np.allclose(mean, expected["per_channel_mean_0to1"], rtol=0, atol=tolerance)
    assert np.allclose(
        std, expected["per_channel_std_0to1_population"], rtol=0, atol=tolerance
    )
    assert stats["min"] == expected["per_channel_min_0to255"]
    assert stats["max"] == expected["per_channel_max_0to255"]


@pytest.mark.usefixtures("prefect_harness")
def test_statistics_fitted_on_train_only(cases_dir: Path, tmp_path: Path):
    case = cases_dir / "C16-stats-split-leak"
    expected = json.loads((case / "expected.json").read_text())
    root = tmp_path / "root"
    shutil.copytree(case / "img", root / "img")
    shutil.copyfile(case / "labels.csv", root / "labels.csv")
    run = prepare(
        root,
        tmp_path / "store",
        source={"labels": str(root / "labels.csv")},
        image={"width": 8, "height": 8, "color_mode": "L"},
        split={"use_source_split": True},
    )
    assert run.manifest["counts"]["totals_before"] == {"train": 4, "val": 0, "test": 2}
    normalization = run.manifest["normalization"]
    assert normalization["fitted_on"] == "train"
    assert normalization["params"]["fitted_on"] == "train"
    mean = normalization["stats"]["mean"][0] / 255
    assert mean == pytest.approx(expected["mean_from_train_only_0to1"], abs=1e-8)
    assert mean != pytest.approx(expected["mean_if_leaked_all_rows_0to1"], abs=1e-3)
    assert normalization["stats"]["std"] == [expected["std_from_train_only"]]
    test = run.version.load("test", normalize=True)
    assert np.isfinite(test.pixels).all()


# ---------------------------------------------------------------------------
# Shard schema drift and tensor columns (no flow run)


@pytest.fixture
def drift_shards(cases_dir: Path) -> tuple[Path, Path]:
    folder = cases_dir / "C18-shard-schema-drift" / "shards"
    return folder / "shard-00000.parquet", folder / "shard-00001.parquet"


def test_schema_validator_accepts_same(drift_shards: tuple[Path, Path]):
    first, _ = drift_shards
    schema = pq.read_schema(first)
    check_schema(schema, schema_description(schema), str(first))


@pytest.mark.parametrize(
    ("column", "expected_type", "actual_type"),
    [
        ("label_id", "int64", "int32"),
        ("source", "string", "null"),
        ("pixels", "binary", "large_binary"),
    ],
)
def test_schema_validator_names_column(
    drift_shards: tuple[Path, Path], column: str, expected_type: str, actual_type: str
):
    first, second = drift_shards
    reference = schema_description(pq.read_schema(first))
    drifted = pq.read_schema(second)
    # Only this column keeps shard 0's type, so the check reaches it first.
    expected = {**schema_description(drifted), column: reference[column]}
    assert reference[column] == expected_type
    with pytest.raises(SchemaMismatchError) as caught:
        check_schema(drifted, expected, str(second))
    assert caught.value.column == column
    assert expected_type in str(caught.value)
    assert actual_type in str(caught.value)


def test_read_shard_rejects_drift(drift_shards: tuple[Path, Path]):
    first, second = drift_shards
    reference = schema_description(pq.read_schema(first))
    with pytest.raises(SchemaMismatchError) as caught:
        read_shard(second.read_bytes(), "parquet", reference, path=str(second))
    assert caught.value.column in ("label_id", "source", "pixels")
    assert str(second) in str(caught.value)


@pytest.mark.parametrize(
    "name", ["tensor_ext.parquet", "fixed_size_list.parquet", "plain_list.parquet"]
)
def test_tensor_column_across_row_groups(cases_dir: Path, name: str):
    folder = cases_dir / "C24-tensor-column"
    expected = np.load(folder / "pixels_3x4x4x3.npy")
    assert pq.ParquetFile(folder / name).metadata.num_row_groups == 2
    column = pq.read_table(folder / name).column("pixels")
    assert column.num_chunks == 2, "the column should span two row groups"
    shape = None if name == "tensor_ext.parquet" else (4, 4, 3)
    pixels = pixels_from_column(column, shape, "uint8")
    assert pixels.shape == (3, 4, 4, 3)
    assert pixels.dtype == np.uint8
    assert np.array_equal(pixels, expected)


def test_plain_list_needs_outside_shape(cases_dir: Path):
    column = pq.read_table(cases_dir / "C24-tensor-column" / "plain_list.parquet")
    with pytest.raises(SchemaMismatchError) as caught:
        pixels_from_column(column.column("pixels"), None, "uint8")
    assert "shape" in str(caught.value)
