"""Audit a versioned store: list, describe, compare, verify and collect versions.

This module contains the logic of the ``imgprep log``, ``show``, ``diff``,
``verify`` and ``gc`` commands. Every function returns plain JSON data (dicts, lists,
strings, numbers and None), so the CLI prints it as tables or as JSON, and the HTML
report can render it.

:func:`version_log`, :func:`version_details`, :func:`diff_versions`,
:func:`diff_refs` and :func:`verify_store` only read: they never take the writer lock
and never change the store. :func:`collect_garbage` deletes files, and only while it
holds the store's writer lock. A prepare run holds that lock from its start to its
commit, so gc cannot remove the objects, temporary files or chunk cache of a run in
progress: it waits for the lock and gives up after its timeout.
"""

from __future__ import annotations

import json
import logging
import math
import os
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from imgprep.config import SPLITS
from imgprep.errors import CorruptObjectError, SchemaMismatchError, StoreError
from imgprep.manifest import Manifest
from imgprep.scan import natural_class_order
from imgprep.shards import check_pixel_layout, check_schema, schema_metadata
from imgprep.store import Store, remove_path, sha256_file
from imgprep.version import load_manifest, read_object_table

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "collect_garbage",
    "diff_refs",
    "diff_versions",
    "flatten_config",
    "plan_gc",
    "verify_store",
    "version_details",
    "version_log",
    "writer_holder",
]

# The columns of a version's sources table that diff_versions reads.
DIFF_SOURCE_COLUMNS = ("status", "sample_id", "key", "split", "label")

logger = logging.getLogger(__name__)

CHUNK_CACHE = ("cache", "chunks")


# ------------------------------------------------------------------ helpers
def _as_dict(manifest: Manifest | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(manifest, Manifest):
        return manifest.model_dump()
    return dict(manifest)


def _relative(store: Store, path: Path) -> str:
    return path.relative_to(store.root).as_posix()


def _tree_bytes(path: Path) -> int:
    """Return the size in bytes of a file, or of every file below a folder."""
    try:
        if not path.is_dir() or path.is_symlink():
            return path.lstat().st_size
    except FileNotFoundError:
        return 0
    total = 0
    for folder, _, names in os.walk(path):
        for name in names:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except FileNotFoundError:
                continue
    return total


def _entries(store: Store, paths: Iterable[Path]) -> list[dict[str, Any]]:
    return [
        {"path": _relative(store, path), "bytes": _tree_bytes(path)} for path in paths
    ]


def _require_store(store: Store) -> None:
    if not store.exists():
        raise StoreError(
            f"store {store.root} not found: it has no versions/ folder; pass the "
            "folder that output.store names"
        )


def writer_holder(store: Store) -> dict[str, Any] | None:
    """Return the holder record of the writer lock while a writer holds it, else None.

    The check takes a shared ``flock`` without waiting and releases it at once. A
    writer that tries the lock at that instant fails its attempt and retries after
    its poll interval (0.2 s by default). The record is empty when the holder wrote
    none.
    """
    if fcntl is None:  # pragma: no cover - Windows
        return None
    try:
        handle = open(store.root / "lock", encoding="utf-8")
    except FileNotFoundError:
        return None
    with handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                text = handle.read().strip()
                holder = json.loads(text) if text else {}
            except (OSError, ValueError):
                holder = {}
            return holder if isinstance(holder, dict) else {}
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    return None


def _load_manifest(store: Store, number: int) -> Manifest:
    """Load a manifest like :func:`load_manifest`, raising only StoreError.

    A manifest that is not UTF-8 text, or that cannot be read, raises
    CorruptObjectError naming the file instead of UnicodeDecodeError or OSError.
    """
    path = store.version_dir(number) / "manifest.json"
    try:
        return load_manifest(store, number)
    except (ValueError, OSError) as error:
        raise CorruptObjectError(
            f"manifest {path} cannot be read: {error}", str(path)
        ) from None


def _incomplete_version_folders(store: Store) -> list[Path]:
    """Return entries of ``versions/`` that are not committed versions.

    A committed version is a six-digit folder with a ``manifest.json``. The commit
    renames a finished folder into place, so anything else here is debris of a crash
    or of a manual change.
    """
    if not store.versions_dir.is_dir():
        return []
    committed = {store.version_dir(number) for number in store.versions()}
    return sorted(p for p in store.versions_dir.iterdir() if p not in committed)


def _chunk_cache_files(store: Store) -> list[Path]:
    folder = store.root.joinpath(*CHUNK_CACHE)
    if not folder.is_dir():
        return []
    return sorted(folder.glob("*.json"))


# ---------------------------------------------------------------------- log
def version_log(store: Store, newest_first: bool = True) -> list[dict[str, Any]]:
    """Summarize every committed version, newest first unless ``newest_first`` is False.

    Each entry has ``version``, ``dataset``, ``created``, ``parent``,
    ``parent_present`` (False when the parent version was removed from the store,
    None for a version without a parent),
    ``flow_run_id``, ``samples_before`` and ``samples_after`` (split -> samples before
    and after resampling), ``quarantined``, ``config_hash``, ``refresh`` (the
    manifest's refresh counters) and ``error``. A version whose manifest is invalid
    gets an entry with only ``version`` and ``error`` set.
    """
    _require_store(store)
    numbers = store.versions()
    entries = []
    for number in numbers:
        try:
            manifest = _load_manifest(store, number)
        except StoreError as error:
            entries.append({"version": number, "error": str(error)})
            continue
        counts = manifest.counts
        entries.append(
            {
                "version": manifest.version,
                "dataset": manifest.dataset,
                "created": manifest.created,
                "parent": manifest.parent,
                "parent_present": (
                    None if manifest.parent is None else manifest.parent in numbers
                ),
                "flow_run_id": manifest.flow_run_id,
                "samples_before": dict(counts.get("totals_before", {})),
                "samples_after": dict(counts.get("totals_after", {})),
                "quarantined": manifest.source.get("quarantined", 0),
                "config_hash": manifest.config_hash,
                "refresh": dict(manifest.refresh),
                "error": None,
            }
        )
    if newest_first:
        entries.reverse()
    return entries


# --------------------------------------------------------------------- show
def version_details(
    manifest: Manifest | Mapping[str, Any], store: Store | None = None
) -> dict[str, Any]:
    """Collect what ``imgprep show`` prints beyond the summary tables.

    Returns
    -------
    dict
        ``refresh``
            The manifest's refresh counters.
        ``quarantined_by_reason``, ``skipped_by_reason``, ``duplicates``
            File counts. Skipped files include the duplicates.
        ``quarantine``, ``skipped_files``
            One entry per file with ``path``, ``reason`` and ``message``.
        ``resampling``
            ``method``, ``feature_space`` and ``per_class``: one entry per class
            with the method and ``k_neighbors`` actually used, the counts and the
            note.
        ``lineage``
            ``manifest_key`` and ``object``, the entry of the object that contains
            the lineage table. ``location`` is its file when ``store`` is given.
    """
    data = _as_dict(manifest)
    source = data.get("source", {})
    resample = data.get("resample", {})
    per_class = []
    for name, info in (resample.get("per_class") or {}).items():
        per_class.append(
            {
                "class": name,
                "method": info.get("method"),
                "k_neighbors": info.get("k_neighbors"),
                "m_neighbors": info.get("m_neighbors"),
                "n_before": info.get("n_before"),
                "n_after": info.get("n_after"),
                "n_synthetic": info.get("n_synthetic"),
                "n_duplicated": info.get("n_duplicated"),
                "n_removed": info.get("n_removed"),
                "note": info.get("note"),
            }
        )
    lineage_key = str(resample.get("lineage") or "objects.lineage")
    object_name = lineage_key.removeprefix("objects.")
    ref = data.get("objects", {}).get(object_name)
    lineage: dict[str, Any] = {"manifest_key": lineage_key, "object": None}
    if ref is not None:
        lineage["object"] = dict(ref)
        if store is not None:
            lineage["location"] = str(store.root / ref["path"])
    return {
        "refresh": dict(data.get("refresh", {})),
        "quarantined_by_reason": dict(source.get("quarantined_by_reason", {})),
        "quarantine": list(source.get("quarantine", [])),
        "skipped_by_reason": dict(source.get("skipped_by_reason", {})),
        "skipped_files": list(source.get("skipped_files", [])),
        "duplicates": source.get("duplicates", 0),
        "resampling": {
            "method": resample.get("method"),
            "feature_space": resample.get("feature_space"),
            "per_class": per_class,
        },
        "lineage": lineage,
    }


# --------------------------------------------------------------------- diff
def flatten_config(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts to dotted keys; lists and other values are leaves.

    An empty dict is kept as a leaf, so a section that becomes empty still shows.
    """
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_config(value, name + "."))
        else:
            flat[name] = value
    return flat


def _pair(a: Any, b: Any) -> dict[str, Any]:
    """Return the two values and ``b - a`` when both are finite numbers."""
    change = None
    numeric = (int, float)
    if (
        isinstance(a, numeric)
        and isinstance(b, numeric)
        and not isinstance(a, bool)
        and not isinstance(b, bool)
        and math.isfinite(a)
        and math.isfinite(b)
    ):
        change = b - a
    return {"a": a, "b": b, "change": change}


def _samples_by_id(
    rows: Iterable[Mapping[str, Any]],
) -> dict[str, list[tuple[str, str]]]:
    """Map the sample id of every ingested row to its (split, label) places.

    An id has several places when identical files are kept as separate samples.
    """
    samples: dict[str, list[tuple[str, str]]] = {}
    for row in rows:
        if row.get("status") == "ingested" and row.get("sample_id"):
            place = (str(row.get("split")), str(row.get("label")))
            samples.setdefault(row["sample_id"], []).append(place)
    return samples


def _nest(pairs: Iterable[tuple[str, str, str]]) -> dict[str, dict[str, list[str]]]:
    """Group (split, label, sample id) triples as split -> label -> sorted ids."""
    nested: dict[str, dict[str, list[str]]] = {}
    for split, label, sample_id in pairs:
        nested.setdefault(split, {}).setdefault(label, []).append(sample_id)
    ordered: dict[str, dict[str, list[str]]] = {}
    for split in [*SPLITS, *sorted(set(nested) - set(SPLITS))]:
        if split not in nested:
            continue
        labels = nested[split]
        ordered[split] = {
            label: sorted(labels[label]) for label in natural_class_order(set(labels))
        }
    return ordered


def diff_samples(
    a_sources: Iterable[Mapping[str, Any]], b_sources: Iterable[Mapping[str, Any]]
) -> dict[str, Any]:
    """Compare the ingested samples of two ``sources`` tables by sample id.

    Each id is compared as a multiset of (split, class) places, because identical
    files kept as separate samples share an id. Places found in both versions are
    unchanged. Of the rest, a place only A has is paired with one only B has as
    ``moved``. The places still left are ``removed`` (A only) or ``added`` (B only),
    each grouped under the split and class of the version that has it.
    """
    a = _samples_by_id(a_sources)
    b = _samples_by_id(b_sources)
    added: list[tuple[str, str, str]] = []
    removed: list[tuple[str, str, str]] = []
    moved: list[dict[str, Any]] = []
    unchanged = 0
    for sample_id in sorted(a.keys() | b.keys()):
        places_a = Counter(a.get(sample_id, []))
        places_b = Counter(b.get(sample_id, []))
        common = places_a & places_b
        unchanged += sum(common.values())
        left_a = sorted((places_a - common).elements())
        left_b = sorted((places_b - common).elements())
        for place_a, place_b in zip(left_a, left_b, strict=False):
            moved.append(
                {
                    "sample_id": sample_id,
                    "a": {"split": place_a[0], "class": place_a[1]},
                    "b": {"split": place_b[0], "class": place_b[1]},
                }
            )
        pairs = min(len(left_a), len(left_b))
        removed += [(*place, sample_id) for place in left_a[pairs:]]
        added += [(*place, sample_id) for place in left_b[pairs:]]
    return {
        "added": _nest(added),
        "removed": _nest(removed),
        "moved": moved,
        "totals": {
            "a": sum(len(places) for places in a.values()),
            "b": sum(len(places) for places in b.values()),
            "added": len(added),
            "removed": len(removed),
            "moved": len(moved),
            "unchanged": unchanged,
        },
    }


def _count_changes(
    a: Mapping[str, Any], b: Mapping[str, Any], stage: str
) -> dict[str, dict[str, dict[str, Any]]]:
    a_counts = a.get("counts", {}).get(stage, {})
    b_counts = b.get("counts", {}).get(stage, {})
    classes = natural_class_order(set(a.get("classes", [])) | set(b.get("classes", [])))
    table: dict[str, dict[str, dict[str, Any]]] = {}
    for split in SPLITS:
        table[split] = {
            name: _pair(
                a_counts.get(split, {}).get(name, 0),
                b_counts.get(split, {}).get(name, 0),
            )
            for name in classes
        }
    return table


def _imbalance(profile: Mapping[str, Any], stage: str) -> dict[str, Any]:
    section = profile.get(stage) or {}
    ratios = {"overall": (section.get("overall") or {}).get("imbalance_ratio")}
    for split in SPLITS:
        ratios[split] = ((section.get("splits") or {}).get(split) or {}).get(
            "imbalance_ratio"
        )
    return ratios


def _channel_names(count: int) -> list[str]:
    """Return channel names for ``count`` channels: R, G, B or L, else indices."""
    if count == 3:
        return ["R", "G", "B"]
    if count == 1:
        return ["L"]
    return [str(index) for index in range(count)]


def _channel_value(values: Sequence[Any] | None, names: list[str], name: str) -> Any:
    if not values or name not in names:
        return None
    index = names.index(name)
    return values[index] if index < len(values) else None


def _normalization_changes(
    a: Mapping[str, Any], b: Mapping[str, Any]
) -> dict[str, Any]:
    a_norm, b_norm = a.get("normalization", {}), b.get("normalization", {})
    a_params, b_params = a_norm.get("params", {}), b_norm.get("params", {})
    a_stats, b_stats = a_norm.get("stats", {}), b_norm.get("stats", {})
    sources = {
        "offset": (a_params, b_params),
        "scale": (a_params, b_params),
        "mean": (a_stats, b_stats),
        "std": (a_stats, b_stats),
    }
    # Channels are matched by name, so a change from L to RGB compares no values
    # across colour modes.
    a_names = _channel_names(
        max((len(pair[0].get(key) or []) for key, pair in sources.items()), default=0)
    )
    b_names = _channel_names(
        max((len(pair[1].get(key) or []) for key, pair in sources.items()), default=0)
    )
    names = [*a_names, *(name for name in b_names if name not in a_names)]
    rows = []
    for name in names:
        row: dict[str, Any] = {"channel": name}
        for key, (left, right) in sources.items():
            row[key] = _pair(
                _channel_value(left.get(key), a_names, name),
                _channel_value(right.get(key), b_names, name),
            )
        rows.append(row)
    return {
        "method": {"a": a_params.get("method"), "b": b_params.get("method")},
        "fitted_on": {"a": a_norm.get("fitted_on"), "b": b_norm.get("fitted_on")},
        "channels": rows,
    }


def _config_changes(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[dict[str, Any]]:
    flat_a = flatten_config(a.get("config_resolved", {}))
    flat_b = flatten_config(b.get("config_resolved", {}))
    changes = []
    for key in sorted(flat_a.keys() | flat_b.keys()):
        if key not in flat_b:
            changes.append(
                {"key": key, "status": "removed", "a": flat_a[key], "b": None}
            )
        elif key not in flat_a:
            changes.append({"key": key, "status": "added", "a": None, "b": flat_b[key]})
        elif flat_a[key] != flat_b[key]:
            changes.append(
                {"key": key, "status": "changed", "a": flat_a[key], "b": flat_b[key]}
            )
    return changes


def _shard_changes(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """Group shards by path, which contains the sha256, so it matches across stores."""
    a_shards = {s["path"]: s for s in a.get("shards", [])}
    b_shards = {s["path"]: s for s in b.get("shards", [])}

    def describe(paths: Iterable[str], shards: Mapping[str, Any]) -> dict[str, Any]:
        items = [
            {
                "path": path,
                "kind": shards[path].get("kind"),
                "rows": shards[path].get("rows", 0),
                "bytes": shards[path].get("bytes", 0),
            }
            for path in sorted(paths)
        ]
        return {
            "count": len(items),
            "rows": sum(item["rows"] for item in items),
            "bytes": sum(item["bytes"] for item in items),
            "shards": items,
        }

    return {
        "shared": describe(a_shards.keys() & b_shards.keys(), a_shards),
        "only_a": describe(a_shards.keys() - b_shards.keys(), a_shards),
        "only_b": describe(b_shards.keys() - a_shards.keys(), b_shards),
    }


def _side(data: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "store": None,
        "dataset": data.get("dataset"),
        "version": data.get("version"),
        "created": data.get("created"),
        "config_hash": data.get("config_hash"),
    }


def diff_versions(
    a: Manifest | Mapping[str, Any],
    b: Manifest | Mapping[str, Any],
    a_sources: Sequence[Mapping[str, Any]] | None = None,
    b_sources: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Compare version A (older, such as the parent) with version B.

    Parameters
    ----------
    a, b
        Validated manifests, or manifest mappings as in ``manifest.json``. Only the
        keys ``dataset``, ``version``, ``created``, ``config_hash``, ``classes``,
        ``counts``, ``profile``, ``normalization``, ``config_resolved`` and
        ``shards`` are read, and a missing key counts as empty. So a manifest that
        is being built, before it is committed, can be compared with its parent.
    a_sources, b_sources
        Rows of each version's ``sources`` table (see
        :func:`imgprep.version.read_object_table`); only ``status``,
        ``sample_id``, ``split`` and ``label`` are read. ``samples`` is None unless
        both are given.

    Returns
    -------
    dict
        ``a``, ``b``
            Identity of each side: ``store`` (None here, set by :func:`diff_refs`),
            ``dataset``, ``version``, ``created``, ``config_hash``.
        ``samples``
            None, or ``added`` and ``removed`` as split -> class -> sorted sample
            ids (an added sample under its split and class in B, a removed one
            under those in A); ``moved``, a list of ``{"sample_id", "a": {"split",
            "class"}, "b": {...}}`` for samples in both whose split or class
            changed; ``totals`` with the counts ``a``, ``b``, ``added``,
            ``removed``, ``moved`` and ``unchanged``.
        ``counts``
            ``before`` and ``after`` resampling: split -> class ->
            ``{"a", "b", "change"}``, where ``change`` is ``b - a``.
        ``imbalance_ratio``
            ``before`` and ``after``: scope (``overall``, ``train``, ``val``,
            ``test``) -> ``{"a", "b", "change"}``, from the manifests' ``profile``.
            A ratio is None when its scope has no samples, and then ``change`` is
            None.
        ``normalization``
            ``method`` and ``fitted_on`` as ``{"a", "b"}``, and ``channels``: one
            entry per channel with ``channel`` (index) and ``offset``, ``scale``
            (the fitted parameters, ``y = (x - offset) / scale``), ``mean`` and
            ``std`` (training-split statistics on the raw pixel scale), each as
            ``{"a", "b", "change"}``.
        ``config``
            A list of ``{"key", "status", "a", "b"}`` for every dotted key of
            ``config_resolved`` that differs. ``status`` is ``changed``, ``added``
            when only B has the key, or ``removed`` when only A has it.
        ``shards``
            ``shared``, ``only_a`` and ``only_b``, each with ``count``, ``rows``,
            ``bytes`` and ``shards`` (a list of ``{"path", "kind", "rows",
            "bytes"}``). Shards are matched by path, which contains the sha256 of
            their bytes, so the match also works between two stores.
    """
    a_data, b_data = _as_dict(a), _as_dict(b)
    samples = None
    if a_sources is not None and b_sources is not None:
        samples = diff_samples(a_sources, b_sources)
    a_profile, b_profile = a_data.get("profile", {}), b_data.get("profile", {})
    imbalance = {}
    for stage in ("before", "after"):
        left, right = _imbalance(a_profile, stage), _imbalance(b_profile, stage)
        imbalance[stage] = {scope: _pair(left[scope], right[scope]) for scope in left}
    return {
        "a": _side(a_data),
        "b": _side(b_data),
        "samples": samples,
        "counts": {
            stage: _count_changes(a_data, b_data, stage)
            for stage in ("before", "after")
        },
        "imbalance_ratio": imbalance,
        "normalization": _normalization_changes(a_data, b_data),
        "config": _config_changes(a_data, b_data),
        "shards": _shard_changes(a_data, b_data),
    }


def diff_refs(
    store_a: Store, version_a: int | None, store_b: Store, version_b: int | None
) -> dict[str, Any]:
    """Load two versions, which may be in different stores, and diff them.

    A version of None means that store's latest version. The result is that of
    :func:`diff_versions` with both ``sources`` tables, and with ``store`` set in
    ``a`` and ``b``.

    Raises
    ------
    CorruptObjectError
        When a manifest is invalid or a ``sources`` table fails its checksum.
    """
    manifest_a = _load_manifest(store_a, store_a.resolve(version_a))
    manifest_b = _load_manifest(store_b, store_b.resolve(version_b))
    result = diff_versions(
        manifest_a,
        manifest_b,
        read_object_table(store_a, manifest_a, "sources", columns=DIFF_SOURCE_COLUMNS),
        read_object_table(store_b, manifest_b, "sources", columns=DIFF_SOURCE_COLUMNS),
    )
    result["a"]["store"] = str(store_a.root)
    result["b"]["store"] = str(store_b.root)
    return result


# ------------------------------------------------------------------- verify
def _address_problem(path: str, sha256: str) -> str | None:
    """Describe a path whose file name is not the recorded sha256, else None."""
    name = path.rsplit("/", 1)[-1].split(".", 1)[0]
    folder = path.split("/")[1] if path.count("/") >= 2 else ""
    if name != sha256 or folder != sha256[:2]:
        return f"path {path} is not the content address of the recorded sha256 {sha256}"
    return None


class _Checker:
    """File checker that hashes each file once, however many versions reference it."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._hashes: dict[Path, tuple[str, int] | OSError] = {}

    def _hash(self, path: Path) -> tuple[str, int] | OSError:
        if path not in self._hashes:
            try:
                self._hashes[path] = sha256_file(path)
            except OSError as error:
                self._hashes[path] = error
        return self._hashes[path]

    def check(
        self,
        kind: str,
        name: str,
        location: Path,
        sha256: str,
        size: int,
        problems: list[str] | None = None,
        details: list[str] | None = None,
    ) -> dict[str, Any]:
        """Compare one file's size and sha256 with the manifest's record.

        Returns a dict with ``kind``, ``name``, ``path`` (store-relative),
        ``status``, ``problems``, ``expected`` and ``actual`` (each ``{"bytes",
        "sha256"}``) and ``detail`` (a readable description of the problems).
        ``status`` is ``ok``, ``missing`` (no file) or ``failed``. ``problems``
        lists what failed: ``size``, ``sha256``, ``read`` (the file cannot be
        read), ``address``, ``parquet`` or ``schema``.
        """
        problems = list(problems or [])
        details = list(details or [])
        result: dict[str, Any] = {
            "kind": kind,
            "name": name,
            "path": _relative(self.store, location),
            "status": "ok",
            "problems": problems,
            "expected": {"bytes": size, "sha256": sha256},
            "actual": {"bytes": None, "sha256": None},
            "detail": None,
        }
        if location.is_relative_to(self.store.objects_dir) and not (
            self.store.is_inside_objects(location)
        ):
            problems.append("link")
            details.append(
                "is a symbolic link or resolves outside the store's objects folder"
            )
            result["status"] = "failed"
            result["detail"] = "; ".join(details)
            return result
        outcome = self._hash(location)
        if isinstance(outcome, FileNotFoundError):
            result["status"] = "missing"
            result["detail"] = "; ".join([f"{result['path']} does not exist", *details])
            return result
        if isinstance(outcome, OSError):
            problems.append("read")
            details.append(f"cannot be read: {outcome}")
        else:
            digest, actual_size = outcome
            result["actual"] = {"bytes": actual_size, "sha256": digest}
            if actual_size != size:
                problems.append("size")
                details.append(f"size {actual_size} bytes, expected {size}")
            if digest != sha256:
                problems.append("sha256")
                details.append(f"sha256 {digest}, expected {sha256}")
        if problems:
            result["status"] = "failed"
            result["detail"] = "; ".join(details)
        return result


def _check_parquet_schema(
    location: Path,
    expected: Mapping[str, str],
    path: str,
    pixel: Mapping[str, Any] | None = None,
) -> tuple[list[str], list[str], str | None]:
    """Read a Parquet shard's footer and compare its schema and pixel layout with
    the manifest's.

    Returns the problems, their descriptions and the column that differs.
    """
    try:
        schema = pq.read_schema(location)
    except FileNotFoundError:
        return [], [], None
    except (pa.ArrowInvalid, OSError) as error:
        return ["parquet"], [f"not valid Parquet: {error}"], None
    try:
        check_schema(schema, dict(expected), path)
        # A shard without imgprep metadata is left to the column check: the reader
        # rejects it when it reads the pixels.
        if pixel is not None and schema.metadata and b"imgprep" in schema.metadata:
            meta = schema_metadata(schema, path)
            check_pixel_layout(meta["pixel_shape"], meta["pixel_dtype"], pixel, path)
    except SchemaMismatchError as error:
        return ["schema"], [str(error)], error.column
    except (KeyError, TypeError, ValueError) as error:
        return ["schema"], [f"invalid imgprep schema metadata: {error!r}"], None
    return [], [], None


def verify_version(
    store: Store, number: int, checker: _Checker | None = None
) -> dict[str, Any]:
    """Verify one committed version against its manifest.

    Returns
    -------
    dict
        ``version`` and ``path``
            The version number and folder.
        ``status``
            ``ok``; ``corrupt`` when a referenced object or file failed or is
            missing; ``invalid`` when the manifest cannot be read or fails its
            schema.
        ``error``
            The manifest error, or None.
        ``checks``
            One entry per shard, object and file, as :meth:`_Checker.check` returns
            it. A shard whose schema differs also has ``column``.
        ``counts``
            The number of ``ok``, ``failed`` and ``missing`` checks.
    """
    checker = checker or _Checker(store)
    folder = store.version_dir(number)
    report: dict[str, Any] = {
        "version": number,
        "path": _relative(store, folder),
        "status": "ok",
        "error": None,
        "checks": [],
        "counts": {"ok": 0, "failed": 0, "missing": 0},
    }
    try:
        manifest = _load_manifest(store, number)
    except StoreError as error:
        report["status"] = "invalid"
        report["error"] = str(error)
        return report
    for index, shard in enumerate(manifest.shards):
        location = store.root / shard.path
        problems: list[str] = []
        details: list[str] = []
        column = None
        address = _address_problem(shard.path, shard.sha256)
        if address:
            problems.append("address")
            details.append(address)
        if shard.format == "parquet":
            found, described, column = _check_parquet_schema(
                location, manifest.shard_schema, shard.path, manifest.pixel
            )
            problems += found
            details += described
        check = checker.check(
            "shard",
            f"shard {index} ({shard.kind})",
            location,
            shard.sha256,
            shard.bytes,
            problems,
            details,
        )
        if column is not None:
            check["column"] = column
        report["checks"].append(check)
    for name, entry in manifest.objects.items():
        address = _address_problem(entry.path, entry.sha256)
        report["checks"].append(
            checker.check(
                "object",
                name,
                store.root / entry.path,
                entry.sha256,
                entry.bytes,
                ["address"] if address else [],
                [address] if address else [],
            )
        )
    for entry in manifest.files:
        report["checks"].append(
            checker.check(
                "file", entry.name, folder / entry.name, entry.sha256, entry.bytes
            )
        )
    for check in report["checks"]:
        report["counts"][check["status"]] += 1
    if report["counts"]["failed"] or report["counts"]["missing"]:
        report["status"] = "corrupt"
    return report


def _latest_status(store: Store) -> dict[str, Any]:
    """Compare ``LATEST`` with the newest committed version."""
    newest = store.latest()
    pointer = store.latest_pointer()
    present = (store.root / "LATEST").exists()
    if pointer == newest:
        status = "ok"
    elif pointer is None:
        status = "unreadable" if present else "missing"
    elif newest is None or pointer > newest:
        status = "ahead"
    else:
        status = "behind"
    return {"pointer": pointer, "newest": newest, "status": status}


def _unreferenced_objects(store: Store, referenced: set[str]) -> list[str]:
    return [ref for ref in store.all_objects() if ref not in referenced]


def verify_store(
    store: Store, version: int | None = None, strict: bool = False
) -> dict[str, Any]:
    """Verify every committed version, or only ``version``, and the store's folders.

    Every object and file a manifest references is read and its size and sha256
    compared with the manifest. Parquet shards also have their footer read and
    their Arrow schema compared with ``shard_schema``. Besides the versions, the
    store is checked for files left in ``tmp/``, entries of ``versions/`` that are
    not committed versions, a ``LATEST`` pointer that differs from the newest
    committed version, and chunk cache files.

    Failures: an object or file that is missing or differs, an invalid manifest,
    and a ``LATEST`` pointer ahead of every committed version (a committed version
    is gone). Warnings: leftover temporary files, incomplete version folders, chunk
    cache files (all three are what a crash leaves, not damage to any version), and
    a ``LATEST`` pointer that is behind or missing (readers use the newest committed
    version). While a writer holds the lock, its temporary and cache files are
    expected and are not warned about.

    Returns
    -------
    dict
        ``store``
            The store folder.
        ``versions``
            One report per version, see :func:`verify_version`.
        ``temp_files``, ``incomplete_versions``, ``chunk_cache``
            Lists of ``{"path", "bytes"}`` with store-relative paths.
        ``latest``
            ``pointer``, ``newest`` and ``status``: ``ok``, ``behind``, ``ahead``,
            ``missing`` or ``unreadable``.
        ``writer``
            The lock holder's record while a writer holds the lock, else None.
        ``unreferenced_objects``
            ``count`` and ``bytes`` of the objects that no version references,
            which gc removes. None when only one version was checked.
        ``counts``
            The number of ``ok``, ``failed`` and ``missing`` checks of all versions.
        ``failures``, ``warnings``
            Messages.
        ``strict``, ``ok``, ``passed``
            ``ok`` is True without failures. ``passed`` is ``ok``, and under
            ``strict`` also requires no warnings.

    Raises
    ------
    StoreError
        When the store has no ``versions/`` folder.
    VersionNotFoundError
        When ``version`` is given and not committed.
    """
    _require_store(store)
    numbers = store.versions() if version is None else [store.resolve(version)]
    checker = _Checker(store)
    versions = [verify_version(store, number, checker) for number in numbers]
    writer = writer_holder(store)
    report: dict[str, Any] = {
        "store": str(store.root),
        "versions": versions,
        "temp_files": _entries(store, store.temp_files()),
        "incomplete_versions": _entries(store, _incomplete_version_folders(store)),
        "chunk_cache": _entries(store, _chunk_cache_files(store)),
        "latest": _latest_status(store),
        "writer": writer,
        "unreferenced_objects": None,
        "counts": {"ok": 0, "failed": 0, "missing": 0},
        "failures": [],
        "warnings": [],
        "strict": strict,
    }
    failures, warnings = report["failures"], report["warnings"]
    for entry in versions:
        for status in ("ok", "failed", "missing"):
            report["counts"][status] += entry["counts"][status]
        if entry["status"] == "invalid":
            failures.append(f"version {entry['version']}: {entry['error']}")
            continue
        for check in entry["checks"]:
            if check["status"] != "ok":
                failures.append(
                    f"version {entry['version']}: {check['status']} {check['path']} "
                    f"({check['name']}): {check['detail']}"
                )
    if version is None:
        referenced = {
            check["path"]
            for entry in versions
            for check in entry["checks"]
            if check["kind"] != "file"
        }
        unreferenced = _unreferenced_objects(store, referenced)
        report["unreferenced_objects"] = {
            "count": len(unreferenced),
            "bytes": sum(_tree_bytes(store.root / ref) for ref in unreferenced),
        }
    latest = report["latest"]
    if latest["status"] == "ahead":
        failures.append(
            f"LATEST names version {latest['pointer']}, but the newest committed "
            f"version is {latest['newest']}: a committed version is gone"
        )
    elif latest["status"] != "ok" and latest["newest"] is not None:
        warnings.append(
            f"LATEST is {latest['status']} (pointer {latest['pointer']}, newest "
            f"committed version {latest['newest']}); readers use the newest "
            "committed version, and the next run or `imgprep gc --yes` rewrites it"
        )
    if writer is None:
        for entry in report["temp_files"]:
            warnings.append(
                f"stray temporary file {entry['path']} ({entry['bytes']} bytes), "
                "left by a crash; `imgprep gc --yes` removes it"
            )
        for entry in report["chunk_cache"]:
            warnings.append(
                f"stale chunk cache file {entry['path']}, left by a crashed run; the "
                "next run reuses it, `imgprep gc --yes` removes it"
            )
    for entry in report["incomplete_versions"]:
        warnings.append(
            f"{entry['path']} is not a committed version (no manifest.json); "
            "`imgprep gc --yes` removes it"
        )
    report["ok"] = not failures
    report["passed"] = report["ok"] and not (strict and warnings)
    return report


# ----------------------------------------------------------------------- gc
def _check_keep(keep: int) -> None:
    if keep < 1:
        raise ValueError(
            f"--keep is {keep}; it must be at least 1, because gc never removes the "
            "latest version"
        )


def plan_gc(store: Store, keep: int) -> dict[str, Any]:
    """List what ``gc --keep keep`` removes, without removing anything.

    Removed: every committed version except the newest ``keep`` (so never the
    latest), then every object that no kept version references, every entry of
    ``tmp/``, every entry of ``versions/`` that is not a committed version, and every
    chunk cache file. A ``LATEST`` pointer that differs from the newest version is
    rewritten.

    Returns
    -------
    dict
        ``store``, ``keep``
            The store folder and the number of versions to keep.
        ``kept_versions``
            The numbers of the kept versions.
        ``removed_versions``, ``objects``, ``temp_files``
            Lists of ``{"path", "bytes"}`` to remove, as are
            ``incomplete_versions`` and ``chunk_cache``. Removed versions also have
            ``version``.
        ``latest_pointer``
            ``{"from", "to"}`` when ``LATEST`` is rewritten, else None.
        ``bytes_freed``
            The sum of the sizes of everything listed.
        ``writer``
            The lock holder's record while another writer holds the lock, else None.
        ``applied``
            False; :func:`collect_garbage` sets it after deleting.

    Raises
    ------
    ValueError
        When ``keep`` is below 1.
    StoreError
        When the store does not exist, or a kept version's manifest cannot be read,
        because then the objects it needs are unknown.
    """
    _check_keep(keep)
    _require_store(store)
    numbers = store.versions()
    kept = numbers[-keep:]
    removed = numbers[:-keep] if len(numbers) > keep else []
    referenced: set[str] = set()
    for number in kept:
        try:
            manifest = _load_manifest(store, number)
        except StoreError as error:
            raise StoreError(
                f"version {number} is kept but its manifest cannot be read ({error}), "
                "so gc cannot tell which objects it needs; nothing was removed. Run "
                "`imgprep verify` and repair or delete that version folder first"
            ) from None
        referenced.update(o.path for o in manifest.all_objects())
    removed_versions = []
    for number in removed:
        folder = store.version_dir(number)
        removed_versions.append(
            {
                "version": number,
                "path": _relative(store, folder),
                "bytes": _tree_bytes(folder),
            }
        )
    objects = [
        {"path": ref, "bytes": _tree_bytes(store.root / ref)}
        for ref in _unreferenced_objects(store, referenced)
    ]
    plan: dict[str, Any] = {
        "store": str(store.root),
        "keep": keep,
        "kept_versions": kept,
        "removed_versions": removed_versions,
        "objects": objects,
        "temp_files": _entries(store, store.temp_files()),
        "incomplete_versions": _entries(store, _incomplete_version_folders(store)),
        "chunk_cache": _entries(store, _chunk_cache_files(store)),
        "latest_pointer": None,
        "writer": writer_holder(store),
        "applied": False,
    }
    newest = kept[-1] if kept else None
    pointer = store.latest_pointer()
    if newest is not None and pointer != newest:
        plan["latest_pointer"] = {"from": pointer, "to": newest}
    plan["bytes_freed"] = sum(
        entry["bytes"]
        for section in (
            "removed_versions",
            "objects",
            "temp_files",
            "incomplete_versions",
            "chunk_cache",
        )
        for entry in plan[section]
    )
    return plan


def _apply_gc(store: Store, plan: Mapping[str, Any]) -> None:
    """Delete what the plan lists, in an order that leaves a valid store after a crash.

    A removed version's folder is first renamed into ``tmp/``, so the version
    disappears in one step and a crash leaves only debris in ``tmp/``. Objects go
    only after the versions that referenced them, and chunk cache files before the
    objects they point to.
    """
    store.tmp_dir.mkdir(parents=True, exist_ok=True)
    for entry in plan["removed_versions"]:
        folder = store.root / entry["path"]
        doomed = store.tmp_dir / f"gc-{folder.name}-{uuid.uuid4().hex}"
        os.rename(folder, doomed)
        remove_path(doomed)
        logger.info("removed version %s of %s", entry["version"], store.root)
    for section in ("incomplete_versions", "chunk_cache", "objects", "temp_files"):
        for entry in plan[section]:
            remove_path(store.root / entry["path"])
    prefixes = {(store.root / entry["path"]).parent for entry in plan["objects"]}
    for prefix in prefixes:
        try:
            prefix.rmdir()
        except OSError:
            continue
    if plan["latest_pointer"] is not None:
        store.write_latest(plan["latest_pointer"]["to"])


def collect_garbage(
    store: Store, keep: int, *, apply: bool = False, lock_timeout_s: float = 60.0
) -> dict[str, Any]:
    """Plan gc and, when ``apply`` is True, carry it out under the writer lock.

    Without ``apply`` this is :func:`plan_gc`: a dry run that takes no lock. With
    ``apply``, gc takes the store's writer lock, plans again under it (a run may have
    committed in the meantime) and deletes. A prepare run holds the same lock from
    its start to its commit, so every object, temporary file and chunk cache file of
    a run in progress is safe: gc waits for the lock instead.

    Returns the plan of :func:`plan_gc` with ``applied`` set.

    NOTE: readers take no lock, so a training job that is reading a version which gc
    removes fails with CorruptObjectError on its next object.

    Raises
    ------
    LockTimeoutError
        When another writer holds the lock for longer than ``lock_timeout_s``;
        nothing was removed.
    """
    if not apply:
        return plan_gc(store, keep)
    _check_keep(keep)
    _require_store(store)
    with store.lock(lock_timeout_s):
        plan = plan_gc(store, keep)
        # The lock check in plan_gc finds gc's own lock, not another writer.
        plan["writer"] = None
        _apply_gc(store, plan)
    plan["applied"] = True
    logger.info(
        "gc of %s kept versions %s and freed %d bytes",
        store.root,
        plan["kept_versions"],
        plan["bytes_freed"],
    )
    return plan
