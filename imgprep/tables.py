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
    "ColumnRows",
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


class ColumnRows:
    """Rows of a table kept as one list per column.

    A list of dicts costs about 1 KB per row in CPython; appending to column lists
    keeps only the values, which matters for tables with a row per sample.
    """

    def __init__(self, schema: pa.Schema) -> None:
        self.schema = schema
        self.columns: dict[str, list[Any]] = {name: [] for name in schema.names}
        self._length = 0

    def append(self, row: dict[str, Any]) -> None:
        """Add one row; keys the schema lacks are rejected, missing keys are null."""
        unknown = set(row) - set(self.columns)
        if unknown:
            raise KeyError(f"columns {sorted(unknown)} are not in the table's schema")
        for name, values in self.columns.items():
            values.append(row.get(name))
        self._length += 1

    def __len__(self) -> int:
        return self._length

    def count(self, column: str, value: Any) -> int:
        """Return how many rows have ``value`` in ``column``."""
        return sum(1 for item in self.columns[column] if item == value)


def table_bytes(
    rows: Sequence[dict[str, Any]] | ColumnRows, schema: pa.Schema
) -> bytes:
    """Serialize rows as zstd Parquet with ``schema``; missing keys are null."""
    if isinstance(rows, ColumnRows):
        columns = dict(rows.columns)
    else:
        columns = {name: [row.get(name) for row in rows] for name in schema.names}
    for name in _JSON_COLUMNS:
        if name in columns:
            columns[name] = [
                json.dumps(value)
                if value is not None and not isinstance(value, str)
                else value
                for value in columns[name]
            ]
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


def read_table_bytes(
    data: bytes, columns: Sequence[str] | None = None, where: Any = None
) -> list[dict[str, Any]]:
    """Return the rows of a table written by :func:`table_bytes`.

    ``columns`` selects columns and ``where`` is a pyarrow compute expression that
    selects rows, both applied before any Python object is made.
    """
    table = pq.read_table(
        pa.BufferReader(data),
        columns=list(columns) if columns else None,
        filters=where,
    )
    rows = table.to_pylist()
    for row in rows:
        for name in _JSON_COLUMNS:
            if name in row and isinstance(row[name], str):
                row[name] = json.loads(row[name])
    return rows
