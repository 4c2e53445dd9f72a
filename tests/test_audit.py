"""The audit commands (log, show, diff, verify, gc) against stores from real flow runs.

One module fixture writes three versions into a store: the demo tree, then the tree
with three files deleted and three new images added, then the same tree with another
resampling method. A second store is built from the changed tree with another
normalization method. Tests that damage or collect a store work on a copy.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from imgprep.audit import diff_refs, diff_samples, version_details
from imgprep.cli import app
from imgprep.errors import CorruptObjectError
from imgprep.reader import open_version
from imgprep.shards import schema_description
from imgprep.store import Store
from imgprep.version import load_manifest
from tests.helpers import file_sha256, make_config, read_manifest, run_flow, split_of

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

SETTINGS: dict[str, Any] = {
    "image": {"height": 16, "width": 16, "color_mode": "L"},
    "output": {"rows_per_shard": 64},
}


@dataclass
class History:
    """A store with three versions, a second store, and what changed on disk."""

    source: Path
    store: Path
    other_store: Path
    added: dict[str, dict[str, list[str]]]
    removed: dict[str, dict[str, list[str]]]
    files_in_first_run: int


def _group(entries: list[tuple[str, str, str]]) -> dict[str, dict[str, list[str]]]:
    """Group (split, class, sample id) as split -> class -> sorted ids."""
    grouped: dict[str, dict[str, list[str]]] = {}
    for split, label, sample_id in entries:
        grouped.setdefault(split, {}).setdefault(label, []).append(sample_id)
    return {
        split: {label: sorted(ids) for label, ids in classes.items()}
        for split, classes in grouped.items()
    }


def _write_noise_png(path: Path, seed: int) -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, (16, 16), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="PNG")


@pytest.fixture(scope="module")
def history(demo_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> History:
    base = tmp_path_factory.mktemp("audit")
    source = base / "source"
    shutil.copytree(demo_tree, source)
    store = base / "store"
    first = make_config(source, store, resample={"method": "smote"}, **SETTINGS)
    salt, fractions = first.split.salt, dict(first.split.fractions)
    files_in_first_run = sum(1 for p in source.rglob("*.png"))
    run_flow(first)

    removed = []
    for label, count in (("3", 2), ("0", 1)):
        for path in sorted((source / label).glob("*.png"))[:count]:
            sample_id = file_sha256(path)
            removed.append((split_of(sample_id, salt, fractions), label, sample_id))
            path.unlink()
    added = []
    for seed, label in enumerate(("5", "5", "9")):
        path = source / label / f"noise_{seed}.png"
        _write_noise_png(path, seed)
        sample_id = file_sha256(path)
        added.append((split_of(sample_id, salt, fractions), label, sample_id))
    run_flow(first)

    third = make_config(source, store, resample={"method": "random_over"}, **SETTINGS)
    run_flow(third)

    other_store = base / "other-store"
    other = make_config(
        source,
        other_store,
        resample={"method": "smote"},
        normalize={"method": "minmax"},
        **SETTINGS,
    )
    run_flow(other)
    return History(
        source=source,
        store=store,
        other_store=other_store,
        added=_group(added),
        removed=_group(removed),
        files_in_first_run=files_in_first_run,
    )


def invoke(*args: Any) -> Any:
    """Run the imgprep CLI in-process with a wide terminal, so paths are not folded."""
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "250"})


def invoke_json(*args: Any) -> tuple[int, Any]:
    result = invoke(*args, "--json")
    return result.exit_code, json.loads(result.stdout)


def copy_store(source: Path, destination: Path) -> Path:
    shutil.copytree(source, destination)
    return destination


def file_listing(root: Path) -> dict[str, int]:
    return {
        p.relative_to(root).as_posix(): p.stat().st_size
        for p in root.rglob("*")
        if p.is_file()
    }


# ---------------------------------------------------------------------- log
def test_log_lists_versions_newest_first(history: History) -> None:
    code, entries = invoke_json("log", history.store)
    assert code == 0
    assert [e["version"] for e in entries] == [3, 2, 1]
    assert [e["parent"] for e in entries] == [2, 1, None]
    assert [e["parent_present"] for e in entries] == [True, True, None]
    assert all(e["flow_run_id"] for e in entries)
    assert len({e["flow_run_id"] for e in entries}) == 3
    by_version = {e["version"]: e for e in entries}
    for number, entry in by_version.items():
        manifest = read_manifest(history.store, number)
        assert entry["samples_before"] == manifest["counts"]["totals_before"]
        assert entry["samples_after"] == manifest["counts"]["totals_after"]
        assert entry["config_hash"] == manifest["config_hash"]
        assert entry["quarantined"] == 0
    assert by_version[1]["refresh"]["files_new"] == history.files_in_first_run
    assert by_version[1]["refresh"]["images_decoded"] == history.files_in_first_run
    assert by_version[2]["refresh"]["files_new"] == 3
    assert by_version[2]["refresh"]["files_removed"] == 3
    assert by_version[2]["refresh"]["images_decoded"] == 3
    assert by_version[2]["refresh"]["shards_written"] >= 1
    assert by_version[3]["refresh"]["images_decoded"] == 0
    assert by_version[3]["refresh"]["shards_written"] == 0
    assert by_version[1]["config_hash"] == by_version[2]["config_hash"]
    assert by_version[2]["config_hash"] != by_version[3]["config_hash"]


def test_log_reverse_and_table(history: History) -> None:
    code, entries = invoke_json("log", history.store, "--reverse")
    assert code == 0
    assert [e["version"] for e in entries] == [1, 2, 3]
    result = invoke("log", history.store)
    assert result.exit_code == 0
    assert "newest first" in result.stdout
    assert "Version 3 (parent 2)" in result.stdout
    assert "Version 1 (no parent)" in result.stdout
    for entry in entries:
        assert entry["config_hash"][:12] in result.stdout


def test_log_missing_store_fails(tmp_path: Path) -> None:
    result = invoke("log", tmp_path / "nowhere")
    assert result.exit_code == 2
    assert "not found" in result.stderr


# --------------------------------------------------------------------- show
def test_show_prints_refresh_resampling_lineage(history: History) -> None:
    manifest = load_manifest(Store(history.store), 2)
    result = invoke("show", f"{history.store}@2")
    assert result.exit_code == 0, result.output
    assert "Refresh counters" in result.stdout
    assert "files_removed" in result.stdout
    assert "Quarantined: none" in result.stdout
    assert "Resampling of the training split: smote" in result.stdout
    assert manifest.objects["lineage"].path in result.stdout
    details = version_details(manifest, Store(history.store))
    assert details["refresh"]["files_new"] == 3
    per_class = {item["class"]: item for item in details["resampling"]["per_class"]}
    assert sorted(per_class) == sorted(manifest.classes)
    lowered = [item for item in per_class.values() if item["note"]]
    assert lowered, "the smallest classes should have k_neighbors lowered"
    for item in lowered:
        assert item["method"] == "smote"
        assert item["k_neighbors"] < 5
        assert f"lowered from 5 to {item['k_neighbors']}" in item["note"]
    assert details["lineage"]["object"]["path"] == manifest.objects["lineage"].path


# --------------------------------------------------------------------- diff
def test_diff_reports_added_and_removed_ids(history: History) -> None:
    code, result = invoke_json("diff", f"{history.store}@1", f"{history.store}@2")
    assert code == 0
    samples = result["samples"]
    assert samples["added"] == history.added
    assert samples["removed"] == history.removed
    assert samples["moved"] == []
    assert samples["totals"]["added"] == 3
    assert samples["totals"]["removed"] == 3
    assert result["config"] == []
    first = read_manifest(history.store, 1)
    second = read_manifest(history.store, 2)
    shards = result["shards"]
    a_paths = {s["path"] for s in first["shards"]}
    b_paths = {s["path"] for s in second["shards"]}
    shared = {s["path"] for s in shards["shared"]["shards"]}
    assert shared == a_paths & b_paths
    assert {s["path"] for s in shards["only_a"]["shards"]} == a_paths - b_paths
    assert {s["path"] for s in shards["only_b"]["shards"]} == b_paths - a_paths
    assert shards["shared"]["count"] >= 1
    before = result["counts"]["before"]
    for split, classes in history.added.items():
        for label, ids in classes.items():
            pair = before[split][label]
            removed = len(history.removed.get(split, {}).get(label, []))
            assert pair["change"] == len(ids) - removed, (split, label)


def test_diff_lists_ids_in_text(history: History) -> None:
    result = invoke("diff", f"{history.store}@1", f"{history.store}@2", "--ids")
    assert result.exit_code == 0, result.output
    lines = set(result.stdout.splitlines())
    for sign, grouped in (("+", history.added), ("-", history.removed)):
        for split, classes in grouped.items():
            for label, ids in classes.items():
                for sample_id in ids:
                    assert f"{sign} {split} {label} {sample_id}" in lines
    assert "Config: no key changed" in result.stdout


def test_diff_reports_config_change(history: History) -> None:
    code, result = invoke_json("diff", f"{history.store}@2", f"{history.store}@3")
    assert code == 0
    assert result["config"] == [
        {
            "key": "resample.method",
            "status": "changed",
            "a": "smote",
            "b": "random_over",
        }
    ]
    assert result["samples"]["totals"]["added"] == 0
    assert result["samples"]["totals"]["removed"] == 0
    second = read_manifest(history.store, 2)
    samples_shards = {s["path"] for s in second["shards"] if s["kind"] == "samples"}
    synthetic = {s["path"] for s in second["shards"] if s["kind"] == "synthetic"}
    assert {s["path"] for s in result["shards"]["shared"]["shards"]} == samples_shards
    assert {s["path"] for s in result["shards"]["only_a"]["shards"]} == synthetic
    assert result["shards"]["only_b"]["count"] == 0
    text = invoke("diff", f"{history.store}@2", f"{history.store}@3")
    assert "resample.method" in text.stdout
    assert '"smote"' in text.stdout
    assert '"random_over"' in text.stdout


def test_diff_between_two_stores(history: History) -> None:
    code, result = invoke_json(
        "diff", f"{history.store}@1", f"{history.other_store}@latest"
    )
    assert code == 0
    assert result["a"]["store"] == str(history.store)
    assert result["b"]["store"] == str(history.other_store)
    assert result["samples"]["added"] == history.added
    assert result["samples"]["removed"] == history.removed
    assert [change["key"] for change in result["config"]] == ["normalize.method"]
    assert result["normalization"]["method"] == {"a": "zscore", "b": "minmax"}
    channel = result["normalization"]["channels"][0]
    assert channel["offset"]["a"] != channel["offset"]["b"]
    assert channel["mean"]["change"] is not None
    direct = diff_refs(Store(history.store), 1, Store(history.other_store), None)
    assert direct == result


# ------------------------------------------------------------------- verify
def test_verify_passes_on_clean_store(history: History) -> None:
    code, report = invoke_json("verify", history.store)
    assert code == 0
    assert report["passed"] is True
    assert [v["version"] for v in report["versions"]] == [1, 2, 3]
    assert all(v["status"] == "ok" for v in report["versions"])
    assert report["counts"]["failed"] == 0
    assert report["counts"]["missing"] == 0
    assert report["temp_files"] == []
    assert report["latest"]["status"] == "ok"
    result = invoke("verify", f"{history.store}@2", "--quiet")
    assert result.exit_code == 0
    assert "verify passed: 1 version," in result.stdout


def test_verify_and_reader_catch_damage(history: History, tmp_path: Path) -> None:
    store = copy_store(history.store, tmp_path / "store")
    manifest = load_manifest(Store(store), 3)
    train_shards = [
        s for s in manifest.shards if s.kind == "samples" and "train" in s.class_counts
    ]
    flipped, truncated = train_shards[0], train_shards[1]
    deleted = manifest.objects["lineage"]

    # A shard cut in half, as a crash in the middle of a write leaves it.
    data = (store / truncated.path).read_bytes()
    (store / truncated.path).write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptObjectError) as caught:
        open_version(store).load("train", resampled=False)
    assert caught.value.path == truncated.path
    assert f"has {len(data) // 2} bytes" in str(caught.value)
    with pytest.raises(CorruptObjectError) as caught:
        list(open_version(store).batches("train", batch_size=8, resampled=False))
    assert caught.value.path == truncated.path

    # One flipped byte in the middle of another shard keeps its size.
    data = bytearray((store / flipped.path).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (store / flipped.path).write_bytes(bytes(data))
    with pytest.raises(CorruptObjectError) as caught:
        open_version(store).load("train", resampled=False)
    assert caught.value.path == flipped.path
    assert "sha256" in str(caught.value)

    (store / deleted.path).unlink()
    with pytest.raises(CorruptObjectError) as caught:
        open_version(store).load("train")
    assert caught.value.path == deleted.path
    assert "missing" in str(caught.value)

    (store / "tmp" / "x.tmp").write_bytes(b"partial")
    code, report = invoke_json("verify", store)
    assert code == 1
    assert report["passed"] is False
    assert report["temp_files"] == [{"path": "tmp/x.tmp", "bytes": 7}]
    expected = {
        truncated.path: "failed",
        flipped.path: "failed",
        deleted.path: "missing",
    }
    seen: dict[str, dict[str, Any]] = {}
    for entry in report["versions"]:
        for check in entry["checks"]:
            assert check["status"] == expected.get(check["path"], "ok"), check
            seen[check["path"]] = check
        damaged = any(check["path"] in expected for check in entry["checks"])
        assert entry["status"] == ("corrupt" if damaged else "ok")
    assert set(expected) <= set(seen)
    cut = seen[truncated.path]
    assert "size" in cut["problems"]
    assert "sha256" in cut["problems"]
    assert "parquet" in cut["problems"]
    assert cut["expected"]["bytes"] == truncated.bytes
    assert cut["actual"]["bytes"] == truncated.bytes // 2
    assert seen[flipped.path]["problems"] == ["sha256"]
    assert seen[flipped.path]["actual"]["bytes"] == flipped.bytes
    assert seen[flipped.path]["actual"]["sha256"] != flipped.sha256

    text = invoke("verify", store, "--quiet")
    assert text.exit_code == 1
    failed_lines = [line for line in text.stdout.splitlines() if "FAILED" in line]
    assert any(truncated.path in line for line in failed_lines)
    assert any(flipped.path in line for line in failed_lines)
    assert any(f"missing {deleted.path}" in line for line in failed_lines)
    assert "WARNING stray temporary file tmp/x.tmp" in text.stdout


def test_verify_debris_warns_unless_strict(history: History, tmp_path: Path) -> None:
    store = copy_store(history.store, tmp_path / "store")
    (store / "tmp" / "x.tmp").write_bytes(b"partial")
    (store / "versions" / "000004").mkdir()
    (store / "LATEST").write_text("2\n")
    (store / "cache" / "chunks").mkdir(parents=True, exist_ok=True)
    (store / "cache" / "chunks" / "abc.json").write_text("{}")
    code, report = invoke_json("verify", store)
    assert code == 0
    assert report["ok"] is True
    assert report["incomplete_versions"] == [{"path": "versions/000004", "bytes": 0}]
    assert report["latest"] == {"pointer": 2, "newest": 3, "status": "behind"}
    assert report["chunk_cache"] == [{"path": "cache/chunks/abc.json", "bytes": 2}]
    assert len(report["warnings"]) == 4
    strict = invoke("verify", store, "--strict", "--quiet")
    assert strict.exit_code == 1
    assert "verify FAILED" in strict.stdout


@pytest.mark.shared
def test_verify_foreign_manifest_with_cut_shard(
    history: History, cases_dir: Path, tmp_path: Path
) -> None:
    case = cases_dir / "C22-manifest-checksum"
    expected = json.loads((case / "expected.json").read_text())
    assert "size and sha256" in expected["verify"]
    foreign = json.loads((case / "v0001" / "manifest.json").read_text())
    store = tmp_path / "store"
    base = read_manifest(history.store, 1)

    # The version's tables and files come from a real run. Only the shards are the
    # foreign ones, stored under the sha256 and size that their manifest records.
    (store / "versions" / "000001").mkdir(parents=True)
    (store / "tmp").mkdir()
    for entry in base["objects"].values():
        target = store / entry["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(history.store / entry["path"], target)
    for entry in base["files"]:
        shutil.copyfile(
            history.store / "versions" / "000001" / entry["name"],
            store / "versions" / "000001" / entry["name"],
        )
    # Both foreign entries record the same sha256: shard 1 was meant to be a copy
    # of shard 0. A content-addressed store keeps one file per address, so the cut
    # copy gets the same address with the extension "pq" to have a file of its own.
    # The foreign manifest has no splits: shard 0 is given to val and shard 1 to
    # train, so that reading the training split reaches the cut shard.
    shards = []
    for item, ext, split in zip(
        foreign["shards"], ("parquet", "pq"), ("val", "train"), strict=True
    ):
        sha = item["sha256"]
        path = f"objects/{sha[:2]}/{sha}.{ext}"
        (store / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(case / "v0001" / item["file"], store / path)
        shards.append(
            {
                "path": path,
                "sha256": sha,
                "bytes": item["bytes"],
                "kind": "samples",
                "format": "parquet",
                "rows": item["rows"],
                "class_counts": {split: {base["classes"][0]: item["rows"]}},
            }
        )
    manifest = dict(base)
    manifest["shards"] = shards
    manifest["shard_schema"] = schema_description(
        pq.read_schema(case / "v0001" / "shard-00000.parquet")
    )
    (store / "versions" / "000001" / "manifest.json").write_text(
        json.dumps(manifest, indent=2, sort_keys=True)
    )
    (store / "LATEST").write_text("1\n")
    shutil.copyfile(
        case / "v0001" / "shard-00002.parquet.tmp",
        store / "tmp" / "shard-00002.parquet.tmp",
    )

    code, report = invoke_json("verify", store)
    assert code == 1
    (version,) = report["versions"]
    assert version["status"] == "corrupt"
    checks = {check["path"]: check for check in version["checks"]}
    first, second = checks[shards[0]["path"]], checks[shards[1]["path"]]
    assert first["status"] == "ok"
    assert second["status"] == "failed"
    assert "size" in second["problems"]
    assert "sha256" in second["problems"]
    assert "parquet" in second["problems"]
    assert "footer" in second["detail"]
    assert second["expected"]["bytes"] == 1255
    assert (
        second["actual"]["bytes"]
        == (case / "v0001" / "shard-00001.parquet").stat().st_size
    )
    assert (
        second["actual"]["sha256"]
        == hashlib.sha256(
            (case / "v0001" / "shard-00001.parquet").read_bytes()
        ).hexdigest()
    )
    others = [c for c in version["checks"] if c["kind"] != "shard"]
    assert all(c["status"] == "ok" for c in others)
    assert report["temp_files"] == [
        {"path": "tmp/shard-00002.parquet.tmp", "bytes": 100}
    ]
    with pytest.raises(CorruptObjectError) as caught:
        open_version(store).load("train")
    assert caught.value.path == shards[1]["path"]


# ----------------------------------------------------------------------- gc
def test_gc_dry_run_removes_nothing(history: History, tmp_path: Path) -> None:
    store = copy_store(history.store, tmp_path / "store")
    before = file_listing(store)
    code, plan = invoke_json("gc", store, "--keep", "1")
    assert code == 0
    assert plan["applied"] is False
    assert [e["version"] for e in plan["removed_versions"]] == [1, 2]
    assert plan["objects"], "older versions have objects only they reference"
    assert plan["bytes_freed"] > 0
    assert file_listing(store) == before
    text = invoke("gc", store, "--keep", "1")
    assert "run again with --yes" in text.stdout
    assert file_listing(store) == before


def test_gc_keeps_latest_and_frees_objects(history: History, tmp_path: Path) -> None:
    store = copy_store(history.store, tmp_path / "store")
    latest = read_manifest(store, 3)
    referenced = {o["path"] for o in [*latest["shards"], *latest["objects"].values()]}
    (store / "tmp" / "x.tmp").write_bytes(b"partial")
    (store / "versions" / "000004").mkdir()
    (store / "cache" / "chunks").mkdir(parents=True, exist_ok=True)
    (store / "cache" / "chunks" / "abc.json").write_text("{}")
    (store / "LATEST").write_text("2\n")
    _, dry = invoke_json("gc", store, "--keep", "1")

    code, plan = invoke_json("gc", store, "--keep", "1", "--yes")
    assert code == 0
    assert plan["applied"] is True
    assert plan["objects"] == dry["objects"]
    assert plan["latest_pointer"] == {"from": 2, "to": 3}
    assert Store(store).versions() == [3]
    on_disk = {p.relative_to(store).as_posix() for p in store.glob("objects/*/*")}
    assert on_disk == referenced
    assert list((store / "tmp").iterdir()) == []
    assert not (store / "versions" / "000004").exists()
    assert not (store / "cache" / "chunks" / "abc.json").exists()
    assert (store / "LATEST").read_text().strip() == "3"

    assert invoke("verify", store, "--strict").exit_code == 0
    train = open_version(store).load("train")
    assert len(train) == sum(latest["counts"]["after"]["train"].values())


def test_gc_keep_zero_fails(history: History, tmp_path: Path) -> None:
    store = copy_store(history.store, tmp_path / "store")
    result = invoke("gc", store, "--keep", "0", "--yes")
    assert result.exit_code == 2
    assert "--keep is 0" in result.stderr
    assert "at least 1" in result.stderr
    assert Store(store).versions() == [1, 2, 3]


def test_gc_refuses_unreadable_kept_manifest(history: History, tmp_path: Path) -> None:
    store = copy_store(history.store, tmp_path / "store")
    (store / "versions" / "000003" / "manifest.json").write_text("{not json")
    before = file_listing(store)
    result = invoke("gc", store, "--keep", "1", "--yes")
    assert result.exit_code == 1
    assert "version 3 is kept but its manifest cannot be read" in result.stderr
    assert file_listing(store) == before


def test_gc_fails_while_writer_holds_lock(history: History, tmp_path: Path) -> None:
    store = copy_store(history.store, tmp_path / "store")
    lock_taken, release_lock = threading.Event(), threading.Event()

    def hold_lock() -> None:
        with Store(store).lock(timeout_s=10):
            lock_taken.set()
            release_lock.wait(30)

    holder = threading.Thread(target=hold_lock)
    holder.start()
    try:
        assert lock_taken.wait(10)
        result = invoke("gc", store, "--keep", "1", "--yes", "--lock-timeout", "0.5")
    finally:
        release_lock.set()
        holder.join()
    assert result.exit_code == 1
    assert "locked by another writer" in result.stderr
    assert Store(store).versions() == [1, 2, 3]


def test_gc_waits_for_writer_lock(history: History, tmp_path: Path) -> None:
    store = copy_store(history.store, tmp_path / "store")
    outcome: dict[str, Any] = {}

    def collect() -> None:
        outcome["result"] = invoke(
            "gc", store, "--keep", "1", "--yes", "--lock-timeout", "60"
        )

    worker = threading.Thread(target=collect)
    with Store(store).lock(timeout_s=10):
        worker.start()
        worker.join(1.0)
        # While the lock is held, gc must still be waiting and must not have
        # deleted anything.
        assert worker.is_alive()
        assert Store(store).versions() == [1, 2, 3]
    worker.join(60)
    assert not worker.is_alive()
    assert outcome["result"].exit_code == 0, outcome["result"].output
    assert Store(store).versions() == [3]


def _row(sample_id: str, split: str, label: str) -> dict[str, str]:
    return {
        "status": "ingested",
        "sample_id": sample_id,
        "split": split,
        "label": label,
    }


def test_diff_samples_duplicate_added_elsewhere():
    # A byte copy of a class-8 file added under class 9 shares the sample id.
    a = [_row("s1", "train", "8"), _row("s2", "val", "0")]
    b = [*a, _row("s1", "val", "9")]
    result = diff_samples(a, b)
    assert result["added"] == {"val": {"9": ["s1"]}}
    assert result["removed"] == {}
    assert result["moved"] == []
    assert result["totals"]["unchanged"] == 2
    assert result["totals"]["b"] == 3


def test_diff_samples_moved_and_removed():
    a = [_row("s1", "train", "a"), _row("s1", "train", "a"), _row("s2", "test", "b")]
    b = [_row("s1", "val", "a")]
    result = diff_samples(a, b)
    assert result["moved"] == [
        {
            "sample_id": "s1",
            "a": {"split": "train", "class": "a"},
            "b": {"split": "val", "class": "a"},
        }
    ]
    assert result["removed"] == {"train": {"a": ["s1"]}, "test": {"b": ["s2"]}}
    assert result["added"] == {}
    assert result["totals"]["unchanged"] == 0


def test_normalization_diff_matches_channels_by_name():
    from imgprep.audit import _normalization_changes

    gray = {
        "normalization": {
            "params": {"method": "zscore", "offset": [80.0], "scale": [90.0]},
            "stats": {"mean": [80.0], "std": [90.0]},
        }
    }
    rgb = {
        "normalization": {
            "params": {
                "method": "zscore",
                "offset": [1.0, 2.0, 3.0],
                "scale": [4.0] * 3,
            },
            "stats": {"mean": [1.0, 2.0, 3.0], "std": [4.0] * 3},
        }
    }
    rows = _normalization_changes(gray, rgb)["channels"]
    assert [row["channel"] for row in rows] == ["L", "R", "G", "B"]
    assert rows[0]["mean"] == {"a": 80.0, "b": None, "change": None}
    assert rows[1]["mean"] == {"a": None, "b": 1.0, "change": None}
    same = _normalization_changes(rgb, rgb)["channels"]
    assert [row["mean"]["change"] for row in same] == [0.0, 0.0, 0.0]
