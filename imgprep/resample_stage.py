"""Resample a version's training split, reading stored pixels instead of sources.

The training rows are ordered by sample id, so the result depends only on the set of
training samples and the settings, not on how the samples are spread over shards:
a refresh with no change reproduces its parent's resampling exactly, and a refresh
resamples the same as a rebuild from scratch.

Random over- and under-sampling and class weights need only the labels. The SMOTE
family needs features: each training image is block-averaged to a small thumbnail
and, by default, reduced with PCA. Neighbours are found in that reduced space, and
every synthetic image is interpolated at full resolution from its two parents,
chunk by chunk, with the coefficient the sampler chose.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from imgprep.config import SMOTE_FAMILY, PrepareConfig
from imgprep.ingest import store_shard
from imgprep.shards import ShardRows, read_shard
from imgprep.store import Store
from imgprep.tables import LINEAGE_SCHEMA, ColumnRows, table_bytes

__all__ = ["ResampleStage", "resample_training", "synthetic_id"]

logger = logging.getLogger(__name__)

SYNTHETIC_CHUNK = 1024


@dataclass
class ResampleStage:
    """Outcome of resampling: lineage table, synthetic shards and a summary."""

    summary: dict[str, Any]
    lineage_rows: ColumnRows
    synthetic_shards: list[dict[str, Any]] = field(default_factory=list)
    counts_after: dict[str, int] = field(default_factory=dict)


def synthetic_id(parent_a: str, parent_b: str, coefficient: float, seed: int) -> str:
    """Return the sample id of a synthetic row, derived from its lineage."""
    text = f"synthetic:{parent_a}:{parent_b}:{coefficient.hex()}:{seed}"
    return hashlib.sha256(text.encode()).hexdigest()


class ShardReader:
    """Reads rows of a version's shards, one shard object at a time."""

    def __init__(self, store: Store, shards: Sequence[dict[str, Any]]) -> None:
        self.store = store
        self.entries = {entry["path"]: entry for entry in shards}

    def read(self, path: str) -> ShardRows:
        entry = self.entries[path]
        data = self.store.read_object(path, entry["sha256"], entry["bytes"])
        return read_shard(data, entry["format"], path=path).rows

    def pixels_of(self, locations: Sequence[tuple[str, int]]) -> np.ndarray:
        """Return the pixels at (shard, row) locations, in the order given."""
        by_shard: dict[str, list[int]] = defaultdict(list)
        for position, (path, _) in enumerate(locations):
            by_shard[path].append(position)
        result: np.ndarray | None = None
        for path, positions in by_shard.items():
            rows = self.read(path)
            picks = [locations[p][1] for p in positions]
            pixels = rows.pixels[picks]
            if result is None:
                result = np.empty((len(locations), *pixels.shape[1:]), pixels.dtype)
            result[positions] = pixels
        assert result is not None or not locations
        return result if result is not None else np.zeros((0,))


def _features(
    reader: ShardReader,
    train: Sequence[dict[str, Any]],
    config: PrepareConfig,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Return the reduced features of the training rows and their description.

    Thumbnails are computed shard by shard, so only one shard's pixels are held
    at a time.
    """
    from imgprep.resampling import FeatureReducer

    reducer = FeatureReducer.from_settings(
        config.resample.features, seed=config.resample.seed
    )
    position = {sample["sample_id"]: i for i, sample in enumerate(train)}
    by_shard: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for sample in train:
        by_shard[sample["shard"]].append(sample)
    thumbnails: np.ndarray | None = None
    for path, members in by_shard.items():
        rows = reader.read(path)
        block = reducer.thumbnails(rows.pixels[[m["shard_row"] for m in members]])
        if thumbnails is None:
            thumbnails = np.empty((len(train), block.shape[1]), dtype=np.float32)
        thumbnails[[position[m["sample_id"]] for m in members]] = block
    assert thumbnails is not None
    reduced = reducer.fit_transform(thumbnails)
    return np.asarray(reduced, dtype=np.float64), reducer.describe()


def resample_training(
    *,
    config: PrepareConfig,
    store: Store,
    samples: Sequence[dict[str, Any]],
    shards: Sequence[dict[str, Any]],
    classes: Sequence[str],
) -> ResampleStage:
    """Resample the training split and write synthetic shards and lineage rows."""
    settings = config.resample
    train = sorted(
        (s for s in samples if s["split"] == "train"),
        key=lambda s: (s["sample_id"], s["key"]),
    )
    labels = np.array([s["label"] for s in train], dtype=object)
    counts = {name: int(np.sum(labels == name)) for name in classes}
    if settings.method == "none":
        lineage = ColumnRows(LINEAGE_SCHEMA)
        for sample in train:
            lineage.append(_original(sample, 1.0))
        return ResampleStage(
            summary={"method": "none", "counts_before": counts, "counts_after": counts},
            lineage_rows=lineage,
            counts_after=counts,
        )
    # scikit-learn and imbalanced-learn are imported here, after decoding, so they
    # take no memory while the decode workers run.
    from imgprep.resampling import resample
    from imgprep.sampling_strategy import check_sampling_strategy

    check_sampling_strategy(settings.method, settings.sampling_strategy, counts)

    reader = ShardReader(store, shards)
    features = None
    feature_space: dict[str, Any] | None = None
    if settings.method in SMOTE_FAMILY:
        features, feature_space = _features(reader, train, config)
    result = resample(
        labels.astype(str),
        features,
        settings,
        beta=config.profile.beta,
        max_memory_bytes=settings.max_memory_mb * 1024 * 1024,
    )

    lineage = ColumnRows(LINEAGE_SCHEMA)
    for index, sample in enumerate(train):
        repeats = int(result.repeats[index])
        weight = float(result.weights[index])
        if repeats == 0:
            lineage.append(
                {
                    "sample_id": sample["sample_id"],
                    "label": sample["label"],
                    "origin": "dropped",
                    "count": 0,
                    "weight": weight,
                    "parents": [],
                    "reason": settings.method,
                    "shard": sample["shard"],
                    "shard_row": sample["shard_row"],
                }
            )
            continue
        lineage.append(_original(sample, weight))
        if repeats > 1:
            lineage.append(
                {
                    "sample_id": sample["sample_id"],
                    "label": sample["label"],
                    "origin": "duplicate",
                    "count": repeats - 1,
                    "weight": weight,
                    "parents": [sample["sample_id"]],
                    "shard": sample["shard"],
                    "shard_row": sample["shard_row"],
                }
            )

    synthetic_shards = _write_synthetic(
        result, train, reader, store, config, classes, lineage
    )
    summary = result.to_dict()
    summary["counts_before"] = counts
    if feature_space is not None:
        summary["feature_space"] = feature_space
    return ResampleStage(
        summary=summary,
        lineage_rows=lineage,
        synthetic_shards=synthetic_shards,
        counts_after={name: int(result.counts_after.get(name, 0)) for name in classes},
    )


def _original(sample: dict[str, Any], weight: float) -> dict[str, Any]:
    return {
        "sample_id": sample["sample_id"],
        "label": sample["label"],
        "origin": "original",
        "count": 1,
        "weight": weight,
        "parents": [],
        "shard": sample["shard"],
        "shard_row": sample["shard_row"],
    }


def _write_synthetic(
    result: Any,
    train: Sequence[dict[str, Any]],
    reader: ShardReader,
    store: Store,
    config: PrepareConfig,
    classes: Sequence[str],
    lineage: ColumnRows,
) -> list[dict[str, Any]]:
    from imgprep.resampling import interpolate_pixels

    parents = np.asarray(result.synthetic_parents, dtype=np.int64).reshape(-1, 2)
    if parents.shape[0] == 0:
        return []
    coefficients = np.asarray(result.synthetic_coefficients, dtype=np.float64)
    labels = [str(v) for v in result.synthetic_labels]
    label_index = {name: i for i, name in enumerate(classes)}
    dtype = np.dtype(config.image.dtype)
    per_shard = config.output.rows_per_shard
    parent_pixels = _ParentCache(reader, train, parents, labels)
    shards = []
    for start in range(0, parents.shape[0], per_shard):
        stop = min(start + per_shard, parents.shape[0])
        pair = parents[start:stop]
        a, b = parent_pixels.pairs(start, stop)
        pixels = interpolate_pixels(a, b, coefficients[start:stop], dtype)
        ids, parent_ids = [], []
        for offset in range(stop - start):
            first = train[int(pair[offset, 0])]["sample_id"]
            second = train[int(pair[offset, 1])]["sample_id"]
            coefficient = float(coefficients[start + offset])
            ids.append(synthetic_id(first, second, coefficient, config.resample.seed))
            parent_ids.append([first, second])
        chunk_labels = labels[start:stop]
        rows = ShardRows(
            sample_ids=ids,
            labels=np.array([label_index[name] for name in chunk_labels], np.int32),
            label_names=chunk_labels,
            splits=["train"] * len(ids),
            pixels=pixels,
            source_paths=[None] * len(ids),
            origins=["synthetic"] * len(ids),
            parents=parent_ids,
            coefficients=coefficients[start:stop].copy(),
        )
        entry = store_shard(store, rows, classes, config, kind="synthetic")
        shards.append(entry)
        for offset, sample_id in enumerate(ids):
            lineage.append(
                {
                    "sample_id": sample_id,
                    "label": chunk_labels[offset],
                    "origin": "synthetic",
                    "count": 1,
                    "weight": 1.0,
                    "parents": parent_ids[offset],
                    "coefficient": float(coefficients[start + offset]),
                    "shard": entry["path"],
                    "shard_row": offset,
                }
            )
    return shards


class _ParentCache:
    """Pixels of the parents of synthetic rows, loaded one class at a time.

    The sampler emits synthetic rows class by class. Before the first row of a run
    of one class is interpolated, the pixels of every parent that run needs are read
    with one pass over the shards; they are dropped once the run is written. So each
    shard is read once per class, and memory holds one class's parents.
    """

    def __init__(
        self,
        reader: ShardReader,
        train: Sequence[dict[str, Any]],
        parents: np.ndarray,
        labels: Sequence[str],
    ) -> None:
        self._reader = reader
        self._train = train
        self._parents = parents
        self._runs: list[tuple[int, int]] = []
        start = 0
        for index in range(1, len(labels) + 1):
            if index == len(labels) or labels[index] != labels[start]:
                self._runs.append((start, index))
                start = index
        self._loaded: dict[int, dict[int, np.ndarray]] = {}

    def _load(self, run: int) -> None:
        start, stop = self._runs[run]
        needed = np.unique(self._parents[start:stop].ravel())
        locations = [
            (self._train[i]["shard"], self._train[i]["shard_row"]) for i in needed
        ]
        block = self._reader.pixels_of(locations)
        self._loaded[run] = {int(i): block[j] for j, i in enumerate(needed)}

    def pairs(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Return the (a, b) parent pixels of synthetic rows ``start:stop``."""
        wanted = [
            run
            for run, (run_start, run_stop) in enumerate(self._runs)
            if run_start < stop and run_stop > start
        ]
        for run in list(self._loaded):
            if run not in wanted:
                del self._loaded[run]
        pixels: dict[int, np.ndarray] = {}
        for run in wanted:
            if run not in self._loaded:
                self._load(run)
            pixels.update(self._loaded[run])
        pair = self._parents[start:stop]
        first = np.stack([pixels[int(i)] for i in pair[:, 0]])
        second = np.stack([pixels[int(i)] for i in pair[:, 1]])
        return first, second


def lineage_table_bytes(rows: ColumnRows) -> bytes:
    """Serialize lineage rows as the version's lineage table."""
    return table_bytes(rows, LINEAGE_SCHEMA)
