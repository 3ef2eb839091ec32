"""Probe metrics per concept kind, each with a vectorised bootstrap path.

========================  =========================================================================
kind                      metrics (names as in the results table)
========================  =========================================================================
``binary``                ``balanced_accuracy``, ``auroc``, ``ece``
``categorical``           ``balanced_accuracy``, ``auroc`` (macro one-vs-rest), ``macro_f1``, ``ece``
``scalar``                ``r2``, ``mae``
========================  =========================================================================

Every metric is a small frozen object: calling it gives the point value from scikit-learn (the
reference implementation), and ``batched(counts, group_index, ...)`` gives the values on all
bootstrap resamples at once (see :mod:`probes.stats`); tests check the two agree.

ECE is written by hand: scikit-learn has no ECE, and the batched path needs per-bin sums anyway.
Bins are **equal-width** on [0, 1] (10 by default; ``binning="equal_mass"`` uses quantile edges of
the sample's confidences instead). Binary concepts use the **positive-class probability** against
the positive frequency; categorical concepts use the **top-class confidence** against top-class
accuracy. (torchmetrics' ``BinaryCalibrationError`` / ``MulticlassCalibrationError`` follow the
same conventions and serve as the reference in tests.)

Undefined resamples (a class present in the full sample but absent from a resample, or a constant
target for R2) give NaN and are skipped by the bootstrap.
"""

from __future__ import annotations

import warnings

from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
from sklearn import metrics as skm

from probes.stats import Estimate, SumDecomposable, as_numpy, bootstrap

Kind = Literal["binary", "categorical", "scalar"]
_NAMES = {
    "binary": ("balanced_accuracy", "auroc", "ece"),
    "categorical": ("balanced_accuracy", "auroc", "macro_f1", "ece"),
    "scalar": ("r2", "mae"),
}
_NEEDS_PROBA = frozenset({"auroc", "ece"})


def metric_names(kind: str, with_proba: bool = True) -> tuple[str, ...]:
    """Metric names reported for a concept kind (without ``auroc``/``ece`` if no probabilities)."""
    if kind not in _NAMES:
        raise ValueError(f"kind must be one of {tuple(_NAMES)}, got {kind!r}")
    return tuple(n for n in _NAMES[kind] if with_proba or n not in _NEEDS_PROBA)


def _onehot(y: np.ndarray, k: int) -> np.ndarray:
    return (np.asarray(y)[:, None] == np.arange(k)[None, :]).astype(np.float64)


def _labels(y: np.ndarray, k: int, what: str) -> np.ndarray:
    y = as_numpy(y)
    if y.ndim != 1:
        raise ValueError(f"{what} must have shape (n,), got {y.shape}")
    if y.size and (np.any(y != np.round(y)) or y.min() < 0 or y.max() >= k):
        raise ValueError(f"{what} must be integers in [0, {k}), got values {np.unique(y)[:8]}")
    return y.astype(np.int64)


@dataclass(frozen=True)
class BalancedAccuracy(SumDecomposable):
    """Mean per-class recall over the classes present in ``y_true``."""

    num_classes: int

    def __call__(self, y_true, y_pred) -> float:
        with warnings.catch_warnings():  # one class present (e.g. a planner's visited states): defined, not an error
            warnings.filterwarnings("ignore", message=r".*(single label|y_pred contains classes not in y_true).*")
            return float(skm.balanced_accuracy_score(as_numpy(y_true), as_numpy(y_pred)))

    def row_stats(self, y_true, y_pred) -> np.ndarray:
        k = self.num_classes
        t = _onehot(_labels(y_true, k, "y_true"), k)
        hit = (as_numpy(y_true) == as_numpy(y_pred))[:, None]
        return np.concatenate([t, t * hit], axis=1)  # [n 2k]: support, hits

    def finish(self, totals: np.ndarray, full: np.ndarray) -> np.ndarray:
        k = self.num_classes
        support, hits = totals[..., :k], totals[..., k:]
        present = full[:k] > 0
        recall = hits[..., present] / support[..., present]  # NaN if a present class vanished
        return recall.mean(axis=-1)


@dataclass(frozen=True)
class MacroF1(SumDecomposable):
    """Unweighted mean F1 over the classes present in ``y_true`` or ``y_pred`` (scikit-learn's rule)."""

    num_classes: int

    def __call__(self, y_true, y_pred) -> float:
        return float(skm.f1_score(as_numpy(y_true), as_numpy(y_pred), average="macro", zero_division=0))

    def row_stats(self, y_true, y_pred) -> np.ndarray:
        k = self.num_classes
        t = _onehot(_labels(y_true, k, "y_true"), k)
        p = _onehot(_labels(y_pred, k, "y_pred"), k)
        return np.concatenate([t * p, t, p], axis=1)  # [n 3k]: tp, true count, predicted count

    def finish(self, totals: np.ndarray, full: np.ndarray) -> np.ndarray:
        k = self.num_classes
        tp, nt, npred = totals[..., :k], totals[..., k : 2 * k], totals[..., 2 * k :]
        used = (full[k : 2 * k] + full[2 * k :]) > 0
        return (2 * tp[..., used] / (nt[..., used] + npred[..., used])).mean(axis=-1)


@dataclass(frozen=True)
class R2(SumDecomposable):
    """Coefficient of determination; NaN when the target is constant (the full sample or a resample).

    scikit-learn's default (``force_finite=True``) would report 0.0 (or 1.0 for exact predictions) there: a number
    for an undefined ratio, beside an all-NaN bootstrap."""

    def __call__(self, y_true, y_pred) -> float:
        with np.errstate(divide="ignore", invalid="ignore"):
            v = float(skm.r2_score(as_numpy(y_true), as_numpy(y_pred), force_finite=False))
        return v if np.isfinite(v) else float("nan")

    def row_stats(self, y_true, y_pred) -> np.ndarray:
        y, p = as_numpy(y_true).astype(np.float64), as_numpy(y_pred).astype(np.float64)
        yc = y - y.mean()  # centring keeps sum(y^2) - sum(y)^2/n well conditioned
        return np.stack([np.ones_like(y), yc, yc**2, (y - p) ** 2], axis=1)

    def finish(self, totals: np.ndarray, full: np.ndarray) -> np.ndarray:
        n, s1, s2, res = np.moveaxis(totals, -1, 0)
        sst = s2 - s1**2 / n
        return np.where(sst > 1e-12 * np.maximum(s2, 1e-300), 1 - res / sst, np.nan)


@dataclass(frozen=True)
class MAE(SumDecomposable):
    """Mean absolute error."""

    def __call__(self, y_true, y_pred) -> float:
        return float(skm.mean_absolute_error(as_numpy(y_true), as_numpy(y_pred)))

    def row_stats(self, y_true, y_pred) -> np.ndarray:
        e = np.abs(as_numpy(y_true).astype(np.float64) - as_numpy(y_pred).astype(np.float64))
        return np.stack([np.ones_like(e), e], axis=1)

    def finish(self, totals: np.ndarray, full: np.ndarray) -> np.ndarray:
        return totals[..., 1] / totals[..., 0]


def _confidence(y_true, proba, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(confidence[n], outcome[n]): positive-class prob / positive label (binary), or top-class
    confidence / top-class correct (categorical)."""
    p, y = as_numpy(proba).astype(np.float64), as_numpy(y_true)
    if num_classes == 2 and p.ndim == 1:
        return p, (y == 1).astype(np.float64)
    if p.ndim != 2 or p.shape != (y.shape[0], num_classes):
        raise ValueError(f"proba must have shape ({y.shape[0]}, {num_classes}) (or (n,) if binary), got {p.shape}")
    if num_classes == 2:
        return p[:, 1], (y == 1).astype(np.float64)
    return p.max(axis=1), (p.argmax(axis=1) == y).astype(np.float64)


@dataclass(frozen=True)
class ECE(SumDecomposable):
    """Expected calibration error (L1, weighted by bin mass). See the module docstring for bins.

    The plug-in value is biased upward (> 0 even for a perfectly calibrated predictor on finite data), so
    :func:`probes.stats.bootstrap` reports it bias-corrected, with the basic bootstrap interval
    (``bias_corrected``); :meth:`__call__` stays the plain plug-in value."""

    bias_corrected: ClassVar[bool] = True
    num_classes: int
    n_bins: int = 10
    binning: Literal["equal_width", "equal_mass"] = "equal_width"

    def _bins(self, conf: np.ndarray) -> np.ndarray:
        if self.binning == "equal_width":
            return np.clip(np.floor(conf * self.n_bins).astype(np.int64), 0, self.n_bins - 1)
        if self.binning == "equal_mass":
            edges = np.quantile(conf, np.linspace(0, 1, self.n_bins + 1)[1:-1])
            return np.searchsorted(edges, conf, side="right")
        raise ValueError(f"binning must be 'equal_width' or 'equal_mass', got {self.binning!r}")

    def row_stats(self, y_true, proba) -> np.ndarray:
        conf, out = _confidence(y_true, proba, self.num_classes)
        onehot = _onehot(self._bins(conf), self.n_bins)
        return np.concatenate([onehot, onehot * conf[:, None], onehot * out[:, None]], axis=1)

    def finish(self, totals: np.ndarray, full: np.ndarray) -> np.ndarray:
        b = self.n_bins
        n, conf, out = totals[..., :b], totals[..., b : 2 * b], totals[..., 2 * b :]
        return np.abs(out - conf).sum(axis=-1) / n.sum(axis=-1)

    def __call__(self, y_true, proba) -> float:
        s = self.row_stats(y_true, proba).sum(axis=0)
        return float(self.finish(s, s))


def _pair_matrix(score: np.ndarray, pos: np.ndarray, group_index: np.ndarray, n_groups: int) -> np.ndarray:
    """``M[g h]`` = sum over positives i in episode g and negatives j in episode h of
    ``[s_j < s_i] + 0.5 [s_j == s_i]``. Then the AUC of a resample with episode multiplicities
    ``c`` is ``c @ M @ c / ((c @ pos_per_group) * (c @ neg_per_group))`` -- exact, and its cost
    no longer grows with the number of rows times resamples."""
    from scipy import sparse  # scipy ships with scikit-learn

    uniq, block = np.unique(score, return_inverse=True)  # tied scores share a block
    nb, ones = len(uniq), np.ones(len(score))
    pos_b = sparse.csr_matrix((ones * pos, (group_index, block)), shape=(n_groups, nb))
    neg_b = sparse.csc_matrix((ones * ~pos, (block, group_index)), shape=(nb, n_groups))
    m = np.empty((n_groups, n_groups))
    chunk = max(1, 4_000_000 // nb)
    for h in range(0, n_groups, chunk):
        d = neg_b[:, h : h + chunk].toarray()  # [blocks c] negatives per score block
        below = np.cumsum(d, axis=0) - d
        m[:, h : h + chunk] = pos_b @ (below + 0.5 * d)
    return m


@dataclass(frozen=True)
class AUROC:
    """Binary AUROC of the positive-class score; categorical: macro mean of one-vs-rest AUROCs
    over the classes present in ``y_true`` (= scikit-learn's ``multi_class="ovr"`` when all are)."""

    num_classes: int

    def _scores(self, y_true, proba) -> tuple[np.ndarray, np.ndarray]:
        y, p = as_numpy(y_true), as_numpy(proba).astype(np.float64)
        if self.num_classes == 2 and p.ndim == 1:
            p = np.stack([1 - p, p], axis=1)
        if p.shape != (y.shape[0], self.num_classes):
            raise ValueError(f"proba must have shape ({y.shape[0]}, {self.num_classes}) (or (n,) if binary), got {p.shape}")
        return y, p

    def _classes(self, y: np.ndarray) -> list[int]:
        present = [k for k in range(self.num_classes) if np.any(y == k)]
        if self.num_classes == 2:
            return [1] if len(present) == 2 else []
        return present if len(present) >= 2 else []

    def __call__(self, y_true, proba) -> float:
        y, p = self._scores(y_true, proba)
        classes = self._classes(y)
        if not classes:
            return float("nan")
        return float(np.mean([skm.roc_auc_score(y == k, p[:, k]) for k in classes]))

    def batched(self, counts: np.ndarray, group_index: np.ndarray, y_true, proba) -> np.ndarray:
        y, p = self._scores(y_true, proba)
        c = counts.astype(np.float64)  # [b g]
        g = c.shape[1]
        per_class = []
        for k in self._classes(y):
            pos = y == k
            m = _pair_matrix(p[:, k], pos, group_index, g)
            n_pos = c @ np.bincount(group_index, weights=pos.astype(np.float64), minlength=g)
            n_neg = c @ np.bincount(group_index, weights=(~pos).astype(np.float64), minlength=g)
            with np.errstate(invalid="ignore", divide="ignore"):
                per_class.append(np.einsum("bg,bg->b", c @ m, c) / (n_pos * n_neg))
        return np.mean(per_class, axis=0) if per_class else np.full(counts.shape[0], np.nan)


def _num_classes(kind: str, y_true, y_pred, proba, num_classes: int | None) -> int:
    if kind == "binary":
        return 2
    if num_classes is not None:
        return int(num_classes)
    if proba is not None and as_numpy(proba).ndim == 2:
        return int(as_numpy(proba).shape[1])
    return int(max(as_numpy(y_true).max(), as_numpy(y_pred).max())) + 1  # stated fallback


def metric_objects(kind: str, num_classes: int = 0, *, ece_bins: int = 10) -> dict[str, object]:
    """``{name: metric}`` for a concept kind (``num_classes`` ignored for binary and scalar)."""
    metric_names(kind)
    if kind == "scalar":
        return {"r2": R2(), "mae": MAE()}
    k = 2 if kind == "binary" else num_classes
    if k < 2:
        raise ValueError(f"categorical metrics need num_classes >= 2, got {k}")
    out = {"balanced_accuracy": BalancedAccuracy(k), "auroc": AUROC(k), "macro_f1": MacroF1(k), "ece": ECE(k, ece_bins)}
    return {n: out[n] for n in metric_names(kind)}


def _inputs(kind, y_true, y_pred, proba, num_classes):
    k = _num_classes(kind, y_true, y_pred, proba, num_classes)
    names = metric_names(kind, with_proba=proba is not None)
    objs = metric_objects(kind, k)
    return {n: (objs[n], (y_true, proba if n in _NEEDS_PROBA else y_pred)) for n in names}


def concept_metrics(kind: str, y_true, y_pred, proba=None, *, num_classes: int | None = None) -> dict[str, float]:
    """Point values of :func:`metric_names` for one concept; ``proba`` ``[n k]`` (or ``[n]`` binary)."""
    return {n: float(m(*args)) for n, (m, args) in _inputs(kind, y_true, y_pred, proba, num_classes).items()}


def concept_estimates(
    kind: str, y_true, y_pred, proba=None, *, groups, num_classes: int | None = None,
    n_boot: int = 1000, level: float = 0.95, seed: int = 0,
) -> dict[str, Estimate]:
    """Like :func:`concept_metrics`, each with its episode-bootstrap interval (``groups[n]`` = episode ids).

    All metrics share one seed, hence one set of resamples."""
    return {
        n: bootstrap(m, *args, groups=groups, n_boot=n_boot, level=level, seed=seed)
        for n, (m, args) in _inputs(kind, y_true, y_pred, proba, num_classes).items()
    }


def prior_predictions(kind: str, y_train, n_test: int, *, num_classes: int | None = None):
    """The label prior as a predictor: ``(y_pred[n_test], proba[n_test k] | None)``.

    Classification: the training majority class, and the training class frequencies as
    probabilities for every row. Scalar: the training mean, no probabilities."""
    y = as_numpy(y_train)
    if kind == "scalar":
        return np.full(n_test, float(np.mean(y))), None
    k = _num_classes(kind, y, y, None, num_classes)
    freq = np.bincount(_labels(y, k, "y_train"), minlength=k) / len(y)
    return np.full(n_test, int(freq.argmax()), dtype=np.int64), np.tile(freq, (n_test, 1))


def prior_baseline(kind: str, y_train, y_test, *, num_classes: int | None = None) -> dict[str, float]:
    """Metrics of the label prior (the ``"prior"`` baseline row) on ``y_test``."""
    y_pred, proba = prior_predictions(kind, y_train, len(as_numpy(y_test)), num_classes=num_classes)
    k = None if proba is None else proba.shape[1]
    return concept_metrics(kind, y_test, y_pred, proba, num_classes=k)
