"""Find the candidate images of a source without decoding them.

Two layouts are supported:

* A class-per-folder tree: ``ROOT/CLASS/.../FILE``. When every top-level folder is a
  split name (``train``, ``val``, ``test`` or an alias such as ``validation``), the
  tree is ``ROOT/SPLIT/CLASS/.../FILE`` and the folder gives the split.
* A labels table (CSV or Parquet) with a path column, a label column and optional
  split and group columns; paths are relative to ``ROOT``.

Files are recognised by their leading bytes, not by extension. Hidden files and
folders (a name starting with ``.``), operating-system files such as ``Thumbs.db``,
files whose bytes are not an image, and problem rows of a labels table are not
dropped silently: each one is listed in :attr:`ScanResult.skipped` with a reason code.
The exception is a file whose bytes no format recognises but whose extension names
a format Pillow opens (``.jpg``, ``.png``...). It stays a candidate, so decoding
quarantines it as ``not_an_image`` and it counts towards
``ingest.max_rejected_fraction``, as an HTML error page saved as ``photo.jpg``
should. :data:`imgprep.reasons.REASON_CODES` describes every reason code.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from imgprep.config import SourceSettings
from imgprep.decode import SNIFF_BYTES, opened_format_for_name, sniff_format
from imgprep.errors import Quarantined, SourceError
from imgprep.paths import display_path, is_inside
from imgprep.split import normalize_split_name

__all__ = [
    "Candidate",
    "check_source",
    "KnownFile",
    "ScanResult",
    "natural_class_order",
    "scan_source",
]

logger = logging.getLogger(__name__)

SYSTEM_FILES = frozenset({"thumbs.db", "ehthumbs.db", "desktop.ini", "icon\r"})


@dataclass(frozen=True)
class Candidate:
    """One file that the ingest step will use or decode.

    ``path`` is relative to the source root with ``/`` separators and may hold
    surrogate escapes for file names that are not valid UTF-8; ``key`` is the same
    path made printable, which is what records and tables store.
    """

    path: str
    key: str
    label: str
    size: int
    mtime_ns: int
    source_split: str | None = None
    group: str | None = None
    row: int | None = None


@dataclass(frozen=True)
class KnownFile:
    """What an earlier version recorded for a file with this size and mtime."""

    size: int
    mtime_ns: int
    status: str
    reason: str | None = None


@dataclass
class ScanResult:
    """Candidates and skipped entries of one source scan."""

    layout: str
    root: str
    candidates: list[Candidate] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    empty_classes: list[str] = field(default_factory=list)
    label_warnings: list[str] = field(default_factory=list)
    has_source_split: bool = False
    files_seen: int = 0

    @property
    def classes(self) -> list[str]:
        """Sorted class names that have at least one candidate file."""
        return natural_class_order({c.label for c in self.candidates})

    def skipped_by_reason(self) -> dict[str, int]:
        return dict(sorted(Counter(item["reason"] for item in self.skipped).items()))


def natural_class_order(names: set[str] | list[str]) -> list[str]:
    """Sort class names, numerically when every name is an integer."""
    names = list(set(names))
    if names and all(name.strip().lstrip("-").isdigit() for name in names):
        return sorted(names, key=lambda name: (int(name), name))
    return sorted(names)


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _skip(
    result: ScanResult, path: str, reason: str, message: str, **extra: Any
) -> None:
    entry = {
        "path": display_path(path),
        "reason": reason,
        "message": display_path(message),
    }
    entry.update(extra)
    result.skipped.append(entry)


def _sniff(absolute: str) -> str | None:
    """Return the format that a file's leading bytes identify.

    Raises
    ------
    Quarantined
        With reason ``missing_file`` or ``unreadable`` when the file cannot be read.
    """
    try:
        with open(absolute, "rb") as handle:
            prefix = handle.read(SNIFF_BYTES)
    except FileNotFoundError:
        raise Quarantined("missing_file", "file vanished during the scan") from None
    except OSError as error:
        raise Quarantined(
            "unreadable", f"{type(error).__name__}: {error.strerror or error}"
        ) from None
    return sniff_format(prefix, os.path.basename(absolute))


def _walk_files(
    top: str,
    relative_to: str,
    settings: SourceSettings,
    result: ScanResult,
    real_root: str,
) -> Iterator[tuple[str, os.stat_result]]:
    """Yield (relative path, stat) of the regular files below ``top``, sorted.

    Hidden entries, symbolic links (unless followed), links that resolve outside
    the root and link loops are recorded as skipped. A folder reached twice through
    links is walked once, so the walk ends.
    """
    visited: set[tuple[int, int]] = set()
    stack = [top]
    while stack:
        directory = stack.pop()
        rel = os.path.relpath(directory, relative_to).replace(os.sep, "/")
        try:
            info = os.stat(directory)
            if (info.st_dev, info.st_ino) in visited:
                continue
            visited.add((info.st_dev, info.st_ino))
            entries = sorted(os.scandir(directory), key=lambda entry: entry.name)
        except FileNotFoundError:
            _skip(result, rel + "/", "missing_file", "folder vanished during the scan")
            continue
        except OSError as error:
            _skip(result, rel + "/", "unreadable", f"cannot list folder: {error}")
            continue
        subdirectories = []
        for entry in entries:
            rel = os.path.relpath(entry.path, relative_to).replace(os.sep, "/")
            if _is_hidden(entry.name):
                kind = "folder" if entry.is_dir(follow_symlinks=False) else "file"
                _skip(
                    result,
                    rel + ("/" if kind == "folder" else ""),
                    "hidden",
                    f"hidden {kind} skipped",
                )
                continue
            try:
                is_link = entry.is_symlink()
                if is_link:
                    if not settings.follow_symlinks:
                        _skip(
                            result,
                            rel,
                            "symlink",
                            "symbolic link not followed; set "
                            "source.follow_symlinks: true to follow links",
                        )
                        continue
                    target = os.path.realpath(entry.path)
                    if not is_inside(target, real_root):
                        _skip(
                            result,
                            rel,
                            "outside_root",
                            f"symbolic link resolves outside the source root: {target}",
                        )
                        continue
                entry_stat = entry.stat(follow_symlinks=True)
            except FileNotFoundError:
                _skip(result, rel, "missing_file", "file vanished during the scan")
                continue
            except OSError as error:
                if error.errno == errno.ELOOP:
                    _skip(result, rel, "symlink", "symbolic link loop not followed")
                else:
                    _skip(result, rel, "unreadable", str(error))
                continue
            if stat.S_ISDIR(entry_stat.st_mode):
                subdirectories.append(entry.path)
            elif stat.S_ISREG(entry_stat.st_mode):
                yield rel, entry_stat
            else:
                _skip(result, rel, "not_a_file", "not a regular file")
        stack.extend(reversed(subdirectories))


def _classify_file(
    root: str,
    rel: str,
    file_stat: os.stat_result,
    settings: SourceSettings,
    known: Mapping[str, KnownFile],
    result: ScanResult,
) -> bool:
    """Return True when the file is a candidate image; record it as skipped if not."""
    name = rel.rsplit("/", 1)[-1]
    result.files_seen += 1
    if name.lower() in SYSTEM_FILES:
        _skip(result, rel, "system_file", "operating-system file skipped")
        return False
    if "." not in name.strip(".") and settings.extensionless == "skip":
        _skip(
            result,
            rel,
            "no_extension",
            "file without an extension skipped; set source.extensionless: sniff "
            "to decode such files when their bytes are an image",
        )
        return False
    previous = known.get(display_path(rel))
    if (
        previous is not None
        and previous.size == file_stat.st_size
        and previous.mtime_ns == file_stat.st_mtime_ns
    ):
        if previous.status == "skipped":
            _skip(
                result,
                rel,
                previous.reason or "not_an_image",
                "unchanged since the previous version, which skipped it",
            )
            return False
        return True
    if file_stat.st_size == 0:
        return True  # decoding reports it as empty, with the reason code
    if opened_format_for_name(name) is not None:
        # A name that claims an image makes the file a candidate whatever its bytes
        # are, and decoding reads it anyway: reading its first bytes here as well
        # would only cost a read per file.
        return True
    try:
        fmt = _sniff(os.path.join(root, rel))
    except Quarantined as error:
        _skip(result, rel, error.reason, error.message)
        return False
    if fmt is None:
        _skip(result, rel, "not_an_image", "leading bytes are not a known image format")
        return False
    return True


def _folder_entry_kind(
    entry: os.DirEntry[str],
    rel: str,
    settings: SourceSettings,
    real_root: str,
    result: ScanResult,
) -> str | None:
    """Return ``"folder"`` or ``"file"`` for an entry above the class folders.

    Hidden entries, symbolic links that are not followed, links that resolve
    outside the root and entries that cannot be read are recorded as skipped, and
    None is returned for them.
    """
    try:
        is_folder = entry.is_dir(follow_symlinks=False)
        if _is_hidden(entry.name):
            kind = "folder" if is_folder else "file"
            _skip(
                result,
                rel + ("/" if is_folder else ""),
                "hidden",
                f"hidden {kind} skipped",
            )
            return None
        if entry.is_symlink():
            if not settings.follow_symlinks:
                _skip(
                    result,
                    rel,
                    "symlink",
                    "symbolic link not followed; set source.follow_symlinks: true "
                    "to follow links",
                )
                return None
            target = os.path.realpath(entry.path)
            if not is_inside(target, real_root):
                _skip(
                    result,
                    rel,
                    "outside_root",
                    f"symbolic link resolves outside the source root: {target}",
                )
                return None
            is_folder = entry.is_dir(follow_symlinks=True)
    except OSError as error:
        _skip(result, rel, "unreadable", str(error))
        return None
    return "folder" if is_folder else "file"


def _sorted_entries(
    directory: str, rel: str, result: ScanResult
) -> list[os.DirEntry[str]]:
    """Return the entries of a folder by name, or [] after recording why not."""
    try:
        return sorted(os.scandir(directory), key=lambda entry: entry.name)
    except FileNotFoundError:
        _skip(result, rel + "/", "missing_file", "folder vanished during the scan")
    except OSError as error:
        _skip(result, rel + "/", "unreadable", f"cannot list folder: {error}")
    return []


def _scan_folder(
    root: str, settings: SourceSettings, known: Mapping[str, KnownFile]
) -> ScanResult:
    result = ScanResult(layout="folder", root=root)
    real_root = os.path.realpath(root)
    try:
        top_entries = sorted(os.scandir(root), key=lambda entry: entry.name)
    except OSError as error:
        raise SourceError(f"cannot list source root {root}: {error}") from None
    top_kinds = [
        (entry, _folder_entry_kind(entry, entry.name, settings, real_root, result))
        for entry in top_entries
    ]
    top_dirs = [entry for entry, kind in top_kinds if kind == "folder"]
    split_dirs = {
        entry.name: normalize_split_name(entry.name)
        for entry in top_dirs
        if normalize_split_name(entry.name) is not None
    }
    split_layout = bool(top_dirs) and len(split_dirs) == len(top_dirs)
    result.has_source_split = split_layout

    # Files directly under the root (or under a split folder) belong to no class.
    for entry, kind in top_kinds:
        if kind == "file":
            result.files_seen += 1
            _skip(
                result,
                entry.name,
                "no_class_folder",
                "file is not inside a class folder",
            )

    class_dirs: list[tuple[str | None, str, str]] = []  # (split, class, path)
    if split_layout:
        for entry in top_dirs:
            split = split_dirs[entry.name]
            for child in _sorted_entries(entry.path, entry.name, result):
                rel = f"{entry.name}/{child.name}"
                kind = _folder_entry_kind(child, rel, settings, real_root, result)
                if kind == "folder":
                    class_dirs.append((split, child.name, child.path))
                elif kind == "file":
                    result.files_seen += 1
                    _skip(
                        result,
                        rel,
                        "no_class_folder",
                        "file is not inside a class folder",
                    )
    else:
        class_dirs = [(None, entry.name, entry.path) for entry in top_dirs]

    per_class: Counter[str] = Counter()
    folder_names: set[str] = set()
    for split, folder_name, directory in class_dirs:
        # A folder name that is not valid UTF-8 becomes a printable class name.
        label = display_path(folder_name)
        folder_names.add(label)
        for rel, file_stat in _walk_files(directory, root, settings, result, real_root):
            if _classify_file(root, rel, file_stat, settings, known, result):
                per_class[label] += 1
                result.candidates.append(
                    Candidate(
                        path=rel,
                        key=display_path(rel),
                        label=label,
                        size=file_stat.st_size,
                        mtime_ns=file_stat.st_mtime_ns,
                        source_split=split,
                    )
                )
    result.empty_classes = sorted(name for name in folder_names if per_class[name] == 0)
    result.candidates.sort(key=lambda candidate: candidate.key)
    _skip_key_collisions(result)
    return result


def _skip_key_collisions(result: ScanResult) -> None:
    """Skip candidates whose printable path equals that of an earlier candidate.

    Two names collide only when one contains undecodable bytes and the other
    contains the same ``\\xNN`` text. Records are keyed by printable path, so only
    the first file of each key (by raw name) is kept and the others are listed.
    """
    by_key: dict[str, list[Candidate]] = defaultdict(list)
    for candidate in result.candidates:
        by_key[candidate.key].append(candidate)
    if all(len(group) == 1 for group in by_key.values()):
        return
    kept = []
    for key, group in by_key.items():
        group.sort(
            key=lambda candidate: candidate.path.encode("utf-8", "surrogateescape")
        )
        kept.append(group[0])
        for other in group[1:]:
            _skip(
                result,
                other.path,
                "name_collision",
                f"printable path {key!r} is also that of another file, which is "
                "ingested under it; rename one of the two files",
            )
    result.candidates = sorted(kept, key=lambda candidate: candidate.key)


def _read_table(path: str) -> list[dict[str, Any]]:
    import pandas as pd

    lower = path.lower()
    try:
        if lower.endswith((".parquet", ".pq")):
            frame = pd.read_parquet(path)
            frame = frame.astype(object).where(frame.notna(), None)
            return frame.to_dict("records")
        if lower.endswith((".csv", ".tsv", ".txt")):
            # With header=None, a row with more cells than the header is a parse
            # error. With a header, pandas would silently turn the extra leading
            # cells into an index and shift every column.
            cells = pd.read_csv(
                path,
                header=None,
                dtype=str,
                keep_default_na=False,
                encoding="utf-8-sig",
                sep="\t" if lower.endswith(".tsv") else ",",
                skipinitialspace=False,
            )
        else:
            raise SourceError(
                f"labels table {path} has an unknown extension; use .csv, .tsv or "
                ".parquet"
            )
    except FileNotFoundError:
        raise SourceError(f"labels table not found: {path}") from None
    except UnicodeDecodeError as error:
        raise SourceError(
            f"labels table {path} is not valid UTF-8 ({error}); save it as UTF-8"
        ) from None
    except (ValueError, OSError, NotImplementedError) as error:
        if isinstance(error, SourceError):
            raise
        raise SourceError(f"cannot read labels table {path}: {error}") from None
    header = [str(name) for name in cells.iloc[0]]
    duplicated = sorted({name for name in header if header.count(name) > 1})
    if duplicated:
        raise SourceError(
            f"labels table {path} repeats the column names {duplicated}; give each "
            "column its own name"
        )
    return [dict(zip(header, values, strict=True)) for values in cells.values[1:]]


def _cell(row: Mapping[str, Any], column: str | None) -> str | None:
    if column is None or column not in row:
        return None
    value = row[column]
    if value is None:
        return None
    if isinstance(value, bytes):
        # A Parquet binary cell can name a file that is not valid UTF-8.
        return os.fsdecode(value)
    return str(value)


def _normalize_label(label: str, settings: SourceSettings) -> str:
    if settings.label_normalization.strip:
        label = label.strip()
    if settings.label_normalization.case == "lower":
        label = label.lower()
    elif settings.label_normalization.case == "upper":
        label = label.upper()
    return label


def _table_path(raw: str) -> str:
    """Return the relative POSIX path that a table's path cell names.

    Surrounding whitespace is removed and backslashes count as separators.

    Raises
    ------
    Quarantined
        With reason ``blank_path``, ``invalid_path`` or ``outside_root``.
    """
    text = raw.strip().replace("\\", "/")
    if "\x00" in text:
        raise Quarantined(
            "invalid_path",
            "path contains a NUL character, which is invalid in a file name",
        )
    if text.startswith("/") or (len(text) > 1 and text[1] == ":"):
        raise Quarantined(
            "outside_root",
            "path is absolute; table paths must be relative to source.root",
        )
    parts = [part for part in PurePosixPath(text).parts if part not in ("", ".")]
    if ".." in parts:
        raise Quarantined(
            "outside_root",
            "path contains '..'; table paths must stay below source.root",
        )
    if not parts:
        raise Quarantined("blank_path", "path cell is blank")
    return "/".join(parts)


def _scan_table(
    root: str, settings: SourceSettings, known: Mapping[str, KnownFile]
) -> ScanResult:
    del known  # a table names its files; nothing is sniffed, so nothing is reused
    assert settings.labels is not None
    result = ScanResult(layout="table", root=root)
    rows = _read_table(settings.labels)
    columns = settings.columns
    available = list(rows[0].keys()) if rows else []
    for required in (columns.path, columns.label):
        if rows and required not in rows[0]:
            raise SourceError(
                f"labels table {settings.labels} has no column {required!r} "
                f"(columns: {available}); set source.columns to the right names"
            )
    split_column = columns.split if rows and columns.split in rows[0] else None
    group_column = columns.group if rows and columns.group in rows[0] else None
    result.has_source_split = split_column is not None
    real_root = os.path.realpath(root)

    by_path: dict[str, list[tuple[int, str, str | None, str | None]]] = defaultdict(
        list
    )
    for index, row in enumerate(rows, start=1):
        raw_path = _cell(row, columns.path) or ""
        # Labels and groups are stored in JSON and Parquet, so a binary cell that
        # is not valid UTF-8 gets the same \xNN escapes as a path.
        raw_label = display_path(_cell(row, columns.label) or "")
        try:
            rel = _table_path(raw_path)
        except Quarantined as error:
            _skip(result, raw_path, error.reason, error.message, row=index)
            continue
        label = _normalize_label(raw_label, settings)
        if not label.strip():
            _skip(
                result,
                rel,
                "blank_label",
                f"label cell is blank ({raw_label!r})",
                row=index,
            )
            continue
        split_value = _cell(row, split_column)
        source_split = None
        if split_value is not None and split_value.strip():
            source_split = normalize_split_name(split_value)
            if source_split is None:
                _skip(
                    result,
                    rel,
                    "invalid_split",
                    f"split {split_value!r} is not train, val or test",
                    row=index,
                )
                continue
        group = _cell(row, group_column)
        group = display_path(group) if group is not None else None
        group = group.strip() if group and group.strip() else None
        by_path[rel].append((index, label, source_split, group))

    for rel in sorted(by_path):
        entries = by_path[rel]
        labels = {label for _, label, _, _ in entries}
        splits = {split for _, _, split, _ in entries}
        if len(labels) > 1 or len(splits) > 1:
            listed = [entry[0] for entry in entries]
            for index, label, _, _ in entries:
                if len(labels) > 1:
                    _skip(
                        result,
                        rel,
                        "conflicting_label",
                        f"path appears in rows {listed} with different labels: "
                        f"{sorted(labels)}",
                        row=index,
                        label=label,
                    )
                else:
                    _skip(
                        result,
                        rel,
                        "conflicting_split",
                        f"path appears in rows {listed} with different splits: "
                        f"{sorted(map(str, splits))}",
                        row=index,
                        label=label,
                    )
            continue
        index, label, source_split, group = entries[0]
        for duplicate_index, *_ in entries[1:]:
            _skip(
                result,
                rel,
                "duplicate_row",
                f"same path and label as row {index}",
                row=duplicate_index,
            )
        absolute = os.path.join(root, rel)
        result.files_seen += 1
        if not settings.follow_symlinks and _has_symlink(root, rel):
            _skip(
                result,
                rel,
                "symlink",
                "path goes through a symbolic link, which is not followed; set "
                "source.follow_symlinks: true to follow links",
                row=index,
            )
            continue
        resolved = os.path.realpath(absolute)
        if not is_inside(resolved, real_root):
            _skip(
                result,
                rel,
                "outside_root",
                f"path resolves outside the source root: {resolved}",
                row=index,
            )
            continue
        try:
            file_stat = os.stat(absolute)
        except FileNotFoundError:
            _skip(result, rel, "missing_file", f"file not found: {absolute}", row=index)
            continue
        except OSError as error:
            if error.errno == errno.ELOOP:
                _skip(result, rel, "symlink", "symbolic link loop", row=index)
            else:
                _skip(result, rel, "unreadable", str(error), row=index)
            continue
        if not stat.S_ISREG(file_stat.st_mode):
            _skip(result, rel, "not_a_file", "not a regular file", row=index)
            continue
        result.candidates.append(
            Candidate(
                path=rel,
                key=display_path(rel),
                label=label,
                size=file_stat.st_size,
                mtime_ns=file_stat.st_mtime_ns,
                source_split=source_split,
                group=group,
                row=index,
            )
        )

    folded: dict[str, set[str]] = defaultdict(set)
    for candidate in result.candidates:
        folded[candidate.label.strip().casefold()].add(candidate.label)
    for variants in folded.values():
        if len(variants) > 1:
            result.label_warnings.append(
                f"labels {sorted(variants)} differ only by case or surrounding "
                "whitespace and are kept as separate classes; set "
                "source.label_normalization to merge them"
            )
    result.candidates.sort(key=lambda candidate: candidate.key)
    return result


def _has_symlink(root: str, rel: str) -> bool:
    current = root
    for part in rel.split("/"):
        current = os.path.join(current, part)
        if os.path.islink(current):
            return True
    return False


def check_source(settings: SourceSettings) -> None:
    """Raise SourceError unless the source root is a folder and the table exists."""
    root = settings.root
    if not os.path.exists(root):
        raise SourceError(
            f"source root not found: {root}; set source.root to the image folder"
        )
    if not os.path.isdir(root):
        raise SourceError(f"source root is not a folder: {root}")
    if settings.labels and not os.path.isfile(settings.labels):
        raise SourceError(
            f"labels table not found: {settings.labels}; set source.labels to a CSV "
            "or Parquet file, or to null for the class-per-folder layout"
        )


def scan_source(
    settings: SourceSettings, known: Mapping[str, KnownFile] | None = None
) -> ScanResult:
    """Scan the configured source and return its candidate files.

    Parameters
    ----------
    settings : SourceSettings
        The source section of the config, with absolute paths.
    known : mapping, optional
        Files recorded by the parent version, keyed by printable path. A file whose
        size and mtime match is not read again.

    Raises
    ------
    SourceError
        When the root is missing or not a folder, or the labels table cannot be read.
    """
    check_source(settings)
    root = settings.root
    known = known or {}
    if settings.labels:
        result = _scan_table(root, settings, known)
    else:
        result = _scan_folder(root, settings, known)
    logger.info(
        "scanned %s: %d candidate files in %d classes, %d skipped",
        Path(root),
        len(result.candidates),
        len(result.classes),
        len(result.skipped),
    )
    return result
