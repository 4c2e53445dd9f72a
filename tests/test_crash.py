"""Crash safety: a run killed at any crash point leaves the store usable.

Each case copies a store that contains one committed version, then runs a refresh in
a subprocess that sends itself SIGKILL at one named crash point
(``IMGPREP_KILL_AT``). After the kill, every committed version must still hash to
its manifest and the reader must open the newest one. A rerun without the kill must
then produce the same data as an uninterrupted refresh, reusing the chunks that
were finished before the kill.

The subprocesses use the session's Prefect server on 127.0.0.1 through
``PREFECT_API_URL``, which saves the start of a temporary server per run. One case
leaves ``PREFECT_API_URL`` unset, so the killed run's own temporary server is
orphaned, and checks that ending the process group ends that server too.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import imgprep
from imgprep.audit import verify_store
from imgprep.faults import CRASH_POINTS
from imgprep.store import Store
from tests.helpers import make_config, read_manifest, run_flow
from tests.scripts.store_checks import (
    histogram_arrays,
    sample_shard_sha256s,
    verify_version,
    version_dirs,
    write_image_tree,
)

pytestmark = pytest.mark.usefixtures("prefect_harness")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
RUN_SCRIPT = PROJECT_ROOT / "tests" / "scripts" / "run_prepare.py"
SPLITS = ("train", "val", "test")
CHUNK_SIZE = 25
NEW_FILES = {"a": 50, "b": 50, "c": 50}
NEW_TOTAL = sum(NEW_FILES.values())
CHUNKS = NEW_TOTAL // CHUNK_SIZE
RUN_TIMEOUT_S = 180


@dataclass(frozen=True)
class KillCase:
    """A crash point, and what a rerun after a kill there must reuse.

    ``cached_chunks`` is the number of ingest chunks the killed run finished, so
    the rerun takes them from the chunk cache. ``committed`` is True when the
    killed run died after its version was committed.
    """

    kill_at: str
    cached_chunks: int
    committed: bool = False


# One ingest worker runs the chunks in order, so the chunks finished before each
# kill are known exactly. Each chunk writes one shard object; the 7th object is a
# shard that the assemble step rewrites after rows were deleted.
KILL_CASES = [
    KillCase("scan_done", 0),
    KillCase("decode:80", 3),
    KillCase("object_temp_written:4", 3),
    KillCase("object_renamed:2", 1),
    KillCase("shard_written:3", 2),
    KillCase("object_temp_written:7", CHUNKS),
    KillCase("resample_done", CHUNKS),
    KillCase("version_temp_written", CHUNKS),
    KillCase("manifest_temp_written", CHUNKS),
    KillCase("version_renamed", CHUNKS, committed=True),
    KillCase("latest_temp_written", CHUNKS, committed=True),
    KillCase("latest_moved", CHUNKS, committed=True),
]


def _config_data(root: Path, store: Path) -> dict[str, Any]:
    return {
        "dataset": {"name": "crash"},
        "source": {"root": str(root)},
        "output": {"store": str(store), "rows_per_shard": CHUNK_SIZE},
        "runner": {"type": "thread", "workers": 1},
        "image": {"height": 16, "width": 16},
        "ingest": {"chunk_size": CHUNK_SIZE},
        "resample": {"method": "smote", "features": {"kind": "pixels"}},
    }


def _config(root: Path, store: Path):
    return make_config(root, store, **_config_data(root, store))


@pytest.fixture(scope="module")
def crash_setup(tmp_path_factory: pytest.TempPathFactory, prefect_harness):
    """Commit version 1, change the tree, and refresh a copy without a kill."""
    import prefect.settings

    base = tmp_path_factory.mktemp("crash")
    root = base / "images"
    first_files = write_image_tree(root, {"a": 60, "b": 40, "c": 20}, seed=11)
    template = base / "template"
    run_flow(_config(root, template))

    write_image_tree(root, NEW_FILES, seed=12, prefix="new")
    for path in first_files[::20]:
        path.unlink()
    reference = base / "reference"
    shutil.copytree(template, reference)
    result = run_flow(_config(root, reference))
    assert result["version"] == 2
    api_url = prefect.settings.PREFECT_API_URL.value()
    assert api_url.startswith("http://127.0.0.1:"), api_url
    return {
        "root": root,
        "template": template,
        "reference": reference,
        "api_url": api_url,
    }


def _group_members(pgid: int) -> list[int]:
    """Return the pids of the processes in process group ``pgid``."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised command: state, ppid, pgrp, ...
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def _end_group(pgid: int, wait_s: float = 10.0) -> tuple[list[int], list[int]]:
    """Kill every process of a group.

    Returns the pids found in the group before the kill and those still present
    ``wait_s`` seconds after it.
    """
    before = _group_members(pgid)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        return before, []
    deadline = time.monotonic() + wait_s
    members = _group_members(pgid)
    while members and time.monotonic() < deadline:
        time.sleep(0.1)
        members = _group_members(pgid)
    return before, members


def _run_killed(
    config_path: Path, kill_at: str, api_url: str | None
) -> tuple[subprocess.CompletedProcess[str], list[int], list[int]]:
    """Run the flow in its own session until it kills itself, then end its group.

    Output goes to files next to the config, not to pipes: a child that outlives
    the run (a temporary Prefect server) would hold a pipe open and block reading.
    Returns the finished process, the group's pids found after the run died, and
    the pids still present after the group was killed.
    """
    env = dict(os.environ)
    env["IMGPREP_KILL_AT"] = kill_at
    env.pop("PREFECT_API_URL", None)
    if api_url is not None:
        env["PREFECT_API_URL"] = api_url
    stdout_path = config_path.with_suffix(".stdout")
    stderr_path = config_path.with_suffix(".stderr")
    with open(stdout_path, "wb") as stdout, open(stderr_path, "wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, str(RUN_SCRIPT), str(config_path)],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
        try:
            process.wait(timeout=RUN_TIMEOUT_S)
        finally:
            orphans, leftover = _end_group(process.pid)
            process.wait()
    completed = subprocess.CompletedProcess(
        process.args,
        process.returncode,
        stdout_path.read_text(errors="replace"),
        stderr_path.read_text(errors="replace"),
    )
    return completed, orphans, leftover


def _check_store_intact(store: Path, expected_versions: list[int]) -> None:
    handle = Store(store)
    assert handle.versions() == expected_versions
    for folder in version_dirs(store):
        assert (folder / "manifest.json").is_file(), f"{folder} has no manifest"
    for version in expected_versions:
        assert verify_version(store, version) == [], version
    report = verify_store(handle)
    assert report["ok"], report["failures"]
    assert [entry["version"] for entry in report["versions"]] == expected_versions
    opened = imgprep.open_version(store)
    assert opened.version == expected_versions[-1]
    for split in SPLITS:
        batch = opened.load(split)
        assert len(batch) == opened.split_size(split), split


def _check_same_data(store: Path, version: int, reference: Path) -> None:
    ours = read_manifest(store, version)
    theirs = read_manifest(reference, 2)
    assert sample_shard_sha256s(ours) == sample_shard_sha256s(theirs)
    assert ours["classes"] == theirs["classes"]
    assert ours["counts"] == theirs["counts"]
    assert ours["normalization"] == theirs["normalization"]
    assert ours["resample"] == theirs["resample"]
    histograms = histogram_arrays(store, ours)
    expected = histogram_arrays(reference, theirs)
    assert sorted(histograms) == sorted(expected)
    for split in expected:
        assert np.array_equal(histograms[split], expected[split]), split


def test_kill_cases_cover_crash_points():
    names = {case.kill_at.partition(":")[0] for case in KILL_CASES}
    assert names == set(CRASH_POINTS)


@pytest.mark.parametrize("case", KILL_CASES, ids=lambda case: case.kill_at)
def test_kill_then_rerun(case: KillCase, crash_setup, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(crash_setup["template"], store)
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(_config_data(crash_setup["root"], store)))

    killed, _, leftover = _run_killed(config_path, case.kill_at, crash_setup["api_url"])
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert leftover == []

    committed = [1, 2] if case.committed else [1]
    _check_store_intact(store, committed)
    pointer = Store(store).latest_pointer()
    assert pointer == (2 if case.kill_at == "latest_moved" else 1)

    result = run_flow(_config(crash_setup["root"], store))
    new_version = committed[-1] + 1
    assert result["version"] == new_version
    _check_store_intact(store, [*committed, new_version])
    assert Store(store).latest_pointer() == new_version
    _check_same_data(store, new_version, crash_setup["reference"])

    refresh = result["refresh"]
    if case.committed:
        # The killed run committed version 2; the rerun is a refresh without change.
        assert refresh["chunks"] == 0
        assert refresh["images_decoded"] == 0
        assert refresh["shards_written"] == 0
        return
    assert refresh["chunks"] == CHUNKS
    assert refresh["chunks_from_cache"] == case.cached_chunks
    assert refresh["images_decoded"] == NEW_TOTAL - case.cached_chunks * CHUNK_SIZE
    assert refresh["images_decoded_before_crash"] == case.cached_chunks * CHUNK_SIZE
    assert refresh["files_new"] == NEW_TOTAL


def test_kill_ends_orphaned_prefect_server(crash_setup, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(crash_setup["template"], store)
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(_config_data(crash_setup["root"], store)))
    # Without PREFECT_API_URL the run starts a temporary Prefect server in a child
    # process, which outlives the SIGKILL until its process group is killed.
    killed, orphans, leftover = _run_killed(config_path, "scan_done", api_url=None)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert orphans, "the killed run left no process behind to end"
    assert leftover == []
    _check_store_intact(store, [1])


def test_worker_kill_then_rerun(crash_setup, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(crash_setup["template"], store)
    data = _config_data(crash_setup["root"], store)
    data["runner"] = {"type": "process", "workers": 1}
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(data))
    # The crash point fires in the pool's worker process, not in the flow's
    # process, so the flow gets BrokenProcessPool and fails without committing.
    run, _, leftover = _run_killed(
        config_path, "shard_written:3", crash_setup["api_url"]
    )
    assert run.returncode == 1, run.stderr[-3000:]
    assert "BrokenProcessPool" in run.stderr
    assert leftover == []
    _check_store_intact(store, [1])

    result = run_flow(make_config(crash_setup["root"], store, **data))
    assert result["version"] == 2
    assert result["refresh"]["chunks_from_cache"] == 2
    assert result["refresh"]["images_decoded"] == NEW_TOTAL - 2 * CHUNK_SIZE
    _check_store_intact(store, [1, 2])
    _check_same_data(store, 2, crash_setup["reference"])


def test_manifestless_folder_is_no_version(crash_setup, tmp_path, caplog):
    store = tmp_path / "store"
    shutil.copytree(crash_setup["reference"], store)
    debris = store / "versions" / "000003"
    debris.mkdir()
    (debris / "report.html").write_text("partial")
    handle = Store(store)
    assert handle.versions() == [1, 2]
    assert handle.latest() == 2
    assert imgprep.open_version(store).version == 2

    # The next run commits version 3 and moves the folder without a manifest aside.
    with caplog.at_level(logging.WARNING, logger="imgprep.store"):
        result = run_flow(_config(crash_setup["root"], store))
    assert result["version"] == 3
    _check_store_intact(store, [1, 2, 3])
    messages = [r.getMessage() for r in caplog.records if r.name == "imgprep.store"]
    assert any("no manifest.json" in m and str(debris) in m for m in messages)
    moved = [p for p in handle.temp_files() if p.name.startswith("incomplete-000003")]
    assert len(moved) == 1
    assert (moved[0] / "report.html").read_text() == "partial"
