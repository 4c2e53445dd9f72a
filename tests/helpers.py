"""Helpers for tests that run the real flow and check its output independently."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from imgprep.config import PrepareConfig, load_config


def make_config(source_root: Path, store: Path, **sections: Any) -> PrepareConfig:
    """Return a validated config for ``source_root`` and ``store`` with overrides."""
    data: dict[str, Any] = {
        "dataset": {"name": "test"},
        "source": {"root": str(source_root)},
        "output": {"store": str(store)},
        "runner": {"type": "thread", "workers": 2},
    }
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return load_config(data=data)


def run_flow(config: PrepareConfig, **kwargs: Any) -> dict[str, Any]:
    from flows.prepare import prepare_dataset

    return prepare_dataset(config, **kwargs)


def read_manifest(store: Path, version: int | None = None) -> dict[str, Any]:
    if version is None:
        version = int((store / "LATEST").read_text())
    return json.loads(
        (store / "versions" / f"{version:06d}" / "manifest.json").read_text()
    )


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def split_of(sample_id: str, salt: str, fractions: dict[str, float]) -> str:
    """Reimplement the documented hash split, for independent checks."""
    digest = hashlib.sha256(f"{salt}\x00sample:{sample_id}".encode()).digest()
    unit = int.from_bytes(digest[:8], "big") / 2**64
    edge = 0.0
    for name in ("train", "val", "test"):
        edge += fractions[name]
        if unit < edge:
            return name
    return "test"


def folder_counts(
    root: Path, salt: str, fractions: dict[str, float]
) -> dict[str, Counter]:
    """Count files per split and class of a class-per-folder tree, by the hash rule."""
    counts: dict[str, Counter] = {
        "train": Counter(),
        "val": Counter(),
        "test": Counter(),
    }
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.name.startswith("."):
            sample_id = file_sha256(path)
            counts[split_of(sample_id, salt, fractions)][path.parent.name] += 1
    return counts


def reference_stats(pixels: np.ndarray) -> dict[str, np.ndarray]:
    """Per-channel float64 statistics of (N, H, W, C) pixels."""
    flat = pixels.reshape(-1, pixels.shape[-1]).astype(np.float64)
    return {
        "min": flat.min(axis=0),
        "max": flat.max(axis=0),
        "mean": flat.mean(axis=0),
        "std": flat.std(axis=0),
        "p1": np.percentile(flat, 1, axis=0),
        "p99": np.percentile(flat, 99, axis=0),
    }
