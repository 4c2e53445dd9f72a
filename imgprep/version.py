"""Read a version's state from the store and write a new version's manifest.

:func:`load_parent` reads what a refresh needs from the newest version.
:func:`build_manifest` puts the results of one run into the manifest layout that
:class:`imgprep.manifest.Manifest` validates, and :func:`commit` writes the version.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.metadata
import io
import json
import platform
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from imgprep.config import SPLITS, PrepareConfig, config_for_manifest, config_hash
from imgprep.errors import CorruptObjectError
from imgprep.manifest import MANIFEST_SCHEMA_VERSION, Manifest, parse_manifest
from imgprep.shards import npz_bytes, schema_description, shard_schema
from imgprep.stats import ChannelHistogram
from imgprep.store import ObjectRef, Store
from imgprep.tables import SOURCES_SCHEMA, read_table_bytes, table_bytes

__all__ = [
    "histograms_bytes",
    "library_versions",
    "load_manifest",
    "load_parent",
    "read_histograms",
    "read_object_table",
]

LIBRARIES = (
    "imgprep",
    "numpy",
    "pillow",
    "pyarrow",
    "imbalanced-learn",
    "scikit-learn",
    "pandas",
    "prefect",
)


def library_versions() -> dict[str, str]:
    """Return the versions of Python and the libraries that shape the output."""
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def histograms_bytes(histograms: Mapping[str, ChannelHistogram]) -> bytes:
    """Serialize per-split histograms as an ``.npz`` of int64 count arrays."""
    return npz_bytes(
        {split: histograms[split].counts for split in SPLITS if split in histograms}
    )


def read_histograms(data: bytes) -> dict[str, ChannelHistogram]:
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        return {
            name: ChannelHistogram.from_counts(archive[name]) for name in archive.files
        }


def load_manifest(store: Store, version: int | None = None) -> Manifest:
    """Return the validated manifest of ``version`` (default: the latest)."""
    number = store.resolve(version)
    data = store.read_manifest_dict(number)
    manifest = parse_manifest(data, str(store.version_dir(number) / "manifest.json"))
    if manifest.version != number:
        raise CorruptObjectError(
            f"manifest in folder {number} says it is version {manifest.version}",
            str(store.version_dir(number)),
        )
    return manifest


def read_object_table(
    store: Store,
    manifest: Manifest,
    name: str,
    columns: Sequence[str] | None = None,
    where: Any = None,
) -> list[dict[str, Any]]:
    """Return the rows of one of the version's tables (``sources`` or ``lineage``).

    ``columns`` limits the row dicts to those keys and ``where`` (a pyarrow compute
    expression) keeps only matching rows; a dict per row costs about 1 KB, so callers
    that need a few columns of a large table should ask for just those.
    """
    entry = manifest.objects[name]
    data = store.read_object(entry.path, entry.sha256, entry.bytes)
    return read_table_bytes(data, columns=columns, where=where)


def load_parent(store: Store) -> Any:
    """Return the :class:`imgprep.assemble.ParentState` of the newest version, or None."""
    from imgprep.assemble import ParentState

    if store.latest() is None:
        return None
    manifest = load_manifest(store)
    entry = manifest.objects["histograms"]
    histograms = read_histograms(
        store.read_object(entry.path, entry.sha256, entry.bytes)
    )
    return ParentState(
        version=manifest.version,
        classes=list(manifest.classes),
        sources=read_object_table(store, manifest, "sources"),
        shards=[shard.model_dump() for shard in manifest.shards],
        histograms=histograms,
        shard_schema=dict(manifest.shard_schema),
        pixel=dict(manifest.pixel),
        image=dict(manifest.config_resolved.get("image") or {}),
    )


def put_table(store: Store, rows: Sequence[dict[str, Any]], schema: Any) -> ObjectRef:
    return store.put_bytes(table_bytes(rows, schema), "parquet")


def source_summary(
    config: PrepareConfig,
    layout: str,
    sources: Sequence[dict[str, Any]],
    empty_classes: Sequence[str],
    label_warnings: Sequence[str],
) -> dict[str, Any]:
    """Summarize the sources table for the manifest: counts, reasons and lists."""
    status = Counter(row["status"] for row in sources)
    quarantined = [row for row in sources if row["status"] == "quarantined"]
    skipped = [row for row in sources if row["status"] == "skipped"]
    dropped = [row for row in sources if row["status"] == "duplicate"]
    # Count first, so that only ids that occur twice get a list of rows.
    id_counts = Counter(
        row["sample_id"]
        for row in sources
        if row["status"] in ("ingested", "duplicate")
    )
    repeated = {sample_id for sample_id, count in id_counts.items() if count > 1}
    by_id: dict[str, list[dict[str, Any]]] = {}
    for row in sources:
        if row["status"] in ("ingested", "duplicate") and row["sample_id"] in repeated:
            by_id.setdefault(row["sample_id"], []).append(row)
    groups = [
        {
            "sample_id": sample_id,
            "keys": sorted(row["key"] for row in rows),
            "labels": sorted({row["label"] for row in rows}),
        }
        for sample_id, rows in sorted(by_id.items())
        if len(rows) > 1
    ]

    def entry(row: dict[str, Any]) -> dict[str, Any]:
        item = {
            "path": row["key"],
            "reason": row["reason"],
            "message": row.get("message"),
        }
        if row.get("table_row") is not None:
            item["row"] = row["table_row"]
        return item

    candidates = status["ingested"] + status["quarantined"] + status["duplicate"]
    return {
        "root": config.source.root,
        "labels": config.source.labels,
        "layout": layout,
        "files_seen": len(sources),
        "candidates": candidates,
        "ingested": status["ingested"],
        "quarantined": status["quarantined"],
        "duplicates": status["duplicate"],
        "skipped": status["skipped"],
        "rejected_fraction": (status["quarantined"] / candidates)
        if candidates
        else 0.0,
        "quarantined_by_reason": dict(
            sorted(Counter(row["reason"] for row in quarantined).items())
        ),
        "skipped_by_reason": dict(
            sorted(Counter(row["reason"] for row in skipped).items())
        ),
        "quarantine": [entry(row) for row in quarantined],
        "skipped_files": [entry(row) for row in skipped],
        "duplicate_files": [entry(row) for row in dropped],
        "duplicate_groups": groups,
        "conflicting_duplicate_groups": sum(1 for g in groups if len(g["labels"]) > 1),
        "empty_classes": list(empty_classes),
        "label_warnings": list(label_warnings),
        "formats": dict(
            sorted(
                Counter(
                    row.get("format") for row in sources if row["status"] == "ingested"
                ).items()
            )
        ),
    }


def build_manifest(
    *,
    config: PrepareConfig,
    version: int,
    parent: int | None,
    flow_run_id: str | None,
    classes: Sequence[str],
    counts_before: Mapping[str, Mapping[str, int]],
    counts_after_train: Mapping[str, int],
    source: dict[str, Any],
    profile: dict[str, Any],
    normalization: dict[str, Any],
    resample: dict[str, Any],
    refresh: dict[str, Any],
    shards: Sequence[dict[str, Any]],
    objects: Mapping[str, ObjectRef],
    files: Mapping[str, bytes],
    created: str | None = None,
) -> dict[str, Any]:
    """Return the manifest mapping of a new version."""
    given = config.model_dump(mode="json", exclude_unset=True)
    given.get("output", {}).pop("store", None)
    totals = {split: sum(counts_before[split].values()) for split in SPLITS}
    after = {split: dict(counts_before[split]) for split in SPLITS}
    after["train"] = dict(counts_after_train)
    manifest = {
        "schema_version": MANIFEST_SCHEMA_VERSION,
        "dataset": config.dataset.name,
        "version": version,
        "parent": parent,
        "created": created
        or dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "flow_run_id": flow_run_id,
        "config": given,
        "config_resolved": config_for_manifest(config),
        "config_hash": config_hash(config),
        "libraries": library_versions(),
        "pixel": {
            "shape": list(config.image.shape),
            "dtype": config.image.dtype,
            "layout": "HWC",
            "color_mode": config.image.color_mode,
        },
        "shard_schema": schema_description(
            shard_schema(classes, config.image.shape, config.image.dtype)
        ),
        "classes": list(classes),
        "counts": {
            "before": {split: dict(counts_before[split]) for split in SPLITS},
            "after": after,
            "totals_before": totals,
            "totals_after": {split: sum(after[split].values()) for split in SPLITS},
        },
        "source": source,
        "split": split_rule(config, source),
        "profile": profile,
        "normalization": normalization,
        "resample": resample,
        "refresh": refresh,
        "shards": list(shards),
        "objects": {name: ref.to_dict() for name, ref in objects.items()},
        "files": [
            {
                "name": name,
                "sha256": hashlib.sha256(data).hexdigest(),
                "bytes": len(data),
            }
            for name, data in sorted(files.items())
        ],
    }
    parse_manifest(json.loads(json.dumps(manifest)), "new manifest")
    return manifest


def split_rule(config: PrepareConfig, source: Mapping[str, Any]) -> dict[str, Any]:
    """Describe how samples were assigned to splits."""
    del source
    return {
        "use_source_split": config.split.use_source_split,
        "rule": "the source's split where it gives one; otherwise sha256(salt, group "
        "id or sample id) mapped to [0, 1) against cumulative fractions train, val, "
        "test",
        "fractions": dict(config.split.fractions),
        "salt": config.split.salt,
        "group_column": config.source.columns.group if config.source.labels else None,
    }


__all__ += [
    "build_manifest",
    "put_table",
    "source_summary",
    "split_rule",
    "SOURCES_SCHEMA",
]
