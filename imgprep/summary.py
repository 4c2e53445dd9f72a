"""Short human-readable summaries of a manifest, as text tables or Markdown."""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

__all__ = ["summary_markdown", "summary_rows"]


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def summary_rows(manifest: Mapping[str, Any]) -> dict[str, list[list[str]]]:
    """Return the summary tables of a manifest as lists of text rows.

    Keys: ``version``, ``classes`` (counts per split before resampling and the
    training split after), ``normalization`` (per channel) and ``shards``.
    """
    counts = manifest["counts"]
    before, after = counts["before"], counts["after"]
    source = manifest["source"]
    refresh = manifest["refresh"]
    version_rows = [
        ["dataset", str(manifest["dataset"])],
        ["version", str(manifest["version"])],
        ["parent", _fmt(manifest.get("parent"))],
        ["created", str(manifest["created"])],
        ["config hash", str(manifest["config_hash"])[:16]],
        ["pixels", f"{manifest['pixel']['shape']} {manifest['pixel']['dtype']}"],
        [
            "files",
            f"{source['files_seen']} seen, {source['ingested']} ingested, "
            f"{source['quarantined']} quarantined, {source['skipped']} skipped, "
            f"{source['duplicates']} duplicates",
        ],
        ["quarantined by reason", _fmt(source["quarantined_by_reason"] or "none")],
        [
            "refresh",
            f"decoded {refresh['images_decoded']}, new {refresh['files_new']}, changed "
            f"{refresh['files_changed']}, removed {refresh['files_removed']}, "
            f"unchanged {refresh['files_unchanged']}",
        ],
        ["resampling", str(manifest["resample"].get("method"))],
    ]
    class_rows = [["class", "train", "val", "test", "train after"]]
    for name in manifest["classes"]:
        class_rows.append(
            [
                name,
                str(before["train"].get(name, 0)),
                str(before["val"].get(name, 0)),
                str(before["test"].get(name, 0)),
                str(after["train"].get(name, 0)),
            ]
        )
    normalization = manifest["normalization"]
    params = normalization.get("params", {})
    stats = normalization.get("stats", {})
    channels = len(stats.get("mean", []))
    names = ["R", "G", "B"] if channels == 3 else ["L"] * channels
    norm_rows = [["channel", "min", "max", "mean", "std", "offset", "scale"]]
    for index in range(channels):
        offset = params.get("offset") or []
        scale = params.get("scale") or []
        norm_rows.append(
            [
                names[index],
                _fmt(stats["min"][index]),
                _fmt(stats["max"][index]),
                _fmt(stats["mean"][index], 6),
                _fmt(stats["std"][index], 6),
                _fmt(offset[index] if offset else None, 6),
                _fmt(scale[index] if scale else None, 6),
            ]
        )
    shard_rows = [["kind", "shards", "rows", "bytes"]]
    kinds: dict[str, list[int]] = {}
    for shard in manifest["shards"]:
        totals = kinds.setdefault(shard["kind"], [0, 0, 0])
        totals[0] += 1
        totals[1] += shard["rows"]
        totals[2] += shard["bytes"]
    for kind, (number, rows, size) in kinds.items():
        shard_rows.append([kind, str(number), str(rows), f"{size:,}"])
    return {
        "version": version_rows,
        "classes": class_rows,
        "normalization": norm_rows,
        "shards": shard_rows,
    }


def _markdown_cell(text: str) -> str:
    """Escape text from data (class names, paths) for a Markdown table cell."""
    text = html.escape(str(text), quote=False)
    text = text.replace("|", "\\|").replace("\r", " ").replace("\n", " ")
    for character in "\\`*_[]":
        if character != "\\":
            text = text.replace(character, "\\" + character)
    return text


def _markdown_table(rows: list[list[str]]) -> str:
    head, *body = rows
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += [
        "| " + " | ".join(_markdown_cell(cell) for cell in row) + " |" for row in body
    ]
    return "\n".join(lines)


def summary_markdown(manifest: Mapping[str, Any], location: str) -> str:
    """Return a Markdown summary of a version for a Prefect artifact."""
    tables = summary_rows(manifest)
    params = manifest["normalization"].get("params", {})
    parts = [
        f"# {manifest['dataset']} version {manifest['version']}",
        f"Stored at `{location}`.",
        _markdown_table([["field", "value"], *tables["version"]]),
        "## Classes",
        _markdown_table(tables["classes"]),
        f"## Normalization ({params.get('method', 'n/a')}, fitted on the training split)",
        _markdown_table(tables["normalization"]),
        "## Shards",
        _markdown_table(tables["shards"]),
    ]
    return "\n\n".join(parts) + "\n"
