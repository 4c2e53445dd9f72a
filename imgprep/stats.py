"""Exact per-channel pixel statistics and normalization parameters.

A :class:`ChannelHistogram` stores how often each integer pixel value occurs in each
channel. Histograms of disjoint pixel sets add up to the histogram of their union, so
chunks, refreshes and Dask workers can each build one and the caller sums them.
Subtraction removes samples that leave the training split. Every statistic that
:meth:`ChannelHistogram.summary` reports (min, max, mean, population std, linear
percentiles) is computed from the counts alone, with Python integers where int64
could overflow.

:func:`fit_normalization` turns a histogram into :class:`NormalizationParams`, and
:func:`normalize_pixels` applies them to uint8 or uint16 pixel arrays.
"""

from __future__ import annotations

import base64
import logging
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from imgprep.config import NormalizeSettings

__all__ = [
    "DATASET_METHODS",
    "PER_IMAGE_METHODS",
    "ChannelHistogram",
    "ChannelSummary",
    "NormalizationParams",
    "ZeroVarianceWarning",
    "fit_normalization",
    "normalize_pixels",
]

logger = logging.getLogger(__name__)

# Number of histogram bins, which is also max_value + 1, for each supported dtype.
BINS = {"uint8": 256, "uint16": 65536}
DATASET_METHODS = ("minmax", "zscore", "robust")
PER_IMAGE_METHODS = ("per_image_minmax", "per_image_zscore")
OUTPUT_RANGES = ("0_1", "-1_1")
DEFAULT_PERCENTILES = (0.5, 1.0, 99.0, 99.5)

# Pixels per np.bincount call in ChannelHistogram.add. np.bincount copies its input
# to intp (8 bytes a value), so this bounds that temporary copy to 32 MiB.
_BINCOUNT_CHUNK = 1 << 22
_SPARSE = "sparse"
_BASE64 = "base64_int64_le"


class ZeroVarianceWarning(RuntimeWarning):
    """A channel has scale 0 in the fitted statistics and is scaled with 1 instead."""


def _dtype_name(dtype: Any) -> str:
    name = np.dtype(dtype).name
    if name not in BINS:
        raise ValueError(
            f"unsupported pixel dtype {name}; histograms need uint8 or uint16 "
            "pixels, so convert the array with .astype(np.uint8) or "
            ".astype(np.uint16) first"
        )
    return name


def percentile_key(q: float) -> str:
    """Return the JSON key of percentile ``q``: ``0.5`` -> "0.5", ``1.0`` -> "1"."""
    return format(float(q), "g")


class ChannelHistogram:
    """Per-channel counts of integer pixel values.

    Parameters
    ----------
    channels : int
        Number of channels, 3 for RGB and 1 for L.
    dtype : str
        Pixel dtype, ``"uint8"`` (256 bins) or ``"uint16"`` (65536 bins).

    Attributes
    ----------
    counts : numpy.ndarray
        int64 array of shape ``(channels, bins)``. ``counts[c, v]`` is the number of
        pixels whose channel ``c`` equals ``v``.
    dtype : str
        Pixel dtype the histogram accepts.
    """

    __hash__ = None  # type: ignore[assignment]  # mutable, like a list

    def __init__(self, channels: int, dtype: str = "uint8") -> None:
        if isinstance(channels, bool) or not isinstance(channels, (int, np.integer)):
            raise TypeError(f"channels must be an integer, got {channels!r}")
        if channels < 1:
            raise ValueError(f"channels is {channels}; a histogram needs at least 1")
        self.dtype = _dtype_name(dtype)
        self.counts = np.zeros((int(channels), BINS[self.dtype]), dtype=np.int64)

    # --- construction -----------------------------------------------------------

    @classmethod
    def of(cls, pixels: np.ndarray) -> ChannelHistogram:
        """Build the histogram of a pixel array.

        Parameters
        ----------
        pixels : numpy.ndarray
            uint8 or uint16 array whose last axis is the channel axis, such as one
            image ``(H, W, C)`` or a batch ``(N, H, W, C)``.

        Returns
        -------
        ChannelHistogram
            Histogram with the array's channel count and dtype.
        """
        array = np.asarray(pixels)
        _check_pixel_shape(array)
        histogram = cls(array.shape[-1], _dtype_name(array.dtype))
        histogram.add(array)
        return histogram

    @classmethod
    def from_counts(
        cls, counts: np.ndarray, dtype: str | None = None
    ) -> ChannelHistogram:
        """Build a histogram from a ``(channels, bins)`` count array.

        The dtype follows from the number of bins when ``dtype`` is None. The counts
        are copied and validated: they must be non-negative integers and every
        channel must count the same number of pixels.
        """
        array = np.asarray(counts)
        if array.ndim != 2:
            raise ValueError(
                f"histogram counts have shape {array.shape}; expected "
                "(channels, bins) with bins 256 for uint8 or 65536 for uint16"
            )
        if array.dtype.kind not in "iu":
            raise ValueError(
                f"histogram counts have dtype {array.dtype}; expected integers"
            )
        bins = array.shape[1]
        if dtype is None:
            by_bins = {count: name for name, count in BINS.items()}
            if bins not in by_bins:
                raise ValueError(
                    f"histogram counts have {bins} bins; expected 256 (uint8) or "
                    "65536 (uint16)"
                )
            dtype = by_bins[bins]
        histogram = cls(array.shape[0], dtype)
        if bins != histogram.counts.shape[1]:
            raise ValueError(
                f"histogram counts have {bins} bins but dtype {histogram.dtype} "
                f"needs {histogram.counts.shape[1]}"
            )
        if (
            array.dtype == np.uint64
            and array.size
            and array.max() > np.iinfo(np.int64).max
        ):
            raise ValueError("histogram counts exceed the int64 range")
        values = array.astype(np.int64)
        negative = np.argwhere(values < 0)
        if negative.size:
            channel, value = (int(i) for i in negative[0])
            raise ValueError(
                f"histogram count of channel {channel}, bin {value} is "
                f"{int(values[channel, value])}; counts must be >= 0"
            )
        totals = [int(total) for total in _row_sums(values)]
        if len(set(totals)) > 1:
            raise ValueError(
                f"histogram channels count different numbers of pixels {totals}; "
                "every channel must count every pixel once"
            )
        histogram.counts = values
        return histogram

    def add(self, pixels: np.ndarray) -> None:
        """Count the pixels of ``pixels`` into this histogram in place.

        ``pixels`` must have this histogram's dtype and channel count in its last
        axis. Counting reads the array in chunks, so memory stays bounded.
        """
        array = np.asarray(pixels)
        _check_pixel_shape(array)
        name = _dtype_name(array.dtype)
        if name != self.dtype:
            raise ValueError(
                f"pixels have dtype {name} but the histogram counts {self.dtype}; "
                f"convert the pixels or start a ChannelHistogram(..., '{name}')"
            )
        channels = self.channels
        if array.shape[-1] != channels:
            raise ValueError(
                f"pixels have {array.shape[-1]} channels in their last axis but the "
                f"histogram has {channels}"
            )
        flat = array.reshape(-1, channels)
        bins = self.bins
        added = np.zeros_like(self.counts)
        for start in range(0, flat.shape[0], _BINCOUNT_CHUNK):
            block = flat[start : start + _BINCOUNT_CHUNK]
            for channel in range(channels):
                column = np.ascontiguousarray(block[:, channel])
                added[channel] += np.bincount(column, minlength=bins)
        self._apply(added, sign=1)

    # --- properties -------------------------------------------------------------

    @property
    def channels(self) -> int:
        """Number of channels."""
        return int(self.counts.shape[0])

    @property
    def bins(self) -> int:
        """Number of bins, 256 for uint8 and 65536 for uint16."""
        return int(self.counts.shape[1])

    @property
    def max_value(self) -> int:
        """Largest pixel value of the dtype, 255 or 65535."""
        return self.bins - 1

    @property
    def n_pixels(self) -> int:
        """Number of pixels counted, which is the same in every channel."""
        return int(_row_sums(self.counts[:1])[0])

    # --- arithmetic -------------------------------------------------------------

    def _check_compatible(self, other: object, operation: str) -> ChannelHistogram:
        if not isinstance(other, ChannelHistogram):
            raise TypeError(
                f"cannot {operation} {type(other).__name__} and ChannelHistogram"
            )
        if other.dtype != self.dtype or other.channels != self.channels:
            raise ValueError(
                f"cannot {operation} histograms of {self.channels} {self.dtype} "
                f"channels and {other.channels} {other.dtype} channels"
            )
        return other

    def _apply(self, delta: np.ndarray, sign: int) -> None:
        # Build the result first so that a failed check leaves self unchanged.
        limit = np.iinfo(np.int64).max
        if sign > 0:
            if np.any(delta > limit - self.counts):
                raise OverflowError(
                    "histogram count would exceed the int64 maximum "
                    f"{limit}; keep separate histograms for such large sets"
                )
            result = self.counts + delta
        else:
            result = self.counts - delta
            negative = np.argwhere(result < 0)
            if negative.size:
                channel, value = (int(i) for i in negative[0])
                raise ValueError(
                    f"cannot subtract: channel {channel}, bin {value} would drop "
                    f"below zero ({int(self.counts[channel, value])} - "
                    f"{int(delta[channel, value])}); subtract only pixels that "
                    "were added to this histogram"
                )
        self.counts = result

    def __add__(self, other: object) -> ChannelHistogram:
        if not isinstance(other, ChannelHistogram):
            return NotImplemented
        result = self.copy()
        result += other
        return result

    def __iadd__(self, other: object) -> ChannelHistogram:
        if not isinstance(other, ChannelHistogram):
            return NotImplemented
        self._apply(self._check_compatible(other, "add").counts, sign=1)
        return self

    def __sub__(self, other: object) -> ChannelHistogram:
        if not isinstance(other, ChannelHistogram):
            return NotImplemented
        result = self.copy()
        result -= other
        return result

    def __isub__(self, other: object) -> ChannelHistogram:
        if not isinstance(other, ChannelHistogram):
            return NotImplemented
        self._apply(self._check_compatible(other, "subtract").counts, sign=-1)
        return self

    def __radd__(self, other: object) -> ChannelHistogram:
        # Lets sum(histograms) start from the integer 0.
        if isinstance(other, int) and not isinstance(other, bool) and other == 0:
            return self.copy()
        return NotImplemented

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ChannelHistogram):
            return NotImplemented
        return (
            self.dtype == other.dtype
            and self.counts.shape == other.counts.shape
            and bool(np.array_equal(self.counts, other.counts))
        )

    def __repr__(self) -> str:
        return (
            f"ChannelHistogram(channels={self.channels}, dtype={self.dtype!r}, "
            f"n_pixels={self.n_pixels})"
        )

    def copy(self) -> ChannelHistogram:
        """Return an independent copy."""
        result = ChannelHistogram(self.channels, self.dtype)
        result.counts = self.counts.copy()
        return result

    # --- serialization ----------------------------------------------------------

    def to_dict(self, encoding: str = "auto") -> dict[str, Any]:
        """Return a JSON-ready dict that :meth:`from_dict` turns back into an equal
        histogram.

        Parameters
        ----------
        encoding : {"auto", "sparse", "base64_int64_le"}
            ``sparse`` stores ``{bin: count}`` per channel with zero bins left out.
            ``base64_int64_le`` stores each channel's counts as base64 of
            little-endian int64. ``auto`` picks whichever is estimated to be shorter.
        """
        nonzero = int(np.count_nonzero(self.counts))
        if encoding == "auto":
            # About 16 characters per sparse entry, 32/3 per base64 bin.
            encoding = _SPARSE if nonzero * 16 <= self.counts.size * 32 / 3 else _BASE64
        if encoding == _SPARSE:
            encoded: list[Any] = []
            for row in self.counts:
                indices = np.flatnonzero(row)
                encoded.append(
                    {
                        str(int(i)): int(c)
                        for i, c in zip(indices, row[indices], strict=True)
                    }
                )
        elif encoding == _BASE64:
            little = self.counts.astype("<i8")
            encoded = [
                base64.b64encode(row.tobytes()).decode("ascii") for row in little
            ]
        else:
            raise ValueError(
                f"unknown histogram encoding {encoding!r}; use 'auto', "
                f"'{_SPARSE}' or '{_BASE64}'"
            )
        return {
            "dtype": self.dtype,
            "channels": self.channels,
            "bins": self.bins,
            "n_pixels": self.n_pixels,
            "encoding": encoding,
            "counts": encoded,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ChannelHistogram:
        """Rebuild a histogram from the output of :meth:`to_dict`."""
        try:
            dtype = _dtype_name(data["dtype"])
            channels = int(data["channels"])
            encoding = data["encoding"]
            encoded = data["counts"]
        except KeyError as error:
            raise ValueError(
                f"histogram dict is missing the key {error.args[0]!r}; pass the "
                "output of ChannelHistogram.to_dict"
            ) from None
        bins = BINS[dtype]
        if len(encoded) != channels:
            raise ValueError(
                f"histogram dict has {len(encoded)} channel entries but channels is "
                f"{channels}"
            )
        counts = np.zeros((channels, bins), dtype=np.int64)
        if encoding == _SPARSE:
            for channel, entries in enumerate(encoded):
                for key, count in entries.items():
                    value = int(key)
                    if not 0 <= value < bins:
                        raise ValueError(
                            f"histogram dict channel {channel} has bin {value}, "
                            f"outside 0..{bins - 1} for {dtype}"
                        )
                    counts[channel, value] = int(count)
        elif encoding == _BASE64:
            for channel, text in enumerate(encoded):
                raw = base64.b64decode(text, validate=True)
                if len(raw) != bins * 8:
                    raise ValueError(
                        f"histogram dict channel {channel} decodes to {len(raw)} "
                        f"bytes; expected {bins * 8} for {bins} int64 counts"
                    )
                counts[channel] = np.frombuffer(raw, dtype="<i8")
        else:
            raise ValueError(
                f"unknown histogram encoding {encoding!r}; expected '{_SPARSE}' or "
                f"'{_BASE64}'"
            )
        histogram = cls.from_counts(counts, dtype)
        expected = data.get("n_pixels")
        if expected is not None and int(expected) != histogram.n_pixels:
            raise ValueError(
                f"histogram dict has n_pixels={expected} but its counts sum to "
                f"{histogram.n_pixels}"
            )
        return histogram

    def save(self, path: str | Path) -> Path:
        """Write the counts to ``path`` as a ``.npy`` file and return the path.

        The file is written at exactly ``path``; no ``.npy`` suffix is added.
        """
        target = Path(path)
        with target.open("wb") as handle:
            np.save(handle, self.counts.astype("<i8"), allow_pickle=False)
        return target

    @classmethod
    def load(cls, path: str | Path) -> ChannelHistogram:
        """Read a histogram written by :meth:`save`; the bin count sets the dtype."""
        counts = np.load(Path(path), allow_pickle=False)
        return cls.from_counts(counts)

    # --- statistics -------------------------------------------------------------

    def summary(
        self, percentiles: Iterable[float] = DEFAULT_PERCENTILES
    ) -> ChannelSummary:
        """Compute exact per-channel statistics from the counts.

        Parameters
        ----------
        percentiles : iterable of float
            Percentiles in 0..100. Each equals ``np.percentile(values, q)`` with the
            default linear method, where ``values`` are the counted pixels.

        Returns
        -------
        ChannelSummary
            Statistics on the pixel scale.

        Raises
        ------
        ValueError
            When the histogram is empty or a percentile is outside 0..100.
        """
        total = self.n_pixels
        if total == 0:
            raise ValueError(
                "the histogram is empty, so it has no statistics; add pixels first"
            )
        qs = [float(q) for q in percentiles]
        for q in qs:
            if not 0.0 <= q <= 100.0:
                raise ValueError(f"percentile {q} is outside 0..100")
        minimum: list[int] = []
        maximum: list[int] = []
        mean: list[float] = []
        std: list[float] = []
        by_q: dict[str, list[float]] = {percentile_key(q): [] for q in qs}
        for row in self.counts:
            values = np.flatnonzero(row)
            minimum.append(int(values[0]))
            maximum.append(int(values[-1]))
            channel_mean, channel_std = _exact_moments(values, row[values], total)
            mean.append(channel_mean)
            std.append(channel_std)
            cumulative = _cumulative_counts(row, total)
            for q in qs:
                by_q[percentile_key(q)].append(_percentile(cumulative, total, q))
        return ChannelSummary(
            dtype=self.dtype,
            max_value=self.max_value,
            n_pixels=total,
            min=minimum,
            max=maximum,
            mean=mean,
            std=std,
            percentiles=by_q,
            zero_variance=[
                low == high for low, high in zip(minimum, maximum, strict=True)
            ],
        )


def _check_pixel_shape(array: np.ndarray) -> None:
    if array.ndim < 3:
        raise ValueError(
            f"pixels have shape {array.shape}; expected (H, W, C) or (N, H, W, C) "
            "with the channel axis last. Add a channel axis to grayscale images "
            "with pixels[..., None]"
        )
    if array.shape[-1] < 1:
        raise ValueError(f"pixels have shape {array.shape} with no channels")


def _row_sums(counts: np.ndarray) -> list[int]:
    # Sum in Python integers: a row of 65536 counts near the int64 maximum / 65536
    # would overflow np.sum.
    return [sum(row.tolist()) for row in counts]


def _exact_moments(
    values: np.ndarray, counts: np.ndarray, total: int
) -> tuple[float, float]:
    """Return the mean and population std of a channel, computed from exact sums.

    ``values`` are the non-empty bins and ``counts`` their counts. The sums use
    Python integers because ``sum(count * value**2)`` overflows int64 for uint16.
    """
    first = 0
    second = 0
    for value, count in zip(values.tolist(), counts.tolist(), strict=True):
        first += count * value
        second += count * value * value
    mean = Fraction(first, total)
    # n^2 * variance = n * sum(x^2) - (sum x)^2, exactly. The mean is correctly
    # rounded. The variance is rounded once before the square root, so std is
    # within about 1 ulp.
    scaled_variance = total * second - first * first
    std = math.sqrt(Fraction(scaled_variance, total * total))
    return float(mean), std


def _cumulative_counts(row: np.ndarray, total: int) -> np.ndarray:
    """Return the running sum of ``row``, as Python integers when int64 overflows."""
    if total <= np.iinfo(np.int64).max:
        return np.cumsum(row)
    return np.cumsum(row.astype(object))


def _percentile(cumulative: np.ndarray, total: int, q: float) -> float:
    """Return ``np.percentile(values, q)`` of the values that ``cumulative`` counts.

    The steps copy the linear method of NumPy 2.4 (``numpy.lib._function_base_impl``):
    virtual index ``(n - 1) * q / 100``, its floor and the next index clipped to
    ``n - 1``, then ``_lerp``, so the floating-point result is identical.
    """
    quantile = np.true_divide(q, 100)
    virtual = (total - 1) * quantile
    previous = math.floor(virtual)
    following = previous + 1
    if virtual >= total - 1:
        previous = following = total - 1
    gamma = float(virtual - previous)
    # The value at 0-based sorted position k is the first bin whose cumulative
    # count exceeds k.
    low = float(np.searchsorted(cumulative, previous, side="right"))
    high = float(np.searchsorted(cumulative, following, side="right"))
    difference = high - low
    if gamma >= 0.5:
        return float(high - difference * (1 - gamma))
    return float(low + difference * gamma)


@dataclass
class ChannelSummary:
    """Per-channel statistics of a :class:`ChannelHistogram`, on the pixel scale.

    Every list has one entry per channel. ``std`` is the population standard
    deviation. ``percentiles`` maps a key such as ``"99.5"`` to per-channel values
    equal to ``np.percentile`` with the linear method. ``zero_variance[c]`` is true
    when every pixel of channel ``c`` has the same value.
    """

    dtype: str
    max_value: int
    n_pixels: int
    min: list[int]
    max: list[int]
    mean: list[float]
    std: list[float]
    percentiles: dict[str, list[float]]
    zero_variance: list[bool]

    def to_dict(self) -> dict[str, Any]:
        """Return the summary as a JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ChannelSummary:
        """Rebuild a summary from the output of :meth:`to_dict`."""
        return cls(
            dtype=str(data["dtype"]),
            max_value=int(data["max_value"]),
            n_pixels=int(data["n_pixels"]),
            min=[int(v) for v in data["min"]],
            max=[int(v) for v in data["max"]],
            mean=[float(v) for v in data["mean"]],
            std=[float(v) for v in data["std"]],
            percentiles={
                str(k): [float(v) for v in values]
                for k, values in data["percentiles"].items()
            },
            zero_variance=[bool(v) for v in data["zero_variance"]],
        )


@dataclass
class NormalizationParams:
    """Fitted normalization, applied as ``y = (clip(x) - offset) / scale``.

    ``offset``, ``scale``, ``clip_low`` and ``clip_high`` are per channel on the
    pixel scale 0..``max_value``. Only ``robust`` clips. The per-image methods
    store empty ``offset`` and ``scale`` because :func:`normalize_pixels` computes
    them for each image and channel. ``zero_variance[c]`` is true when channel
    ``c`` had scale 0 in the fitted data and is scaled with 1 instead.
    """

    method: str
    max_value: int
    offset: list[float]
    scale: list[float]
    clip_low: list[float] | None = None
    clip_high: list[float] | None = None
    output_range: str = ""
    zero_variance: list[bool] = field(default_factory=list)
    fitted_on: str = "train"

    def __post_init__(self) -> None:
        if self.method not in DATASET_METHODS + PER_IMAGE_METHODS:
            raise ValueError(
                f"unknown normalization method {self.method!r}; use one of "
                f"{', '.join(DATASET_METHODS + PER_IMAGE_METHODS)}"
            )
        if self.max_value not in (255, 65535):
            raise ValueError(
                f"max_value is {self.max_value}; use 255 for uint8 or 65535 for uint16"
            )
        channels = len(self.zero_variance)
        if channels < 1:
            raise ValueError("zero_variance needs one entry per channel")
        if self.method in PER_IMAGE_METHODS:
            if self.offset or self.scale or self.clip_low or self.clip_high:
                raise ValueError(
                    f"method {self.method} computes offset and scale per image; "
                    "leave offset, scale, clip_low and clip_high empty"
                )
            if self.output_range:
                raise ValueError(
                    f"method {self.method} has no output_range setting; got "
                    f"{self.output_range!r}"
                )
            return
        for name in ("offset", "scale"):
            values = getattr(self, name)
            if len(values) != channels or not all(map(math.isfinite, values)):
                raise ValueError(
                    f"{name} must contain {channels} finite numbers, got {values!r}"
                )
        if any(scale <= 0 for scale in self.scale):
            raise ValueError(f"scale must be > 0 in every channel, got {self.scale!r}")
        if self.method == "robust":
            for name in ("clip_low", "clip_high"):
                values = getattr(self, name)
                if values is None or len(values) != channels:
                    raise ValueError(
                        f"robust normalization needs {name} with {channels} values, "
                        f"got {values!r}"
                    )
        elif self.clip_low is not None or self.clip_high is not None:
            raise ValueError(
                f"method {self.method} does not clip; set clip_low and clip_high "
                "to None"
            )
        if self.method in ("minmax", "robust"):
            if self.output_range not in OUTPUT_RANGES:
                raise ValueError(
                    f"output_range {self.output_range!r} is invalid for "
                    f"{self.method}; use '0_1' or '-1_1'"
                )
        elif self.output_range:
            raise ValueError(
                f"method {self.method} has no output_range setting; got "
                f"{self.output_range!r}"
            )

    @property
    def channels(self) -> int:
        """Number of channels."""
        return len(self.zero_variance)

    @property
    def dtype(self) -> str:
        """Pixel dtype the parameters apply to, uint8 or uint16."""
        return "uint8" if self.max_value == 255 else "uint16"

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict, with the parameters also on the 0-1 scale.

        Besides the fields, the dict contains ``offset_0_1`` and ``scale_0_1``
        (offset and scale divided by ``max_value``), the clip bounds on the 0-1
        scale for ``robust``, and ``mean_0_1``/``std_0_1`` for ``zscore``. For the
        dataset methods, ``torchvision_normalize`` contains the ``mean`` and ``std``
        to pass to ``torchvision.transforms.Normalize`` after ``ToTensor``. For
        ``robust`` the tensor must first be clamped to the 0-1 clip bounds.
        """
        data: dict[str, Any] = {
            "method": self.method,
            "dtype": self.dtype,
            "max_value": self.max_value,
            "offset": list(self.offset),
            "scale": list(self.scale),
            "clip_low": None if self.clip_low is None else list(self.clip_low),
            "clip_high": None if self.clip_high is None else list(self.clip_high),
            "output_range": self.output_range,
            "zero_variance": list(self.zero_variance),
            "fitted_on": self.fitted_on,
        }
        if self.method in PER_IMAGE_METHODS:
            return data
        offset_0_1 = [value / self.max_value for value in self.offset]
        scale_0_1 = [value / self.max_value for value in self.scale]
        data["offset_0_1"] = offset_0_1
        data["scale_0_1"] = scale_0_1
        if self.method == "zscore":
            data["mean_0_1"] = offset_0_1
            data["std_0_1"] = scale_0_1
        if self.clip_low is not None and self.clip_high is not None:
            data["clip_low_0_1"] = [value / self.max_value for value in self.clip_low]
            data["clip_high_0_1"] = [value / self.max_value for value in self.clip_high]
        data["torchvision_normalize"] = {"mean": offset_0_1, "std": scale_0_1}
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NormalizationParams:
        """Rebuild parameters from :meth:`to_dict`, ignoring the 0-1 scale keys."""

        def floats(values: Sequence[float] | None) -> list[float] | None:
            return None if values is None else [float(v) for v in values]

        try:
            return cls(
                method=str(data["method"]),
                max_value=int(data["max_value"]),
                offset=floats(data.get("offset")) or [],
                scale=floats(data.get("scale")) or [],
                clip_low=floats(data.get("clip_low")),
                clip_high=floats(data.get("clip_high")),
                output_range=str(data.get("output_range") or ""),
                zero_variance=[bool(v) for v in data["zero_variance"]],
                fitted_on=str(data.get("fitted_on", "train")),
            )
        except KeyError as error:
            raise ValueError(
                f"normalization dict is missing the key {error.args[0]!r}; pass the "
                "output of NormalizationParams.to_dict"
            ) from None


def fit_normalization(
    hist: ChannelHistogram, settings: NormalizeSettings, fitted_on: str = "train"
) -> NormalizationParams:
    """Fit normalization parameters to the pixels a histogram counts.

    Parameters
    ----------
    hist : ChannelHistogram
        Histogram of the split the parameters are fitted on, normally train.
    settings : NormalizeSettings
        Method, output range of minmax and robust, and robust percentiles.
    fitted_on : str
        Name of the split, recorded in the parameters.

    Returns
    -------
    NormalizationParams
        minmax: offset min and scale max - min for 0_1, or offset (min + max) / 2
        and scale (max - min) / 2 for -1_1. zscore: offset mean, scale population
        std. robust: clip to the configured percentiles, then minmax over the
        clipped range. Per-image methods: no offset or scale.

    Warns
    -----
    ZeroVarianceWarning
        Once, naming every channel whose scale is 0. Such a channel gets scale 1.
        For per-image methods, the warning names channels that are constant over
        the whole histogram, because they normalize to 0 in every image.
    """
    method = settings.method
    low_q, high_q = (float(q) for q in settings.robust_percentiles)
    summary = hist.summary(percentiles=(low_q, high_q))
    channels = hist.channels
    clip_low: list[float] | None = None
    clip_high: list[float] | None = None
    output_range = ""
    if method in PER_IMAGE_METHODS:
        zero = list(summary.zero_variance)
        _warn_zero_variance(zero, method, "one value")
        return NormalizationParams(
            method=method,
            max_value=hist.max_value,
            offset=[],
            scale=[],
            output_range="",
            zero_variance=zero,
            fitted_on=fitted_on,
        )
    if method == "zscore":
        offset = list(summary.mean)
        scale = list(summary.std)
        reason = "std 0"
    else:
        output_range = settings.minmax_range
        if method == "robust":
            clip_low = list(summary.percentiles[percentile_key(low_q)])
            clip_high = list(summary.percentiles[percentile_key(high_q)])
            low, high = clip_low, clip_high
            reason = f"percentiles {low_q:g} and {high_q:g} are equal"
        else:
            low = [float(v) for v in summary.min]
            high = [float(v) for v in summary.max]
            reason = "min equals max"
        if output_range == "0_1":
            offset = list(low)
            scale = [h - lo for lo, h in zip(low, high, strict=True)]
        else:
            offset = [(lo + h) / 2 for lo, h in zip(low, high, strict=True)]
            scale = [(h - lo) / 2 for lo, h in zip(low, high, strict=True)]
    zero = [value == 0.0 for value in scale]
    scale = [
        1.0 if is_zero else value for value, is_zero in zip(scale, zero, strict=True)
    ]
    _warn_zero_variance(zero, method, reason)
    logger.debug(
        "fitted %s normalization on %s: %d channels, %d pixels",
        method,
        fitted_on,
        channels,
        hist.n_pixels,
    )
    return NormalizationParams(
        method=method,
        max_value=hist.max_value,
        offset=offset,
        scale=scale,
        clip_low=clip_low,
        clip_high=clip_high,
        output_range=output_range,
        zero_variance=zero,
        fitted_on=fitted_on,
    )


def _warn_zero_variance(zero: Sequence[bool], method: str, reason: str) -> None:
    flagged = [index for index, is_zero in enumerate(zero) if is_zero]
    if not flagged:
        return
    noun = "channel" if len(flagged) == 1 else "channels"
    names = ", ".join(str(index) for index in flagged)
    message = (
        f"{method} normalization: zero scale in {noun} {names} ({reason} in the "
        "fitted pixels). Scale 1 is used instead of dividing by 0, and "
        f"zero_variance is true for {noun} {names}."
    )
    logger.info(message)
    warnings.warn(message, ZeroVarianceWarning, stacklevel=3)


def normalize_pixels(pixels: np.ndarray, params: NormalizationParams) -> np.ndarray:
    """Normalize integer pixels to float32 with fitted parameters.

    Parameters
    ----------
    pixels : numpy.ndarray
        One image ``(H, W, C)`` or a batch ``(N, H, W, C)``, of the dtype the
        parameters were fitted on (uint8 for max_value 255, uint16 for 65535).
    params : NormalizationParams
        Output of :func:`fit_normalization`.

    Returns
    -------
    numpy.ndarray
        float32 array of the input shape. It never contains NaN or inf, because
        every scale is positive: fitted scales of 0 are stored as 1, and the
        per-image methods use scale 1 for a constant image channel.
        ``per_image_minmax`` maps each image channel to 0..1 and
        ``per_image_zscore`` to mean 0 and population std 1.
    """
    array = np.asarray(pixels)
    if array.ndim not in (3, 4):
        raise ValueError(
            f"pixels have shape {array.shape}; expected (H, W, C) or (N, H, W, C)"
        )
    if array.dtype.name != params.dtype:
        raise ValueError(
            f"pixels have dtype {array.dtype} but the parameters were fitted on "
            f"{params.dtype} (max_value {params.max_value}); pass {params.dtype} pixels"
        )
    if array.shape[-1] != params.channels:
        raise ValueError(
            f"pixels have {array.shape[-1]} channels but the parameters have "
            f"{params.channels}"
        )
    if array.size == 0:
        return np.zeros(array.shape, dtype=np.float32)
    if params.method == "per_image_minmax":
        return _per_image_minmax(array)
    if params.method == "per_image_zscore":
        return _per_image_zscore(array)
    # A lookup table per channel: the float64 result for every possible pixel
    # value, rounded once to float32.
    levels = np.arange(params.max_value + 1, dtype=np.float64)
    output = np.empty(array.shape, dtype=np.float32)
    for channel in range(params.channels):
        clipped = levels
        if params.clip_low is not None and params.clip_high is not None:
            clipped = np.clip(
                levels, params.clip_low[channel], params.clip_high[channel]
            )
        table = ((clipped - params.offset[channel]) / params.scale[channel]).astype(
            np.float32
        )
        output[..., channel] = table[array[..., channel]]
    return output


def _per_image_minmax(array: np.ndarray) -> np.ndarray:
    axes = (-3, -2)
    low = array.min(axis=axes, keepdims=True).astype(np.float32)
    high = array.max(axis=axes, keepdims=True).astype(np.float32)
    scale = high - low
    scale[scale == 0] = 1.0
    # uint16 values and their differences are exact in float32 (below 2**24).
    return (array.astype(np.float32) - low) / scale


def _per_image_zscore(array: np.ndarray) -> np.ndarray:
    axes = (-3, -2)
    values = array.astype(np.float64)
    mean = values.mean(axis=axes, keepdims=True)
    std = values.std(axis=axes, keepdims=True)
    constant = array.min(axis=axes, keepdims=True) == array.max(
        axis=axes, keepdims=True
    )
    std[constant] = 1.0
    values -= mean
    values /= std
    return values.astype(np.float32)
