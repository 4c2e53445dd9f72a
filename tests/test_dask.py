"""The prepare flow run on real Dask clusters through prefect-dask.

A module fixture starts a ``dask scheduler`` and two ``dask worker`` processes on
127.0.0.1, each in its own process group and temporary working directory, and stops
them by process group when the module ends, also when a test fails. The demo tree is
prepared three times: with ``runner.type: thread`` as the reference, on that
existing cluster (``runner.address``), and on a local cluster that prefect-dask
starts itself. Both Dask runs must verify and write the same shard, histogram and
sources objects as the thread run. The run on the existing cluster must run its
chunks in the worker processes and report those task runs and their logs to the
test's Prefect API. The local cluster must listen only on loopback and leave no
process behind.

Run it with ``python -m pytest tests/test_dask.py -s`` to see the measured times.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from imgprep.audit import verify_version
from imgprep.config import PrepareConfig
from imgprep.store import Store
from tests.helpers import file_sha256, make_config, read_manifest, run_flow

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

BIN = Path(sys.executable).parent
INGEST_TASK_NAME = "ingest-chunk"

# Small images and chunks keep the runs short and give several chunks per run.
SETTINGS: dict[str, Any] = {
    "image": {"height": 16, "width": 16, "color_mode": "L"},
    "ingest": {"chunk_size": 64},
    "output": {"rows_per_shard": 32},
}

# Bounded waits, in seconds. The scheduler and two workers registered within 1 s
# on a loaded 2-core machine (distributed 2026.8.0), and the limits leave room for
# slower CI runners.
CLUSTER_START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 15.0
CHILD_EXIT_TIMEOUT_S = 30.0
API_LOG_TIMEOUT_S = 30.0

LOOPBACK = {"127.0.0.1", "::1"}

# Measured wall times in seconds, printed when the module ends.
TIMINGS: dict[str, float] = {}


# ---------------------------------------------------------------------------
# Process helpers


@dataclass
class DaskCluster:
    """A scheduler and workers started by this module, with their logs."""

    address: str
    processes: dict[str, subprocess.Popen[bytes]]
    logs: dict[str, Path]
    worker_pids: dict[str, int] = field(default_factory=dict)

    def log_tails(self, lines: int = 40) -> str:
        """Return the last lines of every process log, for failure messages."""
        parts = []
        for name, path in self.logs.items():
            parts.append(f"--- {name} ({path}) ---\n{_tail(path, lines)}")
        return "\n".join(parts)


def _dask_commands() -> tuple[list[str], list[str]]:
    """Return the scheduler and worker commands of this environment's Dask CLI."""
    dask = BIN / "dask"
    if dask.exists():
        return [str(dask), "scheduler"], [str(dask), "worker"]
    scheduler = BIN / "dask-scheduler"
    worker = BIN / "dask-worker"
    if scheduler.exists() and worker.exists():
        return [str(scheduler)], [str(worker)]
    pytest.fail(
        f"neither {dask} nor {scheduler} exists; install distributed into the "
        f"environment of {sys.executable}"
    )


def _free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _cluster_env(prefect_home: Path) -> dict[str, str]:
    """Return the environment of the Dask processes.

    Prefect settings of this process are left out, so the workers get the API URL
    of the flow run only from the settings that prefect-dask sends with each task.
    ``PREFECT_LOGGING_LEVEL=INFO`` makes each task run log its final state to the
    worker's stderr.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.pop("PYTHONPATH", None)
    prefect_home.mkdir(parents=True, exist_ok=True)
    env.update(
        {
            "PREFECT_HOME": str(prefect_home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_LOGGING_LEVEL": "INFO",
        }
    )
    return env


def _start(
    args: list[str], cwd: Path, env: dict[str, str], log_path: Path
) -> subprocess.Popen[bytes]:
    """Start a process in its own process group, logging to a file."""
    cwd.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        return subprocess.Popen(
            args,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Stop a process started by _start and its process group.

    Sends SIGTERM to the group, then SIGKILL when the process has not exited within
    STOP_TIMEOUT_S.
    """
    if process.poll() is None:
        _kill_group(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pass
    _kill_group(process.pid, signal.SIGKILL)
    process.wait(timeout=STOP_TIMEOUT_S)


def _kill_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _tail(path: Path, lines: int = 40) -> str:
    if not path.exists():
        return f"(no log at {path})"
    text = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return "\n".join(text[-lines:])


def _wait_for_workers(cluster: DaskCluster, count: int) -> None:
    """Wait until the scheduler lists ``count`` workers, then record their PIDs."""
    from distributed import Client

    deadline = time.monotonic() + CLUSTER_START_TIMEOUT_S
    with Client(
        cluster.address, timeout=CLUSTER_START_TIMEOUT_S, set_as_default=False
    ) as client:
        remaining = max(1.0, deadline - time.monotonic())
        client.wait_for_workers(count, timeout=remaining)
        cluster.worker_pids = client.run(os.getpid)


# ---------------------------------------------------------------------------
# Fixtures


@dataclass
class PrepareRun:
    """A finished prepare run: its store, result and Dask task stream records."""

    store: Path
    result: dict[str, Any]
    task_stream: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture(scope="module", autouse=True)
def timing_report() -> Iterator[None]:
    """Print the wall times measured by this module when the module ends."""
    yield
    timings = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in TIMINGS.items())
    print(f"\ndask test timings: {timings}")


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaskCluster]:
    """Start a scheduler and two single-thread workers on 127.0.0.1."""
    scheduler_command, worker_command = _dask_commands()
    base = tmp_path_factory.mktemp("dask-cluster")
    env = _cluster_env(base / "prefect-home")
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    cluster = DaskCluster(address=address, processes={}, logs={})
    started = time.perf_counter()
    try:
        cluster.logs["scheduler"] = base / "scheduler.log"
        cluster.processes["scheduler"] = _start(
            [
                *scheduler_command,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--dashboard-address",
                "127.0.0.1:0",
            ],
            base / "scheduler",
            env,
            cluster.logs["scheduler"],
        )
        for name in ("worker-a", "worker-b"):
            cwd = base / name
            cluster.logs[name] = base / f"{name}.log"
            cluster.processes[name] = _start(
                [
                    *worker_command,
                    address,
                    "--name",
                    name,
                    "--nthreads",
                    "1",
                    "--nworkers",
                    "1",
                    "--no-nanny",
                    "--host",
                    "127.0.0.1",
                    "--dashboard-address",
                    "127.0.0.1:0",
                    "--local-directory",
                    str(cwd / "dask-scratch"),
                    # A worker whose scheduler is gone exits on its own.
                    "--death-timeout",
                    "60",
                ],
                cwd,
                env,
                cluster.logs[name],
            )
        try:
            _wait_for_workers(cluster, 2)
        except (OSError, TimeoutError) as error:
            exited = {
                name: process.returncode
                for name, process in cluster.processes.items()
                if process.poll() is not None
            }
            pytest.fail(
                f"the Dask cluster at {address} did not list 2 workers within "
                f"{CLUSTER_START_TIMEOUT_S:.0f} s ({error}); exited processes and "
                f"return codes: {exited}\n{cluster.log_tails()}"
            )
        print(
            f"\ndask cluster: 2 workers ready in {time.perf_counter() - started:.1f} s"
        )
        yield cluster
    finally:
        for name in reversed(list(cluster.processes)):
            _stop(cluster.processes[name])


@pytest.fixture(scope="module")
def thread_run(demo_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> PrepareRun:
    """Prepare the demo tree in the flow process, as the reference output."""
    store = tmp_path_factory.mktemp("thread-store") / "store"
    config = make_config(demo_tree, store, runner={"type": "thread"}, **SETTINGS)
    started = time.perf_counter()
    result = run_flow(config)
    TIMINGS["thread"] = time.perf_counter() - started
    return PrepareRun(store, result)


@pytest.fixture(scope="module")
def cluster_run(
    dask_cluster: DaskCluster,
    demo_tree: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> PrepareRun:
    """Prepare the demo tree on the existing cluster, recording its task stream."""
    from distributed import Client, get_task_stream

    store = tmp_path_factory.mktemp("cluster-store") / "store"
    config = make_config(
        demo_tree,
        store,
        runner={"type": "dask", "address": dask_cluster.address},
        **SETTINGS,
    )
    with Client(dask_cluster.address, timeout=30, set_as_default=False) as observer:
        with get_task_stream(client=observer) as stream:
            started = time.perf_counter()
            try:
                result = run_flow(config)
            except Exception as error:
                pytest.fail(
                    f"prepare on the Dask cluster at {dask_cluster.address} failed: "
                    f"{error!r}\n{dask_cluster.log_tails()}"
                )
            TIMINGS["existing cluster"] = time.perf_counter() - started
    return PrepareRun(store, result, list(stream.data))


# ---------------------------------------------------------------------------
# Checks


def _chunk_count(demo_tree: Path) -> int:
    files = [p for p in demo_tree.rglob("*") if p.is_file()]
    return math.ceil(len(files) / SETTINGS["ingest"]["chunk_size"])


def _output_digests(store: Path) -> dict[str, Any]:
    """Return the sha256 of the shards, histograms and sources table of a version."""
    manifest = read_manifest(store)
    return {
        "shards": sorted(s["sha256"] for s in manifest["shards"]),
        "histograms": manifest["objects"]["histograms"]["sha256"],
        "sources": manifest["objects"]["sources"]["sha256"],
    }


def _check_digests_on_disk(store: Path) -> list[str]:
    """Return the objects and files of the newest version whose sha256 differs."""
    manifest = read_manifest(store)
    folder = store / "versions" / f"{manifest['version']:06d}"
    entries = [
        (store / entry["path"], entry["sha256"])
        for entry in [*manifest["shards"], *manifest["objects"].values()]
    ]
    entries += [
        (folder / entry["name"], entry["sha256"]) for entry in manifest["files"]
    ]
    return [str(path) for path, digest in entries if file_sha256(path) != digest]


def _ingest_task_runs(flow_run_id: str) -> list[Any]:
    from prefect import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        TaskRunFilter,
        TaskRunFilterName,
    )

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
            task_run_filter=TaskRunFilter(
                name=TaskRunFilterName(like_=INGEST_TASK_NAME)
            ),
        )
    return list(runs)


def _task_runs_with_logs(task_run_ids: set[str]) -> set[str]:
    """Return which of ``task_run_ids`` have log records in the Prefect API."""
    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterTaskRunId

    with get_client(sync_client=True) as client:
        logs = client.read_logs(
            log_filter=LogFilter(task_run_id=LogFilterTaskRunId(any_=task_run_ids))
        )
    return {str(log.task_run_id) for log in logs}


def _time_local_cluster(config: PrepareConfig) -> tuple[float, float]:
    """Return the seconds to start and to stop the local cluster of ``config``."""
    from flows.prepare import _chunk_runner

    started = time.perf_counter()
    with _chunk_runner(config) as runner:
        # DaskTaskRunner starts its cluster when its client is first used.
        runner.client.wait_for_workers(config.runner.workers, timeout=60)
        stopping = time.perf_counter()
    return stopping - started, time.perf_counter() - stopping


def _children() -> set[int]:
    return {child.pid for child in psutil.Process().children(recursive=True)}


def _is_resource_tracker(pid: int) -> bool:
    """Tell whether ``pid`` is the resource tracker of ``multiprocessing``.

    multiprocessing starts one tracker per interpreter the first time it starts a
    process with ``spawn`` or ``forkserver``, and the tracker exits when the
    interpreter does, so it outlives the local cluster by design.
    """
    try:
        command = " ".join(psutil.Process(pid).cmdline())
    except psutil.NoSuchProcess:
        return False
    return "multiprocessing.resource_tracker" in command


def _describe(pids: set[int]) -> list[str]:
    described = []
    for pid in sorted(pids):
        try:
            described.append(f"{pid}: {' '.join(psutil.Process(pid).cmdline())}")
        except psutil.NoSuchProcess:
            described.append(f"{pid}: (exited)")
    return described


class ListenWatcher(threading.Thread):
    """Record the listening TCP sockets of this process and its descendants."""

    def __init__(self, interval_s: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.interval_s = interval_s
        self.sockets: set[tuple[int, str, int]] = set()
        self._stopped = threading.Event()

    def run(self) -> None:
        while not self._stopped.is_set():
            self.sample()
            self._stopped.wait(self.interval_s)

    def sample(self) -> None:
        me = psutil.Process()
        for process in [me, *me.children(recursive=True)]:
            try:
                connections = process.net_connections(kind="inet")
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            for connection in connections:
                if connection.status == psutil.CONN_LISTEN:
                    address = connection.laddr
                    self.sockets.add((process.pid, address.ip, address.port))

    def stop(self) -> None:
        self._stopped.set()
        self.join(timeout=10)


# ---------------------------------------------------------------------------
# Tests


def test_cluster_run_verifies(cluster_run: PrepareRun):
    assert cluster_run.result["version"] == 1
    report = verify_version(Store(cluster_run.store), 1)
    assert report["status"] == "ok", report
    assert _check_digests_on_disk(cluster_run.store) == []


def test_cluster_chunks_ran_on_workers(
    cluster_run: PrepareRun, dask_cluster: DaskCluster, demo_tree: Path
):
    chunks = _chunk_count(demo_tree)
    assert chunks >= 4
    records = cluster_run.task_stream
    assert len(records) == chunks, records
    for record in records:
        assert record["status"] == "OK", record
    workers = {record["worker"] for record in records}
    assert workers <= set(dask_cluster.worker_pids), (workers, dask_cluster.worker_pids)
    # With --no-nanny, the worker runs tasks in the process that this module started.
    started_pids = {
        dask_cluster.processes[name].pid for name in ("worker-a", "worker-b")
    }
    assert set(dask_cluster.worker_pids.values()) == started_pids


def test_cluster_task_runs_reported(cluster_run: PrepareRun, demo_tree: Path):
    manifest = read_manifest(cluster_run.store)
    runs = _ingest_task_runs(manifest["flow_run_id"])
    states = sorted(run.state.type.value for run in runs if run.state)
    assert states == ["COMPLETED"] * _chunk_count(demo_tree)

    # Workers send run logs to the API in batches, so they may arrive late.
    run_ids = {str(run.id) for run in runs}
    deadline = time.monotonic() + API_LOG_TIMEOUT_S
    logged = _task_runs_with_logs(run_ids)
    while logged != run_ids and time.monotonic() < deadline:
        time.sleep(1)
        logged = _task_runs_with_logs(run_ids)
    assert logged == run_ids, f"task runs without logs: {sorted(run_ids - logged)}"


def test_cluster_worker_logs_name_chunks(
    cluster_run: PrepareRun, dask_cluster: DaskCluster, demo_tree: Path
):
    finished = 0
    for name in ("worker-a", "worker-b"):
        text = dask_cluster.logs[name].read_text(errors="replace")
        finished += sum(
            1
            for line in text.splitlines()
            if INGEST_TASK_NAME in line and "Finished in state Completed" in line
        )
    assert finished == _chunk_count(demo_tree), dask_cluster.log_tails()


def test_cluster_output_matches_thread(cluster_run: PrepareRun, thread_run: PrepareRun):
    expected = _output_digests(thread_run.store)
    found = _output_digests(cluster_run.store)
    assert found["shards"] == expected["shards"]
    assert found["histograms"] == expected["histograms"]
    assert found["sources"] == expected["sources"]


def test_local_cluster_run(thread_run: PrepareRun, demo_tree: Path, tmp_path: Path):
    store = tmp_path / "store"
    config = make_config(
        demo_tree, store, runner={"type": "dask", "workers": 2}, **SETTINGS
    )
    before = _children()
    watcher = ListenWatcher()
    watcher.start()
    try:
        started = time.perf_counter()
        result = run_flow(config)
        TIMINGS["local cluster"] = time.perf_counter() - started
        start_s, stop_s = _time_local_cluster(config)
        TIMINGS["local cluster start"] = start_s
        TIMINGS["local cluster stop"] = stop_s
    finally:
        watcher.stop()

    assert result["version"] == 1
    report = verify_version(Store(store), 1)
    assert report["status"] == "ok", report
    expected = _output_digests(thread_run.store)
    found = _output_digests(store)
    assert found["shards"] == expected["shards"]
    assert found["histograms"] == expected["histograms"]
    assert found["sources"] == expected["sources"]

    public = sorted(entry for entry in watcher.sockets if entry[1] not in LOOPBACK)
    assert public == [], f"sockets listening beyond loopback (pid, ip, port): {public}"

    deadline = time.monotonic() + CHILD_EXIT_TIMEOUT_S
    while True:
        left = {pid for pid in _children() - before if not _is_resource_tracker(pid)}
        if not left or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    assert not left, f"processes of the local Dask cluster still run: {_describe(left)}"
