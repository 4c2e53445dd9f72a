"""Write a deterministic class-per-folder image corpus for decode benchmarks.

The images are random crops of the two photographs that scikit-learn ships
(``china.jpg`` and ``flower.jpg``, 427x640). ``load_sample_images`` reads them from
the installed package, so no download happens. Each image gets a random crop, an
optional horizontal flip, a gain (contrast and brightness) and Gaussian noise. About
90 % are written as JPEG (quality 90) and 10 % as PNG, and about 2 % are grayscale.

Image ``i`` depends only on ``(seed, i)``, and its class depends only on ``i``. So
the same seed and count give byte-identical files, a larger count with the same seed
keeps the first files unchanged, and ``--start`` writes any slice ``i..j`` alone.
Byte identity holds for one set of numpy and Pillow versions, because the random
streams come from numpy and the encoders (libjpeg-turbo, zlib) from Pillow.

Layout: ``OUT/class_KK/IIIIIII.jpg`` (or ``.png``), where ``IIIIIII`` is the global
image index. Class ``class_00`` is the largest and ``class_09`` the smallest, with
sizes in geometric decay so that largest/smallest is ``--imbalance``.

Example: ``python benchmarks/make_corpus.py --count 5000 --out benchmarks/corpus/n5000``
"""

from __future__ import annotations

import argparse
import io
import json
import math
import multiprocessing
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

NUM_CLASSES = 10
# china.jpg and flower.jpg, in the sorted order load_sample_images returns them.
NUM_PHOTOS = 2
JPEG_QUALITY = 90
PNG_FRACTION = 0.10
GRAYSCALE_FRACTION = 0.02
# Output sizes span 256x256 to 500x375: the long side is 256..500 px, the short side
# is 256..375 px, and the aspect ratio stays between 1:1 and 4:3.
MIN_SIDE = 256
MAX_LONG_SIDE = 500
MAX_SHORT_SIDE = 375
MAX_ASPECT = 4 / 3
# A crop covers this fraction (per side) of the largest box of the output's aspect
# ratio that fits in the 427x640 source.
MIN_CROP_SCALE = 0.6
CONTRAST_RANGE = (0.75, 1.25)
BRIGHTNESS_RANGE = (-25.0, 25.0)  # added to 8-bit pixel values
NOISE_SIGMA_RANGE = (1.0, 6.0)  # standard deviation in 8-bit pixel values
# Images per pool task. One image takes about 9 ms of CPU (measured on 20,000
# images), so a task of 32 runs for about 0.3 s. That is short enough to balance
# the workers and long enough that the per-task overhead is small.
TASK_SIZE = 32

# Source photographs as RGB images, loaded once per worker process.
_photos: list[Image.Image] = []


@dataclass(frozen=True)
class ImageSpec:
    """Random parameters of one corpus image, all drawn from ``(seed, index)``."""

    photo: int
    width: int
    height: int
    crop_scale: float
    crop_x: float  # crop box position as a fraction of the free horizontal room
    crop_y: float  # crop box position as a fraction of the free vertical room
    flip: bool
    contrast: float
    brightness: float
    noise_sigma: float
    grayscale: bool
    png: bool


def class_weights(imbalance: float) -> np.ndarray:
    """Return class fractions in geometric decay with largest/smallest = imbalance."""
    ratios = imbalance ** (-np.arange(NUM_CLASSES) / (NUM_CLASSES - 1))
    return ratios / ratios.sum()


def assign_classes(end: int, imbalance: float) -> list[int]:
    """Return the class of each image index ``0..end-1``.

    Each index goes to the class furthest below its target count so far (ties go to
    the lower class), so every prefix of the sequence is within one image per class
    of the target fractions. The class of index ``i`` does not depend on ``end``.
    """
    weights = class_weights(imbalance)
    counts = np.zeros(NUM_CLASSES)
    classes = []
    for index in range(end):
        deficit = weights * (index + 1) - counts
        label = int(np.argmax(deficit))
        counts[label] += 1
        classes.append(label)
    return classes


def draw_spec(seed: int, index: int) -> ImageSpec:
    """Draw the parameters of image ``index`` from a generator seeded by both values.

    Every value is drawn unconditionally and in a fixed order, so changing one rule
    does not shift the random stream of the other parameters.
    """
    rng = np.random.default_rng([seed, index])
    photo = int(rng.integers(NUM_PHOTOS))
    long_side = int(rng.integers(MIN_SIDE, MAX_LONG_SIDE + 1))
    short_min = max(MIN_SIDE, math.ceil(long_side / MAX_ASPECT))
    short_max = min(long_side, MAX_SHORT_SIDE)
    short_side = int(rng.integers(short_min, short_max + 1))
    portrait = bool(rng.random() < 0.5)
    crop_scale = float(rng.uniform(MIN_CROP_SCALE, 1.0))
    crop_x = float(rng.random())
    crop_y = float(rng.random())
    flip = bool(rng.random() < 0.5)
    contrast = float(rng.uniform(*CONTRAST_RANGE))
    brightness = float(rng.uniform(*BRIGHTNESS_RANGE))
    noise_sigma = float(rng.uniform(*NOISE_SIGMA_RANGE))
    grayscale = bool(rng.random() < GRAYSCALE_FRACTION)
    png = bool(rng.random() < PNG_FRACTION)
    width, height = (short_side, long_side) if portrait else (long_side, short_side)
    return ImageSpec(
        photo=photo,
        width=width,
        height=height,
        crop_scale=crop_scale,
        crop_x=crop_x,
        crop_y=crop_y,
        flip=flip,
        contrast=contrast,
        brightness=brightness,
        noise_sigma=noise_sigma,
        grayscale=grayscale,
        png=png,
    )


def crop_box(
    spec: ImageSpec, source_size: tuple[int, int]
) -> tuple[float, float, float, float]:
    """Return the source box (left, upper, right, lower) with the output's aspect."""
    source_width, source_height = source_size
    aspect = spec.width / spec.height
    if source_width / source_height > aspect:
        box_height = source_height * spec.crop_scale
        box_width = box_height * aspect
    else:
        box_width = source_width * spec.crop_scale
        box_height = box_width / aspect
    left = (source_width - box_width) * spec.crop_x
    upper = (source_height - box_height) * spec.crop_y
    return (left, upper, left + box_width, upper + box_height)


def render(seed: int, index: int) -> tuple[bytes, ImageSpec]:
    """Render image ``index`` and return its encoded bytes and its parameters."""
    spec = draw_spec(seed, index)
    # The noise generator is separate from the parameter stream and seeded by the
    # same pair plus a constant, so noise never shifts the parameters.
    noise_rng = np.random.default_rng([seed, index, 1])

    source = _photos[spec.photo]
    box = crop_box(spec, source.size)
    image = source.resize((spec.width, spec.height), Image.Resampling.BICUBIC, box=box)
    if spec.flip:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)

    pixels = np.asarray(image, dtype=np.float32)
    pixels = (pixels - 128.0) * spec.contrast + (128.0 + spec.brightness)
    noise = noise_rng.standard_normal(pixels.shape, dtype=np.float32)
    pixels += noise * spec.noise_sigma
    np.clip(pixels, 0.0, 255.0, out=pixels)
    image = Image.fromarray(np.rint(pixels).astype(np.uint8), mode="RGB")
    if spec.grayscale:
        image = image.convert("L")

    buffer = io.BytesIO()
    if spec.png:
        image.save(buffer, format="PNG")
    else:
        image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue(), spec


def load_photos() -> None:
    """Load the scikit-learn sample photographs into this process (pool initializer).

    ``load_sample_images`` reads ``china.jpg`` and ``flower.jpg`` from the
    ``sklearn.datasets.images`` package data and makes no network request.
    """
    from sklearn.datasets import load_sample_images

    _photos.clear()
    for array in load_sample_images().images:
        _photos.append(Image.fromarray(array, mode="RGB"))


def write_images(task: tuple[str, int, list[tuple[int, int]]]) -> Counter[str]:
    """Render and write a list of (index, class) pairs.

    Returns counts of images, bytes, PNG files and grayscale images written.
    """
    out_dir, seed, items = task
    totals: Counter[str] = Counter()
    for index, label in items:
        data, spec = render(seed, index)
        extension = "png" if spec.png else "jpg"
        path = Path(out_dir) / f"class_{label:02d}" / f"{index:07d}.{extension}"
        path.write_bytes(data)
        totals["images"] += 1
        totals["bytes"] += len(data)
        totals["png"] += spec.png
        totals["grayscale"] += spec.grayscale
    return totals


def batched(items: Sequence[tuple[int, int]], size: int) -> Iterator[list]:
    """Yield consecutive lists of at most ``size`` items."""
    for offset in range(0, len(items), size):
        yield list(items[offset : offset + size])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        description=(
            "Write a deterministic class-per-folder corpus of JPEG and PNG images "
            "made from scikit-learn's sample photographs."
        )
    )
    parser.add_argument(
        "--count",
        type=int,
        required=True,
        help="number of images to write (images)",
    )
    parser.add_argument(
        "--start",
        type=int,
        default=0,
        help=(
            "global index of the first image to write; images START..START+COUNT-1 "
            "are written, identical to the same indices of a larger corpus with the "
            "same seed (default: 0)"
        ),
    )
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="output directory; class_00..class_09 folders are created inside it",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="random seed for crops, flips, gain, noise and formats (default: 0)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="number of worker processes that render and write images (default: 2)",
    )
    parser.add_argument(
        "--imbalance",
        type=float,
        default=100.0,
        help=(
            "ratio of the largest to the smallest class size; class sizes decay "
            "geometrically from class_00 to class_09 (default: 100)"
        ),
    )

    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error(f"--count must be at least 1, got {args.count}")
    if args.start < 0:
        parser.error(f"--start must be 0 or more, got {args.start}")
    if args.seed < 0:
        parser.error(f"--seed must be 0 or more, got {args.seed}")
    if args.workers < 1:
        parser.error(f"--workers must be at least 1, got {args.workers}")
    if args.imbalance < 1:
        parser.error(f"--imbalance must be at least 1, got {args.imbalance}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Write the requested images and print a JSON summary line to stdout."""
    args = parse_args(argv)
    started = time.perf_counter()

    end = args.start + args.count
    classes = assign_classes(end, args.imbalance)
    items = [(index, classes[index]) for index in range(args.start, end)]
    for label in range(NUM_CLASSES):
        (args.out / f"class_{label:02d}").mkdir(parents=True, exist_ok=True)

    tasks = [(str(args.out), args.seed, chunk) for chunk in batched(items, TASK_SIZE)]
    totals: Counter[str] = Counter()
    if args.workers == 1:
        load_photos()
        for counts in map(write_images, tasks):
            totals.update(counts)
    else:
        with multiprocessing.Pool(args.workers, initializer=load_photos) as pool:
            for counts in pool.imap_unordered(write_images, tasks):
                totals.update(counts)
            pool.close()
            pool.join()

    wall_s = time.perf_counter() - started
    class_counts = np.bincount([label for _, label in items], minlength=NUM_CLASSES)
    summary = {
        "images": totals["images"],
        "start": args.start,
        "seed": args.seed,
        "workers": args.workers,
        "wall_s": round(wall_s, 3),
        "images_per_s": round(totals["images"] / wall_s, 1),
        "bytes": totals["bytes"],
        "png": totals["png"],
        "grayscale": totals["grayscale"],
        "class_counts": class_counts.tolist(),
        "out": str(args.out),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
