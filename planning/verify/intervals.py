"""Robust upper bounds from counts: Clopper-Pearson interval models checked in Storm's robust mode.

From counts ``n(s, a, s')`` each observed transition probability gets an exact (Clopper-Pearson)
binomial interval. **Bonferroni split**: with ``m`` intervals in the model and joint confidence
``1 - alpha``, each interval is built at level ``1 - alpha / m``; by the union bound all ``m``
contain their true probability at once with probability ``>= 1 - alpha``. On that event the true
model lies inside the interval model, so the worst case over the intervals (nature maximising the
probability of the property) is an upper bound on the true probability.

**Support assumption.** The intervals live on the *observed* successors: a successor never seen
from ``(s, a)`` is assumed impossible. Pass ``unseen="lava"`` (any label) to drop the assumption:
every counted row then gets one more successor, an absorbing state carrying that label, with the
interval ``[eps, CP upper for 0 hits in n(s, a)]`` -- all the unseen mass is assumed to go the worst
way, and the bound holds for every model consistent with the counts. On an MDP every action never
tried in a non-terminal state also becomes a choice that goes to that state with probability one (a
model consistent with the counts may do anything there). (``eps`` =
:data:`UNSEEN_FLOOR` = 1e-12 because Storm checks unbounded properties on interval models only when
every lower bound is positive, "graph preservation"; for the upper bound of a property that targets
the ``unseen`` label this changes nothing, since the maximiser sends as much mass there as it can.)

**Under a policy** the rows of the actions are mixed with the policy weights, lower and upper
bounds alike. The mixed box contains every mixture of the per-action distributions, so the bound
stays sound (it can be a little looser than the exact mixture set).

stormpy 2.0 supports interval models (``SparseDtmc[stormpy.Interval]``, ``SparseMdp[stormpy.Interval]``)
and resolves the uncertainty with ``uncertainty_resolution_mode`` = ``MAXIMIZE`` / ``MINIMIZE``
(DTMC), ``ROBUST`` (nature against the scheduler) or ``COOPERATIVE`` (nature with it), so Storm does
the check; :mod:`planning.verify.reference` has the independent interval iteration the tests
compare against. Caveat measured on stormpy 2.0: for unbounded properties on interval models Storm
switches to (non-sound) robust value iteration from below and reports only the trivial certified
upper bound 1.0; the value itself agrees with the reference to the solver precision (1e-9).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import scipy.sparse as sp

from probes.stats import clopper_pearson as _clopper_pearson
from planning.verify.model import CountModel, RowGroupedModel
from planning.verify.result import CheckResult, Empirical
from planning.verify.storm import (DEFAULT_PRECISION, _vectors, import_stormpy, parse, run_check, sound_environment,
                                   storm_labeling, storm_matrix)
from planning.verify.validate import VerifyError, validate_initial, validate_intervals, validate_labels


UNSEEN_FLOOR = 1e-12
"""Lower bound of the probability of the ``unseen`` successor (Storm needs positive lower bounds)."""


def clopper_pearson(hits: np.ndarray | int, trials: np.ndarray | int,
                    confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """:func:`probes.stats.clopper_pearson` (exact binomial interval), with bad counts a :class:`VerifyError`."""
    try:
        return _clopper_pearson(hits, trials, confidence)
    except ValueError as e:
        raise VerifyError(str(e)) from None


def empirical_rate(hits: int, episodes: int, confidence: float = 0.99) -> Empirical:
    """A simulated rate ``hits / episodes`` with its Clopper-Pearson interval."""
    lo, hi = clopper_pearson(hits, episodes, confidence)
    return Empirical(hits / episodes, float(lo), float(hi), int(hits), int(episodes), confidence)


@dataclass(frozen=True)
class IntervalModel(RowGroupedModel):
    """A DTMC or MDP whose transition probabilities are only known to lie in intervals."""

    upper: sp.csr_array
    """``float64[rows states]`` upper bounds; the stored entries are the possible successors."""
    lower: np.ndarray
    """``float64[nnz]`` lower bounds, aligned with ``upper.data``."""
    row_groups: np.ndarray
    """``int64[states + 1]``: the rows (choices) of state ``s`` are ``row_groups[s]:row_groups[s + 1]``."""
    labels: Mapping[str, np.ndarray] = field(default_factory=dict)
    initial: np.ndarray | None = None
    confidence: float = 1.0
    """Joint confidence that every interval holds its true probability (1.0 for exact intervals)."""

    @property
    def _columns(self):
        return self.upper

    def validate(self) -> None:
        """Intervals, labels and initial distribution (see :mod:`planning.verify.validate`)."""
        validate_intervals(self.upper, self.lower, self.row_groups)
        validate_labels(self.labels, self.num_states)
        validate_initial(self.initial, self.num_states)

    @classmethod
    def from_counts(cls, counts: CountModel, confidence: float = 0.95, policy: np.ndarray | None = None,
                    absorbing: Sequence[str] = (), unseen: str | None = None) -> "IntervalModel":
        """Clopper-Pearson intervals on ``counts`` at joint ``confidence`` (Bonferroni over all intervals).

        ``policy`` (``float[states actions]``): the interval DTMC under that policy; ``None``: the
        interval MDP over the counted actions (as :meth:`CountModel.to_mdp`; with ``unseen``, every action
        never tried in a non-terminal state too, see the module docstring). ``absorbing``: labels of
        terminal states (exact self-loops). ``unseen``: see the module docstring.
        """
        S, A = counts.num_states, counts.num_actions
        stop = np.zeros(S, dtype=bool)
        for name in absorbing:
            if name not in counts.labels:
                raise VerifyError(f"absorbing label {name!r} is not a label of the model {sorted(counts.labels)}")
            stop |= np.asarray(counts.labels[name], dtype=bool)
        if unseen is not None and unseen not in counts.labels:
            raise VerifyError(f"unseen label {unseen!r} is not a label of the model {sorted(counts.labels)}")
        visits = counts.visits()
        live = (visits > 0) & ~stop[:, None]                          # [S A] rows that get intervals
        c = sp.csr_array(counts.counts).tocoo()
        sa = c.row                                                    # s * A + a
        keep = live.reshape(-1)[sa] & (c.data > 0)
        sa, nxt, k = sa[keep], c.col[keep], c.data[keep]
        extra = S if unseen is not None else None                     # index of the unseen sink state
        live_rows = np.flatnonzero(live.reshape(-1))
        m = len(k) + (len(live_rows) if unseen is not None else 0)   # number of intervals (Bonferroni)
        level = 1.0 - (1.0 - confidence) / max(m, 1)
        n_row = visits.reshape(-1)
        lo, hi = clopper_pearson(k, n_row[sa], level)
        if unseen is not None:
            _, hi0 = clopper_pearson(np.zeros(len(live_rows)), n_row[live_rows], level)
            sa = np.concatenate([sa, live_rows])
            nxt = np.concatenate([nxt, np.full(len(live_rows), extra)])
            lo, hi = np.concatenate([lo, np.full(len(live_rows), UNSEEN_FLOOR)]), np.concatenate([hi, hi0])
        n_states = S + (unseen is not None)
        src_state, src_action = sa // A, sa % A
        loops = np.flatnonzero(stop)
        if unseen is not None:
            loops = np.append(loops, extra)
        if policy is not None:
            pi = np.asarray(policy, dtype=np.float64)
            if pi.shape != (S, A) or not np.all(np.isfinite(pi)) or pi.min() < 0 or np.abs(pi.sum(1) - 1).max() > 1e-9:
                raise VerifyError(f"policy must be a row-stochastic array of shape ({S}, {A}), got shape {pi.shape}")
            missing = (pi > 0) & ~live & ~stop[:, None]
            if missing.any():
                s, a = np.argwhere(missing)[0]
                raise VerifyError(f"the policy takes action {a} in state {s} but it was never counted; collect "
                                  f"more data, change the policy, or mark the state absorbing")
            w = pi[src_state, src_action]
            used = w > 0
            rows = np.concatenate([src_state[used], loops])
            cols = np.concatenate([nxt[used], loops])
            lo = np.concatenate([lo[used] * w[used], np.ones(len(loops))])       # self-loops are exact
            hi = np.concatenate([hi[used] * w[used], np.ones(len(loops))])
            groups = np.arange(n_states + 1)
        else:
            # per state: its live (s, a) rows in increasing a, then (see below) its untried actions or its self-loop
            # With ``unseen``, an action never tried in a non-terminal state is a choice too, going to the
            # unseen sink with probability one: nothing is known about it, and leaving it out would make
            # the Pmax upper bound (and the Pmin lower bound) a max (min) over fewer actions than the truth has.
            blind = (np.flatnonzero((~live & ~stop[:, None]).reshape(-1)) if unseen is not None
                     else np.zeros(0, np.int64))
            row_state = np.concatenate([live_rows // A, blind // A, loops])
            position = np.empty(len(row_state), dtype=np.int64)
            position[np.argsort(row_state, kind="stable")] = np.arange(len(row_state))
            rows = np.concatenate([position[np.searchsorted(live_rows, sa)], position[len(live_rows):]])
            cols = np.concatenate([nxt, np.full(len(blind), extra if extra is not None else 0), loops])
            one = np.ones(len(blind) + len(loops))
            lo, hi = np.concatenate([lo, one]), np.concatenate([hi, one])
            choices = np.bincount(row_state, minlength=n_states)
            if choices.min() == 0:
                s = int(np.argmin(choices))
                raise VerifyError(f"state {s} has no counted action; collect more data or mark it absorbing")
            groups = np.concatenate([[0], np.cumsum(choices)])
        upper, lower = _aggregate(rows, cols, lo, hi, shape=(int(groups[-1]), n_states))
        labels = {name: np.asarray(mask, dtype=bool) for name, mask in counts.labels.items()}
        if unseen is not None:
            labels = {name: np.append(mask, name == unseen) for name, mask in labels.items()}
        initial = None if counts.initial is None else np.append(np.asarray(counts.initial, dtype=np.float64),
                                                                [0.0] * (unseen is not None))
        return cls(upper, lower, groups, labels, initial, confidence)


def _aggregate(rows: np.ndarray, cols: np.ndarray, lo: np.ndarray, hi: np.ndarray,
               shape: tuple[int, int]) -> tuple[sp.csr_array, np.ndarray]:
    """Sum duplicate (row, col) entries of ``lo`` and ``hi`` into one sorted pattern: ``(upper csr, lower[nnz])``
    (done by hand because scipy may drop explicit zeros of ``lo``, and the two must share one pattern)."""
    key = rows.astype(np.int64) * shape[1] + cols
    uniq, inv = np.unique(key, return_inverse=True)
    lower = np.bincount(inv, weights=lo)
    upper_data = np.minimum(np.bincount(inv, weights=hi), 1.0)
    r, c = uniq // shape[1], uniq % shape[1]
    indptr = np.concatenate([[0], np.cumsum(np.bincount(r, minlength=shape[0]))])
    return sp.csr_array((upper_data, c, indptr), shape=shape), np.minimum(lower, upper_data)


def robust_state_values(model: IntervalModel, text: str, nature: str = "max",
                        precision: float = DEFAULT_PRECISION) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-state ``(value, lower, upper)``, each ``float64[states]``, of ``text`` on the interval model,
    the intervals resolved by ``nature``: ``"max"`` gives the upper bound over every model inside the
    intervals (the worst case for a property like ``F "lava"``), ``"min"`` the lower bound. On an MDP
    the scheduler follows the property's ``Pmax`` / ``Pmin`` and nature plays with it (Storm's
    COOPERATIVE mode) or against it (ROBUST). ``lower`` / ``upper`` are Storm's certified bounds
    (``nan`` where it gives none; see the module caveat)."""
    stormpy = import_stormpy()
    if nature not in ("max", "min"):
        raise VerifyError(f"nature must be 'max' or 'min', got {nature!r}")
    model.validate()
    if model.lower.min() <= 0:
        k = int(np.argmin(model.lower))
        raise VerifyError(f"Storm checks interval models only when every lower bound is positive (graph "
                          f"preservation), got lower bound {model.lower[k]} at stored entry {k}; drop impossible "
                          f"successors or give them a small positive lower bound")
    prop = parse(text, model.labels, nondeterministic=not model.is_dtmc)
    I = stormpy.Interval
    values = [I(float(a), float(b)) for a, b in zip(model.lower, model.upper.data)]
    groups = None if model.is_dtmc else np.asarray(model.row_groups)
    matrix = storm_matrix(stormpy, I, sp.csr_array(model.upper), values, groups)
    labeling = storm_labeling(stormpy, model.labels, model.initial_distribution)
    components = stormpy.models.SparseModelComponents[I](transition_matrix=matrix, state_labeling=labeling)
    kind = stormpy.models.SparseDtmc if model.is_dtmc else stormpy.models.SparseMdp
    sparse = kind[I](components)
    modes = stormpy.UncertaintyResolutionMode
    if model.is_dtmc:                  # no scheduler: nature alone resolves the intervals
        mode = modes.MAXIMIZE if nature == "max" else modes.MINIMIZE
    else:
        scheduler = "max" if text.lstrip().startswith("Pmax") else "min"
        mode = modes.COOPERATIVE if scheduler == nature else modes.ROBUST
    result = run_check(stormpy, sparse, prop, sound_environment(precision), uncertainty_resolution_mode=mode)
    return _vectors(result, model.num_states)


def robust_check(model: IntervalModel, text: str, nature: str = "max",
                 precision: float = DEFAULT_PRECISION) -> CheckResult:
    """:func:`robust_state_values` weighted by the model's initial distribution: with ``nature="max"``
    the probability is an upper bound on the true one for every model consistent with the intervals
    (with the model's joint ``confidence`` when they come from counts)."""
    start = time.perf_counter()
    value, lower, upper = robust_state_values(model, text, nature, precision)
    init = model.initial_distribution
    return CheckResult(text, float(init @ value), float(init @ lower), float(init @ upper), model.num_states,
                       time.perf_counter() - start)
