"""Prefect task that writes a version: its tables, files and manifest, last."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from imgprep.assemble import AssembleResult
from imgprep.config import PrepareConfig
from imgprep.resample_stage import ResampleStage, lineage_table_bytes
from imgprep.store import Store
from imgprep.summary import summary_markdown
from imgprep.tables import SOURCES_SCHEMA, table_bytes
from imgprep.version import build_manifest, histograms_bytes, source_summary
from tasks.profile import artifact_key

__all__ = ["write_version"]


@task(name="write-version", cache_policy=NO_CACHE)
def write_version(
    *,
    config: PrepareConfig,
    version: int,
    parent: int | None,
    flow_run_id: str | None,
    layout: str,
    empty_classes: Sequence[str],
    label_warnings: Sequence[str],
    assembled: AssembleResult,
    resampled: ResampleStage,
    normalization: Mapping[str, Any],
    profile: Mapping[str, Any],
    files: Mapping[str, bytes],
    normalized_shards: Sequence[dict[str, Any]] = (),
    chunk_keys: Sequence[str] = (),
) -> dict[str, Any]:
    """Store the version's tables, then commit its files and manifest.

    Returns the manifest as written.
    """
    logger = get_run_logger()
    store = Store(config.output.store)
    sources_ref = store.put_bytes(
        table_bytes(assembled.sources, SOURCES_SCHEMA), "parquet"
    )
    lineage_ref = store.put_bytes(
        lineage_table_bytes(resampled.lineage_rows), "parquet"
    )
    histograms_ref = store.put_bytes(histograms_bytes(assembled.histograms), "npz")
    source = source_summary(
        config, layout, assembled.sources, empty_classes, label_warnings
    )
    resample = dict(resampled.summary)
    resample["lineage"] = "objects.lineage"
    all_files = dict(files)
    all_files["profile.json"] = (
        json.dumps(profile, indent=2, sort_keys=True) + "\n"
    ).encode()
    manifest = build_manifest(
        config=config,
        version=version,
        parent=parent,
        flow_run_id=flow_run_id,
        classes=assembled.classes,
        counts_before=assembled.counts,
        counts_after_train=resampled.counts_after,
        source=source,
        profile=dict(profile),
        normalization=dict(normalization),
        resample=resample,
        refresh=assembled.refresh,
        shards=[*assembled.shards, *resampled.synthetic_shards, *normalized_shards],
        objects={
            "sources": sources_ref,
            "lineage": lineage_ref,
            "histograms": histograms_ref,
        },
        files=all_files,
    )
    path = store.commit_version(version, manifest, all_files)
    logger.info("committed version %d of %s at %s", version, config.dataset.name, path)
    store.clear_chunk_cache(chunk_keys)
    create_markdown_artifact(
        key=artifact_key(config.dataset.name, "version"),
        markdown=summary_markdown(manifest, str(path)),
        description=f"Version {version} of {config.dataset.name}",
    )
    return manifest
