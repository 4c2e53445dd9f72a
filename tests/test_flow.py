"""The prepare flow run for real, checked against values computed in the test."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

import imgprep
from imgprep.demo import DEMO_COUNTS
from imgprep.errors import SourceError
from tests.helpers import (
    folder_counts,
    make_config,
    read_manifest,
    reference_stats,
    run_flow,
)

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture(scope="module")
def demo_version(demo_tree: Path, tmp_path_factory: pytest.TempPathFactory):
    store = tmp_path_factory.mktemp("demo-store") / "store"
    config = make_config(
        demo_tree,
        store,
        image={"height": 32, "width": 32, "color_mode": "L"},
        resample={"method": "smote", "features": {"kind": "pixels"}},
        ingest={"chunk_size": 100},
        output={"rows_per_shard": 64},
    )
    result = run_flow(config)
    return config, store, result


def test_demo_class_counts_match_files(demo_version, demo_tree):
    config, store, _ = demo_version
    manifest = read_manifest(store)
    expected = folder_counts(demo_tree, config.split.salt, dict(config.split.fractions))
    assert manifest["classes"] == [str(d) for d in range(10)]
    for split in ("train", "val", "test"):
        counts = {
            name: n for name, n in manifest["counts"]["before"][split].items() if n
        }
        assert counts == dict(expected[split]), split
    total = sum(sum(c.values()) for c in expected.values())
    assert total == sum(DEMO_COUNTS.values())
    assert manifest["source"]["ingested"] == total
    assert manifest["source"]["quarantined"] == 0


def test_demo_statistics_match_numpy(demo_version):
    config, store, _ = demo_version
    manifest = read_manifest(store)
    version = imgprep.open_version(store)
    train = version.load("train", resampled=False)
    assert train.pixels.shape == (
        sum(manifest["counts"]["before"]["train"].values()),
        32,
        32,
        1,
    )
    reference = reference_stats(train.pixels)
    stats = manifest["normalization"]["stats"]
    assert np.allclose(stats["mean"], reference["mean"], rtol=1e-9, atol=0)
    assert np.allclose(stats["std"], reference["std"], rtol=1e-9, atol=0)
    assert stats["min"] == reference["min"].tolist()
    assert stats["max"] == reference["max"].tolist()
    assert stats["percentiles"]["1"] == reference["p1"].tolist()
    assert stats["percentiles"]["99"] == reference["p99"].tolist()
    params = manifest["normalization"]["params"]
    assert params["method"] == "zscore"
    assert np.allclose(params["offset"], reference["mean"], rtol=1e-9)
    assert manifest["normalization"]["fitted_on"] == "train"


def test_demo_shard_checksums(demo_version):
    _, store, _ = demo_version
    manifest = read_manifest(store)
    assert manifest["shards"], "the version lists no shards"
    for entry in [*manifest["shards"], *manifest["objects"].values()]:
        data = (store / entry["path"]).read_bytes()
        assert len(data) == entry["bytes"], entry["path"]
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], entry["path"]
    for entry in manifest["files"]:
        data = (store / "versions" / "000001" / entry["name"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], entry["name"]


def test_demo_reader_shapes_and_resampling(demo_version):
    _, store, _ = demo_version
    manifest = read_manifest(store)
    version = imgprep.open_version(store)
    train = version.load("train")
    after = manifest["counts"]["after"]["train"]
    assert len(train) == sum(after.values())
    assert train.pixels.shape[1:] == (32, 32, 1)
    assert train.pixels.dtype == np.uint8
    counts = np.bincount(train.labels, minlength=10)
    assert counts.tolist() == [after[str(d)] for d in range(10)]
    assert len(set(after.values())) == 1, "SMOTE auto should balance the classes"
    synthetic = [o for o in train.origins if o == "synthetic"]
    assert len(synthetic) == sum(after.values()) - sum(
        manifest["counts"]["before"]["train"].values()
    )
    normalized = version.load("val", normalize=True)
    assert normalized.pixels.dtype == np.float32
    assert np.isfinite(normalized.pixels).all()


def test_demo_batches_cover_split(demo_version):
    _, store, _ = demo_version
    version = imgprep.open_version(store)
    whole = version.load("train")
    sizes = [len(batch) for batch in version.batches("train", batch_size=100)]
    assert sum(sizes) == len(whole)
    assert all(size == 100 for size in sizes[:-1])


def test_same_input_gives_identical_shards(demo_version, demo_tree, tmp_path):
    config, store, _ = demo_version
    other = tmp_path / "second-store"
    second = config.model_copy(
        update={"output": config.output.model_copy(update={"store": str(other)})}
    )
    run_flow(second)
    first_manifest = read_manifest(store)
    second_manifest = read_manifest(other)
    first_shards = [(s["path"], s["sha256"]) for s in first_manifest["shards"]]
    second_shards = [(s["path"], s["sha256"]) for s in second_manifest["shards"]]
    assert first_shards == second_shards
    for key in (
        "objects",
        "counts",
        "normalization",
        "resample",
        "config_hash",
    ):
        assert first_manifest[key] == second_manifest[key], key
    # The report shows the creation time and flow run id, so only the other files
    # of the version are byte-identical.
    first_files = [f for f in first_manifest["files"] if f["name"] != "report.html"]
    second_files = [f for f in second_manifest["files"] if f["name"] != "report.html"]
    assert first_files == second_files


def test_statistics_do_not_depend_on_chunk_size(demo_version, demo_tree, tmp_path):
    config, store, _ = demo_version
    other = config.model_copy(
        update={
            "ingest": config.ingest.model_copy(update={"chunk_size": 7}),
            "output": config.output.model_copy(
                update={"store": str(tmp_path / "chunked"), "rows_per_shard": 13}
            ),
        }
    )
    run_flow(other)
    first = read_manifest(store)
    second = read_manifest(tmp_path / "chunked")
    assert first["normalization"] == second["normalization"]
    assert first["counts"] == second["counts"]
    assert len(second["shards"]) > len(first["shards"])


def test_empty_source_fails_after_scan(tmp_path):
    root = tmp_path / "images"
    (root / "cats").mkdir(parents=True)
    (root / "dogs").mkdir()
    (root / "dogs" / ".hidden.png").write_bytes(b"not looked at")
    store = tmp_path / "store"
    with pytest.raises(SourceError, match="no image files found in the source root"):
        run_flow(make_config(root, store))
    assert not (store / "LATEST").exists()
