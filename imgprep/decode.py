"""Decode one image file's bytes into a fixed-shape pixel array.

:func:`decode_image` is the whole per-file cost of the ingest step. It decodes the first
frame fully, turns it upright, converts its colours and bit depth, and resizes it to
``(settings.height, settings.width, settings.channels)`` with dtype ``settings.dtype``.
A file that cannot be used raises :class:`~imgprep.errors.Quarantined` with one of
these reason codes:

``empty``
    The file has 0 bytes.
``not_an_image``
    No Pillow plugin identifies the bytes (:class:`PIL.UnidentifiedImageError`).
``truncated``
    The data ends before all pixels are decoded: Pillow reports "image file is
    truncated", "Truncated File Read", "truncated PNG file" or "not enough image
    data", or "Expected to read N bytes but only got M", or raises
    :class:`EOFError`. Pillow's load-truncated mode
    (``ImageFile.LOAD_TRUNCATED_IMAGES``) is never enabled.
``corrupt``
    Any other error while opening or decoding: a broken data stream, invalid header
    values, :mod:`struct` errors, a plugin that Pillow has but cannot run here (EPS
    without Ghostscript, GRIB/BUFR/HDF5 stubs) and so on. The message names the
    exception type and its text.
``too_many_pixels``
    ``width * height`` from the header is above ``settings.max_image_pixels``. The
    check runs before any pixel data is decoded. Pillow's own
    :class:`PIL.Image.DecompressionBombError` maps here too: Pillow 13 raises it above
    ``2 * Image.MAX_IMAGE_PIXELS`` (178,956,970 by default) whatever the setting,
    because this module never changes ``Image.MAX_IMAGE_PIXELS``.
``unsupported_mode``
    The source mode has no conversion rule below (Pillow cannot convert it to RGB),
    or it is a 32-bit integer ``I`` or float ``F`` image and
    ``settings.wide_modes`` is ``reject``.
``decode_timeout``
    Raised by :func:`time_limit` around the call, never by :func:`decode_image`
    itself. The limit applies in the main thread and in other threads. The
    docstring of :func:`time_limit` says what it cannot interrupt.

Only :class:`MemoryError` and :class:`BaseException` subclasses that are not
:class:`Exception` (such as :class:`KeyboardInterrupt`) leave :func:`decode_image`
as something other than :class:`~imgprep.errors.Quarantined`.

Rules
-----
Frames
    Multi-frame files (GIF, TIFF, WebP, APNG, MPO, ICO...) use the first frame.
    ``info["frames"]`` is ``n_frames``, or 1 with the warning ``frame_count_failed``
    when counting the later frames fails.
Orientation
    The EXIF Orientation tag (or the XMP ``tiff:Orientation`` that Pillow reads) is
    applied with the transposes of :func:`PIL.ImageOps.exif_transpose` before any
    resizing. A value outside 1..8 is ignored with the warning
    ``invalid_orientation``.
JPEG draft
    Draft applies to JPEG and MPO sources when ``settings.jpeg_draft`` is on and the
    policy scales the image (every policy but ``center_crop``). The policy's covering
    size is the smallest whole-image size it can resample from without losing
    detail. When that size is at most half the stored width and half the stored
    height, the decoder is asked for the smallest DCT scale (1/2, 1/4 or 1/8) that
    still covers it. The covering size is computed on the upright image and swapped
    for orientations 5-8, whose stored width and height are the upright height and
    width.
Colour
    Every kind of transparency is composited onto ``settings.background`` (its luma
    for L output) with alpha blending. This covers RGBA, LA, PA and premultiplied
    RGBa and La images. It covers P images with a ``transparency`` entry (one index
    or a per-entry alpha table), which go through RGBA. It also covers 1, L, RGB,
    I;16 and I images with a transparent colour key. CMYK with
    an embedded ICC profile goes through that profile to sRGB with LittleCMS
    (``cmyk_icc``). CMYK without a profile, or with one LittleCMS rejects, uses
    Pillow's naive conversion (``cmyk_naive``). YCbCr, LAB, HSV and RGBX use Pillow's
    conversion to RGB.
16-bit sources
    ``I;16``, ``I;16L``, ``I;16B`` and ``I;16N`` images are 16-bit. An ``I`` image
    is 16-bit when its format cannot store more than 16 bits per sample (PNG and
    PPM/PGM), or when it is a TIFF whose BitsPerSample is at most 16, and, in both
    cases, all its values lie in 0..65535. Every other ``I`` image is a 32-bit (wide)
    image. The rule reads the format and header first, so a 32-bit image whose
    values happen to be small is still wide. 16-bit values are kept exactly
    for dtype uint16. For uint8 output, ``settings.sixteen_bit`` picks ``shift``
    (value >> 8) or ``rescale`` (the image's min..max to 0..255, and 0 for a constant
    image). Resizing of 16-bit and wide data runs in Pillow's float mode ``F``.
Wide sources
    32-bit ``I`` and ``F`` images are rejected (``wide_modes: reject``) or mapped from
    their finite min..max to the output range (``wide_modes: rescale``). NaN and
    infinite values become 0.
8-bit and 1-bit sources
    For dtype uint16, 8-bit values are multiplied by 257, so 255 becomes 65535. 1-bit
    pixels become 0 and 255 (or 0 and 65535).
Bit depth
    ``info["bit_depth"]`` is the bits per sample that the header declares (TIFF
    BitsPerSample, the PNG IHDR bit depth of non-palette images, 16 for PPM/PGM
    decoded as ``I``). Otherwise it is 1 for mode ``1``, 16 for 16-bit and 32 for
    wide images, and 8 for the rest. Pillow 13 decodes 16-bit colour images such as
    16-bit RGB TIFFs to 8 bits per sample, and those files get the warning
    ``decoded_as_8bit``.
PNG without IEND
    A PNG whose bytes contain no IEND chunk is accepted when Pillow decoded every
    row of pixel data, because the pixels are complete. It carries the warning
    ``missing_iend``. A PNG whose pixel data itself ends early is ``truncated``.

Warnings that Pillow emits while a file is decoded in the main thread are captured and
listed in ``info["warnings"]`` as ``pillow: <category>: <text>``. Pillow's
:class:`~PIL.Image.DecompressionBombWarning` is dropped, because the pixel limit is
this module's own check. In other threads the warnings reach the caller's warning
filters, because :class:`warnings.catch_warnings` changes process-wide state and is
not safe to enter from several threads at once in Python 3.11.
"""

from __future__ import annotations

import array as array_module
import ctypes
import io
import logging
import math
import os
import signal
import struct
import threading
import time
import warnings
import zlib
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from imgprep.config import ImageSettings
from imgprep.errors import Quarantined

__all__ = [
    "SNIFF_BYTES",
    "DecodedImage",
    "decode_image",
    "opened_format_for_name",
    "sniff_format",
    "time_limit",
]

logger = logging.getLogger(__name__)

SNIFF_BYTES = 4096
"""Leading bytes that :func:`sniff_format` needs.

Magic numbers use the first 16 bytes, as :func:`PIL.Image.open` does. The file name
fallback parses whole headers, and the largest of them (PCD) ends at byte 3,587.
"""

# Image.open passes this many leading bytes to each plugin's accept function.
_ACCEPT_PREFIX_BYTES = 16

_ORIENTATION_TAG = 0x0112
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_EXIF_INFO_KEYS = ("exif", "Raw profile type exif", "XML:com.adobe.xmp", "xmp")

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_HIGH_DEPTH_MODES = _SIXTEEN_BIT_MODES | {"I", "F"}
_PREMULTIPLIED_MODES = {"RGBa": "RGBA", "La": "LA"}
_MODE_BITS = {"1": 1, "I": 32, "F": 32}

_RESAMPLING = {member.name.lower(): member for member in Image.Resampling}

_DRAFT_FORMATS = frozenset({"JPEG", "MPO"})

_TRUNCATION_TEXTS = (
    "image file is truncated",
    "truncated file read",
    "truncated png file",
    "not enough image data",
    "but only got",
)

# After the first alarm, the timer repeats at this interval so that a timeout which a
# library swallows in a broad ``except`` is raised again.
_ALARM_REPEAT_S = 0.05


@dataclass(frozen=True)
class DecodedImage:
    """One decoded, upright, converted and resized image.

    Attributes
    ----------
    pixels : numpy.ndarray
        Read-only C-contiguous array of shape ``(settings.height, settings.width,
        settings.channels)`` and dtype ``settings.dtype``.
    info : dict
        JSON-ready facts about the source: ``format``, ``mode``, ``source_width``,
        ``source_height`` (as stored, before orientation), ``frames``,
        ``orientation`` (1..8), ``bit_depth``, ``conversions`` (rule names in the
        order they ran) and ``warnings``.
    histogram : numpy.ndarray or None
        For uint8 output, the per-channel counts of ``pixels`` as an int64 array of
        shape ``(channels, 256)``, counted by Pillow on the final image, which is
        several times faster than ``np.bincount``. None for uint16 output.
    """

    pixels: np.ndarray
    info: dict[str, Any]
    histogram: np.ndarray | None = None


@dataclass(frozen=True)
class _Layout:
    """Placement of the source on the output canvas.

    ``box`` is the source region that is read, ``size`` the size it is resampled to
    and ``offset`` its top-left corner on the output. The output needs a background
    canvas whenever ``size`` differs from the output size.
    """

    box: tuple[float, float, float, float]
    size: tuple[int, int]
    offset: tuple[int, int]


# ---------------------------------------------------------------------------
# Public API


def decode_image(data: bytes, settings: ImageSettings) -> DecodedImage:
    """Decode one file's bytes fully into the configured shape and dtype.

    Parameters
    ----------
    data : bytes
        The whole file.
    settings : ImageSettings
        Output size, colour mode, dtype, resize policy and limits.

    Returns
    -------
    DecodedImage
        The pixels and the facts about the source listed in :class:`DecodedImage`.

    Raises
    ------
    Quarantined
        When the file cannot be used; ``reason`` is one of the codes in the module
        docstring.
    """
    if not data:
        raise Quarantined("empty", "file is 0 bytes")
    try:
        with _captured_warnings() as caught:
            return _decode(data, settings, caught)
    except Quarantined:
        raise
    except MemoryError:
        raise
    except Image.DecompressionBombError as error:
        raise Quarantined(
            "too_many_pixels",
            f"{error} Pillow raises this above 2 * PIL.Image.MAX_IMAGE_PIXELS "
            "whatever image.max_image_pixels says",
        ) from None
    except UnidentifiedImageError:
        raise Quarantined(
            "not_an_image",
            f"no Pillow plugin identifies the bytes as an image (they start with "
            f"{data[:8]!r})",
        ) from None
    except Exception as error:
        raise _quarantine_for(error) from error


# Signatures of the formats most datasets consist of. No other Pillow format starts
# with these bytes, so the scan names them without parsing a header; decode_image
# still decides from the whole file (a JPEG signature may turn out to be MPO).
_COMMON_SIGNATURES = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
)


def _common_format(prefix: bytes) -> str | None:
    for signature, format_name in _COMMON_SIGNATURES:
        if prefix.startswith(signature):
            return format_name
    if prefix[:4] == b"RIFF" and prefix[8:12] == b"WEBP":
        return "WEBP"
    return None


def sniff_format(prefix: bytes, name: str = "") -> str | None:
    """Return the Pillow format that the first bytes of a file identify.

    The plugins whose magic-number check accepts the first 16 bytes are tried in
    Pillow's search order, as :func:`PIL.Image.open` does. The first one whose header
    parser does not reject the prefix as another format is returned. When every
    accepting plugin rejects it, the formats without a magic number are tried: the
    one the file name's extension names, then those Pillow registers no extension
    for (IMT and SPIDER in Pillow 13), which :func:`PIL.Image.open` tries on every
    file. The first whose header parses is returned. When that fails too and the
    prefix is the whole file, the result is None. For a longer file it is the first
    accepting plugin, because a header that runs past the prefix cannot be checked.
    Such a file can get the name of a format whose magic number it shares: an
    uncompressed TGA without a ``.tga`` name gives ``"CUR"``.

    Parameters
    ----------
    prefix : bytes
        The first :data:`SNIFF_BYTES` bytes of the file, or all of a shorter file.
    name : str
        File name or path. Its extension is used only for formats without a magic
        number (TGA, IM, IPTC, PCD).

    Returns
    -------
    str or None
        A Pillow format name such as ``"JPEG"`` or ``"PNG"``; files that start with
        the JPEG signature give ``"JPEG"``, MPO included. None when no
        plugin claims the bytes. A truncated or corrupt file of a known format still
        gives that format's name, and :func:`decode_image` then rejects it.
    """
    common = _common_format(prefix)
    if common is not None:
        return common
    Image.init()
    head = prefix[:_ACCEPT_PREFIX_BYTES]
    candidates = [
        format_name for format_name in Image.ID if _accepts(format_name, head)
    ]
    for format_name in candidates:
        parsed = _parse_header(format_name, prefix, name)
        if parsed is not None:
            return parsed
    without_magic = _sniff_without_magic(prefix, name)
    if without_magic is not None:
        return without_magic
    if not candidates or len(prefix) < SNIFF_BYTES:
        return None
    return candidates[0]


def time_limit(seconds: float) -> AbstractContextManager[None]:
    """Return a context manager that quarantines a body running over ``seconds``.

    The body is interrupted with ``Quarantined("decode_timeout", ...)``:

    * In the main thread on POSIX systems, ``SIGALRM`` and :func:`signal.setitimer`
      raise it. This also interrupts blocking system calls such as ``time.sleep``.
      An enclosing timer that expires sooner stays in charge, and the previous
      handler and timer are restored on exit.
    * In any other thread (the ``thread`` runner, Dask workers), a watchdog thread
      raises it in the decoding thread with CPython's
      ``PyThreadState_SetAsyncExc``. It fires once. If the body then fails with
      another :class:`~imgprep.errors.Quarantined` reason, because a library
      turned the timeout into its own error, the reason becomes
      ``decode_timeout``.

    Either way the error is raised between Python bytecodes, so one long C call
    (a single resize of a huge image) finishes before it is raised.

    NOTE: in threads a blocking system call is not interrupted, and code that
    catches the timeout and carries on decoding runs to its end. Such a file
    gets its own outcome, late. Both cases work in the main thread, where the
    alarm repeats every 50 ms until the body exits.

    Parameters
    ----------
    seconds : float
        Wall-clock limit, greater than 0.

    Raises
    ------
    ValueError
        When ``seconds`` is not a finite positive number.
    Quarantined
        With reason ``decode_timeout`` when the limit passes inside the body.
    """
    if not (
        isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds > 0
    ):
        raise ValueError(
            f"time limit must be a finite number of seconds above 0, got {seconds!r}"
        )
    if hasattr(signal, "setitimer") and (
        threading.current_thread() is threading.main_thread()
    ):
        return _alarm_limit(seconds)
    return _ThreadLimit(seconds)


def _timeout_error(seconds: float) -> Quarantined:
    return Quarantined(
        "decode_timeout",
        f"decoding took longer than {seconds:g} s; raise ingest.decode_timeout_s if "
        "files this slow are expected",
    )


@contextmanager
def _alarm_limit(seconds: float) -> Iterator[None]:
    """Apply :func:`time_limit` with ``SIGALRM`` in the main thread."""
    previous_delay, previous_interval = signal.getitimer(signal.ITIMER_REAL)
    if 0 < previous_delay <= seconds:
        yield
        return

    armed = True

    def on_alarm(signum: int, frame: Any) -> None:
        if armed:
            raise _timeout_error(seconds)

    try:
        previous_handler = signal.signal(signal.SIGALRM, on_alarm)
    except ValueError:  # signal handlers can only be set in the main interpreter
        with _ThreadLimit(seconds):
            yield
        return
    started = time.monotonic()
    signal.setitimer(signal.ITIMER_REAL, seconds, _ALARM_REPEAT_S)
    try:
        yield
    finally:
        # The nested try keeps the restore running even when an alarm that was
        # already pending raises on the first line.
        try:
            armed = False
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(
                signal.SIGALRM,
                signal.SIG_DFL if previous_handler is None else previous_handler,
            )
            if previous_delay > 0:
                remaining = previous_delay - (time.monotonic() - started)
                signal.setitimer(
                    signal.ITIMER_REAL, max(remaining, 1e-6), previous_interval
                )


class _ThreadTimeout(Quarantined):
    """The timeout the watchdog raises asynchronously in a thread.

    CPython creates the exception without arguments. It is a
    :class:`~imgprep.errors.Quarantined`, so a caller that catches quarantines
    records ``decode_timeout`` even when it escapes :class:`_ThreadLimit`.
    """

    def __init__(self) -> None:
        super().__init__(
            "decode_timeout", "decoding took longer than ingest.decode_timeout_s"
        )


@dataclass(eq=False)
class _Deadline:
    """One armed limit: the thread to interrupt and when (``time.monotonic``)."""

    thread_id: int
    due: float
    fired: bool = False


def _raise_in_thread(thread_id: int, exception: type[BaseException] | None) -> None:
    """Schedule ``exception`` in a thread, or clear a scheduled one with None."""
    argument = None if exception is None else ctypes.py_object(exception)
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), argument)


class _Watchdog:
    """A daemon thread that raises :class:`_ThreadTimeout` in threads past due.

    Firing and disarming both hold one lock. :meth:`disarm` clears a scheduled
    timeout that was not raised yet, so after it returns no timeout reaches the
    thread. The decoding thread takes only plain locks, whose ``with`` entry and
    exit run in C, so a timeout raised while such a lock is held still releases
    it. ``threading.Condition`` and ``Event`` enter in Python code, where a timeout
    could leave their lock held.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Locked while no wake request is pending. Releasing it wakes the watchdog
        # thread early.
        self._wake = threading.Lock()
        self._wake.acquire()
        self._deadlines: set[_Deadline] = set()
        self._started = False

    def arm(self, seconds: float) -> _Deadline:
        deadline = _Deadline(threading.get_ident(), time.monotonic() + seconds)
        with self._lock:
            if not self._started:
                threading.Thread(
                    target=self._run, name="imgprep-decode-watchdog", daemon=True
                ).start()
                self._started = True
            earliest = min((d.due for d in self._deadlines), default=math.inf)
            self._deadlines.add(deadline)
            if deadline.due < earliest and self._wake.locked():
                self._wake.release()
        return deadline

    def disarm(self, deadline: _Deadline) -> None:
        with self._lock:
            self._deadlines.discard(deadline)
            if deadline.fired:
                _raise_in_thread(deadline.thread_id, None)

    def _run(self) -> None:
        while True:
            with self._lock:
                now = time.monotonic()
                for deadline in [d for d in self._deadlines if d.due <= now]:
                    self._deadlines.discard(deadline)
                    deadline.fired = True
                    _raise_in_thread(deadline.thread_id, _ThreadTimeout)
                earliest = min((d.due for d in self._deadlines), default=None)
            wait = -1 if earliest is None else max(earliest - now, 0.0)
            self._wake.acquire(timeout=wait)


_watchdog = _Watchdog()


def _new_watchdog_in_child() -> None:
    # A forked child has no watchdog thread, and its lock may be held by a thread
    # that does not exist there.
    global _watchdog
    _watchdog = _Watchdog()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_watchdog_in_child)


class _ThreadLimit:
    """Apply :func:`time_limit` with the watchdog thread, in any thread."""

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._watchdog = _watchdog
        self._deadline: _Deadline | None = None

    def __enter__(self) -> None:
        self._deadline = self._watchdog.arm(self._seconds)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: Any,
    ) -> bool:
        deadline = self._deadline
        assert deadline is not None, "time limit exited without being entered"
        timed_out = isinstance(exc, _ThreadTimeout)
        while True:
            try:
                self._watchdog.disarm(deadline)
                break
            except _ThreadTimeout:  # the timeout arrived while disarming
                timed_out = True
        if timed_out or (deadline.fired and isinstance(exc, Quarantined)):
            raise _timeout_error(self._seconds) from None
        return False


# ---------------------------------------------------------------------------
# Decoding steps


def _decode(
    data: bytes, settings: ImageSettings, caught: list[warnings.WarningMessage]
) -> DecodedImage:
    conversions: list[str] = []
    notes: list[str] = []
    with Image.open(io.BytesIO(data)) as image:
        source_format = image.format or ""
        source_mode = image.mode
        source_width, source_height = image.size
        _check_pixel_count(source_width, source_height, settings)
        frames = _count_frames(image, notes)
        declared_bits = _declared_bits(image, source_format, data)

        # PNG may store EXIF after the pixel data, so its tag is read after load().
        # TIFF reads its tags from the file, which load() detaches, so it and every
        # other format are read before.
        orientation = 1 if source_format == "PNG" else _orientation(image, notes)
        scale = _draft_scale(image, source_format, orientation, settings)
        fast = _decode_with_simplejpeg(data, image, source_format, scale, settings)
        if scale > 1:
            conversions.append("jpeg_draft")
        if fast is not None:
            decoded = fast
        else:
            if scale > 1:
                width, height = image.size
                image.draft(image.mode, (width // scale, height // scale))
            image.load()
            decoded = image
        if source_format == "PNG":
            orientation = _orientation(image, notes)
            if data.rfind(b"IEND") < 0:
                notes.append("missing_iend")

        histogram = None
        if decoded.mode in _HIGH_DEPTH_MODES:
            pixels, bit_depth = _convert_high_depth(
                decoded,
                source_format,
                declared_bits,
                orientation,
                settings,
                conversions,
            )
        else:
            pixels, histogram = _convert_8bit(
                decoded, orientation, settings, conversions, notes
            )
            bit_depth = declared_bits or _MODE_BITS.get(source_mode, 8)
            if bit_depth > 8:
                notes.append("decoded_as_8bit")

    pixels.flags.writeable = False
    notes.extend(_warning_notes(caught))
    info: dict[str, Any] = {
        "format": source_format,
        "mode": source_mode,
        "source_width": source_width,
        "source_height": source_height,
        "frames": frames,
        "orientation": orientation,
        "bit_depth": bit_depth,
        "conversions": conversions,
        "warnings": notes,
    }
    return DecodedImage(pixels=pixels, info=info, histogram=histogram)


def _check_pixel_count(width: int, height: int, settings: ImageSettings) -> None:
    if width <= 0 or height <= 0:
        raise Quarantined(
            "corrupt", f"header declares an empty image of {width}x{height} pixels"
        )
    pixels = width * height
    if pixels > settings.max_image_pixels:
        raise Quarantined(
            "too_many_pixels",
            f"header declares {width}x{height} = {pixels:,} pixels, above "
            f"image.max_image_pixels = {settings.max_image_pixels:,}; raise that "
            "setting to accept such images",
        )


def _count_frames(image: Image.Image, notes: list[str]) -> int:
    try:
        return int(getattr(image, "n_frames", 1))
    except (MemoryError, Image.DecompressionBombError, Quarantined):
        raise
    except Exception as error:
        # Counting walks every frame, and a broken later frame must not reject a
        # usable first frame.
        logger.debug("counting frames failed: %s: %s", type(error).__name__, error)
        notes.append("frame_count_failed")
        image.seek(0)
        return 1


def _declared_bits(image: Image.Image, source_format: str, data: bytes) -> int | None:
    """Return the bits per sample that the file header declares, or None."""
    if source_format == "TIFF":
        bits = getattr(image, "tag_v2", {}).get(258)
        if isinstance(bits, tuple) and bits:
            return int(max(bits))
        if isinstance(bits, int):
            return bits
        return None
    if source_format == "PNG" and data[12:16] == b"IHDR" and len(data) >= 26:
        colour_type = data[25]
        if colour_type != 3:  # palette PNGs declare index bits, not sample bits
            return int(data[24])
        return None
    if source_format == "PPM" and image.mode in ("I", "I;16"):
        return 16
    return None


def _orientation(image: Image.Image, notes: list[str]) -> int:
    if not hasattr(image, "tag_v2") and not any(
        key in image.info for key in _EXIF_INFO_KEYS
    ):
        return 1
    try:
        value = image.getexif().get(_ORIENTATION_TAG, 1)
    except (MemoryError, Image.DecompressionBombError, Quarantined):
        raise
    except Exception as error:
        logger.debug("reading EXIF failed: %s: %s", type(error).__name__, error)
        notes.append("invalid_exif")
        return 1
    if isinstance(value, int) and 1 <= value <= 8:
        return value
    notes.append("invalid_orientation")
    return 1


def _draft_scale(
    image: Image.Image, source_format: str, orientation: int, settings: ImageSettings
) -> int:
    """Return the JPEG reduction (1, 2, 4 or 8) to decode at, as Pillow's draft picks.

    The JPEG decoder can scale by 1/2, 1/4 or 1/8 while decoding. It is used when the
    output needs at most half the stored size in both directions, with the largest
    reduction that still covers what the resize policy needs (the rule of
    ``JpegImageFile.draft`` in Pillow 13).
    """
    if (
        not settings.jpeg_draft
        or source_format not in _DRAFT_FORMATS
        or settings.resize == "center_crop"
    ):
        return 1
    stored_width, stored_height = image.size
    swapped = orientation >= 5
    upright = (
        (stored_height, stored_width) if swapped else (stored_width, stored_height)
    )
    need_width, need_height = _covering_size(upright, settings)
    if swapped:
        need_width, need_height = need_height, need_width
    if need_width * 2 > stored_width or need_height * 2 > stored_height:
        return 1
    ratio = min(stored_width // need_width, stored_height // need_height)
    return next(scale for scale in (8, 4, 2, 1) if ratio >= scale)


def _decode_with_simplejpeg(
    data: bytes,
    image: Image.Image,
    source_format: str,
    scale: int,
    settings: ImageSettings,
) -> Image.Image | None:
    """Decode a plain RGB or gray JPEG with libjpeg-turbo through simplejpeg.

    simplejpeg decodes about a quarter faster than Pillow and, asked for the size
    Pillow's draft would give, returns identical pixels (checked by a test). Any
    other JPEG (CMYK, a frame Pillow would pick differently), a missing simplejpeg
    or any error from it returns None, and Pillow decodes the file instead, so
    every reason code still comes from Pillow.
    """
    if (
        settings.jpeg_decoder != "auto"
        or source_format not in _DRAFT_FORMATS
        or image.mode not in ("RGB", "L")
    ):
        return None
    simplejpeg = _simplejpeg()
    if simplejpeg is None:
        return None
    width, height = image.size
    colorspace = "RGB" if image.mode == "RGB" else "GRAY"
    try:
        array = simplejpeg.decode_jpeg(
            data,
            colorspace=colorspace,
            min_width=-(-width // scale),
            min_height=-(-height // scale),
            strict=True,
        )
    except Exception:  # Pillow decodes it again and names the problem
        return None
    expected = (-(-height // scale), -(-width // scale))
    if array.shape[:2] != expected:
        return None
    if colorspace == "GRAY":
        array = array[:, :, 0]
    return Image.fromarray(array)


@lru_cache(maxsize=1)
def _simplejpeg() -> Any:
    try:
        import simplejpeg
    except ImportError:
        return None
    return simplejpeg


def _covering_size(
    upright: tuple[int, int], settings: ImageSettings
) -> tuple[int, int]:
    """Return the smallest whole-image size from which the policy loses no detail."""
    width, height = upright
    if settings.resize == "stretch":
        return settings.width, settings.height
    if settings.resize == "pad":
        return _fit_size(width, height, settings.width, settings.height)
    scale = max(settings.width / width, settings.height / height)
    # The small tolerance keeps float error from adding a pixel to an exact size.
    return (
        max(1, math.ceil(width * scale - 1e-9)),
        max(1, math.ceil(height * scale - 1e-9)),
    )


# ---------------------------------------------------------------------------
# 8-bit sources


def _convert_8bit(
    image: Image.Image,
    orientation: int,
    settings: ImageSettings,
    conversions: list[str],
    notes: list[str],
) -> tuple[np.ndarray, np.ndarray | None]:
    work = _to_output_mode(image, settings, conversions, notes)
    if orientation != 1:
        work = work.transpose(_TRANSPOSE[orientation])
        conversions.append("exif_transpose")
    fill = settings.background if work.mode == "RGB" else _luma(settings.background)
    work = _place_8bit(work, settings, fill, conversions)
    array = np.asarray(work)
    if array.ndim == 2:
        array = array[:, :, np.newaxis]
    if settings.dtype == "uint16":
        array = array.astype(np.uint16)
        array *= 257
        conversions.append("scale_8_to_16")
        return array, None
    counts = np.frombuffer(array_module.array("q", work.histogram()), dtype=np.int64)
    return array, counts.reshape(array.shape[-1], 256)


def _to_output_mode(
    image: Image.Image,
    settings: ImageSettings,
    conversions: list[str],
    notes: list[str],
) -> Image.Image:
    """Return ``image`` as RGB or L with any transparency composited."""
    target = settings.color_mode
    mode = image.mode
    transparency = image.info.get("transparency")

    if mode in _PREMULTIPLIED_MODES:
        image = image.convert(_PREMULTIPLIED_MODES[mode])
        mode = image.mode
    if mode == "PA" or (
        mode == "P"
        and (
            transparency is not None
            or (image.palette is not None and "A" in image.palette.mode)
        )
    ):
        # Plain convert("RGB") of a palette with an alpha table drops the alpha and
        # warns, so P goes through RGBA.
        image = image.convert("RGBA")
        mode = "RGBA"
        conversions.append("palette_to_rgba")
    elif mode in ("1", "L", "RGB") and transparency is not None:
        alpha_mode = "LA" if mode != "RGB" and target == "L" else "RGBA"
        image = image.convert(alpha_mode)
        mode = alpha_mode
        conversions.append("transparency_to_alpha")

    if mode in ("RGBA", "LA"):
        return _composite(image, settings, conversions)
    if mode == "CMYK":
        image = _cmyk_to_rgb(image, conversions, notes)
        mode = "RGB"
    if mode == target:
        return image
    if mode not in ("1", "L", "P", "RGB"):
        image = _convert_or_reject(image, "RGB")
        conversions.append("to_RGB")
        if target == "RGB":
            return image
    image = _convert_or_reject(image, target)
    conversions.append(f"to_{target}")
    return image


def _composite(
    image: Image.Image, settings: ImageSettings, conversions: list[str]
) -> Image.Image:
    if settings.color_mode == "L":
        if image.mode != "LA":
            image = image.convert("LA")
            conversions.append("to_L")
        base = Image.new("L", image.size, _luma(settings.background))
    else:
        if image.mode != "RGBA":
            image = image.convert("RGBA")
            conversions.append("to_RGB")
        base = Image.new("RGB", image.size, settings.background)
    # paste() with the image as mask blends by its alpha band:
    # out = src * a / 255 + base * (1 - a / 255).
    base.paste(image, (0, 0), image)
    conversions.append("alpha_composite")
    return base


def _cmyk_to_rgb(
    image: Image.Image, conversions: list[str], notes: list[str]
) -> Image.Image:
    profile = image.info.get("icc_profile")
    if profile:
        from PIL import ImageCms

        try:
            converted = ImageCms.applyTransform(image, _cmyk_transform(bytes(profile)))
        except (ImageCms.PyCMSError, OSError, ValueError, TypeError) as error:
            logger.debug("ICC conversion failed, using naive CMYK: %s", error)
            notes.append("invalid_icc_profile")
        else:
            if converted is not None:
                conversions.append("cmyk_icc")
                return converted
    conversions.append("cmyk_naive")
    return image.convert("RGB")


@lru_cache(maxsize=8)
def _cmyk_transform(profile: bytes) -> Any:
    from PIL import ImageCms

    source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
    # The transform is cached and shared between threads. NOCACHE turns off
    # LittleCMS's 1-pixel cache, so sharing does not rely on that cache.
    return ImageCms.buildTransform(
        source,
        _srgb_profile(),
        "CMYK",
        "RGB",
        flags=ImageCms.Flags.NOCACHE,
    )


@lru_cache(maxsize=1)
def _srgb_profile() -> Any:
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


def _convert_or_reject(image: Image.Image, mode: str) -> Image.Image:
    try:
        return image.convert(mode)
    except ValueError as error:
        raise Quarantined(
            "unsupported_mode",
            f"source mode {image.mode!r} has no conversion to {mode} ({error}); "
            "convert such files to RGB or L before ingest",
        ) from None


@lru_cache(maxsize=64)
def _luma(background: tuple[int, int, int]) -> int:
    """Return Pillow's L value (ITU-R 601-2 luma) of an RGB colour."""
    return int(Image.new("RGB", (1, 1), background).convert("L").getpixel((0, 0)))


def _place_8bit(
    image: Image.Image,
    settings: ImageSettings,
    fill: int | tuple[int, int, int],
    conversions: list[str],
) -> Image.Image:
    output_size = (settings.width, settings.height)
    if image.size == output_size:
        return image
    layout = _layout(image.size, settings)
    placed = _resample(image, layout, _RESAMPLING[settings.filter], conversions)
    if layout.size == output_size:
        return placed
    canvas = Image.new(image.mode, output_size, fill)
    canvas.paste(placed, layout.offset)
    conversions.append("pad")
    return canvas


# ---------------------------------------------------------------------------
# Geometry shared by both paths


def _fit_size(
    width: int, height: int, out_width: int, out_height: int
) -> tuple[int, int]:
    scale = min(out_width / width, out_height / height)
    return (
        min(out_width, max(1, round(width * scale))),
        min(out_height, max(1, round(height * scale))),
    )


def _layout(size: tuple[int, int], settings: ImageSettings) -> _Layout:
    width, height = size
    out_width, out_height = settings.width, settings.height
    full = (0.0, 0.0, float(width), float(height))
    if settings.resize == "stretch":
        return _Layout(full, (out_width, out_height), (0, 0))
    if settings.resize == "pad":
        fit_width, fit_height = _fit_size(width, height, out_width, out_height)
        offset = ((out_width - fit_width) // 2, (out_height - fit_height) // 2)
        return _Layout(full, (fit_width, fit_height), offset)
    if settings.resize == "shorter_side_crop":
        # Resampling the centred source region straight to the output size equals
        # scaling the whole image to cover the output and cropping its centre.
        scale = max(out_width / width, out_height / height)
        box_width, box_height = out_width / scale, out_height / scale
        left, top = (width - box_width) / 2, (height - box_height) / 2
        box = (left, top, left + box_width, top + box_height)
        return _Layout(box, (out_width, out_height), (0, 0))
    # center_crop: the central output-sized window at source resolution.
    left = (width - out_width) // 2
    top = (height - out_height) // 2
    x0, y0 = max(0, left), max(0, top)
    x1, y1 = min(width, left + out_width), min(height, top + out_height)
    return _Layout(
        (float(x0), float(y0), float(x1), float(y1)),
        (x1 - x0, y1 - y0),
        (x0 - left, y0 - top),
    )


def _resample(
    image: Image.Image,
    layout: _Layout,
    resample: Image.Resampling,
    conversions: list[str],
) -> Image.Image:
    width, height = image.size
    left, top, right, bottom = layout.box
    whole = layout.box == (0.0, 0.0, float(width), float(height))
    same_scale = layout.size == (right - left, bottom - top)
    if same_scale:
        if whole:
            return image
        conversions.append("crop")
        return image.crop((int(left), int(top), int(right), int(bottom)))
    conversions.append("resize")
    if whole:
        return image.resize(layout.size, resample)
    conversions.append("crop")
    return image.resize(layout.size, resample, box=layout.box)


# ---------------------------------------------------------------------------
# 16-bit and wide sources


def _convert_high_depth(
    image: Image.Image,
    source_format: str,
    declared_bits: int | None,
    orientation: int,
    settings: ImageSettings,
    conversions: list[str],
) -> tuple[np.ndarray, int]:
    """Convert I;16*, I and F images in float32, returning pixels and bit depth."""
    values = np.asarray(image)
    sixteen_bit = _is_sixteen_bit(image.mode, values, source_format, declared_bits)
    if sixteen_bit:
        bit_depth = declared_bits if declared_bits and declared_bits <= 16 else 16
    else:
        bit_depth = 32
        if settings.wide_modes == "reject":
            kind = "32-bit float" if image.mode == "F" else "32-bit integer"
            raise Quarantined(
                "unsupported_mode",
                f"source mode {image.mode!r} ({kind}) is rejected by "
                "image.wide_modes: reject; set image.wide_modes: rescale to map each "
                "image's min..max to the output range",
            )

    output_max = 65535.0 if settings.dtype == "uint16" else 255.0
    shift = (
        sixteen_bit and settings.dtype == "uint8" and settings.sixteen_bit == "shift"
    )
    if sixteen_bit and (settings.dtype == "uint16" or shift):
        # Keep 16-bit units; shift takes the high byte after resampling.
        mapped = values.astype(np.float32)
        scale_max = 65535.0
        if shift:
            conversions.append("sixteen_bit_shift")
    else:
        mapped = _rescale(values, output_max)
        scale_max = output_max
        conversions.append("sixteen_bit_rescale" if sixteen_bit else "wide_rescale")

    alpha = _key_alpha(image, values)
    if alpha is not None:
        mapped *= alpha
        conversions.append("transparency_to_alpha")

    planes = [Image.fromarray(mapped)]
    if alpha is not None:
        planes.append(Image.fromarray(alpha))
    if orientation != 1:
        planes = [plane.transpose(_TRANSPOSE[orientation]) for plane in planes]
        conversions.append("exif_transpose")

    background = np.asarray(settings.background, dtype=np.float64)
    if settings.color_mode == "L":
        background = np.asarray([_luma(settings.background)], dtype=np.float64)
    background *= scale_max / 255.0

    result = _place_high_depth(planes, settings, background, conversions)
    np.rint(result, out=result)
    np.clip(result, 0.0, scale_max, out=result)
    if shift:
        pixels = (result.astype(np.uint16) >> 8).astype(np.uint8)
    else:
        pixels = result.astype(settings.dtype)
    if settings.color_mode == "RGB":
        conversions.append("to_RGB")
    return np.ascontiguousarray(pixels), bit_depth


def _is_sixteen_bit(
    mode: str, values: np.ndarray, source_format: str, declared_bits: int | None
) -> bool:
    """Apply the module's 16-bit rule to an I;16*, I or F image."""
    if mode in _SIXTEEN_BIT_MODES:
        return True
    if mode != "I" or values.size == 0:
        return False
    if source_format == "TIFF":
        declares_sixteen = declared_bits is not None and declared_bits <= 16
    else:
        declares_sixteen = source_format in ("PNG", "PPM")
    return declares_sixteen and int(values.min()) >= 0 and int(values.max()) <= 65535


def _rescale(values: np.ndarray, output_max: float) -> np.ndarray:
    """Map the finite min..max of ``values`` to 0..output_max as float32."""
    finite = np.isfinite(values) if values.dtype.kind == "f" else None
    sample = values[finite] if finite is not None else values
    if sample.size == 0:
        return np.zeros(values.shape, dtype=np.float32)
    low, high = float(sample.min()), float(sample.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.float32)
    # float64 keeps 32-bit integers exact while the minimum is subtracted.
    mapped = np.subtract(values, low, dtype=np.float64)
    mapped *= output_max / (high - low)
    if finite is not None:
        mapped[~finite] = 0.0
    return mapped.astype(np.float32)


def _key_alpha(image: Image.Image, values: np.ndarray) -> np.ndarray | None:
    """Return 0/1 float32 alpha for an integer image with a transparent colour key."""
    key = image.info.get("transparency")
    if image.mode == "F" or isinstance(key, bool) or not isinstance(key, int):
        return None
    transparent = values == key
    if not transparent.any():
        return None
    return (~transparent).astype(np.float32)


def _place_high_depth(
    planes: list[Image.Image],
    settings: ImageSettings,
    background: np.ndarray,
    conversions: list[str],
) -> np.ndarray:
    """Resample float planes and compose them on a background canvas.

    ``planes`` contains the value plane, premultiplied by alpha when a second, alpha
    plane follows. Returns a float64 array of the output shape.
    """
    resample = _RESAMPLING[settings.filter]
    layout = _layout(planes[0].size, settings)
    arrays = [
        np.asarray(
            _resample(plane, layout, resample, conversions if index == 0 else []),
            dtype=np.float64,
        )
        for index, plane in enumerate(planes)
    ]
    value = arrays[0][:, :, np.newaxis]
    if len(arrays) == 2:
        coverage = arrays[1][:, :, np.newaxis]
        value = value + background * (1.0 - coverage)
        conversions.append("alpha_composite")

    canvas = np.empty((settings.height, settings.width, settings.channels))
    canvas[...] = background
    x, y = layout.offset
    height, width = value.shape[:2]
    canvas[y : y + height, x : x + width, :] = value
    if layout.size != (settings.width, settings.height):
        conversions.append("pad")
    return canvas


# ---------------------------------------------------------------------------
# Errors and warnings


def _quarantine_for(error: Exception) -> Quarantined:
    text = " ".join(str(error).split())
    described = f"{type(error).__name__}: {text}" if text else type(error).__name__
    lowered = text.lower()
    if isinstance(error, EOFError) or any(
        part in lowered for part in _TRUNCATION_TEXTS
    ):
        return Quarantined("truncated", f"data ends before all pixels ({described})")
    if isinstance(error, (struct.error, zlib.error)):
        return Quarantined("corrupt", f"invalid file structure ({described})")
    return Quarantined("corrupt", f"decoding failed ({described})")


@contextmanager
def _captured_warnings() -> Iterator[list[warnings.WarningMessage]]:
    """Capture warnings in the main thread, and yield an empty list elsewhere."""
    if threading.current_thread() is not threading.main_thread():
        yield []
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught


def _warning_notes(caught: list[warnings.WarningMessage]) -> list[str]:
    notes: list[str] = []
    for record in caught:
        if issubclass(record.category, Image.DecompressionBombWarning):
            continue
        text = " ".join(str(record.message).split())
        note = f"pillow: {record.category.__name__}: {text}"[:160]
        if note not in notes:
            notes.append(note)
    return notes


def _accepts(format_name: str, head: bytes) -> bool:
    accept = Image.OPEN[format_name][1]
    if accept is None:
        return False
    try:
        result = accept(head)
    except Exception:  # an accept check that fails on odd bytes does not claim them
        return False
    # A string result is Pillow's "recognised, but support is not installed".
    return bool(result) and not isinstance(result, str)


def _parse_header(format_name: str, prefix: bytes, name: str) -> str | None:
    """Return the format the plugin reads from ``prefix``, or None if it rejects it.

    SyntaxError, IndexError, TypeError and struct.error count as a rejection, because
    they make :func:`PIL.Image.open` try the next plugin. Any other error, such as a
    header that runs past the prefix, counts as a match.
    """
    factory = Image.OPEN[format_name][0]
    try:
        with _captured_warnings():
            image = factory(io.BytesIO(prefix), name)
    except (MemoryError, Quarantined):
        raise
    except (SyntaxError, IndexError, TypeError, struct.error):
        return None
    except Exception:
        return format_name
    return image.format or format_name


def opened_format_for_name(name: str) -> str | None:
    """Return the format Pillow registers for the name's extension, or None.

    The result is None for an extension of a format that Pillow can only write,
    such as ``.pdf``.
    """
    extension = os.path.splitext(name)[1].lower()
    format_name = Image.registered_extensions().get(extension) if extension else None
    if format_name is None or format_name not in Image.OPEN:
        return None
    return format_name


def _sniff_without_magic(prefix: bytes, name: str) -> str | None:
    """Return the format without a magic number whose header parses, or None."""
    named = opened_format_for_name(name)
    tried = [named] if named is not None and Image.OPEN[named][1] is None else []
    tried.extend(
        format_name
        for format_name in _formats_without_extension()
        if format_name not in tried
    )
    for format_name in tried:
        factory = Image.OPEN[format_name][0]
        try:
            with _captured_warnings():
                image = factory(io.BytesIO(prefix), name)
        except (MemoryError, Quarantined):
            raise
        except Exception:  # the header does not parse as this format
            continue
        return image.format or format_name
    return None


def _formats_without_extension() -> list[str]:
    """Return the formats without a magic number and without a file extension."""
    Image.init()
    with_extension = set(Image.registered_extensions().values())
    return [
        format_name
        for format_name in Image.ID
        if Image.OPEN[format_name][1] is None and format_name not in with_extension
    ]
