"""A local process pool for CPU-bound chunk work.

Decoding holds the GIL for part of each image, so threads alone do not use both
cores. When the runner type is ``process``, the flow opens one pool for the whole
run with :func:`process_pool`; each ingest task, which Prefect runs in a thread of
the flow process, hands its chunk to that pool with :func:`run_chunk_work` and waits.
Prefect still records every chunk as a task run, and the per-task cost stays that
of a thread. Workers start from a ``forkserver`` that has already imported the
decoding modules, so a worker starts in milliseconds, and they do not inherit the
flow process's threads.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from typing import Any, TypeVar

__all__ = ["cpu_count", "process_pool", "run_chunk_work"]

T = TypeVar("T")

_PRELOAD = ["imgprep.ingest", "numpy", "PIL.Image", "pyarrow.parquet"]
_pool: Executor | None = None


def cpu_count() -> int:
    """Return the CPUs this process may use (its affinity mask when available)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


@contextlib.contextmanager
def process_pool(workers: int) -> Iterator[Executor]:
    """Open a process pool that :func:`run_chunk_work` uses until the block ends."""
    global _pool
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(_PRELOAD)
    else:  # pragma: no cover - macOS and Windows have no forkserver
        context = multiprocessing.get_context("spawn")
    executor = ProcessPoolExecutor(max_workers=workers, mp_context=context)
    # The pool starts its workers on demand; one short call per worker starts them
    # all now, so they load their modules while the caller scans the source.
    for _ in range(workers):
        executor.submit(time.sleep, 0.05)
    previous, _pool = _pool, executor
    try:
        yield executor
    finally:
        _pool = previous
        executor.shutdown(wait=True, cancel_futures=True)


def run_chunk_work(function: Callable[..., T], /, **kwargs: Any) -> T:
    """Run ``function(**kwargs)`` in the open process pool, or here when none is open."""
    pool = _pool
    if pool is None:
        return function(**kwargs)
    return pool.submit(function, **kwargs).result()
