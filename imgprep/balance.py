"""Class-balance metrics of per-class sample counts.

The metrics describe how far a split is from balanced and give two standard class
weightings: inverse frequency, and the effective number of samples (Cui et al. 2019,
as in ``ProfileSettings.beta``). A class with ``n`` samples has the effective number
``(1 - beta**n) / (1 - beta)``.
Every result is plain JSON data: str keys, int, float, bool, list, dict and None.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from numbers import Integral
from typing import Any

__all__ = [
    "balance_metrics",
    "balance_profile",
    "classes_missing_from_splits",
    "effective_number",
]


def effective_number(count: int, beta: float) -> float:
    """Return the effective number of samples ``(1 - beta**count) / (1 - beta)``.

    It is 0 for ``count`` 0. For ``beta`` 0 it is 1 for any positive count, and it
    approaches ``count`` as ``beta`` approaches 1.
    """
    if count == 0:
        return 0.0
    return (1.0 - beta**count) / (1.0 - beta)


def _check_parameters(beta: float, minority_share: float) -> None:
    if not 0.0 <= beta < 1.0:
        raise ValueError(
            f"beta is {beta}; it must satisfy 0 <= beta < 1 (for example 0.999)"
        )
    if not 0.0 < minority_share < 1.0:
        raise ValueError(
            f"minority_share is {minority_share}; it must be between 0 and 1 "
            "(for example 0.05)"
        )


def _check_counts(counts: Mapping[str, int]) -> dict[str, int]:
    checked: dict[str, int] = {}
    for name, count in counts.items():
        if isinstance(count, bool) or not isinstance(count, Integral):
            raise ValueError(
                f"count of class {name!r} is {count!r}; counts must be integers"
            )
        if count < 0:
            raise ValueError(f"count of class {name!r} is {count}; counts must be >= 0")
        checked[str(name)] = int(count)
    return checked


def _normalized_entropy(counts: Sequence[int], total: int) -> float | None:
    """Return the Shannon entropy of the shares divided by ``log(K)``.

    ``K`` is the number of non-empty classes. The result is 1.0 for equal counts
    and for a single class, and None without classes.
    """
    present = [count for count in counts if count > 0]
    if not present:
        return None
    if len(set(present)) == 1:
        return 1.0
    entropy = -sum(count / total * math.log(count / total) for count in present)
    # Rounding can push a nearly balanced set slightly above 1.
    return min(entropy / math.log(len(present)), 1.0)


def balance_metrics(
    counts: Mapping[str, int], *, beta: float, minority_share: float
) -> dict[str, Any]:
    """Compute class-balance metrics of one split.

    Parameters
    ----------
    counts : Mapping[str, int]
        Samples per class. Classes with count 0 are allowed and reported as empty.
    beta : float
        Beta of the effective number of samples, ``0 <= beta < 1``.
    minority_share : float
        A non-empty class whose share is below this is a minority class.

    Returns
    -------
    dict
        JSON-ready metrics, with classes in the order of ``counts``:

        - ``counts``, ``total``, ``beta``, ``minority_share``.
        - ``shares``: count / total per class, None for every class when total
          is 0.
        - ``n_classes``: number of classes with count > 0, called K below.
        - ``imbalance_ratio``: largest / smallest count over non-empty classes,
          1.0 for one class and None for none.
        - ``entropy``: Shannon entropy of the shares divided by log(K). It is 1.0
          for a balanced set or one class, and None for none.
        - ``minority_classes``: non-empty classes with share < ``minority_share``.
          Empty classes are listed only in ``empty_classes``.
        - ``empty_classes``: classes with count 0.
        - ``effective_numbers``: ``(1 - beta**n) / (1 - beta)`` per class.
        - ``class_weights``: ``inverse_frequency`` is ``total / (K * n)``.
          ``effective_number`` is proportional to ``(1 - beta) / (1 - beta**n)``
          and scaled to sum to K. Empty classes get None in both.

    Raises
    ------
    ValueError
        When a count is not a non-negative integer, or beta or minority_share is
        out of range.
    """
    _check_parameters(beta, minority_share)
    checked = _check_counts(counts)
    total = sum(checked.values())
    present = {name: count for name, count in checked.items() if count > 0}
    n_classes = len(present)
    if total > 0:
        shares: dict[str, float | None] = {
            name: count / total for name, count in checked.items()
        }
    else:
        shares = {name: None for name in checked}
    imbalance_ratio = max(present.values()) / min(present.values()) if present else None
    effective = {name: effective_number(count, beta) for name, count in checked.items()}
    inverse_frequency: dict[str, float | None] = {}
    effective_weights: dict[str, float | None] = {}
    inverse_effective_sum = sum(1.0 / effective[name] for name in present)
    for name, count in checked.items():
        if count == 0:
            inverse_frequency[name] = None
            effective_weights[name] = None
            continue
        inverse_frequency[name] = total / (n_classes * count)
        effective_weights[name] = (
            n_classes * (1.0 / effective[name]) / inverse_effective_sum
        )
    return {
        "counts": checked,
        "shares": shares,
        "total": total,
        "n_classes": n_classes,
        "imbalance_ratio": imbalance_ratio,
        "entropy": _normalized_entropy(list(checked.values()), total),
        "minority_classes": [
            name for name, count in present.items() if count / total < minority_share
        ],
        "empty_classes": [name for name, count in checked.items() if count == 0],
        "beta": beta,
        "minority_share": minority_share,
        "effective_numbers": effective,
        "class_weights": {
            "inverse_frequency": inverse_frequency,
            "effective_number": effective_weights,
        },
    }


def balance_profile(
    counts_by_split: Mapping[str, Mapping[str, int]],
    classes: Sequence[str],
    *,
    beta: float,
    minority_share: float,
) -> dict[str, Any]:
    """Compute :func:`balance_metrics` for every split and for all splits together.

    Parameters
    ----------
    counts_by_split : Mapping[str, Mapping[str, int]]
        Samples per class for each split, such as ``{"train": {"cat": 10}}``. A
        class missing from a split counts 0 there.
    classes : Sequence[str]
        Every class, in the order the metrics list them.
    beta, minority_share : float
        As in :func:`balance_metrics`.

    Returns
    -------
    dict
        ``{"classes": [...], "overall": metrics, "splits": {split: metrics}}``.

    Raises
    ------
    ValueError
        When ``classes`` repeats a name or a split counts a class not in
        ``classes``.
    """
    names = [str(name) for name in classes]
    repeated = sorted(name for name, seen in Counter(names).items() if seen > 1)
    if repeated:
        raise ValueError(f"classes lists {repeated} more than once; list each once")
    known = set(names)
    per_split: dict[str, dict[str, int]] = {}
    for split, counts in counts_by_split.items():
        unknown = sorted(str(name) for name in counts if str(name) not in known)
        if unknown:
            raise ValueError(
                f"split {split!r} counts classes {unknown} that are not in the "
                f"class list {names}; add them to classes"
            )
        values = _check_counts(counts)
        per_split[str(split)] = {name: values.get(name, 0) for name in names}
    overall = {
        name: sum(counts[name] for counts in per_split.values()) for name in names
    }
    return {
        "classes": names,
        "overall": balance_metrics(overall, beta=beta, minority_share=minority_share),
        "splits": {
            split: balance_metrics(counts, beta=beta, minority_share=minority_share)
            for split, counts in per_split.items()
        },
    }


def classes_missing_from_splits(
    counts: Mapping[str, Mapping[str, int]], classes: Sequence[str]
) -> dict[str, list[str]]:
    """Return, per split that has samples, the classes with none in that split.

    A hash split of a small class can leave it out of ``val`` or ``test``, which
    makes per-class metrics on that split undefined for the class.
    """
    missing = {}
    for split, per_class in counts.items():
        if sum(per_class.values()) == 0:
            continue
        absent = [name for name in classes if per_class.get(name, 0) == 0]
        if absent:
            missing[split] = absent
    return missing
