"""Printable forms of file paths.

File names on Linux are bytes. Python decodes names that are not valid UTF-8 with
surrogate escapes, which JSON accepts but Parquet strings reject. Records and tables
store the printable form, where each undecodable byte appears as ``\\xNN``.
"""

from __future__ import annotations

__all__ = ["display_path"]


def display_path(path: str) -> str:
    """Return ``path`` with undecodable bytes written as ``\\xNN`` escapes.

    Control characters such as newlines are kept: JSON and Parquet store them, and
    printing code escapes them where needed.
    """
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raw = path.encode("utf-8", "surrogateescape")
        return raw.decode("utf-8", "backslashreplace")
    return path
