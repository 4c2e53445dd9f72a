"""Read a version as numpy batches, with resampling and normalization applied.

Every object is checked against the size and sha256 in the manifest when it is read,
so a corrupt version raises :class:`~imgprep.errors.CorruptObjectError` naming the
object instead of serving wrong data. Shards whose Arrow schema differs from the
manifest's raise :class:`~imgprep.errors.SchemaMismatchError` naming the column.

The training split comes resampled by default: an original kept by the sampler
appears once plus as many duplicates as random over-sampling asked for, samples the
sampler dropped are left out, and synthetic samples follow the originals. Each row
carries its weight (the class weight under ``class_weights``, else 1).

Example::

    import imgprep

    version = imgprep.open_version("stores/demo")
    for batch in version.batches("train", batch_size=256, normalize=True):
        train_step(batch.pixels, batch.labels, batch.weights)
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc

from imgprep.config import SPLITS
from imgprep.manifest import Manifest
from imgprep.shards import ShardRows, read_shard
from imgprep.stats import NormalizationParams, normalize_pixels
from imgprep.store import Store
from imgprep.version import load_manifest, read_object_table

__all__ = ["Batch", "DatasetVersion", "open_version"]


@dataclass
class Batch:
    """A batch of rows: pixels (N, H, W, C), labels, weights and sample ids."""

    pixels: np.ndarray
    labels: np.ndarray
    weights: np.ndarray
    sample_ids: list[str]
    origins: list[str]

    def __len__(self) -> int:
        return len(self.sample_ids)


class DatasetVersion:
    """One committed version of a store, opened for reading."""

    def __init__(self, store: Store, manifest: Manifest) -> None:
        self.store = store
        self.manifest = manifest
        self._lineage: dict[tuple[str, int], tuple[int, float]] | None = None

    @property
    def version(self) -> int:
        return self.manifest.version

    @property
    def classes(self) -> list[str]:
        return list(self.manifest.classes)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.manifest.pixel["shape"])

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.manifest.pixel["dtype"])

    @property
    def normalization(self) -> NormalizationParams:
        """The fitted normalization parameters."""
        return NormalizationParams.from_dict(self.manifest.normalization["params"])

    def split_size(self, split: str, resampled: bool = True) -> int:
        """Return the number of rows :meth:`batches` yields for ``split``."""
        counts = self.manifest.counts["after" if resampled else "before"]
        return int(sum(counts[split].values()))

    def _lineage_counts(self) -> dict[tuple[str, int], tuple[int, float]]:
        """Map each original training row, by (shard, row), to (times, weight).

        Rows are located by shard and row rather than by sample id, because files
        with identical bytes share a sample id but are separate rows.
        """
        if self._lineage is None:
            lineage: dict[tuple[str, int], tuple[int, float]] = {}
            rows = read_object_table(
                self.store,
                self.manifest,
                "lineage",
                columns=["origin", "count", "weight", "shard", "shard_row"],
                where=pc.field("origin") != "synthetic",
            )
            for row in rows:
                where = (row["shard"], int(row["shard_row"]))
                count, _ = lineage.get(where, (0, row["weight"]))
                lineage[where] = (count + int(row["count"]), row["weight"])
            self._lineage = lineage
        return self._lineage

    def _read(self, entry: Any) -> ShardRows:
        data = self.store.read_object(entry.path, entry.sha256, entry.bytes)
        return read_shard(
            data,
            entry.format,
            dict(self.manifest.shard_schema),
            path=entry.path,
            expected_pixel=self.manifest.pixel,
        ).rows

    def rows(self, split: str, resampled: bool = True) -> Iterator[Batch]:
        """Yield one batch per shard with the raw pixels of ``split``."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
        expand = resampled and split == "train"
        lineage = self._lineage_counts() if expand else {}
        for entry in self.manifest.shards:
            if entry.kind != "samples" or split not in entry.class_counts:
                continue
            rows = self._read(entry)
            mask = np.asarray(rows.splits) == split
            index = np.flatnonzero(mask)
            if expand:
                info = [lineage.get((entry.path, int(i)), (1, 1.0)) for i in index]
                repeats = np.array([count for count, _ in info], dtype=np.int64)
                weights = np.array([weight for _, weight in info], dtype=np.float32)
            else:
                repeats = np.ones(len(index), dtype=np.int64)
                weights = np.ones(len(index), dtype=np.float32)
            if len(index) == 0:
                continue
            take = np.repeat(index, repeats)
            ids = [rows.sample_ids[i] for i in take]
            origins = []
            for count in repeats:
                if count:
                    origins.extend(["original"] + ["duplicate"] * (int(count) - 1))
            yield Batch(
                pixels=rows.pixels[take],
                labels=np.asarray(rows.labels)[take].astype(np.int64),
                weights=np.repeat(weights, repeats),
                sample_ids=ids,
                origins=origins,
            )
        if expand:
            for entry in self.manifest.shards:
                if entry.kind != "synthetic":
                    continue
                rows = self._read(entry)
                yield Batch(
                    pixels=rows.pixels,
                    labels=np.asarray(rows.labels).astype(np.int64),
                    weights=np.asarray(rows.weights, dtype=np.float32),
                    sample_ids=list(rows.sample_ids),
                    origins=list(rows.origins),
                )

    def batches(
        self,
        split: str,
        batch_size: int = 256,
        *,
        normalize: bool = False,
        resampled: bool = True,
    ) -> Iterator[Batch]:
        """Yield batches of ``batch_size`` rows (the last may be smaller).

        Parameters
        ----------
        split : str
            ``train``, ``val`` or ``test``.
        normalize : bool
            Apply the version's fitted normalization; pixels become float32.
        resampled : bool
            For the training split, apply the version's resampling.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size is {batch_size}; it must be at least 1")
        params = self.normalization if normalize else None
        pending: list[Batch] = []
        pending_rows = 0
        for part in self.rows(split, resampled=resampled):
            pending.append(part)
            pending_rows += len(part)
            while pending_rows >= batch_size:
                batch, pending = _take(pending, batch_size)
                pending_rows -= batch_size
                yield _finish(batch, params)
        if pending_rows:
            batch, _ = _take(pending, pending_rows)
            yield _finish(batch, params)

    def load(
        self, split: str, *, normalize: bool = False, resampled: bool = True
    ) -> Batch:
        """Return the whole split as one batch."""
        parts = list(self.rows(split, resampled=resampled))
        if not parts:
            empty = np.zeros((0, *self.shape), dtype=self.dtype)
            batch = Batch(empty, np.zeros(0, np.int64), np.zeros(0, np.float32), [], [])
        else:
            batch, _ = _take(parts, sum(len(p) for p in parts))
        return _finish(batch, self.normalization if normalize else None)


def _take(parts: list[Batch], size: int) -> tuple[Batch, list[Batch]]:
    """Split the first ``size`` rows off a list of batches."""
    taken: list[Batch] = []
    remaining = size
    rest = list(parts)
    while remaining:
        head = rest.pop(0)
        if len(head) <= remaining:
            taken.append(head)
            remaining -= len(head)
        else:
            taken.append(_slice(head, 0, remaining))
            rest.insert(0, _slice(head, remaining, len(head)))
            remaining = 0
    return _concat(taken), rest


def _slice(batch: Batch, start: int, stop: int) -> Batch:
    return Batch(
        batch.pixels[start:stop],
        batch.labels[start:stop],
        batch.weights[start:stop],
        batch.sample_ids[start:stop],
        batch.origins[start:stop],
    )


def _concat(parts: list[Batch]) -> Batch:
    if len(parts) == 1:
        return parts[0]
    return Batch(
        np.concatenate([p.pixels for p in parts]),
        np.concatenate([p.labels for p in parts]),
        np.concatenate([p.weights for p in parts]),
        [i for p in parts for i in p.sample_ids],
        [o for p in parts for o in p.origins],
    )


def _finish(batch: Batch, params: NormalizationParams | None) -> Batch:
    if params is not None:
        batch.pixels = normalize_pixels(batch.pixels, params)
    return batch


def open_version(store: str | Path, version: int | None = None) -> DatasetVersion:
    """Open a version of a store for reading (default: the latest).

    The manifest is validated against its schema before anything else is read.
    """
    handle = Store(store)
    return DatasetVersion(handle, load_manifest(handle, version))
