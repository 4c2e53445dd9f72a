"""Test helpers shared by the refresh, crash and lock tests.

They write small random image trees and check a store independently of
``imgprep``'s own verification: every object of every committed version is read
and hashed again.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

IMAGE_SIDE = 16


def encode_image(rng: np.random.Generator, fmt: str) -> bytes:
    """Return the bytes of a random 16x16 RGB image in ``fmt`` (``png`` or ``jpg``)."""
    pixels = rng.integers(0, 256, (IMAGE_SIDE, IMAGE_SIDE, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG" if fmt == "png" else "JPEG")
    return buffer.getvalue()


def write_image_tree(
    root: Path,
    counts: dict[str, int],
    seed: int,
    prefix: str = "img",
) -> list[Path]:
    """Write ``counts[class]`` random images per class folder; PNG and JPEG alternate.

    Returns the written paths in the order they were written.
    """
    rng = np.random.default_rng(seed)
    paths = []
    for label, count in counts.items():
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(count):
            fmt = "png" if index % 2 else "jpg"
            path = folder / f"{prefix}{index:04d}.{fmt}"
            path.write_bytes(encode_image(rng, fmt))
            paths.append(path)
    return paths


def version_dirs(store: Path) -> list[Path]:
    """Return every folder under ``versions/``, with or without a manifest."""
    folder = store / "versions"
    return sorted(folder.iterdir()) if folder.is_dir() else []


def verify_version(store: Path, version: int) -> list[str]:
    """Hash every object and file a version's manifest lists again.

    Returns one message per object or file whose size or sha256 differs from the
    manifest, so an empty list means the version is intact.
    """
    folder = store / "versions" / f"{version:06d}"
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    problems = []
    if manifest["version"] != version:
        problems.append(f"folder {folder.name} holds version {manifest['version']}")
    entries: list[dict[str, Any]] = [
        *manifest["shards"],
        *manifest["objects"].values(),
    ]
    for entry in entries:
        path = store / entry["path"]
        if not path.is_file():
            problems.append(f"{entry['path']}: missing")
            continue
        data = path.read_bytes()
        if len(data) != entry["bytes"]:
            problems.append(f"{entry['path']}: {len(data)} bytes, not {entry['bytes']}")
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            problems.append(f"{entry['path']}: sha256 differs from the manifest")
    for entry in manifest["files"]:
        path = folder / entry["name"]
        if not path.is_file():
            problems.append(f"{entry['name']}: missing")
            continue
        if hashlib.sha256(path.read_bytes()).hexdigest() != entry["sha256"]:
            problems.append(f"{entry['name']}: sha256 differs from the manifest")
    return problems


def histogram_arrays(store: Path, manifest: dict[str, Any]) -> dict[str, np.ndarray]:
    """Return the per-split count arrays of a version's ``histograms`` object."""
    data = (store / manifest["objects"]["histograms"]["path"]).read_bytes()
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


def sample_shard_sha256s(manifest: dict[str, Any]) -> set[str]:
    """Return the sha256 of every pixel shard (samples and synthetic) of a version."""
    return {entry["sha256"] for entry in manifest["shards"]}
