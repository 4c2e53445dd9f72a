"""Render a version's ``report.html``: one self-contained page to read at a glance.

The page embeds everything it shows. Charts and thumbnails are PNG ``data:`` URIs,
the CSS is inline, and the page has no JavaScript and no external URL. A
Content-Security-Policy meta tag also blocks scripts and every fetch except
``data:`` images. Class names, paths, messages and config values come from the
source tree, so every string from data is escaped with :func:`html.escape`.

Long content is capped so the page stays readable with many classes or files: the
constants below set how many rows, thumbnails and names are shown, and a capped list
ends with "and N more".
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.compute as pc
from PIL import Image

from imgprep.audit import DIFF_SOURCE_COLUMNS, diff_versions
from imgprep.config import SPLITS
from imgprep.errors import CorruptObjectError
from imgprep.manifest import parse_manifest
from imgprep.resample_stage import ShardReader
from imgprep.store import Store
from imgprep.version import read_object_table

__all__ = ["render_report"]

logger = logging.getLogger(__name__)

# Class tables list at most this many classes.
MAX_TABLE_CLASSES = 200
# Quarantined and skipped file lists show at most this many rows each.
MAX_LISTED_FILES = 100
# Inline lists of names, such as minority classes, show at most this many.
MAX_INLINE_NAMES = 12
# The sample grid shows this many originals for each of the first classes.
THUMBNAILS_PER_CLASS = 6
MAX_THUMBNAIL_CLASSES = 60
MAX_SYNTHETIC_EXAMPLES = 8
# Thumbnails larger than this many pixels on a side are shrunk before embedding.
THUMBNAIL_MAX_SIDE = 96
# The sample grid reads at most this many sample shards from the store.
MAX_SHARDS_READ = 32
# The diff lists at most this many changed config keys.
MAX_CONFIG_CHANGES = 100
_LINEAGE_COLUMNS = [
    "sample_id",
    "label",
    "origin",
    "parents",
    "coefficient",
    "shard",
    "shard_row",
]

CHART_FILES = {
    "class_balance": "class_balance.png",
    "channel_histograms": "channel_histograms.png",
}

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
    "base-uri 'none'; form-action 'none'"
)

STYLE = """
:root { --fg: #1d2330; --muted: #5b6475; --line: #d5d9e0; --band: #f4f6f9;
  --accent: #2f5d9b; --warn: #a3431b; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--fg); background: #fff;
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif; }
main, header, nav, footer { max-width: 1180px; margin: 0 auto; padding: 0 20px; }
header { padding-top: 18px; }
h1 { font-size: 22px; margin: 0 0 10px; }
h2 { font-size: 18px; margin: 28px 0 8px; padding-top: 10px;
  border-top: 2px solid var(--line); }
h3 { font-size: 15px; margin: 18px 0 6px; }
p { margin: 6px 0; }
code { font: 12.5px/1.3 "DejaVu Sans Mono", ui-monospace, monospace;
  background: var(--band); padding: 1px 4px; border-radius: 3px;
  overflow-wrap: anywhere; }
nav { position: sticky; top: 0; z-index: 1; background: #fffffff0;
  border-bottom: 1px solid var(--line); padding-top: 6px; padding-bottom: 6px; }
nav a { color: var(--accent); text-decoration: none; margin-right: 14px;
  white-space: nowrap; }
nav a:hover { text-decoration: underline; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; margin: 12px 0; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: 8px 12px;
  min-width: 140px; background: var(--band); }
.card .value { font-size: 20px; font-weight: 600; }
.card .label { color: var(--muted); font-size: 12px; }
.card.warn .value { color: var(--warn); }
.scroll { overflow-x: auto; max-width: 100%; }
.scroll.long { max-height: 560px; overflow-y: auto; border-bottom: 1px solid var(--line); }
.scroll.long table { margin: 0; }
.scroll.long thead th { position: sticky; top: 0; }
table { border-collapse: collapse; margin: 6px 0 10px; font-size: 13px; }
th, td { border: 1px solid var(--line); padding: 3px 8px; text-align: left;
  vertical-align: top; }
th { background: var(--band); font-weight: 600; }
tbody tr:nth-child(even) td { background: #fafbfc; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums;
  white-space: nowrap; }
td.path { overflow-wrap: anywhere; max-width: 460px; }
td.message { max-width: 420px; }
tr.total td { font-weight: 600; border-top: 2px solid var(--muted); }
table.fields { width: 100%; max-width: 980px; }
.fields td:first-child { width: 130px; }
.muted { color: var(--muted); }
.more { color: var(--muted); font-style: italic; }
.positive { color: #1f7a3a; }
.negative { color: var(--warn); }
figure { margin: 8px 0 14px; }
figcaption { color: var(--muted); font-size: 12.5px; }
img.chart { max-width: 100%; height: auto; border: 1px solid var(--line); }
.class-row { display: flex; gap: 12px; align-items: center; padding: 6px 0;
  border-bottom: 1px solid var(--line); }
.class-name { width: 170px; flex: none; font-weight: 600; overflow-wrap: anywhere; }
.class-name .muted { font-weight: 400; font-size: 12px; display: block; }
.thumbs { display: flex; flex-wrap: wrap; gap: 6px; }
img.thumb { width: 64px; height: 64px; object-fit: contain; image-rendering: pixelated;
  background: #e9ecf1; border: 1px solid var(--line); }
.synthetic-grid { display: flex; flex-wrap: wrap; gap: 14px; }
figure.synthetic { border: 1px solid var(--line); border-radius: 6px; padding: 8px;
  margin: 0; }
figure.synthetic .triple { display: flex; gap: 6px; align-items: center; }
figure.synthetic .triple span { font-size: 18px; color: var(--muted); }
figure.synthetic img.thumb.synthetic { border: 2px solid #7a3fa0; }
details { margin: 6px 0; }
summary { cursor: pointer; font-weight: 600; }
footer { color: var(--muted); font-size: 12px; padding-top: 16px; padding-bottom: 24px; }
"""


# ---------------------------------------------------------------- escaping
class _Html(str):
    """Markup that is already escaped; :func:`_esc` inserts it unchanged."""


def _fmt(value: Any, digits: int = 4) -> str:
    """Format a value from the manifest as short display text."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != value:  # NaN
            return "n/a"
        return f"{value:.{digits}g}"
    return str(value)


def _esc(value: Any, digits: int = 4) -> _Html:
    """Return ``value`` as escaped text, or unchanged when it is already markup."""
    if isinstance(value, _Html):
        return value
    return _Html(html.escape(_fmt(value, digits), quote=True))


def _join(parts: Iterable[str]) -> _Html:
    return _Html("".join(parts))


def _attributes(attributes: Mapping[str, Any]) -> str:
    """Render attributes; a trailing ``_`` is dropped (``class_``), None is left out."""
    return "".join(
        f' {key.rstrip("_").replace("_", "-")}="{_esc(value)}"'
        for key, value in attributes.items()
        if value is not None
    )


def _tag(name: str, content: Any = "", **attributes: Any) -> _Html:
    """Return one element with escaped content and attributes."""
    return _Html(f"<{name}{_attributes(attributes)}>{_esc(content)}</{name}>")


def _void(name: str, **attributes: Any) -> _Html:
    """Return one void element such as ``img``, which has no end tag."""
    return _Html(f"<{name}{_attributes(attributes)}>")


def _names(names: Sequence[Any], limit: int = MAX_INLINE_NAMES) -> _Html:
    """Return a comma-separated list of names, capped with "and N more"."""
    if not names:
        return _Html('<span class="muted">none</span>')
    shown = ", ".join(_esc(name) for name in names[:limit])
    if len(names) > limit:
        shown += f" and {len(names) - limit:,} more"
    return _Html(shown)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _table(
    header: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    table_id: str | None = None,
    class_: str | None = None,
    cell_classes: Mapping[int, str] | None = None,
    total: Sequence[Any] | None = None,
    digits: int = 4,
    scroll_class: str = "scroll",
) -> _Html:
    """Return a table; numbers are right-aligned, every other cell is escaped.

    ``cell_classes`` maps a column index to a CSS class such as ``path``. The table
    sits in a ``div`` of class ``scroll_class``, which scrolls when it overflows.
    """
    extra = cell_classes or {}
    head = _join(_tag("th", name) for name in header)
    body = []
    for row in [*rows, *([total] if total is not None else [])]:
        cells = _join(
            _tag(
                "td",
                _esc(value, digits),
                class_="num" if _is_number(value) else extra.get(index),
            )
            for index, value in enumerate(row)
        )
        is_total = total is not None and row is total
        body.append(_tag("tr", cells, class_="total" if is_total else None))
    table = _tag(
        "table",
        _join([_tag("thead", _tag("tr", head)), _tag("tbody", _join(body))]),
        id=table_id,
        class_=class_,
    )
    return _tag("div", table, class_=scroll_class)


def _more(shown: int, total: int, what: str, where: str) -> _Html:
    if total <= shown:
        return _Html("")
    return _tag(
        "p", f"and {total - shown:,} more {what}, listed in {where}", class_="more"
    )


def _png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _chart(files: Mapping[str, bytes], name: str, alt: str, element_id: str) -> _Html:
    data = files.get(name)
    if not data:
        return _tag("p", f"{name} is missing from this version's files.", class_="more")
    image = _void("img", src=_png_uri(data), alt=alt, class_="chart", id=element_id)
    return _tag("figure", image)


def _channel_names(channels: int) -> list[str]:
    if channels == 3:
        return ["R", "G", "B"]
    if channels == 1:
        return ["L"]
    return [f"channel {index}" for index in range(channels)]


def _at(values: Sequence[Any] | None, index: int) -> Any:
    if not values or index >= len(values):
        return None
    return values[index]


# ------------------------------------------------------------------ header
def _version_fields(manifest: Mapping[str, Any], store: Store) -> _Html:
    pixel = manifest["pixel"]
    shape = " \N{MULTIPLICATION SIGN} ".join(str(side) for side in pixel["shape"])
    parent = manifest.get("parent")
    libraries = manifest.get("libraries", {})
    fields = [
        ("dataset", manifest["dataset"]),
        ("version", manifest["version"]),
        ("created", manifest["created"]),
        ("parent", parent if parent is not None else "none (first version)"),
        ("flow run id", _tag("code", manifest.get("flow_run_id") or "n/a")),
        ("config hash", _tag("code", manifest["config_hash"])),
        ("store", _tag("code", str(store.root))),
        ("source", _tag("code", manifest["source"].get("root"))),
        (
            "pixels",
            f"{shape} {pixel['dtype']}, {pixel.get('layout', 'HWC')}, "
            f"colour mode {pixel.get('color_mode')}",
        ),
        ("resampling", manifest["resample"].get("method")),
        ("normalization", manifest["normalization"].get("params", {}).get("method")),
        (
            "libraries",
            ", ".join(f"{name} {version}" for name, version in libraries.items()),
        ),
    ]

    # Numbers such as the version are shown as text, so the column stays aligned.
    rows = [
        [name, value if isinstance(value, str) else _esc(value)]
        for name, value in fields
    ]
    return _table(["field", "value"], rows, table_id="version-fields", class_="fields")


def _summary_cards(manifest: Mapping[str, Any]) -> _Html:
    source = manifest["source"]
    totals_before = manifest["counts"]["totals_before"]
    totals_after = manifest["counts"]["totals_after"]
    train_profile = manifest["profile"]["before"]["splits"]["train"]
    arrow = "\N{RIGHTWARDS ARROW}"
    cards = [
        ("classes", _fmt(len(manifest["classes"])), False),
        ("samples", _fmt(sum(totals_before.values())), False),
        (
            f"train before {arrow} after resampling",
            f"{totals_before['train']:,} {arrow} {totals_after['train']:,}",
            False,
        ),
        ("train imbalance ratio", _fmt(train_profile.get("imbalance_ratio")), False),
        ("quarantined files", _fmt(source["quarantined"]), source["quarantined"] > 0),
        ("skipped files", _fmt(source["skipped"] + source["duplicates"]), False),
    ]
    return _tag(
        "div",
        _join(
            _tag(
                "div",
                _join(
                    [
                        _tag("div", value, class_="value"),
                        _tag("div", label, class_="label"),
                    ]
                ),
                class_="card warn" if warn else "card",
            )
            for label, value, warn in cards
        ),
        class_="cards",
        id="summary-cards",
    )


def _header(manifest: Mapping[str, Any], store: Store) -> _Html:
    title = f"{manifest['dataset']} \N{EM DASH} version {manifest['version']}"
    content = [
        _tag("h1", title),
        _summary_cards(manifest),
        _version_fields(manifest, store),
    ]
    return _tag("header", _join(content), id="header")


SECTIONS = (
    ("class-balance", "Class balance"),
    ("imbalance", "Imbalance and class weights"),
    ("normalization", "Normalization"),
    ("samples", "Samples"),
    ("quarantine", "Quarantine"),
    ("skipped", "Skipped files"),
    ("refresh", "Refresh"),
    ("diff", "Changes since parent"),
)


def _nav() -> _Html:
    links = _join(_tag("a", title, href=f"#{anchor}") for anchor, title in SECTIONS)
    return _tag("nav", links, id="contents")


def _section(anchor: str, body: Sequence[str]) -> _Html:
    title = dict(SECTIONS)[anchor]
    return _tag("section", _join([_tag("h2", title), *body]), id=anchor)


# ----------------------------------------------------------- class balance
def _class_counts_table(manifest: Mapping[str, Any]) -> _Html:
    classes = manifest["classes"]
    before = manifest["counts"]["before"]
    after = manifest["counts"]["after"]["train"]
    rows = []
    for name in classes[:MAX_TABLE_CLASSES]:
        counts = [int(before[split].get(name, 0)) for split in SPLITS]
        train_after = int(after.get(name, 0))
        rows.append(
            [name, *counts, sum(counts), train_after, _signed(train_after - counts[0])]
        )

    totals = [int(sum(before[split].values())) for split in SPLITS]
    total_after = int(sum(after.values()))
    total_row = [
        "all classes",
        *totals,
        sum(totals),
        total_after,
        _signed(total_after - totals[0]),
    ]
    table = _table(
        ["class", *SPLITS, "total", "train after resampling", "train change"],
        rows,
        table_id="class-counts",
        cell_classes={6: "num"},
        total=total_row,
    )
    more = _more(
        min(len(classes), MAX_TABLE_CLASSES),
        len(classes),
        "classes",
        "manifest.json under counts",
    )
    return _join([table, more])


def _resample_summary(manifest: Mapping[str, Any]) -> _Html:
    resample = manifest["resample"]
    method = resample.get("method")
    resolved = manifest.get("config_resolved", {}).get("resample", {})
    strategy = resolved.get("sampling_strategy")
    text = f"Resampling {method}"
    if strategy is not None:
        text += f" (sampling_strategy {strategy})"
    if method == "none":
        text += " left the training split as it is."
    else:
        text += (
            f" turned {_fmt(resample.get('n_input'))} training rows into "
            f"{_fmt(resample.get('n_output'))}: "
            f"{_fmt(resample.get('n_synthetic', 0))} synthetic, "
            f"{_fmt(resample.get('n_duplicated', 0))} duplicated, "
            f"{_fmt(resample.get('n_removed', 0))} removed. "
            "Validation and test splits are never resampled."
        )
    return _tag("p", text)


def _class_balance(manifest: Mapping[str, Any], files: Mapping[str, bytes]) -> _Html:
    parts = [
        _chart(
            files,
            CHART_FILES["class_balance"],
            "Bar chart of samples per class for each split before resampling and the "
            "training split after resampling",
            "class-balance-chart",
        ),
        _resample_summary(manifest),
        _class_counts_table(manifest),
    ]
    notes = [
        [name, detail["note"]]
        for name, detail in manifest["resample"].get("per_class", {}).items()
        if detail.get("note")
    ]
    if notes:
        parts.append(_tag("h3", "Resampling notes"))
        parts.append(_table(["class", "note"], notes, table_id="resample-notes"))
    return _section("class-balance", parts)


def _signed(value: int) -> _Html:
    if value > 0:
        return _Html(f'<span class="positive">+{value:,}</span>')
    if value < 0:
        return _Html(f'<span class="negative">\N{MINUS SIGN}{-value:,}</span>')
    return _Html("0")


# --------------------------------------------------------------- imbalance
def _profile_splits(profile: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """Return (label, metrics) for each split before resampling and train after."""
    entries = []
    before = profile.get("before", {})
    after = profile.get("after", {})
    for split in SPLITS:
        if split in before.get("splits", {}):
            entries.append((split, before["splits"][split]))
    if "train" in after.get("splits", {}):
        entries.append(("train after resampling", after["splits"]["train"]))
    if "overall" in before:
        entries.append(("all splits", before["overall"]))
    if "overall" in after:
        entries.append(("all splits after resampling", after["overall"]))
    return entries


def _metrics_table(entries: Sequence[tuple[str, Mapping[str, Any]]]) -> _Html:
    rows = [
        [
            label,
            int(metrics.get("total", 0)),
            int(metrics.get("n_classes", 0)),
            metrics.get("imbalance_ratio"),
            metrics.get("entropy"),
            _names(metrics.get("minority_classes", [])),
            _names(metrics.get("empty_classes", [])),
        ]
        for label, metrics in entries
    ]
    header = [
        "split",
        "samples",
        "non-empty classes",
        "imbalance ratio",
        "entropy",
        "minority classes",
        "empty classes",
    ]
    return _table(header, rows, table_id="imbalance-metrics")


def _weights_details(
    label: str, metrics: Mapping[str, Any], classes: Sequence[str], *, is_open: bool
) -> _Html:
    """Return a collapsible table of class weights and effective numbers."""
    weights = metrics.get("class_weights", {})
    rows = [
        [
            name,
            int(metrics.get("counts", {}).get(name, 0)),
            metrics.get("shares", {}).get(name),
            metrics.get("effective_numbers", {}).get(name),
            weights.get("inverse_frequency", {}).get(name),
            weights.get("effective_number", {}).get(name),
        ]
        for name in classes[:MAX_TABLE_CLASSES]
    ]
    header = [
        "class",
        "samples",
        "share",
        "effective number",
        "weight (inverse frequency)",
        "weight (effective number)",
    ]
    table = _table(header, rows, table_id=f"class-weights-{label.replace(' ', '-')}")
    more = _more(
        len(rows), len(classes), "classes", "profile.json in this version's folder"
    )
    summary = _tag("summary", f"Class weights and effective numbers: {label}")
    opening = "<details open>" if is_open else "<details>"
    return _Html(f"{opening}{summary}{table}{more}</details>")


def _imbalance(manifest: Mapping[str, Any]) -> _Html:
    profile = manifest["profile"]
    entries = _profile_splits(profile)
    resolved = manifest.get("config_resolved", {}).get("resample", {})
    intro = _tag(
        "p",
        "Imbalance ratio is the largest over the smallest non-empty class. Entropy "
        "is the Shannon entropy of the class shares divided by log(K), so it is 1 "
        "when the classes are balanced. A minority class has a share below "
        f"{_fmt(profile.get('minority_share'))}. Effective numbers use beta "
        f"{_fmt(profile.get('beta'))}: (1 - beta^n) / (1 - beta). The configured "
        f"class_weight_scheme is {_fmt(resolved.get('class_weight_scheme'))}.",
    )
    # One table per split and one for train after resampling; train starts open.
    details = [
        _weights_details(label, metrics, manifest["classes"], is_open=index == 0)
        for index, (label, metrics) in enumerate(entries[:4])
    ]
    return _section(
        "imbalance",
        [
            intro,
            _metrics_table(entries),
            _tag("h3", "Suggested class weights"),
            *details,
        ],
    )


# ----------------------------------------------------------- normalization
def _normalization_table(params: Mapping[str, Any], stats: Mapping[str, Any]) -> _Html:
    channels = len(stats.get("mean", [])) or len(params.get("zero_variance", []))
    robust = params.get("clip_low") is not None
    header = [
        "channel",
        "min",
        "max",
        "mean",
        "std",
        "offset",
        "scale",
        "offset (0-1)",
        "scale (0-1)",
    ]
    clip_keys = ("clip_low", "clip_high", "clip_low_0_1", "clip_high_0_1")
    if robust:
        header += ["clip low", "clip high", "clip low (0-1)", "clip high (0-1)"]
    header.append("zero variance")

    rows = []
    for index, name in enumerate(_channel_names(channels)):
        row = [name]
        row += [_at(stats.get(key), index) for key in ("min", "max", "mean", "std")]
        row += [
            _at(params.get(key), index)
            for key in ("offset", "scale", "offset_0_1", "scale_0_1")
        ]
        if robust:
            row += [_at(params.get(key), index) for key in clip_keys]
        row.append(bool(_at(params.get("zero_variance"), index)))
        rows.append(row)
    return _table(header, rows, table_id="normalization-table", digits=6)


def _torchvision_note(params: Mapping[str, Any]) -> list[_Html]:
    torchvision = params.get("torchvision_normalize")
    if not torchvision:
        text = (
            f"{_fmt(params.get('method'))} computes offset and scale for each image, "
            "so there are no dataset-wide parameters."
        )
        return [_tag("p", text, class_="muted")]
    mean = ", ".join(f"{value:.6f}" for value in torchvision.get("mean", []))
    std = ", ".join(f"{value:.6f}" for value in torchvision.get("std", []))
    code = f"transforms.Normalize(mean=[{mean}], std=[{std}])"
    line = _join(
        [
            _esc("torchvision, after ToTensor (0-1 scale): "),
            _tag("code", code, id="torchvision-normalize"),
        ]
    )
    parts = [_tag("p", line)]
    if params.get("clip_low") is not None:
        clamp = "Clamp the tensor to the 0-1 clip bounds before Normalize."
        parts.append(_tag("p", clamp, class_="muted"))
    return parts


def _normalization(manifest: Mapping[str, Any], files: Mapping[str, bytes]) -> _Html:
    section = manifest["normalization"]
    params = section.get("params", {})
    stats = section.get("stats", {})
    intro = (
        f"Method {_fmt(params.get('method'))}, fitted on the "
        f"{_fmt(section.get('fitted_on'))} split "
        f"({_fmt(section.get('train_images'))} images, "
        f"{_fmt(stats.get('n_pixels'))} pixels per channel) before resampling, "
        f"applied {_fmt(section.get('apply'))}. On the pixel scale "
        f"0..{_fmt(params.get('max_value'))}: y = (clip(x) - offset) / scale."
    )
    parts = [
        _tag("p", intro),
        _chart(
            files,
            CHART_FILES["channel_histograms"],
            "Histogram of each channel of the training split with mean, standard "
            "deviation, min, max and the fitted parameters marked",
            "channel-histograms-chart",
        ),
        _normalization_table(params, stats),
        *_torchvision_note(params),
    ]
    return _section("normalization", parts)


# ----------------------------------------------------------------- samples
@dataclass
class _Thumb:
    """An embedded thumbnail: PNG bytes and the hover text."""

    png: bytes
    title: str


def _thumbnail_png(pixels: np.ndarray) -> bytes:
    """Encode one HWC image as a PNG, shrunk to THUMBNAIL_MAX_SIDE; uint16 to 8 bits."""
    array = np.asarray(pixels)
    if array.dtype == np.uint16:
        array = (array >> 8).astype(np.uint8)
    elif array.dtype != np.uint8:
        array = np.clip(array, 0, 255).astype(np.uint8)
    if array.ndim == 3 and array.shape[2] == 1:
        image = Image.fromarray(array[:, :, 0], "L")
    elif array.ndim == 3 and array.shape[2] == 3:
        image = Image.fromarray(array, "RGB")
    else:
        raise ValueError(
            f"cannot draw a thumbnail of pixels with shape {array.shape}; expected "
            "(H, W, 1) or (H, W, 3)"
        )
    if max(image.size) > THUMBNAIL_MAX_SIDE:
        image.thumbnail(
            (THUMBNAIL_MAX_SIDE, THUMBNAIL_MAX_SIDE), Image.Resampling.LANCZOS
        )
    sink = io.BytesIO()
    image.save(sink, format="PNG", optimize=True)
    return sink.getvalue()


def _pick_originals(
    manifest: Mapping[str, Any], reader: ShardReader
) -> tuple[dict[str, list[_Thumb]], int]:
    """Read up to THUMBNAILS_PER_CLASS originals per class from the sample shards.

    Shards are read greedily, the one holding the most still-missing classes first,
    so rare classes are found without reading every shard. Returns the thumbnails
    by class and the number of shards read.
    """
    wanted = {
        name: THUMBNAILS_PER_CLASS
        for name in manifest["classes"][:MAX_THUMBNAIL_CLASSES]
    }
    thumbs: dict[str, list[_Thumb]] = defaultdict(list)
    remaining = [shard for shard in manifest["shards"] if shard["kind"] == "samples"]
    classes_in = {
        shard["path"]: {
            name
            for split_counts in shard.get("class_counts", {}).values()
            for name, count in split_counts.items()
            if count
        }
        for shard in remaining
    }

    def missing_classes(shard: Mapping[str, Any]) -> int:
        return sum(1 for name in classes_in[shard["path"]] if wanted.get(name))

    shards_read = 0
    while remaining and any(wanted.values()) and shards_read < MAX_SHARDS_READ:
        best = max(remaining, key=missing_classes)
        if missing_classes(best) == 0:
            break
        remaining.remove(best)
        rows = reader.read(best["path"])
        shards_read += 1
        for index, name in enumerate(rows.label_names):
            if not wanted.get(name):
                continue
            path = rows.source_paths[index] or rows.sample_ids[index][:12]
            thumbs[name].append(
                _Thumb(
                    _thumbnail_png(rows.pixels[index]), f"{path} ({rows.splits[index]})"
                )
            )
            wanted[name] -= 1
    return thumbs, shards_read


def _pick_synthetic(lineage: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Choose synthetic rows round-robin over classes, up to MAX_SYNTHETIC_EXAMPLES."""
    by_class: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for row in lineage:
        if row["origin"] == "synthetic" and len(row.get("parents") or []) == 2:
            by_class[row["label"]].append(row)
    chosen: list[Mapping[str, Any]] = []
    depth = 0
    while len(chosen) < MAX_SYNTHETIC_EXAMPLES and any(
        len(rows) > depth for rows in by_class.values()
    ):
        for rows in by_class.values():
            if len(rows) > depth and len(chosen) < MAX_SYNTHETIC_EXAMPLES:
                chosen.append(rows[depth])
        depth += 1
    return chosen


def _img(thumb: _Thumb, alt: str, extra_class: str = "") -> _Html:
    return _void(
        "img",
        src=_png_uri(thumb.png),
        alt=alt,
        title=thumb.title,
        class_=f"thumb {extra_class}".strip(),
    )


def _synthetic_figure(row: Mapping[str, Any], pixels: Sequence[np.ndarray]) -> _Html:
    """Return one synthetic sample between its parents; ``pixels`` is (sample, a, b)."""
    synthetic, first, second = pixels
    a_id, b_id = row["parents"]
    coefficient = float(row["coefficient"])
    parent_a = _Thumb(_thumbnail_png(first), f"parent a {a_id[:12]}")
    sample = _Thumb(_thumbnail_png(synthetic), f"synthetic {row['sample_id'][:12]}")
    parent_b = _Thumb(_thumbnail_png(second), f"parent b {b_id[:12]}")
    triple = _join(
        [
            _img(parent_a, "parent a"),
            _Html("<span>\N{RIGHTWARDS ARROW}</span>"),
            _img(sample, "synthetic sample", "synthetic"),
            _Html("<span>\N{LEFTWARDS ARROW}</span>"),
            _img(parent_b, "parent b"),
        ]
    )
    caption = _tag(
        "figcaption",
        _join(
            [
                _esc(f"class {row['label']}: a + "),
                _tag("span", f"{coefficient:.3f}", class_="coefficient"),
                _esc(" \N{MULTIPLICATION SIGN} (b \N{MINUS SIGN} a)"),
            ]
        ),
    )
    return _Html(
        f'<figure class="synthetic" data-coefficient="{coefficient!r}">'
        f'<div class="triple">{triple}</div>{caption}</figure>'
    )


def _synthetic_examples(
    manifest: Mapping[str, Any],
    store: Store,
    reader: ShardReader,
) -> tuple[_Html, int]:
    """Return figures of synthetic samples between their parents, and their count."""
    model = parse_manifest(dict(manifest), "report manifest")
    if "lineage" not in model.objects:
        return _tag("p", "This version has no lineage table.", class_="more"), 0
    synthetic = read_object_table(
        store,
        model,
        "lineage",
        columns=_LINEAGE_COLUMNS,
        where=pc.field("origin") == "synthetic",
    )
    total = len(synthetic)
    chosen = _pick_synthetic(synthetic)
    del synthetic
    if not chosen:
        text = (
            f"This version has no synthetic samples (resampling method "
            f"{manifest['resample'].get('method')})."
        )
        return _tag("p", text, class_="more"), 0

    # Parents are original training rows; the lineage records where each is stored.
    wanted = sorted({parent for row in chosen for parent in row["parents"]})
    located = {
        row["sample_id"]: (row["shard"], int(row["shard_row"]))
        for row in read_object_table(
            store,
            model,
            "lineage",
            columns=["sample_id", "shard", "shard_row"],
            where=(pc.field("origin") == "original")
            & pc.field("sample_id").isin(wanted),
        )
        if row.get("shard")
    }
    examples = [
        row for row in chosen if all(parent in located for parent in row["parents"])
    ]
    locations: list[tuple[str, int]] = []
    for row in examples:
        locations.append((row["shard"], int(row["shard_row"])))
        locations.extend(located[parent] for parent in row["parents"])
    pixels = reader.pixels_of(locations) if locations else np.zeros((0,))

    figures = [
        _synthetic_figure(row, pixels[3 * index : 3 * index + 3])
        for index, row in enumerate(examples)
    ]
    grid = _tag("div", _join(figures), class_="synthetic-grid", id="synthetic")
    return grid, total


def _samples(manifest: Mapping[str, Any], store: Store) -> _Html:
    reader = ShardReader(store, manifest["shards"])
    thumbs, shards_read = _pick_originals(manifest, reader)
    classes = manifest["classes"]
    before = manifest["counts"]["before"]
    rows = []
    for name in classes[:MAX_THUMBNAIL_CLASSES]:
        counts = ", ".join(
            f"{split} {before[split].get(name, 0):,}" for split in SPLITS
        )
        label = _join([_esc(name), _tag("span", counts, class_="muted")])
        images = _join(
            _img(thumb, f"sample of class {name}") for thumb in thumbs.get(name, [])
        )
        if not images:
            images = _tag("span", "no samples shown", class_="muted")
        rows.append(
            _tag(
                "div",
                _join(
                    [
                        _tag("div", label, class_="class-name"),
                        _tag("div", images, class_="thumbs"),
                    ]
                ),
                class_="class-row",
            )
        )
    intro = _tag(
        "p",
        f"Up to {THUMBNAILS_PER_CLASS} stored samples per class, as the version stores "
        f"them ({shards_read} sample shards read). Hover a thumbnail for its source "
        "path and split.",
    )
    synthetic, n_synthetic = _synthetic_examples(manifest, store, reader)
    return _section(
        "samples",
        [
            intro,
            _tag("div", _join(rows), id="sample-grid"),
            _more(
                min(len(classes), MAX_THUMBNAIL_CLASSES),
                len(classes),
                "classes without thumbnails",
                "the class tables above",
            ),
            _tag("h3", "Synthetic samples and their parents"),
            _tag(
                "p",
                f"{n_synthetic:,} synthetic training samples in this version. Each "
                "is interpolated pixel by pixel between two training samples of its "
                "class: a + coefficient \N{MULTIPLICATION SIGN} (b \N{MINUS SIGN} a).",
            ),
            synthetic,
        ],
    )


# -------------------------------------------------------------- quarantine
def _file_table(entries: Sequence[Mapping[str, Any]], table_id: str) -> _Html:
    """Return the first MAX_LISTED_FILES entries in a box that scrolls when long.

    The ``table row`` column is shown only when an entry has one, which happens
    for sources given as a labels table.
    """
    shown = entries[:MAX_LISTED_FILES]
    with_rows = any(entry.get("row") is not None for entry in shown)
    header = ["path", "reason", "message"]
    if with_rows:
        header.append("table row")
    rows = []
    for entry in shown:
        row = [entry.get("path"), entry.get("reason"), entry.get("message")]
        if with_rows:
            row.append(entry.get("row"))
        rows.append(row)
    table = _table(
        header,
        rows,
        table_id=table_id,
        cell_classes={0: "path", 2: "message"},
        scroll_class="scroll long",
    )
    return table


def _reason_table(by_reason: Mapping[str, int], table_id: str) -> _Html:
    rows = [[reason, int(count)] for reason, count in by_reason.items()]
    return _table(
        ["reason", "files"],
        rows,
        table_id=table_id,
        total=["all reasons", sum(by_reason.values())],
    )


def _quarantine(manifest: Mapping[str, Any]) -> _Html:
    source = manifest["source"]
    entries = source.get("quarantine", [])
    parts = [
        _tag(
            "p",
            f"{_fmt(source['files_seen'])} files seen, {_fmt(source['candidates'])} "
            f"image candidates: {_fmt(source['ingested'])} ingested, "
            f"{_fmt(source['quarantined'])} quarantined "
            f"({100 * float(source.get('rejected_fraction', 0.0)):.2f} % of "
            f"candidates), {_fmt(source['duplicates'])} duplicates.",
        )
    ]
    if not entries:
        parts.append(_tag("p", "No file was quarantined.", id="quarantine-empty"))
        return _section("quarantine", parts)
    parts += [
        _tag("h3", "Quarantined files by reason"),
        _reason_table(source.get("quarantined_by_reason", {}), "quarantine-reasons"),
        _tag("h3", "Quarantined files"),
        _file_table(entries, "quarantine-files"),
        _more(
            min(len(entries), MAX_LISTED_FILES),
            len(entries),
            "quarantined files",
            "manifest.json under source.quarantine",
        ),
    ]
    return _section("quarantine", parts)


def _skipped(manifest: Mapping[str, Any]) -> _Html:
    source = manifest["source"]
    entries = source.get("skipped_files", [])
    parts = []
    if entries:
        parts += [
            _reason_table(source.get("skipped_by_reason", {}), "skipped-reasons"),
            _file_table(entries, "skipped-files"),
            _more(
                min(len(entries), MAX_LISTED_FILES),
                len(entries),
                "skipped files",
                "manifest.json under source.skipped_files",
            ),
        ]
    else:
        parts.append(_tag("p", "No file was skipped.", id="skipped-empty"))
    empty = source.get("empty_classes", [])
    if empty:
        parts.append(
            _tag("p", _join([_esc("Classes without images: "), _names(empty)]))
        )
    warnings = source.get("label_warnings", [])
    if warnings:
        parts.append(_tag("h3", "Label warnings"))
        parts.append(
            _tag("ul", _join(_tag("li", text) for text in warnings[:MAX_LISTED_FILES]))
        )
        parts.append(
            _more(
                min(len(warnings), MAX_LISTED_FILES),
                len(warnings),
                "label warnings",
                "manifest.json under source.label_warnings",
            )
        )
    return _section("skipped", parts)


# ----------------------------------------------------------------- refresh
def _refresh(manifest: Mapping[str, Any]) -> _Html:
    refresh = manifest["refresh"]
    rows = [[key.replace("_", " "), value] for key, value in sorted(refresh.items())]
    if refresh.get("rebuild"):
        text = (
            f"Rebuild: {refresh['rebuild']}. Every file was decoded again and no "
            "shard of the parent version was reused. The file counters still compare "
            "with the parent."
        )
    else:
        text = (
            "Counters of the incremental refresh against the parent version. Files "
            "are compared by size and mtime, and only new or changed files are "
            "decoded."
        )
    return _section(
        "refresh",
        [
            _tag("p", text),
            _table(["counter", "value"], rows, table_id="refresh-counters"),
        ],
    )


# -------------------------------------------------------------------- diff
def _sources_rows(
    manifest: Mapping[str, Any], parent: Mapping[str, Any], store: Store
) -> tuple[list[dict[str, Any]] | None, list[dict[str, Any]] | None]:
    """Return the sources tables of the parent and the version, or None for both.

    A missing or damaged table is logged and leaves the diff with count changes
    only, so the report of an otherwise good version is still written.
    """
    try:
        parent_rows = read_object_table(
            store,
            parse_manifest(dict(parent), "parent manifest"),
            "sources",
            columns=DIFF_SOURCE_COLUMNS,
        )
        rows = read_object_table(
            store,
            parse_manifest(dict(manifest), "report manifest"),
            "sources",
            columns=DIFF_SOURCE_COLUMNS,
        )
    except CorruptObjectError as error:
        logger.warning(
            "report of version %s: cannot read the sources tables (%s); the diff "
            "shows count changes without added and removed samples",
            manifest["version"],
            error,
        )
        return None, None
    return parent_rows, rows


def _count_rows(diff: Mapping[str, Any]) -> list[list[Any]]:
    """Return (split, class, parent count, count, change, added, removed) rows.

    Without sample ids, added and removed are "n/a" and only changed counts are
    listed.
    """
    samples = diff.get("samples")
    rows = []
    for split, by_class in diff["counts"]["before"].items():
        for name, pair in by_class.items():
            if samples is None:
                added: Any = "n/a"
                removed: Any = "n/a"
                changed = bool(pair["change"])
            else:
                added = len(samples["added"].get(split, {}).get(name, []))
                removed = len(samples["removed"].get(split, {}).get(name, []))
                changed = bool(pair["change"] or added or removed)
            if changed:
                change = _signed(pair["change"])
                rows.append([split, name, pair["a"], pair["b"], change, added, removed])
    return rows


def _pair_cells(pair: Mapping[str, Any]) -> list[Any]:
    return [pair.get("a"), pair.get("b"), pair.get("change")]


def _diff_imbalance(diff: Mapping[str, Any], old: str, new: str) -> list[_Html]:
    rows = []
    for stage, suffix in (("before", ""), ("after", " after resampling")):
        for scope, pair in diff["imbalance_ratio"][stage].items():
            rows.append([f"{scope}{suffix}", *_pair_cells(pair)])
    return [
        _tag("h3", "Imbalance ratio"),
        _table(["split", old, new, "change"], rows, table_id="diff-imbalance"),
    ]


def _diff_statistics(diff: Mapping[str, Any], old: str, new: str) -> list[_Html]:
    normalization = diff["normalization"]
    channels = normalization["channels"]
    rows = [
        [str(row["channel"]), statistic, *_pair_cells(row[statistic])]
        for row in channels
        for statistic in ("mean", "std", "offset", "scale")
    ]
    method = normalization["method"]
    text = (
        f"Normalization method {_fmt(method['a'])} \N{RIGHTWARDS ARROW} "
        f"{_fmt(method['b'])}. Mean and std are on the raw pixel scale."
    )
    return [
        _tag("h3", "Training statistics per channel"),
        _tag("p", text),
        _table(
            ["channel", "statistic", old, new, "change"],
            rows,
            table_id="diff-statistics",
            digits=6,
        ),
    ]


def _diff_config(diff: Mapping[str, Any], old: str, new: str) -> list[_Html]:
    # Values are shown as JSON, so a string "5" and a number 5 look different.
    rows = [
        [
            change["key"],
            change["status"],
            json.dumps(change["a"], ensure_ascii=False),
            json.dumps(change["b"], ensure_ascii=False),
        ]
        for change in diff["config"]
    ]
    parts = [_tag("h3", "Config keys changed")]
    if not rows:
        parts.append(_tag("p", "No config key changed.", id="diff-config-none"))
        return parts
    parts += [
        _table(
            ["key", "status", old, new],
            rows[:MAX_CONFIG_CHANGES],
            table_id="diff-config",
            cell_classes={2: "path", 3: "path"},
        ),
        _more(
            min(len(rows), MAX_CONFIG_CHANGES),
            len(rows),
            "config keys",
            "config_resolved of the two manifests",
        ),
    ]
    return parts


def _diff_shards(diff: Mapping[str, Any], old: str, new: str) -> list[_Html]:
    shards = diff["shards"]
    rows = [
        [label, shards[key]["count"], shards[key]["rows"], shards[key]["bytes"]]
        for key, label in (
            ("shared", "shared with the parent"),
            ("only_a", f"only in {old}"),
            ("only_b", f"only in {new}"),
        )
    ]
    return [
        _tag("h3", "Shards"),
        _table(["shards", "count", "rows", "bytes"], rows, table_id="diff-shards"),
    ]


def _diff_summary(
    diff: Mapping[str, Any], manifest: Mapping[str, Any], parent: Mapping[str, Any]
) -> list[_Html]:
    samples = diff["samples"]
    if samples is not None:
        totals = samples["totals"]
        sample_text = (
            f"Samples by sample id: {totals['added']:,} added, {totals['removed']:,} "
            f"removed, {totals['moved']:,} moved to another split or class, "
            f"{totals['unchanged']:,} unchanged."
        )
    else:
        sample_text = (
            "The sources tables could not be read, so only count changes are shown."
        )
    classes = set(manifest["classes"])
    parent_classes = set(parent["classes"])
    added = [name for name in manifest["classes"] if name not in parent_classes]
    removed = [name for name in parent["classes"] if name not in classes]
    after = diff["counts"]["after"]["train"]
    after_old = sum(pair["a"] for pair in after.values())
    after_new = sum(pair["b"] for pair in after.values())
    compared = (
        f"Compared with version {parent['version']} (created {parent['created']}). "
        f"{sample_text}"
    )
    class_line = _join(
        [
            _esc("Classes added: "),
            _names(added),
            _esc(". Classes removed: "),
            _names(removed),
            _esc(
                f". Training rows after resampling: {after_old:,} "
                f"\N{RIGHTWARDS ARROW} {after_new:,}."
            ),
        ]
    )
    return [_tag("p", compared), _tag("p", class_line)]


def _diff_counts(diff: Mapping[str, Any], old: str, new: str) -> list[_Html]:
    rows = _count_rows(diff)
    parts = [_tag("h3", "Samples per split and class")]
    if not rows:
        parts.append(
            _tag("p", "No sample was added or removed.", id="diff-counts-none")
        )
        return parts
    parts += [
        _table(
            ["split", "class", old, new, "change", "added", "removed"],
            rows[:MAX_TABLE_CLASSES],
            table_id="diff-counts",
            cell_classes={4: "num"},
        ),
        _more(
            min(len(rows), MAX_TABLE_CLASSES),
            len(rows),
            "changed split and class pairs",
            "the output of `imgprep diff`",
        ),
    ]
    return parts


def _diff(
    manifest: Mapping[str, Any], parent: Mapping[str, Any] | None, store: Store
) -> _Html:
    if parent is None:
        text = "This is the first version, so there is no parent to compare."
        return _section("diff", [_tag("p", text, id="diff-none")])
    parent_rows, rows = _sources_rows(manifest, parent, store)
    diff = diff_versions(parent, manifest, parent_rows, rows)
    old, new = f"version {parent['version']}", f"version {manifest['version']}"
    parts = [
        *_diff_summary(diff, manifest, parent),
        *_diff_counts(diff, old, new),
        *_diff_imbalance(diff, old, new),
        *_diff_statistics(diff, old, new),
        *_diff_config(diff, old, new),
        *_diff_shards(diff, old, new),
    ]
    return _section("diff", parts)


# ------------------------------------------------------------------ render
def render_report(
    manifest: dict[str, Any],
    *,
    store: Store,
    files: Mapping[str, bytes],
    parent_manifest: dict[str, Any] | None,
) -> bytes:
    """Render the version's report as one self-contained HTML document.

    Parameters
    ----------
    manifest : dict
        The version's manifest as :func:`imgprep.version.build_manifest` returns
        it. Its shards and objects must already be in ``store``.
    store : Store
        The store; the sample grid and the diff read shards and tables from it.
    files : Mapping[str, bytes]
        The version's files; the charts ``class_balance.png`` and
        ``channel_histograms.png`` are embedded from here.
    parent_manifest : dict or None
        The parent version's manifest, for the diff section; None for a first
        version.

    Returns
    -------
    bytes
        The UTF-8 encoded page.

    Raises
    ------
    CorruptObjectError
        When a shard or the lineage table does not match the manifest.
    """
    title = f"{manifest['dataset']} version {manifest['version']} \N{EM DASH} imgprep report"
    body = [
        _header(manifest, store),
        _nav(),
        _tag(
            "main",
            _join(
                [
                    _class_balance(manifest, files),
                    _imbalance(manifest),
                    _normalization(manifest, files),
                    _samples(manifest, store),
                    _quarantine(manifest),
                    _skipped(manifest),
                    _refresh(manifest),
                    _diff(manifest, parent_manifest, store),
                ]
            ),
        ),
        _tag(
            "footer",
            f"Written by imgprep {manifest.get('libraries', {}).get('imgprep', '')} from "
            f"the manifest of version {manifest['version']}. manifest.json in the same "
            "folder lists every object and file of the version with its sha256.",
        ),
    ]
    document = (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{CONTENT_SECURITY_POLICY}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_esc(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )
    # Class names and paths may hold lone surrogates from undecodable file names.
    return document.encode("utf-8", errors="backslashreplace")
