"""Error lines and wording of the imgprep command line.

Most tests call the CLI in-process through typer's CliRunner. The run failure tests
start ``imgprep`` as a subprocess against the session's Prefect server on
127.0.0.1, because Prefect's log handler writes to the process's real stderr.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from imgprep.cli import app
from tests.helpers import make_config, run_flow

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

IMGPREP = Path(sys.executable).parent / "imgprep"


def invoke(*args: Any) -> Any:
    """Run the imgprep CLI in-process with a wide terminal, so lines are not folded."""
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "250"})


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Return a store with two versions of eight 8x8 images in two classes."""
    base = tmp_path_factory.mktemp("cli_errors")
    source = base / "images"
    rng = np.random.default_rng(7)
    for label in ("cat", "dog"):
        (source / label).mkdir(parents=True)
        for index in range(4):
            pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(source / label / f"{index}.png")
    store = base / "store"
    config = make_config(
        source,
        store,
        image={"height": 8, "width": 8},
        split={"fractions": {"train": 1.0, "val": 0.0, "test": 0.0}},
        runner={"type": "thread", "workers": 1},
    )
    run_flow(config)
    run_flow(config)
    return store


@pytest.fixture()
def a_file(tmp_path: Path) -> Path:
    path = tmp_path / "storefile"
    path.write_text("not a folder\n")
    return path


def write_config(tmp_path: Path, root: Path, store: Path) -> Path:
    path = tmp_path / "config.yaml"
    data = {
        "source": {"root": str(root)},
        "output": {"store": str(store)},
        "runner": {"type": "thread", "workers": 1},
    }
    path.write_text(yaml.safe_dump(data))
    return path


# ------------------------------------------------------------------- paths
def test_run_config_is_folder(tmp_path: Path):
    result = invoke("run", "-c", tmp_path)
    assert result.exit_code == 2
    lines = error_lines(result.stderr)
    assert len(lines) == 1
    assert str(tmp_path) in lines[0]
    assert "is a folder, not a file" in lines[0]
    assert "Traceback" not in result.output


def test_run_store_is_file(tmp_path: Path, a_file: Path):
    config = write_config(tmp_path, tmp_path, tmp_path / "store")
    result = invoke("run", "-c", config, "--set", f"output.store={a_file}")
    assert result.exit_code == 2
    assert "error: invalid configuration" in result.stderr
    assert f"output.store (got '{a_file}')" in result.stderr
    assert "set output.store to a new folder" in result.stderr
    assert not isinstance(result.exception, OSError)


def test_run_boolean_override_rejected(tmp_path: Path):
    config = write_config(tmp_path, tmp_path, tmp_path / "store")
    result = invoke(
        "run", "-c", config, "--set", "image.height=yes", "--set", "image.width=true"
    )
    assert result.exit_code == 2
    assert "image.height (got True): expected an integer" in result.stderr
    assert "image.width (got True): expected an integer" in result.stderr
    assert not (tmp_path / "store").exists()


def test_demo_data_into_file(a_file: Path):
    for destination in (a_file, a_file / "inner"):
        result = invoke("demo-data", destination)
        assert result.exit_code == 2
        lines = error_lines(result.stderr)
        assert len(lines) == 1
        assert str(destination) in lines[0]
        assert f"{a_file} is a file" in lines[0]


def test_export_into_file(tiny_store: Path, a_file: Path):
    result = invoke("export", tiny_store, a_file)
    assert result.exit_code == 1
    lines = error_lines(result.stderr)
    assert len(lines) == 1
    assert f"export destination {a_file} is a file" in lines[0]
    assert "pass a new folder" in lines[0]


def test_export_leaves_no_empty_folder(tiny_store: Path, tmp_path: Path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_store, broken)
    for shard in (broken / "objects").rglob("*.parquet"):
        data = bytearray(shard.read_bytes())
        data[len(data) // 2] ^= 0xFF
        shard.write_bytes(bytes(data))
    destination = tmp_path / "export"
    result = invoke("export", broken, destination)
    assert result.exit_code == 1
    assert error_lines(result.stderr)
    assert not destination.exists()


# ------------------------------------------------------------ verify and gc
def test_verify_strict_clean_pass(tiny_store: Path):
    result = invoke("verify", tiny_store, "--strict", "--quiet")
    assert result.exit_code == 0
    assert "verify passed: 2 versions," in result.stdout
    assert "; 0 warnings" in result.stdout
    assert "failing under --strict" not in result.stdout


def test_verify_one_version_singular(tiny_store: Path):
    result = invoke("verify", f"{tiny_store}@1", "--quiet")
    assert result.exit_code == 0
    assert "verify passed: 1 version," in result.stdout


def test_verify_strict_warning_fails(tiny_store: Path, tmp_path: Path):
    store = tmp_path / "store"
    shutil.copytree(tiny_store, store)
    (store / "tmp").mkdir(exist_ok=True)
    (store / "tmp" / "x.tmp").write_bytes(b"partial")
    result = invoke("verify", store, "--strict", "--quiet")
    assert result.exit_code == 1
    assert "verify FAILED" in result.stdout
    assert "; 1 warning (failing under --strict)" in result.stdout


def test_gc_names_version_numbers(tiny_store: Path, tmp_path: Path):
    store = tmp_path / "store"
    shutil.copytree(tiny_store, store)
    result = invoke("gc", store, "--keep", "1")
    assert result.exit_code == 0
    assert "keeping version 2 (1 version); removing version 1 (1 version)" in (
        result.stdout
    )


def test_help_hides_flag_types():
    result = invoke("run", "--help")
    assert result.exit_code == 0
    assert "KEY=VALUE" in result.stdout
    assert "list[str]" not in result.stdout
    assert "--verbose" in result.stdout
    flag_rows = [
        line
        for line in result.stdout.splitlines()
        if re.search(r"--(rehash|progress|verbose)\b", line)
    ]
    assert flag_rows
    for line in flag_rows:
        assert "<bool>" not in line


# ---------------------------------------------------------- failed flow run
def run_cli(*args: Any) -> subprocess.CompletedProcess[str]:
    import prefect.settings

    api_url = prefect.settings.PREFECT_API_URL.value()
    assert api_url.startswith("http://127.0.0.1:"), api_url
    env = dict(os.environ, PREFECT_API_URL=api_url, COLUMNS="250")
    return subprocess.run(
        [str(IMGPREP), *[str(a) for a in args]],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_run_missing_root_before_flow(tmp_path: Path):
    missing = tmp_path / "no-such-root"
    config = write_config(tmp_path, missing, tmp_path / "store")
    result = run_cli("run", "-c", config, "--no-progress")
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output
    # The source is checked before Prefect starts, so no flow run is created.
    assert "Beginning flow run" not in output
    lines = error_lines(result.stderr)
    assert len(lines) == 1
    assert f"source root not found: {missing}" in lines[0]


def empty_root_config(tmp_path: Path) -> tuple[Path, Path]:
    """Return an empty source folder and a config that points at it."""
    empty = tmp_path / "empty-root"
    empty.mkdir()
    return empty, write_config(tmp_path, empty, tmp_path / "store")


def test_run_empty_root_one_error(tmp_path: Path):
    empty, config = empty_root_config(tmp_path)
    result = run_cli("run", "-c", config, "--no-progress")
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output
    assert "Encountered exception" in output
    lines = error_lines(result.stderr)
    assert len(lines) == 1
    assert f"no image files found in the source root {empty}" in lines[0]


def test_run_verbose_keeps_traceback(tmp_path: Path):
    _, config = empty_root_config(tmp_path)
    result = run_cli("run", "-c", config, "--no-progress", "--verbose")
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" in output
    assert "SourceError" in output
    assert len(error_lines(result.stderr)) == 1
