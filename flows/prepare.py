"""The main flow: prepare an image dataset as a new version of its store."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

from prefect import flow
from prefect.context import get_run_context
from prefect.futures import as_completed
from prefect.logging import get_run_logger
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from prefect.utilities.annotations import quote

from imgprep import progress
from imgprep.config import PrepareConfig
from imgprep.executors import cpu_count, process_pool
from imgprep.faults import crash_point
from imgprep.scan import check_source
from imgprep.store import Store
from tasks.ingest import ingest_chunk, load_parent_state, plan_source, scan_source_files
from tasks.manifest import write_version
from tasks.normalize import fit_normalization_stats
from tasks.profile import profile_class_balance
from tasks.resample import check_sampling_request, resample_train_split
from tasks.shards import assemble_version_samples, write_normalized

__all__ = ["prepare_dataset"]


@contextlib.contextmanager
def _chunk_runner(config: PrepareConfig) -> Iterator[TaskRunner]:
    """Open the task runner that runs ingest chunks, as the config asks."""
    runner = config.runner
    workers = runner.workers or cpu_count()
    if runner.type == "dask":
        from prefect_dask import DaskTaskRunner

        if runner.address:
            task_runner = DaskTaskRunner(address=runner.address)
        else:
            task_runner = DaskTaskRunner(
                cluster_kwargs={
                    "n_workers": workers,
                    "threads_per_worker": 1,
                    "processes": True,
                    "dashboard_address": "127.0.0.1:0",
                    "host": "127.0.0.1",
                }
            )
        with task_runner:
            yield task_runner
    elif runner.type == "process":
        # The caller opened the process pool (see _open_process_pool). Twice as
        # many task threads as processes: while Prefect records one finished
        # chunk, the next one already waits in the pool's queue, so no worker
        # process sits idle between chunks.
        with ThreadPoolTaskRunner(max_workers=2 * workers) as pool:
            yield pool
    else:
        with ThreadPoolTaskRunner(max_workers=workers) as pool:
            yield pool


class _LocalPool:
    """The process pool of the ``process`` runner, opened at most once per run."""

    def __init__(self, config: PrepareConfig) -> None:
        self._config = config
        self._stack = contextlib.ExitStack()
        self.is_open = False

    def open(self) -> None:
        if self._config.runner.type == "process" and not self.is_open:
            workers = self._config.runner.workers or cpu_count()
            self._stack.enter_context(process_pool(workers))
            self.is_open = True

    def close(self) -> None:
        self._stack.close()
        self.is_open = False


def _unwrapped(value: Any) -> Any:
    return value


def _flow_run_id() -> str | None:
    try:
        context = get_run_context()
    except RuntimeError:
        return None
    run = getattr(context, "flow_run", None)
    return str(run.id) if run is not None else None


@flow(name="prepare-dataset", log_prints=False, validate_parameters=True)
def prepare_dataset(
    config: PrepareConfig, rehash: bool = False, rebuild: bool = False
) -> dict[str, Any]:
    """Prepare an image dataset: ingest, profile, fit, resample, write a version.

    Args:
        config: The run's configuration; see config/default.yaml for every key.
        rehash: Read every source file again and compare its sha256 with the
            recorded sample id, instead of trusting unchanged size and mtime.
        rebuild: Decode every file again and reuse no shard of the parent version,
            so a damaged object of the parent does not block the run. A change of
            the image settings rebuilds without this flag.

    Returns:
        A summary with the version number, its folder and the run's counters.
    """
    logger = get_run_logger()
    config = config.resolved()
    check_source(config.source)
    store = Store(config.output.store)
    store.ensure()
    logger.info(
        "preparing %s from %s into %s",
        config.dataset.name,
        config.source.root,
        store.root,
    )
    pool = _LocalPool(config)
    with store.lock(config.output.lock_timeout_s), contextlib.closing(pool):
        progress.step("scan")
        parent = load_parent_state(str(store.root), rebuild)
        if parent is None:
            # A first build decodes every file: the workers start during the scan.
            pool.open()
        scan = scan_source_files(config, quote(parent))
        crash_point("scan_done")
        plan = plan_source(quote(scan), quote(parent), rehash, config, rebuild)
        classes = scan.classes
        check_sampling_request(config, quote(scan))

        progress.step("decode")
        progress.start(len(plan.decode))
        chunks = []
        batches = plan.chunks(config.ingest.chunk_size)
        decode_started = time.perf_counter()
        if batches:
            pool.open()
            # prefect-dask 0.3 hands a quote()-wrapped argument to the task as a
            # tuple, so chunk arguments are quoted only for the local runners.
            wrap = _unwrapped if config.runner.type == "dask" else quote
            with _chunk_runner(config) as runner:
                futures = [
                    runner.submit(
                        ingest_chunk,
                        {
                            "items": wrap(batch),
                            "root": config.source.root,
                            "config": config,
                            "class_names": wrap(classes),
                            "store_root": str(store.root),
                            "expected_ids": {
                                c.key: plan.expected_ids[c.key]
                                for c in batch
                                if c.key in plan.expected_ids
                            },
                        },
                    )
                    for batch in batches
                ]
                for future in as_completed(futures):
                    result = future.result()
                    progress.advance(
                        len(result.records)
                        + len(result.quarantined)
                        + len(result.unchanged)
                    )
                chunks = [future.result() for future in futures]
            elapsed = time.perf_counter() - decode_started
            logger.info(
                "read %d files in %d chunks in %.2f s (%.0f files/s)",
                len(plan.decode),
                len(batches),
                elapsed,
                len(plan.decode) / max(elapsed, 1e-9),
            )
        # The workers' memory is freed before the rest of the run.
        pool.close()

        progress.step("assemble")
        assembled = assemble_version_samples(
            config, quote(scan), quote(plan), quote(parent), quote(chunks), classes
        )

        progress.step("normalize")
        params, normalization, histogram_png = fit_normalization_stats(
            config,
            quote(assembled.histograms),
            sum(assembled.counts["train"].values()),
        )

        progress.step("resample")
        samples = assembled.samples()
        resampled = resample_train_split(
            config, quote(samples), quote(assembled.shards), assembled.classes
        )
        crash_point("resample_done")

        version = (store.latest() or 0) + 1
        progress.step("profile")
        profile, balance_png = profile_class_balance(
            config, assembled.classes, assembled.counts, resampled.counts_after, version
        )
        normalized = []
        if config.normalize.apply == "on_write":
            normalized = write_normalized(
                config,
                quote([*assembled.shards, *resampled.synthetic_shards]),
                assembled.classes,
                quote(params),
            )
        files = {
            "class_balance.png": balance_png,
            "channel_histograms.png": histogram_png,
        }

        progress.step("write")
        manifest = write_version(
            config=config,
            version=version,
            parent=parent.version if parent else None,
            flow_run_id=_flow_run_id(),
            layout=scan.layout,
            empty_classes=scan.empty_classes,
            label_warnings=scan.label_warnings,
            assembled=quote(assembled),
            resampled=quote(resampled),
            normalization=normalization,
            profile=quote(profile),
            files=quote(files),
            normalized_shards=quote(normalized),
            chunk_keys=[chunk.key for chunk in chunks],
        )
    location = store.version_dir(version)
    logger.info(
        "version %d of %s is at %s: %d samples, %d quarantined",
        version,
        config.dataset.name,
        location,
        manifest["source"]["ingested"],
        manifest["source"]["quarantined"],
    )
    return {
        "version": version,
        "path": str(location),
        "store": str(store.root),
        "refresh": manifest["refresh"],
        "counts": manifest["counts"],
    }
