"""Printable forms of file paths, and reads that stay below a root folder.

File names on Linux are bytes. Python decodes names that are not valid UTF-8 with
surrogate escapes, which JSON accepts but Parquet strings and UTF-8 encoding reject.
Records, tables and messages store the printable form, where each undecodable byte
appears as ``\\xNN``.
"""

from __future__ import annotations

import os
import stat

__all__ = [
    "NotRegularFileError",
    "OutsideRootError",
    "display_path",
    "is_inside",
    "read_file_below",
]


class NotRegularFileError(OSError):
    """The path names a folder, FIFO, socket or device instead of a regular file."""


class OutsideRootError(OSError):
    """The opened file resolves to a location outside the root folder."""


def display_path(path: str) -> str:
    """Return ``path`` with undecodable bytes written as ``\\xNN`` escapes.

    Control characters such as newlines are kept: JSON and Parquet store them, and
    printing code escapes them where needed. Any text can be passed, so messages
    that quote a path are made printable the same way.
    """
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raw = path.encode("utf-8", "surrogateescape")
        return raw.decode("utf-8", "backslashreplace")
    return path


def is_inside(path: str, root: str) -> bool:
    """Return True when ``path`` is ``root`` or below it.

    Both paths must already be resolved (:func:`os.path.realpath`), so that ``..``
    and symbolic links cannot make a path look inside.
    """
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _opened_location(fd: int, path: str) -> str:
    """Return the resolved location of the file that ``fd`` refers to.

    On Linux ``/proc/self/fd`` gives the location of the opened file itself. Without
    ``/proc`` the path is resolved again, and a concurrent rename could change the
    result.
    """
    try:
        location = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return os.path.realpath(path)
    return location.removesuffix(" (deleted)")


def read_file_below(root: str, relative: str) -> bytes:
    """Read the whole regular file ``root/relative``, rejecting anything else.

    The file is opened once, and the checks run on the open descriptor, so a file
    swapped for a FIFO, a folder or a link after a scan is rejected instead of read.
    Opening is non-blocking, so a FIFO does not wait for a writer.

    Raises
    ------
    NotRegularFileError
        When the path is not a regular file.
    OutsideRootError
        When the opened file lies outside ``root`` once links are resolved.
    OSError
        When the file cannot be opened or read, such as FileNotFoundError or
        PermissionError.
    """
    path = os.path.join(root, relative)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotRegularFileError(f"not a regular file: {display_path(path)}")
        location = _opened_location(fd, path)
        real_root = os.path.realpath(root)
        if not is_inside(location, real_root):
            raise OutsideRootError(
                f"{display_path(path)} resolves to {display_path(location)}, outside "
                f"the source root {display_path(real_root)}"
            )
        with open(fd, "rb", closefd=False) as handle:
            return handle.read()
    finally:
        os.close(fd)
