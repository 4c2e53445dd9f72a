"""Shared fixtures: the ../shared fixture folder and an isolated Prefect harness."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

# Prefect reads its settings when it is first imported, so the isolated home and
# server settings are set before any test module imports it.
_PREFECT_HOME = tempfile.mkdtemp(prefix="imgprep-test-prefect-")
atexit.register(shutil.rmtree, _PREFECT_HOME, ignore_errors=True)
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "120"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.pop("PREFECT_API_URL", None)

import pytest  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = PROJECT_ROOT.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """Return ../shared, or skip the test when this checkout has no such folder."""
    if not (SHARED_DIR / "cases").is_dir():
        pytest.skip(f"fixture folder {SHARED_DIR} is absent (a plain clone has none)")
    return SHARED_DIR


@pytest.fixture(scope="session")
def cases_dir(shared_dir: Path) -> Path:
    return shared_dir / "cases"


@pytest.fixture(scope="session")
def data_dir(shared_dir: Path) -> Path:
    return shared_dir / "data"


@pytest.fixture(scope="session")
def prefect_harness():
    """Run one temporary Prefect API server for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def demo_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Write the demo data set once per session."""
    from imgprep.demo import write_demo_data

    root = tmp_path_factory.mktemp("demo") / "digits"
    write_demo_data(root)
    return root
