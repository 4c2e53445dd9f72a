"""Decode one chunk of source files into shard objects.

A chunk is a few hundred files. :func:`ingest_files` reads each file once, takes the
sha256 of its bytes as the sample id, decodes it, assigns its split, and writes the
decoded pixels of the whole chunk as shard objects straight into the store. It
returns a small :class:`ChunkResult` (records, shard references, per-split
histograms), never pixel arrays, so it can run in a thread, a process pool or on a
Dask worker.

A finished chunk also leaves its result under ``STORE/cache/chunks/``, keyed by the
chunk's inputs, so a run that crashed and is started again skips the chunks whose
shards were completely written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from imgprep.config import PrepareConfig
from imgprep.decode import decode_image, time_limit
from imgprep.errors import Quarantined, SourceError, StoreError
from imgprep.faults import crash_point
from imgprep.scan import Candidate
from imgprep.shards import ShardRows, write_shard
from imgprep.split import assign_split
from imgprep.stats import ChannelHistogram
from imgprep.store import Store

__all__ = [
    "ChunkResult",
    "chunk_key",
    "decode_settings_hash",
    "ingest_files",
    "load_cached_chunk",
]

logger = logging.getLogger(__name__)


@dataclass
class ChunkResult:
    """What one ingest chunk did. Small enough to return from a task.

    ``records`` has one dict per decoded sample (see :data:`RECORD_FIELDS` in
    :mod:`imgprep.assemble`), ``quarantined`` one per file that could not be used,
    and ``unchanged`` the keys whose bytes matched the expected sample id, so they
    were not decoded. ``histograms`` maps each split to the exact per-channel
    histogram of the chunk's samples in that split.
    """

    key: str
    records: list[dict[str, Any]] = field(default_factory=list)
    quarantined: list[dict[str, Any]] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    shards: list[dict[str, Any]] = field(default_factory=list)
    histograms: dict[str, ChannelHistogram] = field(default_factory=dict)
    decoded: int = 0
    read_bytes: int = 0
    seconds: float = 0.0
    cached: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "records": self.records,
            "quarantined": self.quarantined,
            "unchanged": self.unchanged,
            "shards": self.shards,
            "histograms": {s: h.to_dict() for s, h in self.histograms.items()},
            "decoded": self.decoded,
            "read_bytes": self.read_bytes,
            "seconds": self.seconds,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ChunkResult:
        return cls(
            key=data["key"],
            records=data["records"],
            quarantined=data["quarantined"],
            unchanged=data["unchanged"],
            shards=data["shards"],
            histograms={
                s: ChannelHistogram.from_dict(h) for s, h in data["histograms"].items()
            },
            decoded=data["decoded"],
            read_bytes=data["read_bytes"],
            seconds=data["seconds"],
        )


def decode_settings_hash(config: PrepareConfig) -> str:
    """Hash the settings that change what a chunk writes."""
    payload = {
        "image": config.image.model_dump(mode="json"),
        "split": config.split.model_dump(mode="json"),
        "format": config.output.format,
        "rows_per_shard": config.output.rows_per_shard,
        "compression_level": config.output.compression_level,
        "timeout": config.ingest.decode_timeout_s,
    }
    text = json.dumps(payload, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def chunk_key(
    items: Sequence[Candidate],
    class_names: Sequence[str],
    settings_hash: str,
    expected_ids: dict[str, str] | None = None,
) -> str:
    """Return the cache key of a chunk: its files' fingerprints and the settings."""
    digest = hashlib.sha256()
    digest.update(settings_hash.encode())
    digest.update(json.dumps(list(class_names)).encode())
    for item in items:
        fields = (
            item.key,
            item.size,
            item.mtime_ns,
            item.label,
            item.source_split,
            item.group,
            (expected_ids or {}).get(item.key),
        )
        digest.update(json.dumps(fields).encode())
    return digest.hexdigest()


def _cache_path(store: Store, key: str) -> str:
    return os.path.join(store.root, "cache", "chunks", f"{key}.json")


def load_cached_chunk(store: Store, key: str) -> ChunkResult | None:
    """Return a cached chunk result whose shard objects are all present, else None."""
    path = _cache_path(store, key)
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, json.JSONDecodeError):
        return None
    for shard in data.get("shards", []):
        try:
            object_path = store.object_path(shard["path"])
            if object_path.stat().st_size != shard["bytes"]:
                return None
        except (OSError, KeyError, ValueError):
            return None
    result = ChunkResult.from_json(data)
    result.cached = True
    return result


def _save_cached_chunk(store: Store, result: ChunkResult) -> None:
    path = _cache_path(store, result.key)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    temp = store.temp_path(".chunk")
    with open(temp, "w", encoding="utf-8") as handle:
        json.dump(result.to_json(), handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, path)


def _read_source(root: str, item: Candidate) -> bytes:
    from imgprep.paths import (
        NotRegularFileError,
        OutsideRootError,
        display_path,
        read_file_below,
    )

    path = display_path(os.path.join(root, item.path))
    try:
        return read_file_below(root, item.path)
    except FileNotFoundError:
        raise Quarantined(
            "missing_file", f"file vanished before decoding: {path}"
        ) from None
    except PermissionError as error:
        message = display_path(f"permission denied: {error}")
        raise Quarantined("unreadable", message) from None
    except (IsADirectoryError, NotRegularFileError):
        raise Quarantined("not_a_file", f"not a regular file: {path}") from None
    except OutsideRootError as error:
        raise Quarantined("outside_root", str(error)) from None
    except OSError as error:
        message = display_path(f"{type(error).__name__}: {error}")
        raise Quarantined("unreadable", message) from None


def _check_shared_paths(root: str, store: Store) -> None:
    """Raise when this worker cannot see the source root or the store.

    On a Dask cluster every worker must see both at the paths the flow uses;
    otherwise each file would be quarantined as missing, or shards written to a
    local disk that the flow never reads.
    """
    host = socket.gethostname()
    if not os.path.isdir(root):
        raise SourceError(
            f"source root {root} is not a folder on host {host}; every worker must "
            "see the source at the same path as the flow"
        )
    if not store.objects_dir.is_dir():
        raise StoreError(
            f"store {store.root} has no objects folder on host {host}; every worker "
            "must see the store at the same path as the flow"
        )


def _base_record(item: Candidate) -> dict[str, Any]:
    return {
        "key": item.key,
        "label": item.label,
        "source_split": item.source_split,
        "group": item.group,
        "table_row": item.row,
        "size": item.size,
        "mtime_ns": item.mtime_ns,
    }


def ingest_files(
    items: Sequence[Candidate],
    *,
    root: str,
    config: PrepareConfig,
    class_names: Sequence[str],
    store_root: str,
    expected_ids: dict[str, str] | None = None,
    use_cache: bool = True,
) -> ChunkResult:
    """Decode ``items`` and write their pixels as shard objects into the store.

    Parameters
    ----------
    items : sequence of Candidate
        Files of one chunk, in the order their rows are written.
    root : str
        Source root the candidate paths are relative to.
    config : PrepareConfig
        The run's configuration.
    class_names : sequence of str
        Class names of the version, in label-index order.
    store_root : str
        Store that receives the shard objects.
    expected_ids : dict, optional
        Sample id an earlier version recorded per key. A file whose bytes still hash
        to it is reported in ``unchanged`` and not decoded.
    use_cache : bool
        Reuse and record the chunk's result under ``STORE/cache/chunks``.
    """
    started = time.perf_counter()
    store = Store(store_root)
    _check_shared_paths(root, store)
    settings_hash = decode_settings_hash(config)
    key = chunk_key(items, class_names, settings_hash, expected_ids)
    if use_cache:
        cached = load_cached_chunk(store, key)
        if cached is not None:
            return cached

    label_index = {name: index for index, name in enumerate(class_names)}
    image = config.image
    result = ChunkResult(key=key)
    accepted: list[tuple[dict[str, Any], np.ndarray]] = []
    counts: list[np.ndarray | None] = []
    for item in items:
        base = _base_record(item)
        try:
            data = _read_source(root, item)
        except Quarantined as error:
            result.quarantined.append(
                {**base, "reason": error.reason, "message": error.message}
            )
            continue
        result.read_bytes += len(data)
        sample_id = hashlib.sha256(data).hexdigest()
        expected = (expected_ids or {}).get(item.key)
        if expected is not None and expected == sample_id:
            result.unchanged.append(item.key)
            continue
        crash_point("decode")
        try:
            with time_limit(config.ingest.decode_timeout_s):
                decoded = decode_image(data, image)
        except Quarantined as error:
            result.quarantined.append(
                {
                    **base,
                    "sample_id": sample_id,
                    "reason": error.reason,
                    "message": error.message,
                }
            )
            continue
        finally:
            del data
        result.decoded += 1
        if item.label not in label_index:
            result.quarantined.append(
                {
                    **base,
                    "sample_id": sample_id,
                    "reason": "unknown_label",
                    "message": f"label {item.label!r} is not among the version's classes",
                }
            )
            continue
        split = assign_split(
            sample_id, config.split, source_split=item.source_split, group=item.group
        )
        record = {
            **base,
            "sample_id": sample_id,
            "split": split,
            **_info_fields(decoded.info),
        }
        accepted.append((record, decoded.pixels))
        counts.append(decoded.histogram)

    result.histograms = _split_histograms(accepted, counts)
    per_shard = config.output.rows_per_shard
    for start in range(0, len(accepted), per_shard):
        group = accepted[start : start + per_shard]
        shard = _write_group(store, group, class_names, label_index, config)
        for offset, (record, _) in enumerate(group):
            record["shard"] = shard["path"]
            record["shard_row"] = offset
            result.records.append(record)
        result.shards.append(shard)
        crash_point("shard_written")
    result.seconds = time.perf_counter() - started
    if use_cache:
        _save_cached_chunk(store, result)
    return result


def _info_fields(info: dict[str, Any]) -> dict[str, Any]:
    return {
        "format": info.get("format"),
        "mode": info.get("mode"),
        "source_width": info.get("source_width"),
        "source_height": info.get("source_height"),
        "frames": info.get("frames"),
        "orientation": info.get("orientation"),
        "bit_depth": info.get("bit_depth"),
        "conversions": list(info.get("conversions", [])),
        "warnings": list(info.get("warnings", [])),
    }


def _split_histograms(
    accepted: list[tuple[dict[str, Any], np.ndarray]],
    counts: list[np.ndarray | None],
) -> dict[str, ChannelHistogram]:
    """Return the exact histogram of each split's pixels in this chunk.

    The decoder's per-image counts are summed where it gave them (uint8 output);
    otherwise the pixels are counted with numpy.
    """
    by_split: dict[str, list[int]] = {}
    for index, (record, _) in enumerate(accepted):
        by_split.setdefault(record["split"], []).append(index)
    histograms = {}
    for split, indices in sorted(by_split.items()):
        given = [counts[i] for i in indices]
        if all(item is not None for item in given):
            histograms[split] = ChannelHistogram.from_counts(
                np.sum(np.stack(given), axis=0)
            )
        else:
            pixels = np.stack([accepted[i][1] for i in indices])
            histograms[split] = ChannelHistogram.of(pixels)
    return histograms


def _write_group(
    store: Store,
    group: list[tuple[dict[str, Any], np.ndarray]],
    class_names: Sequence[str],
    label_index: dict[str, int],
    config: PrepareConfig,
) -> dict[str, Any]:
    records = [record for record, _ in group]
    rows = ShardRows(
        sample_ids=[r["sample_id"] for r in records],
        labels=np.array([label_index[r["label"]] for r in records], dtype=np.int32),
        label_names=[r["label"] for r in records],
        splits=[r["split"] for r in records],
        pixels=np.stack([pixels for _, pixels in group]),
        source_paths=[r["key"] for r in records],
    )
    return store_shard(store, rows, class_names, config, kind="samples")


def store_shard(
    store: Store,
    rows: ShardRows,
    class_names: Sequence[str],
    config: PrepareConfig,
    kind: str,
) -> dict[str, Any]:
    """Write rows as one shard object and return its manifest entry."""
    fmt = config.output.format
    data = write_shard(rows, class_names, fmt, config.output.compression_level)
    ref = store.put_bytes(data, fmt)
    counts: dict[str, Counter[str]] = {}
    for split, name in zip(rows.splits, rows.label_names, strict=True):
        counts.setdefault(split, Counter())[name] += 1
    return {
        **ref.to_dict(),
        "kind": kind,
        "format": fmt,
        "rows": len(rows),
        "class_counts": {
            split: dict(sorted(counter.items()))
            for split, counter in sorted(counts.items())
        },
    }
