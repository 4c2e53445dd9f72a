"""Demo data set from the handwritten digits that scikit-learn ships.

``sklearn.datasets.load_digits`` holds 1,797 real 8x8 scans of handwritten digits
(values 0..16), installed with scikit-learn, so nothing is downloaded. The demo
writes them as 32x32 grayscale PNG files in a class-per-folder tree with a
deterministic long tail: digit ``d`` keeps its first ``round(150 * 50**(-d/9))``
scans, from 150 for ``0`` down to 3 for ``9`` (largest/smallest = 50).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from imgprep.config import folder_path_problem

__all__ = ["DEMO_COUNTS", "write_demo_data"]

LARGEST = 150
RATIO = 50
DEMO_COUNTS = {
    str(digit): int(round(LARGEST * RATIO ** (-digit / 9))) for digit in range(10)
}


def write_demo_data(destination: str | Path, size: int = 32) -> dict[str, int]:
    """Write the demo tree under ``destination`` and return the count per class.

    A file that already exists with the same bytes is not written again, so running
    it twice changes nothing, modification times included. Raises ValueError when
    ``destination`` or one of its parents is a file.
    """
    root = Path(destination)
    problem = folder_path_problem(root)
    if problem is not None:
        raise ValueError(
            f"demo destination {root} {problem}; pass a new folder or an existing one"
        )

    from sklearn.datasets import load_digits

    digits = load_digits()
    written: dict[str, int] = {}
    for label, wanted in DEMO_COUNTS.items():
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        indices = np.flatnonzero(digits.target == int(label))[:wanted]
        for index in indices:
            scan = digits.images[index]  # float 0..16
            pixels = np.clip(np.rint(scan * (255.0 / 16.0)), 0, 255).astype(np.uint8)
            image = Image.fromarray(pixels).resize(
                (size, size), Image.Resampling.BICUBIC
            )
            target = folder / f"digit_{label}_{index:04d}.png"
            buffer = io.BytesIO()
            image.save(buffer, format="PNG", optimize=False)
            data = buffer.getvalue()
            # An identical file is left alone, so its modification time stays and a
            # refresh after a second `demo-data` does not read it again.
            if not target.is_file() or target.read_bytes() != data:
                target.write_bytes(data)
        written[label] = len(indices)
    return written
