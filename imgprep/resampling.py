"""Resampling of the training split with index-based lineage.

The resample step works on small arrays only: the training labels (class names as
str) and, for the SMOTE family, a reduced feature space (float64, shape (n, d)) such as
PCA-reduced thumbnails from :class:`FeatureReducer`. :func:`resample` returns a
:class:`ResampleResult`. It records per input row how many times the row appears in
the output (``repeats``), and per synthetic row which two input rows it interpolates
and with which coefficient. The caller maps these indices to sample ids and builds the
synthetic images with :func:`interpolate_pixels`, so full-resolution pixels of the
whole split are never held here.

imbalanced-learn's SMOTE-family samplers do not report the parents of a synthetic row.
The lineage is recovered exactly with a tracer column, which contains each row's input
index and is appended to the features. :class:`TracerNeighbors` hides that column from
every neighbour search, so the tracer of a generated row is ``a + c * (b - a)`` for
parents ``a`` and ``b``. SMOTE and BorderlineSMOTE report each
generated row through the ``_generate_samples`` hook of :class:`LineageSMOTE` and
:class:`LineageBorderlineSMOTE`. ADASYN has no such hook, so
:func:`_recover_adasyn_lineage` solves for the parents after the fit and confirms them
against the generated features.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass
from typing import Any

import imblearn
import numpy as np
from imblearn.over_sampling import ADASYN, SMOTE, BorderlineSMOTE, RandomOverSampler
from imblearn.under_sampling import (
    EditedNearestNeighbours,
    RandomUnderSampler,
    TomekLinks,
)
from sklearn.decomposition import PCA
from sklearn.neighbors import NearestNeighbors

from imgprep.config import SMOTE_FAMILY, FeatureSpace, ResampleSettings
from imgprep.errors import ConfigError, ResampleError
from imgprep.sampling_strategy import (
    _resolve_sampling_strategy,
    check_sampling_strategy,
)

__all__ = [
    "FeatureReducer",
    "LineageBorderlineSMOTE",
    "LineageSMOTE",
    "ResampleResult",
    "TracerNeighbors",
    "check_sampling_strategy",
    "class_seed",
    "estimate_memory_bytes",
    "interpolate_pixels",
    "resample",
    "thumbnail_features",
]

logger = logging.getLogger(__name__)

# BorderlineSMOTE's default m_neighbors in imbalanced-learn 0.14.
BORDERLINE_M_NEIGHBORS = 10
# Cleaning samplers as SMOTETomek and SMOTEENN create them by default in
# imbalanced-learn 0.14: TomekLinks(sampling_strategy="all") and
# EditedNearestNeighbours(sampling_strategy="all") with n_neighbors=3.
CLEANING = {"smote_tomek": "tomek_links", "smote_enn": "edited_nearest_neighbours"}
ENN_NEIGHBORS = 3
# Relative tolerance when a recovered (a, b, c) is confirmed against the generated
# features. The coefficient solved from the tracer carries a relative error of about
# 2.2e-16 * n / |b - a|, far below this for any realistic n.
_LINEAGE_RTOL = 1e-8
_PIXEL_DTYPES = {"uint8": np.uint8, "uint16": np.uint16}


# --------------------------------------------------------------------------------------
# Memory estimate


def estimate_memory_bytes(
    method: str, n_samples: int, n_features: int, n_new: int, *, k_neighbors: int = 5
) -> int:
    """Estimate the peak memory of a resample fit in the reduced feature space.

    The result is an estimate, not a measurement. It counts the float64 and int64
    arrays that this module, imbalanced-learn 0.14 and scikit-learn allocate for a
    SMOTE-family fit. These are the input with its tracer column and the sampler's
    copies, the NearestNeighbors fit data and tree, and the kneighbors output. Then
    come the generated rows with their temporaries, the stacked output and, for
    smote_tomek and smote_enn, the cleaning fit. Python object overhead and
    scikit-learn's chunked distance buffers (``pairwise_dist_chunk_size`` rows at a
    time) are not counted. For the other methods only the index arrays are counted.

    Parameters
    ----------
    method : str
        Resample method.
    n_samples : int
        Training rows.
    n_features : int
        Columns of the reduced feature space.
    n_new : int
        Rows to generate in total.
    k_neighbors : int, default=5
        Neighbours of the SMOTE family.

    Returns
    -------
    int
        Estimated bytes.
    """
    n = int(n_samples)
    d = int(n_features)
    new = int(n_new)
    if method not in SMOTE_FAMILY:
        # labels as codes, repeats, weights, sample_indices_ and the index feature
        return 8 * (4 * n + 2 * new)
    traced = d + 1
    total = n + new
    items = (
        3 * n * traced  # traced input, the sampler's copy of it, the class rows
        + 2 * n * d  # NearestNeighbors fit data and its tree's copy
        + 2 * n * (k_neighbors + 1)  # kneighbors distances and indices
        + 4 * new  # random sample indices, rows, cols and steps
        + 4 * new * traced  # differences, scaled differences, new rows, dtype copy
        + total * traced  # input and new rows stacked
        + new * d  # synthetic rows kept across classes
    )
    if method in CLEANING:
        cleaning_neighbors = ENN_NEIGHBORS + 1 if method == "smote_enn" else 2
        items += 3 * total * d + 2 * total * cleaning_neighbors
    return 8 * items


# --------------------------------------------------------------------------------------
# Result


@dataclass(eq=False)
class ResampleResult:
    """Index-based outcome of resampling one training split.

    ``repeats``, ``weights`` and ``synthetic_parents`` index the input rows in the
    order of the ``labels`` given to :func:`resample`. Row ``j`` of the synthetic
    arrays is ``x[a] + c * (x[b] - x[a])`` for ``(a, b) = synthetic_parents[j]`` and
    ``c = synthetic_coefficients[j]``, in the feature space and, through
    :func:`interpolate_pixels`, in pixels.
    """

    method: str
    repeats: np.ndarray
    weights: np.ndarray
    synthetic_parents: np.ndarray
    synthetic_coefficients: np.ndarray
    synthetic_labels: np.ndarray
    counts_before: dict[str, int]
    counts_after: dict[str, int]
    per_class: dict[str, dict]
    class_weights: dict[str, float] | None
    cleaning: str | None = None

    @property
    def n_input(self) -> int:
        return int(self.repeats.shape[0])

    @property
    def n_output(self) -> int:
        return int(self.repeats.sum()) + int(self.synthetic_labels.shape[0])

    def to_dict(self) -> dict:
        """Return a JSON-ready summary without the per-row arrays."""
        weights = None
        if self.class_weights is not None:
            weights = {name: float(w) for name, w in self.class_weights.items()}
        return {
            "method": self.method,
            "cleaning": self.cleaning,
            "n_input": self.n_input,
            "n_output": self.n_output,
            "n_synthetic": int(self.synthetic_labels.shape[0]),
            "n_duplicated": int(np.maximum(self.repeats - 1, 0).sum()),
            "n_removed": int((self.repeats == 0).sum()),
            "counts_before": {k: int(v) for k, v in self.counts_before.items()},
            "counts_after": {k: int(v) for k, v in self.counts_after.items()},
            "per_class": {k: dict(v) for k, v in self.per_class.items()},
            "class_weights": weights,
        }


def _class_entry(n_before: int) -> dict[str, Any]:
    return {
        "method": "none",
        "k_neighbors": None,
        "m_neighbors": None,
        "random_state": None,
        "n_before": n_before,
        "n_after": n_before,
        "n_synthetic": 0,
        "n_synthetic_removed": 0,
        "n_duplicated": 0,
        "n_removed": 0,
        "note": None,
    }


def _finish_result(
    method: str,
    labels: np.ndarray,
    repeats: np.ndarray,
    weights: np.ndarray,
    parents: np.ndarray,
    coefficients: np.ndarray,
    synthetic_labels: np.ndarray,
    per_class: dict[str, dict],
    class_weights: dict[str, float] | None = None,
    cleaning: str | None = None,
) -> ResampleResult:
    names, counts = np.unique(labels, return_counts=True)
    counts_before = {
        str(name): int(count) for name, count in zip(names, counts, strict=True)
    }
    counts_after: dict[str, int] = {}
    for name in counts_before:
        in_class = labels == name
        kept = repeats[in_class]
        n_synthetic = int((synthetic_labels == name).sum())
        entry = per_class[name]
        entry["n_synthetic"] = n_synthetic
        entry["n_duplicated"] = int(np.maximum(kept - 1, 0).sum())
        entry["n_removed"] = int((kept == 0).sum())
        entry["n_after"] = int(kept.sum()) + n_synthetic
        counts_after[name] = entry["n_after"]
    return ResampleResult(
        method=method,
        repeats=repeats.astype(np.int64),
        weights=weights.astype(np.float64),
        synthetic_parents=parents.astype(np.int64).reshape(-1, 2),
        synthetic_coefficients=coefficients.astype(np.float64),
        synthetic_labels=synthetic_labels,
        counts_before=counts_before,
        counts_after=counts_after,
        per_class=per_class,
        class_weights=class_weights,
        cleaning=cleaning,
    )


# --------------------------------------------------------------------------------------
# Lineage-tracking samplers


class TracerNeighbors(NearestNeighbors):
    """NearestNeighbors that ignores the last column (the tracer) of every X.

    ``fit`` and ``kneighbors`` drop the last column before searching, so neighbours are
    found in the feature columns only. The estimator keeps sklearn's constructor
    parameters, so ``sklearn.base.clone`` returns another TracerNeighbors.

    Attributes
    ----------
    fit_tracer_ : ndarray of shape (n_fit,)
        Tracer of the rows of the last ``fit``.
    query_tracer_ : ndarray of shape (n_query,)
        Tracer of the rows of the last ``kneighbors`` query.
    neighbor_tracer_ : ndarray of shape (n_query, n_neighbors)
        Tracer of the neighbours that the last ``kneighbors`` call returned.
    """

    def fit(self, X: np.ndarray, y: Any = None) -> TracerNeighbors:
        X = np.asarray(X)
        self.fit_tracer_ = X[:, -1].copy()
        return super().fit(X[:, :-1], y)

    def kneighbors(
        self,
        X: np.ndarray | None = None,
        n_neighbors: int | None = None,
        return_distance: bool = True,
    ) -> Any:
        if X is None:
            query_tracer = self.fit_tracer_
        else:
            X = np.asarray(X)
            query_tracer = X[:, -1].copy()
            X = X[:, :-1]
        result = super().kneighbors(X, n_neighbors, return_distance)
        indices = result[1] if return_distance else result
        self.query_tracer_ = query_tracer
        self.neighbor_tracer_ = self.fit_tracer_[indices]
        return result


def _confirm_lineage(
    start: np.ndarray, end: np.ndarray, coefficients: np.ndarray, generated: np.ndarray
) -> np.ndarray:
    """Return a mask of generated rows that ``start + c * (end - start)`` reproduces."""
    rebuilt = start + coefficients[:, None] * (end - start)
    scale = (np.abs(start) + np.abs(end)).max(axis=1, initial=0.0)
    error = np.abs(rebuilt - generated).max(axis=1, initial=0.0)
    return error <= _LINEAGE_RTOL * scale + 1e-300


class _LineageHookMixin:
    """Record (a, b, c) of each row that imbalanced-learn's ``_generate_samples`` makes.

    In imbalanced-learn 0.14, BaseSMOTE._make_samples draws the base rows, neighbours
    and steps and passes them to ``_generate_samples``, so this override receives each
    generated row with its parents. After the fit,
    ``lineage_parents_`` (m, 2) and ``lineage_coefficients_`` (m,) hold the lineage of
    the m generated rows in output order, and the tracer of generated row j is
    ``-(j + 1)``.
    """

    def _fit_resample(self, X: np.ndarray, y: np.ndarray) -> Any:
        self._lineage_parts: list[tuple[np.ndarray, np.ndarray]] = []
        X_resampled, y_resampled = super()._fit_resample(X, y)
        parts = self._lineage_parts
        self.lineage_parents_ = np.concatenate(
            [part[0] for part in parts] or [np.empty((0, 2), dtype=np.int64)]
        )
        self.lineage_coefficients_ = np.concatenate(
            [part[1] for part in parts] or [np.empty(0, dtype=np.float64)]
        )
        del self._lineage_parts
        return X_resampled, y_resampled

    def _generate_samples(
        self,
        X: np.ndarray,
        nn_data: np.ndarray,
        nn_num: np.ndarray,
        rows: np.ndarray,
        cols: np.ndarray,
        steps: np.ndarray,
        y_type: Any = None,
        y: np.ndarray | None = None,
    ) -> np.ndarray:
        X_new = super()._generate_samples(
            X, nn_data, nn_num, rows, cols, steps, y_type, y
        )

        neighbor_rows = nn_num[rows, cols]
        start = X[rows, -1]
        end = nn_data[neighbor_rows, -1]
        if (start < 0).any() or (end < 0).any():
            raise ResampleError(
                "a SMOTE parent row carries a negative tracer, so it is a generated "
                "row; lineage needs samplers fitted on input rows only"
            )
        coefficients = np.asarray(steps, dtype=np.float64).reshape(-1).copy()
        if y is not None:
            # BorderlineSMOTE-2 scales the difference to a neighbour of another
            # class by a second uniform(0, 0.5) draw inside _generate_samples. The
            # effective coefficient is solved from the tracer of the generated row.
            # The division is safe because b belongs to another class, so b != a.
            scaled = y[neighbor_rows] != y_type
            coefficients[scaled] = (X_new[scaled, -1] - start[scaled]) / (
                end[scaled] - start[scaled]
            )

        parents = np.column_stack([start, end]).astype(np.int64)
        confirmed = _confirm_lineage(
            X[rows, :-1], nn_data[neighbor_rows, :-1], coefficients, X_new[:, :-1]
        )
        if not confirmed.all():
            raise ResampleError(
                f"lineage of {int((~confirmed).sum())} of {len(confirmed)} generated "
                f"rows does not reproduce the row that imbalanced-learn "
                f"{imblearn.__version__} generated; its _generate_samples no longer "
                "computes X[rows] + steps * (nn_data[nn_num[rows, cols]] - X[rows])"
            )

        first_id = sum(len(part[1]) for part in self._lineage_parts)
        self._lineage_parts.append((parents, np.clip(coefficients, 0.0, 1.0)))
        X_new[:, -1] = -(first_id + np.arange(X_new.shape[0]) + 1)
        return X_new


class LineageSMOTE(_LineageHookMixin, SMOTE):
    """imbalanced-learn SMOTE that records the parents of every generated row.

    Fit it on features with a tracer column (the input row index) as the last column
    and pass :class:`TracerNeighbors` as ``k_neighbors``.
    """


class LineageBorderlineSMOTE(_LineageHookMixin, BorderlineSMOTE):
    """imbalanced-learn BorderlineSMOTE that records the parents of every generated row.

    With ``kind="borderline-2"`` the second parent may belong to another class, and
    the coefficient is then at most 0.5.
    """


def _recover_adasyn_lineage(
    neighbors: TracerNeighbors, traced: np.ndarray, generated: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Recover (a, b, c) of rows that ADASYN generated for one class.

    ADASYN's ``_fit_resample`` in imbalanced-learn 0.14 interpolates inline, so no hook
    receives the chosen neighbours. It relies on three facts of that version, which the
    tests pin: the last ``fit`` and ``kneighbors`` of ``nn_`` are on the class rows,
    generated row j is ``X_class[rows[j]] + steps[j] * (X_class[nns[rows[j], cols[j]]] -
    X_class[rows[j]])``, and ``rows = np.repeat(arange, n_samples_generate)`` is
    non-decreasing. For each generated row, the earliest base row at or after the
    previous one is taken whose neighbour b gives a coefficient
    ``c = (t - a) / (b - a)`` in [0, 1] that reproduces the generated features.

    NOTE: a row between mutual neighbours a and b also matches (b, a, 1 - c), which is
    the same point in features and pixels, and with duplicate feature rows several
    pairs can match. In both cases the earliest base row and its first matching
    neighbour are recorded, which need not be the pair ADASYN drew.
    """
    base = neighbors.query_tracer_.astype(np.int64)
    candidates = neighbors.neighbor_tracer_[:, 1:].astype(np.int64)
    if not np.array_equal(neighbors.fit_tracer_.astype(np.int64), base):
        raise ResampleError(
            f"ADASYN in imbalanced-learn {imblearn.__version__} did not end with a "
            "neighbour search on the class rows, so its lineage cannot be recovered; "
            "use method smote or borderline_smote"
        )
    features = traced[:, :-1]
    tracer = generated[:, -1]
    generated_features = generated[:, :-1]
    m = generated.shape[0]
    parents = np.empty((m, 2), dtype=np.int64)
    coefficients = np.empty(m, dtype=np.float64)
    position = 0
    row = 0
    block = 1
    while row < m:
        if position >= len(base):
            raise ResampleError(
                f"ADASYN row {row} of {m} matches no base row in order; imbalanced-"
                f"learn {imblearn.__version__} may no longer generate rows grouped by "
                "base row. Use method smote or borderline_smote"
            )
        start = int(base[position])
        ends = candidates[position]
        stop = min(m, row + block)
        match, coefficient, end = _match_block(
            features, start, ends, tracer[row:stop], generated_features[row:stop]
        )
        n_matched = len(match) if match.all() else int(np.argmin(match))
        parents[row : row + n_matched, 0] = start
        parents[row : row + n_matched, 1] = end[:n_matched]
        coefficients[row : row + n_matched] = coefficient[:n_matched]
        row += n_matched
        if n_matched == len(match):
            # The whole block came from this base row, so more rows may follow.
            block = min(block * 2, 256)
        else:
            position += 1
            block = 1
    return parents, np.clip(coefficients, 0.0, 1.0)


def _match_block(
    features: np.ndarray,
    start: int,
    ends: np.ndarray,
    tracer: np.ndarray,
    generated: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Test generated rows against base row ``start`` and its neighbours ``ends``.

    Returns per generated row whether some neighbour matches, and the coefficient and
    neighbour of the first match.
    """
    span = (ends - start).astype(np.float64)
    same = span == 0
    coefficient = (tracer[:, None] - start) / np.where(same, 1.0, span)[None, :]
    # A neighbour equal to the base row (possible with duplicate rows) yields a copy of
    # the base row for any coefficient, so 0 is recorded.
    coefficient = np.where(same[None, :], 0.0, coefficient)
    in_range = (coefficient >= -_LINEAGE_RTOL) & (coefficient <= 1 + _LINEAGE_RTOL)
    in_range &= ~same[None, :] | (tracer[:, None] == start)
    x_start = features[start]
    x_end = features[ends]
    rebuilt = x_start + coefficient[:, :, None] * (x_end - x_start)[None, :, :]
    scale = (np.abs(x_start) + np.abs(x_end)).max(axis=1, initial=0.0)
    error = np.abs(rebuilt - generated[:, None, :]).max(axis=2, initial=0.0)
    ok = in_range & (error <= _LINEAGE_RTOL * scale[None, :] + 1e-300)
    first = np.argmax(ok, axis=1)
    picked = np.arange(len(tracer))
    return ok.any(axis=1), coefficient[picked, first], ends[first]


# --------------------------------------------------------------------------------------
# Per-class SMOTE-family runs


def class_seed(seed: int, label: str) -> int:
    """Derive the random_state of one class from ``seed`` and the class name.

    The class name enters through its CRC-32, so the value is the same in every
    process and Python version.
    """
    sequence = np.random.SeedSequence([int(seed), zlib.crc32(str(label).encode())])
    return int(sequence.generate_state(1, dtype=np.uint32)[0])


@dataclass(eq=False)
class _ClassRun:
    method: str
    parents: np.ndarray
    coefficients: np.ndarray
    features: np.ndarray
    n_duplicated: int = 0
    k_neighbors: int | None = None
    m_neighbors: int | None = None
    random_state: int | None = None
    note: str | None = None


def _empty_run(method: str, n_features: int, note: str | None = None) -> _ClassRun:
    return _ClassRun(
        method=method,
        parents=np.empty((0, 2), dtype=np.int64),
        coefficients=np.empty(0, dtype=np.float64),
        features=np.empty((0, n_features), dtype=np.float64),
        note=note,
    )


def _fit_with_hook(
    sampler: LineageSMOTE | LineageBorderlineSMOTE,
    traced: np.ndarray,
    labels: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    X_resampled, _ = sampler.fit_resample(traced, labels)
    n = traced.shape[0]
    generated = X_resampled[n:]
    m = generated.shape[0]
    if len(sampler.lineage_coefficients_) != m:
        raise ResampleError(
            f"{type(sampler).__name__} generated {m} rows but its _generate_samples "
            f"hook recorded {len(sampler.lineage_coefficients_)}; imbalanced-learn "
            f"{imblearn.__version__} no longer routes generation through "
            "BaseSMOTE._generate_samples"
        )
    if not np.array_equal(generated[:, -1], -(np.arange(m) + 1.0)):
        raise ResampleError(
            f"{type(sampler).__name__} returned generated rows in another order than "
            "its _generate_samples hook produced them"
        )
    return sampler.lineage_parents_, sampler.lineage_coefficients_, generated[:, :-1]


def _run_smote(
    traced: np.ndarray, labels: np.ndarray, label: str, target: int, k: int, seed: int
) -> _ClassRun:
    sampler = LineageSMOTE(
        sampling_strategy={label: target},
        random_state=seed,
        k_neighbors=TracerNeighbors(n_neighbors=k + 1),
    )
    parents, coefficients, features = _fit_with_hook(sampler, traced, labels)
    return _ClassRun("smote", parents, coefficients, features, k_neighbors=k)


def _run_borderline(
    traced: np.ndarray, labels: np.ndarray, label: str, target: int, k: int, seed: int
) -> _ClassRun:
    m = min(BORDERLINE_M_NEIGHBORS, traced.shape[0] - 1)
    sampler = LineageBorderlineSMOTE(
        sampling_strategy={label: target},
        random_state=seed,
        k_neighbors=TracerNeighbors(n_neighbors=k + 1),
        m_neighbors=TracerNeighbors(n_neighbors=m + 1),
        kind="borderline-1",
    )
    parents, coefficients, features = _fit_with_hook(sampler, traced, labels)
    run = _ClassRun(
        "borderline_smote",
        parents,
        coefficients,
        features,
        k_neighbors=k,
        m_neighbors=m,
    )
    if len(coefficients) == 0:
        run.note = (
            f"no sample of the class is in danger (at least half but not all of "
            f"its {m} nearest neighbours in other classes), so BorderlineSMOTE "
            "generated none"
        )
    return run


def _run_adasyn(
    traced: np.ndarray, labels: np.ndarray, label: str, target: int, k: int, seed: int
) -> _ClassRun:
    sampler = ADASYN(
        sampling_strategy={label: target},
        random_state=seed,
        n_neighbors=TracerNeighbors(n_neighbors=k + 1),
    )
    X_resampled, _ = sampler.fit_resample(traced, labels)
    generated = X_resampled[traced.shape[0] :]
    parents, coefficients = _recover_adasyn_lineage(sampler.nn_, traced, generated)
    return _ClassRun("adasyn", parents, coefficients, generated[:, :-1], k_neighbors=k)


def _is_adasyn_impossible(error: Exception) -> bool:
    # Messages of imbalanced-learn 0.14's ADASYN._fit_resample.
    text = str(error)
    return "Not any neigbours belong to the majority" in text or (
        "No samples will be generated" in text
    )


def _oversample_class(
    method: str,
    traced: np.ndarray,
    labels: np.ndarray,
    label: str,
    n_class: int,
    n_new: int,
    settings: ResampleSettings,
) -> _ClassRun:
    """Over-sample one class with its own k and seed, falling back where needed."""
    n_features = traced.shape[1] - 1
    if n_class == 1:
        reason = (
            "the class has 1 training sample, so it has no neighbour to "
            "interpolate with"
        )
        if settings.single_sample_class == "random_over":
            run = _empty_run("random_over", n_features, f"{reason}; duplicated it")
            run.n_duplicated = n_new
            return run
        return _empty_run("none", n_features, f"{reason}; left as it is")

    k = min(settings.k_neighbors, n_class - 1)
    note = None
    if k < settings.k_neighbors:
        note = (
            f"the class has {n_class} training samples, so k_neighbors was "
            f"lowered from {settings.k_neighbors} to {k}"
        )
    seed = class_seed(settings.seed, label)
    target = n_class + n_new
    if method == "adasyn":
        try:
            run = _run_adasyn(traced, labels, label, target, k, seed)
            if len(run.coefficients) != n_new:
                run.note = _join_notes(
                    note,
                    f"ADASYN rounds the per-row counts and generated "
                    f"{len(run.coefficients)} instead of {n_new}",
                )
            else:
                run.note = note
        except (RuntimeError, ValueError) as error:
            if not _is_adasyn_impossible(error):
                raise
            run = _run_smote(traced, labels, label, target, k, seed)
            run.note = _join_notes(
                note, f"ADASYN failed ({error}), so SMOTE was used for this class"
            )
    elif method == "borderline_smote":
        run = _run_borderline(traced, labels, label, target, k, seed)
        run.note = _join_notes(note, run.note)
    else:
        run = _run_smote(traced, labels, label, target, k, seed)
        run.note = note
    run.random_state = seed
    return run


def _join_notes(*notes: str | None) -> str | None:
    present = [note for note in notes if note]
    return "; ".join(present) if present else None


def _clean(
    method: str,
    features: np.ndarray,
    labels: np.ndarray,
    repeats: np.ndarray,
    synthetic_features: np.ndarray,
    synthetic_labels: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, str | None]:
    """Run TomekLinks or EditedNearestNeighbours on the over-sampled set.

    Returns the new repeats, the indices of the surviving synthetic rows and a note.
    Duplicated input rows enter the cleaning once per copy.
    """
    n = features.shape[0]
    origin = np.concatenate([np.arange(n), np.repeat(np.arange(n), repeats - 1)])
    X_all = np.vstack([features[origin], synthetic_features])
    y_all = np.concatenate([labels[origin], synthetic_labels])
    if method == "smote_enn":
        if X_all.shape[0] <= ENN_NEIGHBORS:
            note = f"{X_all.shape[0]} rows are too few for EditedNearestNeighbours"
            return repeats, np.arange(len(synthetic_labels)), note
        cleaner = EditedNearestNeighbours(
            sampling_strategy="all", n_neighbors=ENN_NEIGHBORS
        )
    else:
        cleaner = TomekLinks(sampling_strategy="all")
    cleaner.fit_resample(X_all, y_all)
    kept = np.sort(cleaner.sample_indices_)
    n_copies = origin.shape[0]
    kept_copies = kept[kept < n_copies]
    new_repeats = np.bincount(origin[kept_copies], minlength=n).astype(np.int64)
    kept_synthetic = kept[kept >= n_copies] - n_copies
    return new_repeats, kept_synthetic, None


def _validate_features(
    method: str, features: np.ndarray | None, n: int
) -> np.ndarray | None:
    if features is None:
        if method in SMOTE_FAMILY:
            raise ResampleError(
                f"method {method!r} needs features (a float array of shape (n, d) in "
                "the reduced feature space); pass them, or use random_over"
            )
        return None
    array = np.asarray(features)
    if array.ndim != 2 or array.shape[0] != n or array.shape[1] < 1:
        raise ResampleError(
            f"features have shape {array.shape} but the {n} labels need shape "
            f"({n}, d) with d >= 1"
        )
    array = array.astype(np.float64, copy=False)
    bad_rows = int((~np.isfinite(array)).any(axis=1).sum())
    if bad_rows:
        raise ResampleError(
            f"{bad_rows} feature rows contain NaN or infinity; recompute the feature "
            "space (resample.features) from valid pixels"
        )
    return array


def _resample_smote_family(
    labels: np.ndarray,
    features: np.ndarray,
    settings: ResampleSettings,
    counts: dict[str, int],
    max_memory_bytes: int,
) -> ResampleResult:
    method = settings.method
    n, n_features = features.shape
    plan = _resolve_sampling_strategy(method, settings.sampling_strategy, counts)
    n_new_total = sum(plan.values())
    estimate = estimate_memory_bytes(
        method, n, n_features, n_new_total, k_neighbors=settings.k_neighbors
    )
    if estimate > max_memory_bytes:
        raise ResampleError(
            f"{method} on {n} samples x {n_features} features with {n_new_total} new "
            f"samples needs an estimated {estimate / 2**20:.1f} MiB, above the limit "
            f"of {max_memory_bytes / 2**20:.1f} MiB; use a smaller feature space "
            "(resample.features.thumbnail_size or resample.features.pca_components, "
            "or a smaller image size when resample.features.kind is pixels), use "
            "method random_over, or raise resample.max_memory_mb"
        )

    requested = "smote" if method in CLEANING else method
    traced = np.column_stack([features, np.arange(n, dtype=np.float64)])
    repeats = np.ones(n, dtype=np.int64)
    per_class = {name: _class_entry(count) for name, count in counts.items()}
    parents_parts: list[np.ndarray] = []
    coefficient_parts: list[np.ndarray] = []
    feature_parts: list[np.ndarray] = []
    label_parts: list[np.ndarray] = []
    for label, n_new in plan.items():
        if n_new == 0:
            continue
        run = _oversample_class(
            method, traced, labels, label, counts[label], n_new, settings
        )
        if run.n_duplicated:
            repeats[np.flatnonzero(labels == label)] += run.n_duplicated
        entry = per_class[label]
        entry.update(
            method=run.method,
            k_neighbors=run.k_neighbors,
            m_neighbors=run.m_neighbors,
            random_state=run.random_state,
            note=run.note,
        )
        if run.note:
            # A method other than the requested one is a fallback worth a warning.
            level = logging.INFO if run.method == requested else logging.WARNING
            logger.log(level, "class %r: %s", label, run.note)
        parents_parts.append(run.parents)
        coefficient_parts.append(run.coefficients)
        feature_parts.append(run.features)
        label_parts.append(np.full(len(run.coefficients), label, dtype=labels.dtype))

    parents = np.concatenate(parents_parts or [np.empty((0, 2), dtype=np.int64)])
    coefficients = np.concatenate(coefficient_parts or [np.empty(0)])
    synthetic_features = np.concatenate(
        feature_parts or [np.empty((0, n_features))]
    ).reshape(-1, n_features)
    synthetic_labels = np.concatenate(label_parts or [np.empty(0, dtype=labels.dtype)])

    cleaning = CLEANING.get(method)
    if cleaning is not None:
        before = {name: int((synthetic_labels == name).sum()) for name in counts}
        repeats, kept, note = _clean(
            method, features, labels, repeats, synthetic_features, synthetic_labels
        )
        parents = parents[kept]
        coefficients = coefficients[kept]
        synthetic_labels = synthetic_labels[kept]
        for name, entry in per_class.items():
            after = int((synthetic_labels == name).sum())
            entry["n_synthetic_removed"] = before[name] - after
            if note:
                entry["note"] = _join_notes(entry["note"], note)
    return _finish_result(
        method,
        labels,
        repeats,
        np.ones(n),
        parents,
        coefficients,
        synthetic_labels,
        per_class,
        cleaning=cleaning,
    )


# --------------------------------------------------------------------------------------
# Entry point


def _class_weights(
    counts: dict[str, int], scheme: str, beta: float
) -> dict[str, float]:
    n = sum(counts.values())
    n_classes = len(counts)
    if scheme == "inverse_frequency":
        return {name: n / (n_classes * count) for name, count in counts.items()}
    if scheme == "effective_number":
        if not 0.0 <= beta < 1.0:
            raise ConfigError(
                f"beta {beta} is outside [0, 1); the effective number of samples "
                "(1 - beta^n) / (1 - beta) needs 0 <= beta < 1, such as 0.999"
            )
        raw = {
            name: (1.0 - beta) / (1.0 - beta**count) for name, count in counts.items()
        }
        total = sum(raw.values())
        return {name: value * n_classes / total for name, value in raw.items()}
    raise ConfigError(
        f"class_weight_scheme {scheme!r} is unknown; use inverse_frequency or "
        "effective_number"
    )


def _resample_random(
    labels: np.ndarray, settings: ResampleSettings, counts: dict[str, int]
) -> ResampleResult:
    method = settings.method
    n = labels.shape[0]
    index_feature = np.arange(n).reshape(-1, 1)
    if method == "random_over":
        sampler: RandomOverSampler | RandomUnderSampler = RandomOverSampler(
            sampling_strategy=settings.sampling_strategy, random_state=settings.seed
        )
    else:
        sampler = RandomUnderSampler(
            sampling_strategy=settings.sampling_strategy, random_state=settings.seed
        )
    sampler.fit_resample(index_feature, labels)
    repeats = np.bincount(sampler.sample_indices_, minlength=n).astype(np.int64)
    per_class = {name: _class_entry(count) for name, count in counts.items()}
    for name in sampler.sampling_strategy_:
        per_class[str(name)]["method"] = method
        per_class[str(name)]["random_state"] = settings.seed
    return _finish_result(
        method,
        labels,
        repeats,
        np.ones(n),
        np.empty((0, 2), dtype=np.int64),
        np.empty(0),
        np.empty(0, dtype=labels.dtype),
        per_class,
    )


def resample(
    labels: np.ndarray,
    features: np.ndarray | None,
    settings: ResampleSettings,
    *,
    beta: float = 0.999,
    max_memory_bytes: int | None = None,
) -> ResampleResult:
    """Resample the training split and return index-based lineage.

    Parameters
    ----------
    labels : ndarray of shape (n,)
        Class name of each training row.
    features : ndarray of shape (n, d) or None
        Reduced feature space, cast to float64. Required for the SMOTE family and
        ignored by the other methods.
    settings : ResampleSettings
        Method, sampling_strategy, k_neighbors, seed and fallbacks.
    beta : float, default=0.999
        Beta of the effective_number class weights.
    max_memory_bytes : int or None, default=None
        Limit of :func:`estimate_memory_bytes` for the SMOTE family. None uses
        ``settings.max_memory_mb``.

    Returns
    -------
    ResampleResult

    Raises
    ------
    ConfigError
        When :func:`check_sampling_strategy` rejects the request.
    ResampleError
        When features are missing or invalid, when the memory estimate exceeds the
        limit, or when the lineage of a generated row cannot be confirmed.

    Notes
    -----
    The SMOTE family runs once per over-sampled class, with ``sampling_strategy``
    restricted to that class but the full X and y, so BorderlineSMOTE and ADASYN see
    the other classes. Each class gets ``k = min(k_neighbors, n_class - 1)`` and the
    random_state :func:`class_seed` (settings.seed, class). A class with one sample
    follows ``settings.single_sample_class``, and ADASYN falls back to SMOTE for a
    class where it cannot run. ``per_class`` records what was used.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ResampleError(f"labels have shape {labels.shape}; pass a 1-D array")
    method = settings.method
    n = labels.shape[0]
    names, class_sizes = np.unique(labels, return_counts=True)
    counts = {
        str(name): int(size) for name, size in zip(names, class_sizes, strict=True)
    }
    check_sampling_strategy(method, settings.sampling_strategy, counts)
    features = _validate_features(method, features, n)
    logger.info(
        "resampling %d training rows in %d classes with method %s",
        n,
        len(counts),
        method,
    )

    if method in SMOTE_FAMILY:
        limit = max_memory_bytes
        if limit is None:
            limit = settings.max_memory_mb * 2**20
        result = _resample_smote_family(labels, features, settings, counts, limit)
    elif method in ("random_over", "random_under"):
        result = _resample_random(labels, settings, counts)
    else:
        per_class = {name: _class_entry(count) for name, count in counts.items()}
        weights = np.ones(n)
        class_weights = None
        if method == "class_weights":
            class_weights = _class_weights(counts, settings.class_weight_scheme, beta)
            lookup = np.array([class_weights[str(name)] for name in names])
            weights = lookup[np.searchsorted(names, labels)]
            for name in per_class:
                per_class[name]["method"] = "class_weights"
        result = _finish_result(
            method,
            labels,
            np.ones(n, dtype=np.int64),
            weights,
            np.empty((0, 2), dtype=np.int64),
            np.empty(0),
            np.empty(0, dtype=labels.dtype),
            per_class,
            class_weights=class_weights,
        )
    logger.info(
        "resampled with %s: %s -> %s", method, result.counts_before, result.counts_after
    )
    return result


# --------------------------------------------------------------------------------------
# Feature space and pixel interpolation


def _area_weights(n_in: int, n_out: int) -> np.ndarray:
    """Return the (n_out, n_in) matrix that averages input cells into output cells.

    Output cell i covers input interval [i * n_in / n_out, (i + 1) * n_in / n_out).
    Each weight is the overlap with input cell y divided by the output cell length,
    computed in units of 1 / n_out so the interval ends are exact integers.
    """
    out_edges = np.arange(n_out + 1, dtype=np.int64) * n_in
    in_edges = np.arange(n_in + 1, dtype=np.int64) * n_out
    low = np.maximum(out_edges[:-1, None], in_edges[None, :-1])
    high = np.minimum(out_edges[1:, None], in_edges[None, 1:])
    return np.clip(high - low, 0, None).astype(np.float64) / n_in


def thumbnail_features(pixels: np.ndarray, size: int) -> np.ndarray:
    """Block-average images to ``size`` x ``size`` thumbnails and flatten them.

    This is an area resize: each thumbnail pixel is the mean of the source area it
    covers, weighting partly covered source pixels by their overlap, so H and W need
    not be multiples of ``size``.

    Parameters
    ----------
    pixels : ndarray of shape (N, H, W, C)
        Integer (or float) pixels.
    size : int
        Thumbnail side in pixels.

    Returns
    -------
    ndarray of shape (N, size * size * C), float32
        Thumbnails flattened in (row, column, channel) order.
    """
    pixels = np.asarray(pixels)
    if pixels.ndim != 4:
        raise ValueError(
            f"pixels have shape {pixels.shape}; pass (N, H, W, C), adding a channel "
            "axis to grayscale images with pixels[..., None]"
        )
    if not np.issubdtype(pixels.dtype, np.number):
        raise ValueError(f"pixels have dtype {pixels.dtype}; pass numeric pixels")
    if size < 1:
        raise ValueError(f"thumbnail size {size} is below 1")
    n_images, height, width, channels = pixels.shape
    row_weights = _area_weights(height, size)
    column_weights = _area_weights(width, size)
    output = np.empty((n_images, size * size * channels), dtype=np.float32)
    # Images per step, so the float64 copy of a step stays near 64 MiB.
    step = max(1, (64 << 20) // max(1, height * width * channels * 8))
    for first in range(0, n_images, step):
        chunk = pixels[first : first + step].astype(np.float64)
        rows = np.einsum("ih,nhwc->niwc", row_weights, chunk)
        blocks = np.einsum("jw,niwc->nijc", column_weights, rows)
        output[first : first + step] = blocks.reshape(len(chunk), -1)
    return output


class FeatureReducer:
    """Feature space of the SMOTE family: thumbnails, optionally reduced by PCA.

    Parameters
    ----------
    thumbnail_size : int or None
        Thumbnail side for ``kind="thumbnail"``; None for ``kind="pixels"``.
    pca_components : int or None
        Principal components to keep. None, or a value at or above the number of
        input columns, keeps the input values (identity).
    kind : {"thumbnail", "pixels"}, default="thumbnail"
        Whether :meth:`thumbnails` block-averages or only flattens the pixels.
    random_state : int, default=0
        random_state of sklearn PCA.
    """

    def __init__(
        self,
        thumbnail_size: int | None,
        pca_components: int | None,
        *,
        kind: str = "thumbnail",
        random_state: int = 0,
    ) -> None:
        if kind not in ("thumbnail", "pixels"):
            raise ValueError(
                f"feature kind {kind!r} is unknown; use thumbnail or pixels"
            )
        if kind == "thumbnail" and (thumbnail_size is None or thumbnail_size < 1):
            raise ValueError(
                f"thumbnail_size {thumbnail_size!r} is invalid for kind thumbnail; "
                "give a side of 1 or more pixels"
            )
        self.thumbnail_size = thumbnail_size if kind == "thumbnail" else None
        self.pca_components = pca_components
        self.kind = kind
        self.random_state = random_state
        self.pca_: PCA | None = None
        self.n_features_in_: int | None = None
        self.n_components_: int | None = None
        self.note_: str | None = None

    @classmethod
    def from_settings(cls, space: FeatureSpace, seed: int = 0) -> FeatureReducer:
        """Create a reducer from ``resample.features``."""
        return cls(
            space.thumbnail_size,
            space.pca_components,
            kind=space.kind,
            random_state=seed,
        )

    def thumbnails(self, pixels: np.ndarray) -> np.ndarray:
        """Return the float32 input rows of :meth:`fit` for (N, H, W, C) pixels."""
        if self.kind == "pixels":
            pixels = np.asarray(pixels)
            return pixels.reshape(pixels.shape[0], -1).astype(np.float32)
        return thumbnail_features(pixels, self.thumbnail_size)

    def fit(self, thumbnails: np.ndarray) -> FeatureReducer:
        """Fit PCA on (n, dims) thumbnails, or choose the identity."""
        thumbnails = np.asarray(thumbnails)
        n_samples, dims = thumbnails.shape
        self.n_features_in_ = dims
        self.pca_ = None
        self.note_ = None
        requested = self.pca_components
        if requested is None or requested >= dims:
            self.n_components_ = dims
            return self
        if n_samples < 2:
            self.n_components_ = dims
            self.note_ = (
                f"PCA needs 2 or more samples, got {n_samples}; kept all columns"
            )
            return self
        components = min(requested, n_samples)
        if components < requested:
            self.note_ = (
                f"pca_components {requested} lowered to {components}, the number of "
                "samples"
            )
        self.pca_ = PCA(n_components=components, random_state=self.random_state)
        self.pca_.fit(thumbnails.astype(np.float64))
        self.n_components_ = components
        return self

    def transform(self, thumbnails: np.ndarray) -> np.ndarray:
        """Return the (n, n_components_) float64 features of ``thumbnails``."""
        if self.n_features_in_ is None:
            raise ValueError("FeatureReducer is not fitted; call fit first")
        thumbnails = np.asarray(thumbnails, dtype=np.float64)
        if thumbnails.ndim != 2 or thumbnails.shape[1] != self.n_features_in_:
            raise ValueError(
                f"thumbnails have shape {thumbnails.shape}, but the reducer was fitted "
                f"on {self.n_features_in_} columns"
            )
        if self.pca_ is None:
            return thumbnails.copy()
        return self.pca_.transform(thumbnails)

    def fit_transform(self, thumbnails: np.ndarray) -> np.ndarray:
        """Fit on ``thumbnails`` and return their features."""
        return self.fit(thumbnails).transform(thumbnails)

    def describe(self) -> dict[str, Any]:
        """Return the manifest entry of the fitted feature space."""
        explained = None
        if self.pca_ is not None:
            explained = float(self.pca_.explained_variance_ratio_.sum())
        return {
            "kind": self.kind,
            "reduction": "identity" if self.pca_ is None else "pca",
            "thumbnail_size": self.thumbnail_size,
            "pca_components_requested": self.pca_components,
            "pca_components": None if self.pca_ is None else self.n_components_,
            "explained_variance_ratio": explained,
            "n_features_in": self.n_features_in_,
            "n_features_out": self.n_components_,
            "random_state": self.random_state,
            "note": self.note_,
        }


def interpolate_pixels(
    a: np.ndarray, b: np.ndarray, coefficients: np.ndarray, dtype: Any
) -> np.ndarray:
    """Interpolate synthetic images ``round(a + c * (b - a))`` in float64.

    Rounding is to the nearest integer with ties to even (``np.rint``). The result is
    clipped to the range of ``dtype`` and cast to it.

    Parameters
    ----------
    a, b : ndarray of shape (m, H, W, C)
        Pixels of the two parents of each synthetic row.
    coefficients : ndarray of shape (m,)
        Coefficients in [0, 1].
    dtype : uint8 or uint16
        Output pixel type.

    Returns
    -------
    ndarray of shape (m, H, W, C) and type ``dtype``
    """
    name = np.dtype(dtype).name
    if name not in _PIXEL_DTYPES:
        raise ValueError(f"pixel dtype {name} is unsupported; use uint8 or uint16")
    a = np.asarray(a)
    b = np.asarray(b)
    coefficients = np.asarray(coefficients, dtype=np.float64).reshape(-1)
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(
            f"parent pixels have shapes {a.shape} and {b.shape}; both must be the "
            "same (m, H, W, C)"
        )
    if coefficients.shape[0] != a.shape[0]:
        raise ValueError(
            f"{coefficients.shape[0]} coefficients for {a.shape[0]} parent pairs; "
            "pass one coefficient per pair"
        )
    if coefficients.size and (coefficients.min() < 0 or coefficients.max() > 1):
        raise ValueError(
            f"coefficients span [{coefficients.min()}, {coefficients.max()}]; they "
            "must lie in [0, 1]"
        )
    start = a.astype(np.float64)
    value = start + coefficients[:, None, None, None] * (b.astype(np.float64) - start)
    info = np.iinfo(_PIXEL_DTYPES[name])
    return np.clip(np.rint(value), info.min, info.max).astype(_PIXEL_DTYPES[name])
