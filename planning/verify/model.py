"""Explicit finite models for the checker: counted transitions and the DTMC / MDP made from them.

Two objects, split the way a fitter is split from what it fits:

* :class:`CountModel` -- transition *counts* ``n(s, a, s')`` (from rollouts of a world or of a
  learned model over an identified ontology), state labels and the initial distribution. The
  maximum-likelihood estimate is ``P(s'|s,a) = n(s,a,s') / n(s,a)``.
* :class:`ExplicitModel` -- what Storm (and :mod:`planning.verify.reference`) reads: a row-grouped
  sparse matrix ``[rows states]`` (one row per (state, action) choice; a DTMC has exactly one row
  per state), boolean label masks and the initial distribution.

Terminal states (e.g. ``lava``, ``goal``) end an episode, so they are usually never expanded;
name their labels in ``absorbing`` and they get an explicit self-loop, whatever was counted.
Any other (state, action) that the policy uses but that was never counted is an error (guessing
its successors would silently make the answer optimistic).

The label ``init`` is reserved: Storm marks the support of the initial distribution with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import scipy.sparse as sp

from planning.verify.validate import LABEL_PATTERN, VerifyError


class RowGroupedModel:
    """What every explicit model shares: ``row_groups`` (Storm's choice layout), ``initial``, and the
    number of columns of ``_columns`` (a matrix ``[rows states]``: probabilities or interval bounds)."""

    row_groups: np.ndarray
    initial: np.ndarray | None

    @property
    def num_states(self) -> int:
        return int(self._columns.shape[1])

    @property
    def is_dtmc(self) -> bool:
        """Whether every state has exactly one row (no choices left to resolve)."""
        return bool(np.all(np.diff(self.row_groups) == 1))

    @property
    def initial_distribution(self) -> np.ndarray:
        """``float64[states]``, the default (state 0) filled in."""
        if self.initial is not None:
            return np.asarray(self.initial, dtype=np.float64)
        return np.eye(1, self.num_states).ravel()


@dataclass(frozen=True)
class ExplicitModel(RowGroupedModel):
    """A finite DTMC (one row per state) or MDP (a group of rows per state) in sparse form."""

    matrix: sp.csr_array
    """``float64[rows states]`` transition probabilities, one row per (state, choice)."""
    row_groups: np.ndarray
    """``int64[states + 1]``: the rows of state ``s`` are ``row_groups[s]:row_groups[s + 1]``."""
    labels: Mapping[str, np.ndarray] = field(default_factory=dict)
    """Label name -> ``bool[states]`` mask of the states carrying it."""
    initial: np.ndarray | None = None
    """``float64[states]`` initial distribution; ``None`` means state 0 with probability one."""

    @property
    def _columns(self):
        return self.matrix

    def labels_of(self, state: int) -> frozenset[str]:
        """The set of label names of one state."""
        return frozenset(name for name, mask in self.labels.items() if mask[state])

    def mask(self, label: str) -> np.ndarray:
        """``bool[states]`` mask of ``label`` (``init`` = support of the initial distribution)."""
        if label == "init":
            return self.initial_distribution > 0
        if label not in self.labels:
            raise VerifyError(f"unknown label {label!r}; the model has {sorted(self.labels)} (and 'init')")
        return np.asarray(self.labels[label], dtype=bool)

    @classmethod
    def dtmc(cls, matrix, labels: Mapping[str, np.ndarray] | None = None,
             initial: np.ndarray | None = None) -> "ExplicitModel":
        """A DTMC from a ``[states states]`` matrix (dense array or any scipy sparse matrix)."""
        m = sp.csr_array(matrix, dtype=np.float64)
        return cls(m, np.arange(m.shape[0] + 1, dtype=np.int64), dict(labels or {}), initial)

    @classmethod
    def mdp(cls, matrix, choices: Sequence[int], labels: Mapping[str, np.ndarray] | None = None,
            initial: np.ndarray | None = None) -> "ExplicitModel":
        """An MDP from a ``[rows states]`` matrix whose rows are grouped by state, ``choices[s]`` rows each."""
        m = sp.csr_array(matrix, dtype=np.float64)
        groups = np.concatenate([[0], np.cumsum(np.asarray(choices, dtype=np.int64))])
        return cls(m, groups, dict(labels or {}), initial)


@dataclass(frozen=True)
class CountModel:
    """Counted transitions ``n(s, a, s')`` with labels and an initial distribution.

    ``counts`` is ``float64[states actions states]`` in scipy sparse form, stored as a
    ``[(states actions) states]`` matrix (row ``s * actions + a``). Counts need not be integers
    (exact probabilities also work: they are normalised per row).
    """

    counts: sp.csr_array
    """``float64[(states actions) states]`` counts; row ``s * num_actions + a`` holds ``n(s, a, .)``."""
    num_actions: int
    labels: Mapping[str, np.ndarray] = field(default_factory=dict)
    """Label name -> ``bool[states]``."""
    initial: np.ndarray | None = None
    """``float64[states]`` initial distribution (``None``: state 0)."""

    def __post_init__(self) -> None:
        rows, states = self.counts.shape
        if self.num_actions < 1 or rows != states * self.num_actions:
            raise VerifyError(f"counts must have shape (states * actions, states) with actions={self.num_actions}, "
                              f"got {(rows, states)}")
        if self.counts.nnz and (not np.all(np.isfinite(self.counts.data)) or self.counts.data.min() < 0):
            raise VerifyError("counts must be finite and >= 0; got a negative, NaN or inf count")
        for name, mask in self.labels.items():
            if not LABEL_PATTERN.fullmatch(name) or name == "init":
                raise VerifyError(f"label names must match {LABEL_PATTERN.pattern} and not be 'init', got {name!r}")
            if np.shape(mask) != (states,):
                raise VerifyError(f"label {name!r} must be a mask of shape ({states},), got {np.shape(mask)}")

    @property
    def num_states(self) -> int:
        return int(self.counts.shape[1])

    @classmethod
    def from_transitions(cls, states: np.ndarray, actions: np.ndarray, next_states: np.ndarray,
                         num_states: int, num_actions: int, labels: Mapping[str, np.ndarray] | None = None,
                         initial: np.ndarray | None = None) -> "CountModel":
        """Count observed transitions ``(states[k], actions[k], next_states[k])`` (``int[k]`` each)."""
        s, a, t = (np.asarray(x, dtype=np.int64).ravel() for x in (states, actions, next_states))
        if not (len(s) == len(a) == len(t)):
            raise VerifyError(f"states, actions, next_states must have one length, got {len(s)}, {len(a)}, {len(t)}")
        for name, x, hi in (("states", s, num_states), ("actions", a, num_actions), ("next_states", t, num_states)):
            if len(x) and (x.min() < 0 or x.max() >= hi):
                raise VerifyError(f"{name} must lie in [0, {hi}), got values in [{x.min()}, {x.max()}]")
        counts = sp.coo_array((np.ones(len(s)), (s * num_actions + a, t)),
                              shape=(num_states * num_actions, num_states)).tocsr()
        counts.sum_duplicates()
        return cls(counts, num_actions, dict(labels or {}), initial)

    def visits(self) -> np.ndarray:
        """``float64[states actions]`` total count ``n(s, a)``."""
        return np.asarray(self.counts.sum(axis=1)).reshape(self.num_states, self.num_actions)

    def _absorbing(self, absorbing: Sequence[str]) -> np.ndarray:
        mask = np.zeros(self.num_states, dtype=bool)
        for name in absorbing:
            if name not in self.labels:
                raise VerifyError(f"absorbing label {name!r} is not a label of the model {sorted(self.labels)}")
            mask |= np.asarray(self.labels[name], dtype=bool)
        return mask

    def _estimate(self) -> sp.csr_array:
        """``[(states actions) states]`` maximum-likelihood probabilities (rows with no count stay empty)."""
        n = self.visits().reshape(-1)
        scale = np.divide(1.0, n, out=np.zeros_like(n), where=n > 0)
        return sp.csr_array(sp.diags_array(scale) @ self.counts)

    def to_dtmc(self, policy: np.ndarray, absorbing: Sequence[str] = ()) -> ExplicitModel:
        """The DTMC of the estimated dynamics under a fixed stochastic ``policy`` (``float[states actions]``,
        rows summing to one): ``P(s'|s) = sum_a policy[s, a] * n(s,a,s') / n(s,a)``."""
        pi = np.asarray(policy, dtype=np.float64)
        if pi.shape != (self.num_states, self.num_actions):
            raise VerifyError(f"policy must have shape ({self.num_states}, {self.num_actions}), got {pi.shape}")
        if not np.all(np.isfinite(pi)) or pi.min() < 0 or np.abs(pi.sum(1) - 1).max() > 1e-9:
            bad = int(np.argmax(~np.isfinite(pi).all(1) | (pi.min(1) < 0) | (np.abs(pi.sum(1) - 1) > 1e-9)))
            raise VerifyError(f"policy row of state {bad} must be a distribution over actions, got {pi[bad].tolist()}")
        stop = self._absorbing(absorbing)
        missing = (pi > 0) & (self.visits() == 0) & ~stop[:, None]
        if missing.any():
            s, a = np.argwhere(missing)[0]
            raise VerifyError(f"the policy takes action {a} in state {s} ({int(missing.sum())} such pairs) but it was "
                              f"never counted; collect more data, change the policy, or mark the state absorbing")
        mix = sp.csr_array(sp.coo_array((pi.reshape(-1), (np.repeat(np.arange(self.num_states), self.num_actions),
                                                          np.arange(self.num_states * self.num_actions)))))
        matrix = sp.csr_array(mix @ self._estimate())
        return ExplicitModel.dtmc(_make_absorbing(matrix, stop), self.labels, self.initial)

    def to_mdp(self, absorbing: Sequence[str] = ()) -> ExplicitModel:
        """The MDP of the estimated dynamics: the choices of state ``s`` are its *counted* actions, in
        increasing order (absorbing states get one self-loop choice); :meth:`mdp_actions` maps each
        row back to its action."""
        stop = self._absorbing(absorbing)
        visited = self.visits() > 0
        visited[stop] = False
        lost = ~visited.any(1) & ~stop
        if lost.any():
            raise VerifyError(f"state {int(np.argmax(lost))} has no counted action ({int(lost.sum())} such states); "
                              f"collect more data or mark it absorbing")
        keep = np.flatnonzero(visited.reshape(-1))          # rows (s * A + a) that become choices
        loops = np.flatnonzero(stop)
        est = self._estimate()[keep].tocoo()
        # new row order: by state; a state's counted actions in increasing order, or its self-loop row
        row_state = np.concatenate([keep // self.num_actions, loops])
        position = np.empty(len(row_state), dtype=np.int64)
        position[np.argsort(row_state, kind="stable")] = np.arange(len(row_state))
        r = np.concatenate([position[est.row], position[len(keep):]])
        c = np.concatenate([est.col, loops])
        v = np.concatenate([est.data, np.ones(len(loops))])
        matrix = sp.coo_array((v, (r, c)), shape=(len(row_state), self.num_states)).tocsr()
        return ExplicitModel.mdp(matrix, visited.sum(1) + stop, self.labels, self.initial)

    def mdp_actions(self, absorbing: Sequence[str] = ()) -> np.ndarray:
        """``int64[rows]`` the action behind each row of :meth:`to_mdp` (``-1`` for absorbing self-loops)."""
        stop = self._absorbing(absorbing)
        visited = self.visits() > 0
        visited[stop] = False
        state, action = np.nonzero(visited)
        rows = np.concatenate([state, np.flatnonzero(stop)])
        acts = np.concatenate([action, np.full(stop.sum(), -1)])
        return acts[np.argsort(rows, kind="stable")]


def _make_absorbing(matrix: sp.csr_array, stop: np.ndarray) -> sp.csr_array:
    """``matrix`` with the rows of the states in ``stop`` replaced by self-loops (a DTMC: square)."""
    if not stop.any():
        return matrix
    keep = sp.diags_array((~stop).astype(np.float64))
    loops = sp.diags_array(stop.astype(np.float64))
    out = sp.csr_array(keep @ matrix + loops)
    out.eliminate_zeros()
    return out

