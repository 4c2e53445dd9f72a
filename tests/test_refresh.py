"""Incremental refresh: a refresh decodes only what changed and equals a rebuild.

A module fixture builds one store through a sequence of refreshes of a 500-image
tree (no change, files added, deleted, modified, rehashed, touched) and, after each
change, builds the same folder from scratch into a new store. The tests check the
``refresh`` counters, which shards were reused, the sample ids that came and went,
and that statistics, histograms and class counts equal the from-scratch build bit
for bit.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import imgprep
from imgprep.errors import CorruptObjectError, SchemaMismatchError
from imgprep.reader import Batch
from imgprep.store import Store
from imgprep.version import load_manifest, read_object_table
from tests.helpers import make_config, read_manifest, run_flow
from tests.scripts.store_checks import (
    encode_image,
    histogram_arrays,
    sample_shard_sha256s,
    verify_version,
    write_image_tree,
)

pytestmark = pytest.mark.usefixtures("prefect_harness")

CHUNK_SIZE = 64
SETTINGS: dict[str, dict[str, Any]] = {
    "image": {"height": 16, "width": 16},
    "ingest": {"chunk_size": CHUNK_SIZE},
    "output": {"rows_per_shard": CHUNK_SIZE},
}
SPLITS = ("train", "val", "test")


@dataclass
class Step:
    """One run of the refresh sequence and what the test needs to check it."""

    result: dict[str, Any]
    manifest: dict[str, Any]
    scratch: Path | None = None
    info: dict[str, Any] = field(default_factory=dict)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _sources(store: Path, version: int) -> list[dict[str, Any]]:
    handle = Store(store)
    return read_object_table(handle, load_manifest(handle, version), "sources")


def _ingested_ids(store: Path, version: int) -> set[str]:
    return {
        row["sample_id"]
        for row in _sources(store, version)
        if row["status"] == "ingested"
    }


def _reader_ids(store: Path, version: int) -> set[str]:
    opened = imgprep.open_version(store, version)
    ids: set[str] = set()
    for split in SPLITS:
        ids.update(opened.load(split, resampled=False).sample_ids)
    return ids


def _build_from_scratch(root: Path, store: Path) -> Path:
    run_flow(make_config(root, store, **SETTINGS))
    return store


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory, prefect_harness) -> dict:
    """Run the refresh sequence once and record every step."""
    base = tmp_path_factory.mktemp("refresh")
    root = base / "images"
    store = base / "store"
    write_image_tree(root, {f"c{i}": 100 for i in range(5)}, seed=1)
    config = make_config(root, store, **SETTINGS)
    rng = np.random.default_rng(2)
    steps: dict[str, Step] = {}
    scratch_count = 0

    def run(name: str, rehash: bool = False, scratch: bool = False, **info: Any):
        nonlocal scratch_count
        result = run_flow(config, rehash=rehash)
        manifest = read_manifest(store, result["version"])
        scratch_store = None
        if scratch:
            scratch_count += 1
            scratch_store = _build_from_scratch(root, base / f"scratch{scratch_count}")
        steps[name] = Step(result, manifest, scratch_store, info)

    run("full")
    run("unchanged")

    added = []
    for label in ("c1", "c3"):
        for index in range(5):
            path = root / label / f"new{index}.png"
            path.write_bytes(encode_image(rng, "png"))
            added.append(path)
    run("added", scratch=True, ids={_sha256(p) for p in added})

    keys = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.*"))
    deleted = [keys[i] for i in (3, 130, 131, 333, 504)]
    deleted_ids = {_sha256(root / key) for key in deleted}
    for key in deleted:
        (root / key).unlink()
    run("deleted", scratch=True, keys=deleted, ids=deleted_ids)

    modified = root / "c2" / "img0011.png"
    old_id = _sha256(modified)
    before = modified.stat()
    modified.write_bytes(encode_image(rng, "png"))
    os.utime(modified, ns=(before.st_atime_ns, before.st_mtime_ns + 2_000_000_000))
    run("modified", scratch=True, old=old_id, new=_sha256(modified))

    run("rehash", rehash=True)

    # Replace a file's bytes with a different image of the same size and put back
    # its mtime, so its size and mtime fingerprint stays the same.
    swapped = root / "c4" / "img0021.png"
    old_id = _sha256(swapped)
    before = swapped.stat()
    data = encode_image(rng, "png")
    while len(data) != before.st_size:
        data = encode_image(rng, "png")
    swapped.write_bytes(data)
    os.utime(swapped, ns=(before.st_atime_ns, before.st_mtime_ns))
    info = {"old": old_id, "new": _sha256(swapped)}
    run("swapped", **info)
    run("swapped_rehash", rehash=True, scratch=True, **info)

    touched = root / "c0" / "img0040.jpg"
    before = touched.stat()
    new_mtime = before.st_mtime_ns + 5_000_000_000
    os.utime(touched, ns=(before.st_atime_ns, new_mtime))
    run("touched", key="c0/img0040.jpg", id=_sha256(touched), mtime_ns=new_mtime)
    run("after_touch")
    return {"store": store, "root": root, "steps": steps}


def test_versions_numbered_in_order(history):
    store = history["store"]
    steps = history["steps"]
    assert [step.result["version"] for step in steps.values()] == list(
        range(1, len(steps) + 1)
    )
    for step in steps.values():
        version = step.result["version"]
        assert verify_version(store, version) == [], version
        assert step.manifest["parent"] == (version - 1 if version > 1 else None)


def test_full_build_decodes_every_file(history):
    refresh = history["steps"]["full"].manifest["refresh"]
    assert refresh["files_new"] == 500
    assert refresh["images_decoded"] == 500
    assert refresh["samples_added"] == 500
    assert refresh["shards_reused"] == 0
    assert refresh["chunks"] == math.ceil(500 / CHUNK_SIZE)


def test_unchanged_refresh_reuses_shards(history):
    steps = history["steps"]
    parent, child = steps["full"].manifest, steps["unchanged"].manifest
    refresh = child["refresh"]
    assert refresh["images_decoded"] == 0
    assert refresh["chunks"] == 0
    assert refresh["shards_written"] == 0
    assert refresh["shards_reused"] == len(parent["shards"])
    assert refresh["files_unchanged"] == 500
    assert refresh["files_new"] == refresh["files_changed"] == 0
    assert refresh["samples_added"] == refresh["samples_removed"] == 0
    assert [s["path"] for s in child["shards"]] == [s["path"] for s in parent["shards"]]
    assert child["objects"]["lineage"] == parent["objects"]["lineage"]
    assert child["objects"]["histograms"] == parent["objects"]["histograms"]
    assert child["objects"]["sources"] == parent["objects"]["sources"]
    assert child["normalization"] == parent["normalization"]
    assert child["counts"] == parent["counts"]
    assert child["classes"] == parent["classes"]


def test_unchanged_refresh_reads_same_data(history):
    store = history["store"]
    first = imgprep.open_version(store, 1)
    second = imgprep.open_version(store, 2)
    for split in SPLITS:
        for resampled in (False, True):
            a = first.load(split, resampled=resampled)
            b = second.load(split, resampled=resampled)
            assert a.sample_ids == b.sample_ids, split
            assert np.array_equal(a.pixels, b.pixels), split
            assert np.array_equal(a.labels, b.labels), split
            assert np.array_equal(a.weights, b.weights), split


def test_added_files_decoded_once(history):
    store = history["store"]
    step = history["steps"]["added"]
    refresh = step.manifest["refresh"]
    assert refresh["files_new"] == 10
    assert refresh["images_decoded"] == 10
    assert refresh["samples_added"] == 10
    assert refresh["samples_removed"] == 0
    assert refresh["files_unchanged"] == 500
    assert refresh["shards_written"] == 1
    assert refresh["shards_reused"] == len(
        history["steps"]["unchanged"].manifest["shards"]
    )
    version = step.result["version"]
    added = _ingested_ids(store, version) - _ingested_ids(store, version - 1)
    assert added == step.info["ids"]


def test_deletion_rewrites_shrunk_shards(history):
    store = history["store"]
    step = history["steps"]["deleted"]
    version = step.result["version"]
    parent = history["steps"]["added"].manifest
    parent_rows = {row["key"]: row for row in _sources(store, version - 1)}
    shrunk_shards = {parent_rows[key]["shard"] for key in step.info["keys"]}
    assert 1 < len(shrunk_shards) < len(parent["shards"])
    refresh = step.manifest["refresh"]
    assert refresh["files_removed"] == 5
    assert refresh["samples_removed"] == 5
    assert refresh["samples_added"] == 0
    assert refresh["images_decoded"] == 0
    assert refresh["shards_written"] == len(shrunk_shards)
    assert refresh["shards_reused"] == len(parent["shards"]) - len(shrunk_shards)
    removed = _ingested_ids(store, version - 1) - _ingested_ids(store, version)
    assert removed == step.info["ids"]
    assert not step.info["ids"] & _reader_ids(store, version)
    paths = {entry["path"] for entry in step.manifest["shards"]}
    for entry in parent["shards"]:
        assert (entry["path"] in paths) == (entry["path"] not in shrunk_shards)


def test_modified_file_replaces_its_sample(history):
    store = history["store"]
    step = history["steps"]["modified"]
    version = step.result["version"]
    refresh = step.manifest["refresh"]
    assert refresh["files_changed"] == 1
    assert refresh["images_decoded"] == 1
    assert refresh["samples_added"] == 1
    assert refresh["samples_removed"] == 1
    ids = _reader_ids(store, version)
    assert step.info["old"] not in ids
    assert step.info["new"] in ids
    assert step.info["old"] in _reader_ids(store, version - 1)


@pytest.mark.parametrize("name", ["added", "deleted", "modified", "swapped_rehash"])
def test_refresh_equals_scratch_build(history, name):
    store = history["store"]
    step = history["steps"][name]
    scratch = step.scratch
    assert scratch is not None
    expected = read_manifest(scratch, 1)
    assert step.manifest["classes"] == expected["classes"]
    assert step.manifest["counts"] == expected["counts"]
    assert step.manifest["normalization"] == expected["normalization"]
    assert step.manifest["profile"] == expected["profile"]
    ours = histogram_arrays(store, step.manifest)
    theirs = histogram_arrays(scratch, expected)
    assert sorted(ours) == sorted(theirs)
    for split in theirs:
        assert ours[split].dtype == theirs[split].dtype, split
        assert np.array_equal(ours[split], theirs[split]), split
    version = step.result["version"]
    assert _ingested_ids(store, version) == _ingested_ids(scratch, 1)
    refreshed = imgprep.open_version(store, version)
    rebuilt = imgprep.open_version(scratch, 1)
    for split in SPLITS:
        a = refreshed.load(split, resampled=False)
        b = rebuilt.load(split, resampled=False)
        order_a, order_b = np.argsort(a.sample_ids), np.argsort(b.sample_ids)
        assert sorted(a.sample_ids) == sorted(b.sample_ids), split
        assert np.array_equal(a.pixels[order_a], b.pixels[order_b]), split
        assert np.array_equal(a.labels[order_a], b.labels[order_b]), split


def test_rehash_unchanged_decodes_nothing(history):
    steps = history["steps"]
    step = steps["rehash"]
    parent = steps["modified"].manifest
    refresh = step.manifest["refresh"]
    total = parent["source"]["candidates"]
    assert total == 505
    assert refresh["chunks"] == math.ceil(total / CHUNK_SIZE)
    assert refresh["images_decoded"] == 0
    assert refresh["files_unchanged"] == total
    assert refresh["files_changed"] == 0
    assert refresh["shards_written"] == 0
    assert [s["path"] for s in step.manifest["shards"]] == [
        s["path"] for s in parent["shards"]
    ]
    assert step.manifest["objects"]["histograms"] == parent["objects"]["histograms"]


def test_same_fingerprint_change_needs_rehash(history):
    store = history["store"]
    steps = history["steps"]
    # Size and mtime are all a plain refresh compares, so it keeps the old sample.
    plain = steps["swapped"]
    assert plain.manifest["refresh"]["images_decoded"] == 0
    assert plain.manifest["refresh"]["files_changed"] == 0
    assert plain.info["old"] in _reader_ids(store, plain.result["version"])
    # A rehash reads the bytes, finds that they no longer hash to the sample id,
    # and decodes that one file.
    rehashed = steps["swapped_rehash"]
    refresh = rehashed.manifest["refresh"]
    assert refresh["images_decoded"] == 1
    assert refresh["files_changed"] == 1
    assert refresh["files_unchanged"] == 504
    assert refresh["samples_removed"] == 1
    assert refresh["samples_added"] == 1
    ids = _reader_ids(store, rehashed.result["version"])
    assert plain.info["old"] not in ids
    assert plain.info["new"] in ids


def test_touched_file_read_not_decoded(history):
    store = history["store"]
    steps = history["steps"]
    step = steps["touched"]
    version = step.result["version"]
    refresh = step.manifest["refresh"]
    # The new mtime makes the file a candidate for change: it is read and hashed
    # (one chunk), and since its bytes still hash to its sample id it is reused.
    assert refresh["chunks"] == 1
    assert refresh["images_decoded"] == 0
    assert refresh["files_changed"] == 0
    assert refresh["files_unchanged"] == 505
    assert refresh["shards_written"] == 0
    assert refresh["samples_added"] == refresh["samples_removed"] == 0
    row = next(r for r in _sources(store, version) if r["key"] == step.info["key"])
    assert row["status"] == "ingested"
    assert row["sample_id"] == step.info["id"]
    assert row["mtime_ns"] == step.info["mtime_ns"]
    # The new mtime is recorded, so the next refresh does not read the file again.
    after = steps["after_touch"].manifest["refresh"]
    assert after["chunks"] == 0
    assert after["images_decoded"] == 0


# ------------------------------------------------------------------ labels table
@pytest.fixture(scope="module")
def labels_history(tmp_path_factory: pytest.TempPathFactory, prefect_harness):
    """Build from a CSV labels table, change one label, refresh and rebuild."""
    base = tmp_path_factory.mktemp("labels")
    root = base / "images"
    paths = write_image_tree(root, {"flat": 90}, seed=3)
    table = base / "labels.csv"
    rows = [
        {"path": path.relative_to(root).as_posix(), "label": f"k{index % 3}"}
        for index, path in enumerate(paths)
    ]

    def write_table() -> None:
        with open(table, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=["path", "label"])
            writer.writeheader()
            writer.writerows(rows)

    write_table()
    store = base / "store"
    source = {"labels": str(table)}
    settings = {**SETTINGS, "output": {"rows_per_shard": 16}}
    config = make_config(root, store, source=source, **settings)
    first = run_flow(config)
    changed = rows[40]
    assert changed["label"] == "k1"
    changed["label"] = "k2"
    write_table()
    second = run_flow(config)
    scratch = base / "scratch"
    run_flow(make_config(root, scratch, source=source, **settings))
    return {
        "store": store,
        "scratch": scratch,
        "first": first,
        "second": second,
        "key": changed["path"],
        "id": _sha256(root / changed["path"]),
    }


def test_label_change_rewrites_one_shard(labels_history):
    store = labels_history["store"]
    parent = read_manifest(store, 1)
    child = read_manifest(store, 2)
    refresh = child["refresh"]
    assert refresh["images_decoded"] == 0
    assert refresh["chunks"] == 0
    assert refresh["files_unchanged"] == 90
    assert refresh["samples_added"] == refresh["samples_removed"] == 0
    assert refresh["shards_written"] == 1
    assert refresh["shards_reused"] == len(parent["shards"]) - 1
    row = next(r for r in _sources(store, 1) if r["key"] == labels_history["key"])
    old_shard = row["shard"]
    assert old_shard not in {entry["path"] for entry in child["shards"]}
    split = row["split"]
    before, after = parent["counts"]["before"][split], child["counts"]["before"][split]
    assert after["k1"] == before["k1"] - 1
    assert after["k2"] == before["k2"] + 1
    assert after["k0"] == before["k0"]


def test_label_change_equals_scratch_build(labels_history):
    store, scratch = labels_history["store"], labels_history["scratch"]
    child = read_manifest(store, 2)
    expected = read_manifest(scratch, 1)
    assert child["counts"] == expected["counts"]
    assert child["normalization"] == expected["normalization"]
    ours, theirs = histogram_arrays(store, child), histogram_arrays(scratch, expected)
    for split in theirs:
        assert np.array_equal(ours[split], theirs[split]), split
    opened = imgprep.open_version(store, 2)
    row = next(r for r in _sources(store, 2) if r["key"] == labels_history["key"])
    batch = opened.load(row["split"], resampled=False)
    index = batch.sample_ids.index(labels_history["id"])
    assert opened.classes[int(batch.labels[index])] == "k2"


# ------------------------------------------------------------------ class set
@pytest.fixture(scope="module")
def class_history(tmp_path_factory: pytest.TempPathFactory, prefect_harness):
    """Add a class folder, refresh, remove it, refresh; rebuild after each change."""
    base = tmp_path_factory.mktemp("classes")
    root = base / "images"
    write_image_tree(root, {"a": 40, "b": 40, "c": 40}, seed=6)
    store = base / "store"
    config = make_config(root, store, **SETTINGS)
    run_flow(config)
    write_image_tree(root, {"d": 5}, seed=7)
    run_flow(config)
    _build_from_scratch(root, base / "scratch-with-d")
    shutil.rmtree(root / "d")
    run_flow(config)
    _build_from_scratch(root, base / "scratch-without-d")
    return {
        "store": store,
        "scratch": {2: base / "scratch-with-d", 3: base / "scratch-without-d"},
    }


def test_class_change_rewrites_every_shard(class_history):
    store = class_history["store"]
    first, second, third = (read_manifest(store, v) for v in (1, 2, 3))
    assert second["classes"] == ["a", "b", "c", "d"]
    assert third["classes"] == ["a", "b", "c"]
    # Each shard records the class list, so a new list rewrites every shard from
    # its stored pixels; only the new files are decoded.
    added = second["refresh"]
    assert added["images_decoded"] == 5
    assert added["shards_reused"] == 0
    assert added["shards_written"] == len(first["shards"]) + 1
    removed = third["refresh"]
    assert removed["images_decoded"] == 0
    assert removed["samples_removed"] == 5
    assert removed["shards_reused"] == 0


@pytest.mark.parametrize("version", [2, 3])
def test_class_change_equals_scratch_build(class_history, version):
    store = class_history["store"]
    scratch = class_history["scratch"][version]
    ours, expected = read_manifest(store, version), read_manifest(scratch, 1)
    assert ours["classes"] == expected["classes"]
    assert ours["counts"] == expected["counts"]
    assert ours["normalization"] == expected["normalization"]
    arrays = histogram_arrays(store, ours)
    expected_arrays = histogram_arrays(scratch, expected)
    assert sorted(arrays) == sorted(expected_arrays)
    for split in expected_arrays:
        assert np.array_equal(arrays[split], expected_arrays[split]), split


# ------------------------------------------------------------------- resampling
@pytest.fixture(scope="module", params=["random_over", "smote"])
def resample_history(
    request, tmp_path_factory: pytest.TempPathFactory, prefect_harness
):
    """Build an imbalanced tree, refresh it unchanged, add files, and rebuild."""
    method = request.param
    base = tmp_path_factory.mktemp(f"resample-{method}")
    root = base / "images"
    write_image_tree(root, {"a": 60, "b": 25, "c": 12}, seed=4)
    resample = {"method": method, "seed": 7, "features": {"kind": "pixels"}}
    store = base / "store"
    config = make_config(root, store, resample=resample, **SETTINGS)
    run_flow(config)
    run_flow(config)
    write_image_tree(root, {"c": 6}, seed=5, prefix="extra")
    run_flow(config)
    scratch = base / "scratch"
    run_flow(make_config(root, scratch, resample=resample, **SETTINGS))
    return {"method": method, "store": store, "scratch": scratch}


def _synthetic(manifest: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (entry["path"], entry["sha256"])
        for entry in manifest["shards"]
        if entry["kind"] == "synthetic"
    ]


def test_resampling_repeats_on_unchanged_refresh(resample_history):
    store = resample_history["store"]
    first, second = read_manifest(store, 1), read_manifest(store, 2)
    assert second["refresh"]["images_decoded"] == 0
    assert (
        second["objects"]["lineage"]["sha256"] == first["objects"]["lineage"]["sha256"]
    )
    assert _synthetic(second) == _synthetic(first)
    if resample_history["method"] == "smote":
        assert _synthetic(first), "SMOTE wrote no synthetic shards"
    assert second["resample"] == first["resample"]
    assert second["counts"]["after"] == first["counts"]["after"]
    a = imgprep.open_version(store, 1).load("train")
    b = imgprep.open_version(store, 2).load("train")
    assert a.sample_ids == b.sample_ids
    assert a.origins == b.origins
    assert np.array_equal(a.pixels, b.pixels)


def _synthetic_rows(batch: Batch) -> tuple[list[str], np.ndarray]:
    """Return the synthetic rows' sample ids, sorted, and their pixels in that order."""
    rows = sorted(
        (sample_id, index)
        for index, (sample_id, origin) in enumerate(
            zip(batch.sample_ids, batch.origins, strict=True)
        )
        if origin == "synthetic"
    )
    return [sample_id for sample_id, _ in rows], batch.pixels[[i for _, i in rows]]


def _lineage_without_locations(store: Path, version: int) -> list[tuple]:
    handle = Store(store)
    rows = read_object_table(handle, load_manifest(handle, version), "lineage")
    return sorted(
        (
            row["sample_id"],
            row["origin"],
            row["label"],
            row["count"],
            row["weight"],
            tuple(row["parents"] or ()),
            row.get("coefficient"),
        )
        for row in rows
    )


def test_resampling_after_refresh_equals_rebuild(resample_history):
    store, scratch = resample_history["store"], resample_history["scratch"]
    refreshed = read_manifest(store, 3)
    rebuilt = read_manifest(scratch, 1)
    assert refreshed["refresh"]["images_decoded"] == 6
    assert refreshed["counts"] == rebuilt["counts"]
    assert _lineage_without_locations(store, 3) == _lineage_without_locations(
        scratch, 1
    )
    a = imgprep.open_version(store, 3).load("train")
    b = imgprep.open_version(scratch, 1).load("train")
    ids_a, pixels_a = _synthetic_rows(a)
    ids_b, pixels_b = _synthetic_rows(b)
    if resample_history["method"] == "smote":
        assert ids_a, "SMOTE added no synthetic rows to the training split"
    assert ids_a == ids_b
    assert np.array_equal(pixels_a, pixels_b)


# -------------------------------------------------------------- image settings
@pytest.fixture(scope="module")
def settings_history(tmp_path_factory: pytest.TempPathFactory, prefect_harness):
    """Refresh after a size change, then a colour-mode change, then rebuild a store
    with a damaged object; build each new setting from scratch too."""
    base = tmp_path_factory.mktemp("settings")
    root = base / "images"
    write_image_tree(root, {"a": 30, "b": 30}, seed=8)
    store = base / "store"
    resized = {**SETTINGS, "image": {"height": 24, "width": 20}}
    gray = {**SETTINGS, "image": {"height": 24, "width": 20, "color_mode": "L"}}
    run_flow(make_config(root, store, **SETTINGS))
    run_flow(make_config(root, store, **resized))
    run_flow(make_config(root, base / "scratch-resized", **resized))
    run_flow(make_config(root, store, **gray))
    run_flow(make_config(root, base / "scratch-gray", **gray))

    # Cut one shard object of version 3 short. A refresh rejects it,
    # and a rebuild on request writes it again.
    damaged = store / read_manifest(store, 3)["shards"][0]["path"]
    damaged.write_bytes(damaged.read_bytes()[:-10])
    damaged_report = imgprep_verify(store, 3)
    with pytest.raises(CorruptObjectError) as rejected:
        run_flow(make_config(root, store, **gray))
    run_flow(make_config(root, store, **gray), rebuild=True)
    return {
        "store": store,
        "scratch": {2: base / "scratch-resized", 3: base / "scratch-gray"},
        "damaged_report": damaged_report,
        "rejected": str(rejected.value),
        "damaged_path": damaged.relative_to(store).as_posix(),
    }


def imgprep_verify(store: Path, version: int) -> dict[str, Any]:
    from imgprep.audit import verify_version as audit_verify

    return audit_verify(Store(store), version)


def test_image_change_decodes_every_file(settings_history):
    store = settings_history["store"]
    for version in (2, 3):
        refresh = read_manifest(store, version)["refresh"]
        assert refresh["rebuild"].startswith("image settings changed"), version
        assert refresh["images_decoded"] == 60, version
        assert refresh["shards_reused"] == 0, version
        assert refresh["files_unchanged"] == 60, version
        assert refresh["samples_added"] == 0, version
        assert refresh["samples_removed"] == 0, version
    assert "image.height 16 -> 24" in read_manifest(store, 2)["refresh"]["rebuild"]
    assert (
        "image.color_mode 'RGB' -> 'L'"
        in (read_manifest(store, 3)["refresh"]["rebuild"])
    )


@pytest.mark.parametrize("version", [2, 3])
def test_image_change_equals_scratch_build(settings_history, version):
    store = settings_history["store"]
    scratch = settings_history["scratch"][version]
    ours, expected = read_manifest(store, version), read_manifest(scratch, 1)
    assert ours["pixel"] == expected["pixel"]
    assert ours["counts"] == expected["counts"]
    assert ours["normalization"] == expected["normalization"]
    assert sample_shard_sha256s(ours) == sample_shard_sha256s(expected)
    arrays = histogram_arrays(store, ours)
    expected_arrays = histogram_arrays(scratch, expected)
    assert sorted(arrays) == sorted(expected_arrays)
    for split in expected_arrays:
        assert np.array_equal(arrays[split], expected_arrays[split]), split


@pytest.mark.parametrize(("version", "shape"), [(2, (24, 20, 3)), (3, (24, 20, 1))])
def test_image_change_reader_shape(settings_history, version, shape):
    opened = imgprep.open_version(settings_history["store"], version)
    assert opened.shape == shape
    assert opened.load("train", resampled=False).pixels.shape[1:] == shape


def test_refresh_rejects_truncated_shard(settings_history):
    assert settings_history["damaged_report"]["status"] == "corrupt"
    message = settings_history["rejected"]
    assert settings_history["damaged_path"] in message
    assert "manifest records" in message


def test_rebuild_rewrites_damaged_object(settings_history):
    store = settings_history["store"]
    refresh = read_manifest(store, 4)["refresh"]
    assert refresh["rebuild"] == "rebuild requested"
    assert refresh["images_decoded"] == 60
    # Same sources and settings give the same objects, so the rebuild rewrote the
    # damaged object and version 3 verifies again.
    assert read_manifest(store, 4)["shards"] == read_manifest(store, 3)["shards"]
    assert verify_version(store, 3) == []
    assert verify_version(store, 4) == []


def test_foreign_pixel_shape_rejected(settings_history, tmp_path):
    copy = tmp_path / "store"
    shutil.copytree(settings_history["store"], copy)
    manifest_path = copy / "versions" / "000002" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["pixel"]["shape"] = [16, 16, 3]
    manifest_path.write_text(json.dumps(manifest))
    report = imgprep_verify(copy, 2)
    assert report["status"] == "corrupt"
    problems = [c for c in report["checks"] if c.get("column") == "pixels"]
    assert problems
    with pytest.raises(SchemaMismatchError, match=r"shape \[24, 20, 3\]"):
        imgprep.open_version(copy, 2).load("train", resampled=False)


def test_rebuild_reason_in_report_and_log(settings_history):
    from typer.testing import CliRunner

    from imgprep.cli import app

    store = settings_history["store"]
    report = (store / "versions" / "000002" / "report.html").read_text()
    assert "Rebuild: image settings changed" in report
    result = CliRunner().invoke(app, ["log", str(store)])
    assert result.exit_code == 0, result.output
    assert "rebuild requested" in result.output
    assert "image settings changed" in result.output


@pytest.fixture(scope="module")
def damaged_table_template(tmp_path_factory: pytest.TempPathFactory, prefect_harness):
    """A one-version store whose ``sources`` table object is cut short."""
    base = tmp_path_factory.mktemp("damaged-table")
    root = base / "images"
    write_image_tree(root, {"a": 10, "b": 10}, seed=9)
    store = base / "store"
    run_flow(make_config(root, store, **SETTINGS))
    table = read_manifest(store, 1)["objects"]["sources"]["path"]
    (store / table).write_bytes((store / table).read_bytes()[:-10])
    return root, store, table


@pytest.fixture()
def damaged_table_store(damaged_table_template, tmp_path):
    """A copy of the damaged store for one test, with the sources table's path."""
    root, template, table = damaged_table_template
    store = tmp_path / "store"
    shutil.copytree(template, store)
    return root, store, store / table


def test_damaged_sources_table_blocks_refresh(damaged_table_store):
    root, store, table = damaged_table_store
    with pytest.raises(CorruptObjectError, match=table.name):
        run_flow(make_config(root, store, **SETTINGS))
    assert not (store / "versions" / "000002").exists()


def test_cli_error_suggests_rebuild(damaged_table_store, tmp_path):
    from typer.testing import CliRunner

    from imgprep.cli import app

    root, store, _ = damaged_table_store
    config = tmp_path / "config.yaml"
    config.write_text(
        json.dumps(
            {
                "dataset": {"name": "test"},
                "source": {"root": str(root)},
                "runner": {"type": "thread", "workers": 2},
                **SETTINGS,
                "output": {**SETTINGS["output"], "store": str(store)},
            }
        )
    )
    result = CliRunner().invoke(app, ["run", "-c", str(config), "--no-progress"])
    assert result.exit_code == 1
    assert "run again with --rebuild" in result.output


def test_rebuild_skips_damaged_parent(damaged_table_store):
    root, store, _ = damaged_table_store
    result = run_flow(make_config(root, store, **SETTINGS), rebuild=True)
    manifest = read_manifest(store, result["version"])
    assert result["version"] == 2
    assert manifest["refresh"]["parent"] is None
    assert manifest["refresh"]["images_decoded"] == 20
    assert verify_version(store, result["version"]) == []
