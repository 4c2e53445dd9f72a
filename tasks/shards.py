"""Prefect tasks that reconcile and write shard objects."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from imgprep.assemble import (
    AssembleResult,
    IngestPlan,
    ParentState,
    assemble_samples,
    check_rejected_fraction,
)
from imgprep.config import PrepareConfig
from imgprep.ingest import ChunkResult
from imgprep.normalized import write_normalized_shards
from imgprep.scan import ScanResult
from imgprep.stats import NormalizationParams
from imgprep.store import Store

__all__ = ["assemble_version_samples", "write_normalized"]


@task(name="assemble-shards", cache_policy=NO_CACHE)
def assemble_version_samples(
    config: PrepareConfig,
    scan: ScanResult,
    plan: IngestPlan,
    parent: ParentState | None,
    chunks: Sequence[ChunkResult],
    chunk_classes: Sequence[str],
) -> AssembleResult:
    """Merge reused and decoded samples; rewrite shards that lost or changed rows."""
    logger = get_run_logger()
    result = assemble_samples(
        config=config,
        scan=scan,
        plan=plan,
        parent=parent,
        chunks=chunks,
        chunk_classes=chunk_classes,
        store=Store(config.output.store),
    )
    refresh = result.refresh
    logger.info(
        "version holds %d samples in %d classes; images decoded %d, shards reused "
        "%d, written %d; samples added %d, removed %d",
        len(result.samples()),
        len(result.classes),
        refresh["images_decoded"],
        refresh["shards_reused"],
        refresh["shards_written"],
        refresh["samples_added"],
        refresh["samples_removed"],
    )
    by_reason = check_rejected_fraction(
        result.sources, config.ingest.max_rejected_fraction
    )
    if by_reason:
        logger.warning(
            "quarantined %d files by reason: %s", sum(by_reason.values()), by_reason
        )
    return result


@task(name="write-normalized-shards", cache_policy=NO_CACHE)
def write_normalized(
    config: PrepareConfig,
    shards: Sequence[dict[str, Any]],
    classes: Sequence[str],
    params: NormalizationParams,
) -> list[dict[str, Any]]:
    """Write float32 normalized copies of the version's shards (``apply: on_write``)."""
    logger = get_run_logger()
    entries = write_normalized_shards(
        Store(config.output.store), shards, classes, params, config
    )
    logger.info("wrote %d normalized shards", len(entries))
    return entries
