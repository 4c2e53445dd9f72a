"""Tests of imgprep.resampling: methods, lineage, fallbacks and validation."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from imblearn.over_sampling import ADASYN, SMOTE, BorderlineSMOTE
from imblearn.over_sampling._smote.base import BaseSMOTE
from imblearn.under_sampling import EditedNearestNeighbours, TomekLinks
from PIL import Image
from sklearn.base import clone
from sklearn.neighbors import NearestNeighbors

from imgprep.config import FeatureSpace, ResampleSettings
from imgprep.errors import ConfigError, ResampleError
from imgprep.resampling import (
    FeatureReducer,
    LineageBorderlineSMOTE,
    TracerNeighbors,
    check_sampling_strategy,
    class_seed,
    estimate_memory_bytes,
    interpolate_pixels,
    resample,
    thumbnail_features,
)

ALL_METHODS = [
    "none",
    "class_weights",
    "random_over",
    "random_under",
    "smote",
    "borderline_smote",
    "adasyn",
    "smote_tomek",
    "smote_enn",
]
SMOTE_METHODS = ["smote", "borderline_smote", "adasyn", "smote_tomek", "smote_enn"]


def make_problem(
    sizes: tuple[int, int, int] = (210, 60, 30), seed: int = 1, spread: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Return (labels, features) of 3 overlapping Gaussian classes cat, dog and eel.

    Class centres lie 2 apart in 6 dimensions, and ``spread`` scales the per-class
    standard deviation, so a larger spread gives more overlap.
    """
    rng = np.random.default_rng(seed)
    centres = 2.0 * np.eye(3, 6)
    labels = np.repeat(["cat", "dog", "eel"], sizes)
    features = np.vstack(
        [
            rng.normal(centre, spread, size=(size, 6))
            for centre, size in zip(centres, sizes, strict=True)
        ]
    )
    return labels, features


def rebuild(features: np.ndarray, result) -> np.ndarray:
    """Return the synthetic feature rows that the lineage of ``result`` describes."""
    a = features[result.synthetic_parents[:, 0]]
    b = features[result.synthetic_parents[:, 1]]
    return a + result.synthetic_coefficients[:, None] * (b - a)


def read_table(path: Path) -> tuple[np.ndarray, np.ndarray]:
    table = pd.read_csv(path)
    labels = table["label"].astype(str).to_numpy()
    features = table.drop(columns=["label"]).to_numpy(dtype=np.float64)
    return labels, features


def assert_counts_consistent(labels: np.ndarray, result) -> None:
    for name, count in result.counts_after.items():
        kept = int(result.repeats[labels == name].sum())
        synthetic = int((result.synthetic_labels == name).sum())
        assert count == kept + synthetic, name
        assert result.per_class[name]["n_after"] == count, name
        assert result.per_class[name]["n_synthetic"] == synthetic, name
    assert set(result.counts_before) == set(np.unique(labels))


# --------------------------------------------------------------------------------------
# Every method


@pytest.mark.parametrize("method", ALL_METHODS)
def test_method_result_shapes(method: str) -> None:
    labels, features = make_problem()
    result = resample(labels, features, ResampleSettings(method=method))
    n = len(labels)
    m = len(result.synthetic_labels)
    assert result.method == method
    assert result.repeats.shape == (n,)
    assert result.repeats.dtype == np.int64
    assert (result.repeats >= 0).all()
    assert result.weights.shape == (n,)
    assert result.weights.dtype == np.float64
    assert result.synthetic_parents.shape == (m, 2)
    assert result.synthetic_parents.dtype == np.int64
    assert result.synthetic_coefficients.shape == (m,)
    assert result.synthetic_labels.dtype == labels.dtype
    if m:
        assert result.synthetic_parents.min() >= 0
        assert result.synthetic_parents.max() < n
        assert result.synthetic_coefficients.min() >= 0.0
        assert result.synthetic_coefficients.max() <= 1.0
    assert result.counts_before == {"cat": 210, "dog": 60, "eel": 30}
    assert_counts_consistent(labels, result)
    summary = json.loads(json.dumps(result.to_dict()))
    assert summary["method"] == method
    assert summary["counts_after"] == result.counts_after
    assert summary["n_output"] == sum(result.counts_after.values())


def test_none_changes_nothing() -> None:
    labels, _ = make_problem()
    result = resample(labels, None, ResampleSettings(method="none"))
    assert (result.repeats == 1).all()
    assert (result.weights == 1.0).all()
    assert result.counts_after == result.counts_before
    assert result.class_weights is None


def test_random_over_balances_with_repeats() -> None:
    labels, _ = make_problem()
    result = resample(labels, None, ResampleSettings(method="random_over", seed=3))
    assert result.counts_after == {"cat": 210, "dog": 210, "eel": 210}
    assert (result.repeats[labels == "cat"] == 1).all()
    assert (result.repeats >= 1).all()
    assert len(result.synthetic_labels) == 0
    assert result.per_class["eel"]["n_duplicated"] == 210 - 30
    assert result.per_class["cat"]["method"] == "none"
    assert result.per_class["eel"]["method"] == "random_over"


def test_random_under_removes_rows() -> None:
    labels, _ = make_problem()
    result = resample(labels, None, ResampleSettings(method="random_under", seed=3))
    assert result.counts_after == {"cat": 30, "dog": 30, "eel": 30}
    assert set(np.unique(result.repeats)) <= {0, 1}
    assert result.per_class["cat"]["n_removed"] == 210 - 30
    assert (result.repeats[labels == "eel"] == 1).all()


def test_random_under_dict_strategy() -> None:
    labels, _ = make_problem()
    settings_ = ResampleSettings(
        method="random_under", sampling_strategy={"cat": 100, "dog": 50}
    )
    result = resample(labels, None, settings_)
    assert result.counts_after == {"cat": 100, "dog": 50, "eel": 30}


def test_class_weights_inverse_frequency() -> None:
    labels, _ = make_problem()
    result = resample(
        labels,
        None,
        ResampleSettings(
            method="class_weights", class_weight_scheme="inverse_frequency"
        ),
    )
    n = len(labels)
    expected = {"cat": n / (3 * 210), "dog": n / (3 * 60), "eel": n / (3 * 30)}
    assert result.class_weights == pytest.approx(expected)
    for name, weight in expected.items():
        assert result.weights[labels == name] == pytest.approx(weight)
    assert (result.repeats == 1).all()
    assert result.counts_after == result.counts_before


def test_class_weights_effective_number() -> None:
    labels, _ = make_problem()
    beta = 0.99
    result = resample(
        labels,
        None,
        ResampleSettings(
            method="class_weights", class_weight_scheme="effective_number"
        ),
        beta=beta,
    )
    raw = {name: (1 - beta) / (1 - beta**n) for name, n in result.counts_before.items()}
    total = sum(raw.values())
    expected = {name: 3 * value / total for name, value in raw.items()}
    assert result.class_weights == pytest.approx(expected)
    assert sum(result.class_weights.values()) == pytest.approx(3.0)
    assert result.class_weights["eel"] > result.class_weights["dog"]
    assert result.class_weights["dog"] > result.class_weights["cat"]


def test_smote_needs_features() -> None:
    labels, _ = make_problem()
    with pytest.raises(ResampleError, match="needs features"):
        resample(labels, None, ResampleSettings(method="smote"))


def test_features_with_nan_rejected() -> None:
    labels, features = make_problem()
    features[3, 2] = np.nan
    with pytest.raises(ResampleError, match="1 feature rows contain NaN"):
        resample(labels, features, ResampleSettings(method="smote"))


def test_features_row_count_mismatch() -> None:
    labels, features = make_problem()
    with pytest.raises(ResampleError, match=r"shape \(299, 6\)"):
        resample(labels, features[:-1], ResampleSettings(method="smote"))


# --------------------------------------------------------------------------------------
# Lineage exactness against plain imbalanced-learn


def test_smote_matches_plain_imblearn() -> None:
    labels, features = make_problem()
    result = resample(labels, features, ResampleSettings(method="smote", seed=7))
    for name in ("dog", "eel"):
        entry = result.per_class[name]
        plain = SMOTE(
            sampling_strategy={name: 210},
            random_state=entry["random_state"],
            k_neighbors=entry["k_neighbors"],
        )
        X_plain, y_plain = plain.fit_resample(features, labels)
        generated = X_plain[len(labels) :]
        mine = rebuild(features, result)[result.synthetic_labels == name]
        assert entry["random_state"] == class_seed(7, name)
        assert len(mine) == len(generated) == 210 - result.counts_before[name]
        np.testing.assert_array_equal(mine, generated)
        assert (y_plain[len(labels) :] == name).all()


def test_borderline_matches_plain_imblearn() -> None:
    labels, features = make_problem()
    result = resample(labels, features, ResampleSettings(method="borderline_smote"))
    for name in ("dog", "eel"):
        entry = result.per_class[name]
        plain = BorderlineSMOTE(
            sampling_strategy={name: 210},
            random_state=entry["random_state"],
            k_neighbors=entry["k_neighbors"],
            m_neighbors=entry["m_neighbors"],
        )
        X_plain, _ = plain.fit_resample(features, labels)
        generated = X_plain[len(labels) :]
        mine = rebuild(features, result)[result.synthetic_labels == name]
        assert len(mine) == len(generated)
        np.testing.assert_array_equal(mine, generated)


def test_adasyn_matches_plain_imblearn() -> None:
    labels, features = make_problem()
    result = resample(labels, features, ResampleSettings(method="adasyn", seed=2))
    for name in ("dog", "eel"):
        entry = result.per_class[name]
        assert entry["method"] == "adasyn"
        plain = ADASYN(
            sampling_strategy={name: 210},
            random_state=entry["random_state"],
            n_neighbors=entry["k_neighbors"],
        )
        X_plain, _ = plain.fit_resample(features, labels)
        generated = X_plain[len(labels) :]
        mine = rebuild(features, result)[result.synthetic_labels == name]
        assert len(mine) == len(generated)
        np.testing.assert_allclose(mine, generated, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    ("method", "cleaner"),
    [
        ("smote_tomek", TomekLinks(sampling_strategy="all")),
        ("smote_enn", EditedNearestNeighbours(sampling_strategy="all", n_neighbors=3)),
    ],
)
def test_cleaning_matches_plain_imblearn(method: str, cleaner) -> None:
    labels, features = make_problem(spread=1.5)
    over = resample(labels, features, ResampleSettings(method="smote", seed=4))
    cleaned = resample(labels, features, ResampleSettings(method=method, seed=4))
    n = len(labels)
    X_all = np.vstack([features, rebuild(features, over)])
    y_all = np.concatenate([labels, over.synthetic_labels])
    cleaner.fit_resample(X_all, y_all)
    kept = np.sort(cleaner.sample_indices_)
    expected_repeats = np.zeros(n, dtype=np.int64)
    expected_repeats[kept[kept < n]] = 1
    kept_synthetic = kept[kept >= n] - n
    assert cleaned.cleaning is not None
    np.testing.assert_array_equal(cleaned.repeats, expected_repeats)
    np.testing.assert_array_equal(
        cleaned.synthetic_parents, over.synthetic_parents[kept_synthetic]
    )
    np.testing.assert_array_equal(
        cleaned.synthetic_coefficients, over.synthetic_coefficients[kept_synthetic]
    )
    assert (cleaned.repeats == 0).any()
    removed = sum(e["n_synthetic_removed"] for e in cleaned.per_class.values())
    assert removed == len(over.synthetic_labels) - len(cleaned.synthetic_labels)
    assert_counts_consistent(labels, cleaned)


@pytest.mark.parametrize("method", ["smote", "borderline_smote", "adasyn"])
def test_parents_share_class(method: str) -> None:
    labels, features = make_problem()
    result = resample(labels, features, ResampleSettings(method=method))
    parent_labels = labels[result.synthetic_parents]
    assert (parent_labels[:, 0] == result.synthetic_labels).all()
    assert (parent_labels[:, 1] == result.synthetic_labels).all()


def test_borderline2_parent_other_class() -> None:
    # BorderlineSMOTE-2 interpolates towards neighbours of any class, and for a
    # neighbour of another class only up to half way (coefficient at most 0.5).
    labels, features = make_problem(spread=1.5)
    n = len(labels)
    traced = np.column_stack([features, np.arange(n, dtype=np.float64)])
    sampler = LineageBorderlineSMOTE(
        sampling_strategy={"eel": 210},
        random_state=11,
        k_neighbors=TracerNeighbors(n_neighbors=6),
        m_neighbors=TracerNeighbors(n_neighbors=11),
        kind="borderline-2",
    )
    X_res, _ = sampler.fit_resample(traced, labels)
    parents = sampler.lineage_parents_
    coefficients = sampler.lineage_coefficients_

    plain = BorderlineSMOTE(
        sampling_strategy={"eel": 210},
        random_state=11,
        k_neighbors=5,
        m_neighbors=10,
        kind="borderline-2",
    )
    X_plain, _ = plain.fit_resample(features, labels)

    a = features[parents[:, 0]]
    b = features[parents[:, 1]]
    rebuilt = a + coefficients[:, None] * (b - a)
    np.testing.assert_allclose(rebuilt, X_plain[n:], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(X_res[n:, :-1], X_plain[n:], rtol=0, atol=0)

    assert (labels[parents[:, 0]] == "eel").all()
    other = labels[parents[:, 1]] != "eel"
    assert other.any()
    assert (coefficients[other] <= 0.5).all()
    assert (coefficients >= 0).all()


# --------------------------------------------------------------------------------------
# imbalanced-learn internals the lineage relies on


def test_generate_samples_hook_signature() -> None:
    parameters = list(inspect.signature(BaseSMOTE._generate_samples).parameters)
    assert parameters == [
        "self",
        "X",
        "nn_data",
        "nn_num",
        "rows",
        "cols",
        "steps",
        "y_type",
        "y",
    ]


def test_tracer_neighbors_survive_clone() -> None:
    neighbors = TracerNeighbors(n_neighbors=4)
    copy = clone(neighbors)
    assert type(copy) is TracerNeighbors
    assert copy.get_params()["n_neighbors"] == 4


def test_tracer_neighbors_ignore_tracer() -> None:
    _, features = make_problem()
    traced = np.column_stack([features, 1e6 * np.arange(len(features))])
    ours = TracerNeighbors(n_neighbors=4).fit(traced)
    plain = NearestNeighbors(n_neighbors=4).fit(features)
    ours_indices = ours.kneighbors(traced, return_distance=False)
    plain_indices = plain.kneighbors(features, return_distance=False)
    np.testing.assert_array_equal(ours_indices, plain_indices)
    np.testing.assert_array_equal(ours.neighbor_tracer_, 1e6 * plain_indices)


def test_adasyn_generation_pinned() -> None:
    # The ADASYN lineage relies on imbalanced-learn 0.14 generating, per class,
    # X_class[rows] + steps * (X_class[nns[rows, cols]] - X_class[rows]) with
    # rows = np.repeat(arange, n_samples_generate), which is non-decreasing, and on
    # the last fit and neighbour search of nn_ being on the class rows. This test
    # rebuilds ADASYN's output from those steps.
    labels, features = make_problem(sizes=(120, 40, 20))
    n = len(labels)
    name, target, k, seed = "eel", 100, 5, 5
    plain = ADASYN(sampling_strategy={name: target}, random_state=seed, n_neighbors=k)
    X_plain, _ = plain.fit_resample(features, labels)

    class_rows = np.flatnonzero(labels == name)
    X_class = features[class_rows]
    everywhere = NearestNeighbors(n_neighbors=k + 1).fit(features)
    nns = everywhere.kneighbors(X_class, return_distance=False)[:, 1:]
    ratio = (labels[nns] != name).sum(axis=1) / k
    ratio /= ratio.sum()
    n_generate = np.rint(ratio * (target - len(class_rows))).astype(int)
    within = NearestNeighbors(n_neighbors=k + 1).fit(X_class)
    nns_class = within.kneighbors(X_class, return_distance=False)[:, 1:]
    random_state = np.random.RandomState(seed)
    rows = np.repeat(np.arange(len(class_rows)), n_generate)
    cols = random_state.choice(k, size=n_generate.sum())
    steps = random_state.uniform(size=(n_generate.sum(), 1))
    diffs = X_class[nns_class[rows, cols]] - X_class[rows]
    np.testing.assert_array_equal(X_plain[n:], X_class[rows] + steps * diffs)

    traced = np.column_stack([features, np.arange(n, dtype=np.float64)])
    sampler = ADASYN(
        sampling_strategy={name: target},
        random_state=seed,
        n_neighbors=TracerNeighbors(n_neighbors=k + 1),
    )
    X_traced, _ = sampler.fit_resample(traced, labels)
    np.testing.assert_array_equal(sampler.nn_.fit_tracer_, class_rows)
    np.testing.assert_array_equal(sampler.nn_.query_tracer_, class_rows)
    np.testing.assert_array_equal(X_traced[n:, :-1], X_plain[n:])


def test_adasyn_error_text_pinned() -> None:
    # resample falls back to SMOTE when ADASYN raises with this text.
    labels = np.array(["far"] * 6 + ["near"] * 30)
    rng = np.random.default_rng(0)
    features = np.vstack([rng.normal(100, 1, (6, 3)), rng.normal(0, 1, (30, 3))])
    with pytest.raises(RuntimeError, match="Not any neigbours belong to the majority"):
        ADASYN(n_neighbors=3, random_state=0).fit_resample(features, labels)
    result = resample(
        labels, features, ResampleSettings(method="adasyn", k_neighbors=3)
    )
    entry = result.per_class["far"]
    assert entry["method"] == "smote"
    assert "ADASYN failed" in entry["note"]
    assert result.counts_after["far"] == 30


# --------------------------------------------------------------------------------------
# Determinism


@pytest.mark.parametrize("method", SMOTE_METHODS + ["random_over", "random_under"])
def test_same_seed_same_result(method: str) -> None:
    labels, features = make_problem()
    first = resample(labels, features, ResampleSettings(method=method, seed=9))
    second = resample(labels, features, ResampleSettings(method=method, seed=9))
    np.testing.assert_array_equal(first.repeats, second.repeats)
    np.testing.assert_array_equal(first.synthetic_parents, second.synthetic_parents)
    np.testing.assert_array_equal(
        first.synthetic_coefficients, second.synthetic_coefficients
    )
    np.testing.assert_array_equal(first.synthetic_labels, second.synthetic_labels)
    assert first.to_dict() == second.to_dict()


def test_other_seed_other_result() -> None:
    labels, features = make_problem()
    first = resample(labels, features, ResampleSettings(method="smote", seed=1))
    second = resample(labels, features, ResampleSettings(method="smote", seed=2))
    assert not np.array_equal(
        first.synthetic_coefficients, second.synthetic_coefficients
    )


def test_class_seed_stable() -> None:
    assert class_seed(0, "eel") == class_seed(0, "eel")
    assert class_seed(0, "eel") != class_seed(0, "dog")
    assert class_seed(0, "eel") != class_seed(1, "eel")
    assert 0 <= class_seed(123, "x") < 2**32


@settings(max_examples=20, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=1, max_value=25), min_size=2, max_size=4),
    seed=st.integers(min_value=0, max_value=1000),
    method=st.sampled_from(["smote", "adasyn", "smote_tomek"]),
)
def test_lineage_rebuilds_any_problem(sizes: list[int], seed: int, method: str) -> None:
    rng = np.random.default_rng(seed)
    labels = np.repeat([f"c{i}" for i in range(len(sizes))], sizes)
    features = (
        rng.normal(size=(len(labels), 3))
        + np.repeat(np.arange(len(sizes)), sizes)[:, None]
    )
    result = resample(
        labels, features, ResampleSettings(method=method, seed=seed, k_neighbors=3)
    )
    assert_counts_consistent(labels, result)
    if len(result.synthetic_labels):
        parent_labels = labels[result.synthetic_parents]
        assert (parent_labels[:, 0] == result.synthetic_labels).all()
        assert (parent_labels[:, 1] == result.synthetic_labels).all()


# --------------------------------------------------------------------------------------
# check_sampling_strategy


COUNTS = {"benign": 357, "malignant": 212}
THREE = {"cat": 210, "dog": 60, "eel": 30}


def test_strategy_unknown_class() -> None:
    with pytest.raises(ConfigError) as info:
        check_sampling_strategy("smote", {"benign": 400, "cyst": 10}, COUNTS)
    message = str(info.value)
    assert "'cyst'" in message
    assert "does not exist" in message
    assert "'benign', 'malignant'" in message


def test_strategy_over_sampler_fewer() -> None:
    with pytest.raises(ConfigError) as info:
        check_sampling_strategy("random_over", {"benign": 300}, COUNTS)
    message = str(info.value)
    assert "class 'benign' has 357 training samples" in message
    assert "asks for 300" in message
    assert "an over-sampler cannot remove samples" in message
    assert "ask for at least 357, or use random_under" in message


def test_strategy_under_sampler_more() -> None:
    with pytest.raises(ConfigError) as info:
        check_sampling_strategy("random_under", {"malignant": 250}, COUNTS)
    message = str(info.value)
    assert "class 'malignant' has 212 training samples" in message
    assert "asks for 250" in message
    assert "an under-sampler cannot add samples" in message
    assert "at most 212" in message


def test_strategy_float_multiclass() -> None:
    with pytest.raises(ConfigError) as info:
        check_sampling_strategy("smote", 0.5, THREE)
    message = str(info.value)
    assert "only for two classes" in message
    assert "3 classes" in message
    assert "dict" in message


def test_strategy_float_binary_ok() -> None:
    check_sampling_strategy("smote", 0.9, COUNTS)
    check_sampling_strategy("random_under", 0.9, COUNTS)


def test_strategy_float_too_low_over() -> None:
    with pytest.raises(ConfigError) as info:
        check_sampling_strategy("smote", 0.5, COUNTS)
    message = str(info.value)
    assert "'malignant'" in message
    assert "178 samples" in message
    assert "has 212" in message
    assert "above 0.5938" in message


def test_strategy_float_too_low_under() -> None:
    with pytest.raises(ConfigError, match="cannot add samples"):
        check_sampling_strategy("random_under", 0.5, COUNTS)


@pytest.mark.parametrize("method", ["none", "class_weights"])
def test_strategy_dict_without_sampler(method: str) -> None:
    with pytest.raises(ConfigError, match=f"method is '{method}'"):
        check_sampling_strategy(method, {"benign": 357}, COUNTS)


def test_strategy_majority_over_sampler() -> None:
    with pytest.raises(ConfigError, match="'majority' selects only the majority"):
        check_sampling_strategy("adasyn", "majority", COUNTS)


def test_strategy_minority_under_sampler() -> None:
    with pytest.raises(ConfigError, match="'minority' selects only the minority"):
        check_sampling_strategy("random_under", "minority", COUNTS)


def test_strategy_single_class() -> None:
    with pytest.raises(ConfigError, match="at least 2 classes"):
        check_sampling_strategy("smote", "auto", {"benign": 10})


def test_strategy_unknown_method() -> None:
    with pytest.raises(ConfigError, match="'smoteish' is unknown"):
        check_sampling_strategy("smoteish", "auto", COUNTS)


def test_strategy_valid_requests_pass() -> None:
    check_sampling_strategy("smote", "auto", THREE)
    check_sampling_strategy("smote", {"dog": 210, "eel": 100}, THREE)
    check_sampling_strategy("random_under", {"cat": 30}, THREE)
    check_sampling_strategy("none", "auto", THREE)


# --------------------------------------------------------------------------------------
# Memory limit


def test_memory_limit_error_text() -> None:
    labels, features = make_problem()
    with pytest.raises(ResampleError) as info:
        resample(
            labels, features, ResampleSettings(method="smote"), max_memory_bytes=1024
        )
    message = str(info.value)
    assert "estimated" in message
    assert "MiB" in message
    assert "limit of 0.0 MiB" in message
    assert "resample.features.thumbnail_size" in message
    assert "resample.features.pca_components" in message
    assert "random_over" in message
    assert "resample.max_memory_mb" in message


def test_memory_limit_from_settings() -> None:
    labels = np.array(["a"] * 900 + ["b"] * 100)
    features = np.random.default_rng(0).normal(size=(1000, 200))
    assert estimate_memory_bytes("smote", 1000, 200, 800) > 2**20
    small = ResampleSettings(method="smote", max_memory_mb=1)
    with pytest.raises(ResampleError, match="above the limit of 1.0 MiB"):
        resample(labels, features, small)


def test_memory_estimate_grows() -> None:
    base = estimate_memory_bytes("smote", 1000, 32, 500)
    assert estimate_memory_bytes("smote", 2000, 32, 500) > base
    assert estimate_memory_bytes("smote", 1000, 64, 500) > base
    assert estimate_memory_bytes("smote", 1000, 32, 1000) > base
    assert estimate_memory_bytes("smote_enn", 1000, 32, 500) > base
    # Input, its traced copies and the output alone take this many float64 values.
    assert base > 8 * (1000 + 500) * 33
    assert estimate_memory_bytes("random_over", 1000, 32, 500) < base


# --------------------------------------------------------------------------------------
# Small classes


def test_tiny_class_lowers_k() -> None:
    labels = np.array(["big"] * 40 + ["small"] * 3 + ["two"] * 2)
    rng = np.random.default_rng(0)
    features = rng.normal(size=(len(labels), 4))
    result = resample(labels, features, ResampleSettings(method="smote"))
    assert result.per_class["small"]["k_neighbors"] == 2
    assert result.per_class["two"]["k_neighbors"] == 1
    assert "lowered from 5 to 2" in result.per_class["small"]["note"]
    assert result.counts_after == {"big": 40, "small": 40, "two": 40}


@pytest.mark.parametrize("method", SMOTE_METHODS)
def test_singleton_random_over(method: str) -> None:
    labels = np.array(["big"] * 30 + ["one"] + ["few"] * 6)
    rng = np.random.default_rng(1)
    features = rng.normal(size=(len(labels), 3))
    features[labels == "few"] += 0.5
    settings_ = ResampleSettings(method=method, single_sample_class="random_over")
    result = resample(labels, features, settings_)
    entry = result.per_class["one"]
    assert entry["method"] == "random_over"
    assert entry["k_neighbors"] is None
    assert entry["n_duplicated"] == 29
    assert "1 training sample" in entry["note"]
    assert not (result.synthetic_labels == "one").any()
    assert_counts_consistent(labels, result)


def test_singleton_leave() -> None:
    labels = np.array(["big"] * 30 + ["one"] + ["few"] * 6)
    rng = np.random.default_rng(1)
    features = rng.normal(size=(len(labels), 3))
    settings_ = ResampleSettings(method="smote", single_sample_class="leave")
    result = resample(labels, features, settings_)
    entry = result.per_class["one"]
    assert entry["method"] == "none"
    assert result.counts_after["one"] == 1
    assert "left as it is" in entry["note"]
    assert result.counts_after["few"] == 30


# --------------------------------------------------------------------------------------
# Fixture tables of tiny classes and an impossible strategy dict


@pytest.mark.parametrize("table", ["minority_equals_k.csv", "multi_with_singleton.csv"])
@pytest.mark.parametrize("method", SMOTE_METHODS)
def test_tiny_class_tables_never_crash(
    cases_dir: Path, table: str, method: str
) -> None:
    case = cases_dir / "C11-smote-tiny-class"
    assert table in json.loads((case / "expected.json").read_text())
    labels, features = read_table(case / table)
    result = resample(labels, features, ResampleSettings(method=method))
    assert_counts_consistent(labels, result)
    for name, entry in result.per_class.items():
        if entry["k_neighbors"] is not None:
            assert entry["k_neighbors"] <= entry["n_before"] - 1, name


def test_minority_equals_k_table(cases_dir: Path) -> None:
    labels, features = read_table(
        cases_dir / "C11-smote-tiny-class" / "minority_equals_k.csv"
    )
    result = resample(labels, features, ResampleSettings(method="smote", k_neighbors=5))
    entry = result.per_class["crack"]
    assert result.counts_before["crack"] == 5
    assert entry["method"] == "smote"
    assert entry["k_neighbors"] == 4
    assert "lowered from 5 to 4" in entry["note"]
    assert result.counts_after["crack"] == 40
    summary = result.to_dict()
    assert summary["per_class"]["crack"]["k_neighbors"] == 4


@pytest.mark.parametrize("fallback", ["random_over", "leave"])
def test_singleton_table(cases_dir: Path, fallback: str) -> None:
    labels, features = read_table(
        cases_dir / "C11-smote-tiny-class" / "multi_with_singleton.csv"
    )
    settings_ = ResampleSettings(method="smote", single_sample_class=fallback)
    result = resample(labels, features, settings_)
    dent = result.per_class["dent"]
    pit = result.per_class["pit"]
    assert result.counts_before["dent"] == 1
    assert pit["k_neighbors"] <= 2
    assert pit["method"] == "smote"
    assert "1 training sample" in dent["note"]
    if fallback == "random_over":
        assert dent["method"] == "random_over"
        assert result.counts_after["dent"] == 40
        assert dent["n_duplicated"] == 39
    else:
        assert dent["method"] == "none"
        assert result.counts_after["dent"] == 1


def test_strategy_dict_table(cases_dir: Path) -> None:
    case = cases_dir / "C12-sampling-strategy-dict"
    request = json.loads((case / "requested_strategy.json").read_text())
    labels, features = read_table(case / "features.csv")
    names, sizes = np.unique(labels, return_counts=True)
    counts = dict(zip(names.tolist(), sizes.tolist(), strict=True))
    method = request["method"].lower()
    with pytest.raises(ConfigError) as info:
        check_sampling_strategy(method, request["sampling_strategy"], counts)
    message = str(info.value)
    assert "'benign'" in message
    assert "357" in message
    assert "300" in message
    assert "cannot remove samples" in message
    settings_ = ResampleSettings(
        method=method, sampling_strategy=request["sampling_strategy"]
    )
    with pytest.raises(ConfigError, match="class 'benign' has 357"):
        resample(labels, features, settings_)


# --------------------------------------------------------------------------------------
# Feature space and pixels


def test_thumbnail_divisible_block_mean() -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(3, 8, 12, 3), dtype=np.uint8)
    thumbs = thumbnail_features(pixels, 4)
    expected = pixels.reshape(3, 4, 2, 4, 3, 3).astype(np.float64).mean(axis=(2, 4))
    assert thumbs.dtype == np.float32
    assert thumbs.shape == (3, 4 * 4 * 3)
    np.testing.assert_allclose(thumbs, expected.reshape(3, -1), rtol=1e-6)


def test_thumbnail_divisible_matches_pillow_box() -> None:
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 65536, size=(2, 12, 8, 2), dtype=np.uint16)
    thumbs = thumbnail_features(pixels, 4).reshape(2, 4, 4, 2)
    for image in range(2):
        for channel in range(2):
            plane = Image.fromarray(pixels[image, :, :, channel].astype(np.float32))
            box = np.asarray(plane.resize((4, 4), Image.Resampling.BOX))
            np.testing.assert_allclose(thumbs[image, :, :, channel], box, rtol=1e-5)


@pytest.mark.parametrize(
    ("height", "width", "size"), [(7, 5, 3), (10, 9, 4), (3, 3, 5)]
)
def test_thumbnail_area_not_divisible(height: int, width: int, size: int) -> None:
    # Repeating every pixel `size` times along each axis makes the sides multiples of
    # `size` without changing any area, so a plain block mean is the exact area mean.
    rng = np.random.default_rng(2)
    pixels = rng.integers(0, 256, size=(2, height, width, 3), dtype=np.uint8)
    thumbs = thumbnail_features(pixels, size).reshape(2, size, size, 3)
    fine = np.repeat(np.repeat(pixels, size, axis=1), size, axis=2).astype(np.float64)
    blocks = fine.reshape(2, size, height, size, width, 3).mean(axis=(2, 4))
    np.testing.assert_allclose(thumbs, blocks, rtol=1e-6)


def test_thumbnail_constant_image() -> None:
    pixels = np.full((1, 11, 7, 1), 200, dtype=np.uint8)
    np.testing.assert_allclose(thumbnail_features(pixels, 4), 200.0, rtol=1e-6)


def test_thumbnail_rejects_3d() -> None:
    with pytest.raises(ValueError, match=r"pixels\[\.\.\., None\]"):
        thumbnail_features(np.zeros((2, 4, 4), dtype=np.uint8), 2)


def test_reducer_identity() -> None:
    thumbs = np.random.default_rng(0).normal(size=(20, 12)).astype(np.float32)
    for components in (None, 12, 50):
        reducer = FeatureReducer(2, components).fit(thumbs)
        features = reducer.transform(thumbs)
        assert features.dtype == np.float64
        np.testing.assert_array_equal(features, thumbs.astype(np.float64))
        description = reducer.describe()
        assert description["reduction"] == "identity"
        assert description["pca_components"] is None
        assert description["explained_variance_ratio"] is None


def test_reducer_pca() -> None:
    thumbs = np.random.default_rng(0).normal(size=(40, 12)).astype(np.float32)
    reducer = FeatureReducer(2, 5, random_state=3)
    features = reducer.fit_transform(thumbs)
    again = FeatureReducer(2, 5, random_state=3).fit_transform(thumbs)
    assert features.shape == (40, 5)
    assert features.dtype == np.float64
    np.testing.assert_array_equal(features, again)
    description = reducer.describe()
    assert description["kind"] == "thumbnail"
    assert description["reduction"] == "pca"
    assert description["thumbnail_size"] == 2
    assert description["pca_components"] == 5
    assert 0.0 < description["explained_variance_ratio"] <= 1.0
    json.dumps(description)


def test_reducer_from_settings_pixels() -> None:
    space = FeatureSpace(kind="pixels", pca_components=None)
    reducer = FeatureReducer.from_settings(space, seed=1)
    pixels = np.arange(2 * 3 * 3 * 1, dtype=np.uint8).reshape(2, 3, 3, 1)
    rows = reducer.thumbnails(pixels)
    assert rows.shape == (2, 9)
    assert reducer.describe()["thumbnail_size"] is None


def test_reducer_pca_components_above_samples() -> None:
    thumbs = np.random.default_rng(0).normal(size=(4, 12))
    reducer = FeatureReducer(2, 8).fit(thumbs)
    assert reducer.describe()["pca_components"] == 4
    assert "lowered to 4" in reducer.describe()["note"]


def test_interpolate_endpoints() -> None:
    a = np.zeros((2, 2, 2, 3), dtype=np.uint8)
    b = np.full((2, 2, 2, 3), 255, dtype=np.uint8)
    out = interpolate_pixels(a, b, np.array([0.0, 1.0]), np.uint8)
    assert out.dtype == np.uint8
    assert (out[0] == 0).all()
    assert (out[1] == 255).all()


def test_interpolate_rounds_half_even() -> None:
    a = np.array([10, 11], dtype=np.uint8).reshape(2, 1, 1, 1)
    b = np.array([11, 12], dtype=np.uint8).reshape(2, 1, 1, 1)
    out = interpolate_pixels(a, b, np.array([0.5, 0.5]), np.uint8)
    assert out.ravel().tolist() == [10, 12]


def test_interpolate_uint16_and_errors() -> None:
    a = np.full((1, 1, 1, 1), 65535, dtype=np.uint16)
    b = np.zeros((1, 1, 1, 1), dtype=np.uint16)
    out = interpolate_pixels(a, b, np.array([0.25]), "uint16")
    assert out.dtype == np.uint16
    assert out.item() == round(65535 * 0.75)
    with pytest.raises(ValueError, match="lie in"):
        interpolate_pixels(a, b, np.array([1.5]), np.uint16)
    with pytest.raises(ValueError, match="unsupported"):
        interpolate_pixels(a, b, np.array([0.5]), np.float32)
    with pytest.raises(ValueError, match="one coefficient per pair"):
        interpolate_pixels(a, b, np.array([0.5, 0.5]), np.uint16)


@settings(max_examples=50, deadline=None)
@given(
    start=st.integers(0, 255),
    end=st.integers(0, 255),
    coefficient=st.floats(0.0, 1.0),
)
def test_interpolate_stays_between(start: int, end: int, coefficient: float) -> None:
    a = np.full((1, 1, 1, 1), start, dtype=np.uint8)
    b = np.full((1, 1, 1, 1), end, dtype=np.uint8)
    value = int(interpolate_pixels(a, b, np.array([coefficient]), np.uint8).item())
    assert min(start, end) <= value <= max(start, end)
    assert abs(value - (start + coefficient * (end - start))) <= 0.5


def test_lineage_to_pixels() -> None:
    labels, features = make_problem(sizes=(60, 30, 20))
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(len(labels), 4, 4, 3), dtype=np.uint8)
    result = resample(labels, features, ResampleSettings(method="smote"))
    a, b = result.synthetic_parents.T
    images = interpolate_pixels(
        pixels[a], pixels[b], result.synthetic_coefficients, np.uint8
    )
    assert images.shape == (len(result.synthetic_labels), 4, 4, 3)
    assert images.dtype == np.uint8
