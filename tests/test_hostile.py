"""Hostile input: every odd file has an outcome, roots are walls, faults lose nothing.

Flow-level checks run the real prepare flow on small files and read the manifest,
the version's sources table and its shards. Core-level checks call the scan,
ingest and store functions in the order the flow does, changing the tree between
calls, so races such as a file replaced after the scan are deterministic.
Subprocess checks run a whole flow under a file-size limit, or the ingest core as
an unprivileged user.

Decode-level fuzzing lives in test_fuzz.py. test_cases.py and test_datasets.py
cover the fixture files at flow level, and test_audit.py covers damaged objects.
"""

from __future__ import annotations

import ast
import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

import imgprep
from imgprep.assemble import assemble_samples, plan_ingest
from imgprep.audit import verify_store, verify_version
from imgprep.config import PrepareConfig, SourceSettings
from imgprep.errors import CorruptObjectError, SchemaMismatchError, SourceError
from imgprep.executors import process_pool, run_chunk_work
from imgprep.export import export_version
from imgprep.ingest import ingest_files
from imgprep.reasons import REASON_CODES, STATUSES, reason_codes_markdown
from imgprep.scan import Candidate, ScanResult, _walk_files, scan_source
from imgprep.store import Store
from imgprep.version import load_manifest, read_object_table
from tests.helpers import make_config, run_flow
from tests.test_decode import cmyk_profile_to_lab

# Matplotlib warns when its default font lacks a glyph of a class name (control
# characters, CJK, emoji). The chart is still written.
pytestmark = pytest.mark.filterwarnings("ignore:Glyph .* missing from font:UserWarning")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
RUN_SCRIPT = PROJECT_ROOT / "tests" / "scripts" / "run_prepare.py"
README = PROJECT_ROOT / "README.md"
README_HEADING = "## What imgprep does with bad input"
TRAIN_ONLY = {"fractions": {"train": 1.0, "val": 0.0, "test": 0.0}}
SIZE = 16
SUBPROCESS_TIMEOUT_S = 180

RED = (255, 0, 0)
GREEN = (0, 255, 0)
BLUE = (0, 0, 255)


# ---------------------------------------------------------------------------
# Helpers


def write_png(path: Path, colour: tuple[int, int, int] = RED, side: int = 20) -> Path:
    """Write a solid-colour RGB PNG, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (side, side), colour).save(path, "PNG")
    return path


def noise_png(seed: int, side: int = 20) -> bytes:
    """Return the bytes of a random RGB PNG, different for each seed."""
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def slow_png() -> bytes:
    """Return a 62 KB PNG of 8000x8000 pixels, which takes tenths of a second."""
    buffer = io.BytesIO()
    Image.new("L", (8000, 8000)).save(buffer, "PNG")
    return buffer.getvalue()


def config_for(root: Path, store: Path, **sections: Any) -> PrepareConfig:
    sections.setdefault("image", {"height": SIZE, "width": SIZE})
    sections.setdefault("split", TRAIN_ONLY)
    sections.setdefault("ingest", {})
    sections["ingest"].setdefault("max_rejected_fraction", 1.0)
    return make_config(root, store, **sections)


class Version:
    """A committed version: manifest, sources rows (a list, keys may repeat)."""

    def __init__(self, store: Path) -> None:
        self.store = store
        raw = (store / "LATEST").read_text().strip()
        manifest_path = store / "versions" / f"{int(raw):06d}" / "manifest.json"
        # Strict UTF-8 and JSON: a lone surrogate or a bad escape fails here.
        self.manifest = json.loads(manifest_path.read_bytes().decode("utf-8"))
        handle = Store(store)
        self.rows = read_object_table(handle, load_manifest(handle), "sources")

    def row(self, key: str) -> dict[str, Any]:
        matches = [row for row in self.rows if row["key"] == key]
        assert len(matches) == 1, f"{key!r}: {len(matches)} rows; keys {self.keys()}"
        return matches[0]

    def keys(self) -> list[str]:
        return sorted(row["key"] for row in self.rows)

    def outcome(self, key: str) -> tuple[str, str | None]:
        row = self.row(key)
        return row["status"], row["reason"]

    def shard_table(self) -> pa.Table:
        tables = [
            pq.read_table(self.store / entry["path"])
            for entry in self.manifest["shards"]
            if entry["kind"] == "samples"
        ]
        return pa.concat_tables(tables)


def prepare(root: Path, store: Path, **sections: Any) -> Version:
    run_flow(config_for(root, store, **sections))
    return Version(store)


def plan_candidates(root: Path) -> ScanResult:
    return scan_source(SourceSettings(root=str(root)))


def ingest(
    items: list[Candidate],
    root: Path,
    store: Path,
    classes: list[str],
    **sections: Any,
):
    """Run the ingest core on ``items`` without the chunk cache."""
    config = config_for(root, store, **sections).resolved()
    Store(store).ensure()
    return ingest_files(
        items,
        root=str(root),
        config=config,
        class_names=classes,
        store_root=str(store),
        use_cache=False,
    )


def quarantine_by_key(result) -> dict[str, dict[str, Any]]:
    return {row["key"]: row for row in result.quarantined}


# ---------------------------------------------------------------------------
# Decode time limit in every runner


@pytest.fixture(scope="module")
def slow_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A class folder with one slow PNG and two fast ones."""
    root = tmp_path_factory.mktemp("slow") / "root"
    (root / "x").mkdir(parents=True)
    (root / "x" / "slow.png").write_bytes(slow_png())
    (root / "x" / "fast1.png").write_bytes(noise_png(1))
    (root / "x" / "fast2.png").write_bytes(noise_png(2))
    return root


TIMEOUT = {"decode_timeout_s": 0.05}


def check_timeout_outcome(result) -> None:
    quarantined = quarantine_by_key(result)
    assert set(quarantined) == {"x/slow.png"}, quarantined
    assert quarantined["x/slow.png"]["reason"] == "decode_timeout"
    assert "ingest.decode_timeout_s" in quarantined["x/slow.png"]["message"]
    assert sorted(record["key"] for record in result.records) == [
        "x/fast1.png",
        "x/fast2.png",
    ]


def test_timeout_in_main_thread(slow_tree: Path, tmp_path: Path):
    scan = plan_candidates(slow_tree)
    result = ingest(scan.candidates, slow_tree, tmp_path / "s", ["x"], ingest=TIMEOUT)
    check_timeout_outcome(result)


def test_timeout_in_worker_thread(slow_tree: Path, tmp_path: Path):
    scan = plan_candidates(slow_tree)
    with ThreadPoolExecutor(max_workers=1) as pool:
        result = pool.submit(
            ingest, scan.candidates, slow_tree, tmp_path / "s", ["x"], ingest=TIMEOUT
        ).result()
    check_timeout_outcome(result)


def test_timeout_in_process_pool(slow_tree: Path, tmp_path: Path):
    # The process runner: a Prefect thread hands the chunk to a pool worker,
    # whose main thread runs ingest_files.
    scan = plan_candidates(slow_tree)
    config = config_for(slow_tree, tmp_path / "s", ingest=TIMEOUT).resolved()
    Store(tmp_path / "s").ensure()
    with process_pool(1):
        with ThreadPoolExecutor(max_workers=1) as prefect_like:
            result = prefect_like.submit(
                run_chunk_work,
                ingest_files,
                items=scan.candidates,
                root=str(slow_tree),
                config=config,
                class_names=["x"],
                store_root=str(tmp_path / "s"),
                use_cache=False,
            ).result()
    check_timeout_outcome(result)


def test_timeout_in_dask_worker(slow_tree: Path, tmp_path: Path):
    distributed = pytest.importorskip("distributed")
    scan = plan_candidates(slow_tree)
    config = config_for(slow_tree, tmp_path / "s", ingest=TIMEOUT).resolved()
    Store(tmp_path / "s").ensure()
    with (
        distributed.LocalCluster(
            n_workers=1,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        future = client.submit(
            ingest_files,
            scan.candidates,
            root=str(slow_tree),
            config=config,
            class_names=["x"],
            store_root=str(tmp_path / "s"),
            use_cache=False,
            pure=False,
        )
        result = future.result(timeout=120)
    check_timeout_outcome(result)


@pytest.mark.usefixtures("prefect_harness")
def test_timeout_flow_thread_runner(slow_tree: Path, tmp_path: Path, data_dir_or_none):
    root = tmp_path / "root"
    shutil.copytree(slow_tree, root)
    blp = None
    if data_dir_or_none is not None:
        # A fuzzer-found BLP file whose decode allocates a huge image.
        name = "timeout-8073b430977660cdd48d96f6406ddfd4114e69c7.blp"
        blp = data_dir_or_none / "pillow-test-images" / name
        shutil.copyfile(blp, root / "x" / name)
    version = prepare(root, tmp_path / "store", ingest=TIMEOUT)
    assert version.outcome("x/slow.png") == ("quarantined", "decode_timeout")
    if blp is not None:
        assert version.outcome(f"x/{blp.name}") == ("quarantined", "decode_timeout")
    assert version.outcome("x/fast1.png") == ("ingested", None)
    reasons = version.manifest["source"]["quarantined_by_reason"]
    assert reasons == {"decode_timeout": 2 if blp else 1}


@pytest.fixture(scope="session")
def data_dir_or_none() -> Path | None:
    """Return ../shared/data, or None when this checkout has no fixture folder."""
    folder = PROJECT_ROOT.parent / "shared" / "data"
    return folder if (folder / "pillow-test-images").is_dir() else None


# ---------------------------------------------------------------------------
# Multi-frame files and CMYK through the flow

FRAME_COLOURS = (RED, GREEN, BLUE)
FIXTURE_FRAMES = (
    "iss634.gif",
    "iss634.apng",
    "iss634.webp",
    "multipage.tiff",
    "multipage-mmap.tiff",
    "frozenpond.mpo",
)


def write_multi_frame(path: Path, image_format: str, **params: Any) -> None:
    frames = [Image.new("RGB", (24, 24), colour) for colour in FRAME_COLOURS]
    if image_format == "GIF":
        frames = [frame.convert("P") for frame in frames]
    path.parent.mkdir(parents=True, exist_ok=True)
    frames[0].save(
        path, image_format, save_all=True, append_images=frames[1:], **params
    )


@pytest.fixture(scope="module")
def formats_version(
    tmp_path_factory: pytest.TempPathFactory, prefect_harness, data_dir_or_none
) -> Version:
    """One version with multi-frame files of every format and CMYK JPEGs."""
    base = tmp_path_factory.mktemp("formats")
    root = base / "root"
    frames = root / "frames"
    write_multi_frame(frames / "three.gif", "GIF", duration=100, loop=0)
    write_multi_frame(frames / "three.tiff", "TIFF")
    write_multi_frame(frames / "three.webp", "WEBP", lossless=True)
    write_multi_frame(frames / "three.png", "PNG")
    write_multi_frame(frames / "three.mpo", "MPO", quality=95)

    cmyk = root / "cmyk"
    cmyk.mkdir()
    # Through the profile every CMYK value maps to Lab (87.7, -86.2, 83.2), sRGB
    # green; Pillow's naive conversion would give white for CMYK (0, 0, 0, 0).
    image = Image.new("CMYK", (24, 24), (0, 0, 0, 0))
    image.save(
        cmyk / "with_profile.jpg",
        "JPEG",
        quality=95,
        icc_profile=cmyk_profile_to_lab((87.7, -86.2, 83.2)),
    )
    Image.new("CMYK", (24, 24), (0, 255, 255, 0)).save(
        cmyk / "without_profile.jpg", "JPEG", quality=95
    )
    if data_dir_or_none is not None:
        pillow = data_dir_or_none / "pillow-test-images"
        for name in FIXTURE_FRAMES:
            shutil.copyfile(pillow / name, frames / f"fixture-{name}")
        shutil.copyfile(pillow / "pil_sample_cmyk.jpg", cmyk / "pil_sample_cmyk.jpg")
    return prepare(
        root, base / "store", image={"height": SIZE, "width": SIZE, "jpeg_draft": False}
    )


def stored_pixels(version: Version) -> dict[str, np.ndarray]:
    table = version.shard_table()
    pixels = table.column("pixels").to_pylist()
    keys = table.column("source_path").to_pylist()
    return {
        key: np.frombuffer(raw, np.uint8).reshape(SIZE, SIZE, 3)
        for key, raw in zip(keys, pixels, strict=True)
    }


@pytest.mark.parametrize("name", ["gif", "tiff", "webp", "png", "mpo"])
def test_multi_frame_first_frame(formats_version: Version, name: str):
    key = f"frames/three.{name}"
    row = formats_version.row(key)
    assert row["status"] == "ingested", row
    assert row["frames"] == 3, row
    pixels = stored_pixels(formats_version)[key].astype(int)
    # MPO frames are JPEGs, so the first frame is red within JPEG error.
    tolerance = 8 if name == "mpo" else 0
    assert np.abs(pixels - np.array(RED)).max() <= tolerance, pixels[0, 0]


def test_multi_frame_fixture_counts(formats_version: Version, data_dir_or_none):
    if data_dir_or_none is None:
        pytest.skip("the Pillow test images are absent in this checkout")
    pillow = data_dir_or_none / "pillow-test-images"
    for name in FIXTURE_FRAMES:
        row = formats_version.row(f"frames/fixture-{name}")
        with Image.open(pillow / name) as image:
            expected = image.n_frames
        assert row["status"] == "ingested", row
        assert row["frames"] == expected, name
        assert expected > 1, name


def test_cmyk_profile_recorded_in_sources(formats_version: Version):
    with_profile = formats_version.row("cmyk/with_profile.jpg")
    without = formats_version.row("cmyk/without_profile.jpg")
    assert with_profile["mode"] == without["mode"] == "CMYK"
    assert "cmyk_icc" in with_profile["conversions"]
    assert "cmyk_naive" not in with_profile["conversions"]
    assert "cmyk_naive" in without["conversions"]
    assert "cmyk_icc" not in without["conversions"]
    pixels = stored_pixels(formats_version)
    red, green, blue = pixels["cmyk/with_profile.jpg"][8, 8].astype(int)
    assert green > 200, (red, green, blue)
    assert red < 60, (red, green, blue)
    assert blue < 60, (red, green, blue)
    assert np.abs(pixels["cmyk/without_profile.jpg"][8, 8] - RED).max() <= 8


def test_cmyk_fixture_without_profile(formats_version: Version, data_dir_or_none):
    if data_dir_or_none is None:
        pytest.skip("the Pillow test images are absent in this checkout")
    # This fixture file embeds no ICC profile, so the naive rule applies.
    row = formats_version.row("cmyk/pil_sample_cmyk.jpg")
    assert row["mode"] == "CMYK"
    assert "cmyk_naive" in row["conversions"]


# ---------------------------------------------------------------------------
# Labels tables

# (path cell, label cell, split cell, expected status, expected reason); the row
# number is the position in this list, counting from 1.
TABLE_ROWS: list[tuple[str, str, str, str, str | None]] = [
    ("with space, and comma.png", "a", "", "ingested", None),
    ("sub\\back.png", "b", "", "ingested", None),
    ("noext", "a", "", "ingested", None),
    ("ws.png", " a ", "", "ingested", None),
    ("upper.png", "A", "", "ingested", None),
    ("blank.png", "", "", "skipped", "blank_label"),
    ("spaces.png", "   ", "", "skipped", "blank_label"),
    ("conflict.png", "a", "", "skipped", "conflicting_label"),
    ("conflict.png", "b", "", "skipped", "conflicting_label"),
    ("dup.png", "a", "", "ingested", None),
    ("dup.png", "a", "", "skipped", "duplicate_row"),
    ("missing.png", "a", "", "skipped", "missing_file"),
    ("/etc/passwd", "a", "", "skipped", "outside_root"),
    ("../outside.png", "a", "", "skipped", "outside_root"),
    ("sub/../../outside.png", "a", "", "skipped", "outside_root"),
    ("link_out.png", "a", "", "skipped", "outside_root"),
    ("link_in.png", "b", "", "ingested", None),
    ("nul\x00.png", "a", "", "skipped", "invalid_path"),
    ("", "a", "", "skipped", "blank_path"),
    ("bad_split.png", "a", "bogus", "skipped", "invalid_split"),
    ("split_conflict.png", "a", "train", "skipped", "conflicting_split"),
    ("split_conflict.png", "a", "test", "skipped", "conflicting_split"),
    ("  padded path.png  ", "b", "", "ingested", None),
    ("new\nline.png", "b", "", "ingested", None),
    ("folder", "a", "", "skipped", "not_a_file"),
    ("broken.png", "a", "", "quarantined", "truncated"),
]


@pytest.fixture(scope="module")
def table_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Write the files that TABLE_ROWS names, plus links and a file outside."""
    base = tmp_path_factory.mktemp("table")
    root = base / "root"
    names = [
        "with space, and comma.png",
        "sub/back.png",
        "ws.png",
        "upper.png",
        "blank.png",
        "spaces.png",
        "conflict.png",
        "dup.png",
        "target.png",
        "bad_split.png",
        "split_conflict.png",
        "padded path.png",
        "new\nline.png",
    ]
    for seed, name in enumerate(names):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(noise_png(100 + seed))
    (root / "noext").write_bytes(noise_png(99))
    (root / "folder").mkdir()
    (root / "broken.png").write_bytes(noise_png(98)[:200])
    (base / "outside.png").write_bytes(noise_png(97))
    os.symlink("../outside.png", root / "link_out.png")
    os.symlink("target.png", root / "link_in.png")
    return root


def write_csv(
    path: Path, rows: list[tuple[str, ...]], *, bom: bool, crlf: bool
) -> None:
    frame = pd.DataFrame(rows, columns=["path", "label", "split"])
    text = frame.to_csv(index=False, lineterminator="\r\n" if crlf else "\n")
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))


def table_source(table: Path, root: Path, **extra: Any) -> dict[str, Any]:
    return {"root": str(root), "labels": str(table), "follow_symlinks": True, **extra}


@pytest.fixture(scope="module")
def csv_version(
    table_tree: Path, tmp_path_factory: pytest.TempPathFactory, prefect_harness
) -> Version:
    base = tmp_path_factory.mktemp("csv")
    table = base / "labels.csv"
    write_csv(table, [row[:3] for row in TABLE_ROWS], bom=True, crlf=True)
    assert table.read_bytes().startswith(b"\xef\xbb\xbfpath,label,split\r\n")
    return prepare(table_tree, base / "store", source=table_source(table, table_tree))


def rows_by_number(version: Version) -> dict[int, dict[str, Any]]:
    numbered = [row for row in version.rows if row["table_row"] is not None]
    counts = Counter(row["table_row"] for row in numbered)
    assert all(n == 1 for n in counts.values()), counts
    return {row["table_row"]: row for row in numbered}


def check_table_outcomes(version: Version) -> None:
    by_number = rows_by_number(version)
    for number, (path, _, _, status, reason) in enumerate(TABLE_ROWS, start=1):
        row = by_number.get(number)
        assert row is not None, f"row {number} ({path!r}) is not in the sources table"
        assert (row["status"], row["reason"]) == (status, reason), (number, path, row)
        if status != "ingested":
            assert row["message"], (number, row)


def check_nothing_vanished(version: Version, table_rows: int) -> None:
    source = version.manifest["source"]
    listed = [
        *source["quarantine"],
        *source["skipped_files"],
        *source["duplicate_files"],
    ]
    assert all("row" in entry for entry in listed), listed
    assert table_rows == source["ingested"] + len(listed)
    assert sorted(rows_by_number(version)) == list(range(1, table_rows + 1))


def test_table_rows_each_have_outcome(csv_version: Version):
    check_table_outcomes(csv_version)


def test_table_rows_none_vanish(csv_version: Version):
    check_nothing_vanished(csv_version, len(TABLE_ROWS))


def test_table_problem_rows_in_manifest(csv_version: Version):
    source = csv_version.manifest["source"]
    reported = {
        (entry["row"], entry["reason"])
        for entry in [*source["skipped_files"], *source["quarantine"]]
    }
    for number, (_, _, _, status, reason) in enumerate(TABLE_ROWS, start=1):
        if status != "ingested":
            assert (number, reason) in reported, (number, reason)


def test_table_paths_normalized(csv_version: Version):
    keys = set(csv_version.keys())
    assert "sub/back.png" in keys
    assert "padded path.png" in keys
    assert "new\nline.png" in keys
    assert csv_version.row("noext")["format"] == "PNG"
    assert csv_version.row("link_in.png")["status"] == "ingested"


def test_table_labels_kept_verbatim(csv_version: Version):
    classes = csv_version.manifest["classes"]
    assert {" a ", "A", "a", "b"} == set(classes)
    warnings = csv_version.manifest["source"]["label_warnings"]
    assert len(warnings) == 1, warnings
    for variant in ("' a '", "'A'", "'a'"):
        assert variant in warnings[0], warnings
    names = set(csv_version.shard_table().column("label_name").to_pylist())
    assert names == {" a ", "A", "a", "b"}


def test_table_without_bom_normalized(
    table_tree: Path, tmp_path: Path, prefect_harness
):
    rows = [
        ("ws.png", " a ", ""),
        ("upper.png", "A", ""),
        ("dup.png", "a", ""),
        ("sub/back.png", " B", ""),
        ("blank.png", "  ", ""),
    ]
    table = tmp_path / "labels.csv"
    write_csv(table, rows, bom=False, crlf=False)
    assert table.read_bytes().startswith(b"path,label,split\n")
    normalization = {"strip": True, "case": "lower"}
    version = prepare(
        table_tree,
        tmp_path / "store",
        source=table_source(table, table_tree, label_normalization=normalization),
    )
    assert version.manifest["classes"] == ["a", "b"]
    assert version.manifest["source"]["label_warnings"] == []
    assert version.row("ws.png")["label"] == "a"
    assert version.row("upper.png")["label"] == "a"
    assert version.outcome("blank.png") == ("skipped", "blank_label")
    check_nothing_vanished(version, len(rows))


def test_parquet_table_same_outcomes(
    table_tree: Path, csv_version: Version, tmp_path: Path
):
    table = tmp_path / "labels.parquet"
    frame = pd.DataFrame(
        [row[:3] for row in TABLE_ROWS], columns=["path", "label", "split"]
    )
    frame.to_parquet(table, index=False)
    version = prepare(
        table_tree, tmp_path / "store", source=table_source(table, table_tree)
    )
    check_table_outcomes(version)
    check_nothing_vanished(version, len(TABLE_ROWS))
    assert version.manifest["classes"] == csv_version.manifest["classes"]


def test_table_symlink_refused_without_follow(table_tree: Path, tmp_path: Path):
    table = tmp_path / "labels.csv"
    write_csv(
        table,
        [("link_in.png", "a", ""), ("link_out.png", "a", ""), ("ws.png", "a", "")],
        bom=False,
        crlf=False,
    )
    scan = scan_source(
        SourceSettings(root=str(table_tree), labels=str(table), follow_symlinks=False)
    )
    reasons = {entry["path"]: entry["reason"] for entry in scan.skipped}
    assert reasons == {"link_in.png": "symlink", "link_out.png": "symlink"}
    assert [candidate.key for candidate in scan.candidates] == ["ws.png"]


def test_ragged_csv_rejected(table_tree: Path, tmp_path: Path):
    # Rows with more cells than the header would otherwise shift every column.
    table = tmp_path / "labels.csv"
    table.write_text("path,label\nws.png,a,extra,cells\n", encoding="utf-8")
    with pytest.raises(SourceError, match="Expected 2 fields in line 2, saw 4"):
        scan_source(SourceSettings(root=str(table_tree), labels=str(table)))


def test_repeated_column_names_rejected(table_tree: Path, tmp_path: Path):
    table = tmp_path / "labels.csv"
    table.write_text("path,label,label\nws.png,a,b\n", encoding="utf-8")
    with pytest.raises(SourceError, match="repeats the column names"):
        scan_source(SourceSettings(root=str(table_tree), labels=str(table)))


def test_parquet_binary_path_names_bytes(tmp_path: Path):
    root = tmp_path / "root"
    root.mkdir()
    Path(os.fsdecode(os.fsencode(root) + b"/bad\xff.png")).write_bytes(noise_png(1))
    table = tmp_path / "labels.parquet"
    pq.write_table(pa.table({"path": [b"bad\xff.png"], "label": ["x"]}), table)
    scan = scan_source(SourceSettings(root=str(root), labels=str(table)))
    assert scan.skipped == []
    assert [candidate.key for candidate in scan.candidates] == ["bad\\xff.png"]


# ---------------------------------------------------------------------------
# File names that are not UTF-8, very long, or contain newlines

LONG_NAME = "n" * 250 + ".png"  # 254 bytes; NAME_MAX is 255 on Linux
DEEP_PART = "d" * 200


def make_dirs_at(parent_fd: int, parts: list[str]) -> int:
    """Create nested folders relative to ``parent_fd`` and return the last one's fd.

    Relative creation reaches depths whose absolute path exceeds PATH_MAX.
    """
    fd = os.dup(parent_fd)
    for part in parts:
        os.mkdir(part, dir_fd=fd)
        child = os.open(part, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = child
    return fd


def write_png_at(fd: int, name: str | bytes, data: bytes) -> None:
    file_fd = os.open(name, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
    with open(file_fd, "wb") as handle:
        handle.write(data)


@pytest.fixture(scope="module")
def odd_names_version(
    tmp_path_factory: pytest.TempPathFactory, prefect_harness
) -> Version:
    base = tmp_path_factory.mktemp("names")
    root = base / "root"
    root_bytes = os.fsencode(root)
    os.makedirs(root_bytes + b"/x")
    os.makedirs(root_bytes + b"/cl\xe9ss")
    os.makedirs(root_bytes + b"/nl\nclass")
    (Path(os.fsdecode(root_bytes + b"/x/bad\xff.png"))).write_bytes(noise_png(1))
    (Path(os.fsdecode(root_bytes + b"/cl\xe9ss/ok.png"))).write_bytes(noise_png(2))
    (root / "nl\nclass" / "a.png").write_bytes(noise_png(3))
    (root / "x" / "new\nline.png").write_bytes(noise_png(4))
    (root / "x" / LONG_NAME).write_bytes(noise_png(5))

    deep = root / "deep"
    deep.mkdir()
    fd = os.open(deep, os.O_RDONLY | os.O_DIRECTORY)
    try:
        # About 2,400 bytes: long, but below PATH_MAX, so it is ingested.
        leaf = make_dirs_at(fd, [DEEP_PART] * 12)
        write_png_at(leaf, "leaf.png", noise_png(6))
        # Past PATH_MAX (4,096 bytes) the scan cannot list the folder and reports it.
        too_deep = make_dirs_at(leaf, [DEEP_PART] * 10)
        write_png_at(too_deep, "unreachable.png", noise_png(7))
        os.close(too_deep)
        os.close(leaf)
    finally:
        os.close(fd)
    return prepare(root, base / "store")


def test_non_utf8_names_ingested(odd_names_version: Version):
    version = odd_names_version
    assert version.outcome("x/bad\\xff.png") == ("ingested", None)
    assert version.outcome("cl\\xe9ss/ok.png") == ("ingested", None)
    assert "cl\\xe9ss" in version.manifest["classes"]
    names = set(version.shard_table().column("label_name").to_pylist())
    assert {"cl\\xe9ss", "nl\nclass", "x", "deep"} <= names
    paths = set(version.shard_table().column("source_path").to_pylist())
    assert "x/bad\\xff.png" in paths


def test_newline_names_ingested(odd_names_version: Version):
    assert odd_names_version.outcome("x/new\nline.png") == ("ingested", None)
    assert odd_names_version.outcome("nl\nclass/a.png") == ("ingested", None)
    assert "nl\nclass" in odd_names_version.manifest["classes"]


def test_long_names_ingested(odd_names_version: Version):
    assert odd_names_version.outcome(f"x/{LONG_NAME}") == ("ingested", None)
    leaf = "deep/" + "/".join([DEEP_PART] * 12) + "/leaf.png"
    assert odd_names_version.outcome(leaf) == ("ingested", None)


def test_path_past_path_max_skipped(odd_names_version: Version):
    skipped = [
        entry
        for entry in odd_names_version.manifest["source"]["skipped_files"]
        if entry["path"].startswith("deep/")
    ]
    assert len(skipped) == 1, skipped
    assert skipped[0]["reason"] == "unreadable"
    assert "File name too long" in skipped[0]["message"]


def test_odd_names_report_written(odd_names_version: Version):
    folder = odd_names_version.store / "versions" / "000001"
    text = (folder / "report.html").read_bytes().decode("utf-8")
    assert "cl\\xe9ss" in text
    assert version_verifies(odd_names_version.store, 1)


def version_verifies(store: Path, number: int) -> bool:
    report = verify_version(Store(store), number)
    assert report["status"] == "ok", report
    return True


def test_printable_name_collision_reported(tmp_path: Path):
    root_bytes = os.fsencode(tmp_path / "root")
    os.makedirs(root_bytes + b"/x")
    # Both names print as "x/bad\xff.png": one has the byte 0xFF, the other the
    # four characters backslash, x, f, f.
    Path(os.fsdecode(root_bytes + b"/x/bad\xff.png")).write_bytes(noise_png(1))
    Path(os.fsdecode(root_bytes + b"/x/bad\\xff.png")).write_bytes(noise_png(2))
    scan = plan_candidates(tmp_path / "root")
    assert [candidate.key for candidate in scan.candidates] == ["x/bad\\xff.png"]
    assert [entry["reason"] for entry in scan.skipped] == ["name_collision"]
    assert scan.skipped[0]["path"] == "x/bad\\xff.png"


# ---------------------------------------------------------------------------
# Roots are walls: symbolic links


@pytest.fixture()
def linked_tree(tmp_path: Path) -> Path:
    """A tree with links inside the root, out of it, and in loops."""
    root = tmp_path / "root"
    write_png(root / "cat" / "a.png", RED)
    write_png(root / "dog" / "d.png", GREEN)
    write_png(tmp_path / "outside" / "o.png", BLUE)
    os.symlink("a.png", root / "cat" / "inside_file.png")
    os.symlink("../dog", root / "cat" / "inside_dir")
    os.symlink("../../outside/o.png", root / "cat" / "outside_file.png")
    os.symlink("../outside", root / "outside_class")
    os.symlink("loop", root / "cat" / "loop")
    os.symlink("..", root / "cat" / "up")
    return root


def test_links_not_followed_by_default(linked_tree: Path):
    scan = scan_source(SourceSettings(root=str(linked_tree)))
    assert sorted(c.key for c in scan.candidates) == ["cat/a.png", "dog/d.png"]
    reasons = {entry["path"]: entry["reason"] for entry in scan.skipped}
    assert reasons == {
        "outside_class": "symlink",
        "cat/inside_file.png": "symlink",
        "cat/inside_dir": "symlink",
        "cat/outside_file.png": "symlink",
        "cat/loop": "symlink",
        "cat/up": "symlink",
    }


def test_followed_links_stay_inside_root(linked_tree: Path):
    scan = scan_source(SourceSettings(root=str(linked_tree), follow_symlinks=True))
    keys = {candidate.key for candidate in scan.candidates}
    assert {"cat/a.png", "cat/inside_file.png", "cat/inside_dir/d.png"} <= keys
    real_root = os.path.realpath(linked_tree)
    for candidate in scan.candidates:
        resolved = os.path.realpath(linked_tree / candidate.path)
        assert resolved.startswith(real_root + os.sep), candidate
    reasons = {entry["path"]: entry["reason"] for entry in scan.skipped}
    assert reasons["outside_class"] == "outside_root"
    assert reasons["cat/outside_file.png"] == "outside_root"
    assert reasons["cat/loop"] == "symlink"
    assert "loop" in next(e for e in scan.skipped if e["path"] == "cat/loop")["message"]
    assert not any("outside" in key and "o.png" in key for key in keys)


def test_ingest_refuses_file_swapped_for_link(linked_tree: Path, tmp_path: Path):
    scan = scan_source(SourceSettings(root=str(linked_tree)))
    # After the scan, a candidate becomes a link to a file outside the root.
    target = linked_tree / "cat" / "a.png"
    target.unlink()
    os.symlink(tmp_path / "outside" / "o.png", target)
    result = ingest(scan.candidates, linked_tree, tmp_path / "store", ["cat", "dog"])
    quarantined = quarantine_by_key(result)
    assert quarantined["cat/a.png"]["reason"] == "outside_root"
    assert "outside the source root" in quarantined["cat/a.png"]["message"]
    assert [record["key"] for record in result.records] == ["dog/d.png"]


def test_ingest_fifo_does_not_block(linked_tree: Path, tmp_path: Path):
    scan = scan_source(SourceSettings(root=str(linked_tree)))
    target = linked_tree / "cat" / "a.png"
    target.unlink()
    os.mkfifo(target)
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(
            ingest, scan.candidates, linked_tree, tmp_path / "store", ["cat", "dog"]
        )
        try:
            result = future.result(timeout=60)
        except TimeoutError:
            # Unblock the reader so the test ends, then fail.
            with open(target, "wb"):
                pass
            raise
    assert quarantine_by_key(result)["cat/a.png"]["reason"] == "not_a_file"


# ---------------------------------------------------------------------------
# Roots are walls: class names are data, never path parts

HOSTILE_CLASSES = [
    "a/b",
    "..",
    "../escape",
    "/abs",
    "ctrl\x01\x1b[31m",
    "tab\tname",
    "new\nline",
    "ünïcødé 猫 🐈",
    "<b>bold</b>",
    "C:\\windows",
]
STORE_FILE = re.compile(
    r"^(LATEST|lock|objects/[0-9a-f]{2}/[0-9a-f]{64}\.(parquet|npz)"
    r"|versions/\d{6}/(manifest\.json|report\.html|profile\.json|[a-z_]+\.png)"
    r"|cache/chunks/[0-9a-f]{64}\.json)$"
)


def tree_files(folder: Path) -> set[str]:
    return {
        path.relative_to(folder).as_posix()
        for path in folder.rglob("*")
        if not path.is_dir()
    }


@pytest.fixture(scope="module")
def hostile_classes(
    tmp_path_factory: pytest.TempPathFactory, prefect_harness
) -> tuple[Path, Version]:
    base = tmp_path_factory.mktemp("classes")
    root = base / "root"
    root.mkdir()
    rows = []
    for index, label in enumerate(HOSTILE_CLASSES):
        for copy in range(2):
            name = f"f{index}-{copy}.png"
            (root / name).write_bytes(noise_png(1000 + 10 * index + copy))
            rows.append((name, label, ""))
    table = base / "labels.csv"
    write_csv(table, rows, bom=False, crlf=False)
    version = prepare(root, base / "store", source={"labels": str(table)})
    return base, version


def test_class_names_kept_verbatim(hostile_classes):
    _, version = hostile_classes
    assert sorted(version.manifest["classes"]) == sorted(HOSTILE_CLASSES)
    names = version.shard_table().column("label_name").to_pylist()
    assert Counter(names) == {name: 2 for name in HOSTILE_CLASSES}
    reader = imgprep.open_version(version.store)
    assert sorted(reader.classes) == sorted(HOSTILE_CLASSES)


def test_class_names_make_no_paths(hostile_classes, tmp_path: Path):
    base, version = hostile_classes
    before = tree_files(base)
    assert before - {p for p in before if p.startswith(("root/", "store/"))} == {
        "labels.csv"
    }
    store_files = {p.removeprefix("store/") for p in before if p.startswith("store/")}
    assert {p for p in store_files if not STORE_FILE.match(p)} == set()

    reader = imgprep.open_version(version.store)
    for fmt in ("parquet", "npz", "hf"):
        destination = tmp_path / fmt
        written = export_version(reader, destination, fmt)
        assert set(written) == {"train"}
        suffix = "npz" if fmt == "npz" else "parquet"
        assert tree_files(destination) == {f"train.{suffix}"}
    exported = pq.read_table(tmp_path / "parquet" / "train.parquet")
    assert set(exported.column("label_name").to_pylist()) == set(HOSTILE_CLASSES)
    # Nothing appeared next to the export or the store either.
    assert tree_files(base) == before
    assert {p.name for p in tmp_path.iterdir()} == {"parquet", "npz", "hf"}


def test_class_names_escaped_in_report(hostile_classes):
    _, version = hostile_classes
    report = version.store / "versions" / "000001" / "report.html"
    text = report.read_bytes().decode("utf-8")
    assert "<b>bold</b>" not in text
    assert "&lt;b&gt;bold&lt;/b&gt;" in text
    assert "ünïcødé 猫 🐈" in text


def test_dollar_class_name_flow(tmp_path: Path, prefect_harness):
    root = tmp_path / "root"
    root.mkdir()
    rows = []
    for index, label in enumerate(["$\\frac$", "plain"]):
        (root / f"{index}.png").write_bytes(noise_png(2000 + index))
        rows.append((f"{index}.png", label, ""))
    table = tmp_path / "labels.csv"
    write_csv(table, rows, bom=False, crlf=False)
    version = prepare(root, tmp_path / "store", source={"labels": str(table)})
    assert "$\\frac$" in version.manifest["classes"]


# ---------------------------------------------------------------------------
# Roots are walls: a store is untrusted input


def copy_store(version: Version, tmp_path: Path) -> Path:
    store = tmp_path / "store"
    shutil.copytree(version.store, store, symlinks=True)
    return store


def edit_manifest(store: Path, edit) -> None:
    path = store / "versions" / "000001" / "manifest.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    edit(data)
    path.write_text(json.dumps(data), encoding="utf-8")


def replace_first_shard(store: Path, data: bytes, fmt: str) -> str:
    """Store ``data`` as an object and point the first shard entry at it."""
    ref = Store(store).put_bytes(data, fmt)

    def edit(manifest: dict[str, Any]) -> None:
        entry = manifest["shards"][0]
        entry.update(path=ref.path, sha256=ref.sha256, bytes=ref.bytes, format=fmt)

    edit_manifest(store, edit)
    return ref.path


def load_all(store: Path) -> None:
    version = imgprep.open_version(store)
    for split in ("train", "val", "test"):
        version.load(split)


ESCAPING_PATHS = [
    "objects/../../etc/passwd",
    "/etc/passwd",
    "objects/ab/../../../../etc/passwd",
    "objects/ab/" + "a" * 64 + ".parquet/../../../x",
]


@pytest.mark.parametrize("escape", ESCAPING_PATHS)
@pytest.mark.parametrize("where", ["shard", "sources"])
def test_manifest_escape_refused(formats_version, tmp_path: Path, escape, where):
    store = copy_store(formats_version, tmp_path)

    def edit(manifest: dict[str, Any]) -> None:
        entry = (
            manifest["shards"][0] if where == "shard" else manifest["objects"][where]
        )
        entry["path"] = escape

    edit_manifest(store, edit)
    with pytest.raises(CorruptObjectError, match="manifest schema"):
        imgprep.open_version(store)
    report = verify_version(Store(store), 1)
    assert report["status"] == "invalid"
    assert "path" in report["error"]
    assert verify_store(Store(store))["ok"] is False


def test_symlinked_object_refused(formats_version, tmp_path: Path):
    store = copy_store(formats_version, tmp_path)
    shard = store / formats_version.manifest["shards"][0]["path"]
    outside = tmp_path / "outside.parquet"
    shutil.move(shard, outside)
    os.symlink(outside, shard)
    report = verify_version(Store(store), 1)
    with pytest.raises(CorruptObjectError):
        load_all(store)
    assert report["status"] != "ok"


class _MakeMarker:
    """Unpickling this object creates a folder, which proves code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_npz_object_array_refused(formats_version, tmp_path: Path):
    store = copy_store(formats_version, tmp_path)
    marker = tmp_path / "unpickled"
    buffer = io.BytesIO()
    payload = np.empty(1, dtype=object)
    payload[0] = _MakeMarker(marker)
    np.savez(buffer, pixels=payload, labels=np.zeros(1, np.int32))
    path = replace_first_shard(store, buffer.getvalue(), "npz")
    with pytest.raises(CorruptObjectError) as caught:
        load_all(store)
    message = str(caught.value)
    assert path in message
    assert "allow_pickle" in message
    assert not marker.exists(), "the pickled object was loaded"


def test_shard_schema_drift_names_column(formats_version, tmp_path: Path):
    store = copy_store(formats_version, tmp_path)
    entry = formats_version.manifest["shards"][0]
    table = pq.read_table(store / entry["path"])
    index = table.schema.get_field_index("weight")
    drifted = table.set_column(
        index,
        pa.field("weight", pa.float64()),
        table.column("weight").cast(pa.float64()),
    )
    sink = io.BytesIO()
    pq.write_table(drifted, sink)
    path = replace_first_shard(store, sink.getvalue(), "parquet")
    with pytest.raises(SchemaMismatchError) as caught:
        load_all(store)
    assert caught.value.column == "weight"
    assert "'weight'" in str(caught.value)
    assert path in str(caught.value)
    report = verify_version(Store(store), 1)
    failed = [check for check in report["checks"] if check["status"] != "ok"]
    assert [check.get("column") for check in failed] == ["weight"]


# ---------------------------------------------------------------------------
# Faults lose nothing: disk full

FILE_SIZE_LIMIT = 64 * 1024


def limit_file_size() -> None:
    """Limit files the child writes; EFBIG then fails the write instead of SIGXFSZ."""
    import resource

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT))


def run_in_group(command: list[str], **options: Any) -> subprocess.CompletedProcess:
    """Run ``command`` in its own session and kill whatever of it is left."""
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        start_new_session=True,
        **options,
    )
    try:
        stdout, stderr = process.communicate(timeout=SUBPROCESS_TIMEOUT_S)
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def disk_full_sections() -> dict[str, Any]:
    return {
        "dataset": {"name": "diskfull"},
        "runner": {"type": "thread", "workers": 1},
        "image": {"height": 32, "width": 32},
        "split": TRAIN_ONLY,
    }


@pytest.fixture(scope="module")
def disk_full_run(
    tmp_path_factory: pytest.TempPathFactory, prefect_harness
) -> dict[str, Any]:
    """Commit version 1, add files, then refresh in a child with a file-size limit.

    The child uses the session's Prefect server, which runs without the limit:
    a temporary server started by the child would hit it in its SQLite files.
    """
    import prefect.settings

    base = tmp_path_factory.mktemp("diskfull")
    root = base / "root"
    for index in range(6):
        label = "a" if index % 2 else "b"
        (root / label).mkdir(parents=True, exist_ok=True)
        (root / label / f"{index}.png").write_bytes(noise_png(index, side=32))
    store = base / "store"
    run_flow(make_config(root, store, **disk_full_sections()))
    # 40 new noise images of 32x32x3 make one shard of about 123 KB, above the limit.
    for index in range(40):
        (root / "a" / f"new{index}.png").write_bytes(noise_png(500 + index, side=32))
    data = {
        **disk_full_sections(),
        "source": {"root": str(root)},
        "output": {"store": str(store)},
    }
    config_path = base / "config.json"
    config_path.write_text(json.dumps(data))
    api_url = prefect.settings.PREFECT_API_URL.value()
    assert api_url.startswith("http://127.0.0.1:"), api_url
    run = run_in_group(
        [sys.executable, str(RUN_SCRIPT), str(config_path)],
        cwd=PROJECT_ROOT,
        env=dict(os.environ, PREFECT_API_URL=api_url),
        preexec_fn=limit_file_size,
    )
    return {"root": root, "store": store, "run": run}


def test_disk_full_fails_without_version(disk_full_run):
    run, store = disk_full_run["run"], disk_full_run["store"]
    assert run.returncode != 0, run.stdout[-2000:]
    assert "File too large" in run.stderr, run.stderr[-3000:]
    handle = Store(store)
    assert handle.versions() == [1]
    assert handle.latest_pointer() == 1
    assert not (store / "versions" / "000002").exists()
    assert verify_version(handle, 1)["status"] == "ok"
    report = verify_store(handle)
    assert report["ok"], report["failures"]


def test_disk_full_rerun_with_room(disk_full_run, tmp_path: Path):
    store = tmp_path / "store"
    shutil.copytree(disk_full_run["store"], store)
    result = run_flow(make_config(disk_full_run["root"], store, **disk_full_sections()))
    assert result["version"] == 2
    handle = Store(store)
    assert handle.versions() == [1, 2]
    assert verify_store(handle)["ok"]
    assert Version(store).manifest["source"]["ingested"] == 46


def test_disk_full_message_names_object(disk_full_run):
    stderr = disk_full_run["run"].stderr
    assert re.search(r"(objects/[0-9a-f]{2}/|tmp/)[0-9a-f]+", stderr), stderr[-3000:]


# ---------------------------------------------------------------------------
# Faults lose nothing: unreadable, vanished and replaced files

UNREADABLE_CHILD = """
import json, os, pwd, sys
from PIL import Image
import imgprep.ingest, imgprep.scan
from imgprep.config import SourceSettings, load_config
from imgprep.scan import Candidate
from imgprep.store import Store

# Every module, Pillow plugin and lazily imported dependency (pyarrow loads
# numpy.ma on first use) is loaded before privileges drop, because the interpreter's
# files may sit in a folder that only root can enter. A warm-up ingest of one
# readable file into a scratch store loads them.
Image.init()
request = json.loads(sys.argv[1])
warm_store = request["warm_store"]
Store(warm_store).ensure()
imgprep.ingest.ingest_files(
    [Candidate(**request["candidates"][0])],
    root=request["root"],
    config=load_config(data={**request["config"], "output": {"store": warm_store}}),
    class_names=["x"],
    store_root=warm_store,
    use_cache=False,
)
if os.geteuid() == 0:
    nobody = pwd.getpwnam("nobody")
    os.setgroups([])
    os.setgid(nobody.pw_gid)
    os.setuid(nobody.pw_uid)
scan = imgprep.scan.scan_source(SourceSettings(root=request["root"]))
Store(request["store"]).ensure()
result = imgprep.ingest.ingest_files(
    [Candidate(**item) for item in request["candidates"]],
    root=request["root"],
    config=load_config(data=request["config"]),
    class_names=["x"],
    store_root=request["store"],
    use_cache=False,
)
print(json.dumps({
    "uid": os.geteuid(),
    "skipped": scan.skipped,
    "quarantined": result.quarantined,
    "records": [record["key"] for record in result.records],
}))
"""


@pytest.fixture()
def world_readable_dir() -> Iterator[Path]:
    """A temporary folder that an unprivileged user can enter."""
    folder = Path(tempfile.mkdtemp(prefix="imgprep-unreadable-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        for path in [folder, *folder.rglob("*")]:
            if not path.is_symlink():
                path.chmod(0o755 if path.is_dir() else 0o644)
        shutil.rmtree(folder)


def test_unreadable_file_quarantined(world_readable_dir: Path):
    root = world_readable_dir / "root"
    write_png(root / "x" / "ok.png")
    secret = write_png(root / "x" / "secret.png", GREEN)
    locked = root / "x" / "locked"
    write_png(locked / "inner.png", BLUE)
    store = world_readable_dir / "store"
    store.mkdir()
    store.chmod(0o777)

    # The candidates come from a scan that could still read every file.
    scan = plan_candidates(root)
    candidates = [c for c in scan.candidates if c.key != "x/locked/inner.png"]
    assert [c.key for c in candidates] == ["x/ok.png", "x/secret.png"]
    secret.chmod(0o000)
    locked.chmod(0o000)

    request = {
        "root": str(root),
        "store": str(store),
        "warm_store": str(world_readable_dir / "warm-store"),
        "candidates": [vars(c) for c in candidates],
        "config": {
            "source": {"root": str(root)},
            "output": {"store": str(store)},
            "image": {"height": SIZE, "width": SIZE},
        },
    }
    run = run_in_group(
        [sys.executable, "-c", UNREADABLE_CHILD, json.dumps(request)],
        cwd=world_readable_dir,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout)
    assert report["uid"] != 0

    # The scan does not read files whose name claims an image, so the unreadable
    # file reaches ingest, which quarantines it; the unlistable folder is skipped.
    skipped = {entry["path"]: entry for entry in report["skipped"]}
    assert "x/secret.png" not in skipped
    assert skipped["x/locked/"]["reason"] == "unreadable"
    quarantined = {entry["key"]: entry for entry in report["quarantined"]}
    assert quarantined["x/secret.png"]["reason"] == "unreadable"
    assert "permission denied" in quarantined["x/secret.png"]["message"]
    assert report["records"] == ["x/ok.png"]


def test_vanished_and_replaced_files(tmp_path: Path):
    root = tmp_path / "root"
    write_png(root / "a" / "kept.png", RED)
    write_png(root / "a" / "replaced.png", GREEN)
    write_png(root / "b" / "gone.png", BLUE)
    scan = plan_candidates(root)
    plan = plan_ingest(scan, None)
    shutil.rmtree(root / "b")
    new_bytes = noise_png(42)
    (root / "a" / "replaced.png").write_bytes(new_bytes)

    store = tmp_path / "store"
    config = config_for(root, store).resolved()
    Store(store).ensure()
    chunks = [
        ingest_files(
            batch,
            root=str(root),
            config=config,
            class_names=scan.classes,
            store_root=str(store),
            use_cache=False,
        )
        for batch in plan.chunks(2)
    ]
    assembled = assemble_samples(
        config=config,
        scan=scan,
        plan=plan,
        parent=None,
        chunks=chunks,
        chunk_classes=scan.classes,
        store=Store(store),
    )
    rows = {row["key"]: row for row in assembled.sources}
    assert (rows["b/gone.png"]["status"], rows["b/gone.png"]["reason"]) == (
        "quarantined",
        "missing_file",
    )
    replaced = rows["a/replaced.png"]
    assert replaced["status"] == "ingested"
    assert replaced["sample_id"] == hashlib.sha256(new_bytes).hexdigest()
    # The stored row of that sample contains the decoded new bytes.
    shard = next(s for s in assembled.shards if s["path"] == replaced["shard"])
    table = pq.read_table(store / shard["path"])
    stored_ids = table.column("sample_id").to_pylist()
    assert stored_ids[replaced["shard_row"]] == replaced["sample_id"]
    pixels = table.column("pixels").to_pylist()[replaced["shard_row"]]
    assert len(set(np.frombuffer(pixels, np.uint8).tolist())) > 10
    assert assembled.counts["train"] == {"a": 2}


def test_folder_vanishing_during_walk(tmp_path: Path):
    root = tmp_path / "root"
    write_png(root / "cat" / "s1" / "a.png")
    write_png(root / "cat" / "s2" / "b.png")
    result = ScanResult(layout="folder", root=str(root))
    walk = _walk_files(
        str(root / "cat"),
        str(root),
        SourceSettings(root=str(root)),
        result,
        os.path.realpath(root),
    )
    first = next(walk)
    assert first[0] == "cat/s1/a.png"
    shutil.rmtree(root / "cat" / "s2")
    assert list(walk) == []
    assert result.skipped == [
        {
            "path": "cat/s2/",
            "reason": "missing_file",
            "message": "folder vanished during the scan",
        }
    ]


# ---------------------------------------------------------------------------
# Reason codes are all documented


def produced_reason_codes() -> dict[str, list[str]]:
    """Return each reason string literal in imgprep/, with where it occurs.

    Reasons are found in the first argument of ``Quarantined(...)``, the third of
    the scan's ``_skip(...)``, ``reason=`` keywords, ``{"reason": ...}`` dict
    entries and ``x["reason"] = ...`` assignments. Every string constant inside
    such an expression counts, so an f-string reason shows up as its fragments.
    Subscript keys and call arguments inside it, as in ``row.get("reason")``, are
    lookups, not reasons.
    """
    found: dict[str, list[str]] = {}

    def collect(node: ast.AST, where: str) -> None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            found.setdefault(node.value, []).append(where)
        elif isinstance(node, ast.Subscript):
            collect(node.value, where)
        elif isinstance(node, ast.Call):
            collect(node.func, where)
        else:
            for child in ast.iter_child_nodes(node):
                collect(child, where)

    for path in sorted((PROJECT_ROOT / "imgprep").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            where = f"{path.relative_to(PROJECT_ROOT)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Call):
                name = getattr(node.func, "id", getattr(node.func, "attr", ""))
                if name == "Quarantined" and node.args:
                    collect(node.args[0], where)
                if name == "_skip" and len(node.args) >= 3:
                    collect(node.args[2], where)
                for keyword in node.keywords:
                    if keyword.arg == "reason":
                        collect(keyword.value, where)
            elif isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values, strict=True):
                    if isinstance(key, ast.Constant) and key.value == "reason":
                        collect(value, where)
            elif isinstance(node, ast.Assign):
                for target in node.targets:
                    if (
                        isinstance(target, ast.Subscript)
                        and isinstance(target.slice, ast.Constant)
                        and target.slice.value == "reason"
                    ):
                        collect(node.value, where)
    return found


def test_every_reason_code_documented():
    produced = produced_reason_codes()
    undocumented = {
        code: where for code, where in produced.items() if code not in REASON_CODES
    }
    assert undocumented == {}
    assert "decode_timeout" in produced
    assert "conflicting_label" in produced


def test_every_documented_code_produced():
    produced = produced_reason_codes()
    assert sorted(set(REASON_CODES) - set(produced)) == []


def test_reason_table_lists_every_code():
    table = reason_codes_markdown()
    for code in REASON_CODES:
        assert f"| `{code}` |" in table, code
    assert set(STATUSES) == {"ingested", "skipped", "quarantined", "duplicate"}


def test_readme_lists_every_code():
    text = README.read_text(encoding="utf-8")
    if README_HEADING not in text:
        pytest.skip(
            f"README.md has no section {README_HEADING!r} yet; the check of its "
            "reason list runs once that section is merged"
        )
    section = text.split(README_HEADING, 1)[1].split("\n## ", 1)[0]
    missing = [code for code in REASON_CODES if f"`{code}`" not in section]
    assert missing == [], f"README section lacks {missing}"
