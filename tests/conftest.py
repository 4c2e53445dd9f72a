"""Shared fixtures: the ../shared fixture folder and an isolated Prefect harness."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
