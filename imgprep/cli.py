"""The ``imgprep`` command line."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from imgprep.errors import ConfigError, ImgprepError

__all__ = ["app", "main"]

app = typer.Typer(
    add_completion=False,
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
    errors.print(f"[bold red]error:[/] {message}", highlight=False, markup=True)
    raise typer.Exit(code)


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
            help="Override one key, such as --set image.height=32; repeatable. "
            "Values are parsed as YAML.",
        ),
    ] = None,
    rehash: Annotated[
        bool,
        typer.Option(
            help="Read every source file again and compare its sha256, instead of "
            "trusting unchanged size and modification time."
        ),
    ] = False,
    progress_bar: Annotated[
        bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")
    ] = True,
) -> None:
    """Prepare a dataset version as the config describes, and print its summary."""
    from imgprep.config import load_config

    try:
        settings = load_config(config, set_ or [])
    except ConfigError as error:
        _fail(str(error), 2)
    _prefect_defaults()
    from flows.prepare import prepare_dataset
    from imgprep import progress
    from imgprep.store import Store
    from imgprep.version import load_manifest

    reporter = _RichProgress() if progress_bar and sys.stderr.isatty() else None
    try:
        if reporter is not None:
            progress.set_reporter(reporter)
            with reporter:
                result = prepare_dataset(settings, rehash=rehash)
        else:
            result = prepare_dataset(settings, rehash=rehash)
    except ConfigError as error:
        _fail(str(error), 2)
    except ImgprepError as error:
        _fail(str(error))
    finally:
        progress.set_reporter(None)
    manifest = load_manifest(Store(result["store"]), result["version"]).model_dump()
    print_summary(manifest, result["path"])


@app.command("demo-data")
def demo_data(
    destination: Annotated[
        Path, typer.Argument(help="Folder to write the demo tree to.")
    ],
    size: Annotated[
        int, typer.Option(help="Side of the square images in pixels.")
    ] = 32,
) -> None:
    """Write the demo data set: scikit-learn's handwritten digits, long-tailed."""
    from imgprep.demo import write_demo_data

    counts = write_demo_data(destination, size=size)
    console.print(
        f"wrote {sum(counts.values())} images in {len(counts)} classes to {destination} "
        f"(per class: {counts})"
    )


@app.command()
def show(
    ref: Annotated[str, typer.Argument(help="STORE or STORE@VERSION.")],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the manifest as JSON.")
    ] = False,
) -> None:
    """Print the summary of a version (default: the latest)."""
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


@app.command()
def export(
    ref: Annotated[str, typer.Argument(help="STORE or STORE@VERSION.")],
    destination: Annotated[Path, typer.Argument(help="Output folder.")],
    fmt: Annotated[
        str,
        typer.Option("--format", help="parquet, npz, or hf (Hugging Face datasets)."),
    ] = "parquet",
    normalize: Annotated[
        bool, typer.Option(help="Write normalized float32 pixels (parquet and npz).")
    ] = False,
    resampled: Annotated[
        bool, typer.Option(help="Apply the version's resampling to the training split.")
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
    for split, info in written.items():
        console.print(f"{split}: {info['rows']} rows -> {info['path']}")


def main() -> None:
    """Entry point of the ``imgprep`` console script."""
    app()


if __name__ == "__main__":
    main()
