"""Compare reduced-size JPEG decoding in Pillow (draft) and simplejpeg in one process.

The script reads up to ``--count`` JPEG files of a corpus into memory, evenly spaced
over the sorted file list, and times each decoder over all of them in one process.
Rounds alternate the decoder order so that drift on a shared machine affects both,
and the result is the median over rounds of the mean milliseconds per image.

Decoders, each returning an RGB numpy array:

- ``pillow_draft``: ``Image.open``, ``draft("RGB", (size, size))``, ``convert("RGB")``.
- ``simplejpeg``: ``decode_jpeg(data, "RGB", min_height=size, min_width=size)``
  with accurate DCT and fancy upsampling, as libjpeg-turbo does by default.
- ``simplejpeg_fast``: the same with ``fastdct=True`` and ``fastupsample=True``.
- ``pillow_full`` (with ``--full``): full-size Pillow decode, for scale.

imgprep decodes plain RGB and grayscale JPEG files with simplejpeg because of this
comparison, so the project's virtual environment has everything the script needs.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import simplejpeg
from PIL import Image

Decoder = Callable[[bytes, int], np.ndarray]


def decode_pillow_draft(data: bytes, size: int) -> np.ndarray:
    """Decode with Pillow at the JPEG scale that draft picks for ``size``."""
    image = Image.open(io.BytesIO(data))
    image.draft("RGB", (size, size))
    return np.asarray(image.convert("RGB"))


def decode_pillow_full(data: bytes, size: int) -> np.ndarray:
    """Decode with Pillow at full size; ``size`` is ignored."""
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def decode_simplejpeg(data: bytes, size: int) -> np.ndarray:
    """Decode with simplejpeg at the smallest scale keeping both sides >= size."""
    return simplejpeg.decode_jpeg(
        data,
        colorspace="RGB",
        fastdct=False,
        fastupsample=False,
        min_height=size,
        min_width=size,
    )


def decode_simplejpeg_fast(data: bytes, size: int) -> np.ndarray:
    """Decode like decode_simplejpeg with the fast DCT and fast upsampling."""
    return simplejpeg.decode_jpeg(
        data,
        colorspace="RGB",
        fastdct=True,
        fastupsample=True,
        min_height=size,
        min_width=size,
    )


def load_jpegs(corpus: Path, count: int) -> list[bytes]:
    """Read up to ``count`` JPEG files, evenly spaced over the sorted corpus list."""
    paths = sorted([*corpus.glob("*/*.jpg"), *corpus.glob("*/*.jpeg")])
    if not paths:
        raise SystemExit(f"error: no .jpg or .jpeg files found in {corpus}/*/")
    step = max(1, len(paths) // count)
    return [path.read_bytes() for path in paths[::step][:count]]


def time_decoder(decoder: Decoder, files: Sequence[bytes], size: int) -> float:
    """Decode every file once and return the mean milliseconds per image."""
    started = time.perf_counter()
    for data in files:
        decoder(data, size)
    return (time.perf_counter() - started) * 1000 / len(files)


def compare_outputs(files: Sequence[bytes], size: int) -> dict[str, float]:
    """Check that Pillow draft and simplejpeg give the same shapes, and compare pixels.

    Returns the share of files with equal shapes and the mean absolute pixel
    difference over those files, in 8-bit levels.
    """
    equal_shapes = 0
    differences = []
    for data in files:
        pillow = decode_pillow_draft(data, size)
        reduced = decode_simplejpeg(data, size)
        if pillow.shape == reduced.shape:
            equal_shapes += 1
            diff = np.abs(pillow.astype(np.int16) - reduced.astype(np.int16))
            differences.append(float(diff.mean()))
    return {
        "equal_shape_fraction": equal_shapes / len(files),
        "mean_abs_difference": statistics.fmean(differences) if differences else 0.0,
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        description=(
            "Time Pillow draft decoding against simplejpeg reduced decoding on the "
            "JPEG files of a corpus, in one process."
        )
    )
    parser.add_argument(
        "--corpus",
        type=Path,
        required=True,
        help="corpus directory with one folder of images per label",
    )
    parser.add_argument(
        "--count",
        type=int,
        default=1000,
        help="number of JPEG files to decode per decoder and round (default: 1000)",
    )
    parser.add_argument(
        "--size",
        type=int,
        default=64,
        help="minimum decoded width and height in pixels (default: 64)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="timed rounds per decoder; the median is reported (default: 3)",
    )
    parser.add_argument(
        "--full",
        action="store_true",
        help="also time a full-size Pillow decode, for scale",
    )

    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error(f"--count must be at least 1, got {args.count}")
    if args.size < 1:
        parser.error(f"--size must be at least 1, got {args.size}")
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the rounds and print one JSON line with the medians."""
    args = parse_args(argv)
    files = load_jpegs(args.corpus, args.count)
    decoders: dict[str, Decoder] = {
        "pillow_draft": decode_pillow_draft,
        "simplejpeg": decode_simplejpeg,
        "simplejpeg_fast": decode_simplejpeg_fast,
    }
    if args.full:
        decoders["pillow_full"] = decode_pillow_full

    # An untimed pass over 50 files per decoder loads code and warms the allocator.
    for decoder in decoders.values():
        time_decoder(decoder, files[:50], args.size)

    timings: dict[str, list[float]] = {name: [] for name in decoders}
    names = list(decoders)
    for round_number in range(args.rounds):
        order = names if round_number % 2 == 0 else names[::-1]
        for name in order:
            timings[name].append(time_decoder(decoders[name], files, args.size))

    medians = {name: statistics.median(values) for name, values in timings.items()}
    result = {
        "files": len(files),
        "size": args.size,
        "rounds": args.rounds,
        "ms_per_image_median": {
            name: round(value, 4) for name, value in medians.items()
        },
        "ms_per_image_rounds": {
            name: [round(value, 4) for value in values]
            for name, values in timings.items()
        },
        "speedup_simplejpeg_vs_pillow_draft": round(
            medians["pillow_draft"] / medians["simplejpeg"], 3
        ),
        "simplejpeg_version": simplejpeg.__version__,
        "pillow_version": Image.__version__,
        **compare_outputs(files, args.size),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
