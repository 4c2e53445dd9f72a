"""Float32 normalized copies of shards, for ``normalize.apply: on_write``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from imgprep.config import PrepareConfig
from imgprep.ingest import store_shard
from imgprep.shards import read_shard
from imgprep.stats import NormalizationParams, normalize_pixels
from imgprep.store import Store

__all__ = ["write_normalized_shards"]


def write_normalized_shards(
    store: Store,
    shards: Sequence[dict[str, Any]],
    classes: Sequence[str],
    params: NormalizationParams,
    config: PrepareConfig,
) -> list[dict[str, Any]]:
    """Write one normalized shard per raw shard, with the same rows in the same order.

    The raw shards stay in the version: refreshes and exact statistics need them.
    """
    entries = []
    for entry in shards:
        data = store.read_object(entry["path"], entry["sha256"], entry["bytes"])
        rows = read_shard(data, entry["format"], path=entry["path"]).rows
        rows.pixels = normalize_pixels(rows.pixels, params)
        normalized = store_shard(store, rows, classes, config, kind="normalized")
        entries.append(normalized)
    return entries
