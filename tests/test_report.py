"""report.html of versions written by the real flow, parsed and checked as HTML."""

from __future__ import annotations

import base64
import copy
import hashlib
import io
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from imgprep.balance import balance_profile
from imgprep.report import MAX_LISTED_FILES, THUMBNAILS_PER_CLASS, render_report
from imgprep.store import Store
from tasks.profile import artifact_key
from tests.helpers import make_config, read_manifest, run_flow

pytestmark = pytest.mark.usefixtures("prefect_harness")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
BROWSER_CHECK = PROJECT_ROOT / "scripts" / "check_report_browser.py"
CHROMIUM = Path("/usr/bin/chromium")

DATASET = "report-check"
# A folder name cannot contain "/", so the hostile folder uses a tag without an end
# tag. The <script> end tag is checked by rendering a renamed class directly.
HOSTILE_CLASS = "<img src=x onerror=alert(1)>"
SCRIPT_CLASS = "<script>alert(1)</script>"
SECTION_IDS = (
    "header",
    "class-balance",
    "imbalance",
    "normalization",
    "samples",
    "quarantine",
    "skipped",
    "refresh",
    "diff",
)
# Demo files deleted before the second version, per class.
DELETED = {"0": 4, "1": 2}


@dataclass
class ParsedPage:
    """Elements of a parsed page: ids, images, links and the rows of each table."""

    ids: set[str] = field(default_factory=set)
    tags: list[str] = field(default_factory=list)
    images: list[dict[str, str | None]] = field(default_factory=list)
    attributes: list[tuple[str, str, str | None]] = field(default_factory=list)
    tables: dict[str, list[list[str]]] = field(default_factory=dict)
    text: list[str] = field(default_factory=list)


class PageParser(HTMLParser):
    """Collect what the tests check, with the standard library's HTML parser."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.page = ParsedPage()
        self._table: str | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        self.page.tags.append(tag)
        for name, value in attrs:
            self.page.attributes.append((tag, name, value))
        if values.get("id"):
            self.page.ids.add(str(values["id"]))
        if tag == "img":
            self.page.images.append(values)
        elif tag == "table" and values.get("id"):
            self._table = str(values["id"])
            self.page.tables[self._table] = []
        elif tag == "tr" and self._table:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None and self._table:
            self.page.tables[self._table].append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        self.page.text.append(data)
        if self._cell is not None:
            self._cell.append(data)


def parse_page(document: bytes) -> ParsedPage:
    parser = PageParser()
    parser.feed(document.decode("utf-8"))
    parser.close()
    return parser.page


def body_rows(page: ParsedPage, table_id: str) -> list[list[str]]:
    """Return the rows of a table without its header row."""
    assert table_id in page.tables, f"table {table_id} is missing"
    return page.tables[table_id][1:]


@dataclass
class ReportVersions:
    store: Path
    source: Path
    deleted: list[str]

    def report(self, version: int) -> Path:
        return self.store / "versions" / f"{version:06d}" / "report.html"


def write_noise_images(folder: Path, count: int, seed: int) -> None:
    """Write distinct grayscale PNGs, so no file is a duplicate of another."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        pixels = rng.integers(0, 256, (32, 32), dtype=np.uint8)
        Image.fromarray(pixels, "L").save(folder / f"noise-{index}.png")


@pytest.fixture(scope="module")
def report_versions(
    demo_tree: Path, tmp_path_factory: pytest.TempPathFactory
) -> ReportVersions:
    """Write two versions: the demo plus hostile and broken files, then deletions."""
    source = tmp_path_factory.mktemp("report-source") / "digits"
    shutil.copytree(demo_tree, source)
    hostile = source / HOSTILE_CLASS
    write_noise_images(hostile, 8, seed=11)
    (hostile / "broken.png").write_bytes(b"")
    (source / "3" / "notes.txt").write_text("not an image\n")
    store = tmp_path_factory.mktemp("report-store") / "store"
    config = make_config(
        source,
        store,
        dataset={"name": DATASET},
        image={"height": 32, "width": 32, "color_mode": "L"},
        resample={"method": "smote", "features": {"kind": "pixels"}},
        ingest={"chunk_size": 200},
        output={"rows_per_shard": 256},
    )
    run_flow(config)
    deleted = []
    for name, count in DELETED.items():
        for path in sorted((source / name).iterdir())[:count]:
            path.unlink()
            deleted.append(f"{name}/{path.name}")
    run_flow(config)
    return ReportVersions(store=store, source=source, deleted=deleted)


@pytest.fixture(scope="module")
def first_page(report_versions: ReportVersions) -> ParsedPage:
    return parse_page(report_versions.report(1).read_bytes())


@pytest.fixture(scope="module")
def second_page(report_versions: ReportVersions) -> ParsedPage:
    return parse_page(report_versions.report(2).read_bytes())


def test_report_has_every_section(first_page, second_page):
    for page in (first_page, second_page):
        for section in SECTION_IDS:
            assert section in page.ids, section


def test_report_tables_and_charts_present(first_page):
    for table in (
        "version-fields",
        "class-counts",
        "imbalance-metrics",
        "class-weights-train",
        "normalization-table",
        "refresh-counters",
    ):
        assert body_rows(first_page, table), table
    assert "class-balance-chart" in first_page.ids
    assert "channel-histograms-chart" in first_page.ids


def test_report_class_counts_match_manifest(report_versions, first_page):
    manifest = read_manifest(report_versions.store, 1)
    rows = {row[0]: row for row in body_rows(first_page, "class-counts")}
    for name in manifest["classes"]:
        row = rows[name]
        for column, split in enumerate(("train", "val", "test"), start=1):
            assert row[column] == f"{manifest['counts']['before'][split][name]:,}"
        assert row[5] == f"{manifest['counts']['after']['train'][name]:,}"
    assert rows["all classes"][5] == f"{manifest['counts']['totals_after']['train']:,}"


def test_report_images_are_data_uris(first_page):
    assert len(first_page.images) > 2, "expected charts and thumbnails"
    for image in first_page.images:
        src = image.get("src") or ""
        assert src.startswith("data:image/png;base64,"), src[:60]
        data = base64.b64decode(src.split(",", 1)[1], validate=True)
        with Image.open(io.BytesIO(data)) as decoded:
            decoded.verify()


def test_report_has_no_external_reference(report_versions, first_page):
    document = report_versions.report(1).read_text(encoding="utf-8")
    for scheme in ("http:", "https:", "file:", "ftp:", "//"):
        for tag, name, value in first_page.attributes:
            if name in ("src", "href", "action", "srcset", "poster", "data"):
                assert not (value or "").startswith(scheme), (tag, name, value)
    for tag, name, value in first_page.attributes:
        if name == "href":
            assert (value or "").startswith("#"), (tag, value)
    assert "http://" not in document
    assert "https://" not in document
    assert "url(" not in document
    assert "@import" not in document
    for tag in ("script", "link", "iframe", "object", "embed", "base", "form"):
        assert tag not in first_page.tags, tag


def test_report_escapes_hostile_class(report_versions, first_page):
    document = report_versions.report(1).read_text(encoding="utf-8")
    assert HOSTILE_CLASS not in document
    assert "&lt;img src=x onerror=alert(1)&gt;" in document
    assert not any(name.startswith("on") for _, name, _ in first_page.attributes)
    rows = {row[0]: row for row in body_rows(first_page, "class-counts")}
    assert HOSTILE_CLASS in rows, "the hostile class has no row in the class table"


def test_report_lists_quarantined_file(report_versions, first_page):
    manifest = read_manifest(report_versions.store, 1)
    assert manifest["source"]["quarantined"] == 1
    entry = manifest["source"]["quarantine"][0]
    rows = body_rows(first_page, "quarantine-files")
    assert [row[0] for row in rows] == [f"{HOSTILE_CLASS}/broken.png"]
    assert rows[0][1] == entry["reason"]
    reasons = {row[0]: row[1] for row in body_rows(first_page, "quarantine-reasons")}
    assert reasons[entry["reason"]] == "1"


def test_report_lists_skipped_file(first_page):
    rows = body_rows(first_page, "skipped-files")
    assert [row[0] for row in rows] == ["3/notes.txt"]


def test_report_thumbnails_per_class(report_versions, first_page):
    manifest = read_manifest(report_versions.store, 1)
    alts = [image.get("alt") or "" for image in first_page.images]
    for name in manifest["classes"]:
        stored = sum(
            manifest["counts"]["before"][split].get(name, 0)
            for split in ("train", "val", "test")
        )
        shown = alts.count(f"sample of class {name}")
        assert shown == min(THUMBNAILS_PER_CLASS, stored), name


def test_report_synthetic_matches_lineage(report_versions, first_page):
    import imgprep
    from imgprep.version import read_object_table

    version = imgprep.open_version(report_versions.store, 1)
    lineage = read_object_table(version.store, version.manifest, "lineage")
    coefficients = {
        round(row["coefficient"], 3) for row in lineage if row["origin"] == "synthetic"
    }
    figures = [
        float(value or "nan")
        for tag, name, value in first_page.attributes
        if tag == "figure" and name == "data-coefficient"
    ]
    assert figures, "the report shows no synthetic sample"
    for coefficient in figures:
        assert round(coefficient, 3) in coefficients
    alts = [image.get("alt") for image in first_page.images]
    assert alts.count("synthetic sample") == len(figures)
    assert alts.count("parent a") == len(figures)
    assert alts.count("parent b") == len(figures)


def test_manifest_lists_report_sha256(report_versions):
    for version in (1, 2):
        manifest = read_manifest(report_versions.store, version)
        entries = {entry["name"]: entry for entry in manifest["files"]}
        data = report_versions.report(version).read_bytes()
        assert "report.html" in entries
        assert entries["report.html"]["sha256"] == hashlib.sha256(data).hexdigest()
        assert entries["report.html"]["bytes"] == len(data)


def test_first_report_has_no_diff(first_page):
    assert "diff-none" in first_page.ids
    assert "diff-counts" not in first_page.tables


def test_second_report_diff_counts_removed(report_versions, second_page):
    rows = body_rows(second_page, "diff-counts")
    removed: dict[str, int] = {}
    for split, name, _, _, _, added, removed_here in rows:
        assert added == "0", (split, name)
        removed[name] = removed.get(name, 0) + int(removed_here)
    assert removed == DELETED


def test_second_report_diff_statistics(report_versions, second_page):
    first = read_manifest(report_versions.store, 1)["normalization"]["stats"]
    second = read_manifest(report_versions.store, 2)["normalization"]["stats"]
    rows = {(row[0], row[1]): row for row in body_rows(second_page, "diff-statistics")}
    assert rows[("L", "mean")][2] == f"{first['mean'][0]:.6g}"
    assert rows[("L", "mean")][3] == f"{second['mean'][0]:.6g}"
    assert "diff-config-none" in second_page.ids


def test_report_artifacts_exist(report_versions):
    from prefect.artifacts import Artifact

    artifacts = {
        kind: Artifact.get(artifact_key(DATASET, kind))
        for kind in ("class-balance", "normalization", "version", "report")
    }
    flow_run_id = read_manifest(report_versions.store, 2)["flow_run_id"]
    for kind, artifact in artifacts.items():
        assert artifact is not None, kind
        assert str(artifact.flow_run_id) == flow_run_id, kind
    assert artifacts["class-balance"].type == "table"
    assert artifacts["normalization"].type == "table"
    assert artifacts["version"].type == "markdown"
    # Prefect 3.9 stores a link artifact as markdown: [link_text](link).
    uri = report_versions.report(2).resolve().as_uri()
    assert f"({uri})" in str(artifacts["report"].data)


def _rename_class(value: Any, old: str, new: str) -> Any:
    """Return a copy of manifest data with class ``old`` renamed in keys and values."""
    if isinstance(value, dict):
        return {
            (new if key == old else key): _rename_class(item, old, new)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_rename_class(item, old, new) for item in value]
    return new if value == old else value


def _many_classes_manifest(manifest: dict[str, Any]) -> dict[str, Any]:
    """Return the manifest with 50 classes and 1,000 quarantined files."""
    data = copy.deepcopy(manifest)
    extra = [f"class-{index:02d}" for index in range(50 - len(data["classes"]))]
    data["classes"] = [*data["classes"], *extra]
    for index, name in enumerate(extra):
        for split in ("train", "val", "test"):
            data["counts"]["before"][split][name] = index + 1
            data["counts"]["after"][split][name] = index + 1
    profile = data["profile"]
    for stage in ("before", "after"):
        profile[stage] = balance_profile(
            data["counts"][stage],
            data["classes"],
            beta=profile["beta"],
            minority_share=profile["minority_share"],
        )
    data["source"]["quarantine"] = [
        {"path": f"bad/{index:04d}.png", "reason": "empty_file", "message": "empty"}
        for index in range(1000)
    ]
    data["source"]["quarantined"] = 1000
    data["source"]["quarantined_by_reason"] = {"empty_file": 1000}
    return data


def _version_files(store: Path, version: int) -> dict[str, bytes]:
    folder = store / "versions" / f"{version:06d}"
    return {
        name: (folder / name).read_bytes()
        for name in ("class_balance.png", "channel_histograms.png")
    }


def test_report_caps_long_lists(report_versions):
    manifest = _many_classes_manifest(read_manifest(report_versions.store, 1))
    document = render_report(
        manifest,
        store=Store(report_versions.store),
        files=_version_files(report_versions.store, 1),
        parent_manifest=None,
    )
    page = parse_page(document)
    assert len(body_rows(page, "quarantine-files")) == MAX_LISTED_FILES
    assert f"and {1000 - MAX_LISTED_FILES:,} more quarantined files" in "".join(
        page.text
    )
    assert len(body_rows(page, "class-counts")) == 50 + 1
    assert len(page.images) <= 2 + 50 * THUMBNAILS_PER_CLASS + 3 * 8
    assert len(document) < 2_000_000


def test_report_escapes_script_class(report_versions):
    manifest = _rename_class(read_manifest(report_versions.store, 1), "9", SCRIPT_CLASS)
    document = render_report(
        manifest,
        store=Store(report_versions.store),
        files=_version_files(report_versions.store, 1),
        parent_manifest=None,
    )
    text = document.decode("utf-8")
    assert SCRIPT_CLASS not in text
    assert "<script" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "script" not in parse_page(document).tags


@pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason=f"{CHROMIUM} is not installed; install the Debian package chromium to "
    "check the report in a headless browser",
)
def test_report_renders_in_chromium(report_versions, tmp_path):
    screenshot = tmp_path / "report.png"
    result = subprocess.run(
        [
            sys.executable,
            str(BROWSER_CHECK),
            str(report_versions.report(2)),
            "--screenshot",
            str(screenshot),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert screenshot.stat().st_size > 0


def _render_second(report_versions: ReportVersions, parent: dict[str, Any]) -> bytes:
    return render_report(
        read_manifest(report_versions.store, 2),
        store=Store(report_versions.store),
        files=_version_files(report_versions.store, 2),
        parent_manifest=parent,
    )


def test_report_diff_lists_config_change(report_versions):
    parent = read_manifest(report_versions.store, 1)
    parent["config_resolved"]["resample"]["k_neighbors"] = 3
    page = parse_page(_render_second(report_versions, parent))
    rows = {row[0]: row for row in body_rows(page, "diff-config")}
    assert rows["resample.k_neighbors"][1:] == ["changed", "3", "5"]


def test_report_diff_without_sources_table(report_versions):
    parent = read_manifest(report_versions.store, 1)
    missing = "0" * 64
    parent["objects"]["sources"] = {
        "path": f"objects/00/{missing}.parquet",
        "sha256": missing,
        "bytes": 1,
    }
    page = parse_page(_render_second(report_versions, parent))
    rows = body_rows(page, "diff-counts")
    assert rows, "count changes are missing"
    assert all(row[5] == "n/a" and row[6] == "n/a" for row in rows)
