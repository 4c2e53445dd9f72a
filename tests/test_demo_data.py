"""The demo data writer: deterministic, long-tailed, and idempotent on disk."""

from __future__ import annotations

from pathlib import Path

from imgprep.demo import DEMO_COUNTS, write_demo_data


def _snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(path.relative_to(root)): (path.read_bytes(), path.stat().st_mtime_ns)
        for path in sorted(root.rglob("*.png"))
    }


def test_demo_counts_long_tailed(tmp_path):
    written = write_demo_data(tmp_path / "demo")
    assert written == DEMO_COUNTS
    assert max(written.values()) / min(written.values()) >= 40


def test_second_write_leaves_files_alone(tmp_path):
    root = tmp_path / "demo"
    write_demo_data(root)
    before = _snapshot(root)
    write_demo_data(root)
    assert _snapshot(root) == before


def test_changed_file_restored(tmp_path):
    root = tmp_path / "demo"
    write_demo_data(root)
    target = sorted(root.rglob("*.png"))[0]
    original = target.read_bytes()
    target.write_bytes(b"damaged")
    write_demo_data(root)
    assert target.read_bytes() == original
