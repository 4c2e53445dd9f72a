"""The ``imgprep`` command line."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from imgprep.errors import ConfigError, CorruptObjectError, ImgprepError, SourceError

__all__ = ["app", "main"]

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_show_locals=False,
    no_args_is_help=True,
    help="Prepare image datasets for training as versioned, auditable shards.",
)
console = Console(stderr=False)
errors = Console(stderr=True)


def _prefect_defaults() -> None:
    """Set Prefect environment defaults for local runs, unless the user set them."""
    # The temporary API server otherwise tries to reach an outside telemetry host.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # Cold starts of the temporary server took 18-27 s on a loaded 2-core machine
    # (prefect 3.9); the default limit is 20 s.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")


def _fail(message: str, code: int = 1) -> None:
    errors.print(
        f"[bold red]error:[/] {escape(message)}",
        highlight=False,
        markup=True,
        soft_wrap=True,
    )
    raise typer.Exit(code)


def _plural(count: int, noun: str) -> str:
    """Return ``count`` with ``noun``, adding an s unless the count is 1."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


# Prefect 3 logs a failed flow run ("Encountered exception during execution") and a
# failed task run ("Task run failed with exception") with exc_info on these loggers.
PREFECT_RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")


class _DropImgprepTraceback(logging.Filter):
    """Remove the traceback from log records whose exception is an ImgprepError.

    The record's message, which includes the exception's text, is kept. The CLI
    prints the same error once more as its final ``error:`` line.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], ImgprepError):
            record.exc_info = None
            record.exc_text = None
        return True


@contextmanager
def _short_run_errors(verbose: bool) -> Iterator[None]:
    """Hide Prefect's tracebacks of imgprep errors while the block runs."""
    if verbose:
        yield
        return
    loggers = [logging.getLogger(name) for name in PREFECT_RUN_LOGGERS]
    dropper = _DropImgprepTraceback()
    for logger in loggers:
        logger.addFilter(dropper)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(dropper)


def _print_table(rows: list[list[str]], title: str) -> None:
    head, *body = rows
    table = Table(title=title, title_justify="left", show_edge=False)
    for column in head:
        table.add_column(column, overflow="fold")
    for row in body:
        table.add_row(*row)
    console.print(table)


def print_summary(manifest: dict[str, Any], location: str) -> None:
    """Print a version's summary tables."""
    from imgprep.summary import summary_rows

    tables = summary_rows(manifest)
    console.print(
        f"[bold]Version {manifest['version']}[/] of {manifest['dataset']} at {location}"
    )
    _print_table([["field", "value"], *tables["version"]], "Version")
    _print_table(tables["classes"], "Classes (before resampling, and train after)")
    params = manifest["normalization"].get("params", {})
    _print_table(
        tables["normalization"],
        f"Normalization: {params.get('method')} fitted on the training split "
        "(pixel scale: y = (clip(x) - offset) / scale)",
    )
    _print_table(tables["shards"], "Shards")


class _RichProgress:
    """Progress bar with images per second and the current step."""

    def __init__(self) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self._progress = Progress(
            TextColumn("[bold]{task.fields[step]:<10}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self._task = self._progress.add_task("run", total=None, step="start", rate="")
        self._started = 0.0
        self._done = 0

    def __enter__(self) -> _RichProgress:
        self._progress.start()
        return self

    def __exit__(self, *args: object) -> None:
        self._progress.stop()

    def step(self, name: str) -> None:
        self._progress.update(self._task, step=name)

    def start(self, total_images: int) -> None:
        self._started = time.perf_counter()
        self._done = 0
        self._progress.update(self._task, total=total_images, completed=0)

    def advance(self, images: int) -> None:
        self._done += images
        elapsed = max(time.perf_counter() - self._started, 1e-9)
        self._progress.update(
            self._task, advance=images, rate=f"{self._done / elapsed:,.0f} images/s"
        )


@app.command()
def run(
    config: Annotated[Path, typer.Option("--config", "-c", help="YAML config file.")],
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            metavar="KEY=VALUE",
            help="Override one key, such as --set image.height=32; repeatable. "
            "Values are parsed as YAML.",
        ),
    ] = None,
    rehash: Annotated[
        bool,
        typer.Option(
            "--rehash/--no-rehash",
            metavar="",
            help="Read every source file again and compare its sha256, instead of "
            "trusting unchanged size and modification time.",
        ),
    ] = False,
    rebuild: Annotated[
        bool,
        typer.Option(
            "--rebuild",
            metavar="",
            help="Decode every file again and reuse no shard of the latest version, "
            "so a damaged object of that version does not block the run.",
        ),
    ] = False,
    progress_bar: Annotated[
        bool,
        typer.Option(
            "--progress/--no-progress", metavar="", help="Show a progress bar."
        ),
    ] = True,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose",
            "-v",
            metavar="",
            help="Show the full traceback when a step fails with an imgprep error; "
            "without it the log shows one line per failure.",
        ),
    ] = False,
) -> None:
    """Prepare a dataset version as the config describes, and print its summary."""
    from imgprep.config import load_config
    from imgprep.scan import check_source

    try:
        settings = load_config(config, set_ or [])
    except ConfigError as error:
        _fail(str(error), 2)
    # A missing root or labels table fails here, before a Prefect server starts.
    try:
        check_source(settings.resolved().source)
    except SourceError as error:
        _fail(str(error))
    _prefect_defaults()
    from flows.prepare import prepare_dataset
    from imgprep import progress
    from imgprep.store import Store
    from imgprep.version import load_manifest

    reporter = _RichProgress() if progress_bar and sys.stderr.isatty() else None
    try:
        with _short_run_errors(verbose):
            if reporter is not None:
                progress.set_reporter(reporter)
                with reporter:
                    result = prepare_dataset(settings, rehash=rehash, rebuild=rebuild)
            else:
                result = prepare_dataset(settings, rehash=rehash, rebuild=rebuild)
    except ConfigError as error:
        _fail(str(error), 2)
    except CorruptObjectError as error:
        message = str(error)
        if "--rebuild" not in message:
            message += (
                ". The latest version references a damaged or missing object; run "
                "again with --rebuild to build a new version from the sources alone"
            )
        _fail(message)
    except ImgprepError as error:
        _fail(str(error))
    finally:
        progress.set_reporter(None)
    manifest = load_manifest(Store(result["store"]), result["version"]).model_dump()
    print_summary(manifest, result["path"])


@app.command("demo-data")
def demo_data(
    destination: Annotated[
        Path,
        typer.Argument(metavar="DESTINATION", help="Folder to write the demo tree to."),
    ],
    size: Annotated[
        int, typer.Option(help="Side of the square images in pixels.")
    ] = 32,
) -> None:
    """Write the demo data set: scikit-learn's handwritten digits, long-tailed."""
    from imgprep.demo import write_demo_data

    try:
        counts = write_demo_data(destination, size=size)
    except ValueError as error:
        _fail(str(error), 2)
    except OSError as error:
        _fail(f"writing the demo data to {destination} failed: {error}")
    console.print(
        f"wrote {sum(counts.values())} images in {len(counts)} classes to {destination} "
        f"(per class: {counts})"
    )


@app.command()
def show(
    ref: Annotated[str, typer.Argument(metavar="REF", help="STORE or STORE@VERSION.")],
    as_json: Annotated[
        bool, typer.Option("--json", metavar="", help="Print the manifest as JSON.")
    ] = False,
) -> None:
    """Print the summary of a version (default: the latest).

    Besides the summary tables: the refresh counters, quarantined and skipped files
    by reason, the resampling of each class (method, k used, notes) and where the
    lineage table is.
    """
    from imgprep.audit import version_details
    from imgprep.store import Store, parse_store_ref
    from imgprep.version import load_manifest

    try:
        path, version = parse_store_ref(ref)
        store = Store(path)
        manifest = load_manifest(store, version)
    except ImgprepError as error:
        _fail(str(error))
    data = manifest.model_dump()
    if as_json:
        console.print_json(json.dumps(data))
        return
    print_summary(data, str(store.version_dir(manifest.version)))
    _print_details(version_details(manifest, store))


@app.command()
def export(
    ref: Annotated[str, typer.Argument(metavar="REF", help="STORE or STORE@VERSION.")],
    destination: Annotated[
        Path, typer.Argument(metavar="DESTINATION", help="Output folder.")
    ],
    fmt: Annotated[
        str,
        typer.Option("--format", help="parquet, npz, or hf (Hugging Face datasets)."),
    ] = "parquet",
    normalize: Annotated[
        bool,
        typer.Option(
            "--normalize/--no-normalize",
            metavar="",
            help="Write normalized float32 pixels (parquet and npz).",
        ),
    ] = False,
    resampled: Annotated[
        bool,
        typer.Option(
            "--resampled/--no-resampled",
            metavar="",
            help="Apply the version's resampling to the training split.",
        ),
    ] = True,
) -> None:
    """Write flat per-split shards of a version for other tools."""
    from imgprep.export import export_version
    from imgprep.reader import open_version
    from imgprep.store import parse_store_ref

    if fmt not in ("parquet", "npz", "hf"):
        _fail(f"unknown export format {fmt!r}; use parquet, npz or hf", 2)
    try:
        path, version = parse_store_ref(ref)
        dataset = open_version(path, version)
        written = export_version(
            dataset, destination, fmt, normalize=normalize, resampled=resampled
        )
    except (ImgprepError, ValueError) as error:
        _fail(str(error))
    except OSError as error:
        _fail(f"export to {destination} failed: {error}")
    for split, info in written.items():
        console.print(f"{split}: {info['rows']} rows -> {info['path']}")


# ------------------------------------------------------------------ audit


def _say(text: str) -> None:
    """Print one line of data as is: no markup, highlighting or wrapping."""
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def _say_error(text: str) -> None:
    errors.print(text, markup=False, highlight=False, soft_wrap=True)


def _print_data_table(rows: list[list[str]], title: str) -> None:
    """Print a table whose cells may contain brackets that rich would read as markup."""
    _print_table([[escape(cell) for cell in row] for row in rows], escape(title))


def _print_json(data: Any) -> None:
    """Print JSON for machines: plain text on stdout, no colours or wrapping."""
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False))


def _open_store_ref(ref: str) -> tuple[Any, int | None]:
    """Return the Store and version of ``STORE[@VERSION]``, or exit with code 2."""
    from imgprep.store import Store, parse_store_ref

    try:
        path, version = parse_store_ref(ref)
    except ImgprepError as error:
        _fail(str(error), 2)
    return Store(path), version


def _number(value: Any, digits: int = 6) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _change(pair: dict[str, Any], digits: int = 6) -> str:
    """Format a diff pair as ``a -> b (+change)``, or only ``a`` when equal."""
    a, b = _number(pair["a"], digits), _number(pair["b"], digits)
    if pair["a"] == pair["b"]:
        return a
    change = pair.get("change")
    if change is None:
        return f"{a} -> {b}"
    return f"{a} -> {b} ({change:+.{digits}g})"


def _splits_text(counts: dict[str, Any]) -> str:
    return "/".join(str(counts.get(split, 0)) for split in ("train", "val", "test"))


@app.command("log")
def log_versions(
    store_path: Annotated[Path, typer.Argument(metavar="STORE", help="Store folder.")],
    reverse: Annotated[
        bool,
        typer.Option("--reverse", metavar="", help="List the oldest version first."),
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", metavar="", help="Print the entries as JSON.")
    ] = False,
) -> None:
    """List every version of a store, newest first, with its counts and counters.

    Each version shows its parent, flow run, samples per split before and after
    resampling, quarantined files, config hash, and the refresh counters: which
    files the run found new, changed or removed, and how much it decoded and wrote.
    """
    from imgprep.audit import version_log
    from imgprep.store import Store

    try:
        entries = version_log(Store(store_path), newest_first=not reverse)
    except ImgprepError as error:
        _fail(str(error), 2)
    if as_json:
        _print_json(entries)
        return
    if not entries:
        _say(f"store {store_path} has no versions")
        return
    order = "oldest first" if reverse else "newest first"
    _say(f"Versions of {store_path}, {order}")
    for entry in entries:
        _print_log_entry(entry)


def _samples_text(before: dict[str, int], after: dict[str, int]) -> str:
    """Format samples per split, with ``before -> after`` where resampling changed."""
    parts = []
    changed = False
    for split in ("train", "val", "test"):
        count, resampled = before.get(split, 0), after.get(split, 0)
        if resampled == count:
            parts.append(f"{split} {count}")
        else:
            parts.append(f"{split} {count} -> {resampled}")
            changed = True
    text = ", ".join(parts)
    return f"{text} (before -> after resampling)" if changed else text


def _print_log_entry(entry: dict[str, Any]) -> None:
    """Print one version of ``imgprep log`` as a two-column table."""
    if entry.get("error"):
        _say(f"version {entry['version']}: invalid manifest: {entry['error']}")
        return
    if entry["parent"] is None:
        parent = "no parent"
    else:
        parent = f"parent {entry['parent']}"
        if not entry["parent_present"]:
            parent += ", removed from the store"
    refresh = entry["refresh"]
    rows = [
        ["created", entry["created"]],
        ["flow run", entry["flow_run_id"] or "n/a"],
        ["samples", _samples_text(entry["samples_before"], entry["samples_after"])],
        ["quarantined", str(entry["quarantined"])],
        ["config hash", entry["config_hash"][:12]],
        [
            "files",
            f"new {refresh.get('files_new', 0)}, changed "
            f"{refresh.get('files_changed', 0)}, removed "
            f"{refresh.get('files_removed', 0)}, unchanged "
            f"{refresh.get('files_unchanged', 0)}",
        ],
        [
            "refresh",
            f"images decoded {refresh.get('images_decoded', 0)}, shards reused "
            f"{refresh.get('shards_reused', 0)}, shards written "
            f"{refresh.get('shards_written', 0)}",
        ],
    ]
    if refresh.get("rebuild"):
        rows.append(["rebuild", str(refresh["rebuild"])])
    table = Table(
        title=escape(f"Version {entry['version']} ({parent})"),
        title_justify="left",
        show_header=False,
        show_edge=False,
        box=None,
        padding=(0, 2),
    )
    table.add_column("field", no_wrap=True)
    table.add_column("value", overflow="fold")
    for field, value in rows:
        table.add_row(field, escape(value))
    console.print(table)


def _print_details(details: dict[str, Any]) -> None:
    """Print the refresh, quarantine, skip, resampling and lineage tables of show."""
    refresh = details["refresh"]
    _print_data_table(
        [["counter", "value"], *[[k, _number(v)] for k, v in refresh.items()]],
        "Refresh counters (what this run read again and wrote)",
    )

    reasons = details["quarantined_by_reason"]
    if reasons:
        _print_data_table(
            [["reason", "files"], *[[k, str(v)] for k, v in reasons.items()]],
            "Quarantined by reason",
        )
        listed = details["quarantine"][:20]
        _print_data_table(
            [
                ["path", "reason", "message"],
                *[
                    [item["path"], item["reason"], item.get("message") or ""]
                    for item in listed
                ],
            ],
            f"Quarantined files ({len(listed)} of {len(details['quarantine'])}; "
            "--json lists all)",
        )
    else:
        _say("Quarantined: none")

    skipped = details["skipped_by_reason"]
    if skipped:
        _print_data_table(
            [["reason", "files"], *[[k, str(v)] for k, v in skipped.items()]],
            "Skipped by reason (duplicates included)",
        )
    else:
        _say("Skipped: none")

    resampling = details["resampling"]
    title = f"Resampling of the training split: {resampling['method']}"
    if not resampling["per_class"]:
        _say(f"{title}, no per-class entries")
    else:
        _print_resampling_table(resampling["per_class"], title)
    _print_lineage(details["lineage"])


def _print_resampling_table(per_class: list[dict[str, Any]], title: str) -> None:
    rows = [
        ["class", "method", "k used", "before", "after", "synthetic", "duplicated"]
        + ["removed", "note"]
    ]
    for item in per_class:
        rows.append(
            [
                item["class"],
                str(item["method"]),
                _number(item["k_neighbors"]),
                _number(item["n_before"]),
                _number(item["n_after"]),
                _number(item["n_synthetic"]),
                _number(item["n_duplicated"]),
                _number(item["n_removed"]),
                item["note"] or "",
            ]
        )
    _print_data_table(rows, title)


def _print_lineage(lineage: dict[str, Any]) -> None:
    ref = lineage["object"]
    if ref is None:
        _say(f"Lineage: {lineage['manifest_key']} is not in the manifest")
    else:
        _say(
            f"Lineage table ({lineage['manifest_key']}): "
            f"{lineage.get('location', ref['path'])} ({ref['bytes']:,} bytes, sha256 "
            f"{ref['sha256']})",
        )


def _print_sample_changes(samples: dict[str, Any], show_ids: bool) -> None:
    from imgprep.scan import natural_class_order

    columns = ("added", "removed", "moved in", "moved out")
    buckets: dict[tuple[str, str], dict[str, int]] = {}

    def bump(split: str, name: str, column: str, amount: int = 1) -> None:
        bucket = buckets.setdefault((split, name), dict.fromkeys(columns, 0))
        bucket[column] += amount

    for section in ("added", "removed"):
        for split, classes in samples[section].items():
            for name, ids in classes.items():
                bump(split, name, section, len(ids))
    for move in samples["moved"]:
        bump(move["b"]["split"], move["b"]["class"], "moved in")
        bump(move["a"]["split"], move["a"]["class"], "moved out")
    totals = samples["totals"]
    title = (
        f"Samples by id: {totals['added']} added, {totals['removed']} removed, "
        f"{totals['moved']} moved to another split or class, {totals['unchanged']} "
        "unchanged"
    )
    if not buckets:
        _say(title)
    else:
        rows = [["split", "class", *columns]]
        splits = ["train", "val", "test"]
        splits += sorted({split for split, _ in buckets} - set(splits))
        names = natural_class_order({name for _, name in buckets})
        for split in splits:
            for name in names:
                if (split, name) in buckets:
                    bucket = buckets[split, name]
                    rows.append([split, name, *[str(bucket[c]) for c in columns]])
        _print_data_table(rows, title)
    if show_ids:
        for section, sign in (("added", "+"), ("removed", "-")):
            for split, classes in samples[section].items():
                for name, ids in classes.items():
                    for sample_id in ids:
                        _say(f"{sign} {split} {name} {sample_id}")
        for move in samples["moved"]:
            _say(
                f"~ {move['sample_id']} {move['a']['split']}/{move['a']['class']} -> "
                f"{move['b']['split']}/{move['b']['class']}"
            )


def _print_balance_changes(result: dict[str, Any]) -> None:
    counts = result["counts"]
    rows = [["class", "train", "val", "test", "train after"]]
    for name in counts["before"]["train"]:
        cells = [
            _change(counts["before"][split][name]) for split in ("train", "val", "test")
        ]
        rows.append([name, *cells, _change(counts["after"]["train"][name])])
    _print_data_table(
        rows, "Class balance, A -> B (before resampling, and train after)"
    )

    ratio = result["imbalance_ratio"]
    rows = [["scope", "before resampling", "after resampling"]]
    for scope, pair in ratio["after"].items():
        rows.append([scope, _change(ratio["before"][scope], 4), _change(pair, 4)])
    _print_data_table(
        rows, "Imbalance ratio (largest / smallest non-empty class), A -> B"
    )


def _print_normalization_changes(norm: dict[str, Any]) -> None:
    rows = [["channel", "offset", "scale", "mean", "std"]]
    for channel in norm["channels"]:
        cells = [_change(channel[key]) for key in ("offset", "scale", "mean", "std")]
        rows.append([str(channel["channel"]), *cells])
    method = norm["method"]
    if method["a"] == method["b"]:
        method_text = str(method["a"])
    else:
        method_text = f"{method['a']} -> {method['b']}"
    _print_data_table(rows, f"Normalization ({method_text}), A -> B")


def _print_config_changes(changes: list[dict[str, Any]]) -> None:
    if not changes:
        _say("Config: no key changed")
        return
    rows = [["key", "A", "B"]]
    for change in changes:
        a = "(absent)" if change["status"] == "added" else json.dumps(change["a"])
        b = "(absent)" if change["status"] == "removed" else json.dumps(change["b"])
        rows.append([change["key"], a, b])
    _print_data_table(rows, "Config keys changed")


def _print_diff(result: dict[str, Any], show_ids: bool) -> None:
    for side in ("a", "b"):
        info = result[side]
        _say(
            f"{side.upper()}: {info['store']}@{info['version']} ({info['dataset']}, "
            f"created {info['created']}, config {str(info['config_hash'])[:12]})",
        )
    if result["samples"] is not None:
        _print_sample_changes(result["samples"], show_ids)
    _print_balance_changes(result)
    _print_normalization_changes(result["normalization"])
    _print_config_changes(result["config"])

    shards = result["shards"]
    rows = [["shards", "count", "rows", "bytes"]]
    for label, key in (
        ("shared", "shared"),
        ("only in A", "only_a"),
        ("only in B", "only_b"),
    ):
        part = shards[key]
        rows.append(
            [label, str(part["count"]), str(part["rows"]), f"{part['bytes']:,}"]
        )
    _print_data_table(rows, "Shards (matched by content address)")


@app.command()
def diff(
    ref_a: Annotated[
        str, typer.Argument(metavar="REF_A", help="STORE@VERSION of version A.")
    ],
    ref_b: Annotated[
        str,
        typer.Argument(
            metavar="REF_B", help="STORE@VERSION of version B; may be another store."
        ),
    ],
    ids: Annotated[
        bool,
        typer.Option(
            "--ids", metavar="", help="List every added, removed and moved id."
        ),
    ] = False,
    as_json: Annotated[
        bool,
        typer.Option("--json", metavar="", help="Print the comparison as JSON."),
    ] = False,
) -> None:
    """Compare two versions: samples, class balance, normalization, config, shards."""
    from imgprep.audit import diff_refs

    store_a, version_a = _open_store_ref(ref_a)
    store_b, version_b = _open_store_ref(ref_b)
    try:
        result = diff_refs(store_a, version_a, store_b, version_b)
    except ImgprepError as error:
        _fail(str(error))
    if as_json:
        _print_json(result)
        return
    _print_diff(result, ids)


def _print_verify(report: dict[str, Any], quiet: bool) -> None:
    if not quiet:
        for entry in report["versions"]:
            if entry["status"] == "invalid":
                continue
            rows = [["kind", "name", "path", "status", "detail"]]
            for check in entry["checks"]:
                rows.append(
                    [
                        check["kind"],
                        check["name"],
                        check["path"],
                        check["status"],
                        check["detail"] or "",
                    ]
                )
            _print_data_table(rows, f"Version {entry['version']}: {entry['status']}")
    for message in report["failures"]:
        _say(f"FAILED {message}")
    for message in report["warnings"]:
        _say(f"WARNING {message}")
    if report["writer"] is not None:
        holder = report["writer"]
        _say(
            f"a writer holds the store lock (host {holder.get('host')}, pid "
            f"{holder.get('pid')}); its temporary and cache files are not reported",
        )
    counts = report["counts"]
    bad = [e["version"] for e in report["versions"] if e["status"] != "ok"]
    verdict = "passed" if report["passed"] else "FAILED"
    listed = f" ({', '.join(map(str, bad))})" if bad else ""
    warnings = len(report["warnings"])
    strict_note = " (failing under --strict)" if report["strict"] and warnings else ""
    _say(
        f"verify {verdict}: {_plural(len(report['versions']), 'version')}, "
        f"{len(bad)} corrupt or invalid{listed}; "
        f"{counts['ok']} ok, {counts['failed']} failed, {counts['missing']} missing; "
        f"{_plural(warnings, 'warning')}{strict_note}",
    )


@app.command()
def verify(
    ref: Annotated[
        str,
        typer.Argument(
            metavar="REF", help="STORE to verify every version, or STORE@VERSION."
        ),
    ],
    strict: Annotated[
        bool,
        typer.Option(
            "--strict",
            metavar="",
            help="Also fail on warnings: leftover temporary files, incomplete version "
            "folders, chunk cache files, a LATEST pointer behind the newest version.",
        ),
    ] = False,
    quiet: Annotated[
        bool,
        typer.Option(
            "--quiet",
            "-q",
            metavar="",
            help="Print only failures, warnings and counts.",
        ),
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", metavar="", help="Print the report as JSON.")
    ] = False,
) -> None:
    """Check every object and file of the versions against their manifests.

    Exit code 0 when every check passed (warnings allowed unless --strict), 1 when
    any object is missing or differs or a manifest is invalid, 2 when the store or
    version cannot be found.
    """
    from imgprep.audit import verify_store

    store, version = _open_store_ref(ref)
    if "@" not in ref:
        version = None
    elif version is None:
        version = store.latest()
    try:
        report = verify_store(store, version, strict=strict)
    except ImgprepError as error:
        _fail(str(error), 2)
    if as_json:
        _print_json(report)
    else:
        _print_verify(report, quiet)
    if not report["passed"]:
        raise typer.Exit(1)


def _version_list(numbers: list[int]) -> str:
    """Return version numbers with their count, as ``versions 2, 3 (2 versions)``."""
    if not numbers:
        return "no versions"
    label = "version" if len(numbers) == 1 else "versions"
    listed = ", ".join(map(str, numbers))
    return f"{label} {listed} ({_plural(len(numbers), 'version')})"


def _print_gc(plan: dict[str, Any]) -> None:
    sections = (
        ("versions", "removed_versions"),
        ("unreferenced objects", "objects"),
        ("temporary files", "temp_files"),
        ("incomplete version folders", "incomplete_versions"),
        ("chunk cache files", "chunk_cache"),
    )
    rows = [["what", "entries", "bytes"]]
    for label, key in sections:
        rows.append(
            [label, str(len(plan[key])), f"{sum(e['bytes'] for e in plan[key]):,}"]
        )
    action = "Removed" if plan["applied"] else "Would remove (dry run)"
    _print_data_table(rows, f"{action} from {plan['store']}")

    kept_numbers = plan["kept_versions"]
    removed_numbers = [e["version"] for e in plan["removed_versions"]]
    if plan["applied"]:
        keep_verb, remove_verb = "kept", "removed"
    else:
        keep_verb, remove_verb = "keeping", "removing"
    _say(
        f"{keep_verb} {_version_list(kept_numbers)}; "
        f"{remove_verb} {_version_list(removed_numbers)}"
    )
    if plan["latest_pointer"] is not None:
        pointer = plan["latest_pointer"]
        verb = "rewrote" if plan["applied"] else "would rewrite"
        _say(f"{verb} LATEST from {pointer['from']} to {pointer['to']}")

    if plan["applied"]:
        _say(f"freed {plan['bytes_freed']:,} bytes")
        return
    _say(f"would free {plan['bytes_freed']:,} bytes; run again with --yes to delete")
    if plan["writer"] is not None:
        holder = plan["writer"]
        _say(
            f"a writer holds the store lock (host {holder.get('host')}, pid "
            f"{holder.get('pid')}), so this list includes its files in progress; "
            "gc --yes waits for the lock and plans again",
        )


@app.command()
def gc(
    store_path: Annotated[Path, typer.Argument(metavar="STORE", help="Store folder.")],
    keep: Annotated[
        int,
        typer.Option("--keep", help="Number of newest versions to keep; at least 1."),
    ],
    yes: Annotated[
        bool,
        typer.Option(
            "--yes",
            metavar="",
            help="Delete; without it gc only prints what it would.",
        ),
    ] = False,
    lock_timeout: Annotated[
        float,
        typer.Option(
            "--lock-timeout",
            help="Seconds to wait for the store's writer lock, which a running "
            "prepare run holds until it commits.",
        ),
    ] = 60.0,
    as_json: Annotated[
        bool, typer.Option("--json", metavar="", help="Print the plan as JSON.")
    ] = False,
) -> None:
    """Remove old versions and everything no kept version needs (dry run by default).

    Removes the versions beyond the newest --keep, every object no kept version
    references, everything in tmp/, version folders without a manifest and chunk
    cache files. With --yes it deletes while holding the store's writer lock, so it
    never removes the files of a prepare run in progress.
    """
    from imgprep.audit import collect_garbage
    from imgprep.store import Store

    try:
        plan = collect_garbage(
            Store(store_path), keep, apply=yes, lock_timeout_s=lock_timeout
        )
    except ValueError as error:
        _fail(str(error), 2)
    except ImgprepError as error:
        _fail(str(error))
    if as_json:
        _print_json(plan)
    else:
        _print_gc(plan)


def main() -> None:
    """Entry point of the ``imgprep`` console script."""
    app()


if __name__ == "__main__":
    main()
