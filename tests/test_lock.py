"""The store's writer lock: one writer at a time, stale locks broken, no lost version.

Second writers are real processes: ``tests/scripts/hold_lock.py`` takes the lock
and sleeps, and ``tests/scripts/run_prepare.py`` runs the whole flow. Subprocess
flows use the session's Prefect server on 127.0.0.1.
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import imgprep
from imgprep.errors import LockTimeoutError
from imgprep.store import Store
from tests.helpers import make_config, read_manifest, run_flow
from tests.scripts.store_checks import verify_version, write_image_tree

pytestmark = pytest.mark.usefixtures("prefect_harness")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = PROJECT_ROOT / "tests" / "scripts"
WAIT_S = 120
SETTINGS: dict[str, dict[str, Any]] = {
    "image": {"height": 16, "width": 16},
    "ingest": {"chunk_size": 64},
    "runner": {"type": "thread", "workers": 1},
}


@pytest.fixture(scope="module")
def image_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lock") / "images"
    write_image_tree(root, {"a": 120, "b": 80, "c": 40}, seed=21)
    return root


@pytest.fixture(scope="module")
def api_url(prefect_harness) -> str:
    import prefect.settings

    url = prefect.settings.PREFECT_API_URL.value()
    assert url.startswith("http://127.0.0.1:"), url
    return url


def _config_data(root: Path, store: Path, lock_timeout_s: float) -> dict[str, Any]:
    return {
        "dataset": {"name": "lock"},
        "source": {"root": str(root)},
        "output": {"store": str(store), "lock_timeout_s": lock_timeout_s},
        **SETTINGS,
    }


def _start(args: list[str], api_url: str | None = None) -> subprocess.Popen[str]:
    """Start a Python script of this project in its own session, with stdout piped."""
    env = dict(os.environ)
    env.pop("IMGPREP_KILL_AT", None)
    if api_url is not None:
        env["PREFECT_API_URL"] = api_url
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )


class FlowProcess:
    """The prepare flow running in a subprocess, with its output in files."""

    def __init__(self, config_path: Path, api_url: str, name: str) -> None:
        env = dict(os.environ)
        env.pop("IMGPREP_KILL_AT", None)
        env["PREFECT_API_URL"] = api_url
        self.stdout_path = config_path.parent / f"{name}.stdout"
        self.stderr_path = config_path.parent / f"{name}.stderr"
        with (
            open(self.stdout_path, "wb") as stdout,
            open(self.stderr_path, "wb") as stderr,
        ):
            self.process = subprocess.Popen(
                [sys.executable, str(SCRIPTS / "run_prepare.py"), str(config_path)],
                cwd=PROJECT_ROOT,
                env=env,
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def finish(self, timeout_s: float) -> dict[str, Any]:
        """Wait for the run and return its summary, failing with its stderr."""
        code = self.process.wait(timeout=timeout_s)
        stderr = self.stderr_path.read_text(errors="replace")
        assert code == 0, f"flow pid {self.pid} exited with {code}: {stderr[-3000:]}"
        lines = self.stdout_path.read_text().strip().splitlines()
        return json.loads(lines[-1])


def _stop(process: subprocess.Popen[str]) -> None:
    """Kill a subprocess this test started, if it still runs, and reap it."""
    if process.poll() is None:
        process.kill()
    process.wait(timeout=WAIT_S)
    if process.stdout is not None:
        process.stdout.close()


def _read_line(process: subprocess.Popen[str], timeout_s: float) -> str:
    """Return the next stdout line of ``process``, failing after ``timeout_s``."""
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout_s)
    assert ready, f"no output from pid {process.pid} within {timeout_s} s"
    return process.stdout.readline()


def _hold_lock(store: Path, seconds: float) -> tuple[subprocess.Popen[str], dict]:
    """Start a process that holds the store's lock; return it and its holder record."""
    process = _start([str(SCRIPTS / "hold_lock.py"), str(store), str(seconds)])
    line = _read_line(process, WAIT_S)
    word, _, record = line.partition(" ")
    assert word == "locked", line
    return process, json.loads(record)


def _wait_for_holder(store: Path, pid: int, process: subprocess.Popen) -> dict:
    """Poll ``STORE/lock`` until it names ``pid`` as the holder."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        assert process.poll() is None, f"pid {pid} exited before taking the lock"
        holder = _read_holder(store)
        if holder and holder.get("pid") == pid:
            return holder
        time.sleep(0.02)
    raise AssertionError(f"pid {pid} did not take the lock of {store}")


def _read_holder(store: Path) -> dict | None:
    try:
        text = (store / "lock").read_text(encoding="utf-8")
        return json.loads(text) if text.strip() else None
    except (OSError, json.JSONDecodeError):
        return None


def _wait_for_any_holder(store: Path, runs: list[FlowProcess]) -> FlowProcess:
    """Poll ``STORE/lock`` until its record names one of ``runs``; return that run."""
    by_pid = {run.pid: run for run in runs}
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        for run in runs:
            assert run.process.poll() is None, f"pid {run.pid} exited early"
        holder = _read_holder(store)
        if holder and holder.get("pid") in by_pid:
            return by_pid[holder["pid"]]
        time.sleep(0.02)
    raise AssertionError(f"no run took the lock of {store} within {WAIT_S} s")


def _wait_for_open_file(run: FlowProcess, path: Path) -> None:
    """Poll until process ``run`` has ``path`` open, as Store.lock keeps it."""
    folder = Path(f"/proc/{run.pid}/fd")
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        assert run.process.poll() is None, f"pid {run.pid} exited early"
        targets = set()
        for entry in folder.iterdir():
            try:
                targets.add(os.readlink(entry))
            except OSError:
                continue
        if str(path) in targets:
            return
        time.sleep(0.02)
    raise AssertionError(f"pid {run.pid} did not open {path} within {WAIT_S} s")


def _assert_names_holder(error: LockTimeoutError, holder: dict) -> None:
    message = str(error)
    assert f"host {holder['host']}" in message
    assert f"pid {holder['pid']}" in message
    assert f"started {holder['started']}" in message
    assert "lock_timeout_s" in message


def _running(pid: int) -> bool:
    """Return True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_lock_timeout_names_holder(tmp_path):
    store = tmp_path / "store"
    holder_process, holder = _hold_lock(store, 60)
    try:
        assert holder["pid"] == holder_process.pid
        assert holder["host"] == socket.gethostname()
        with pytest.raises(LockTimeoutError) as caught:
            with Store(store).lock(timeout_s=0.5):
                pytest.fail("took a lock that another process holds")
        _assert_names_holder(caught.value, holder)
    finally:
        _stop(holder_process)
    # The kernel dropped the killed holder's flock, so the lock is free again.
    with Store(store).lock(timeout_s=5) as ours:
        assert ours["pid"] == os.getpid()


def test_orphaned_child_lock_explained(tmp_path):
    store = tmp_path / "store"
    args = [str(SCRIPTS / "hold_lock.py"), str(store), "60", "--orphan-child"]
    parent = _start(args)
    child_pid = None
    try:
        word, _, record = _read_line(parent, WAIT_S).partition(" ")
        assert word == "locked"
        holder = json.loads(record)
        word, _, pid = _read_line(parent, WAIT_S).partition(" ")
        assert word == "child"
        child_pid = int(pid)
        assert parent.wait(timeout=WAIT_S) == 0
        # The record names the parent, which is gone; its child keeps the flock.
        with pytest.raises(LockTimeoutError) as caught:
            with Store(store).lock(timeout_s=0.5):
                pytest.fail("took a lock that an orphaned child holds")
        _assert_names_holder(caught.value, holder)
        assert f"Process {holder['pid']} is no longer running" in str(caught.value)
    finally:
        _stop(parent)
        if child_pid is not None:
            os.kill(child_pid, signal.SIGKILL)
    deadline = time.monotonic() + WAIT_S
    while _running(child_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    with Store(store).lock(timeout_s=WAIT_S) as ours:
        assert ours["pid"] == os.getpid()


def test_flow_lock_timeout_names_holder(tmp_path, image_root):
    store = tmp_path / "store"
    holder_process, holder = _hold_lock(store, 60)
    try:
        config = make_config(
            image_root, store, output={"lock_timeout_s": 1}, **SETTINGS
        )
        with pytest.raises(LockTimeoutError) as caught:
            run_flow(config)
        _assert_names_holder(caught.value, holder)
        assert Store(store).versions() == []
    finally:
        _stop(holder_process)


def test_flow_waits_then_commits(tmp_path, image_root):
    store = tmp_path / "store"
    holder_process, _ = _hold_lock(store, 3)
    try:
        config = make_config(
            image_root, store, output={"lock_timeout_s": WAIT_S}, **SETTINGS
        )
        result = run_flow(config)
        # The holder sleeps 3 s and exits 0 only after releasing the lock itself.
        assert holder_process.wait(timeout=WAIT_S) == 0
    finally:
        _stop(holder_process)
    assert result["version"] == 1
    assert verify_version(store, 1) == []


def test_running_flow_blocks_second_writer(tmp_path, image_root, api_url):
    store = tmp_path / "store"
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(_config_data(image_root, store, WAIT_S)))
    running = FlowProcess(config_path, api_url, "running")
    try:
        holder = _wait_for_holder(store, running.pid, running.process)
        # Freeze the flow while it holds the lock, so the checks below cannot race
        # with the end of its run.
        os.kill(running.pid, signal.SIGSTOP)
        try:
            assert _wait_for_holder(store, running.pid, running.process) == holder
            with pytest.raises(LockTimeoutError) as caught:
                with Store(store).lock(timeout_s=0.5):
                    pytest.fail("took a lock that a running flow holds")
            _assert_names_holder(caught.value, holder)
            second = make_config(
                image_root, store, output={"lock_timeout_s": 1}, **SETTINGS
            )
            with pytest.raises(LockTimeoutError) as caught:
                run_flow(second)
            _assert_names_holder(caught.value, holder)
        finally:
            os.kill(running.pid, signal.SIGCONT)
        summary = running.finish(WAIT_S)
    finally:
        _stop(running.process)
    assert summary["version"] == 1
    assert Store(store).versions() == [1]
    assert verify_version(store, 1) == []
    assert (store / "lock").read_text() == ""


def test_stale_lock_record_broken(tmp_path, caplog):
    store = tmp_path / "store"
    store.mkdir()
    stale = {
        "host": socket.gethostname(),
        "pid": _dead_pid(),
        "started": "2020-01-01T00:00:00+00:00",
    }
    (store / "lock").write_text(json.dumps(stale))
    with caplog.at_level(logging.WARNING, logger="imgprep.store"):
        with Store(store).lock(timeout_s=0) as holder:
            assert holder["pid"] == os.getpid()
            recorded = json.loads((store / "lock").read_text())
            assert recorded == holder
    messages = [r.getMessage() for r in caplog.records if r.name == "imgprep.store"]
    assert any("stale lock" in m and f"pid {stale['pid']}" in m for m in messages), (
        messages
    )
    assert (store / "lock").read_text() == ""


def test_killed_holder_lock_broken(tmp_path, image_root, caplog):
    store = tmp_path / "store"
    holder_process, holder = _hold_lock(store, 60)
    holder_process.send_signal(signal.SIGKILL)
    _stop(holder_process)
    # SIGKILL left the holder record behind; only the kernel's flock is gone.
    assert json.loads((store / "lock").read_text()) == holder
    config = make_config(image_root, store, output={"lock_timeout_s": 0}, **SETTINGS)
    with caplog.at_level(logging.WARNING, logger="imgprep.store"):
        result = run_flow(config)
    assert result["version"] == 1
    messages = [r.getMessage() for r in caplog.records if r.name == "imgprep.store"]
    assert any("stale lock" in m and f"pid {holder['pid']}" in m for m in messages), (
        messages
    )


def test_concurrent_flows_both_commit(tmp_path, image_root, api_url):
    store = tmp_path / "store"
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(_config_data(image_root, store, 300)))
    runs = [FlowProcess(config_path, api_url, f"run{i}") for i in (1, 2)]
    try:
        first = _wait_for_any_holder(store, runs)
        second = runs[1] if first is runs[0] else runs[0]
        # Freeze the lock holder until the other run is polling for the lock, so
        # the two runs certainly contend for it.
        os.kill(first.pid, signal.SIGSTOP)
        try:
            _wait_for_open_file(second, (store / "lock").resolve())
            assert _read_holder(store)["pid"] == first.pid
            assert Store(store).versions() == []
        finally:
            os.kill(first.pid, signal.SIGCONT)
        summaries = [first.finish(300), second.finish(300)]
    finally:
        for run in runs:
            _stop(run.process)
    assert [summary["version"] for summary in summaries] == [1, 2]

    assert Store(store).versions() == [1, 2]
    for version in (1, 2):
        assert verify_version(store, version) == [], version
    first_manifest = read_manifest(store, 1)
    second_manifest = read_manifest(store, 2)
    assert first_manifest["parent"] is None
    assert second_manifest["parent"] == 1
    assert first_manifest["flow_run_id"] != second_manifest["flow_run_id"]

    # The second run waited for the first to commit, so it refreshed version 1
    # without decoding anything instead of building a second copy beside it.
    assert first_manifest["refresh"]["images_decoded"] == 240
    assert second_manifest["refresh"]["images_decoded"] == 0
    assert second_manifest["refresh"]["shards_reused"] == len(first_manifest["shards"])
    first_shards = [entry["sha256"] for entry in first_manifest["shards"]]
    second_shards = [entry["sha256"] for entry in second_manifest["shards"]]
    assert second_shards == first_shards
    assert imgprep.open_version(store).version == 2
    assert Store(store).latest_pointer() == 2
