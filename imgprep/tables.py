"""Parquet tables a version stores besides its pixel shards.

``sources``
    One row per file the scan saw: whether it was ingested, quarantined, skipped or
    dropped as a duplicate, with the reason, its size and mtime (the fingerprint a
    refresh compares), its sample id, and where its pixels are (shard and row).
``lineage``
    One row per entry of the resampled training split: ``original`` rows,
    ``duplicate`` rows (``count`` extra copies of an original), ``synthetic`` rows
    with their two parents and interpolation coefficient, and ``dropped`` rows that
    resampling removed, with the reason.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

__all__ = [
    "LINEAGE_SCHEMA",
    "SOURCES_SCHEMA",
    "read_table_bytes",
    "table_bytes",
]

SOURCES_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("reason", pa.string()),
        pa.field("message", pa.string()),
        pa.field("table_row", pa.int64()),
        pa.field("label", pa.string()),
        pa.field("source_split", pa.string()),
        pa.field("group", pa.string()),
        pa.field("split", pa.string()),
        pa.field("size", pa.int64()),
        pa.field("mtime_ns", pa.int64()),
        pa.field("sample_id", pa.string()),
        pa.field("shard", pa.string()),
        pa.field("shard_row", pa.int64()),
        pa.field("format", pa.string()),
        pa.field("mode", pa.string()),
        pa.field("source_width", pa.int64()),
        pa.field("source_height", pa.int64()),
        pa.field("frames", pa.int64()),
        pa.field("orientation", pa.int64()),
        pa.field("bit_depth", pa.int64()),
        pa.field("conversions", pa.string()),
        pa.field("warnings", pa.string()),
    ]
)

LINEAGE_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("label", pa.string(), nullable=False),
        pa.field("origin", pa.string(), nullable=False),
        pa.field("count", pa.int64(), nullable=False),
        pa.field("weight", pa.float64(), nullable=False),
        pa.field("parents", pa.list_(pa.field("element", pa.string()))),
        pa.field("coefficient", pa.float64()),
        pa.field("reason", pa.string()),
        pa.field("shard", pa.string()),
        pa.field("shard_row", pa.int64()),
    ]
)

_JSON_COLUMNS = ("conversions", "warnings")


def table_bytes(rows: Sequence[dict[str, Any]], schema: pa.Schema) -> bytes:
    """Serialize dict rows as zstd Parquet with ``schema``; missing keys are null."""
    columns: dict[str, list[Any]] = {name: [] for name in schema.names}
    for row in rows:
        for name in schema.names:
            value = row.get(name)
            if (
                name in _JSON_COLUMNS
                and value is not None
                and not isinstance(value, str)
            ):
                value = json.dumps(value)
            columns[name].append(value)
    table = pa.table(
        {
            name: pa.array(values, schema.field(name).type)
            for name, values in columns.items()
        },
        schema=schema,
    )
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd", compression_level=3)
    return sink.getvalue()


def read_table_bytes(data: bytes) -> list[dict[str, Any]]:
    """Return the rows of a table written by :func:`table_bytes`."""
    rows = pq.read_table(pa.BufferReader(data)).to_pylist()
    for row in rows:
        for name in _JSON_COLUMNS:
            if name in row and isinstance(row[name], str):
                row[name] = json.loads(row[name])
    return rows
