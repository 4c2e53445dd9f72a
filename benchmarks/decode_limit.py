"""Run the least work a dataset preparation job needs, as a reference for imgprep.

For every image under ``CORPUS/<label>/`` the workers read the file bytes and open
the image with Pillow. JPEG files get a reduced-size decode (``draft``). Every image
is converted to RGB and resized to ``SIZE``x``SIZE`` with bilinear filtering, and a
256-bin histogram per channel of the resized pixels is counted.

Each pool task covers one chunk of files and writes one zstd Parquet file
``OUT/part-NNNNN.parquet`` with these columns:

- ``path``: file path relative to the corpus.
- ``label``: name of the folder that contains the file.
- ``pixels``: SIZE*SIZE*3 bytes of row-major RGB.
- ``histogram``: 768 little-endian uint32 counts, R then G then B.

``pixels`` and ``histogram`` are written without dictionary encoding.

The parent process imports only the standard library, and the workers import numpy,
Pillow and pyarrow after the fork, so the parent's memory stays small.

``--decoder simplejpeg`` decodes JPEG files with ``simplejpeg.decode_jpeg`` at the
smallest libjpeg-turbo scale that keeps both sides at least SIZE. It needs the
``simplejpeg`` package, which the imgprep project does not install.

Output: one JSON line with images, wall seconds, CPU seconds of this process and its
workers, images per second and Parquet bytes written.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing
import os
import resource
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})
PART_PATTERN = "part-*.parquet"

# Worker state, set by init_worker after the fork.
_size = 64
_decoder = "pillow"
_out_dir = Path()


def list_corpus(corpus: Path) -> list[tuple[str, str]]:
    """Return sorted (relative path, label) pairs for images in label folders."""
    entries = []
    for label_dir in sorted(corpus.iterdir()):
        if not label_dir.is_dir():
            continue
        for entry in sorted(os.scandir(label_dir), key=lambda e: e.name):
            suffix = os.path.splitext(entry.name)[1].lower()
            if entry.is_file() and suffix in IMAGE_SUFFIXES:
                entries.append((f"{label_dir.name}/{entry.name}", label_dir.name))
    return entries


def init_worker(out_dir: str, size: int, decoder: str) -> None:
    """Import the image and Parquet libraries and store the job settings."""
    global _size, _decoder, _out_dir
    import numpy  # noqa: F401
    import pyarrow  # noqa: F401
    import pyarrow.parquet  # noqa: F401
    from PIL import Image  # noqa: F401

    if decoder == "simplejpeg":
        import simplejpeg  # noqa: F401

    _size = size
    _decoder = decoder
    _out_dir = Path(out_dir)


def decode_pillow(data: bytes, size: int) -> Any:
    """Decode with Pillow, using a reduced JPEG decode, and return an RGB image."""
    import io

    from PIL import Image

    image = Image.open(io.BytesIO(data))
    if image.format == "JPEG":
        # Lets libjpeg-turbo decode at scale 1/2, 1/4 or 1/8, keeping both sides at
        # least ``size`` pixels.
        image.draft("RGB", (size, size))
    return image.convert("RGB")


def decode_simplejpeg(data: bytes, size: int) -> Any:
    """Decode JPEG files with simplejpeg at reduced scale and others with Pillow."""
    import simplejpeg
    from PIL import Image

    if not simplejpeg.is_jpeg(data):
        return decode_pillow(data, size)
    array = simplejpeg.decode_jpeg(
        data,
        colorspace="RGB",
        fastdct=False,
        fastupsample=False,
        min_height=size,
        min_width=size,
    )
    return Image.fromarray(array, mode="RGB")


def binary_array(values: Any, value_type: Any) -> Any:
    """Build a pyarrow binary or string array from a list of bytes or a 2-D array.

    ``pyarrow.Array.from_buffers`` skips the conversion from Python objects that
    ``pyarrow.array`` does. The first such conversion in a process initializes the
    Arrow compute function registry, which adds about 50 MiB of RSS to each worker
    (measured with pyarrow 26.0.1 on Linux x86-64 by converting a one-item list).
    """
    import numpy as np
    import pyarrow as pa

    if isinstance(values, np.ndarray):
        count, width = values.shape
        offsets = np.arange(count + 1, dtype=np.int32) * width
        data = pa.py_buffer(np.ascontiguousarray(values))
    else:
        count = len(values)
        offsets = np.zeros(count + 1, dtype=np.int32)
        np.cumsum([len(value) for value in values], out=offsets[1:])
        data = pa.py_buffer(b"".join(values))
    return pa.Array.from_buffers(value_type, count, [None, pa.py_buffer(offsets), data])


def process_chunk(task: tuple[int, str, list[tuple[str, str]]]) -> tuple[int, int]:
    """Decode, resize and histogram one chunk of files and write its Parquet part.

    Returns the number of images and the size of the Parquet file in bytes.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    chunk_index, corpus, entries = task
    decode = decode_simplejpeg if _decoder == "simplejpeg" else decode_pillow
    # Offsets that move the G and B values into bins 256..511 and 512..767, so one
    # bincount call counts all three channels.
    channel_offsets = np.array([0, 256, 512], dtype=np.intp)

    pixels = np.empty((len(entries), _size * _size * 3), dtype=np.uint8)
    histograms = np.empty((len(entries), 768), dtype="<u4")
    for row, (relative_path, _label) in enumerate(entries):
        with open(os.path.join(corpus, relative_path), "rb") as file:
            data = file.read()
        image = decode(data, _size)
        image = image.resize((_size, _size), Image.Resampling.BILINEAR)
        array = np.asarray(image)
        pixels[row] = array.reshape(-1)
        histograms[row] = np.bincount((array + channel_offsets).ravel(), minlength=768)

    table = pa.Table.from_arrays(
        [
            binary_array([path.encode() for path, _ in entries], pa.string()),
            binary_array([label.encode() for _, label in entries], pa.string()),
            binary_array(pixels, pa.binary()),
            binary_array(histograms.view(np.uint8), pa.binary()),
        ],
        names=["path", "label", "pixels", "histogram"],
    )
    part_path = _out_dir / f"part-{chunk_index:05d}.parquet"
    pq.write_table(
        table, part_path, compression="zstd", use_dictionary=["path", "label"]
    )
    return len(entries), part_path.stat().st_size


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        description=(
            "Decode, resize and histogram every image of a class-per-folder corpus "
            "and write zstd Parquet parts: the reference for the least work needed."
        )
    )
    parser.add_argument(
        "--corpus",
        type=Path,
        required=True,
        help="corpus directory with one folder of images per label",
    )
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="output directory for part-NNNNN.parquet files (created if missing)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="number of worker processes (default: 2)",
    )
    parser.add_argument(
        "--size",
        type=int,
        default=64,
        help="output width and height in pixels (default: 64)",
    )
    parser.add_argument(
        "--chunk-size",
        type=int,
        default=256,
        help="files per pool task and per Parquet part (default: 256)",
    )
    parser.add_argument(
        "--decoder",
        choices=("pillow", "simplejpeg"),
        default="pillow",
        help=(
            "JPEG decoder: Pillow with draft, or simplejpeg with reduced-scale "
            "decoding; PNG files always use Pillow (default: pillow)"
        ),
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="delete existing part-*.parquet files in --out before writing",
    )

    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers must be at least 1, got {args.workers}")
    if args.size < 1:
        parser.error(f"--size must be at least 1, got {args.size}")
    if args.chunk_size < 1:
        parser.error(f"--chunk-size must be at least 1, got {args.chunk_size}")
    # A binary column has 32-bit offsets, so the pixels of one part must stay below
    # 2 GiB.
    if args.chunk_size * args.size * args.size * 3 >= 2**31:
        parser.error(
            f"--chunk-size {args.chunk_size} at --size {args.size} needs 2 GiB or "
            "more of pixels per Parquet part; lower --chunk-size"
        )
    # A worker whose initializer raises is replaced by the pool again and again, so
    # a missing decoder package is checked here instead.
    if args.decoder == "simplejpeg" and importlib.util.find_spec("simplejpeg") is None:
        parser.error(
            "--decoder simplejpeg needs the simplejpeg package, which is not "
            f"installed for {sys.executable}; install it or use --decoder pillow"
        )
    if not args.corpus.is_dir():
        parser.error(f"corpus directory not found: {args.corpus}")
    return args


def prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Create the output directory and clear or reject existing Parquet parts."""
    out_dir.mkdir(parents=True, exist_ok=True)
    existing = sorted(out_dir.glob(PART_PATTERN))
    if existing and not overwrite:
        raise SystemExit(
            f"error: {out_dir} already contains {len(existing)} {PART_PATTERN} "
            "files; choose an empty directory or pass --overwrite"
        )
    for path in existing:
        path.unlink()


def main(argv: Sequence[str] | None = None) -> int:
    """Process the corpus and print the JSON result line to stdout."""
    args = parse_args(argv)
    started = time.perf_counter()
    prepare_out_dir(args.out, args.overwrite)

    entries = list_corpus(args.corpus)
    if not entries:
        raise SystemExit(f"error: no .jpg, .jpeg or .png files in {args.corpus}/*/")
    tasks = [
        (number, str(args.corpus), entries[offset : offset + args.chunk_size])
        for number, offset in enumerate(range(0, len(entries), args.chunk_size))
    ]

    images = 0
    output_bytes = 0
    init_args = (str(args.out), args.size, args.decoder)
    context = multiprocessing.get_context("fork")
    with context.Pool(
        args.workers, initializer=init_worker, initargs=init_args
    ) as pool:
        for count, size in pool.imap_unordered(process_chunk, tasks):
            images += count
            output_bytes += size
        pool.close()
        # join reaps the workers, so RUSAGE_CHILDREN below includes their CPU time.
        pool.join()

    wall_s = time.perf_counter() - started
    usage_self = resource.getrusage(resource.RUSAGE_SELF)
    usage_children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (
        usage_self.ru_utime
        + usage_self.ru_stime
        + usage_children.ru_utime
        + usage_children.ru_stime
    )
    result = {
        "images": images,
        "wall_s": round(wall_s, 3),
        "cpu_s": round(cpu_s, 3),
        "images_per_s": round(images / wall_s, 1),
        "output_bytes": output_bytes,
        "parts": len(tasks),
        "workers": args.workers,
        "size": args.size,
        "decoder": args.decoder,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
