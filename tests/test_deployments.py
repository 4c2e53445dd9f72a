"""Tests of the Prefect deployments in deployments/.

The fast tests read deployments/prefect.yaml and build the served deployments of
deployments/serve.py without a server. The slow tests start a real Prefect server on
127.0.0.1 with its own PREFECT_HOME and deploy with the commands of
deployments/README.md. They run flow runs through a process worker and through
serve.py, then read states, schedules and logs back from the server's REST API. Every
process they start runs in its own process group and is stopped by PID, also when a
test fails.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import zoneinfo
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import numpy as np
import psutil
import pytest
import yaml
from PIL import Image

from imgprep.config import PrepareConfig
from tests.helpers import read_manifest

REPO_ROOT = Path(__file__).resolve().parents[1]
PREFECT_FILE = REPO_ROOT / "deployments" / "prefect.yaml"
SERVE_SCRIPT = REPO_ROOT / "deployments" / "serve.py"
DEMO_CONFIG = REPO_ROOT / "config" / "demo.yaml"
BIN = Path(sys.executable).parent
PREFECT = str(BIN / "prefect")

FLOW_NAME = "prepare-dataset"
POOL = "imgprep-process"
NIGHTLY_CRON = "0 2 * * *"

# Bounded waits, in seconds. A cold server start took 10-15 s on a loaded 2-core
# machine (prefect 3.9.1), and the limits leave room for slower CI runners.
SERVER_START_TIMEOUT_S = 120.0
CLI_TIMEOUT_S = 120.0
WORKER_TIMEOUT_S = 240.0
RUN_TIMEOUT_S = 180.0
LOG_TIMEOUT_S = 30.0
TERMINAL_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


# ---------------------------------------------------------------------------
# deployments/prefect.yaml and serve.py without a server


def _prefect_yaml() -> dict[str, Any]:
    return yaml.safe_load(PREFECT_FILE.read_text(encoding="utf-8"))


def _deployment_specs() -> dict[str, dict[str, Any]]:
    return {spec["name"]: spec for spec in _prefect_yaml()["deployments"]}


def _load_serve_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("imgprep_serve", SERVE_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_prefect_yaml_lists_manual_and_refresh():
    specs = _deployment_specs()
    assert sorted(specs) == ["manual", "refresh"]
    for name, spec in specs.items():
        assert spec["entrypoint"] == "flows/prepare.py:prepare_dataset", name
        assert spec["work_pool"]["name"] == POOL, name


def test_prefect_yaml_defaults_equal_demo_config():
    demo = yaml.safe_load(DEMO_CONFIG.read_text(encoding="utf-8"))
    for name, spec in _deployment_specs().items():
        parameters = spec["parameters"]
        assert parameters["config"] == demo, name
        assert parameters["rehash"] is False, name
        # The server validates run parameters against the flow's schema, so the
        # defaults must pass the same model.
        PrepareConfig.model_validate(parameters["config"])


def test_prefect_yaml_schedules():
    specs = _deployment_specs()
    assert not specs["manual"].get("schedules")
    schedules = specs["refresh"]["schedules"]
    assert len(schedules) == 1
    assert schedules[0]["cron"] == NIGHTLY_CRON
    assert schedules[0]["active"] is True
    zoneinfo.ZoneInfo(schedules[0]["timezone"])


def test_prefect_yaml_pull_step_uses_deploy_directory():
    data = _prefect_yaml()
    build = data["build"][0]["prefect.deployments.steps.run_shell_script"]
    assert build["script"] == "pwd"
    pull = data["pull"][0]["prefect.deployments.steps.set_working_directory"]
    assert pull["directory"] == "{{ " + build["id"] + ".stdout }}"


def test_serve_builds_served_deployments():
    serve = _load_serve_module()
    specs = _deployment_specs()
    deployments = {d.name: d for d in serve.build_deployments(list(specs.values()))}

    assert sorted(deployments) == ["manual-served", "refresh-served"]
    manual = deployments["manual-served"]
    refresh = deployments["refresh-served"]
    assert manual.schedules in (None, [])
    assert len(refresh.schedules) == 1
    assert refresh.schedules[0].schedule.cron == NIGHTLY_CRON
    assert (
        refresh.schedules[0].schedule.timezone
        == (specs["refresh"]["schedules"][0]["timezone"])
    )
    assert manual.parameters == specs["manual"]["parameters"]
    assert refresh.parameters == specs["refresh"]["parameters"]
    assert manual.work_pool_name is None
    assert manual.entrypoint.endswith("flows/prepare.py:prepare_dataset")


def test_serve_without_api_url_exits_2(tmp_path: Path):
    env = _base_env(tmp_path / "prefect-home")
    result = subprocess.run(
        [sys.executable, str(SERVE_SCRIPT)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "PREFECT_API_URL is not set" in result.stderr


# ---------------------------------------------------------------------------
# Process helpers for the slow tests


def _base_env(prefect_home: Path) -> dict[str, str]:
    """Return this process's environment without Prefect settings, plus test ones.

    The session's conftest sets PREFECT_HOME and logging for the in-process test
    harness. None of that may leak into the server, worker or CLI processes.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    prefect_home.mkdir(parents=True, exist_ok=True)
    env.update(
        {
            "PREFECT_HOME": str(prefect_home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_LOGGING_LEVEL": "INFO",
            # Without a terminal, rich would wrap CLI output at 80 columns.
            "COLUMNS": "200",
        }
    )
    return env


def _start(
    args: list[str], env: dict[str, str], log_path: Path
) -> subprocess.Popen[bytes]:
    """Start a long-running process in its own process group, logging to a file."""
    with log_path.open("wb") as log:
        return subprocess.Popen(
            args,
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Stop a process started by _start, its process group and its descendants.

    Sends SIGTERM, then SIGKILL after 20 s. Descendants are collected first by PID
    because Prefect starts flow run processes in process groups of their own.
    """
    descendants: list[psutil.Process] = []
    if process.poll() is None:
        try:
            descendants = psutil.Process(process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            pass
        _kill_group(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
    _kill_group(process.pid, signal.SIGKILL)
    process.wait(timeout=20)
    for child in descendants:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass


def _kill_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _tail(path: Path, lines: int = 60) -> str:
    if not path.exists():
        return f"(no log at {path})"
    text = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return "\n".join(text[-lines:])


def _run(
    args: list[str], env: dict[str, str], timeout: float = CLI_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    """Run a short command in its own process group, killing the group on timeout."""
    process = subprocess.Popen(
        args,
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(
            f"{' '.join(args)} timed out after {timeout:.0f} s; output:\n{output}"
        )
    finally:
        _kill_group(process.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(args, process.returncode, output, None)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    """A running Prefect server and the environment that points clients at it."""

    api_url: str
    env: dict[str, str]
    log_path: Path
    tmp: Path

    def get(self, path: str) -> Any:
        response = httpx.get(f"{self.api_url}{path}", timeout=30)
        response.raise_for_status()
        return response.json()

    def post(self, path: str, body: dict[str, Any]) -> Any:
        response = httpx.post(f"{self.api_url}{path}", json=body, timeout=30)
        response.raise_for_status()
        return response.json()

    def cli(self, *args: str) -> str:
        """Run a prefect CLI command against this server and return its output."""
        result = _run([PREFECT, *args], self.env)
        assert result.returncode == 0, (
            f"prefect {' '.join(args)} exited {result.returncode}:\n{result.stdout}"
            f"\n--- server log ---\n{_tail(self.log_path)}"
        )
        return result.stdout

    def run_deployment(self, name: str, *param_args: str) -> str:
        """Create a flow run of FLOW_NAME/name and return its id."""
        output = self.cli("deployment", "run", f"{FLOW_NAME}/{name}", *param_args)
        match = re.search(r"UUID: ([0-9a-f-]{36})", output)
        assert match, f"no flow run id in the output of deployment run:\n{output}"
        return match.group(1)

    def wait_for_terminal(self, flow_run_id: str, context: str) -> dict[str, Any]:
        """Poll a flow run until its state is terminal and return the flow run."""
        deadline = time.monotonic() + RUN_TIMEOUT_S
        run: dict[str, Any] = {}
        while time.monotonic() < deadline:
            run = self.get(f"/flow_runs/{flow_run_id}")
            if run["state_type"] in TERMINAL_STATES:
                return run
            time.sleep(1)
        pytest.fail(
            f"flow run {flow_run_id} is still {run.get('state_type')} after "
            f"{RUN_TIMEOUT_S:.0f} s\n{context}"
        )

    def logs(self, flow_run_id: str) -> list[str]:
        """Return the messages of a flow run's logs in time order."""
        body = {
            "logs": {"flow_run_id": {"any_": [flow_run_id]}},
            "sort": "TIMESTAMP_ASC",
            "limit": 200,
        }
        return [entry["message"] for entry in self.post("/logs/filter", body)]

    def wait_for_log(self, flow_run_id: str, text: str) -> list[str]:
        """Poll a flow run's logs until one contains `text`, and return all messages.

        The flow process sends logs in batches, so they can arrive after the state.
        """
        deadline = time.monotonic() + LOG_TIMEOUT_S
        messages = self.logs(flow_run_id)
        while not any(text in m for m in messages) and time.monotonic() < deadline:
            time.sleep(1)
            messages = self.logs(flow_run_id)
        return messages


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Start `prefect server start` on a free loopback port for this module."""
    tmp = tmp_path_factory.mktemp("prefect-server")
    port = _free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    server_env = _base_env(tmp / "home")
    # The scheduler service would create runs of the nightly refresh; the tests
    # read the schedule from the deployment instead. The UI is not needed.
    server_env["PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED"] = "false"
    server_env["PREFECT_SERVER_UI_ENABLED"] = "false"
    log_path = tmp / "server.log"

    process = _start(
        [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        server_env,
        log_path,
    )
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        healthy = False

        while time.monotonic() < deadline and process.poll() is None:
            try:
                healthy = httpx.get(f"{api_url}/health", timeout=5).status_code == 200
            except httpx.HTTPError:
                healthy = False
            if healthy:
                break
            time.sleep(0.5)
        if not healthy:
            pytest.fail(
                f"Prefect server on port {port} was not healthy after "
                f"{SERVER_START_TIMEOUT_S:.0f} s (exit code {process.poll()}); "
                f"server log:\n{_tail(log_path, 200)}"
            )

        client_env = _base_env(tmp / "client-home")
        client_env["PREFECT_API_URL"] = api_url
        client_env["PREFECT_WORKER_QUERY_SECONDS"] = "2"
        client_env["PREFECT_RUNNER_POLL_FREQUENCY"] = "2"
        yield Server(api_url=api_url, env=client_env, log_path=log_path, tmp=tmp)
    finally:
        _stop(process)


# ---------------------------------------------------------------------------
# Data and store checks


def _write_pngs(folder: Path, count: int, seed: int) -> None:
    """Write `count` distinct 8x8 RGB PNGs into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(count):
        pixels = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
        Image.fromarray(pixels, "RGB").save(folder / f"{index:03d}.png")


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 PNGs in the class folders cat, dog and fox."""
    root = tmp_path_factory.mktemp("tiny") / "images"
    for seed, name in enumerate(("cat", "dog", "fox")):
        _write_pngs(root / name, 10, seed)
    return root


@pytest.fixture(scope="module")
def broken_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 candidate files in two classes, half of them not decodable."""
    root = tmp_path_factory.mktemp("broken") / "images"
    for seed, name in enumerate(("cat", "dog")):
        _write_pngs(root / name, 2, 100 + seed)
        for index in range(2):
            (root / name / f"broken-{index}.png").write_bytes(b"not a png file")
    return root


def _run_config(source: Path, store: Path, **ingest: Any) -> dict[str, Any]:
    """Return a `config` parameter with paths relative to the repository root.

    Relative paths resolve only when the flow runs in the repository root, so a
    completed run also checks the deployment's working directory.
    """
    config: dict[str, Any] = {
        "dataset": {"name": "tiny"},
        "source": {"root": os.path.relpath(source, REPO_ROOT)},
        "output": {"store": os.path.relpath(store, REPO_ROOT)},
        "runner": {"type": "thread", "workers": 2},
    }
    if ingest:
        config["ingest"] = ingest
    return config


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _assert_version_verifies(store: Path, source: Path, flow_run_id: str) -> None:
    """Check version 1 of `store` against its manifest, byte for byte."""
    manifest = read_manifest(store, 1)
    assert manifest["flow_run_id"] == flow_run_id
    assert manifest["source"]["root"] == str(source.resolve())
    assert manifest["source"]["ingested"] == 30
    assert manifest["source"]["quarantined"] == 0
    assert sorted(manifest["classes"]) == ["cat", "dog", "fox"]

    objects = [*manifest["shards"], *manifest["objects"].values()]
    assert manifest["shards"], "the manifest lists no shards"
    for entry in objects:
        path = store / entry["path"]
        assert path.is_file(), f"object {entry['path']} is missing"
        assert path.stat().st_size == entry["bytes"], entry["path"]
        assert _sha256(path) == entry["sha256"], entry["path"]
    version_dir = store / "versions" / "000001"
    for entry in manifest["files"]:
        path = version_dir / entry["name"]
        assert path.is_file(), f"file {entry['name']} is missing"
        assert _sha256(path) == entry["sha256"], entry["name"]


def _run_summary(server: Server, flow_run_id: str, extra: str = "") -> str:
    """Describe a flow run for an assertion message: state and last logs."""
    run = server.get(f"/flow_runs/{flow_run_id}")
    state = run.get("state") or {}
    logs = "\n".join(server.logs(flow_run_id)[-30:])
    return (
        f"flow run {flow_run_id}: {run.get('state_type')} "
        f"({state.get('message')})\n--- run logs ---\n{logs}\n{extra}"
    )


# ---------------------------------------------------------------------------
# Real server, work pool and worker


@pytest.mark.slow
def test_work_pool_deployments_run(
    prefect_server: Server, tiny_dataset: Path, broken_dataset: Path, tmp_path: Path
):
    server = prefect_server
    yaml_before = PREFECT_FILE.read_bytes()

    server.cli("work-pool", "create", POOL, "--type", "process")
    server.cli(
        "--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml"
    )
    assert PREFECT_FILE.read_bytes() == yaml_before, "prefect deploy changed the file"

    # Both deployments carry the pull step that sets the repository root.
    specs = _deployment_specs()
    expected_pull = [
        {
            "prefect.deployments.steps.set_working_directory": {
                "directory": str(REPO_ROOT)
            }
        }
    ]
    manual = server.get(f"/deployments/name/{FLOW_NAME}/manual")
    refresh = server.get(f"/deployments/name/{FLOW_NAME}/refresh")
    for deployment in (manual, refresh):
        assert deployment["pull_steps"] == expected_pull, deployment["name"]
        assert deployment["work_pool_name"] == POOL, deployment["name"]
        expected = specs[deployment["name"]]["parameters"]
        assert deployment["parameters"] == expected, deployment["name"]
    assert manual["schedules"] == []

    # The refresh deployment carries its nightly cron schedule.
    assert len(refresh["schedules"]) == 1
    schedule = refresh["schedules"][0]
    assert schedule["active"] is True
    assert schedule["schedule"]["cron"] == NIGHTLY_CRON
    assert (
        schedule["schedule"]["timezone"] == specs["refresh"]["schedules"][0]["timezone"]
    )
    assert refresh["parameters"]["rehash"] is False

    # Three manual runs, all picked up by one worker: a good one (with --param),
    # one with a missing source folder (with --params) and one with too many
    # undecodable files.
    good_store = tmp_path / "store-good"
    good_config = _run_config(tiny_dataset, good_store)
    good_id = server.run_deployment(
        "manual", "--param", f"config={json.dumps(good_config)}"
    )
    missing_source = tmp_path / "no-such-folder"
    missing_config = _run_config(missing_source, tmp_path / "store-missing")
    missing_id = server.run_deployment(
        "manual", "--params", json.dumps({"config": missing_config})
    )
    rejected_store = tmp_path / "store-rejected"
    rejected_config = _run_config(
        broken_dataset, rejected_store, max_rejected_fraction=0.25
    )
    rejected_id = server.run_deployment(
        "manual", "--param", f"config={json.dumps(rejected_config)}"
    )

    worker_log = tmp_path / "worker.log"
    worker = _start(
        [PREFECT, "worker", "start", "--pool", POOL, "--run-once"],
        server.env,
        worker_log,
    )
    try:
        worker.wait(timeout=WORKER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(
            f"worker --run-once did not exit within {WORKER_TIMEOUT_S:.0f} s; "
            f"worker log:\n{_tail(worker_log)}"
        )
    finally:
        _stop(worker)
    context = f"--- worker log ---\n{_tail(worker_log)}"

    good = server.wait_for_terminal(good_id, context)
    assert good["state_type"] == "COMPLETED", _run_summary(server, good_id, context)
    _assert_version_verifies(good_store, tiny_dataset, good_id)

    missing = server.wait_for_terminal(missing_id, context)
    assert missing["state_type"] == "FAILED", _run_summary(server, missing_id, context)
    assert "source root not found" in missing["state"]["message"]
    logs = server.wait_for_log(missing_id, "source root not found")
    assert any(f"source root not found: {missing_source}" in m for m in logs), (
        _run_summary(server, missing_id, context)
    )

    rejected = server.wait_for_terminal(rejected_id, context)
    assert rejected["state_type"] == "FAILED", _run_summary(
        server, rejected_id, context
    )
    logs = server.wait_for_log(rejected_id, "max_rejected_fraction")
    assert any("4 of 8 candidate files" in m for m in logs), _run_summary(
        server, rejected_id, context
    )
    assert not (rejected_store / "versions" / "000001").exists()


@pytest.mark.slow
def test_served_deployments_run(
    prefect_server: Server, tiny_dataset: Path, tmp_path: Path
):
    server = prefect_server
    serve_log = tmp_path / "serve.log"
    serve = _start([sys.executable, str(SERVE_SCRIPT)], server.env, serve_log)
    try:
        deadline = time.monotonic() + CLI_TIMEOUT_S
        names: set[str] = set()
        while time.monotonic() < deadline and serve.poll() is None:
            found = server.post(
                "/deployments/filter",
                {
                    "deployments": {
                        "name": {"any_": ["manual-served", "refresh-served"]}
                    }
                },
            )
            names = {d["name"] for d in found}
            if names == {"manual-served", "refresh-served"}:
                break
            time.sleep(1)
        assert names == {"manual-served", "refresh-served"}, (
            f"serve.py registered {sorted(names)} (exit code {serve.poll()}); "
            f"log:\n{_tail(serve_log)}"
        )

        refresh = server.get(f"/deployments/name/{FLOW_NAME}/refresh-served")
        assert refresh["work_pool_name"] is None
        assert [s["schedule"]["cron"] for s in refresh["schedules"]] == [NIGHTLY_CRON]

        store = tmp_path / "store-served"
        config = _run_config(tiny_dataset, store)
        run_id = server.run_deployment(
            "manual-served", "--param", f"config={json.dumps(config)}"
        )
        context = f"--- serve.py log ---\n{_tail(serve_log)}"
        run = server.wait_for_terminal(run_id, context)
        assert run["state_type"] == "COMPLETED", _run_summary(
            server, run_id, f"--- serve.py log ---\n{_tail(serve_log)}"
        )
        _assert_version_verifies(store, tiny_dataset, run_id)
    finally:
        _stop(serve)
