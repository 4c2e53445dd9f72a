"""Shard files: one explicit schema, Parquet or .npz, pixels stored raw.

Every Parquet shard of a version has the schema of :func:`shard_schema`. Pixels are
one binary value per image (C-order ``height x width x channels`` bytes); their
shape, dtype and the class names are in the schema metadata under ``imgprep``. The
pixel column is zstd-compressed without dictionary encoding or statistics, and the
row-group size keeps about :data:`ROW_GROUP_BYTES` of pixels per group. A
list-of-uint8 pixel column writes several times slower and comes out larger than raw.

An ``.npz`` shard holds the arrays ``pixels`` [N,H,W,C], ``labels``, ``ids``,
``weights`` and the other columns as fixed-width arrays, so ``np.load(...,
allow_pickle=False)`` reads it. Its zip entries carry a fixed timestamp, so the same
rows give the same bytes.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from imgprep.errors import CorruptObjectError, SchemaMismatchError

__all__ = [
    "COLUMNS",
    "ROW_GROUP_BYTES",
    "ShardRows",
    "check_pixel_layout",
    "check_schema",
    "npz_bytes",
    "pixels_from_column",
    "read_shard",
    "schema_description",
    "shard_schema",
    "write_shard",
]

ROW_GROUP_BYTES = 32 * 1024 * 1024
SCHEMA_VERSION = 1
COLUMNS = (
    "sample_id",
    "label",
    "label_name",
    "split",
    "origin",
    "parents",
    "coefficient",
    "weight",
    "height",
    "width",
    "channels",
    "source_path",
    "pixels",
)
_FIXED_FIELDS = [
    pa.field("sample_id", pa.string(), nullable=False),
    pa.field("label", pa.int32(), nullable=False),
    pa.field("label_name", pa.string(), nullable=False),
    pa.field("split", pa.string(), nullable=False),
    pa.field("origin", pa.string(), nullable=False),
    pa.field("parents", pa.list_(pa.field("element", pa.string())), nullable=False),
    pa.field("coefficient", pa.float64(), nullable=True),
    pa.field("weight", pa.float32(), nullable=False),
    pa.field("height", pa.int32(), nullable=False),
    pa.field("width", pa.int32(), nullable=False),
    pa.field("channels", pa.int32(), nullable=False),
    pa.field("source_path", pa.string(), nullable=True),
    pa.field("pixels", pa.binary(), nullable=False),
]


@dataclass
class ShardRows:
    """Rows of one shard, column by column.

    ``pixels`` has shape (N, height, width, channels). ``parents`` and
    ``coefficient`` describe synthetic rows: the row is ``a + coefficient * (b - a)``
    of its two parents. Original rows have no parents and no coefficient.
    """

    sample_ids: list[str]
    labels: np.ndarray
    label_names: list[str]
    splits: list[str]
    pixels: np.ndarray
    source_paths: list[str | None]
    origins: list[str] | None = None
    parents: list[list[str]] | None = None
    coefficients: np.ndarray | None = None
    weights: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.sample_ids)
        if self.pixels.ndim != 4 or self.pixels.shape[0] != n:
            raise ValueError(
                f"pixels must have shape (N, H, W, C) with N={n}, got {self.pixels.shape}"
            )
        if self.origins is None:
            self.origins = ["original"] * n
        if self.parents is None:
            self.parents = [[] for _ in range(n)]
        if self.coefficients is None:
            self.coefficients = np.full(n, np.nan)
        if self.weights is None:
            self.weights = np.ones(n, dtype=np.float32)
        for name in (
            "labels",
            "label_names",
            "splits",
            "source_paths",
            "origins",
            "parents",
            "coefficients",
            "weights",
        ):
            if len(getattr(self, name)) != n:
                raise ValueError(
                    f"column {name} has {len(getattr(self, name))} rows, expected {n}"
                )

    def __len__(self) -> int:
        return len(self.sample_ids)

    def take(self, indices: Sequence[int] | np.ndarray) -> ShardRows:
        """Return the rows at ``indices``, in that order."""
        idx = np.asarray(indices, dtype=np.int64)
        pick = idx.tolist()
        return ShardRows(
            sample_ids=[self.sample_ids[i] for i in pick],
            labels=np.asarray(self.labels)[idx],
            label_names=[self.label_names[i] for i in pick],
            splits=[self.splits[i] for i in pick],
            pixels=self.pixels[idx],
            source_paths=[self.source_paths[i] for i in pick],
            origins=[self.origins[i] for i in pick],
            parents=[self.parents[i] for i in pick],
            coefficients=np.asarray(self.coefficients)[idx],
            weights=np.asarray(self.weights)[idx],
        )


def shard_schema(
    class_names: Sequence[str], shape: Sequence[int], dtype: str
) -> pa.Schema:
    """Return the Arrow schema of every pixel shard of a version."""
    metadata = {
        "schema_version": SCHEMA_VERSION,
        "pixel_shape": [int(v) for v in shape],
        "pixel_dtype": str(np.dtype(dtype)),
        "pixel_layout": "HWC",
        "class_names": list(class_names),
    }
    return pa.schema(
        _FIXED_FIELDS, metadata={b"imgprep": json.dumps(metadata).encode("utf-8")}
    )


def schema_metadata(schema: pa.Schema, path: str | None = None) -> dict[str, Any]:
    """Return the ``imgprep`` metadata of a shard schema."""
    raw = (schema.metadata or {}).get(b"imgprep")
    if raw is None:
        raise SchemaMismatchError(
            f"shard {path or ''} has no imgprep schema metadata, so its pixel shape "
            "and dtype are unknown",
            path,
            column="",
        )
    try:
        return json.loads(raw)
    except json.JSONDecodeError as error:
        raise SchemaMismatchError(
            f"shard {path or ''} has invalid imgprep schema metadata: {error}",
            path,
            column="",
        ) from None


def schema_description(schema: pa.Schema) -> dict[str, str]:
    """Return column name to Arrow type text, the form the manifest records."""
    return {field_.name: str(field_.type) for field_ in schema}


def check_schema(
    actual: pa.Schema, expected: dict[str, str], path: str | None = None
) -> None:
    """Raise SchemaMismatchError naming the first column whose type differs.

    ``expected`` is the manifest's column-to-type mapping from
    :func:`schema_description`.
    """
    actual_types = schema_description(actual)
    for name, type_text in expected.items():
        if name not in actual_types:
            raise SchemaMismatchError(
                f"shard {path or ''} has no column {name!r} that the manifest lists",
                path,
                name,
            )
        if actual_types[name] != type_text:
            raise SchemaMismatchError(
                f"shard {path or ''} column {name!r} has type {actual_types[name]} but "
                f"the manifest records {type_text}; the shard does not belong to this "
                "version's schema",
                path,
                name,
            )
    extra = sorted(set(actual_types) - set(expected))
    if extra:
        raise SchemaMismatchError(
            f"shard {path or ''} has columns the manifest does not list: {extra}",
            path,
            extra[0],
        )


def check_pixel_layout(
    shape: Sequence[int],
    dtype: str,
    expected: Mapping[str, Any],
    path: str | None = None,
) -> None:
    """Raise SchemaMismatchError unless a shard's pixels match the manifest's.

    ``expected`` is the manifest's ``pixel`` entry, with ``shape`` and ``dtype``.
    Image settings such as the output size or colour mode change the pixel layout,
    not the Arrow schema, so a shard written under other settings passes
    :func:`check_schema` and is caught here.
    """
    expected_shape = [int(v) for v in expected["shape"]]
    found_shape = [int(v) for v in shape]
    if found_shape != expected_shape:
        raise SchemaMismatchError(
            f"shard {path or ''} contains pixels of shape {found_shape} but the manifest "
            f"records {expected_shape}; the shard does not belong to this version",
            path,
            "pixels",
        )
    if str(dtype) != str(expected["dtype"]):
        raise SchemaMismatchError(
            f"shard {path or ''} contains {dtype} pixels but the manifest records "
            f"{expected['dtype']}; the shard does not belong to this version",
            path,
            "pixels",
        )


def _binary_array(pixels: np.ndarray) -> pa.Array:
    """Wrap (N, ...) pixels as an Arrow binary array without copying per row."""
    n = pixels.shape[0]
    flat = np.ascontiguousarray(pixels).reshape(n, -1).view(np.uint8)
    item = flat.shape[1]
    if n * item >= 2**31:
        raise ValueError(
            f"{n} images of {item} bytes exceed 2 GiB in one shard; lower "
            "output.rows_per_shard"
        )
    offsets = np.arange(0, (n + 1) * item, item, dtype=np.int32)
    return pa.Array.from_buffers(
        pa.binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(flat)]
    )


def _table(rows: ShardRows, schema: pa.Schema) -> pa.Table:
    n = len(rows)
    height, width, channels = rows.pixels.shape[1:]
    coefficients = np.asarray(rows.coefficients, dtype=np.float64)
    arrays = [
        pa.array(rows.sample_ids, pa.string()),
        pa.array(np.asarray(rows.labels, dtype=np.int32)),
        pa.array(rows.label_names, pa.string()),
        pa.array(rows.splits, pa.string()),
        pa.array(rows.origins, pa.string()),
        pa.array(rows.parents, _FIXED_FIELDS[5].type),
        pa.array(coefficients, pa.float64(), mask=np.isnan(coefficients)),
        pa.array(np.asarray(rows.weights, dtype=np.float32)),
        pa.array(np.full(n, height, dtype=np.int32)),
        pa.array(np.full(n, width, dtype=np.int32)),
        pa.array(np.full(n, channels, dtype=np.int32)),
        pa.array(rows.source_paths, pa.string()),
        _binary_array(rows.pixels),
    ]
    return pa.Table.from_arrays(arrays, schema=schema)


def write_shard(
    rows: ShardRows,
    class_names: Sequence[str],
    fmt: str,
    compression_level: int = 3,
) -> bytes:
    """Serialize rows as a Parquet or .npz shard and return the bytes."""
    if fmt == "parquet":
        schema = shard_schema(
            class_names, rows.pixels.shape[1:], rows.pixels.dtype.name
        )
        table = _table(rows, schema)
        item_bytes = max(1, int(np.prod(rows.pixels.shape[1:])) * rows.pixels.itemsize)
        row_group = max(1, min(len(rows), ROW_GROUP_BYTES // item_bytes))
        sink = io.BytesIO()
        pq.write_table(
            table,
            sink,
            row_group_size=row_group,
            compression="zstd",
            compression_level=compression_level,
            use_dictionary=[
                name for name in COLUMNS if name not in ("pixels", "sample_id")
            ],
            write_statistics=[
                name for name in COLUMNS if name not in ("pixels", "parents")
            ],
        )
        return sink.getvalue()
    if fmt == "npz":
        return _write_npz(rows)
    raise ValueError(f"unknown shard format {fmt!r}; use parquet or npz")


def _fixed_width(values: Sequence[str | None]) -> np.ndarray:
    return np.array([value or "" for value in values], dtype=np.str_)


def _write_npz(rows: ShardRows) -> bytes:
    n = len(rows)
    parents = np.full((n, 2), "", dtype="<U64")
    for i, pair in enumerate(rows.parents):
        for j, parent in enumerate(pair[:2]):
            parents[i, j] = parent
    arrays = {
        "pixels": np.ascontiguousarray(rows.pixels),
        "labels": np.asarray(rows.labels, dtype=np.int64),
        "ids": np.array(rows.sample_ids, dtype="<U64") if n else np.zeros(0, "<U64"),
        "weights": np.asarray(rows.weights, dtype=np.float32),
        "label_names": _fixed_width(rows.label_names),
        "splits": _fixed_width(rows.splits),
        "origins": _fixed_width(rows.origins),
        "parents": parents,
        "coefficients": np.asarray(rows.coefficients, dtype=np.float64),
        "source_paths": _fixed_width(rows.source_paths),
    }
    return npz_bytes(arrays)


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """Return an ``.npz`` archive of ``arrays`` whose bytes depend only on the arrays.

    ``np.savez`` stamps each zip entry with the current time; this writer uses a
    fixed timestamp so content addressing sees equal arrays as equal objects.
    """
    sink = io.BytesIO()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.asarray(array), allow_pickle=False)
            archive.writestr(info, buffer.getvalue(), compresslevel=6)
    return sink.getvalue()


def pixels_from_column(
    column: pa.ChunkedArray | pa.Array,
    shape: Sequence[int] | None = None,
    dtype: str | np.dtype | None = None,
) -> np.ndarray:
    """Return an image column as one (N, *shape) numpy array.

    Handles one binary value per image (binary, large_binary, fixed_size_binary),
    list, large_list and fixed_size_list columns, and Arrow's fixed_shape_tensor
    extension type, across any number of chunks (row groups). ``shape`` and ``dtype``
    come from the schema metadata when the column type does not carry them.
    """
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    column_type = column.type
    if isinstance(column_type, pa.FixedShapeTensorType):
        tensor_shape = list(column_type.shape)
        parts = [chunk.to_numpy_ndarray() for chunk in chunks]
        if not parts:
            return np.zeros(
                [0, *tensor_shape], dtype=column_type.value_type.to_pandas_dtype()
            )
        return np.concatenate(parts, axis=0)
    if shape is None:
        raise SchemaMismatchError(
            f"image column of type {column_type} does not carry its shape; the shape "
            "must come from the schema metadata or the manifest",
            column="pixels",
        )
    shape = [int(v) for v in shape]
    np_dtype = np.dtype(dtype) if dtype is not None else None
    item_count = int(np.prod(shape))
    parts = []
    for chunk in chunks:
        if chunk.null_count:
            raise CorruptObjectError("image column has null values", None)
        n = len(chunk)
        if pa.types.is_binary(chunk.type) or pa.types.is_large_binary(chunk.type):
            offsets_type = np.int32 if pa.types.is_binary(chunk.type) else np.int64
            buffers = chunk.buffers()
            offsets = np.frombuffer(buffers[1], dtype=offsets_type)[
                chunk.offset : chunk.offset + n + 1
            ]
            data = np.frombuffer(buffers[2], dtype=np.uint8)
            if np_dtype is None:
                raise SchemaMismatchError(
                    "binary image column needs a dtype", column="pixels"
                )
            item_bytes = item_count * np_dtype.itemsize
            if n and not np.all(np.diff(offsets) == item_bytes):
                raise CorruptObjectError(
                    f"image values are not all {item_bytes} bytes, as shape {shape} and "
                    f"dtype {np_dtype} require",
                    None,
                )
            start = int(offsets[0]) if n else 0
            raw = data[start : start + n * item_bytes]
            parts.append(raw.view(np_dtype).reshape(n, *shape))
        elif pa.types.is_fixed_size_binary(chunk.type):
            data = np.frombuffer(chunk.buffers()[1], dtype=np.uint8)
            width = chunk.type.byte_width
            raw = data[chunk.offset * width : (chunk.offset + n) * width]
            if np_dtype is None:
                raise SchemaMismatchError(
                    "binary image column needs a dtype", column="pixels"
                )
            parts.append(raw.view(np_dtype).reshape(n, *shape))
        elif (
            pa.types.is_list(chunk.type)
            or pa.types.is_large_list(chunk.type)
            or pa.types.is_fixed_size_list(chunk.type)
        ):
            values = chunk.flatten().to_numpy(zero_copy_only=False)
            if values.size != n * item_count:
                raise CorruptObjectError(
                    f"image lists hold {values.size} values for {n} images of shape "
                    f"{shape}",
                    None,
                )
            target = np_dtype or values.dtype
            parts.append(values.astype(target, copy=False).reshape(n, *shape))
        else:
            raise SchemaMismatchError(
                f"image column type {chunk.type} is not supported; expected binary, "
                "list or fixed_shape_tensor",
                column="pixels",
            )
    if not parts:
        return np.zeros([0, *shape], dtype=np_dtype or np.uint8)
    return np.concatenate(parts, axis=0) if len(parts) > 1 else parts[0]


@dataclass
class ShardData:
    """A decoded shard: its rows and the class names it was written with."""

    rows: ShardRows
    class_names: list[str]


def read_shard(
    data: bytes,
    fmt: str,
    expected_schema: dict[str, str] | None = None,
    path: str | None = None,
    expected_pixel: Mapping[str, Any] | None = None,
) -> ShardData:
    """Parse a shard's bytes and check them against the manifest when asked.

    ``expected_schema`` is the manifest's ``shard_schema`` and ``expected_pixel``
    its ``pixel`` entry. Either is skipped when None.
    """
    if fmt == "parquet":
        try:
            table = pq.read_table(pa.BufferReader(data))
        except (pa.ArrowInvalid, OSError) as error:
            raise CorruptObjectError(
                f"shard {path} is not valid Parquet: {error}", path
            ) from None
        if expected_schema is not None:
            check_schema(table.schema, expected_schema, path)
        meta = schema_metadata(table.schema, path)
        shape = meta["pixel_shape"]
        if expected_pixel is not None:
            check_pixel_layout(shape, meta["pixel_dtype"], expected_pixel, path)
        pixels = pixels_from_column(table.column("pixels"), shape, meta["pixel_dtype"])
        coefficients = table.column("coefficient").to_numpy(zero_copy_only=False)
        rows = ShardRows(
            sample_ids=table.column("sample_id").to_pylist(),
            labels=table.column("label").to_numpy(),
            label_names=table.column("label_name").to_pylist(),
            splits=table.column("split").to_pylist(),
            pixels=pixels,
            source_paths=table.column("source_path").to_pylist(),
            origins=table.column("origin").to_pylist(),
            parents=table.column("parents").to_pylist(),
            coefficients=np.asarray(coefficients, dtype=np.float64),
            weights=table.column("weight").to_numpy(),
        )
        return ShardData(rows=rows, class_names=list(meta["class_names"]))
    if fmt == "npz":
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as archive:
                arrays = {name: archive[name] for name in archive.files}
        except (ValueError, OSError, zipfile.BadZipFile) as error:
            raise CorruptObjectError(
                f"shard {path} is not a valid .npz: {error}", path
            ) from None
        if expected_pixel is not None:
            pixels = arrays["pixels"]
            check_pixel_layout(
                pixels.shape[1:], str(pixels.dtype), expected_pixel, path
            )
        parents = [[p for p in pair if p] for pair in arrays["parents"].tolist()]
        rows = ShardRows(
            sample_ids=arrays["ids"].tolist(),
            labels=arrays["labels"],
            label_names=arrays["label_names"].tolist(),
            splits=arrays["splits"].tolist(),
            pixels=arrays["pixels"],
            source_paths=[p or None for p in arrays["source_paths"].tolist()],
            origins=arrays["origins"].tolist(),
            parents=parents,
            coefficients=arrays["coefficients"],
            weights=arrays["weights"],
        )
        return ShardData(rows=rows, class_names=[])
    raise ValueError(f"unknown shard format {fmt!r}")
