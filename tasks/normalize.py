"""Prefect task that fits normalization statistics on the training split.

The statistics come from exact per-channel integer histograms that the ingest
chunks computed and the assemble step merged, so fitting reads no pixels. Only the
training split's original samples are counted: synthetic and duplicated rows from
resampling are not, and the validation and test splits never are.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from imgprep.config import PrepareConfig
from imgprep.errors import ImgprepError
from imgprep.stats import (
    ChannelHistogram,
    NormalizationParams,
    ZeroVarianceWarning,
    fit_normalization,
)
from tasks.profile import artifact_key

__all__ = ["fit_normalization_stats"]


@task(name="fit-normalization", cache_policy=NO_CACHE)
def fit_normalization_stats(
    config: PrepareConfig, histograms: Mapping[str, ChannelHistogram], train_images: int
) -> tuple[NormalizationParams, dict[str, Any], bytes]:
    """Fit the configured normalization on the training histogram.

    Returns the parameters, the manifest's normalization section, and a PNG of the
    training histograms with the parameters marked.
    """
    from imgprep.plots import plot_channel_histograms  # matplotlib loads after decoding

    logger = get_run_logger()
    train = histograms["train"]
    if train.n_pixels == 0:
        raise ImgprepError(
            "the training split has no samples, so normalization statistics cannot be "
            "fitted; check split.fractions and the source's train folder or column"
        )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ZeroVarianceWarning)
        params = fit_normalization(train, config.normalize, fitted_on="train")
    for warning in caught:
        logger.warning("%s", warning.message)
    summary = train.summary()
    stats = summary.to_dict()
    channels = ["R", "G", "B"] if train.channels == 3 else ["L"][: train.channels]
    logger.info(
        "normalization %s fitted on %d training pixels per channel: mean %s, std %s",
        params.method,
        train.n_pixels,
        [round(v, 3) for v in summary.mean],
        [round(v, 3) for v in summary.std],
    )
    rows = []
    params_dict = params.to_dict()
    for index, name in enumerate(channels):
        rows.append(
            {
                "channel": name,
                "min": stats["min"][index],
                "max": stats["max"][index],
                "mean": round(stats["mean"][index], 6),
                "std": round(stats["std"][index], 6),
                "p1": stats["percentiles"].get("1", [None] * 3)[index],
                "p99": stats["percentiles"].get("99", [None] * 3)[index],
                "offset": _at(params_dict.get("offset"), index),
                "scale": _at(params_dict.get("scale"), index),
                "zero_variance": params.zero_variance[index],
            }
        )
    create_table_artifact(
        key=artifact_key(config.dataset.name, "normalization"),
        table=rows,
        description=f"Normalization ({params.method}) of {config.dataset.name}, fitted "
        "on the training split, pixel scale: y = (clip(x) - offset) / scale.",
    )
    with tempfile.TemporaryDirectory() as folder:
        png = plot_channel_histograms(
            train, params, Path(folder) / "hist.png"
        ).read_bytes()
    section = {
        "fitted_on": "train",
        "apply": config.normalize.apply,
        "train_images": train_images,
        "note": "fitted on the original training samples, before resampling",
        "params": params.to_dict(),
        "stats": stats,
    }
    return params, section, png


def _at(values: Any, index: int) -> Any:
    if not values:
        return None
    return round(values[index], 6)
