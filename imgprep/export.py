"""Export a version as flat per-split files for tools that read plain files.

``parquet``
    ``DEST/<split>.parquet`` with the shard schema; the ``weight`` column holds each
    row's effective weight, and the training split is resampled unless asked not to.
``npz``
    ``DEST/<split>.npz`` with ``pixels``, ``labels``, ``ids`` and ``weights``,
    readable with ``np.load(..., allow_pickle=False)``.
``hf``
    ``DEST/<split>.parquet`` with an ``image`` column of PNG bytes and a ``label``
    column, and the Hugging Face ``Image`` and ``ClassLabel`` features in the schema
    metadata, so ``datasets.load_dataset("parquet", data_files=...)`` decodes them.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from imgprep.config import SPLITS, folder_path_problem
from imgprep.reader import Batch, DatasetVersion
from imgprep.shards import ShardRows, _table, npz_bytes, shard_schema

__all__ = ["export_version"]

EXPORT_BATCH = 1024


def export_version(
    dataset: DatasetVersion,
    destination: str | Path,
    fmt: str,
    *,
    normalize: bool = False,
    resampled: bool = True,
) -> dict[str, dict[str, Any]]:
    """Write each non-empty split of ``dataset`` and return {split: {path, rows}}.

    Raises ValueError when ``destination`` or one of its parents is a file.
    """
    if fmt == "hf" and normalize:
        raise ValueError(
            "the hf format stores PNG images, which cannot hold normalized floats"
        )
    folder = Path(destination)
    problem = folder_path_problem(folder)
    if problem is not None:
        raise ValueError(
            f"export destination {folder} {problem}; pass a new folder or an "
            "existing one"
        )
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        return _export_splits(dataset, folder, fmt, normalize, resampled)
    except BaseException:
        # Leave no empty folder behind when the first split already fails, for
        # example on a corrupt shard. Files already written stay for inspection.
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()  # raises OSError unless the folder is empty
        raise


def _export_splits(
    dataset: DatasetVersion,
    folder: Path,
    fmt: str,
    normalize: bool,
    resampled: bool,
) -> dict[str, dict[str, Any]]:
    written: dict[str, dict[str, Any]] = {}
    for split in SPLITS:
        if dataset.split_size(split, resampled=resampled) == 0:
            continue
        batches = dataset.batches(
            split, EXPORT_BATCH, normalize=normalize, resampled=resampled
        )
        if fmt == "parquet":
            path, rows = _export_parquet(dataset, split, batches, folder)
        elif fmt == "npz":
            path, rows = _export_npz(split, batches, folder)
        elif fmt == "hf":
            path, rows = _export_hf(dataset, split, batches, folder)
        else:
            raise ValueError(f"unknown export format {fmt!r}; use parquet, npz or hf")
        written[split] = {"path": str(path), "rows": rows}
    return written


def _export_parquet(
    dataset: DatasetVersion, split: str, batches: Any, folder: Path
) -> tuple[Path, int]:
    path = folder / f"{split}.parquet"
    writer = None
    rows_written = 0
    classes = dataset.classes
    for batch in batches:
        rows = _shard_rows(batch, classes, split)
        schema = shard_schema(classes, batch.pixels.shape[1:], batch.pixels.dtype.name)
        table = _table(rows, schema)
        if writer is None:
            writer = pq.ParquetWriter(
                path,
                schema,
                compression="zstd",
                use_dictionary=["label_name", "split", "origin"],
            )
        writer.write_table(table)
        rows_written += len(batch)
    if writer is not None:
        writer.close()
    return path, rows_written


def _shard_rows(batch: Batch, classes: list[str], split: str) -> ShardRows:
    return ShardRows(
        sample_ids=batch.sample_ids,
        labels=batch.labels.astype(np.int32),
        label_names=[classes[int(i)] for i in batch.labels],
        splits=[split] * len(batch),
        pixels=batch.pixels,
        source_paths=[None] * len(batch),
        origins=batch.origins,
        weights=batch.weights,
    )


def _export_npz(split: str, batches: Any, folder: Path) -> tuple[Path, int]:
    parts = list(batches)
    pixels = np.concatenate([b.pixels for b in parts])
    arrays = {
        "pixels": pixels,
        "labels": np.concatenate([b.labels for b in parts]).astype(np.int64),
        "ids": np.array([i for b in parts for i in b.sample_ids], dtype="<U64"),
        "weights": np.concatenate([b.weights for b in parts]).astype(np.float32),
        "origins": np.array([o for b in parts for o in b.origins]),
    }
    path = folder / f"{split}.npz"
    path.write_bytes(npz_bytes(arrays))
    return path, len(arrays["labels"])


def _png(pixels: np.ndarray) -> bytes:
    if pixels.dtype == np.uint16:
        image = Image.fromarray(np.ascontiguousarray(pixels[..., 0]).astype("<u2"))
        if pixels.shape[-1] != 1:
            raise ValueError(
                "the hf export supports 16-bit images with one channel only"
            )
    elif pixels.shape[-1] == 1:
        image = Image.fromarray(np.ascontiguousarray(pixels[..., 0]))
    else:
        image = Image.fromarray(np.ascontiguousarray(pixels))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _export_hf(
    dataset: DatasetVersion, split: str, batches: Any, folder: Path
) -> tuple[Path, int]:
    features = {
        "image": {"_type": "Image"},
        "label": {"_type": "ClassLabel", "names": dataset.classes},
        "sample_id": {"dtype": "string", "_type": "Value"},
        "weight": {"dtype": "float32", "_type": "Value"},
    }
    schema = pa.schema(
        [
            pa.field(
                "image",
                pa.struct(
                    [pa.field("bytes", pa.binary()), pa.field("path", pa.string())]
                ),
            ),
            pa.field("label", pa.int64()),
            pa.field("sample_id", pa.string()),
            pa.field("weight", pa.float32()),
        ],
        metadata={
            b"huggingface": json.dumps({"info": {"features": features}}).encode()
        },
    )
    path = folder / f"{split}.parquet"
    rows_written = 0
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        for batch in batches:
            images = [
                {"bytes": _png(pixels), "path": f"{sample_id}.png"}
                for pixels, sample_id in zip(
                    batch.pixels, batch.sample_ids, strict=True
                )
            ]
            table = pa.table(
                {
                    "image": pa.array(images, schema.field("image").type),
                    "label": pa.array(batch.labels.astype(np.int64)),
                    "sample_id": pa.array(batch.sample_ids, pa.string()),
                    "weight": pa.array(batch.weights.astype(np.float32)),
                },
                schema=schema,
            )
            writer.write_table(table)
            rows_written += len(batch)
    return path, rows_written
