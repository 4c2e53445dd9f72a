"""Named crash points for crash-safety tests.

When the environment variable ``IMGPREP_KILL_AT`` is ``NAME`` or ``NAME:N``, the
process sends itself SIGKILL the N-th time (default: first) it reaches the crash
point ``NAME``. Without the variable each call is one dictionary lookup. The names
are listed in :data:`CRASH_POINTS`.
"""

from __future__ import annotations

import os
import signal
import threading

__all__ = ["CRASH_POINTS", "crash_point"]

CRASH_POINTS = (
    "scan_done",
    "decode",
    "object_temp_written",
    "object_renamed",
    "shard_written",
    "resample_done",
    "version_temp_written",
    "manifest_temp_written",
    "version_renamed",
    "latest_temp_written",
    "latest_moved",
)

_counts: dict[str, int] = {}
_lock = threading.Lock()


def crash_point(name: str) -> None:
    """Kill this process with SIGKILL when ``IMGPREP_KILL_AT`` selects ``name``."""
    spec = os.environ.get("IMGPREP_KILL_AT")
    if not spec:
        return
    target, _, nth = spec.partition(":")
    if target != name:
        return
    with _lock:
        _counts[name] = _counts.get(name, 0) + 1
        hit = _counts[name]
    if hit >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
