"""Measure what exact statistics cost next to decoding, per image, in one process.

For a sample of the corpus, this times ``imgprep.decode.decode_image`` (which
includes Pillow's histogram of the final image), then the histogram step alone on
the same decoded images, then the per-chunk sum of the counts. It prints one JSON
line with the CPU milliseconds per image of each and the share of statistics in
decode CPU.

Example::

    .venv/bin/python benchmarks/stats_cost.py --corpus benchmarks/corpus/n5000
"""

from __future__ import annotations

import argparse
import array
import json
import random
import time
from pathlib import Path

import numpy as np
from PIL import Image

from imgprep.config import ImageSettings
from imgprep.decode import decode_image


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, required=True, help="corpus folder")
    parser.add_argument("--count", type=int, default=2000, help="images to sample")
    parser.add_argument("--size", type=int, default=64, help="output side in pixels")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    args = parser.parse_args()

    files = sorted(p for p in args.corpus.rglob("*") if p.is_file())
    random.Random(args.seed).shuffle(files)
    blobs = [path.read_bytes() for path in files[: args.count]]
    settings = ImageSettings(height=args.size, width=args.size)

    started = time.process_time()
    decoded = [decode_image(blob, settings) for blob in blobs]
    decode_s = time.process_time() - started

    images = [Image.fromarray(np.ascontiguousarray(d.pixels)) for d in decoded]
    started = time.process_time()
    counts = [
        np.frombuffer(array.array("q", image.histogram()), dtype=np.int64)
        for image in images
    ]
    histogram_s = time.process_time() - started

    started = time.process_time()
    np.sum(np.stack(counts), axis=0)
    sum_s = time.process_time() - started

    per_image = 1000.0 / len(blobs)
    statistics_s = histogram_s + sum_s
    print(
        json.dumps(
            {
                "images": len(blobs),
                "decode_ms_per_image": decode_s * per_image,
                "histogram_ms_per_image": histogram_s * per_image,
                "sum_ms_per_image": sum_s * per_image,
                "statistics_share_of_decode_cpu": statistics_s / decode_s,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
