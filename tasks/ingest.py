"""Prefect tasks of the ingest step: scan the source, plan, decode chunks."""

from __future__ import annotations

from collections.abc import Sequence

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from imgprep.assemble import (
    IngestPlan,
    ParentState,
    image_settings_changes,
    plan_ingest,
)
from imgprep.config import PrepareConfig
from imgprep.errors import CorruptObjectError, SourceError
from imgprep.executors import run_chunk_work
from imgprep.ingest import ChunkResult, ingest_files
from imgprep.scan import Candidate, KnownFile, ScanResult, scan_source
from imgprep.store import Store
from imgprep.version import load_parent

__all__ = ["ingest_chunk", "load_parent_state", "plan_source", "scan_source_files"]


@task(name="load-parent-version", cache_policy=NO_CACHE)
def load_parent_state(store_root: str, rebuild: bool = False) -> ParentState | None:
    """Read what a refresh needs from the newest version of the store.

    With ``rebuild``, a parent whose tables are damaged is logged and left out, so
    the run builds from the sources alone.
    """
    logger = get_run_logger()
    try:
        parent = load_parent(Store(store_root))
    except CorruptObjectError as error:
        if not rebuild:
            raise
        logger.warning(
            "cannot read the latest version (%s); rebuilding without a parent", error
        )
        return None
    if parent is None:
        logger.info("store %s has no versions; building version 1", store_root)
    else:
        logger.info(
            "refreshing from version %d (%d files recorded)",
            parent.version,
            len(parent.sources),
        )
    return parent


@task(name="scan-source", cache_policy=NO_CACHE)
def scan_source_files(config: PrepareConfig, parent: ParentState | None) -> ScanResult:
    """List the candidate images of the source without decoding them."""
    logger = get_run_logger()
    known = {}
    if parent is not None:
        for row in parent.sources:
            if row.get("size") is not None and row.get("mtime_ns") is not None:
                known[row["key"]] = KnownFile(
                    row["size"], row["mtime_ns"], row["status"], row.get("reason")
                )
    result = scan_source(config.source, known)
    skipped = len(result.skipped)
    logger.info(
        "scan of %s found %d candidate files in %d classes; %d skipped%s",
        config.source.root,
        len(result.candidates),
        len(result.classes),
        skipped,
        f" {result.skipped_by_reason()}" if skipped else "",
    )
    if not result.candidates:
        where = (
            f"labels table {config.source.labels}"
            if config.source.labels
            else f"source root {config.source.root}"
        )
        detail = (
            f" ({skipped} skipped: {result.skipped_by_reason()})" if skipped else ""
        )
        raise SourceError(
            f"no image files found in the {where}{detail}; put images in one folder "
            "per class under source.root, or list them in the labels table"
        )
    if result.empty_classes:
        logger.warning(
            "folders without images, not made into classes: %s", result.empty_classes
        )
    for warning in result.label_warnings:
        logger.warning(warning)
    return result


@task(name="plan-ingest", cache_policy=NO_CACHE)
def plan_source(
    scan: ScanResult,
    parent: ParentState | None,
    rehash: bool,
    config: PrepareConfig,
    rebuild: bool = False,
) -> IngestPlan:
    """Decide which files are reused from the parent version and which are decoded.

    Every file is decoded again when ``rebuild`` is set or when the image settings
    differ from the parent's, because the stored pixels then no longer match.
    """
    logger = get_run_logger()
    reason = None
    if parent is not None:
        changes = image_settings_changes(parent, config)
        if changes:
            reason = "image settings changed: " + ", ".join(changes)
        elif rebuild:
            reason = "rebuild requested"
    plan = plan_ingest(scan, parent, rehash=rehash, rebuild=reason)
    if reason is not None:
        logger.warning(
            "%s since version %d; decoding every file again and reusing no shard",
            reason,
            parent.version,
        )
    logger.info(
        "files new %d, with new size or mtime %d, same size and mtime %d, removed %d;"
        " %d to read",
        len(plan.new_keys),
        len(plan.changed_keys),
        len(plan.unchanged_keys),
        len(plan.removed_keys),
        len(plan.decode),
    )
    return plan


@task(name="ingest-chunk", cache_policy=NO_CACHE, retries=0)
def ingest_chunk(
    items: Sequence[Candidate],
    root: str,
    config: PrepareConfig,
    class_names: Sequence[str],
    store_root: str,
    expected_ids: dict[str, str] | None = None,
) -> ChunkResult:
    """Decode a chunk of files and write their pixels as shard objects."""
    logger = get_run_logger()
    result = run_chunk_work(
        ingest_files,
        items=list(items),
        root=root,
        config=config,
        class_names=list(class_names),
        store_root=store_root,
        expected_ids=expected_ids,
    )
    if result.cached:
        logger.info("chunk %s reused from an interrupted run", result.key[:12])
    else:
        logger.info(
            "decoded %d of %d files in %.2f s (%d quarantined, %d unchanged)",
            result.decoded,
            len(items),
            result.seconds,
            len(result.quarantined),
            len(result.unchanged),
        )
    return result
