"""The prepare flow on three real image datasets, checked against values computed here.

Each dataset gets one flow run (module-scoped fixtures). The tests then read the
output a user reads (the manifest, the version's tables and the reader) and compare
it with counts, statistics and pixels that the test derives from the files itself.
"""

from __future__ import annotations

import csv
import fnmatch
import hashlib
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageOps

import imgprep
from imgprep.config import PrepareConfig
from imgprep.store import Store
from imgprep.version import load_manifest, read_object_table
from tests.helpers import (
    file_sha256,
    make_config,
    read_manifest,
    reference_stats,
    run_flow,
    split_of,
)

pytestmark = [
    pytest.mark.usefixtures("data_dir", "prefect_harness"),
    # Pillow warns about many of its deliberately broken test files.
    pytest.mark.filterwarnings("ignore:::PIL"),
]

SPLITS = ("train", "val", "test")
IMAGE_SIZE = 32


@dataclass
class PreparedVersion:
    """One flow run's config, store and manifest, with lazily read tables."""

    config: PrepareConfig
    store: Path
    manifest: dict[str, Any]
    _tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def table(self, name: str) -> list[dict[str, Any]]:
        """Return the rows of the version's ``sources`` or ``lineage`` table."""
        if name not in self._tables:
            store = Store(self.store)
            self._tables[name] = read_object_table(store, load_manifest(store), name)
        return self._tables[name]

    def sources(self) -> dict[str, dict[str, Any]]:
        """Return the sources table keyed by path relative to the source root."""
        return {row["key"]: row for row in self.table("sources")}

    def open(self) -> imgprep.DatasetVersion:
        return imgprep.open_version(self.store)


def prepare(root: Path, store: Path, **sections: Any) -> PreparedVersion:
    """Run the flow on ``root`` with the thread runner and return the version."""
    sections.setdefault("runner", {"type": "thread", "workers": 2})
    config = make_config(root, store, **sections)
    run_flow(config)
    return PreparedVersion(config, store, read_manifest(store))


def nonzero(counts: dict[str, int]) -> dict[str, int]:
    return {name: n for name, n in counts.items() if n}


def class_folder_files(root: Path) -> list[Path]:
    """Return the files inside class folders, leaving out files at the top level."""
    return sorted(
        path
        for path in root.rglob("*")
        if path.is_file() and path.parent != root and not path.name.startswith(".")
    )


def assert_statistics_match_numpy(version: PreparedVersion) -> None:
    """Compare the manifest's training statistics with numpy on the stored pixels."""
    train = version.open().load("train", resampled=False)
    n_train = sum(version.manifest["counts"]["before"]["train"].values())
    assert train.pixels.shape[0] == n_train, "reader and manifest disagree on size"
    reference = reference_stats(train.pixels)
    flat = train.pixels.reshape(-1, train.pixels.shape[-1]).astype(np.float64)
    stats = version.manifest["normalization"]["stats"]
    assert version.manifest["normalization"]["fitted_on"] == "train"
    assert stats["n_pixels"] == flat.shape[0]
    assert np.allclose(stats["mean"], reference["mean"], rtol=1e-9, atol=0)
    assert np.allclose(stats["std"], reference["std"], rtol=1e-9, atol=0)
    assert stats["min"] == reference["min"].tolist()
    assert stats["max"] == reference["max"].tolist()
    for key, values in stats["percentiles"].items():
        expected = np.percentile(flat, float(key), axis=0)
        assert np.allclose(values, expected, rtol=1e-9, atol=1e-9), f"p{key}"


def assert_objects_match_checksums(version: PreparedVersion) -> None:
    """Recompute the size and sha256 of every shard, object and file from disk."""
    manifest = version.manifest
    entries = [*manifest["shards"], *manifest["objects"].values()]
    assert manifest["shards"], "the version lists no shards"
    for entry in entries:
        data = (version.store / entry["path"]).read_bytes()
        assert len(data) == entry["bytes"], entry["path"]
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], entry["path"]
    folder = version.store / "versions" / f"{manifest['version']:06d}"
    for entry in manifest["files"]:
        data = (folder / entry["name"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], entry["name"]


# ---------------------------------------------------------------------------
# hymenoptera: the train/ and val/ folders give the split, ants 164 : bees 34


@pytest.fixture(scope="module")
def ants_root(data_dir: Path) -> Path:
    return data_dir / "hymenoptera-imbalanced"


@pytest.fixture(scope="module")
def ants(ants_root: Path, tmp_path_factory: pytest.TempPathFactory) -> PreparedVersion:
    # jpeg_draft is off so that a plain Pillow decode in the test can reproduce
    # the stored pixels without repeating the DCT-scaling choice.
    return prepare(
        ants_root,
        tmp_path_factory.mktemp("ants") / "store",
        image={
            "height": IMAGE_SIZE,
            "width": IMAGE_SIZE,
            "resize": "pad",
            "jpeg_draft": False,
        },
        resample={"method": "random_over"},
        ingest={"chunk_size": 64},
        output={"rows_per_shard": 100},
    )


def source_split_counts(root: Path) -> dict[str, dict[str, int]]:
    """Count files per split and class of a ROOT/SPLIT/CLASS tree."""
    counts: dict[str, dict[str, int]] = {split: {} for split in SPLITS}
    for path in class_folder_files(root):
        split, label = path.relative_to(root).parts[:2]
        counts[split][label] = counts[split].get(label, 0) + 1
    return counts


def test_ants_counts_follow_source_split(ants: PreparedVersion, ants_root: Path):
    expected = source_split_counts(ants_root)
    totals = Counter()
    for split in SPLITS:
        totals.update(expected[split])
    assert dict(totals) == {"ants": 164, "bees": 34}, (
        "the class totals are not ants 164 : bees 34"
    )
    assert ants.manifest["classes"] == ["ants", "bees"]
    assert ants.manifest["source"]["layout"] == "folder"
    for split in SPLITS:
        before = nonzero(ants.manifest["counts"]["before"][split])
        assert before == expected[split], f"{split}: manifest {before}"
    assert ants.manifest["source"]["ingested"] == sum(totals.values())
    assert ants.manifest["source"]["quarantined"] == 0


def test_placeholder_gif_ingested_as_ant(ants: PreparedVersion, ants_root: Path):
    """The "image not found" GIF is a valid 300x300 palette image.

    No decoder can tell a placeholder picture from an ant photo, so it is ingested
    under its folder's label. Its format and mode are recorded, so the only GIF of
    the set can be found in the manifest and the sources table.
    """
    key = "train/ants/imageNotFound.gif"
    row = ants.sources()[key]
    assert row["status"] == "ingested", row
    assert (row["label"], row["split"]) == ("ants", "train")
    assert (row["format"], row["mode"], row["frames"]) == ("GIF", "P", 1)
    assert (row["source_width"], row["source_height"]) == (300, 300)
    assert row["sample_id"] == file_sha256(ants_root / key)
    assert ants.manifest["source"]["formats"] == {"GIF": 1, "JPEG": 197}


def test_file_name_with_space_ingested(ants: PreparedVersion, ants_root: Path):
    key = "train/ants/ant photos.jpg"
    row = ants.sources()[key]
    assert row["status"] == "ingested", row
    assert row["sample_id"] == file_sha256(ants_root / key)
    train = ants.open().load("train", resampled=False)
    assert row["sample_id"] in train.sample_ids


def test_ants_statistics_match_numpy(ants: PreparedVersion):
    assert_statistics_match_numpy(ants)


def pillow_pad(path: Path, size: int, background: tuple[int, int, int]) -> np.ndarray:
    """Decode with Pillow alone: upright, RGB, fit inside size x size, pad, centre."""
    with Image.open(path) as image:
        upright = ImageOps.exif_transpose(image).convert("RGB")
    width, height = upright.size
    scale = min(size / width, size / height)
    fit = (max(1, round(width * scale)), max(1, round(height * scale)))
    resized = upright.resize(fit, Image.Resampling.BILINEAR)
    canvas = Image.new("RGB", (size, size), background)
    canvas.paste(resized, ((size - fit[0]) // 2, (size - fit[1]) // 2))
    return np.asarray(canvas)


def pick_training_jpegs(root: Path) -> list[Path]:
    """Return the two widest, the two tallest and the spaced-name training JPEGs."""
    jpegs = [
        path
        for path in class_folder_files(root / "train")
        if path.suffix.lower() in (".jpg", ".jpeg")
    ]
    aspect = {}
    for path in jpegs:
        with Image.open(path) as image:
            aspect[path] = image.width / image.height
    by_aspect = sorted(jpegs, key=lambda path: (aspect[path], path.name))
    picked = [*by_aspect[:2], *by_aspect[-2:], root / "train/ants/ant photos.jpg"]
    assert aspect[by_aspect[-1]] > 2.0, "expected a training image wider than 2:1"
    return picked


def test_stored_pixels_match_pillow(ants: PreparedVersion, ants_root: Path):
    train = ants.open().load("train", resampled=False)
    row_of = {sample_id: i for i, sample_id in enumerate(train.sample_ids)}
    background = tuple(ants.config.image.background)
    for path in pick_training_jpegs(ants_root):
        sample_id = file_sha256(path)
        assert sample_id in row_of, f"{path.name} is not in the training split"
        stored = train.pixels[row_of[sample_id]]
        expected = pillow_pad(path, IMAGE_SIZE, background)
        difference = np.abs(stored.astype(int) - expected.astype(int))
        assert difference.max() == 0, (
            f"{path.name}: stored pixels differ from Pillow by up to "
            f"{difference.max()} in {np.count_nonzero(difference)} values"
        )


def test_ants_shard_checksums(ants: PreparedVersion):
    assert_objects_match_checksums(ants)


def test_ants_reader_per_split(ants: PreparedVersion, ants_root: Path):
    expected = source_split_counts(ants_root)
    classes = ants.manifest["classes"]
    version = ants.open()
    for split in SPLITS:
        batch = version.load(split, resampled=False)
        n = sum(expected[split].values())
        assert batch.pixels.shape == (n, IMAGE_SIZE, IMAGE_SIZE, 3), split
        assert batch.pixels.dtype == np.uint8, split
        counts = np.bincount(batch.labels, minlength=len(classes))
        got = nonzero(dict(zip(classes, counts.tolist(), strict=True)))
        assert got == expected[split], split

    train = version.load("train")
    before = expected["train"]
    majority = max(before.values())
    after = ants.manifest["counts"]["after"]["train"]
    assert after == {name: majority for name in before}, "random_over should balance"
    counts = np.bincount(train.labels, minlength=len(classes)).tolist()
    assert counts == [after[name] for name in classes]
    added = {name: majority - n for name, n in before.items()}
    origins = Counter(train.origins)
    assert origins == {"original": sum(before.values()), "duplicate": added["bees"]}
    per_class = ants.manifest["resample"]["per_class"]
    assert per_class["bees"]["n_duplicated"] == added["bees"]


# ---------------------------------------------------------------------------
# NEU steel defects: six classes from 150 down to 2 images, hash split

# With this salt the hash split leaves scratches with 1 training sample and
# rolled-in_scale with 2, so both SMOTE fallbacks run.
STEEL_SALT = "b"


@pytest.fixture(scope="module")
def steel_root(data_dir: Path) -> Path:
    return data_dir / "neu-det-steel-imbalanced"


@pytest.fixture(scope="module")
def steel(steel_root: Path, tmp_path_factory: pytest.TempPathFactory):
    return prepare(
        steel_root,
        tmp_path_factory.mktemp("steel") / "store",
        image={"height": IMAGE_SIZE, "width": IMAGE_SIZE, "color_mode": "RGB"},
        split={"salt": STEEL_SALT},
        resample={"method": "smote", "features": {"kind": "thumbnail"}},
        output={"rows_per_shard": 128},
    )


def hash_split_counts(
    root: Path, salt: str, fractions: dict[str, float]
) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {split: {} for split in SPLITS}
    for path in class_folder_files(root):
        split = split_of(file_sha256(path), salt, fractions)
        label = path.parent.name
        counts[split][label] = counts[split].get(label, 0) + 1
    return counts


def test_steel_counts_follow_hash_split(steel: PreparedVersion, steel_root: Path):
    fractions = dict(steel.config.split.fractions)
    expected = hash_split_counts(steel_root, STEEL_SALT, fractions)
    assert steel.manifest["classes"] == sorted(
        path.name for path in steel_root.iterdir() if path.is_dir()
    )
    for split in SPLITS:
        before = nonzero(steel.manifest["counts"]["before"][split])
        assert before == expected[split], f"{split}: manifest {before}"
    skipped = {item["path"] for item in steel.manifest["source"]["skipped_files"]}
    assert skipped == {"INDEX-generated.tsv", "SOURCES.md"}


def test_steel_smote_k_and_fallbacks(steel: PreparedVersion, steel_root: Path):
    fractions = dict(steel.config.split.fractions)
    train = hash_split_counts(steel_root, STEEL_SALT, fractions)["train"]
    assert 1 in train.values(), f"no class has 1 training sample: {train}"
    assert any(2 <= n <= 5 for n in train.values()), f"no class has 2..5: {train}"
    k = steel.config.resample.k_neighbors
    majority = max(train.values())
    per_class = steel.manifest["resample"]["per_class"]
    for name, n in train.items():
        entry = per_class[name]
        where = f"class {name} with {n} training samples: {entry}"
        assert entry["n_before"] == n, where
        assert entry["n_after"] == majority, where
        if n == majority:
            assert entry["method"] == "none", where
        elif n == 1:
            assert entry["method"] == "random_over", where
            assert entry["n_duplicated"] == majority - 1, where
            assert "1 training sample" in entry["note"], where
        else:
            assert entry["method"] == "smote", where
            assert entry["k_neighbors"] == min(k, n - 1), where
            assert entry["n_synthetic"] == majority - n, where
            if n - 1 < k:
                assert f"lowered from {k} to {n - 1}" in entry["note"], where
            else:
                assert entry["note"] is None, where
    counts_after = steel.manifest["counts"]["after"]["train"]
    assert set(counts_after.values()) == {majority}


def test_steel_synthetic_rows_follow_lineage(steel: PreparedVersion):
    version = steel.open()
    originals = version.load("train", resampled=False)
    original_row = {sample_id: i for i, sample_id in enumerate(originals.sample_ids)}
    classes = steel.manifest["classes"]
    label_of = {
        sample_id: classes[label]
        for sample_id, label in zip(
            originals.sample_ids, originals.labels.tolist(), strict=True
        )
    }
    resampled = version.load("train")
    synthetic_row = {
        sample_id: i
        for i, (sample_id, origin) in enumerate(
            zip(resampled.sample_ids, resampled.origins, strict=True)
        )
        if origin == "synthetic"
    }
    lineage = [row for row in steel.table("lineage") if row["origin"] == "synthetic"]
    assert lineage, "the lineage table has no synthetic rows"
    assert len(lineage) == steel.manifest["resample"]["n_synthetic"]
    assert set(synthetic_row) == {row["sample_id"] for row in lineage}
    per_class = Counter(row["label"] for row in lineage)
    for name, entry in steel.manifest["resample"]["per_class"].items():
        assert per_class.get(name, 0) == entry["n_synthetic"], name

    for row in lineage:
        first, second = row["parents"]
        assert label_of.get(first) == row["label"], f"parent {first} of {row}"
        assert label_of.get(second) == row["label"], f"parent {second} of {row}"
        a = originals.pixels[original_row[first]].astype(np.float64)
        b = originals.pixels[original_row[second]].astype(np.float64)
        expected = np.clip(np.rint(a + row["coefficient"] * (b - a)), 0, 255)
        stored = resampled.pixels[synthetic_row[row["sample_id"]]]
        assert np.array_equal(stored, expected.astype(np.uint8)), row["sample_id"]
        label = classes[resampled.labels[synthetic_row[row["sample_id"]]]]
        assert label == row["label"]


def test_steel_duplicates_for_single_sample(steel: PreparedVersion):
    per_class = steel.manifest["resample"]["per_class"]
    single = [name for name, entry in per_class.items() if entry["n_before"] == 1]
    for name in single:
        rows = [row for row in steel.table("lineage") if row["label"] == name]
        duplicates = [row for row in rows if row["origin"] == "duplicate"]
        assert len(duplicates) == 1, rows
        assert duplicates[0]["count"] == per_class[name]["n_duplicated"]
        assert not any(row["origin"] == "synthetic" for row in rows)


def test_steel_statistics_match_numpy(steel: PreparedVersion):
    assert_statistics_match_numpy(steel)


def test_gray_jpeg_stored_as_equal_channels(steel: PreparedVersion):
    """Gray content in RGB JPEGs keeps color_mode RGB with three equal channels."""
    assert steel.manifest["pixel"]["color_mode"] == "RGB"
    modes = Counter(
        row["mode"] for row in steel.table("sources") if row["status"] == "ingested"
    )
    assert modes == {"RGB": steel.manifest["source"]["ingested"]}
    pixels = steel.open().load("train", resampled=False).pixels
    assert pixels.shape[-1] == 3
    red, green, blue = (pixels[..., c].astype(int) for c in range(3))
    assert np.abs(red - green).max() == 0, "R and G differ"
    assert np.abs(red - blue).max() == 0, "R and B differ"


# ---------------------------------------------------------------------------
# Pillow's own test images as one class folder: every file gets an outcome

PILLOW_GROUPS = {
    "orientation": (
        "hopper_orientation_[2-8].jpg",
        "hopper_orientation_[2-8].webp",
        "orientation_rectangle.jpg",
        "g4_orientation_*.tif",
        "avif/rot*mir*.avif",
        "exif_imagemagick_orientation.png",
        "xmp_tags_orientation*.png",
    ),
    "cmyk": (
        "pil_sample_cmyk.jpg",
        "tiff_strip_cmyk_jpeg.tif",
        "tiff_tiled_cmyk_jpeg.tif",
        "tiff_strip_cmyk_16l_jpeg.tif",
    ),
    "truncated": (
        "truncated_image.png",
        "truncated_jpeg.jpg",
        "bmp/b/shortfile.bmp",
        "cross_scan_line_truncated.tga",
    ),
    "bomb": (
        "decompression_bomb.gif",
        "decompression_bomb.ico",
        "bmp/b/reallybig.bmp",
        "bmp/b/badwidth.bmp",
        "oom-8ed3316a4109213ca96fb8a256a0bfefdece1461.icns",
    ),
    "multi_frame": (
        "iss634.gif",
        "iss634.apng",
        "iss634.webp",
        "chi.gif",
        "multipage*.tiff",
        "dispose_*.gif",
        "frozenpond.mpo",
        "apng/*",
        "a.fli",
    ),
}

# Files where the index's pillow_status differs from what Pillow 13.0.0 does here
# with default settings, mapped to the reason imgprep must give. The index marks
# the first three "ok", but load() raises on each of them. The index also reads
# pillow.ico as a TGA that fails to load, while Image.open reads it as an ICO.
INDEX_DISAGREES = {
    "truncated_end_chunk.png": "truncated",
    "broken_data_stream.png": "corrupt",
    "apng/chunk_no_fctl.png": "corrupt",
    "pillow.ico": None,
}


@pytest.fixture(scope="module")
def pillow_index(data_dir: Path) -> dict[str, dict[str, str]]:
    index = data_dir / "pillow-test-images" / "INDEX-generated.tsv"
    with index.open(encoding="utf-8", newline="") as handle:
        return {row["path"]: row for row in csv.DictReader(handle, delimiter="\t")}


@pytest.fixture(scope="module")
def pillow_files(
    data_dir: Path,
    pillow_index: dict[str, dict[str, str]],
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    """Copy every indexed file into one class folder, keeping subfolders."""
    source = data_dir / "pillow-test-images"
    root = tmp_path_factory.mktemp("pillow") / "root"
    for path in pillow_index:
        target = root / "all" / path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / path, target)
    return root


@pytest.fixture(scope="module")
def pillow_version(
    pillow_files: Path, tmp_path_factory: pytest.TempPathFactory
) -> PreparedVersion:
    return prepare(
        pillow_files,
        tmp_path_factory.mktemp("pillow-store") / "store",
        image={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        ingest={"max_rejected_fraction": 1.0, "chunk_size": 128},
        split={"fractions": {"train": 1.0, "val": 0.0, "test": 0.0}},
    )


@pytest.fixture(scope="module")
def pillow_rows(pillow_version: PreparedVersion) -> dict[str, dict[str, Any]]:
    """Return the sources table keyed by the index's path."""
    return {
        key.removeprefix("all/"): row for key, row in pillow_version.sources().items()
    }


def outcome_counts(rows: dict[str, dict[str, Any]]) -> str:
    counts = Counter(f"{row['status']}:{row['reason']}" for row in rows.values())
    return ", ".join(f"{name} {n}" for name, n in sorted(counts.items()))


def group_paths(index: dict[str, dict[str, str]], group: str) -> list[str]:
    patterns = PILLOW_GROUPS[group]
    paths = [
        path
        for path in index
        if any(fnmatch.fnmatchcase(path, pattern) for pattern in patterns)
    ]
    assert paths, f"no indexed file matches group {group}"
    return sorted(paths)


def test_every_pillow_file_has_outcome(pillow_index, pillow_rows, pillow_version):
    summary = outcome_counts(pillow_rows)
    assert set(pillow_rows) == set(pillow_index), summary
    for path, row in pillow_rows.items():
        assert row["status"] in ("ingested", "quarantined", "skipped", "duplicate"), (
            f"{path}: {row['status']}"
        )
        if row["status"] != "ingested":
            assert row["reason"], f"{path} has no reason; {summary}"
            assert row["message"], f"{path} has no message; {summary}"
    source = pillow_version.manifest["source"]
    quarantined = Counter(
        row["reason"] for row in pillow_rows.values() if row["status"] == "quarantined"
    )
    assert source["quarantined_by_reason"] == dict(quarantined), summary
    assert source["ingested"] == sum(
        row["status"] == "ingested" for row in pillow_rows.values()
    )


def test_index_disagreements_hold_here(data_dir: Path):
    """Plain Pillow here loads pillow.ico and fails on the other listed files."""
    folder = data_dir / "pillow-test-images"
    for path, reason in INDEX_DISAGREES.items():
        with Image.open(folder / path) as image:
            if reason is None:
                image.load()
            else:
                with pytest.raises((OSError, SyntaxError)):
                    image.load()


def test_pillow_truncated_files(pillow_index, pillow_rows):
    summary = outcome_counts(pillow_rows)
    for path in group_paths(pillow_index, "truncated"):
        row = pillow_rows[path]
        assert (row["status"], row["reason"]) == ("quarantined", "truncated"), (
            f"{path}: {row['status']} {row['reason']} {row['message']}; {summary}"
        )
    # The index lists these as files that load anyway: the JPEG does, and the PNG,
    # whose trailing IDAT chunk is cut off, loads only in Pillow's truncated mode.
    assert pillow_rows["truncated_app14.jpg"]["status"] == "ingested"
    row = pillow_rows["truncated_end_chunk.png"]
    assert (row["status"], row["reason"]) == ("quarantined", "truncated"), row


def test_pillow_bomb_headers(pillow_index, pillow_rows):
    summary = outcome_counts(pillow_rows)
    for path in group_paths(pillow_index, "bomb"):
        row = pillow_rows[path]
        assert (row["status"], row["reason"]) == ("quarantined", "too_many_pixels"), (
            f"{path}: {row['status']} {row['reason']}; {summary}"
        )


def test_pillow_multi_frame_counts(pillow_index, pillow_rows):
    summary = outcome_counts(pillow_rows)
    for path in group_paths(pillow_index, "multi_frame"):
        row, indexed = pillow_rows[path], pillow_index[path]
        if path in INDEX_DISAGREES:
            assert row["reason"] == INDEX_DISAGREES[path], row
        elif indexed["pillow_status"] == "ok":
            assert row["status"] == "ingested", f"{path}: {row}; {summary}"
            assert row["frames"] == int(indexed["frames"]), path
        else:
            assert row["status"] == "quarantined", f"{path}: {row}"
    many = [path for path, row in pillow_rows.items() if (row["frames"] or 0) > 40]
    assert {"iss634.gif", "iss634.apng", "iss634.webp"} <= set(many)


def test_pillow_orientation_recorded(pillow_index, pillow_rows):
    summary = outcome_counts(pillow_rows)
    for path in group_paths(pillow_index, "orientation"):
        row, indexed = pillow_rows[path], pillow_index[path]
        assert row["status"] == "ingested", f"{path}: {row}; {summary}"
        orientation = int(indexed["exif_orientation"])
        assert row["orientation"] == orientation, path
        transposed = "exif_transpose" in row["conversions"]
        assert transposed == (orientation != 1), f"{path}: {row['conversions']}"


def test_pillow_cmyk_conversion_recorded(pillow_index, pillow_rows):
    for path in group_paths(pillow_index, "cmyk"):
        row = pillow_rows[path]
        assert row["status"] == "ingested", f"{path}: {row}"
        assert row["mode"] == "CMYK", path
        conversions = set(row["conversions"])
        assert conversions & {"cmyk_icc", "cmyk_naive"}, f"{path}: {conversions}"


def test_pillow_loadable_files_ingested(pillow_index, pillow_rows):
    """Every file Pillow loads is ingested, except 32-bit modes rejected by config."""
    summary = outcome_counts(pillow_rows)
    for path, indexed in pillow_index.items():
        if indexed["pillow_status"] != "ok" or path in INDEX_DISAGREES:
            continue
        row = pillow_rows[path]
        if row["status"] in ("ingested", "duplicate"):
            continue
        wide = row["reason"] == "unsupported_mode" and indexed["mode"] in ("F", "I")
        assert wide, f"{path} ({indexed['mode']}): {row}; {summary}"


def test_pillow_failures_not_ingested(pillow_index, pillow_rows):
    summary = outcome_counts(pillow_rows)
    for path, indexed in pillow_index.items():
        if indexed["pillow_status"] == "ok" or path in INDEX_DISAGREES:
            continue
        row = pillow_rows[path]
        assert row["status"] in ("quarantined", "skipped"), (
            f"{path} ({indexed['pillow_status']}): {row['status']}; {summary}"
        )
        if indexed["pillow_status"].startswith("open_error:UnidentifiedImageError"):
            assert row["reason"] == "not_an_image", f"{path}: {row['reason']}"
