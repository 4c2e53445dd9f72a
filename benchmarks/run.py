"""Measure imgprep against the decode limit, side by side, in one run.

For a corpus of N images the runner measures, alternating the commands round by
round so that load on a shared machine hits all of them alike:

``decode_limit``
    The reference: ``decode_limit.py`` in a 2-process pool.
``full_build``
    ``imgprep run`` into an empty store.
``refresh_1pct``
    ``imgprep run`` on the corpus plus 1 % new files, against a copy of a store that
    holds the corpus: it decodes only the new files.
``no_change``
    ``imgprep run`` on the unchanged corpus against a copy of that store.
``empty_flow``
    A Prefect flow that does nothing, in a fresh process: Prefect's fixed start-up
    cost (temporary API server, flow run bookkeeping), which the ``net`` figures
    subtract.
``smote`` (with ``--smote``)
    ``imgprep run`` with SMOTE, ``sampling_strategy: auto``, against a copy of the
    store: resampling reads stored pixels and decodes nothing.

Each command runs ``--repeat`` times (default 3); the report gives medians of wall
time, CPU time of the whole process tree, peak summed RSS of the tree (the Prefect
server included), output bytes, images per second and the ratio to the decode limit.

Example::

    .venv/bin/python benchmarks/run.py --corpus benchmarks/corpus/n20000 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from proctree import run_measured  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

EMPTY_FLOW = """
from prefect import flow

@flow
def empty():
    return 0

empty()
"""


def folder_bytes(path: Path) -> int:
    total = 0
    for item in path.rglob("*"):
        if item.is_file():
            total += item.stat().st_size
    return total


def count_images(corpus: Path) -> int:
    return sum(
        1 for p in corpus.rglob("*") if p.is_file() and not p.name.startswith(".")
    )


def link_tree(source: Path, target: Path) -> None:
    """Copy a folder tree with hard links; store objects are never modified in place."""
    if target.exists():
        shutil.rmtree(target)
    subprocess.run(["cp", "-al", str(source), str(target)], check=True)


def write_config(
    path: Path, corpus: Path, store: Path, args: argparse.Namespace, **extra: Any
) -> Path:
    import yaml

    config: dict[str, Any] = {
        "dataset": {"name": "benchmark"},
        "source": {"root": str(corpus)},
        "image": {"height": args.size, "width": args.size, "color_mode": "RGB"},
        "ingest": {"chunk_size": args.chunk_size},
        "resample": {"method": "random_over"},
        "output": {"store": str(store), "format": "parquet"},
        "runner": {"type": args.runner, "workers": args.workers},
    }
    for section, values in extra.items():
        config.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(config))
    return path


def library_versions(python: str) -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json, platform\n"
        "names = ['imgprep', 'prefect', 'numpy', 'pillow', 'pyarrow', 'imbalanced-learn',"
        " 'scikit-learn', 'pandas']\n"
        "out = {'python': platform.python_version()}\n"
        "for n in names:\n"
        "    try: out[n] = m.version(n)\n"
        "    except Exception: out[n] = 'not installed'\n"
        "print(json.dumps(out))\n"
    )
    return json.loads(
        subprocess.run(
            [python, "-c", code], capture_output=True, text=True, check=True
        ).stdout
    )


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else None,
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        meminfo = Path("/proc/meminfo").read_text().splitlines()[0]
        info["memory"] = meminfo.split(":", 1)[1].strip()
    except OSError:
        pass
    return info


def manifest_refresh(store: Path) -> dict[str, Any]:
    latest = int((store / "LATEST").read_text())
    manifest = json.loads(
        (store / "versions" / f"{latest:06d}" / "manifest.json").read_text()
    )
    return manifest["refresh"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--corpus",
        type=Path,
        required=True,
        help="class-per-folder corpus written by make_corpus.py",
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per command")
    parser.add_argument("--size", type=int, default=64, help="output side in pixels")
    parser.add_argument("--workers", type=int, default=2, help="decode processes")
    parser.add_argument(
        "--chunk-size",
        type=int,
        default=256,
        help="images per ingest task and per decode_limit chunk",
    )
    parser.add_argument(
        "--runner",
        default="process",
        choices=["thread", "process"],
        help="imgprep runner.type",
    )
    parser.add_argument("--seed", type=int, default=0, help="make_corpus.py seed")
    parser.add_argument("--smote", action="store_true", help="also measure SMOTE")
    parser.add_argument(
        "--only", nargs="*", default=None, help="measure only these commands"
    )
    parser.add_argument(
        "--work",
        type=Path,
        default=None,
        help="scratch folder (default: a new temporary folder)",
    )
    parser.add_argument(
        "--out", type=Path, default=HERE / "results", help="folder for the JSON results"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    python = sys.executable
    imgprep = str(Path(python).with_name("imgprep"))
    corpus = args.corpus.resolve()
    n_images = count_images(corpus)
    n_new = max(1, n_images // 100)
    work = args.work or Path(tempfile.mkdtemp(prefix="imgprep-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    prefect_home = work / "prefect-home"
    env = dict(os.environ)
    env.update(
        PREFECT_HOME=str(prefect_home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120",
        PREFECT_LOGGING_LEVEL="WARNING",
    )
    env.pop("PREFECT_API_URL", None)

    # A grown corpus: the same files (hard links) plus 1 % new images.
    grown = work / "grown"
    link_tree(corpus, grown)
    subprocess.run(
        [
            python,
            str(HERE / "make_corpus.py"),
            "--start",
            str(n_images),
            "--count",
            str(n_new),
            "--out",
            str(grown),
            "--seed",
            str(args.seed),
        ],
        check=True,
        env=env,
        capture_output=True,
    )

    # A base store that holds the corpus, built once outside the measurements.
    base_store = work / "base-store"
    if base_store.exists():
        shutil.rmtree(base_store)
    base_config = write_config(work / "base.yaml", corpus, base_store, args)
    print(f"building the base store of {n_images} images ...", flush=True)
    subprocess.run(
        [imgprep, "run", "-c", str(base_config), "--no-progress"],
        check=True,
        env=env,
        capture_output=True,
    )

    def full_build() -> dict[str, Any]:
        store = work / "full-store"
        shutil.rmtree(store, ignore_errors=True)
        config = write_config(work / "full.yaml", corpus, store, args)
        result = run_measured(
            [imgprep, "run", "-c", str(config), "--no-progress"], env=env
        )
        result["output_bytes"] = folder_bytes(store / "objects")
        result["images"] = n_images
        result["refresh"] = manifest_refresh(store)
        return result

    def refresh(source: Path, name: str, images: int, **extra: Any) -> dict[str, Any]:
        store = work / f"{name}-store"
        link_tree(base_store, store)
        config = write_config(work / f"{name}.yaml", source, store, args, **extra)
        result = run_measured(
            [imgprep, "run", "-c", str(config), "--no-progress"], env=env
        )
        result["images"] = images
        result["refresh"] = manifest_refresh(store)
        return result

    def decode_limit() -> dict[str, Any]:
        out = work / "decode-limit-out"
        result = run_measured(
            [
                python,
                str(HERE / "decode_limit.py"),
                "--corpus",
                str(corpus),
                "--out",
                str(out),
                "--workers",
                str(args.workers),
                "--size",
                str(args.size),
                "--chunk-size",
                str(args.chunk_size),
                "--overwrite",
            ],
            env=env,
        )
        result["output_bytes"] = folder_bytes(out)
        result["images"] = n_images
        return result

    def empty_flow() -> dict[str, Any]:
        result = run_measured([python, "-c", EMPTY_FLOW], env=env)
        result["images"] = 0
        return result

    commands = {
        "decode_limit": decode_limit,
        "full_build": full_build,
        "refresh_1pct": lambda: refresh(grown, "refresh", n_new),
        "no_change": lambda: refresh(corpus, "nochange", 0),
        "empty_flow": empty_flow,
    }
    if args.smote:
        commands["smote"] = lambda: refresh(
            corpus,
            "smote",
            0,
            resample={"method": "smote", "sampling_strategy": "auto"},
        )
    if args.only:
        commands = {k: v for k, v in commands.items() if k in args.only}

    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in commands}
    for round_index in range(args.repeat):
        for name, command in commands.items():
            result = command()
            if result.get("returncode") != 0:
                print(result.get("stderr", "")[-3000:], file=sys.stderr)
                raise SystemExit(
                    f"{name} failed with exit code {result.get('returncode')}"
                )
            result.pop("stdout", None)
            result.pop("stderr", None)
            runs[name].append(result)
            print(
                f"round {round_index + 1} {name}: {result['wall_s']:.2f} s wall, "
                f"{result['cpu_s']:.2f} s CPU, "
                f"{result['peak_rss_bytes'] / 2**20:.0f} MiB RSS, "
                f"{result['peak_pss_bytes'] / 2**20:.0f} MiB PSS",
                flush=True,
            )

    summary = summarize(runs)
    report = {
        "corpus": str(corpus),
        "images": n_images,
        "new_images": n_new,
        "args": {k: str(v) for k, v in vars(args).items()},
        "machine": machine(),
        "libraries": library_versions(python),
        "summary": summary,
        "runs": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    target = args.out / f"run_n{n_images}_{time.strftime('%Y%m%dT%H%M%S')}.json"
    target.write_text(json.dumps(report, indent=2))
    print(json.dumps(summary, indent=2))
    print(f"results written to {target}")
    return 0


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    def median(name: str, key: str) -> float | None:
        values = [r[key] for r in runs.get(name, []) if r.get(key) is not None]
        return statistics.median(values) if values else None

    startup = median("empty_flow", "wall_s") or 0.0
    limit_wall = median("decode_limit", "wall_s")
    summary: dict[str, Any] = {"prefect_startup_wall_s": startup}
    for name, items in runs.items():
        wall = median(name, "wall_s")
        entry = {
            "wall_s": wall,
            "cpu_s": median(name, "cpu_s"),
            "tree_cpu_s": median(name, "tree_cpu_s"),
            "peak_rss_mib": (median(name, "peak_rss_bytes") or 0) / 2**20,
            "peak_pss_mib": (median(name, "peak_pss_bytes") or 0) / 2**20,
            "output_bytes": median(name, "output_bytes"),
            "images": items[0].get("images") if items else None,
        }
        if name not in ("decode_limit", "empty_flow") and wall is not None:
            entry["net_wall_s"] = wall - startup
        net = entry.get("net_wall_s", wall)
        if entry["images"] and net:
            entry["images_per_s"] = entry["images"] / net
        if limit_wall and name in ("full_build",) and net:
            entry["throughput_vs_decode_limit"] = limit_wall / net
        if items and "refresh" in items[0]:
            entry["refresh"] = items[-1]["refresh"]
        summary[name] = entry
    full = summary.get("full_build", {}).get("net_wall_s")
    for name in ("refresh_1pct", "no_change", "smote"):
        if full and name in summary and summary[name].get("net_wall_s") is not None:
            summary[name]["net_wall_vs_full_build"] = summary[name]["net_wall_s"] / full
    return summary


if __name__ == "__main__":
    raise SystemExit(main())
