"""PNG charts of class balance and channel histograms.

The charts are drawn on :class:`matplotlib.figure.Figure` objects with the Agg
canvas, without pyplot, so they keep no global figure state and need no display.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.container import BarContainer
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from imgprep.stats import ChannelHistogram, ChannelSummary, NormalizationParams

__all__ = ["plot_channel_histograms", "plot_class_balance"]

logger = logging.getLogger(__name__)

# Above this ratio of largest to smallest non-zero bar, the count axis is
# logarithmic, so the smallest classes remain visible.
LOG_SCALE_RATIO = 50.0
# Counts are written on the bars when there are at most this many bars.
MAX_LABELLED_BARS = 30
# Class names longer than this are shortened with an ellipsis on the axis.
MAX_NAME_LENGTH = 28
# Histograms are drawn with at most this many bars per channel, so uint16 bins
# are summed in groups of 256.
DISPLAY_BINS = 256
CHANNEL_COLORS = {"R": "tab:red", "G": "tab:green", "B": "tab:blue", "L": "0.35"}
AFTER_COLOR = "tab:purple"


def _save(figure: Figure, path: Path | str) -> Path:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)
    figure.savefig(target, format="png", dpi=100)
    logger.debug("wrote plot %s", target)
    return target


def _short_name(name: str) -> str:
    """Return a class name shortened for an axis label, with mathtext escaped.

    Matplotlib reads text between two ``$`` as math and raises on invalid math,
    so every ``$`` of a class name is escaped.
    """
    if len(name) > MAX_NAME_LENGTH:
        name = name[: MAX_NAME_LENGTH - 1] + "\N{HORIZONTAL ELLIPSIS}"
    return name.replace("$", r"\$")


def _class_counts(
    counts: Mapping[str, int], classes: Sequence[str], label: str
) -> list[int]:
    unknown = sorted(str(name) for name in counts if name not in set(classes))
    if unknown:
        raise ValueError(
            f"{label} counts classes {unknown} that are not in the class list; "
            "add them to classes"
        )
    return [int(counts.get(name, 0)) for name in classes]


def _label_bars(
    axes: Axes, bars: BarContainer, offsets: np.ndarray, counts: list[int]
) -> None:
    axes.bar_label(
        bars,
        labels=[f"{count:,}" if count else "" for count in counts],
        padding=2,
        fontsize=8,
    )
    # A bar of height 0 has no top on a log axis, so its label sits on the axis
    # bottom instead.
    for offset, count in zip(offsets, counts, strict=True):
        if count == 0:
            axes.annotate(
                "0",
                xy=(offset, 0.0),
                xycoords=axes.get_xaxis_transform(),
                xytext=(0, 2),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=8,
                color="0.3",
            )


def _format_class_axis(axes: Axes, names: Sequence[str], rotate: bool) -> None:
    n_classes = len(names)
    positions = np.arange(n_classes, dtype=float)
    axes.set_xticks(positions)
    axes.set_xticklabels([_short_name(name) for name in names])
    if rotate:
        for tick in axes.get_xticklabels():
            tick.set_rotation(55 if n_classes > 25 else 40)
            tick.set_horizontalalignment("right")
            tick.set_rotation_mode("anchor")
            tick.set_fontsize(8 if n_classes > 25 else 9)
    # Keep one or two classes from stretching into bars as wide as the chart.
    margin = max(0.6, (3 - n_classes) / 2 + 0.6)
    axes.set_xlim(-margin, n_classes - 1 + margin)
    axes.set_xlabel("class")


def _format_count_axis(
    axes: Axes, positive: list[int], *, log_scale: bool, labelled: bool
) -> None:
    if log_scale:
        axes.set_yscale("log")
        axes.set_ylabel("samples (log scale)")
        if positive:
            # Headroom for the count labels above the tallest bar.
            axes.set_ylim(0.7, max(positive) * (3.0 if labelled else 1.5))
    else:
        axes.set_ylabel("samples")
        axes.yaxis.set_major_locator(MaxNLocator(integer=True))
        top = max(positive) if positive else 1
        axes.set_ylim(0, top * (1.12 if labelled else 1.05))
    axes.grid(axis="y", alpha=0.3)
    axes.set_axisbelow(True)
    axes.spines[["top", "right"]].set_visible(False)


def plot_class_balance(
    before: Mapping[str, Mapping[str, int]],
    after: Mapping[str, int] | None,
    classes: Sequence[str],
    path: Path | str,
    title: str = "",
    *,
    log_scale: bool | None = None,
) -> Path:
    """Draw grouped bars of samples per class and write them as a PNG.

    Parameters
    ----------
    before : Mapping[str, Mapping[str, int]]
        Samples per class for each split before resampling, such as
        ``{"train": {"cat": 90, "dog": 10}, "val": {...}}``.
    after : Mapping[str, int] or None
        Samples per class of the training split after resampling, drawn as an
        extra hatched bar per class; None leaves it out.
    classes : Sequence[str]
        Every class, in axis order. A class a split does not count is drawn as 0.
    path : Path or str
        Output PNG file. Missing parent folders are created.
    title : str
        Chart title; empty gives "Samples per class".
    log_scale : bool or None
        Logarithmic count axis. None chooses it when the largest non-zero bar is
        more than 50 times the smallest.

    Returns
    -------
    Path
        The written file.
    """
    names = [str(name) for name in classes]
    if not names:
        raise ValueError("classes is empty; pass at least one class name")
    groups: list[tuple[str, list[int]]] = [
        (str(split), _class_counts(counts, names, f"split {split!r}"))
        for split, counts in before.items()
    ]
    if after is not None:
        groups.append(("train after resampling", _class_counts(after, names, "after")))
    if not groups:
        raise ValueError("before has no splits and after is None; nothing to plot")

    positive = [count for _, counts in groups for count in counts if count > 0]
    if log_scale is None:
        log_scale = bool(positive) and max(positive) / min(positive) > LOG_SCALE_RATIO

    n_classes = len(names)
    n_groups = len(groups)
    longest = max(len(_short_name(name)) for name in names)
    label_bars = n_classes * n_groups <= MAX_LABELLED_BARS
    # Labelled bars need room for a count such as "12,345" each.
    per_bar = 0.55 if label_bars else 0.15
    width = min(max(6.5, 1.5 + n_classes * (0.2 + per_bar * n_groups)), 20.0)
    # Estimate: a 10 pt tick label takes about 0.085 inch per character. The
    # labels are rotated when they would not fit side by side.
    label_inches = longest * 0.085
    rotate = n_classes > 12 or label_inches > 0.9 * (width - 1.5) / n_classes
    height = 5.0 if width < 12 else 6.5
    if rotate:
        height += 0.07 * longest
    figure = Figure(figsize=(width, height), layout="constrained")
    axes = figure.add_subplot()

    positions = np.arange(n_classes, dtype=float)
    bar_width = 0.8 / n_groups
    for index, (label, counts) in enumerate(groups):
        is_after = after is not None and index == n_groups - 1
        offsets = positions + (index - (n_groups - 1) / 2) * bar_width
        bars = axes.bar(
            offsets,
            counts,
            width=bar_width,
            label=f"{label} (n={sum(counts):,})",
            color=AFTER_COLOR if is_after else f"C{index}",
            hatch="//" if is_after else None,
            edgecolor="white" if is_after else None,
            linewidth=0.0,
        )
        if label_bars:
            _label_bars(axes, bars, offsets, counts)

    _format_class_axis(axes, names, rotate)
    _format_count_axis(axes, positive, log_scale=log_scale, labelled=label_bars)
    # Above the axes, so that the legend never covers a bar.
    axes.legend(
        loc="lower left",
        bbox_to_anchor=(0.0, 1.01),
        ncols=min(n_groups, 4 if width >= 10 else 2),
        fontsize=9,
        frameon=False,
        borderaxespad=0.0,
    )
    figure.suptitle(title or "Samples per class")
    return _save(figure, path)


def _channel_names(channels: int, names: Sequence[str] | None) -> list[str]:
    if names is not None:
        if len(names) != channels:
            raise ValueError(
                f"channel_names has {len(names)} names but the histogram has "
                f"{channels} channels"
            )
        return [str(name) for name in names]
    if channels == 3:
        return ["R", "G", "B"]
    if channels == 1:
        return ["L"]
    return [f"channel {index}" for index in range(channels)]


def _display_bins(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return bar heights and bin edges, summing groups of bins for uint16."""
    group = max(1, counts.size // DISPLAY_BINS)
    heights = counts.reshape(-1, group).sum(axis=1)
    edges = np.arange(heights.size + 1, dtype=float) * group - 0.5
    return heights, edges


def _params_text(params: NormalizationParams, channel: int) -> str:
    if not params.offset:
        return f"{params.method}: offset and scale per image"
    text = (
        f"{params.method}: offset {params.offset[channel]:.2f}, "
        f"scale {params.scale[channel]:.2f}"
    )
    if params.output_range:
        text += f" (to {params.output_range.replace('_', '..')})"
    return text


def _mark_statistics(axes: Axes, summary: ChannelSummary, channel: int) -> None:
    mean = summary.mean[channel]
    std = summary.std[channel]
    axes.axvline(mean, color="black", linewidth=1.4, label=f"mean {mean:.2f}")
    axes.axvline(
        mean - std,
        color="black",
        linestyle="--",
        linewidth=1.0,
        label=f"mean \N{PLUS-MINUS SIGN} std ({std:.2f})",
    )
    axes.axvline(mean + std, color="black", linestyle="--", linewidth=1.0)

    minimum = summary.min[channel]
    maximum = summary.max[channel]
    axes.axvline(
        minimum, color="0.5", linestyle=":", linewidth=1.4, label=f"min {minimum}"
    )
    axes.axvline(
        maximum, color="0.5", linestyle="-.", linewidth=1.2, label=f"max {maximum}"
    )


def _mark_clip_range(
    axes: Axes, low: float, high: float, left: float, right: float
) -> None:
    """Mark robust clip bounds and shade the clipped values outside them."""
    axes.axvspan(left, low, color="tab:orange", alpha=0.12, linewidth=0)
    axes.axvspan(high, right, color="tab:orange", alpha=0.12, linewidth=0)
    axes.axvline(low, color="tab:orange", linewidth=1.4, label=f"clip low {low:g}")
    axes.axvline(high, color="tab:orange", linewidth=1.4, label=f"clip high {high:g}")


def _channel_title(
    name: str,
    hist: ChannelHistogram,
    summary: ChannelSummary,
    params: NormalizationParams | None,
    channel: int,
) -> str:
    title = f"{name}: {hist.n_pixels:,} pixels"
    flagged = params is not None and params.zero_variance[channel]
    if summary.zero_variance[channel] or flagged:
        title += ", zero variance"
        if params is not None and params.offset:
            title += " (scaled with 1)"
    if params is not None:
        title += f"   |   {_params_text(params, channel)}"
    return title


def _draw_channel(
    axes: Axes,
    name: str,
    hist: ChannelHistogram,
    params: NormalizationParams | None,
    channel: int,
) -> None:
    color = CHANNEL_COLORS.get(name, "0.35")
    heights, edges = _display_bins(hist.counts[channel])
    axes.stairs(heights, edges, fill=True, color=color, alpha=0.45, linewidth=0)
    axes.stairs(heights, edges, color=color, linewidth=0.8)

    # A margin keeps min and max lines at 0 or max_value off the axis frame.
    margin = 0.5 + 0.015 * hist.max_value
    left, right = -margin, hist.max_value + margin
    axes.set_xlim(left, right)
    group = (hist.max_value + 1) // heights.size
    axes.set_ylabel("pixels" if group == 1 else f"pixels per {group} values")
    axes.spines[["top", "right"]].set_visible(False)

    if hist.n_pixels == 0:
        axes.set_title(f"{name}: no pixels counted", loc="left", fontsize=10)
        axes.set_ylim(0, 1)
        axes.set_yticks([])
        return

    summary = hist.summary(percentiles=())
    _mark_statistics(axes, summary, channel)
    if params is not None and params.clip_low and params.clip_high:
        _mark_clip_range(
            axes, params.clip_low[channel], params.clip_high[channel], left, right
        )
    axes.set_title(
        _channel_title(name, hist, summary, params, channel), loc="left", fontsize=10
    )
    axes.legend(
        fontsize=8,
        frameon=False,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        borderaxespad=0.0,
    )


def plot_channel_histograms(
    hist: ChannelHistogram,
    params: NormalizationParams | None,
    path: Path | str,
    channel_names: Sequence[str] | None = None,
) -> Path:
    """Draw one histogram panel per channel and write them as a PNG.

    Each panel marks the mean, mean - std and mean + std, min and max, and for
    robust parameters the clip bounds with the clipped ranges shaded. The
    parameters' offset and scale are written above each panel.

    Parameters
    ----------
    hist : ChannelHistogram
        Histogram to draw; uint16 bins are summed in groups of 256.
    params : NormalizationParams or None
        Fitted parameters of the same channels, or None for statistics only.
    path : Path or str
        Output PNG file. Missing parent folders are created.
    channel_names : Sequence[str] or None
        Panel names; None gives R, G, B for 3 channels and L for 1.

    Returns
    -------
    Path
        The written file.
    """
    names = _channel_names(hist.channels, channel_names)
    if params is not None and params.channels != hist.channels:
        raise ValueError(
            f"params have {params.channels} channels but the histogram has "
            f"{hist.channels}"
        )
    figure = Figure(figsize=(10.0, 0.6 + 2.7 * hist.channels), layout="constrained")
    panels = figure.subplots(hist.channels, 1, sharex=True, squeeze=False)[:, 0]
    for channel, axes in enumerate(panels):
        _draw_channel(axes, names[channel], hist, params, channel)
    panels[-1].set_xlabel(f"pixel value (0..{hist.max_value}, {hist.dtype})")
    return _save(figure, path)
