"""Build a version's sample set from its parent and the chunks decoded in this run.

A refresh costs what changed. :func:`plan_ingest` compares the scan with the parent
version's ``sources`` table: a file whose path, size and mtime match keeps its
sample and is not read. :func:`assemble_samples` then merges the reused samples with
the newly decoded ones, drops exact duplicates, and reconciles the shard objects:

* A shard whose rows all stay, with the same label, split and class index, is
  referenced unchanged.
* A shard that loses rows, or whose rows change label or split, is rewritten from its
  stored pixels (no source is decoded again).

Statistics follow the same path exactly. The version's per-split histograms are the
parent's, plus the histograms of the decoded chunks, minus each rewritten or dropped
shard's old contribution, plus its new one. Integer histograms make this equal to a
full rebuild, bit for bit.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from imgprep.config import SPLITS, PrepareConfig
from imgprep.errors import CorruptObjectError, RejectedFractionError
from imgprep.ingest import ChunkResult, store_shard
from imgprep.scan import Candidate, ScanResult, natural_class_order
from imgprep.shards import read_shard
from imgprep.split import assign_split
from imgprep.stats import ChannelHistogram
from imgprep.store import Store

__all__ = [
    "AssembleResult",
    "IngestPlan",
    "ParentState",
    "assemble_samples",
    "check_rejected_fraction",
    "plan_ingest",
]

logger = logging.getLogger(__name__)


@dataclass
class ParentState:
    """What a refresh needs from the parent version."""

    version: int
    classes: list[str]
    sources: list[dict[str, Any]]
    shards: list[dict[str, Any]]
    histograms: dict[str, ChannelHistogram]
    shard_schema: dict[str, str]
    pixel: dict[str, Any]
    image: dict[str, Any] = field(default_factory=dict)


def image_settings_changes(
    parent: ParentState | None, config: PrepareConfig
) -> list[str]:
    """Return the ``image`` settings that differ from the parent's.

    Each entry reads ``"image.KEY OLD -> NEW"``. These settings decide the stored pixels, so when any differs no parent pixel can
    be reused and every file is decoded again.
    """
    if parent is None:
        return []
    current = config.image.model_dump(mode="json")
    changes = []
    for key in sorted(set(current) | set(parent.image)):
        old, new = parent.image.get(key), current.get(key)
        if old != new:
            changes.append(f"image.{key} {old!r} -> {new!r}")
    return changes


# Chunking of small decode lists: about this many chunks, of at least MIN_CHUNK files.
TARGET_CHUNKS = 8
MIN_CHUNK = 64


@dataclass
class IngestPlan:
    """Which candidates are reused from the parent and which are decoded."""

    reuse: dict[str, dict[str, Any]] = field(default_factory=dict)
    reuse_quarantine: dict[str, dict[str, Any]] = field(default_factory=dict)
    decode: list[Candidate] = field(default_factory=list)
    expected_ids: dict[str, str] = field(default_factory=dict)
    new_keys: list[str] = field(default_factory=list)
    changed_keys: list[str] = field(default_factory=list)
    unchanged_keys: list[str] = field(default_factory=list)
    removed_keys: list[str] = field(default_factory=list)
    candidates: dict[str, Candidate] = field(default_factory=dict)
    # Why the parent's pixels are not reused, or None for an incremental refresh.
    rebuild: str | None = None

    def chunks(self, size: int) -> list[list[Candidate]]:
        """Return the files to decode in chunks of at most ``size``, in key order.

        Each chunk takes at most 1/:data:`TARGET_CHUNKS` of the files still left,
        and at least :data:`MIN_CHUNK` files. So a few hundred files still spread
        over every worker, and chunks shrink towards the end of a long list, which
        keeps workers from waiting on one last large chunk. The chunking depends only
        on the list and ``size``, never on the machine, so equal inputs give equal
        shards everywhere.
        """
        chunks = []
        start, count = 0, len(self.decode)
        while start < count:
            remaining = count - start
            step = min(size, max(MIN_CHUNK, -(-remaining // TARGET_CHUNKS)))
            chunks.append(self.decode[start : start + step])
            start += step
        return chunks


def plan_ingest(
    scan: ScanResult,
    parent: ParentState | None,
    *,
    rehash: bool = False,
    rebuild: str | None = None,
) -> IngestPlan:
    """Split the scan's candidates into reused samples and files to decode.

    With ``rehash``, every previously ingested file is read again and decoded only
    when its bytes no longer hash to the recorded sample id. With ``rebuild`` (the
    reason, such as changed image settings), every file is decoded and nothing of
    the parent is reused. The new, changed, unchanged and removed files are still
    counted against the parent.
    """
    if rebuild is not None and parent is not None:
        return _plan_rebuild(scan, parent, rebuild)
    plan = IngestPlan()
    previous = {row["key"]: row for row in (parent.sources if parent else [])}
    conflicting: list[Candidate] = []
    for candidate in scan.candidates:
        plan.candidates[candidate.key] = candidate
        old = previous.get(candidate.key)
        if old is None or old["status"] == "skipped":
            plan.new_keys.append(candidate.key)
            plan.decode.append(candidate)
            continue
        same_fingerprint = (
            old.get("size") == candidate.size
            and old.get("mtime_ns") == candidate.mtime_ns
        )
        if same_fingerprint and not rehash:
            plan.unchanged_keys.append(candidate.key)
            if old["status"] in ("ingested", "duplicate"):
                plan.reuse[candidate.key] = old
            elif (
                old["status"] == "quarantined"
                and old.get("reason") != "conflicting_label"
            ):
                plan.reuse_quarantine[candidate.key] = old
            else:
                conflicting.append(candidate)
            continue
        if same_fingerprint:
            plan.unchanged_keys.append(candidate.key)
        else:
            plan.changed_keys.append(candidate.key)
        if old.get("sample_id") and old["status"] in ("ingested", "duplicate"):
            plan.expected_ids[candidate.key] = old["sample_id"]
        plan.decode.append(candidate)
    # A label conflict between identical files stands while every file of it is
    # unchanged; otherwise its files are decoded again so the conflict is re-checked.
    groups: dict[str, list[str]] = defaultdict(list)
    for row in previous.values():
        if row["status"] == "quarantined" and row.get("reason") == "conflicting_label":
            groups[row.get("sample_id") or row["key"]].append(row["key"])
    unchanged = set(plan.unchanged_keys)
    for candidate in conflicting:
        old = previous[candidate.key]
        members = groups.get(old.get("sample_id") or old["key"], [])
        if all(
            key in unchanged and plan.candidates[key].label == previous[key]["label"]
            for key in members
        ):
            plan.reuse_quarantine[candidate.key] = old
        else:
            plan.decode.append(candidate)
    _finish_plan(plan, previous)
    return plan


def _finish_plan(plan: IngestPlan, previous: dict[str, dict[str, Any]]) -> None:
    """Sort the files to decode and list the parent's files that are gone."""
    plan.decode.sort(key=lambda candidate: candidate.key)
    plan.removed_keys = sorted(
        key
        for key, row in previous.items()
        if key not in plan.candidates and row["status"] != "skipped"
    )


def _plan_rebuild(scan: ScanResult, parent: ParentState, reason: str) -> IngestPlan:
    plan = IngestPlan(rebuild=reason)
    previous = {row["key"]: row for row in parent.sources}
    for candidate in scan.candidates:
        plan.candidates[candidate.key] = candidate
        plan.decode.append(candidate)
        old = previous.get(candidate.key)
        if old is None or old["status"] == "skipped":
            plan.new_keys.append(candidate.key)
        elif (
            old.get("size") == candidate.size
            and old.get("mtime_ns") == candidate.mtime_ns
        ):
            plan.unchanged_keys.append(candidate.key)
        else:
            plan.changed_keys.append(candidate.key)
    _finish_plan(plan, previous)
    return plan


@dataclass
class AssembleResult:
    """The sample set of a new version."""

    classes: list[str]
    sources: list[dict[str, Any]]
    shards: list[dict[str, Any]]
    histograms: dict[str, ChannelHistogram]
    counts: dict[str, dict[str, int]]
    refresh: dict[str, Any]
    added_ids: list[str]
    removed_ids: list[str]
    duplicate_groups: list[dict[str, Any]] = field(default_factory=list)

    def samples(self) -> list[dict[str, Any]]:
        return [row for row in self.sources if row["status"] == "ingested"]


class _Written(NamedTuple):
    """What one shard row was written as: its row, label, split and source key."""

    shard_row: int
    label: str
    split: str
    key: str


def _written_index(rows: Iterable[dict[str, Any]]) -> dict[str, list[_Written]]:
    """Map each shard to what its rows were written as, in row order."""
    by_shard: dict[str, list[_Written]] = defaultdict(list)
    for row in rows:
        if row.get("shard"):
            by_shard[row["shard"]].append(
                _Written(row["shard_row"], row["label"], row["split"], row["key"])
            )
    for shard_rows in by_shard.values():
        shard_rows.sort()
    return by_shard


def _dedupe(
    samples: list[dict[str, Any]], policy: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """Apply the duplicates policy to samples that share a sample id.

    Returns (kept samples, rejected records, duplicate groups). Each group lists the
    keys and labels of files with identical bytes.
    """
    by_id: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for sample in samples:
        by_id[sample["sample_id"]].append(sample)
    kept, rejected, groups = [], [], []
    for sample_id, copies in by_id.items():
        copies.sort(key=lambda s: s["key"])
        if len(copies) == 1:
            kept.append(copies[0])
            continue
        labels = sorted({copy["label"] for copy in copies})
        groups.append(
            {
                "sample_id": sample_id,
                "keys": [copy["key"] for copy in copies],
                "labels": labels,
                "conflicting_labels": len(labels) > 1,
            }
        )
        if policy == "keep":
            kept.extend(copies)
            continue
        if len(labels) > 1:
            for copy in copies:
                rejected.append(
                    {
                        **copy,
                        "status": "quarantined",
                        "reason": "conflicting_label",
                        "message": "identical bytes appear under labels "
                        f"{labels} at {[c['key'] for c in copies]}",
                    }
                )
            continue
        first, *others = copies
        kept.append(first)
        for other in others:
            rejected.append(
                {
                    **other,
                    "status": "duplicate",
                    "reason": "duplicate",
                    "message": f"same bytes as {first['key']}",
                }
            )
    groups.sort(key=lambda group: group["keys"][0])
    return kept, rejected, groups


def _adopt_stored_copies(
    kept: list[dict[str, Any]], samples: list[dict[str, Any]]
) -> None:
    """Point kept samples that have no stored pixels at a stored identical copy.

    A file that an earlier version dropped as a duplicate has no shard row. When the
    copy that was kept leaves, the duplicate takes over that copy's row: the bytes,
    and so the decoded pixels, are identical.
    """
    stored = {}
    for sample in samples:
        if sample.get("shard"):
            stored.setdefault(sample["sample_id"], sample)
    for sample in kept:
        if sample.get("shard"):
            continue
        source = stored.get(sample["sample_id"])
        if source is None:
            raise RuntimeError(
                f"sample {sample['sample_id']} ({sample['key']}) has no stored pixels; "
                "run again with --rehash to decode it"
            )
        sample["shard"] = source["shard"]
        sample["shard_row"] = source["shard_row"]


def assemble_samples(
    *,
    config: PrepareConfig,
    scan: ScanResult,
    plan: IngestPlan,
    parent: ParentState | None,
    chunks: Sequence[ChunkResult],
    chunk_classes: Sequence[str],
    store: Store,
) -> AssembleResult:
    """Merge reused and decoded samples into the new version's shards and histograms.

    Parameters
    ----------
    chunk_classes : sequence of str
        Class names the chunks were written with (label-index order).
    """
    channels, dtype = config.image.channels, config.image.dtype

    # Samples before de-duplication: reused parent rows with current metadata, then
    # the decoded ones.
    unchanged_by_rehash = {key for chunk in chunks for key in chunk.unchanged}
    previous = {row["key"]: row for row in (parent.sources if parent else [])}
    candidates = plan.candidates
    samples: list[dict[str, Any]] = []
    # What the parent's shards hold, and which samples it had, are taken before its
    # rows are reused in place below.
    parent_written = _written_index(
        row for row in (parent.sources if parent else []) if row["status"] == "ingested"
    )
    parent_ids = {
        (row["sample_id"], row["key"])
        for row in (parent.sources if parent else [])
        if row["status"] == "ingested"
    }
    reused_keys = set(plan.reuse) | unchanged_by_rehash
    for key in sorted(reused_keys):
        # The parent's row becomes the sample in place: at 100,000 files a copy of
        # every row cost about 200 MB.
        sample = previous[key]
        candidate = candidates[key]
        sample.update(
            status="ingested",
            reason=None,
            message=None,
            label=candidate.label,
            source_split=candidate.source_split,
            group=candidate.group,
            table_row=candidate.row,
            size=candidate.size,
            mtime_ns=candidate.mtime_ns,
        )
        samples.append(sample)
    # Decoded records become the new samples in place: a copy would double the
    # memory of the largest per-file structure of the run.
    for chunk in chunks:
        for record in chunk.records:
            record["status"] = "ingested"
            samples.append(record)
    for sample in samples:
        sample["split"] = assign_split(
            sample["sample_id"],
            config.split,
            source_split=sample.get("source_split"),
            group=sample.get("group"),
        )
    kept, rejected, duplicate_groups = _dedupe(samples, config.ingest.duplicates)
    _adopt_stored_copies(kept, samples)
    classes = natural_class_order({s["label"] for s in kept})
    label_index = {name: i for i, name in enumerate(classes)}

    # Where each row of each existing shard was written, and what it was written as.
    written: dict[str, list[dict[str, Any]]] = {}
    written_classes: dict[str, list[str]] = {}
    shard_entries: dict[str, dict[str, Any]] = {}
    reuse_parent = parent is not None and plan.rebuild is None
    parent_shards = [
        s for s in (parent.shards if reuse_parent else []) if s["kind"] == "samples"
    ]
    for entry in parent_shards:
        written[entry["path"]] = parent_written.get(entry["path"], [])
        written_classes[entry["path"]] = parent.classes if parent else []
        shard_entries[entry["path"]] = entry
    chunk_rows = _written_index(r for c in chunks for r in c.records)
    histograms = {split: ChannelHistogram(channels, dtype) for split in SPLITS}
    if parent is not None and reuse_parent:
        for split, hist in parent.histograms.items():
            histograms[split] += hist
    for chunk in chunks:
        for split, hist in chunk.histograms.items():
            histograms[split] += hist
        for entry in chunk.shards:
            written[entry["path"]] = chunk_rows.get(entry["path"], [])
            written_classes[entry["path"]] = list(chunk_classes)
            shard_entries[entry["path"]] = entry

    kept_at = {(s["shard"], s["shard_row"]): s for s in kept}
    final_shards: list[dict[str, Any]] = []
    reused_count = written_count = 0
    new_shard_paths = {entry["path"] for chunk in chunks for entry in chunk.shards}
    for path, rows in written.items():
        entry = shard_entries[path]
        keep_rows = [kept_at.get((path, row.shard_row)) for row in rows]
        unchanged = (
            all(k is not None for k in keep_rows)
            and written_classes[path] == classes
            and all(
                k["label"] == row.label
                and k["split"] == row.split
                and k["key"] == row.key
                for k, row in zip(keep_rows, rows, strict=True)
            )
            and entry["format"] == config.output.format
        )
        if unchanged:
            if path not in new_shard_paths:
                _check_reused_size(store, entry)
            final_shards.append(entry)
            if path in new_shard_paths:
                written_count += 1
            else:
                reused_count += 1
            continue
        # Rewrite from stored pixels: subtract the shard's old contribution to the
        # histograms and add the kept rows' new one.
        data = store.read_object(path, entry["sha256"], entry["bytes"])
        stored = read_shard(data, entry["format"], path=path).rows
        _account(histograms, stored.pixels, stored.splits, sign=-1)
        indices = [i for i, k in enumerate(keep_rows) if k is not None]
        if not indices:
            continue
        subset = stored.take(indices)
        survivors = [keep_rows[i] for i in indices]
        subset.label_names = [s["label"] for s in survivors]
        subset.labels = np.array([label_index[s["label"]] for s in survivors], np.int32)
        subset.splits = [s["split"] for s in survivors]
        subset.source_paths = [s["key"] for s in survivors]
        _account(histograms, subset.pixels, subset.splits, sign=+1)
        new_entry = store_shard(store, subset, classes, config, kind="samples")
        for row_index, sample in enumerate(survivors):
            sample["shard"] = new_entry["path"]
            sample["shard_row"] = row_index
        final_shards.append(new_entry)
        written_count += 1

    # Sources table: every file seen, sorted by key.
    sources: list[dict[str, Any]] = list(kept)
    sources.extend(rejected)
    for chunk in chunks:
        for row in chunk.quarantined:
            sources.append({**row, "status": "quarantined"})
    for key, old in plan.reuse_quarantine.items():
        candidate = candidates[key]
        sources.append(
            {
                **old,
                "label": candidate.label,
                "table_row": candidate.row,
                "status": "quarantined",
            }
        )
    for row in scan.skipped:
        sources.append(
            {
                "key": row["path"],
                "status": "skipped",
                "reason": row["reason"],
                "message": row["message"],
                "table_row": row.get("row"),
                "label": row.get("label"),
            }
        )
    sources.sort(key=lambda r: (r["key"], r["status"], r.get("table_row") or 0))

    counts: dict[str, dict[str, int]] = {}
    for split in SPLITS:
        counter = Counter(s["label"] for s in kept if s["split"] == split)
        counts[split] = {name: counter.get(name, 0) for name in classes}
    kept_ids = {(s["sample_id"], s["key"]) for s in kept}
    changed_keys = _changed_keys(plan, previous, chunks)
    seen_keys = len(plan.changed_keys) + len(plan.unchanged_keys)
    refresh = {
        "parent": parent.version if parent else None,
        "rebuild": plan.rebuild,
        "files_new": len(plan.new_keys),
        "files_changed": len(changed_keys),
        "files_unchanged": seen_keys - len(changed_keys),
        "files_removed": len(plan.removed_keys),
        "images_decoded": sum(c.decoded for c in chunks if not c.cached),
        "images_decoded_before_crash": sum(c.decoded for c in chunks if c.cached),
        "chunks": len(chunks),
        "chunks_from_cache": sum(1 for c in chunks if c.cached),
        "shards_reused": reused_count,
        "shards_written": written_count,
        "samples_added": len(kept_ids - parent_ids),
        "samples_removed": len(parent_ids - kept_ids),
    }
    return AssembleResult(
        classes=classes,
        sources=sources,
        shards=final_shards,
        histograms=histograms,
        counts=counts,
        refresh=refresh,
        added_ids=sorted({sample_id for sample_id, _ in kept_ids - parent_ids}),
        removed_ids=sorted({sample_id for sample_id, _ in parent_ids - kept_ids}),
        duplicate_groups=duplicate_groups,
    )


def _check_reused_size(store: Store, entry: dict[str, Any]) -> None:
    """Raise CorruptObjectError when a reused parent shard is missing or resized.

    Only the size is checked, which costs one stat per shard. A flipped byte of the
    right size passes here, and ``imgprep verify`` finds it.
    """
    path = store.object_path(entry["path"])
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        size = None
    if size != entry["bytes"]:
        found = "missing" if size is None else f"{size:,} bytes"
        raise CorruptObjectError(
            f"shard {entry['path']} of the latest version is {found}, but the "
            f"manifest records {entry['bytes']:,} bytes; run with --rebuild (the "
            "flow parameter rebuild=true) to build a new version from the sources "
            "alone",
            entry["path"],
        )


def _changed_keys(
    plan: IngestPlan,
    previous: dict[str, dict[str, Any]],
    chunks: Sequence[ChunkResult],
) -> list[str]:
    """Return the keys of known files whose bytes differ from the parent's record.

    A new size or mtime only makes a file a candidate: it counts as changed when a
    chunk found bytes that no longer hash to the recorded sample id. A file that was
    only touched therefore counts as unchanged, and under ``rehash`` a file whose
    bytes changed behind an unchanged size and mtime counts as changed.
    """
    processed = {
        row["key"]: row.get("sample_id")
        for chunk in chunks
        for row in (*chunk.records, *chunk.quarantined)
    }
    known = {*plan.changed_keys, *plan.unchanged_keys}
    return sorted(
        key
        for key in known
        if key in processed
        and (processed[key] is None or processed[key] != previous[key].get("sample_id"))
    )


def check_rejected_fraction(
    sources: Sequence[dict[str, Any]], max_fraction: float
) -> dict[str, int]:
    """Raise RejectedFractionError when too many candidate files were quarantined.

    Returns the number of quarantined files per reason.
    """
    candidates = [
        r for r in sources if r["status"] in ("ingested", "quarantined", "duplicate")
    ]
    rejected = [r for r in sources if r["status"] == "quarantined"]
    by_reason = dict(sorted(Counter(r["reason"] for r in rejected).items()))
    if not candidates:
        return by_reason
    fraction = len(rejected) / len(candidates)
    if fraction > max_fraction:
        examples = "; ".join(f"{r['key']}: {r['reason']}" for r in rejected[:5])
        raise RejectedFractionError(
            f"{len(rejected)} of {len(candidates)} candidate files ({fraction:.1%}) "
            f"were quarantined, above ingest.max_rejected_fraction {max_fraction:g}. "
            f"By reason: {by_reason}. Examples: {examples}. Fix or remove the files, "
            "or raise the limit; no version was written."
        )
    return by_reason


def _account(
    histograms: dict[str, ChannelHistogram],
    pixels: np.ndarray,
    splits: Sequence[str],
    sign: int,
) -> None:
    splits_array = np.asarray(splits)
    for split in SPLITS:
        mask = splits_array == split
        if not mask.any():
            continue
        part = ChannelHistogram.of(pixels[mask])
        if sign > 0:
            histograms[split] += part
        else:
            histograms[split] -= part
