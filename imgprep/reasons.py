"""Reason codes: why a source file or labels-table row was not ingested.

Every file the scan finds, and every row of a labels table, ends in one status of the
version's ``sources`` table:

``ingested``
    Decoded and stored in a shard.
``skipped``
    Left out by the scan, before decoding. Listed in the manifest under
    ``source.skipped_files`` (with ``row`` for a labels-table row).
``quarantined``
    A candidate file that could not be used. Listed under ``source.quarantine``, and
    counted towards ``ingest.max_rejected_fraction``.
``duplicate``
    The same bytes as another file, dropped under ``ingest.duplicates: drop``.
    Listed under ``source.duplicate_files``.

Each status but ``ingested`` carries one of the codes in :data:`REASON_CODES` and a
message. A test checks that this dict names every code that ``imgprep`` produces.
"""

from __future__ import annotations

__all__ = ["REASON_CODES", "STATUSES", "reason_codes_markdown"]

STATUSES = ("ingested", "skipped", "quarantined", "duplicate")

REASON_CODES: dict[str, str] = {
    # Scan of a class-per-folder tree
    "hidden": "skipped: the file or folder name starts with '.'",
    "system_file": "skipped: an operating-system file such as Thumbs.db or desktop.ini",
    "no_class_folder": "skipped: a file directly under the root or a split folder, "
    "so no folder names its class",
    "no_extension": "skipped: a file name without an extension while "
    "source.extensionless is skip",
    "symlink": "skipped: a symbolic link while source.follow_symlinks is false, or "
    "a link loop",
    "name_collision": "skipped: the printable path (undecodable bytes written as "
    "\\xNN) equals that of another file, which is ingested",
    # Scan of a labels table
    "blank_path": "skipped: the row's path cell is empty",
    "invalid_path": "skipped: the row's path contains a NUL character",
    "blank_label": "skipped: the row's label is empty or only whitespace",
    "invalid_split": "skipped: the row's split is not train, val or test (or an "
    "alias such as validation)",
    "conflicting_label": "skipped: every row of a path listed with different labels; "
    "quarantined: files with identical bytes under different labels while "
    "ingest.duplicates is drop",
    "conflicting_split": "skipped: every row of a path listed with different splits",
    "duplicate_row": "skipped: a later row with the same path and label as an "
    "earlier one, which is used",
    # Either layout, at scan or when the file is read for decoding
    "outside_root": "skipped: an absolute path, a path with '..', or a symbolic "
    "link that resolves outside source.root; quarantined: the file resolves outside "
    "the root when it is read",
    "missing_file": "skipped: a table row names a file that does not exist, or a "
    "file or folder vanished during the scan; quarantined: the file vanished "
    "between scan and decoding",
    "unreadable": "skipped or quarantined: the file or folder cannot be listed, "
    "opened or read (permission denied, I/O error, name too long)",
    "not_a_file": "skipped or quarantined: a FIFO, socket, device or folder where a "
    "regular file was expected",
    "not_an_image": "skipped: the leading bytes match no image format and the "
    "extension names none; quarantined: no Pillow plugin identifies the bytes",
    # Decoding
    "empty": "quarantined: the file has 0 bytes",
    "truncated": "quarantined: the data ends before all pixels are decoded",
    "corrupt": "quarantined: any other error while opening or decoding (broken "
    "data stream, invalid header values, plugin that cannot run here)",
    "too_many_pixels": "quarantined: width * height from the header is above "
    "image.max_image_pixels; checked before any pixel data is decoded",
    "unsupported_mode": "quarantined: the colour mode has no conversion to RGB or L, "
    "or it is 32-bit I or F while image.wide_modes is reject",
    "decode_timeout": "quarantined: decoding took longer than ingest.decode_timeout_s",
    # Ingest and assembly
    "unknown_label": "quarantined: the file's label is not among the version's classes",
    "duplicate": "duplicate: the same bytes as an earlier path (by key), dropped "
    "while ingest.duplicates is drop",
}
"""Every reason code, mapped to the status it gives and what triggers it."""


def reason_codes_markdown() -> str:
    """Render :data:`REASON_CODES` as a Markdown table for the README."""
    lines = ["| Code | Outcome and trigger |", "| --- | --- |"]
    for code, description in REASON_CODES.items():
        cell = description.replace("|", "\\|")
        lines.append(f"| `{code}` | {cell} |")
    return "\n".join(lines) + "\n"
