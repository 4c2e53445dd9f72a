"""Property tests: mutated and spliced image bytes only decode or quarantine.

test_decode.py mutates JPEG, PNG and GIF bytes with bit flips and truncation. These
tests add TIFF (raw, LZW and deflate strips) and WebP (lossy, lossless and
animated), byte overwrites that plant extreme header values, and splices: the
leading bytes of one format followed by the body of another.

A failing input is printed by Hypothesis. Save its bytes under
``tests/fuzz_regressions/`` (any name ending in ``.bin``), and
:func:`test_regression_inputs_only_quarantine` replays it on every run.

Set ``IMGPREP_FUZZ_EXAMPLES`` to run more examples per property than the default.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from PIL import Image

from imgprep.config import ImageSettings
from imgprep.decode import decode_image, time_limit
from imgprep.errors import Quarantined
from imgprep.reasons import REASON_CODES

REGRESSIONS = Path(__file__).resolve().parent / "fuzz_regressions"
EXAMPLES = int(os.environ.get("IMGPREP_FUZZ_EXAMPLES", "500"))
SETTINGS = ImageSettings(height=8, width=8)
# The reasons decode_image and time_limit raise. Scan, table and ingest reasons
# cannot come from bytes alone.
DECODE_REASONS = {
    "empty",
    "not_an_image",
    "truncated",
    "corrupt",
    "too_many_pixels",
    "unsupported_mode",
    "decode_timeout",
}
FUZZ_SETTINGS = hypothesis_settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def encode(image: Image.Image, image_format: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **params)
    return buffer.getvalue()


def valid_samples() -> dict[str, bytes]:
    """Return small valid files of each fuzzed format, keyed by a short name."""
    rng = np.random.default_rng(7)
    image = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
    second = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
    return {
        "jpeg": encode(image, "JPEG", quality=80),
        "png": encode(image, "PNG"),
        "gif": encode(image.convert("P"), "GIF"),
        "tiff": encode(image, "TIFF"),
        "tiff_lzw": encode(image, "TIFF", compression="tiff_lzw"),
        "tiff_deflate": encode(image, "TIFF", compression="tiff_adobe_deflate"),
        "webp": encode(image, "WEBP", quality=80),
        "webp_lossless": encode(image, "WEBP", lossless=True),
        "webp_animated": encode(
            image, "WEBP", save_all=True, append_images=[second], lossless=True
        ),
    }


SAMPLES = valid_samples()
TIFF_WEBP = [name for name in SAMPLES if name.startswith(("tiff", "webp"))]


def check_outcome(data: bytes) -> None:
    """Assert that ``data`` decodes to a valid sample or quarantines with a code."""
    try:
        with time_limit(5):
            result = decode_image(data, SETTINGS)
    except Quarantined as error:
        assert error.reason in DECODE_REASONS, (
            f"unknown reason {error.reason!r} for {len(data)} bytes "
            f"starting {data[:16]!r}"
        )
        assert error.message, f"{error.reason} without a message"
        return
    assert result.pixels.shape == (8, 8, 3)
    assert result.pixels.dtype == np.uint8
    assert result.info["frames"] >= 1


@st.composite
def mutated_bytes(draw: st.DrawFn, names: list[str]) -> bytes:
    """Flip bits, overwrite bytes with extreme values and cut the end."""
    data = bytearray(SAMPLES[draw(st.sampled_from(names))])
    index = st.integers(0, len(data) - 1)
    for position, bit in draw(
        st.lists(st.tuples(index, st.integers(0, 7)), max_size=6)
    ):
        data[position] ^= 1 << bit
    for position, value in draw(
        st.lists(
            st.tuples(index, st.sampled_from([0x00, 0x7F, 0x80, 0xFF])), max_size=4
        )
    ):
        data[position] = value
    cut = draw(st.one_of(st.just(len(data)), st.integers(0, len(data))))
    return bytes(data[:cut])


@st.composite
def spliced_bytes(draw: st.DrawFn) -> bytes:
    """Join the first bytes of one format to the rest of another format's file."""
    head_name, body_name = draw(
        st.tuples(st.sampled_from(list(SAMPLES)), st.sampled_from(list(SAMPLES)))
    )
    head, body = SAMPLES[head_name], SAMPLES[body_name]
    head_length = draw(st.integers(1, min(64, len(head))))
    body_start = draw(st.integers(0, len(body)))
    return head[:head_length] + body[body_start:]


def test_samples_are_valid_and_multi_frame() -> None:
    for name, data in SAMPLES.items():
        result = decode_image(data, SETTINGS)
        assert result.pixels.shape == (8, 8, 3), name
    assert decode_image(SAMPLES["webp_animated"], SETTINGS).info["frames"] == 2


@FUZZ_SETTINGS
@given(mutated_bytes(TIFF_WEBP))
def test_mutated_tiff_webp_only_quarantine(data: bytes) -> None:
    check_outcome(data)


@FUZZ_SETTINGS
@given(spliced_bytes())
def test_spliced_headers_only_quarantine(data: bytes) -> None:
    check_outcome(data)


@FUZZ_SETTINGS
@given(st.sampled_from(list(SAMPLES)), st.sampled_from(list(SAMPLES)))
def test_whole_header_swap_only_quarantine(head_name: str, body_name: str) -> None:
    # The exact signature and header of one format before another's pixel data.
    head, body = SAMPLES[head_name], SAMPLES[body_name]
    check_outcome(head[:32] + body[32:])


def test_decode_reasons_are_documented() -> None:
    assert DECODE_REASONS <= set(REASON_CODES)


def regression_files() -> list[Path]:
    return sorted(REGRESSIONS.glob("*.bin"))


def test_regression_folder_not_empty() -> None:
    assert regression_files(), f"no .bin files in {REGRESSIONS}"


@pytest.mark.parametrize("path", regression_files(), ids=lambda path: path.name)
def test_regression_inputs_only_quarantine(path: Path) -> None:
    check_outcome(path.read_bytes())
