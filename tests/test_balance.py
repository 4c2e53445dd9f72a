"""Tests of class-balance metrics and the per-split balance profile."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imgprep.balance import (
    balance_metrics,
    balance_profile,
    classes_missing_from_splits,
    effective_number,
)

BETA = 0.999
SHARE = 0.05


def metrics(counts: dict[str, int], beta: float = BETA, share: float = SHARE) -> dict:
    return balance_metrics(counts, beta=beta, minority_share=share)


def test_balanced_set() -> None:
    result = metrics({"a": 10, "b": 10, "c": 10})

    assert result["total"] == 30
    assert result["n_classes"] == 3
    assert result["imbalance_ratio"] == 1.0
    assert result["entropy"] == 1.0
    assert result["minority_classes"] == []
    assert result["empty_classes"] == []
    assert result["shares"] == {"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}
    assert result["class_weights"]["inverse_frequency"] == {
        "a": 1.0,
        "b": 1.0,
        "c": 1.0,
    }
    for weight in result["class_weights"]["effective_number"].values():
        assert weight == pytest.approx(1.0, rel=1e-12)


def test_imbalanced_set() -> None:
    counts = {"common": 900, "rare": 20, "medium": 80}
    result = metrics(counts)
    shares = [0.9, 0.02, 0.08]
    entropy = -sum(p * math.log(p) for p in shares) / math.log(3)

    assert result["imbalance_ratio"] == 45.0
    assert result["entropy"] == pytest.approx(entropy, rel=1e-12)
    assert result["minority_classes"] == ["rare"]
    assert result["class_weights"]["inverse_frequency"] == {
        "common": 1000 / (3 * 900),
        "rare": 1000 / (3 * 20),
        "medium": 1000 / (3 * 80),
    }
    assert list(result["counts"]) == ["common", "rare", "medium"]


def test_effective_number_weights() -> None:
    counts = {"a": 5000, "b": 50, "c": 1}
    result = metrics(counts, beta=0.99)
    raw = {name: (1 - 0.99) / (1 - 0.99**n) for name, n in counts.items()}
    scale = 3 / sum(raw.values())
    weights = result["class_weights"]["effective_number"]

    for name, n in counts.items():
        assert result["effective_numbers"][name] == pytest.approx(
            (1 - 0.99**n) / (1 - 0.99), rel=1e-12
        )
        assert weights[name] == pytest.approx(raw[name] * scale, rel=1e-12)
    assert sum(weights.values()) == pytest.approx(3.0, rel=1e-12)
    assert result["effective_numbers"]["c"] == 1.0


def test_beta_zero() -> None:
    result = metrics({"a": 7, "b": 1, "c": 0}, beta=0.0)

    assert result["effective_numbers"] == {"a": 1.0, "b": 1.0, "c": 0.0}
    assert result["class_weights"]["effective_number"] == {
        "a": 1.0,
        "b": 1.0,
        "c": None,
    }
    assert effective_number(3, 0.0) == 1.0
    assert effective_number(0, 0.0) == 0.0


def test_beta_close_to_one_approaches_count() -> None:
    assert effective_number(100, 1 - 1e-9) == pytest.approx(100, rel=1e-6)


def test_empty_class() -> None:
    result = metrics({"a": 30, "b": 0, "c": 10})

    assert result["n_classes"] == 2
    assert result["empty_classes"] == ["b"]
    assert result["imbalance_ratio"] == 3.0
    assert result["minority_classes"] == []
    assert result["shares"]["b"] == 0.0
    assert result["class_weights"]["inverse_frequency"]["b"] is None
    assert result["class_weights"]["effective_number"]["b"] is None
    assert result["class_weights"]["inverse_frequency"]["a"] == 40 / (2 * 30)
    assert result["effective_numbers"]["b"] == 0.0


def test_single_class() -> None:
    result = metrics({"only": 12})

    assert result["n_classes"] == 1
    assert result["imbalance_ratio"] == 1.0
    assert result["entropy"] == 1.0
    assert result["class_weights"]["inverse_frequency"] == {"only": 1.0}
    assert result["class_weights"]["effective_number"] == {"only": 1.0}


def test_no_samples() -> None:
    result = metrics({"a": 0, "b": 0})

    assert result["total"] == 0
    assert result["n_classes"] == 0
    assert result["imbalance_ratio"] is None
    assert result["entropy"] is None
    assert result["shares"] == {"a": None, "b": None}
    assert result["empty_classes"] == ["a", "b"]
    assert metrics({})["n_classes"] == 0


def test_minority_share_boundary() -> None:
    # 5 of 100 is a share of exactly 0.05, which is not below 0.05.
    result = metrics({"big": 95, "edge": 5}, share=0.05)

    assert result["minority_classes"] == []
    assert metrics({"big": 96, "small": 4}, share=0.05)["minority_classes"] == ["small"]


@pytest.mark.parametrize(
    ("counts", "message"),
    [
        ({"a": -1}, "'a' is -1"),
        ({"a": 1.5}, "'a' is 1.5"),
        ({"a": True}, "'a' is True"),
    ],
)
def test_invalid_counts_raise(counts: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        metrics(counts)


@pytest.mark.parametrize(("beta", "share"), [(1.0, 0.05), (-0.1, 0.05), (0.9, 0.0)])
def test_invalid_parameters_raise(beta: float, share: float) -> None:
    with pytest.raises(ValueError, match="must"):
        metrics({"a": 1}, beta=beta, share=share)


@settings(max_examples=200, deadline=None)
@given(
    counts=st.dictionaries(
        st.text(min_size=1, max_size=5),
        st.integers(min_value=0, max_value=10**9),
        max_size=20,
    ),
    beta=st.sampled_from([0.0, 0.5, 0.9, 0.999, 0.9999]),
)
def test_metrics_invariants(counts: dict[str, int], beta: float) -> None:
    result = metrics(counts, beta=beta)
    present = [name for name, count in counts.items() if count > 0]
    json.dumps(result, allow_nan=False)

    assert result["n_classes"] == len(present)
    if result["entropy"] is not None:
        assert 0.0 <= result["entropy"] <= 1.0
    for scheme in ("inverse_frequency", "effective_number"):
        weights = result["class_weights"][scheme]
        assert set(weights) == set(counts)
        given_weights = [weights[name] for name in present]
        assert all(weight > 0 for weight in given_weights)
    weights = result["class_weights"]
    if present:
        # Inverse-frequency weights give every class the same total weight, so
        # the samples' weights add up to the sample count.
        weighted = sum(
            counts[name] * weights["inverse_frequency"][name] for name in present
        )
        assert weighted == pytest.approx(result["total"], rel=1e-9)
        effective = sum(weights["effective_number"][name] for name in present)
        assert effective == pytest.approx(len(present), rel=1e-9)
    if result["total"]:
        assert sum(result["shares"].values()) == pytest.approx(1.0, rel=1e-9)


def test_profile_splits_and_overall() -> None:
    counts = {
        "train": {"cat": 80, "dog": 8},
        "val": {"cat": 10, "dog": 1},
        "test": {"cat": 10},
    }
    profile = balance_profile(
        counts, ["cat", "dog", "fox"], beta=BETA, minority_share=0.1
    )

    assert profile["classes"] == ["cat", "dog", "fox"]
    assert list(profile["splits"]) == ["train", "val", "test"]
    assert profile["overall"]["counts"] == {"cat": 100, "dog": 9, "fox": 0}
    assert profile["splits"]["test"]["counts"] == {"cat": 10, "dog": 0, "fox": 0}
    assert profile["splits"]["test"]["empty_classes"] == ["dog", "fox"]
    assert profile["splits"]["train"]["minority_classes"] == ["dog"]
    assert profile["overall"]["empty_classes"] == ["fox"]
    json.dumps(profile, allow_nan=False)


def test_profile_rejects_unknown_class() -> None:
    with pytest.raises(ValueError, match=r"split 'val' counts classes \['bird'\]"):
        balance_profile(
            {"train": {"cat": 1}, "val": {"bird": 2}},
            ["cat"],
            beta=BETA,
            minority_share=SHARE,
        )


def test_profile_rejects_repeated_class() -> None:
    with pytest.raises(ValueError, match=r"\['cat'\] more than once"):
        balance_profile({}, ["cat", "cat"], beta=BETA, minority_share=SHARE)


def test_classes_missing_from_splits():
    counts = {
        "train": {"cat": 20, "dog": 12, "bird": 6},
        "val": {"cat": 2, "dog": 0, "bird": 0},
        "test": {"cat": 0, "dog": 0, "bird": 0},
    }
    missing = classes_missing_from_splits(counts, ["cat", "dog", "bird"])
    assert missing == {"val": ["dog", "bird"]}
