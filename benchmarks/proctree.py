"""Run a command and measure wall time, CPU time and peak RSS of its process tree.

``run_measured`` samples the resident set size (RSS) of the command and all its
descendants every ``interval_s`` seconds with psutil and keeps the maximum of the
sum. Summed RSS counts pages shared between processes (for example copy-on-write
pages after a fork) once per process, so it overstates the memory the tree really
occupies, and a peak shorter than the sampling interval can be missed.

CPU time is the difference of ``resource.getrusage(RUSAGE_CHILDREN)`` around the
run. It includes every descendant that was waited for by its parent, so a command
that does not reap its workers reports too little. It also includes any other child
that this process reaps during the run, so measure one command at a time.

Command line: ``python benchmarks/proctree.py --repeat 3 -- CMD ARG...`` prints one
JSON line per run and a final line with the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import IO, Any

import psutil


def _read_stream(stream: IO[bytes], chunks: list[bytes]) -> None:
    """Read a pipe until end of file into ``chunks``.

    Reading in a thread keeps a full pipe buffer from stalling the child.
    """
    chunks.append(stream.read())
    stream.close()


def _tree_rss(
    root: psutil.Process, cpu_by_pid: dict[int, float], with_pss: bool = True
) -> tuple[int, int, int, int]:
    """Return (summed RSS, summed PSS, max single-process RSS, process count).

    PSS (proportional set size) splits each shared page among the processes that
    map it, so its sum does not count a page twice. Reading it walks every mapping
    of a process, which costs far more CPU than RSS, so with ``with_pss=False`` the
    PSS sum is 0. ``cpu_by_pid`` is updated with each process's CPU seconds so far.
    Processes that exit between listing and reading are skipped.
    """
    try:
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0, 0, 0, 0
    total = 0
    proportional = 0
    largest = 0
    counted = 0
    for process in processes:
        try:
            memory = process.memory_full_info() if with_pss else process.memory_info()
            times = process.cpu_times()
        except psutil.Error:
            continue
        total += memory.rss
        if with_pss:
            proportional += getattr(memory, "pss", memory.rss)
        largest = max(largest, memory.rss)
        cpu_by_pid[process.pid] = times.user + times.system
        counted += 1
    return total, proportional, largest, counted


def _cpu_seconds(usage: resource.struct_rusage) -> float:
    """Return user plus system CPU seconds of a rusage record."""
    return usage.ru_utime + usage.ru_stime


def run_measured(
    cmd: list[str],
    env: Mapping[str, str] | None = None,
    interval_s: float = 0.05,
    pss_every: int = 5,
) -> dict[str, Any]:
    """Run ``cmd`` to completion while sampling the RSS of its process tree.

    RSS is read every ``interval_s`` seconds and PSS on every ``pss_every``-th
    sample, which keeps the sampler's own CPU use small next to the command's.

    Returns a dict with these keys:

    - ``wall_s``: seconds from start to exit.
    - ``cpu_s``: user plus system CPU seconds of the whole tree.
    - ``peak_rss_bytes``: maximum over samples of the RSS summed over the tree.
    - ``peak_pss_bytes``: the same for PSS, which counts shared pages once.
    - ``tree_cpu_s``: CPU seconds of every process seen in the tree, summed from
      its last sample (work after the last sample is missing, so it errs low).
    - ``max_process_rss_bytes``: largest RSS of a single process in any sample.
    - ``max_processes``: largest number of processes in one sample.
    - ``samples``: number of samples taken.
    - ``sampler_cpu_s``: CPU seconds this process spent while sampling.
    - ``loadavg_1min_before``: system load average at the start. A value above the
      core count shows other work on a shared machine.
    - ``returncode``, ``stdout`` and ``stderr``: the command's exit code and output.
    """
    load_before = os.getloadavg()[0]
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    self_before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    process = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    stdout_chunks: list[bytes] = []
    stderr_chunks: list[bytes] = []
    readers = [
        threading.Thread(target=_read_stream, args=(process.stdout, stdout_chunks)),
        threading.Thread(target=_read_stream, args=(process.stderr, stderr_chunks)),
    ]
    for reader in readers:
        reader.start()

    root = psutil.Process(process.pid)
    cpu_by_pid: dict[int, float] = {}
    peak_pss = 0
    peak_rss = 0
    max_process_rss = 0
    max_processes = 0
    samples = 0
    # poll() reaps the child once it exits and the loop then stops, so the root PID
    # cannot be reused by another process while it is sampled.
    while process.poll() is None:
        total, proportional, largest, counted = _tree_rss(
            root, cpu_by_pid, with_pss=samples % pss_every == 0
        )
        peak_rss = max(peak_rss, total)
        peak_pss = max(peak_pss, proportional)
        max_process_rss = max(max_process_rss, largest)
        max_processes = max(max_processes, counted)
        samples += 1
        time.sleep(interval_s)
    wall_s = time.perf_counter() - started

    for reader in readers:
        reader.join()
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    self_after = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "wall_s": wall_s,
        "cpu_s": _cpu_seconds(children_after) - _cpu_seconds(children_before),
        "peak_rss_bytes": peak_rss,
        "peak_pss_bytes": peak_pss,
        "tree_cpu_s": sum(cpu_by_pid.values()),
        "max_process_rss_bytes": max_process_rss,
        "max_processes": max_processes,
        "samples": samples,
        "sampler_cpu_s": _cpu_seconds(self_after) - _cpu_seconds(self_before),
        "loadavg_1min_before": load_before,
        "returncode": process.returncode,
        "stdout": b"".join(stdout_chunks).decode(errors="replace"),
        "stderr": b"".join(stderr_chunks).decode(errors="replace"),
    }


def last_json_line(text: str) -> dict[str, Any] | None:
    """Return the last line of ``text`` parsed as a JSON object, or None."""
    lines = text.strip().splitlines()
    if not lines:
        return None
    try:
        value = json.loads(lines[-1])
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def median_summary(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Return the median of each measured number and of each numeric child field."""
    keys = ("wall_s", "cpu_s", "peak_rss_bytes", "max_process_rss_bytes")
    summary: dict[str, Any] = {
        "runs": len(runs),
        **{key: statistics.median(run[key] for run in runs) for key in keys},
    }
    children = [run["child"] for run in runs if run.get("child")]
    if len(children) == len(runs):
        child_summary = {}
        for key, value in children[0].items():
            numbers = [child.get(key) for child in children]
            if isinstance(value, (int, float)) and all(
                isinstance(number, (int, float)) for number in numbers
            ):
                child_summary[key] = statistics.median(numbers)
        summary["child"] = child_summary
    return summary


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        description=(
            "Run a command and print its wall time, CPU time and peak summed RSS of "
            "its process tree as JSON lines."
        )
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="number of runs; a final line gives the medians (default: 1)",
    )
    parser.add_argument(
        "--interval-ms",
        type=float,
        default=50.0,
        help="RSS sampling interval in milliseconds (default: 50)",
    )
    parser.add_argument(
        "command",
        nargs=argparse.REMAINDER,
        help="command to run, after a '--' separator",
    )

    args = parser.parse_args(argv)
    if args.command and args.command[0] == "--":
        args.command = args.command[1:]
    if not args.command:
        parser.error("missing command; pass it after '--'")
    if args.repeat < 1:
        parser.error(f"--repeat must be at least 1, got {args.repeat}")
    if args.interval_ms <= 0:
        parser.error(f"--interval-ms must be positive, got {args.interval_ms}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command ``--repeat`` times and print one JSON line per run."""
    args = parse_args(argv)
    runs = []
    for number in range(args.repeat):
        result = run_measured(args.command, interval_s=args.interval_ms / 1000)
        result["run"] = number
        result["child"] = last_json_line(result["stdout"])
        stderr = result.pop("stderr")
        result.pop("stdout")
        print(json.dumps(result), flush=True)
        if result["returncode"] != 0:
            print(stderr, file=sys.stderr)
            print(
                f"error: command failed with exit code {result['returncode']}",
                file=sys.stderr,
            )
            return 1
        runs.append(result)
    if args.repeat > 1:
        print(json.dumps({"median": median_summary(runs)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
