"""A versioned store of content-addressed objects.

Layout::

    STORE/
      objects/ab/ab12....parquet   immutable objects named by the sha256 of their bytes
      versions/000001/manifest.json  one folder per version; the manifest lists every
                                     object and file of the version with its sha256
      versions/000001/report.html    human-readable files of the version
      LATEST                       number of the newest version
      lock                         writer lock: flock plus the holder's host, pid, time
      tmp/                         temporary files; anything left here is crash debris

Writes follow a commit protocol, so a crash at any point leaves every earlier version
intact and nothing that a reader takes for a version:

1. Each object is written to ``tmp/``, flushed with fsync and renamed to its
   content address. An object that already exists is not written again, so versions
   share unchanged objects.
2. A version's files and finally its ``manifest.json`` are written into a folder in
   ``tmp/`` and fsynced; the folder is then renamed to ``versions/NNNNNN``. That
   rename is the commit: a version exists exactly when its folder holds a manifest.
3. ``LATEST`` is replaced through a temporary file and a rename. It is a pointer for
   people and tools; readers take the highest committed version, so a crash between
   steps 2 and 3 loses nothing.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imgprep.errors import (
    CorruptObjectError,
    LockTimeoutError,
    StoreError,
    VersionNotFoundError,
)
from imgprep.faults import crash_point

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["ObjectRef", "Store", "parse_store_ref", "sha256_file"]

logger = logging.getLogger(__name__)

OBJECT_PATTERN = re.compile(r"^objects/([0-9a-f]{2})/([0-9a-f]{64})\.([a-z0-9]{1,8})$")
VERSION_DIGITS = 6
_CHUNK = 1 << 20


def sha256_file(path: str | Path) -> tuple[str, int]:
    """Return the sha256 hex digest and size of a file, reading it in 1 MiB chunks."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@dataclass(frozen=True)
class ObjectRef:
    """Address of one stored object: its path in the store, sha256 and size."""

    path: str
    sha256: str
    bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "bytes": self.bytes}


def parse_store_ref(ref: str) -> tuple[str, int | None]:
    """Split ``STORE@VERSION`` into the store path and the version number.

    ``VERSION`` may be a number (``3``, ``000003``, ``v3``) or ``latest``.
    """
    store, sep, version = ref.rpartition("@")
    if not sep:
        return ref, None
    text = version.strip().lower().lstrip("v")
    if text in ("", "latest"):
        return store, None
    if not text.isdigit():
        raise StoreError(
            f"invalid version {version!r} in {ref!r}; use STORE@NUMBER or STORE@latest"
        )
    return store, int(text)


class Store:
    """A store directory. Creating the object does not touch the file system."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # ----------------------------------------------------------------- layout
    @property
    def objects_dir(self) -> Path:
        return self.root / "objects"

    @property
    def versions_dir(self) -> Path:
        return self.root / "versions"

    @property
    def tmp_dir(self) -> Path:
        return self.root / "tmp"

    def ensure(self) -> None:
        """Create the store's folders if they do not exist."""
        for folder in (self.objects_dir, self.versions_dir, self.tmp_dir):
            folder.mkdir(parents=True, exist_ok=True)

    def exists(self) -> bool:
        return self.versions_dir.is_dir()

    def object_path(self, ref: str) -> Path:
        """Return the absolute path of an object, refusing paths outside ``objects/``."""
        if not OBJECT_PATTERN.match(ref):
            raise CorruptObjectError(
                f"object path {ref!r} is not of the form objects/xx/<sha256>.<ext>; "
                "the manifest may have been tampered with",
                ref,
            )
        path = self.root / ref
        if not self.is_inside_objects(path):
            raise CorruptObjectError(
                f"object {ref} is a symbolic link or resolves outside "
                f"{self.objects_dir}; objects must be regular files in the store",
                ref,
            )
        return path

    def is_inside_objects(self, path: Path) -> bool:
        """Return False when ``path`` is a link or resolves outside ``objects/``.

        A missing file counts as inside: the caller reports it as missing.
        """
        if path.is_symlink():
            return False
        objects = os.path.realpath(self.objects_dir)
        resolved = os.path.realpath(path)
        return resolved.startswith(objects + os.sep)

    def version_dir(self, version: int) -> Path:
        return self.versions_dir / f"{version:0{VERSION_DIGITS}d}"

    # ---------------------------------------------------------------- objects
    def temp_path(self, suffix: str = "") -> Path:
        """Return a fresh path in ``tmp/`` for a file that will be renamed into place."""
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        return self.tmp_dir / f"{uuid.uuid4().hex}{suffix}.tmp"

    def put_bytes(self, data: bytes | memoryview, ext: str) -> ObjectRef:
        """Store ``data`` as an object and return its reference."""
        digest = hashlib.sha256(data).hexdigest()
        ref = f"objects/{digest[:2]}/{digest}.{ext}"
        final = self.root / ref
        if self._intact(final, digest, len(data)):
            return ObjectRef(ref, digest, len(data))
        temp = self.temp_path("." + ext)
        try:
            _write_synced(temp, data)
        except OSError as error:
            temp.unlink(missing_ok=True)
            raise StoreError(
                f"writing object {ref} ({len(data):,} bytes) to {temp} failed: "
                f"{error}. No version was written; free space or raise the file-size "
                "limit, then run again"
            ) from error
        crash_point("object_temp_written")
        self._move_into_place(temp, final)
        return ObjectRef(ref, digest, len(data))

    @staticmethod
    def _intact(path: Path, digest: str, size: int) -> bool:
        """Return True when ``path`` exists with the given size and sha256.

        An existing object is hashed before it is reused, so a damaged copy is
        replaced by the next write of the same content.
        """
        try:
            if path.is_symlink() or path.stat().st_size != size:
                return False
        except FileNotFoundError:
            return False
        return sha256_file(path)[0] == digest

    def _move_into_place(self, temp: Path, final: Path) -> None:
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(temp, final)
        _fsync_dir(final.parent)
        crash_point("object_renamed")

    def read_object(self, ref: str, sha256: str, size: int) -> bytes:
        """Read an object and check its size and sha256 against the manifest.

        Raises
        ------
        CorruptObjectError
            When the object is missing or its bytes differ from the manifest.
        """
        path = self.object_path(ref)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise CorruptObjectError(
                f"object {ref} listed in the manifest is missing from {self.root}; "
                "run `imgprep verify` to list every damaged object",
                ref,
            ) from None
        if len(data) != size:
            raise CorruptObjectError(
                f"object {ref} has {len(data)} bytes but the manifest records {size}; "
                "the version is corrupt and is not served",
                ref,
            )
        digest = hashlib.sha256(data).hexdigest()
        if digest != sha256:
            raise CorruptObjectError(
                f"object {ref} has sha256 {digest} but the manifest records {sha256}; "
                "the version is corrupt and is not served",
                ref,
            )
        return data

    # --------------------------------------------------------------- versions
    def versions(self) -> list[int]:
        """Return the committed version numbers in ascending order."""
        if not self.versions_dir.is_dir():
            return []
        numbers = []
        for entry in self.versions_dir.iterdir():
            if (
                entry.name.isdigit()
                and len(entry.name) == VERSION_DIGITS
                and (entry / "manifest.json").is_file()
            ):
                numbers.append(int(entry.name))
        return sorted(numbers)

    def latest(self) -> int | None:
        """Return the newest committed version, or None for an empty store."""
        numbers = self.versions()
        return numbers[-1] if numbers else None

    def latest_pointer(self) -> int | None:
        """Return the number in ``LATEST``, or None when it is missing or unreadable."""
        try:
            text = (self.root / "LATEST").read_text().strip()
        except OSError:
            return None
        return int(text) if text.isdigit() else None

    def resolve(self, version: int | None) -> int:
        """Return ``version``, or the latest version when it is None."""
        numbers = self.versions()
        if not numbers:
            raise VersionNotFoundError(
                f"store {self.root} has no versions; run `imgprep run` to create one"
            )
        if version is None:
            return numbers[-1]
        if version not in numbers:
            raise VersionNotFoundError(
                f"version {version} not found in store {self.root}; versions: "
                f"{', '.join(str(n) for n in numbers)}"
            )
        return version

    def read_manifest_dict(self, version: int) -> dict[str, Any]:
        """Return the parsed JSON manifest of a committed version."""
        path = self.version_dir(version) / "manifest.json"
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise VersionNotFoundError(
                f"version {version} not found in {self.root}"
            ) from None
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise CorruptObjectError(
                f"manifest {path} is not valid JSON: {error}", str(path)
            ) from None

    def commit_version(
        self, version: int, manifest: dict[str, Any], files: dict[str, bytes]
    ) -> Path:
        """Write a version's files and manifest, then rename its folder into place.

        ``files`` maps plain file names to their bytes; the manifest is written last.
        """
        final = self.version_dir(version)
        if (final / "manifest.json").exists():
            raise StoreError(
                f"version {version} already exists at {final}: another process "
                "committed it without holding the store's lock; run again to "
                "commit the next version"
            )
        if final.exists():
            # Without a manifest the folder is no version (readers skip it), so it
            # is moved aside instead of blocking every later commit of this number.
            aside = self.tmp_dir / f"incomplete-{final.name}-{uuid.uuid4().hex}"
            logger.warning(
                "moving %s to %s: it has no manifest.json, so it is not a committed "
                "version",
                final,
                aside,
            )
            self.tmp_dir.mkdir(parents=True, exist_ok=True)
            os.rename(final, aside)
        staging = (
            self.tmp_dir / f"version-{version:0{VERSION_DIGITS}d}-{uuid.uuid4().hex}"
        )
        staging.mkdir(parents=True)
        text = json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False)
        try:
            for name, data in files.items():
                _write_synced(staging / name, data)
            crash_point("version_temp_written")
            _write_synced(staging / "manifest.json", (text + "\n").encode("utf-8"))
        except OSError as error:
            shutil.rmtree(staging, ignore_errors=True)
            raise StoreError(
                f"writing version {version} into {staging} failed: {error}. No version "
                "was written; free space or raise the file-size limit, then run again"
            ) from error
        _fsync_dir(staging)
        crash_point("manifest_temp_written")
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        os.rename(staging, final)
        _fsync_dir(self.versions_dir)
        crash_point("version_renamed")
        self.write_latest(version)
        return final

    def write_latest(self, version: int) -> None:
        temp = self.temp_path(".latest")
        _write_synced(temp, f"{version}\n".encode())
        crash_point("latest_temp_written")
        os.replace(temp, self.root / "LATEST")
        _fsync_dir(self.root)
        crash_point("latest_moved")

    # ------------------------------------------------------------------- lock
    @contextlib.contextmanager
    def lock(self, timeout_s: float, poll_s: float = 0.2) -> Iterator[dict[str, Any]]:
        """Hold the store's writer lock for the duration of the block.

        The lock is an exclusive ``flock`` on ``STORE/lock``; the kernel releases it
        when its holder exits, however it exits. The file also records the holder's
        host, pid and start time, which the timeout message names. A record left by a
        process that is no longer running is reported as a stale lock and replaced.

        Raises
        ------
        LockTimeoutError
            When another writer holds the lock for longer than ``timeout_s``.
        """
        if fcntl is None:  # pragma: no cover - Windows
            raise StoreError("store locking needs fcntl.flock, which this system lacks")
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / "lock"
        handle = open(path, "a+", encoding="utf-8")
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                try:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise LockTimeoutError(
                            _lock_timeout_message(self.root, path, timeout_s)
                        ) from None
                    time.sleep(poll_s)
            previous = _read_holder(path)
            if previous and not _holder_alive(previous):
                logger.warning(
                    "breaking stale lock of %s: that process is no longer running",
                    _describe_holder(previous),
                )
            holder = {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "started": dt.datetime.now(dt.timezone.utc).isoformat(
                    timespec="seconds"
                ),
            }
            handle.seek(0)
            handle.truncate()
            handle.write(json.dumps(holder))
            handle.flush()
            os.fsync(handle.fileno())
            try:
                yield holder
            finally:
                handle.seek(0)
                handle.truncate()
                handle.flush()
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        finally:
            handle.close()

    def clear_chunk_cache(self, keys: Iterable[str]) -> None:
        """Remove the resume records of chunks whose shards a version now holds."""
        for key in keys:
            with contextlib.suppress(OSError):
                (self.root / "cache" / "chunks" / f"{key}.json").unlink()

    # ------------------------------------------------------------ maintenance
    def temp_files(self) -> list[Path]:
        """Return the files and folders left in ``tmp/``, which only a crash leaves."""
        if not self.tmp_dir.is_dir():
            return []
        return sorted(self.tmp_dir.iterdir())

    def all_objects(self) -> list[str]:
        if not self.objects_dir.is_dir():
            return []
        refs = []
        for path in self.objects_dir.glob("*/*"):
            refs.append(path.relative_to(self.root).as_posix())
        return sorted(refs)


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _read_holder(path: Path) -> dict[str, Any] | None:
    try:
        text = path.read_text(encoding="utf-8").strip()
        return json.loads(text) if text else None
    except (OSError, json.JSONDecodeError):
        return None


def _describe_holder(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "holder unknown"
    return (
        f"host {holder.get('host')}, pid {holder.get('pid')}, "
        f"started {holder.get('started')}"
    )


def _lock_timeout_message(root: Path, path: Path, timeout_s: float) -> str:
    holder = _read_holder(path)
    message = (
        f"store {root} is locked by another writer ({_describe_holder(holder)}); "
        f"waited {timeout_s:g} s. Wait for that run to finish or raise "
        "output.lock_timeout_s."
    )
    if holder and not _holder_alive(holder):
        # The flock belongs to the open file, so a child process that inherited
        # the holder's descriptor keeps the lock after the holder has died.
        message += (
            f" Process {holder.get('pid')} is no longer running, but a process it "
            f"started still holds the lock on {path}; end that process "
            f"(`fuser -v {path}` lists it)."
        )
    return message


def _holder_alive(holder: dict[str, Any]) -> bool:
    """Return False only when the holder ran on this host and its pid is gone."""
    if holder.get("host") != socket.gethostname():
        return True
    pid = holder.get("pid")
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_path(path: Path) -> None:
    """Delete a file or folder tree."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
