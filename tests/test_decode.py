"""Tests of imgprep.decode on images made with Pillow and on the fixture folders."""

from __future__ import annotations

import collections
import io
import json
import signal
import struct
import subprocess
import sys
import threading
import time
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from PIL import Image, ImageFile

from imgprep.config import ImageSettings
from imgprep.decode import (
    SNIFF_BYTES,
    DecodedImage,
    decode_image,
    sniff_format,
    time_limit,
)
from imgprep.errors import Quarantined

PROJECT_ROOT = Path(__file__).resolve().parents[1]

RED = (255, 0, 0)
BLUE = (0, 0, 255)
WHITE = (255, 255, 255)


# ---------------------------------------------------------------------------
# Helpers


def encode(image: Image.Image, image_format: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **params)
    return buffer.getvalue()


def decode(data: bytes, **settings: Any) -> DecodedImage:
    return decode_image(data, ImageSettings(**settings))


def reason_of(data: bytes, **settings: Any) -> str:
    with pytest.raises(Quarantined) as caught:
        decode(data, **settings)
    return caught.value.reason


def halves(width: int, height: int, left=RED, right=BLUE) -> Image.Image:
    """Return an RGB image whose left half is ``left`` and right half ``right``."""
    image = Image.new("RGB", (width, height), right)
    image.paste(left, (0, 0, width // 2, height))
    return image


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def png_header_only(width: int, height: int) -> bytes:
    """Return a 1-bit grayscale PNG that declares a size but has a tiny IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def s15_fixed16(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


def cmyk_profile_to_lab(lab: tuple[float, float, float]) -> bytes:
    """Build an ICC v2 CMYK input profile that maps every CMYK value to one Lab.

    The A2B0 tag is an 8-bit LUT (lut8Type) with identity curves and a 2-point grid
    whose 16 entries all hold ``lab``, so a conversion through it is easy to tell
    from Pillow's naive CMYK conversion.
    """
    lightness, a, b = lab
    entry = bytes([round(lightness * 255 / 100), round(a + 128), round(b + 128)])
    identity = bytes(range(256))
    matrix = b"".join(s15_fixed16(v) for v in (1, 0, 0, 0, 1, 0, 0, 0, 1))
    a2b0 = (
        b"mft1"
        + bytes(4)
        + bytes([4, 3, 2, 0])
        + matrix
        + identity * 4
        + entry * 16
        + identity * 3
    )
    d50 = s15_fixed16(0.9642) + s15_fixed16(1.0) + s15_fixed16(0.8249)
    white_point = b"XYZ " + bytes(4) + d50
    text = b"CMYK test profile\0"
    description = (
        b"desc" + bytes(4) + struct.pack(">I", len(text)) + text + bytes(8 + 3 + 67)
    )
    tags = [(b"A2B0", a2b0), (b"wtpt", white_point), (b"desc", description)]
    first_offset = 128 + 4 + 12 * len(tags)
    table = struct.pack(">I", len(tags))
    body = b""
    for signature, payload in tags:
        body += bytes(-(first_offset + len(body)) % 4)
        table += signature + struct.pack(">II", first_offset + len(body), len(payload))
        body += payload
    size = first_offset + len(body)
    header = (
        struct.pack(">I", size)
        + bytes(4)
        + bytes([2, 0x10, 0, 0])
        + b"scnr"
        + b"CMYK"
        + b"Lab "
        + bytes(12)
        + b"acsp"
        + bytes(4 + 4 + 4 + 4 + 8 + 4)
        + d50
        + bytes(4 + 16 + 28)
    )
    assert len(header) == 128
    return header + table + body


def with_orientation(upright: Image.Image, orientation: int) -> Image.Image:
    """Return the stored image whose EXIF ``orientation`` turns it into ``upright``."""
    inverse = {
        1: None,
        2: Image.Transpose.FLIP_LEFT_RIGHT,
        3: Image.Transpose.ROTATE_180,
        4: Image.Transpose.FLIP_TOP_BOTTOM,
        5: Image.Transpose.TRANSPOSE,
        6: Image.Transpose.ROTATE_90,
        7: Image.Transpose.TRANSVERSE,
        8: Image.Transpose.ROTATE_270,
    }[orientation]
    return upright if inverse is None else upright.transpose(inverse)


def exif_with_orientation(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


# ---------------------------------------------------------------------------
# Output contract


def test_output_shape_dtype_and_flags() -> None:
    data = encode(halves(40, 30), "PNG")
    for color_mode, dtype in [("RGB", "uint8"), ("L", "uint8"), ("RGB", "uint16")]:
        result = decode(data, height=12, width=20, color_mode=color_mode, dtype=dtype)
        channels = 3 if color_mode == "RGB" else 1
        assert result.pixels.shape == (12, 20, channels)
        assert result.pixels.dtype == np.dtype(dtype)
        assert result.pixels.flags.c_contiguous
        assert not result.pixels.flags.writeable


def test_info_is_json_with_all_keys() -> None:
    result = decode(encode(halves(40, 30), "PNG"), height=12, width=20)
    assert set(result.info) == {
        "format",
        "mode",
        "source_width",
        "source_height",
        "frames",
        "orientation",
        "bit_depth",
        "conversions",
        "warnings",
    }
    assert json.loads(json.dumps(result.info)) == result.info
    assert result.info["format"] == "PNG"
    assert result.info["mode"] == "RGB"
    assert (result.info["source_width"], result.info["source_height"]) == (40, 30)
    assert result.info["frames"] == 1
    assert result.info["orientation"] == 1
    assert result.info["bit_depth"] == 8
    assert result.info["conversions"] == ["resize"]
    assert result.info["warnings"] == []


def test_matching_size_skips_resize() -> None:
    source = halves(20, 12)
    result = decode(encode(source, "PNG"), height=12, width=20)
    assert result.info["conversions"] == []
    assert np.array_equal(result.pixels, np.asarray(source))


# ---------------------------------------------------------------------------
# Reason codes


def test_empty_bytes_is_empty() -> None:
    assert reason_of(b"") == "empty"


def test_text_is_not_an_image() -> None:
    with pytest.raises(Quarantined) as caught:
        decode(b"this is plain text, not pixels")
    assert caught.value.reason == "not_an_image"
    assert "this is " in caught.value.message


def test_truncated_png_and_jpeg() -> None:
    noise = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    image = Image.fromarray(noise)
    for image_format in ("PNG", "JPEG"):
        data = encode(image, image_format)
        assert reason_of(data[: len(data) // 2]) == "truncated", image_format


def test_broken_zlib_stream_is_corrupt() -> None:
    data = bytearray(encode(halves(64, 64), "PNG"))
    start = data.index(b"IDAT") + 4
    data[start + 2 : start + 40] = bytes(range(38))
    assert reason_of(bytes(data)) == "corrupt"


def test_corrupt_message_names_exception() -> None:
    data = bytearray(encode(halves(64, 64), "PNG"))
    start = data.index(b"IDAT") + 4
    data[start + 2 : start + 40] = bytes(range(38))
    with pytest.raises(Quarantined) as caught:
        decode(bytes(data))
    assert "Error" in caught.value.message


def test_loader_settings_stay_default() -> None:
    data = encode(halves(64, 64), "JPEG")
    assert reason_of(data[:300]) == "truncated"
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    assert Image.MAX_IMAGE_PIXELS == 89_478_485


# ---------------------------------------------------------------------------
# Pixel limit


def test_pixel_limit_from_setting() -> None:
    data = png_header_only(2000, 1000)
    with pytest.raises(Quarantined) as caught:
        decode(data, max_image_pixels=1_000_000)
    assert caught.value.reason == "too_many_pixels"
    assert "2000x1000" in caught.value.message
    assert "image.max_image_pixels" in caught.value.message


def test_pixel_limit_allows_equal_size() -> None:
    data = encode(Image.new("L", (100, 10), 7), "PNG")
    result = decode(data, max_image_pixels=1000, height=10, width=100, color_mode="L")
    assert int(result.pixels.max()) == 7


def test_pixel_limit_hides_pillow_warning() -> None:
    # 10000 x 10000 lies between Pillow's warning (89.5 M) and error (179 M) limits.
    data = png_header_only(10_000, 10_000)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert reason_of(data) == "too_many_pixels"
    assert [str(w.message) for w in caught] == []


def test_pixel_limit_runs_before_decoding() -> None:
    # The header claims 40 M pixels, but the IDAT contains 64 bytes. Decoding would
    # end as truncated, so too_many_pixels shows the check came first.
    data = png_header_only(8000, 5000)
    assert reason_of(data, max_image_pixels=1_000_000) == "too_many_pixels"
    assert reason_of(data) == "truncated"


BOMB_CHILD = """
import io, json, resource, sys, time
from PIL import Image
from imgprep.config import ImageSettings
from imgprep.decode import decode_image
from imgprep.errors import Quarantined
data = open(sys.argv[1], "rb").read()
settings = ImageSettings(max_image_pixels=int(sys.argv[2]))
# A first decode loads Pillow's plugins, so their memory is not counted below.
warm_up = io.BytesIO()
Image.new("L", (4, 4)).save(warm_up, "PNG")
decode_image(warm_up.getvalue(), settings)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.perf_counter()
try:
    decode_image(data, settings)
    reason = None
except Quarantined as error:
    reason = error.reason
elapsed = time.perf_counter() - started
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"reason": reason, "seconds": elapsed, "growth_kb": after - before}))
"""


def run_bomb_child(path: Path, max_image_pixels: int) -> dict[str, Any]:
    completed = subprocess.run(
        [sys.executable, "-c", BOMB_CHILD, str(path), str(max_image_pixels)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=PROJECT_ROOT,
        check=True,
    )
    return json.loads(completed.stdout.strip().splitlines()[-1])


def test_crafted_bomb_low_memory(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_only(20_000, 20_000))
    report = run_bomb_child(path, 89_478_485)
    assert report["reason"] == "too_many_pixels"
    assert report["seconds"] < 1.0
    assert report["growth_kb"] < 50 * 1024


@pytest.mark.shared
def test_declared_400mp_png_rejected(cases_dir: Path) -> None:
    folder = cases_dir / "C08-decompression-bomb"
    expected = json.loads((folder / "expected.json").read_text())
    assert "too_many_pixels" in expected["bomb_1bit_20000x20000.png"]
    path = folder / "bomb_1bit_20000x20000.png"
    for limit in (89_478_485, 1_000_000_000):
        report = run_bomb_child(path, limit)
        assert report["reason"] == "too_many_pixels", limit
        assert report["seconds"] < 1.0, limit
        assert report["growth_kb"] < 50 * 1024, limit


# ---------------------------------------------------------------------------
# Frames and orientation


def test_gif_uses_first_frame() -> None:
    frames = [Image.new("RGB", (16, 16), colour) for colour in (RED, BLUE, WHITE)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    result = decode(data, height=16, width=16)
    assert result.info["frames"] == 3
    assert tuple(result.pixels[8, 8]) == RED


def test_tiff_uses_first_page() -> None:
    pages = [Image.new("L", (8, 8), value) for value in (10, 200)]
    data = encode(pages[0], "TIFF", save_all=True, append_images=pages[1:])
    result = decode(data, height=8, width=8, color_mode="L")
    assert result.info["frames"] == 2
    assert int(result.pixels.max()) == 10


@pytest.mark.parametrize("orientation", range(1, 9))
def test_png_orientation_applied(orientation: int) -> None:
    upright = halves(30, 20)
    upright.paste((0, 255, 0), (0, 0, 5, 5))
    stored = with_orientation(upright, orientation)
    data = encode(stored, "PNG", exif=exif_with_orientation(orientation))
    result = decode(data, height=20, width=30)
    assert result.info["orientation"] == orientation
    assert (result.info["source_width"], result.info["source_height"]) == stored.size
    assert np.array_equal(result.pixels, np.asarray(upright))
    assert ("exif_transpose" in result.info["conversions"]) == (orientation != 1)


def test_invalid_orientation_ignored() -> None:
    data = encode(halves(30, 20), "PNG", exif=exif_with_orientation(9))
    result = decode(data, height=20, width=30)
    assert result.info["orientation"] == 1
    assert "invalid_orientation" in result.info["warnings"]


@pytest.mark.shared
def test_exif_jpegs_load_upright(cases_dir: Path) -> None:
    folder = cases_dir / "C01-exif-orientation"
    expected = json.loads((folder / "expected.json").read_text())
    for name, facts in expected.items():
        data = (folder / name).read_bytes()
        width, height = facts["upright_size_wh"]
        # Half size keeps the aspect ratio. The red block is 10x20 at full size.
        result = decode(data, height=height // 2, width=width // 2)
        stored_width, stored_height = facts["stored_size_wh"]
        assert result.info["source_width"] == stored_width, name
        assert result.info["source_height"] == stored_height, name
        assert result.info["orientation"] == int(name.split("_")[1][0]), name
        corner = result.pixels[2, 2].astype(int)
        target = np.array(facts["upright_top_left_rgb_approx"])
        assert np.abs(corner - target).max() < 40, (name, corner)
        bottom_right = result.pixels[-2, -2].astype(int)
        assert np.abs(bottom_right - target).max() > 100, (name, bottom_right)


# ---------------------------------------------------------------------------
# JPEG draft


def test_draft_used_when_half_size() -> None:
    data = encode(halves(400, 300), "JPEG", quality=95)
    drafted = decode(data, height=64, width=64)
    full = decode(data, height=64, width=64, jpeg_draft=False)
    assert drafted.info["conversions"][0] == "jpeg_draft"
    assert "jpeg_draft" not in full.info["conversions"]
    difference = np.abs(drafted.pixels.astype(int) - full.pixels.astype(int))
    assert difference.mean() < 3


def test_draft_skipped_above_half() -> None:
    data = encode(halves(100, 100), "JPEG")
    result = decode(data, height=64, width=64)
    assert "jpeg_draft" not in result.info["conversions"]


def test_draft_skipped_for_center_crop() -> None:
    data = encode(halves(400, 300), "JPEG")
    result = decode(data, height=64, width=64, resize="center_crop")
    assert "jpeg_draft" not in result.info["conversions"]


def test_draft_swaps_for_rotation() -> None:
    # Stored 800x100 with orientation 6 is upright 100x800. A 12x100 output needs
    # a stored 100x12 region, so 1/8 scale fits; without the swap it would not.
    upright = Image.new("RGB", (100, 800), BLUE)
    upright.paste(RED, (0, 0, 100, 400))
    stored = with_orientation(upright, 6)
    data = encode(stored, "JPEG", quality=95, exif=exif_with_orientation(6))
    drafted = decode(data, height=100, width=12)
    full = decode(data, height=100, width=12, jpeg_draft=False)
    assert "jpeg_draft" in drafted.info["conversions"]
    assert drafted.info["orientation"] == 6
    assert np.abs(drafted.pixels[10, 6].astype(int) - RED).max() < 30
    assert np.abs(drafted.pixels[90, 6].astype(int) - BLUE).max() < 30
    difference = np.abs(drafted.pixels.astype(int) - full.pixels.astype(int))
    assert difference.mean() < 3


# ---------------------------------------------------------------------------
# Colour and transparency


def test_rgba_composited_on_background() -> None:
    image = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    image.paste((200, 30, 30, 255), (3, 3, 7, 7))
    image.putpixel((0, 9), (0, 0, 255, 128))
    result = decode(encode(image, "PNG"), height=10, width=10, background=(10, 20, 30))
    assert tuple(result.pixels[0, 0]) == (10, 20, 30)
    assert tuple(result.pixels[5, 5]) == (200, 30, 30)
    blended = result.pixels[9, 0].astype(int)
    assert np.abs(blended - [5, 10, 143]).max() <= 1


def test_la_composited_for_l_output() -> None:
    image = Image.new("LA", (10, 10), (0, 0))
    image.paste((200, 255), (3, 3, 7, 7))
    result = decode(
        encode(image, "PNG"), height=10, width=10, color_mode="L", background=RED
    )
    # Pillow's L of pure red is 255 * 299 / 1000 = 76.
    assert int(result.pixels[0, 0, 0]) == 76
    assert int(result.pixels[5, 5, 0]) == 200


@pytest.mark.parametrize("mode", ["1", "L", "RGB"])
def test_colour_key_composited(mode: str) -> None:
    key = {"1": 0, "L": 9, "RGB": (9, 9, 9)}[mode]
    square = {"1": 1, "L": 200, "RGB": RED}[mode]
    image = Image.new(mode, (10, 10), key)
    image.paste(square, (3, 3, 7, 7))
    data = encode(image, "PNG", transparency=key)
    result = decode(data, height=10, width=10, background=(10, 20, 30))
    assert tuple(result.pixels[0, 0]) == (10, 20, 30)
    assert "alpha_composite" in result.info["conversions"]


def test_palette_alpha_table_blended() -> None:
    image = Image.new("P", (10, 10), 0)
    image.putpalette([0, 0, 0, 200, 30, 30])
    image.paste(1, (3, 3, 7, 7))
    data = encode(image, "PNG", transparency=bytes([0, 160]))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = decode(data, height=10, width=10)
    assert caught == []
    assert result.info["warnings"] == []
    assert tuple(result.pixels[0, 0]) == WHITE
    # 160/255 of (200, 30, 30) over white.
    expected = np.array([200, 30, 30]) * 160 / 255 + 255 * 95 / 255
    assert np.abs(result.pixels[5, 5].astype(float) - expected).max() <= 1


@pytest.mark.shared
def test_alpha_files_composited(cases_dir: Path) -> None:
    folder = cases_dir / "C06-alpha-palette"
    expected = json.loads((folder / "expected.json").read_text())
    assert "palette_trns_bytes.png" in expected
    square = np.array([200, 30, 30])
    for path in sorted(folder.glob("*.*")):
        if path.suffix == ".json":
            continue
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = decode(path.read_bytes(), height=32, width=32)
        assert caught == [], path.name
        assert result.info["warnings"] == [], path.name
        assert tuple(result.pixels[0, 0]) == WHITE, path.name
        assert "alpha_composite" in result.info["conversions"], path.name
        centre = result.pixels[16, 16].astype(float)
        if path.name == "palette_trns_bytes.png":
            blended = square * 160 / 255 + 255 * 95 / 255
            assert np.abs(centre - blended).max() <= 1, path.name
        elif path.name == "gray_alpha_LA.png":
            assert tuple(centre) == (200, 200, 200), path.name
        else:
            assert tuple(centre) == tuple(square), path.name


def test_cmyk_with_profile_uses_icc() -> None:
    profile = cmyk_profile_to_lab((87.7, -86.2, 83.2))  # sRGB green
    image = Image.new("CMYK", (8, 8), (0, 0, 0, 0))
    data = encode(image, "JPEG", icc_profile=profile)
    result = decode(data, height=8, width=8)
    assert "cmyk_icc" in result.info["conversions"]
    assert result.info["mode"] == "CMYK"
    red, green, blue = result.pixels[4, 4].astype(int)
    assert green > 200
    assert red < 40
    assert blue < 40


def test_cmyk_without_profile_is_naive() -> None:
    image = Image.new("CMYK", (8, 8), (0, 255, 255, 0))
    result = decode(encode(image, "TIFF"), height=8, width=8)
    assert "cmyk_naive" in result.info["conversions"]
    assert tuple(result.pixels[4, 4]) == RED


def test_cmyk_with_invalid_profile_falls_back() -> None:
    image = Image.new("CMYK", (8, 8), (0, 255, 255, 0))
    data = encode(image, "TIFF", icc_profile=b"not an ICC profile at all" * 8)
    result = decode(data, height=8, width=8)
    assert "cmyk_naive" in result.info["conversions"]
    assert "invalid_icc_profile" in result.info["warnings"]


def test_ycbcr_tiff_to_rgb() -> None:
    image = Image.new("YCbCr", (8, 8), (100, 128, 128))
    result = decode(encode(image, "TIFF"), height=8, width=8)
    assert result.info["mode"] == "YCbCr"
    assert "to_RGB" in result.info["conversions"]
    assert tuple(result.pixels[4, 4]) == (100, 100, 100)


@pytest.mark.shared
def test_lab_tiff_to_rgb(data_dir: Path) -> None:
    folder = data_dir / "pillow-test-images"
    reference = decode((folder / "hopper.tif").read_bytes(), height=128, width=128)
    result = decode((folder / "hopper.Lab.tif").read_bytes(), height=128, width=128)
    assert result.info["mode"] == "LAB"
    difference = np.abs(result.pixels.astype(int) - reference.pixels.astype(int))
    assert difference.mean() < 5


def test_one_bit_to_0_and_255() -> None:
    image = Image.new("1", (8, 8), 0)
    image.paste(1, (0, 0, 4, 8))
    data = encode(image, "PNG")
    result = decode(data, height=8, width=8, color_mode="L")
    assert result.info["bit_depth"] == 1
    assert sorted(np.unique(result.pixels).tolist()) == [0, 255]
    wide = decode(data, height=8, width=8, color_mode="L", dtype="uint16")
    assert sorted(np.unique(wide.pixels).tolist()) == [0, 65535]


def test_eight_bit_scaled_by_257() -> None:
    data = encode(halves(40, 30, left=(1, 2, 3), right=(250, 128, 0)), "PNG")
    narrow = decode(data, height=15, width=20)
    wide = decode(data, height=15, width=20, dtype="uint16")
    assert wide.info["conversions"][-1] == "scale_8_to_16"
    assert np.array_equal(wide.pixels, narrow.pixels.astype(np.uint16) * 257)


def test_rgb_to_l_uses_luma() -> None:
    data = encode(Image.new("RGB", (4, 4), RED), "PNG")
    result = decode(data, height=4, width=4, color_mode="L")
    assert result.info["conversions"] == ["to_L"]
    assert int(result.pixels[0, 0, 0]) == 76


# ---------------------------------------------------------------------------
# Resize policies


def test_stretch_ignores_aspect() -> None:
    result = decode(encode(halves(80, 20), "PNG"), height=20, width=20)
    assert tuple(result.pixels[10, 2]) == RED
    assert tuple(result.pixels[10, 17]) == BLUE


def test_pad_centres_on_background() -> None:
    data = encode(halves(40, 20), "PNG")
    result = decode(data, height=20, width=20, resize="pad", background=(0, 255, 0))
    assert result.info["conversions"] == ["resize", "pad"]
    # The 40x20 source becomes 20x10 at rows 5..14.
    assert tuple(result.pixels[2, 10]) == (0, 255, 0)
    assert tuple(result.pixels[17, 10]) == (0, 255, 0)
    assert tuple(result.pixels[10, 2]) == RED
    assert tuple(result.pixels[10, 17]) == BLUE


def test_center_crop_keeps_resolution() -> None:
    source = np.arange(40 * 20, dtype=np.uint8).reshape(20, 40)
    data = encode(Image.fromarray(source), "PNG")
    result = decode(data, height=10, width=20, color_mode="L", resize="center_crop")
    assert result.info["conversions"] == ["crop"]
    assert np.array_equal(result.pixels[:, :, 0], source[5:15, 10:30])


def test_center_crop_pads_small_source() -> None:
    source = np.full((6, 30), 50, dtype=np.uint8)
    data = encode(Image.fromarray(source), "PNG")
    result = decode(
        data, height=10, width=20, color_mode="L", resize="center_crop", background=RED
    )
    assert result.info["conversions"] == ["crop", "pad"]
    assert int(result.pixels[0, 0, 0]) == 76
    assert int(result.pixels[9, 19, 0]) == 76
    assert np.all(result.pixels[2:8, :, 0] == 50)


def test_shorter_side_crop_covers() -> None:
    result = decode(
        encode(halves(80, 40), "PNG"), height=20, width=20, resize="shorter_side_crop"
    )
    assert result.info["conversions"] == ["resize", "crop"]
    # Scaled to 40x20 and cropped to x 10..30, so the halves stay left and right.
    assert tuple(result.pixels[10, 2]) == RED
    assert tuple(result.pixels[10, 17]) == BLUE


def test_filter_setting_used() -> None:
    data = encode(halves(41, 20), "PNG")
    nearest = decode(data, height=10, width=10, filter="nearest")
    assert set(map(tuple, nearest.pixels.reshape(-1, 3).tolist())) <= {RED, BLUE}
    lanczos = decode(data, height=10, width=10, filter="lanczos")
    assert len(set(map(tuple, lanczos.pixels.reshape(-1, 3).tolist()))) > 2


# ---------------------------------------------------------------------------
# 16-bit and wide sources


def gray16(values: np.ndarray) -> Image.Image:
    return Image.fromarray(values.astype(np.uint16))


def test_sixteen_bit_kept_for_uint16() -> None:
    values = np.arange(0, 65536, 257, dtype=np.uint16).reshape(16, 16)
    values[0, 0] = 1
    data = encode(gray16(values), "PNG")
    result = decode(data, height=16, width=16, color_mode="L", dtype="uint16")
    assert result.info["bit_depth"] == 16
    assert result.info["mode"] == "I;16"
    assert np.array_equal(result.pixels[:, :, 0], values)


def test_sixteen_bit_shift_and_rescale() -> None:
    values = np.linspace(1000, 3000, 64, dtype=np.uint16).reshape(8, 8)
    data = encode(gray16(values), "PNG")
    shifted = decode(data, height=8, width=8, color_mode="L")
    assert shifted.info["conversions"] == ["sixteen_bit_shift"]
    assert np.array_equal(shifted.pixels[:, :, 0], (values >> 8).astype(np.uint8))
    rescaled = decode(data, height=8, width=8, color_mode="L", sixteen_bit="rescale")
    assert rescaled.info["conversions"] == ["sixteen_bit_rescale"]
    assert int(rescaled.pixels.min()) == 0
    assert int(rescaled.pixels.max()) == 255


def test_sixteen_bit_constant_rescales_to_zero() -> None:
    data = encode(gray16(np.full((4, 4), 999)), "PNG")
    result = decode(data, height=4, width=4, color_mode="L", sixteen_bit="rescale")
    assert int(result.pixels.max()) == 0


def test_sixteen_bit_resize_keeps_precision() -> None:
    values = np.tile(np.arange(1000, 1064, dtype=np.uint16), (8, 1))
    data = encode(gray16(values), "PNG")
    result = decode(data, height=8, width=32, color_mode="L", dtype="uint16")
    column = result.pixels[4, :, 0].astype(int)
    # Averaging neighbour pairs gives steps of 2, which 8-bit resizing would lose.
    assert np.all(np.diff(column) >= 1)
    assert column.min() >= 1000
    assert column.max() <= 1063


def test_sixteen_bit_to_rgb_with_pad() -> None:
    data = encode(gray16(np.full((4, 8), 40000)), "PNG")
    result = decode(
        data, height=8, width=8, resize="pad", dtype="uint16", background=(0, 255, 0)
    )
    assert tuple(result.pixels[0, 0]) == (0, 65535, 0)
    assert tuple(result.pixels[4, 4]) == (40000, 40000, 40000)
    assert "pad" in result.info["conversions"]


def test_sixteen_bit_colour_key() -> None:
    values = np.full((8, 8), 300, dtype=np.uint16)
    values[2:6, 2:6] = 50000
    data = encode(gray16(values), "PNG", transparency=300)
    result = decode(data, height=8, width=8, dtype="uint16", background=(0, 0, 255))
    assert tuple(result.pixels[0, 0]) == (0, 0, 65535)
    assert tuple(result.pixels[4, 4]) == (50000, 50000, 50000)


def test_sixteen_bit_orientation() -> None:
    values = np.zeros((4, 6), dtype=np.uint16)
    values[0, 0] = 65535
    stored = with_orientation(gray16(values), 6)
    data = encode(stored, "PNG", exif=exif_with_orientation(6))
    result = decode(data, height=4, width=6, color_mode="L", dtype="uint16")
    assert result.info["orientation"] == 6
    assert np.array_equal(result.pixels[:, :, 0], values)


def test_pgm_sixteen_bit_integer() -> None:
    values = np.linspace(0, 65535, 32, dtype=np.uint16).reshape(4, 8)
    data = encode(gray16(values), "PPM")
    result = decode(data, height=4, width=8, color_mode="L", dtype="uint16")
    assert result.info["mode"] == "I"
    assert result.info["bit_depth"] == 16
    assert np.array_equal(result.pixels[:, :, 0], values)


def test_tiff_32_bit_integer_is_wide() -> None:
    values = np.arange(16, dtype=np.int32).reshape(4, 4) * 1000
    data = encode(Image.fromarray(values), "TIFF")
    with pytest.raises(Quarantined) as caught:
        decode(data, height=4, width=4)
    assert caught.value.reason == "unsupported_mode"
    assert "image.wide_modes: rescale" in caught.value.message
    assert "'I'" in caught.value.message
    result = decode(data, height=4, width=4, color_mode="L", wide_modes="rescale")
    assert result.info["bit_depth"] == 32
    assert result.info["conversions"] == ["wide_rescale"]
    assert int(result.pixels.min()) == 0
    assert int(result.pixels.max()) == 255


def test_float_rescale_zeroes_non_finite() -> None:
    values = np.array([[-1.0, 0.0, 1.0, np.nan, np.inf, -np.inf]], dtype=np.float32)
    data = encode(Image.fromarray(values), "TIFF")
    assert reason_of(data, height=1, width=6) == "unsupported_mode"
    result = decode(data, height=1, width=6, color_mode="L", wide_modes="rescale")
    assert result.pixels[0, :, 0].tolist() == [0, 128, 255, 0, 0, 0]
    wide = decode(
        data, height=1, width=6, color_mode="L", wide_modes="rescale", dtype="uint16"
    )
    assert wide.pixels[0, :, 0].tolist() == [0, 32768, 65535, 0, 0, 0]


@pytest.mark.shared
def test_sixteen_bit_ramps_survive(cases_dir: Path) -> None:
    folder = cases_dir / "C05-16bit-gray"
    expected = json.loads((folder / "expected.json").read_text())
    assert "gray16_full_ramp.png" in expected
    results = {}
    for name in ("gray16_full_ramp.png", "gray16_full_ramp.tif"):
        data = (folder / name).read_bytes()
        for rule in ("shift", "rescale"):
            result = decode(
                data, height=32, width=256, color_mode="L", sixteen_bit=rule
            )
            pixels = result.pixels
            assert len(np.unique(pixels)) >= 250, (name, rule)
            assert int(pixels.min()) == 0, (name, rule)
            assert int(pixels.max()) == 255, (name, rule)
            assert result.info["bit_depth"] == 16, (name, rule)
            assert f"sixteen_bit_{rule}" in result.info["conversions"], (name, rule)
            results[name, rule] = pixels
    for rule in ("shift", "rescale"):
        png, tif = (
            results["gray16_full_ramp.png", rule],
            results["gray16_full_ramp.tif", rule],
        )
        assert np.array_equal(png, tif), rule


@pytest.mark.shared
def test_ramp_uint16_exact(cases_dir: Path) -> None:
    path = cases_dir / "C05-16bit-gray" / "gray16_full_ramp.png"
    with Image.open(path) as image:
        source = np.asarray(image).astype(np.uint16)
    result = decode(
        path.read_bytes(), height=32, width=256, color_mode="L", dtype="uint16"
    )
    assert np.array_equal(result.pixels[:, :, 0], source)


@pytest.mark.shared
def test_twelve_bit_png_visible(cases_dir: Path) -> None:
    data = (cases_dir / "C05-16bit-gray" / "gray16_12bit_values.png").read_bytes()
    for rule in ("shift", "rescale"):
        result = decode(data, height=32, width=256, color_mode="L", sixteen_bit=rule)
        assert int(result.pixels.max()) > 0, rule
        assert float(np.mean(result.pixels >= 250)) < 0.5, rule


@pytest.mark.shared
def test_signed_tiff_is_sixteen_bit(data_dir: Path) -> None:
    # Pillow opens this signed 16-bit TIFF as mode I with values 0..32767.
    path = data_dir / "pillow-test-images" / "16bit.s.tif"
    with Image.open(path) as image:
        source = np.asarray(image)
    result = decode(
        path.read_bytes(), height=10, width=10, color_mode="L", dtype="uint16"
    )
    assert result.info["mode"] == "I"
    assert result.info["bit_depth"] == 16
    assert np.array_equal(result.pixels[:, :, 0], source.astype(np.uint16))


@pytest.mark.shared
def test_mixed_modes_shape_dtype(cases_dir: Path) -> None:
    folder = cases_dir / "C10-mixed-modes" / "dataset" / "x"
    paths = sorted(folder.iterdir())
    assert {p.name for p in paths} >= {"float_F.tif", "int32_I.tif", "rgba.png"}
    for wide_modes in ("reject", "rescale"):
        for path in paths:
            data = path.read_bytes()
            wide = path.name in ("float_F.tif", "int32_I.tif")
            if wide and wide_modes == "reject":
                assert reason_of(data, height=24, width=24) == "unsupported_mode"
                continue
            result = decode(data, height=24, width=24, wide_modes=wide_modes)
            assert result.pixels.shape == (24, 24, 3), path.name
            assert result.pixels.dtype == np.uint8, path.name
            assert result.info["mode"], path.name
            if wide:
                assert "wide_rescale" in result.info["conversions"], path.name


# ---------------------------------------------------------------------------
# PNG end and corrupt files


def test_png_without_iend_accepted() -> None:
    data = encode(halves(16, 8), "PNG")
    assert data.endswith(png_chunk(b"IEND", b""))
    result = decode(data[:-12], height=8, width=16)
    assert result.info["warnings"] == ["missing_iend"]
    assert np.array_equal(result.pixels, np.asarray(halves(16, 8)))


@pytest.mark.shared
def test_corrupt_files_reasons(cases_dir: Path) -> None:
    folder = cases_dir / "C02-corrupt-files"
    expected = json.loads((folder / "expected.json").read_text())
    assert set(expected) == {p.name for p in folder.iterdir()} - {"expected.json"}
    for name, outcome in expected.items():
        data = (folder / name).read_bytes()
        if name == "png_missing_iend.png":
            result = decode(data)
            assert "missing_iend" in result.info["warnings"]
        elif outcome == "accepted":
            assert decode(data).pixels.shape == (64, 64, 3), name
        else:
            assert reason_of(data) == outcome.split(":")[1], name


# ---------------------------------------------------------------------------
# Format sniffing


def test_sniff_common_formats() -> None:
    image = halves(20, 20)
    for image_format in ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "PPM"):
        data = encode(image, image_format)
        assert sniff_format(data[:SNIFF_BYTES]) == image_format


def test_sniff_rejects_text() -> None:
    assert sniff_format(b"hello, this is text") is None
    assert sniff_format(b"") is None


def test_sniff_tga_by_name() -> None:
    data = encode(halves(20, 20), "TGA")
    assert sniff_format(data[:SNIFF_BYTES], "picture.TGA") == "TGA"


@pytest.mark.shared
def test_sniff_ignores_extension(cases_dir: Path) -> None:
    folder = cases_dir / "C04-extension-case"
    expected = json.loads((folder / "expected.json").read_text())
    leaf = folder / "dataset" / "leaf"
    for name in expected["found"]:
        prefix = (leaf / name).read_bytes()[:SNIFF_BYTES]
        real = expected["real_format"].get(name)
        if real is None:
            real = "PNG" if name.lower().endswith(".png") else "JPEG"
        assert sniff_format(prefix, name) == real, name
    assert sniff_format((leaf / "no_extension").read_bytes()[:SNIFF_BYTES]) == "PNG"
    result = decode((leaf / "really_png.jpg").read_bytes())
    assert result.info["format"] == "PNG"


# ---------------------------------------------------------------------------
# Time limit and threads


def busy(seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pass


def test_time_limit_raises() -> None:
    started = time.monotonic()
    with pytest.raises(Quarantined) as caught:
        with time_limit(0.1):
            busy(5)
    assert caught.value.reason == "decode_timeout"
    assert time.monotonic() - started < 1.0


def test_time_limit_restores_handler() -> None:
    def outer_handler(signum: int, frame: Any) -> None:
        raise AssertionError("outer timer fired during the test")

    previous = signal.signal(signal.SIGALRM, outer_handler)
    previous_timer = signal.setitimer(signal.ITIMER_REAL, 30)
    try:
        with time_limit(5):
            busy(0.05)
        assert signal.getsignal(signal.SIGALRM) is outer_handler
        remaining = signal.getitimer(signal.ITIMER_REAL)[0]
        assert 28 < remaining <= 30
    finally:
        signal.setitimer(signal.ITIMER_REAL, *previous_timer)
        signal.signal(signal.SIGALRM, previous)


def test_time_limit_shorter_outer_wins() -> None:
    with pytest.raises(Quarantined):
        with time_limit(0.1):
            with time_limit(30):
                busy(5)


def test_time_limit_in_thread() -> None:
    def run() -> str:
        with time_limit(0.01):
            busy(0.2)
        return "finished"

    with ThreadPoolExecutor(max_workers=1) as pool:
        with pytest.raises(Quarantined) as caught:
            pool.submit(run).result()
    assert caught.value.reason == "decode_timeout"


def test_time_limit_rejects_bad_seconds() -> None:
    for value in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="seconds"):
            with time_limit(value):
                pass


def test_decode_in_threads() -> None:
    data = [encode(halves(40 + i, 30), "PNG") for i in range(8)]
    expected = [decode(blob, height=10, width=10).pixels for blob in data]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda b: decode(b, height=10, width=10).pixels, data))
    for got, want in zip(results, expected, strict=True):
        assert np.array_equal(got, want)
    assert threading.current_thread() is threading.main_thread()


# ---------------------------------------------------------------------------
# Mutated bytes


def small_samples() -> list[bytes]:
    rng = np.random.default_rng(7)
    image = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
    return [
        encode(image, "JPEG", quality=80),
        encode(image, "PNG"),
        encode(image.convert("P"), "GIF"),
    ]


SAMPLES = small_samples()
MUTATION_SETTINGS = ImageSettings(height=8, width=8)


@st.composite
def mutated_bytes(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SAMPLES)))
    flips = draw(
        st.lists(
            st.tuples(st.integers(0, len(data) - 1), st.integers(0, 7)), max_size=6
        )
    )
    for index, bit in flips:
        data[index] ^= 1 << bit
    cut = draw(st.one_of(st.just(len(data)), st.integers(0, len(data))))
    return bytes(data[:cut])


@hypothesis_settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(mutated_bytes())
def test_mutated_bytes_only_quarantine(data: bytes) -> None:
    try:
        with time_limit(5):
            result = decode_image(data, MUTATION_SETTINGS)
    except Quarantined as error:
        assert error.reason in {
            "empty",
            "not_an_image",
            "truncated",
            "corrupt",
            "too_many_pixels",
            "unsupported_mode",
            "decode_timeout",
        }
        return
    assert result.pixels.shape == (8, 8, 3)
    assert result.pixels.dtype == np.uint8


# ---------------------------------------------------------------------------
# Pillow's own test images


@pytest.mark.slow
@pytest.mark.shared
def test_pillow_images_only_quarantine(data_dir: Path) -> None:
    folder = data_dir / "pillow-test-images"
    paths = sorted(p for p in folder.rglob("*") if p.is_file())
    assert len(paths) > 1000
    settings = ImageSettings(height=32, width=32)
    counts: collections.Counter[str] = collections.Counter()
    slowest = (0.0, "")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for path in paths:
            data = path.read_bytes()
            started = time.perf_counter()
            try:
                with time_limit(10):
                    result = decode_image(data, settings)
            except Quarantined as error:
                counts[error.reason] += 1
            else:
                counts["accepted"] += 1
                assert result.pixels.shape == (32, 32, 3), path.name
                assert result.pixels.dtype == np.uint8, path.name
            slowest = max(slowest, (time.perf_counter() - started, path.name))
    print(f"\n{len(paths)} files: {dict(sorted(counts.items()))}; slowest {slowest}")
    assert [f"{w.category.__name__}: {w.message}" for w in caught] == []
    assert counts["accepted"] > 800
    assert counts["truncated"] > 10
    assert counts["too_many_pixels"] >= 5
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    assert Image.MAX_IMAGE_PIXELS == 89_478_485


# ---------------------------------------------------------------------------
# simplejpeg and Pillow decode JPEGs to the same pixels


def photo_like(width: int, height: int, seed: int, mode: str = "RGB") -> Image.Image:
    """Return a smooth image with noise, which JPEG encodes like a photo."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    base = np.stack(
        [
            (xs * 255 // width),
            (ys * 255 // height),
            ((xs + ys) * 127 // (width + height)),
        ],
        axis=-1,
    ).astype(np.int16)
    noisy = np.clip(base + rng.integers(-20, 21, base.shape), 0, 255).astype(np.uint8)
    image = Image.fromarray(noisy)
    return image.convert("L") if mode == "L" else image


@pytest.mark.parametrize("mode", ["RGB", "L"])
@pytest.mark.parametrize(
    "resize", ["stretch", "pad", "shorter_side_crop", "center_crop"]
)
@pytest.mark.parametrize(
    ("width", "height", "out"), [(400, 300, 64), (257, 383, 100), (90, 70, 64)]
)
@pytest.mark.parametrize("progressive", [False, True])
def test_simplejpeg_matches_pillow(mode, resize, width, height, out, progressive):
    data = encode(
        photo_like(width, height, seed=width + height, mode=mode),
        "JPEG",
        quality=90,
        progressive=progressive,
    )
    fast = decode(data, height=out, width=out, resize=resize, color_mode=mode)
    slow = decode(
        data,
        height=out,
        width=out,
        resize=resize,
        color_mode=mode,
        jpeg_decoder="pillow",
    )
    assert np.array_equal(fast.pixels, slow.pixels)
    assert fast.info == slow.info
    assert np.array_equal(fast.histogram, slow.histogram)


def test_simplejpeg_fallback_names_truncation() -> None:
    data = encode(photo_like(200, 150, seed=3), "JPEG", quality=90)
    cut = data[: len(data) * 6 // 10]
    assert reason_of(cut, height=32, width=32) == "truncated"
    assert reason_of(cut, height=32, width=32, jpeg_decoder="pillow") == "truncated"


def test_cmyk_jpeg_uses_pillow() -> None:
    data = encode(photo_like(80, 60, seed=4).convert("CMYK"), "JPEG", quality=95)
    fast = decode(data, height=16, width=16)
    slow = decode(data, height=16, width=16, jpeg_decoder="pillow")
    assert np.array_equal(fast.pixels, slow.pixels)
    assert "cmyk_naive" in fast.info["conversions"]


@pytest.mark.parametrize("mode", ["RGB", "L"])
@pytest.mark.parametrize("image_format", ["PNG", "JPEG"])
def test_histogram_counts_pixels(mode, image_format):
    data = encode(photo_like(120, 90, seed=5, mode=mode), image_format)
    decoded = decode(data, height=24, width=32, color_mode=mode)
    channels = decoded.pixels.shape[-1]
    expected = np.stack(
        [
            np.bincount(decoded.pixels[..., c].ravel(), minlength=256)
            for c in range(channels)
        ]
    )
    assert decoded.histogram.dtype == np.int64
    assert np.array_equal(decoded.histogram, expected)


def test_histogram_absent_for_uint16() -> None:
    data = encode(photo_like(40, 30, seed=6), "PNG")
    decoded = decode(data, height=8, width=8, dtype="uint16")
    assert decoded.histogram is None
