"""Exceptions raised by imgprep.

::

    ImgprepError
    ├── ConfigError            invalid configuration or sampling request
    ├── SourceError            the source folder or labels table cannot be used
    ├── RejectedFractionError  too many candidate files were quarantined
    ├── ResampleError          resampling cannot run as configured
    ├── StoreError             the store cannot be read or written
    │   ├── LockTimeoutError   another writer holds the store lock
    │   ├── VersionNotFoundError
    │   └── CorruptObjectError an object's size or sha256 differs from the manifest
    │       └── SchemaMismatchError  a shard's columns differ from the manifest
    └── Quarantined            one file cannot be used; carries a reason code
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "CorruptObjectError",
    "ImgprepError",
    "LockTimeoutError",
    "Quarantined",
    "RejectedFractionError",
    "ResampleError",
    "SchemaMismatchError",
    "SourceError",
    "StoreError",
    "VersionNotFoundError",
]


class ImgprepError(Exception):
    """Base class of every error imgprep raises on purpose."""


class ConfigError(ImgprepError, ValueError):
    """The configuration or a request derived from it is invalid."""


class SourceError(ImgprepError):
    """The source folder or labels table cannot be used."""


class RejectedFractionError(ImgprepError):
    """More candidate files were quarantined than ``max_rejected_fraction`` allows."""


class ResampleError(ImgprepError):
    """Resampling cannot run as configured, for example above its memory limit."""


class StoreError(ImgprepError):
    """The store cannot be read or written."""


class LockTimeoutError(StoreError):
    """Another writer held the store lock for longer than the lock timeout."""


class VersionNotFoundError(StoreError):
    """The requested version does not exist in the store."""


class CorruptObjectError(StoreError):
    """An object's bytes do not match the size or sha256 its manifest records."""

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class SchemaMismatchError(CorruptObjectError):
    """A shard's Arrow schema differs from the schema its manifest records."""

    def __init__(self, message: str, path: str | None = None, column: str = "") -> None:
        super().__init__(message, path)
        self.column = column


class Quarantined(ImgprepError):
    """One source file cannot be used.

    Attributes
    ----------
    reason : str
        Reason code such as ``truncated`` or ``too_many_pixels``; the README lists
        them all.
    message : str
        The underlying error text.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message
