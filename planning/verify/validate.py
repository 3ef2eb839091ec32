"""Validation of explicit models and property texts, run BEFORE Storm sees anything.

Storm does not validate its input: rows summing to 0.9 or to 1 + 1e-7, negative entries and empty
rows all came back as probability 1.0 when measured. So every model is checked here first, and
each problem is reported as a one-line :class:`VerifyError` that names the state / row and the fix.

These checks are plain numpy (no stormpy needed).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Iterable, Mapping

import numpy as np
import scipy.sparse as sp

from worlds.errors import OntolabError

if TYPE_CHECKING:
    from planning.verify.model import ExplicitModel

ROW_TOLERANCE = 1e-9
"""Largest accepted ``|sum(row) - 1|`` of a probability row (and of the initial distribution)."""

LABEL_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
"""Label names: identifiers, so that they can be quoted in a PCTL property (``"lava"``)."""

PROPERTY_PATTERN = re.compile(r"\s*P(max|min)?\s*=\s*\?\s*\[.*\]\s*", re.DOTALL)
"""Supported properties: quantitative probability queries ``P=? [...]``, ``Pmax=? [...]``, ``Pmin=? [...]``."""


class VerifyError(OntolabError):
    """A model or property that cannot be checked, explained in one line."""


def _where(row: int, row_groups: np.ndarray) -> str:
    """``"state s"`` for a DTMC row, ``"state s, choice k (row r)"`` for an MDP row."""
    state = int(np.searchsorted(row_groups, row, side="right") - 1)
    if len(row_groups) - 1 == row_groups[-1]:               # one row per state
        return f"state {state}"
    return f"state {state}, choice {row - int(row_groups[state])} (row {row})"


def _validate_shape(shape: tuple[int, int], row_groups: np.ndarray) -> np.ndarray:
    """At least one state; ``row_groups`` ``int[states + 1]`` from 0 to ``rows``, every group non-empty."""
    rows, states = shape
    if states < 1 or rows < 1:
        raise VerifyError(f"the model has no states (matrix shape {shape}); give at least one state")
    groups = np.asarray(row_groups)
    if groups.shape != (states + 1,) or groups[0] != 0 or groups[-1] != rows:
        raise VerifyError(f"row_groups must have shape ({states + 1},) from 0 to {rows}, got shape {groups.shape} "
                          f"from {groups[0] if groups.size else None} to {groups[-1] if groups.size else None}")
    choices = np.diff(groups)
    if choices.min() < 1:
        s = int(np.argmin(choices))
        raise VerifyError(f"state {s} has no choice (row group is empty); give absorbing states an explicit self-loop")
    return groups


def validate_matrix(matrix: sp.csr_array, row_groups: np.ndarray) -> None:
    """Check a row-grouped transition matrix ``[rows states]``: every row a distribution."""
    rows = matrix.shape[0]
    groups = _validate_shape(matrix.shape, row_groups)
    m = sp.csr_array(matrix)
    row_of = np.repeat(np.arange(rows), np.diff(m.indptr))
    bad = ~np.isfinite(m.data)
    if bad.any():
        k = int(np.argmax(bad))
        raise VerifyError(f"{_where(row_of[k], groups)} has a non-finite probability {m.data[k]} at column "
                          f"{m.indices[k]}; probabilities must be finite numbers in [0, 1]")
    if m.nnz and m.data.min() < 0:
        k = int(np.argmin(m.data))
        raise VerifyError(f"{_where(row_of[k], groups)} has a negative probability {m.data[k]} at column "
                          f"{m.indices[k]}; probabilities must lie in [0, 1]")
    positive = np.bincount(row_of[m.data > 0], minlength=rows)
    if positive.min() == 0:
        r = int(np.argmin(positive))
        raise VerifyError(f"{_where(r, groups)} has no transition (empty row); give absorbing states an "
                          f"explicit self-loop")
    sums = np.asarray(m.sum(axis=1)).ravel()
    off = np.abs(sums - 1.0)
    if off.max() > ROW_TOLERANCE:
        r = int(np.argmax(off))
        raise VerifyError(f"{_where(r, groups)} sums to {sums[r]!r}, expected 1 within {ROW_TOLERANCE}; "
                          f"normalise the row")


def validate_labels(labels: Mapping[str, np.ndarray], states: int) -> None:
    """Check label names (identifiers, not the reserved ``init``) and masks (``bool[states]``)."""
    for name, mask in labels.items():
        if not isinstance(name, str) or not LABEL_PATTERN.fullmatch(name) or name == "init":
            raise VerifyError(f"label names must match {LABEL_PATTERN.pattern} and not be the reserved 'init', "
                              f"got {name!r}")
        arr = np.asarray(mask)
        if arr.shape != (states,) or arr.dtype != np.bool_:
            raise VerifyError(f"label {name!r} must be a bool mask of shape ({states},), got {arr.dtype} {arr.shape}")


def validate_initial(initial: np.ndarray | None, states: int) -> None:
    """Check the initial distribution ``float[states]`` (``None`` = state 0)."""
    if initial is None:
        return
    init = np.asarray(initial, dtype=np.float64)
    if init.shape != (states,):
        raise VerifyError(f"initial must have shape ({states},), got {init.shape}")
    if not np.all(np.isfinite(init)) or init.min() < 0 or abs(init.sum() - 1.0) > ROW_TOLERANCE:
        raise VerifyError(f"initial must be a distribution (finite, >= 0, summing to 1 within {ROW_TOLERANCE}), "
                          f"got sum {init.sum()!r} and min {init.min()!r}")


def validate_model(model: "ExplicitModel") -> None:
    """All the checks above on an :class:`~planning.verify.model.ExplicitModel`."""
    validate_matrix(model.matrix, model.row_groups)
    validate_labels(model.labels, model.num_states)
    validate_initial(model.initial, model.num_states)


def property_labels(text: str) -> set[str]:
    """The quoted label names a PCTL property refers to (``P=? [F "lava"]`` -> ``{"lava"}``)."""
    return set(re.findall(r'"([^"]*)"', text))


def validate_property(text: str, labels: Iterable[str], nondeterministic: bool) -> None:
    """Check a property text before parsing: a supported query form, known labels, and an explicit
    ``Pmax`` / ``Pmin`` on MDPs (a plain ``P=?`` is ambiguous there)."""
    if not isinstance(text, str) or not PROPERTY_PATTERN.fullmatch(text):
        raise VerifyError(f"properties must look like 'P=? [F<=H \"lava\"]', 'Pmax=? [...]' or 'Pmin=? [...]', "
                          f"got {text!r}")
    known = set(labels) | {"init"}
    unknown = sorted(property_labels(text) - known)
    if unknown:
        raise VerifyError(f"property {text!r} refers to unknown label(s) {unknown}; the model has {sorted(known)}")
    if nondeterministic and not re.match(r"\s*P(max|min)", text):
        raise VerifyError(f"property {text!r} on an MDP must say Pmax=? or Pmin=? (which scheduler to assume)")


def validate_intervals(upper: sp.csr_array, lower: np.ndarray, row_groups: np.ndarray) -> None:
    """Check an interval matrix: ``0 <= lower <= upper <= 1`` entrywise (``lower`` aligned with
    ``upper.data``), and in every row ``sum(lower) <= 1 <= sum(upper)`` (some distribution fits)."""
    u = sp.csr_array(upper)
    lo = np.asarray(lower, dtype=np.float64)
    rows = u.shape[0]
    groups = _validate_shape(u.shape, row_groups)
    if lo.shape != u.data.shape:
        raise VerifyError(f"lower must have one value per stored entry of upper, shape {u.data.shape}, got {lo.shape}")
    row_of = np.repeat(np.arange(rows), np.diff(u.indptr))
    bad = ~np.isfinite(lo) | ~np.isfinite(u.data) | (lo < 0) | (lo > u.data) | (u.data > 1)
    if bad.any():
        k = int(np.argmax(bad))
        raise VerifyError(f"{_where(row_of[k], groups)} has the interval [{lo[k]}, {u.data[k]}] at column "
                          f"{u.indices[k]}; intervals must satisfy 0 <= lower <= upper <= 1")
    if np.diff(u.indptr).min() == 0:
        r = int(np.argmin(np.diff(u.indptr)))
        raise VerifyError(f"{_where(r, groups)} has no transition (empty row); give absorbing states an "
                          f"explicit self-loop")
    lo_sum = np.bincount(row_of, weights=lo, minlength=rows)
    hi_sum = np.bincount(row_of, weights=u.data, minlength=rows)
    off = np.maximum(lo_sum - 1.0, 1.0 - hi_sum)
    if off.max() > ROW_TOLERANCE:
        r = int(np.argmax(off))
        raise VerifyError(f"{_where(r, groups)} admits no distribution: lower bounds sum to {lo_sum[r]!r}, "
                          f"upper bounds to {hi_sum[r]!r}; need sum(lower) <= 1 <= sum(upper)")
