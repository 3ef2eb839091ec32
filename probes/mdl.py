"""Minimum description length of labels given latents: the online code (Voita & Titov 2020).

"Information-Theoretic Probing with Minimum Description Length", sec. 2.2.2. The (seeded,
shuffled) training set is cut at the fractions :data:`FRACTIONS`. The first block is sent with the
uniform code (``log2 K`` bits per label); every later block is sent with a probe trained on all
earlier blocks, costing ``-log2 p(y)`` bits per label. A latent from which the concept is easy to
extract *with little data* gives a short code. Two numbers are reported: the online **code length**
in bits (Voita & Titov's headline number; it grows with the number of coded rows, so compare it only
across probes coded on the same rows) and ``compression = uniform / online`` (1 = no better than uniform).

Every coded row's bits are kept (``MDLResult.row_bits``, in the caller's row order): the rows of a block
cost ``-log2 p(y)`` under the probe trained on the earlier blocks, the first block's ``log2 K`` each.
:func:`mdl_estimates` turns them into intervals by a bootstrap over EPISODES (the per-row bits of the
resampled episodes are summed) and over the shuffle orders (as seeds, :func:`probes.stats.bootstrap_seeds`).
The block probes are not refitted per resample (that would cost ``n_boot`` online codes): the interval
holds the test-episode sampling variation of the code given the block probes, and the order variation.

Any probe method plugs in through a ``fit_predict_proba(x_train, y_train, x_eval) -> proba[m k]``
callable (columns are the ``k`` classes in order, even when a class is missing from ``y_train``).
Probabilities are floored at ``2**-30`` (at most 30 bits for a label the probe rules out) so one
overconfident mistake cannot make the code infinite.

Classification only. Scalar concepts must be discretised first: :func:`discretise_scalar` cuts
them into equal-mass (quantile) bins -- the bins, not the values, are then what is coded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from probes.stats import Estimate, SumDecomposable, as_numpy, bootstrap_seeds, group_codes

FRACTIONS: tuple[float, ...] = (0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.0625, 0.125, 0.25, 0.5, 1.0)
_FLOOR = 2.0**-30

FitPredictProba = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
"""``(x_train[n d], y_train[n], x_eval[m d]) -> proba[m k]``."""


@dataclass(frozen=True)
class MDLResult:
    """Online codelength of one labelling, in bits."""

    online_bits: float
    """Total online codelength (uniform first block + probe-coded later blocks)."""
    uniform_bits: float
    """``n * log2 K``: the codelength with no latents at all."""
    block_bits: tuple[float, ...]
    """Bits spent on each block, first (uniform) block included; they sum to ``online_bits``."""
    block_ends: tuple[int, ...]
    """End index (exclusive) of each block in the shuffled order; the last is ``n``."""
    num_classes: int
    seed: int
    row_bits: tuple[float, ...] = ()
    """Bits spent on each row, in the caller's (unshuffled) row order; they sum to ``online_bits``."""

    @property
    def compression(self) -> float:
        """``uniform_bits / online_bits`` (> 1: the latent makes the labels cheaper to send)."""
        return self.uniform_bits / self.online_bits

    @property
    def n(self) -> int:
        return self.block_ends[-1]


def block_ends(n: int, fractions: Sequence[float] = FRACTIONS) -> tuple[int, ...]:
    """Strictly increasing block ends ``ceil(f * n)`` (duplicates dropped; the first is >= 1)."""
    f = np.asarray(fractions, dtype=np.float64)
    if f.ndim != 1 or not len(f) or np.any(np.diff(f) <= 0) or f[0] <= 0 or f[-1] != 1.0:
        raise ValueError(f"fractions must increase strictly in (0, 1] and end at 1.0, got {tuple(fractions)}")
    ends = np.unique(np.maximum(1, np.ceil(f * n - 1e-9).astype(np.int64)))
    return tuple(int(e) for e in ends)


def online_codelength(
    x: Any,
    y: Any,
    fit_predict_proba: FitPredictProba,
    *,
    num_classes: int | None = None,
    fractions: Sequence[float] = FRACTIONS,
    seed: int = 0,
) -> MDLResult:
    """Online (prequential) codelength of labels ``y[n]`` (ints in ``range(k)``) given latents ``x[n d]``."""
    xs, ys = as_numpy(x), as_numpy(y)
    if xs.ndim != 2 or ys.shape != (xs.shape[0],):
        raise ValueError(f"x must have shape (n, d) and y shape (n,), got {xs.shape} and {ys.shape}")
    if ys.dtype.kind == "f" and np.any(ys != np.round(ys)):
        raise ValueError("online_codelength codes class labels, got non-integer floats; "
                         "discretise a scalar concept with discretise_scalar(y, n_bins) first")
    ys = ys.astype(np.int64)
    k = int(num_classes) if num_classes is not None else int(ys.max()) + 1
    if k < 2 or ys.min() < 0 or ys.max() >= k:
        raise ValueError(f"labels must be integers in [0, {k}) with num_classes >= 2, got values {np.unique(ys)[:8]}")
    order = np.random.default_rng(seed).permutation(len(ys))
    xs, ys = xs[order], ys[order]
    ends = block_ends(len(ys), fractions)
    row_bits = np.empty(len(ys))  # in the shuffled order; put back into the caller's order at the end
    row_bits[: ends[0]] = math.log2(k)
    bits = [ends[0] * math.log2(k)]
    for start, end in zip(ends[:-1], ends[1:]):
        proba = as_numpy(fit_predict_proba(xs[:start], ys[:start], xs[start:end])).astype(np.float64)
        if proba.shape != (end - start, k):
            raise ValueError(f"fit_predict_proba must return shape ({end - start}, {k}), got {proba.shape}")
        p = np.maximum(proba[np.arange(end - start), ys[start:end]], _FLOOR)
        row_bits[start:end] = -np.log2(p)
        bits.append(float(row_bits[start:end].sum()))
    by_row = np.empty_like(row_bits)
    by_row[order] = row_bits
    return MDLResult(float(sum(bits)), len(ys) * math.log2(k), tuple(bits), ends, k, seed,
                     tuple(float(b) for b in by_row))


class _CodeLength(SumDecomposable):
    """Total bits of the rows: ``(row_bits[n],) -> sum``."""

    def __call__(self, bits: np.ndarray) -> float:
        return float(np.sum(bits))

    def row_stats(self, bits: np.ndarray) -> np.ndarray:
        return np.asarray(bits, np.float64)[:, None]

    def finish(self, totals: np.ndarray, full: np.ndarray) -> np.ndarray:
        return totals[..., 0]


class _Compression(SumDecomposable):
    """Uniform bits over online bits of the rows: ``(row_bits[n], uniform_bits[n]) -> sum(uniform) / sum(bits)``."""

    def __call__(self, bits: np.ndarray, uniform: np.ndarray) -> float:
        return float(np.sum(uniform) / np.sum(bits))

    def row_stats(self, bits: np.ndarray, uniform: np.ndarray) -> np.ndarray:
        return np.stack([np.asarray(bits, np.float64), np.asarray(uniform, np.float64)], 1)

    def finish(self, totals: np.ndarray, full: np.ndarray) -> np.ndarray:
        return totals[..., 1] / totals[..., 0]


def mdl_estimates(results: Sequence[MDLResult], groups: Any, *, n_boot: int = 1000, level: float = 0.95,
                  seed: int = 0) -> dict[str, Estimate]:
    """``{"codelength": bits, "compression": ratio}`` of one labelling coded in several shuffle orders.

    Each estimate is the mean over the orders (``results``, one per shuffle seed, all of the same rows);
    its interval comes from a bootstrap over (order, episode): ``groups[n]`` are the rows' episode ids,
    resampled whole and jointly for every order (:func:`probes.stats.bootstrap_seeds`), and a resample's
    code length is the sum of its rows' bits (``MDLResult.row_bits``)."""
    if not results:
        raise ValueError("mdl_estimates needs at least one MDLResult, got none")
    n, k = results[0].n, results[0].num_classes
    for r in results:
        if r.n != n or r.num_classes != k or len(r.row_bits) != n:
            raise ValueError(f"mdl_estimates needs results of the same rows (n={n}, K={k}) with row_bits, got n={r.n}, "
                             f"K={r.num_classes}, {len(r.row_bits)} row_bits; code every shuffle order on the same rows")
    group_codes(groups, n)  # checks the shape
    g = as_numpy(groups)
    bits = [np.asarray(r.row_bits, np.float64) for r in results]
    uniform = np.full(n, math.log2(k))
    kw = dict(groups=[g] * len(results), n_boot=n_boot, level=level, seed=seed)
    return {"codelength": bootstrap_seeds(_CodeLength(), [(b,) for b in bits], **kw),
            "compression": bootstrap_seeds(_Compression(), [(b, uniform) for b in bits], **kw)}


def compression_estimate(results: Sequence[MDLResult], level: float = 0.95) -> Estimate:
    """Mean compression over shuffling seeds, with a t-interval over those seeds (NaN if only one).

    Superseded in the harness by :func:`mdl_estimates` (an episode-bootstrap interval); kept for callers
    that have no episode ids."""
    if not results:
        raise ValueError("compression_estimate needs at least one MDLResult, got none")
    from scipy.stats import t  # scipy ships with scikit-learn

    c = np.array([r.compression for r in results])
    m = float(c.mean())
    if len(c) < 2:
        return Estimate(m, math.nan, math.nan, level, 0, 1)
    h = float(t.ppf(0.5 + level / 2, len(c) - 1) * c.std(ddof=1) / math.sqrt(len(c)))
    return Estimate(m, m - h, m + h, level, 0, len(c))


def discretise_scalar(y: Any, n_bins: int = 10, edges: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Scalar values -> ``(bin ids int64[n], edges[n_bins - 1])`` with equal-mass (quantile) bins.

    Pass the training ``edges`` back in to bin test values the same way. Tied values may merge
    bins and leave some ids unused (a value equal to an edge goes to the bin above it, so with a tied
    minimum bin 0 is empty); relabel to the occupied ids before coding (``np.unique(ids,
    return_inverse=True)``) -- an empty bin inflates the uniform code ``log2 K`` and hence compression."""
    v = as_numpy(y).astype(np.float64)
    if v.ndim != 1:
        raise ValueError(f"y must have shape (n,), got {v.shape}")
    if edges is None:
        if n_bins < 2:
            raise ValueError(f"n_bins must be >= 2, got {n_bins}")
        edges = np.unique(np.quantile(v, np.linspace(0, 1, n_bins + 1)[1:-1]))
    edges = as_numpy(edges).astype(np.float64)
    return np.searchsorted(edges, v, side="right").astype(np.int64), edges


def sklearn_fit_predict_proba(make_estimator: Callable[[], Any], num_classes: int) -> FitPredictProba:
    """Wrap a scikit-learn classifier factory as a ``fit_predict_proba`` for :func:`online_codelength`.

    Places ``predict_proba``'s columns at the classes the fit saw (others get probability 0, then
    the floor), and falls back to Laplace-smoothed label frequencies when only one class was seen."""

    def fit_predict_proba(x_train: np.ndarray, y_train: np.ndarray, x_eval: np.ndarray) -> np.ndarray:
        out = np.zeros((len(x_eval), num_classes))
        seen = np.unique(y_train)
        if len(seen) == 1:  # a classifier cannot be fitted: send labels with Laplace frequencies
            out[:] = (np.bincount(y_train, minlength=num_classes) + 1) / (len(y_train) + num_classes)
            return out
        est = make_estimator().fit(x_train, y_train)
        out[:, est.classes_.astype(np.int64)] = est.predict_proba(x_eval)
        return out

    return fit_predict_proba
