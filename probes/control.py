"""Control tasks (Hewitt & Liang 2019, "Designing and Interpreting Probes with Control Tasks").

A probe that scores well may have *learned* the concept rather than *read* it from the latent. The
control task keeps the structure that lets a probe memorise -- identical inputs get identical
labels -- but removes the concept: every **observation type** (every distinct egocentric view,
byte for byte) gets one label drawn at random. A probe's **selectivity** is its task score minus
its score on the control task, with the same probe method, site and data split. High selectivity
means the latent makes the concept easy but does not make arbitrary labellings of observations
easy; a probe that is accurate *and* accurate on control labels is memorising.

Per-type labels are sampled from the **empirical label distribution** (for each type, the label
of a uniformly drawn row), as in Hewitt & Liang; the label marginal is preserved in expectation.
This works for every concept kind, scalar included.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from probes.stats import Estimate, as_numpy, bootstrap_paired_difference


def observation_types(obs: Any) -> np.ndarray:
    """``obs[n ...]`` -> ``int64[n]`` type id of each observation: equal bytes <=> equal id.

    Ids are exact (``np.unique`` over a raw-bytes view of each row, no hash collisions) and are
    numbered in byte order, so they are only comparable within one call: pass the observations
    of **all** splits together (e.g. ``np.concatenate([obs_train, obs_test])``) so that an
    observation seen in training has the same type, hence the same control label, at test time.
    """
    a = np.ascontiguousarray(as_numpy(obs))
    if a.ndim < 1 or a.shape[0] == 0:
        raise ValueError(f"obs must have shape (n, ...) with n >= 1, got {a.shape}")
    rows = a.reshape(a.shape[0], -1)
    if rows.dtype.kind == "f":
        rows = rows + 0.0  # -0.0 -> +0.0 so equal floats have equal bytes
    rows = np.ascontiguousarray(rows)
    width = rows.dtype.itemsize * rows.shape[1]
    keys = rows.view(np.dtype((np.void, width))).ravel()
    _, types = np.unique(keys, return_inverse=True)
    return types.astype(np.int64).ravel()


def control_labels(types: Any, y: Any, kind: str, seed: int = 0, donors: Any = None) -> np.ndarray:
    """Control labels ``[n]``: one label per type, drawn from the empirical distribution of ``y``.

    Args:
        types: ``int[n]`` observation type per row (from :func:`observation_types`).
        y: ``[n]`` the concept's true labels (any kind); their dtype is kept.
        kind: ``"binary"``, ``"categorical"`` or ``"scalar"`` (checked; sampling is the same for all).
        seed: the control task's seed (a different seed is a different control task).
        donors: ``bool[n]`` mask of the rows whose labels may be drawn -- pass the TRAINING rows (Hewitt & Liang
            sample from the training label distribution; held-out and OOD labels should not shape the control
            task). ``None``: every row (the earlier behaviour, same draws for a seed).
    """
    if kind not in ("binary", "categorical", "scalar"):
        raise ValueError(f"kind must be 'binary', 'categorical' or 'scalar', got {kind!r}")
    t, labels = as_numpy(types), as_numpy(y)
    if t.ndim != 1 or labels.shape != t.shape:
        raise ValueError(f"types and y must both have shape (n,), got {t.shape} and {labels.shape}")
    if t.size == 0:
        return labels.copy()
    pool = np.arange(len(labels))
    if donors is not None:
        mask = as_numpy(donors)
        if mask.shape != t.shape or mask.dtype != bool or not mask.any():
            raise ValueError(f"donors must be a bool mask of shape {t.shape} with at least one True (e.g. the training "
                             f"rows), got dtype {mask.dtype} shape {mask.shape}")
        pool = np.flatnonzero(mask)
    uniq, inverse = np.unique(t, return_inverse=True)
    donor = pool[np.random.default_rng(seed).integers(0, len(pool), size=len(uniq))]  # one row per type
    return labels[donor][inverse.ravel()]


def selectivity(
    metric: Callable[..., float],
    task_arrays: Sequence[Any],
    control_arrays: Sequence[Any],
    *,
    groups: Any,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> Estimate:
    """Task score minus control score on the same test rows, with a paired episode-bootstrap CI.

    ``task_arrays`` are the metric's arguments for the probe trained on the true labels (e.g.
    ``(y_test, y_pred)``); ``control_arrays`` those for the same probe method trained on the control
    labels (e.g. ``(y_control_test, y_control_pred)``). Episodes are resampled jointly for both.
    """
    return bootstrap_paired_difference(
        metric, task_arrays, metric, control_arrays, groups=groups, n_boot=n_boot, level=level, seed=seed
    )
