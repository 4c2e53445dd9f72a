"""Prefect task of the class-balance profile: metrics, bar chart and artifact."""

from __future__ import annotations

import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from imgprep.balance import balance_profile, classes_missing_from_splits
from imgprep.config import SPLITS, PrepareConfig

__all__ = ["artifact_key", "profile_class_balance"]


def artifact_key(dataset: str, what: str) -> str:
    """Return a Prefect artifact key (lowercase letters, digits, dashes) per dataset."""
    text = re.sub(r"[^a-z0-9-]+", "-", f"{dataset}-{what}".lower()).strip("-")
    return text or what


@task(name="profile-class-balance", cache_policy=NO_CACHE)
def profile_class_balance(
    config: PrepareConfig,
    classes: Sequence[str],
    counts_before: Mapping[str, Mapping[str, int]],
    counts_after_train: Mapping[str, int],
    version: int,
) -> tuple[dict[str, Any], bytes]:
    """Compute the balance profile before and after resampling and draw it.

    Returns the profile as JSON data and the bar chart as PNG bytes.
    """
    from imgprep.plots import plot_class_balance  # matplotlib loads after decoding

    logger = get_run_logger()
    settings = config.profile
    before = balance_profile(
        counts_before,
        classes,
        beta=settings.beta,
        minority_share=settings.minority_share,
    )
    after_counts = {split: dict(counts_before[split]) for split in SPLITS}
    after_counts["train"] = dict(counts_after_train)
    after = balance_profile(
        after_counts,
        classes,
        beta=settings.beta,
        minority_share=settings.minority_share,
    )
    missing = classes_missing_from_splits(
        {split: counts_before[split] for split in SPLITS}, classes
    )
    for split, names in missing.items():
        logger.warning(
            "%d of %d classes have no samples in the %s split: %s",
            len(names),
            len(classes),
            split,
            ", ".join(names),
        )
    profile = {
        "before": before,
        "after": after,
        "beta": settings.beta,
        "minority_share": settings.minority_share,
        "classes_missing_from_splits": missing,
    }
    with tempfile.TemporaryDirectory() as folder:
        path = plot_class_balance(
            {split: counts_before[split] for split in SPLITS},
            counts_after_train,
            classes,
            Path(folder) / "class_balance.png",
            title=f"{config.dataset.name} version {version}",
        )
        png = path.read_bytes()

    train = before["splits"]["train"]
    logger.info(
        "training split: %d samples, %d classes, imbalance ratio %s, entropy %s",
        train["total"],
        train["n_classes"],
        _fmt(train["imbalance_ratio"]),
        _fmt(train["entropy"]),
    )
    rows = []
    for name in classes:
        row: dict[str, Any] = {"class": name}
        for split in SPLITS:
            row[split] = counts_before[split].get(name, 0)
        row["train_after"] = counts_after_train.get(name, 0)
        weights = train["class_weights"]
        row["weight_inverse_frequency"] = _fmt(weights["inverse_frequency"].get(name))
        row["weight_effective_number"] = _fmt(weights["effective_number"].get(name))
        rows.append(row)
    create_table_artifact(
        key=artifact_key(config.dataset.name, "class-balance"),
        table=rows,
        description=f"Class balance of {config.dataset.name} version {version}: counts "
        "per split before resampling, the training split after resampling, and "
        "suggested class weights.",
    )
    return profile, png


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
