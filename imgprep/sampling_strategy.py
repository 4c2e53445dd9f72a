"""Validate a sampling_strategy before any image is decoded.

The checks need only class counts, so this module imports imbalanced-learn only when
a request passes them and goes to imbalanced-learn's own validation as a backstop.
That keeps scikit-learn and imbalanced-learn out of memory while images decode.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from imgprep.config import OVER_SAMPLERS
from imgprep.errors import ConfigError

__all__ = ["METHODS", "STRING_STRATEGIES", "check_sampling_strategy"]

METHODS = ("none", "class_weights", "random_under", *sorted(OVER_SAMPLERS))
STRING_STRATEGIES = (
    "auto",
    "minority",
    "not minority",
    "not majority",
    "all",
    "majority",
)


def _positive_counts(class_counts: Mapping[str, int]) -> dict[str, int]:
    counts = {str(name): int(count) for name, count in class_counts.items()}
    return {name: count for name, count in sorted(counts.items()) if count > 0}


def _sampling_type(method: str) -> str:
    return "over-sampling" if method in OVER_SAMPLERS else "under-sampling"


def _format_classes(names: list[str]) -> str:
    return ", ".join(repr(name) for name in names)


def _check_dict_strategy(
    method: str, strategy: Mapping[Any, Any], counts: dict[str, int]
) -> None:
    unknown = [str(name) for name in strategy if str(name) not in counts]
    if unknown:
        what = "class" if len(unknown) == 1 else "classes"
        verb = "does" if len(unknown) == 1 else "do"
        raise ConfigError(
            f"sampling_strategy names {what} {_format_classes(unknown)}, which {verb} "
            f"not exist in the training split; existing classes: "
            f"{_format_classes(list(counts))}"
        )
    for name, target in strategy.items():
        if isinstance(target, bool) or not isinstance(target, (int, np.integer)):
            raise ConfigError(
                f"sampling_strategy for class {str(name)!r} is {target!r}; give a "
                "whole number of samples such as 300"
            )
        if target < 0:
            raise ConfigError(
                f"sampling_strategy for class {str(name)!r} is {target}; a target "
                "count must be 0 or more"
            )
    if method in OVER_SAMPLERS:
        for name, target in strategy.items():
            have = counts[str(name)]
            if target < have:
                raise ConfigError(
                    f"sampling_strategy is invalid for method {method!r}: class "
                    f"{str(name)!r} has {have} training samples but sampling_strategy "
                    f"asks for {target}; an over-sampler cannot remove samples: ask "
                    f"for at least {have}, or use random_under"
                )
    else:
        for name, target in strategy.items():
            have = counts[str(name)]
            if target > have:
                raise ConfigError(
                    f"sampling_strategy is invalid for method {method!r}: class "
                    f"{str(name)!r} has {have} training samples but sampling_strategy "
                    f"asks for {target}; an under-sampler cannot add samples: ask for "
                    f"at most {have}, or use an over-sampler such as random_over"
                )


def _check_float_strategy(method: str, ratio: float, counts: dict[str, int]) -> None:
    if len(counts) != 2:
        raise ConfigError(
            f"sampling_strategy {ratio} is a float, which imbalanced-learn accepts "
            f"only for two classes, but the training split has {len(counts)} classes "
            f"({_format_classes(list(counts))}); give a dict of class name to target "
            "count instead"
        )
    if not 0.0 < ratio <= 1.0:
        raise ConfigError(
            f"sampling_strategy {ratio} is outside (0, 1]; a float is the ratio of "
            "minority to majority class size after resampling"
        )
    # max() and min() return the first of equal counts, as imbalanced-learn's do.
    majority = max(counts, key=counts.__getitem__)
    minority = min(counts, key=counts.__getitem__)
    n_majority = counts[majority]
    n_minority = counts[minority]
    if method in OVER_SAMPLERS:
        target = int(n_majority * ratio)
        if target <= n_minority:
            raise ConfigError(
                f"sampling_strategy {ratio} asks the minority class {minority!r} for "
                f"{target} samples ({ratio} x {n_majority} in class {majority!r}) but "
                f"it has {n_minority}; an over-sampler cannot remove samples: use a "
                f"ratio above {n_minority / n_majority:.4g}, or use random_under"
            )
    else:
        target = int(n_minority / ratio)
        if target > n_majority:
            raise ConfigError(
                f"sampling_strategy {ratio} asks the majority class {majority!r} for "
                f"{target} samples ({n_minority} in class {minority!r} / {ratio}) but "
                f"it has {n_majority}; an under-sampler cannot add samples: use a "
                f"ratio of at least {n_minority / n_majority:.4g}, or use an "
                "over-sampler such as random_over"
            )


def _check_string_strategy(method: str, strategy: str) -> None:
    if strategy not in STRING_STRATEGIES:
        raise ConfigError(
            f"sampling_strategy {strategy!r} is not a known strategy; use one of "
            f"{_format_classes(list(STRING_STRATEGIES))}, a float or a dict"
        )
    if strategy == "majority" and method in OVER_SAMPLERS:
        raise ConfigError(
            f"sampling_strategy 'majority' selects only the majority class, which the "
            f"over-sampler {method!r} cannot grow; use 'auto', 'minority', "
            "'not majority', 'not minority' or 'all'"
        )
    if strategy == "minority" and method not in OVER_SAMPLERS:
        raise ConfigError(
            f"sampling_strategy 'minority' selects only the minority class, which the "
            f"under-sampler {method!r} cannot reduce; use 'auto', 'majority', "
            "'not minority', 'not majority' or 'all'"
        )


def _resolve_sampling_strategy(
    method: str, strategy: Any, counts: dict[str, int]
) -> dict[str, int]:
    """Resolve ``strategy`` with imbalanced-learn's own rules.

    Returns the number of samples to generate per class for over-samplers and the
    number to keep per class for under-samplers, as
    ``imblearn.utils.check_sampling_strategy`` does. Classes are passed to it as integer
    codes, so a large split costs 8 bytes a row rather than one string each.
    """
    names = list(counts)
    codes = {name: code for code, name in enumerate(names)}
    y = np.repeat(np.arange(len(names)), [counts[name] for name in names])
    if isinstance(strategy, Mapping):
        strategy = {codes[str(name)]: int(target) for name, target in strategy.items()}
    from imblearn.utils import (
        check_sampling_strategy as imblearn_check_sampling_strategy,
    )

    resolved = imblearn_check_sampling_strategy(strategy, y, _sampling_type(method))
    return {names[int(code)]: int(value) for code, value in resolved.items()}


def check_sampling_strategy(
    method: str, strategy: Any, class_counts: Mapping[str, int]
) -> None:
    """Raise ConfigError when ``strategy`` cannot be applied to the training split.

    Parameters
    ----------
    method : str
        Resample method, one of ``ResampleSettings.method``.
    strategy : str, float or dict
        imbalanced-learn ``sampling_strategy``.
    class_counts : Mapping[str, int]
        Training samples per class. Classes with 0 samples count as absent.

    Raises
    ------
    ConfigError
        On an unknown method or a dict for ``none`` or ``class_weights``. For a sampler,
        on fewer than two classes, a dict that names a missing class, an over-sampler
        asked for fewer samples than a class has, or an under-sampler asked for more.
        Also on a float with other than two classes, and on anything else that
        ``imblearn.utils.check_sampling_strategy`` rejects.
    """
    if method not in METHODS:
        raise ConfigError(
            f"resample method {method!r} is unknown; use one of "
            f"{_format_classes(list(METHODS))}"
        )
    counts = _positive_counts(class_counts)
    if method in ("none", "class_weights"):
        if isinstance(strategy, Mapping):
            raise ConfigError(
                f"sampling_strategy is a dict but method is {method!r}, which changes "
                "no counts; choose a sampler or use sampling_strategy: auto"
            )
        return
    if len(counts) < 2:
        raise ConfigError(
            f"method {method!r} needs at least 2 classes in the training split, but it "
            f"has {len(counts)} ({_format_classes(list(counts))}); use method: none"
        )
    if isinstance(strategy, Mapping):
        _check_dict_strategy(method, strategy, counts)
    elif isinstance(strategy, str):
        _check_string_strategy(method, strategy)
    elif isinstance(strategy, (float, int)) and not isinstance(strategy, bool):
        _check_float_strategy(method, float(strategy), counts)
    else:
        raise ConfigError(
            f"sampling_strategy {strategy!r} has type {type(strategy).__name__}; give "
            "a string such as 'auto', a float or a dict of class name to target count"
        )
    try:
        _resolve_sampling_strategy(method, strategy, counts)
    except ValueError as error:
        raise ConfigError(
            f"sampling_strategy {strategy!r} is invalid for method {method!r} with "
            f"class counts {counts}: {error}"
        ) from None
