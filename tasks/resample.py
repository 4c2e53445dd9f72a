"""Prefect task that resamples the training split with imbalanced-learn."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from imgprep.config import PrepareConfig
from imgprep.resample_stage import ResampleStage, resample_training
from imgprep.sampling_strategy import check_sampling_strategy
from imgprep.scan import ScanResult
from imgprep.store import Store

__all__ = ["check_sampling_request", "resample_train_split"]


@task(name="check-sampling-request", cache_policy=NO_CACHE)
def check_sampling_request(config: PrepareConfig, scan: ScanResult) -> None:
    """Reject an impossible sampling_strategy before any image is decoded.

    Training counts are known before decoding only when the source gives the split;
    with hash-assigned splits the same check runs once sample ids exist, before
    resampling.
    """
    if not (scan.has_source_split and config.split.use_source_split):
        return
    counts: dict[str, int] = {}
    for candidate in scan.candidates:
        if candidate.source_split in (None, "train"):
            counts[candidate.label] = counts.get(candidate.label, 0) + 1
    check_sampling_strategy(
        config.resample.method, config.resample.sampling_strategy, counts
    )


@task(name="resample-training-split", cache_policy=NO_CACHE)
def resample_train_split(
    config: PrepareConfig,
    samples: Sequence[dict[str, Any]],
    shards: Sequence[dict[str, Any]],
    classes: Sequence[str],
) -> ResampleStage:
    """Resample the training split from stored pixels and record the lineage."""
    logger = get_run_logger()
    stage = resample_training(
        config=config,
        store=Store(config.output.store),
        samples=samples,
        shards=shards,
        classes=classes,
    )
    before = sum(stage.summary["counts_before"].values())
    after = sum(stage.counts_after.values())
    logger.info(
        "resampling %s: training rows %d -> %d, synthetic %d",
        config.resample.method,
        before,
        after,
        stage.lineage_rows.count("origin", "synthetic"),
    )
    for name, detail in stage.summary.get("per_class", {}).items():
        if detail.get("note"):
            logger.warning("class %r: %s", name, detail["note"])
    return stage
