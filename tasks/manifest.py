"""Prefect task that writes a version: its tables, files, report and manifest, last."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from prefect import task
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from imgprep.assemble import AssembleResult
from imgprep.config import PrepareConfig
from imgprep.report import render_report
from imgprep.resample_stage import ResampleStage, lineage_table_bytes
from imgprep.store import Store
from imgprep.summary import summary_markdown
from imgprep.tables import SOURCES_SCHEMA, table_bytes
from imgprep.version import build_manifest, histograms_bytes, source_summary
from tasks.profile import artifact_key

__all__ = ["REPORT_FILE", "write_version"]

REPORT_FILE = "report.html"


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
    """Store the version's tables, render its report, then commit files and manifest.

    ``report.html`` is rendered from the manifest, so the manifest's ``files`` list
    is rebuilt afterwards to include the report with its sha256. Besides the
    markdown summary, a link artifact points at the report. Both are keyed by
    dataset, so the Prefect UI keeps their history.

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
    manifest_fields: dict[str, Any] = {
        "config": config,
        "version": version,
        "parent": parent,
        "flow_run_id": flow_run_id,
        "classes": assembled.classes,
        "counts_before": assembled.counts,
        "counts_after_train": resampled.counts_after,
        "source": source,
        "profile": dict(profile),
        "normalization": dict(normalization),
        "resample": resample,
        "refresh": assembled.refresh,
        "shards": [
            *assembled.shards,
            *resampled.synthetic_shards,
            *normalized_shards,
        ],
        "objects": {
            "sources": sources_ref,
            "lineage": lineage_ref,
            "histograms": histograms_ref,
        },
    }
    draft = build_manifest(**manifest_fields, files=all_files)
    parent_manifest = store.read_manifest_dict(parent) if parent is not None else None
    all_files[REPORT_FILE] = render_report(
        draft, store=store, files=all_files, parent_manifest=parent_manifest
    )
    # Same fields and creation time as the draft, plus report.html in ``files``.
    manifest = build_manifest(
        **manifest_fields, files=all_files, created=draft["created"]
    )
    path = store.commit_version(version, manifest, all_files)
    report_path = path / REPORT_FILE
    logger.info("committed version %d of %s at %s", version, config.dataset.name, path)
    logger.info("wrote the report of version %d to %s", version, report_path)
    store.clear_chunk_cache(chunk_keys)
    create_markdown_artifact(
        key=artifact_key(config.dataset.name, "version"),
        markdown=summary_markdown(manifest, str(path)),
        description=f"Version {version} of {config.dataset.name}",
    )
    create_link_artifact(
        key=artifact_key(config.dataset.name, "report"),
        link=report_path.resolve().as_uri(),
        link_text=f"{config.dataset.name} version {version}: {REPORT_FILE}",
        description=f"Report of version {version} of {config.dataset.name}: class "
        "balance, normalization, samples, quarantine and changes since the parent.",
    )
    return manifest
