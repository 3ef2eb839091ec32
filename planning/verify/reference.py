"""An independent numpy / scipy reference for reachability, used to check the checker.

Nothing here shares code with Storm or with :mod:`planning.verify.storm`:

* bounded reachability ``F<=H target``: ``H`` backward Bellman sweeps (max / min over each state's
  choices);
* unbounded reachability ``F target`` on a DTMC: an exact sparse linear solve after removing the
  states that cannot reach the target (graph search); on an MDP: value iteration from 0, which
  converges to the least fixed point = the optimal reachability probability (max and min alike);
* interval models: the same iterations where, in each row, "nature" picks the successor
  distribution inside the intervals that maximises (or minimises) the expected value -- the
  standard greedy (sort successors by value, give each its lower bound, then pour the remaining
  mass into the best successors up to their upper bounds), O(n log n) per row, vectorised.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import scipy.sparse.csgraph as csgraph
import scipy.sparse.linalg as spla

from planning.verify.validate import VerifyError

DIRECTIONS = ("max", "min")


def _check_direction(direction: str) -> None:
    if direction not in DIRECTIONS:
        raise VerifyError(f"direction must be one of {DIRECTIONS}, got {direction!r}")


def group_reduce(x: np.ndarray, row_groups: np.ndarray, direction: str) -> np.ndarray:
    """``float[rows] -> float[states]``: max or min over the rows (choices) of each state."""
    _check_direction(direction)
    op = np.maximum if direction == "max" else np.minimum
    return op.reduceat(x, np.asarray(row_groups[:-1]))


def can_reach(matrix: sp.csr_array, row_groups: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``bool[states]``: states with a path (under some choices) to a ``target`` state (positive entries)."""
    states = matrix.shape[1]
    state_of_row = np.repeat(np.arange(states), np.diff(row_groups))
    coo = sp.csr_array(matrix).tocoo()
    keep = coo.data > 0
    # reversed edges s' -> s for every positive entry of s, plus a super-source (node `states`) -> targets
    hub = np.full(int(np.sum(target)), states)
    src = np.concatenate([coo.col[keep], hub])
    dst = np.concatenate([state_of_row[coo.row[keep]], np.flatnonzero(target)])
    graph = sp.csr_array((np.ones(len(src)), (src, dst)), shape=(states + 1, states + 1))
    order = csgraph.breadth_first_order(graph, states, directed=True, return_predecessors=False)
    reached = np.zeros(states + 1, dtype=bool)
    reached[order] = True
    return reached[:states]


def bounded_reach(matrix: sp.csr_array, row_groups: np.ndarray, target: np.ndarray, horizon: int,
                  direction: str = "max") -> np.ndarray:
    """``float64[states]`` probability of reaching ``target`` (``bool[states]``) within ``horizon`` steps."""
    t = np.asarray(target, dtype=bool)
    v = t.astype(np.float64)
    m = sp.csr_array(matrix)
    for _ in range(horizon):
        v = np.where(t, 1.0, group_reduce(m @ v, row_groups, direction))
    return v


def unbounded_reach(matrix: sp.csr_array, row_groups: np.ndarray, target: np.ndarray, direction: str = "max",
                    tol: float = 1e-14, max_iter: int = 1_000_000) -> np.ndarray:
    """``float64[states]`` probability of ever reaching ``target``: an exact linear solve on a DTMC,
    value iteration from 0 (stopped when no value moves by more than ``tol``) on an MDP."""
    t = np.asarray(target, dtype=bool)
    m = sp.csr_array(matrix)
    reach = can_reach(m, row_groups, t)
    if np.all(np.diff(row_groups) == 1):                     # DTMC: x = P_mm x + P_mt 1 on the "maybe" states
        maybe = reach & ~t
        v = t.astype(np.float64)
        if maybe.any():
            a = sp.identity(int(maybe.sum()), format="csc") - sp.csc_array(m[maybe][:, maybe])
            b = np.asarray(m[maybe][:, t].sum(axis=1)).ravel()
            v[maybe] = spla.spsolve(a, b)
        return v
    v = t.astype(np.float64)
    for _ in range(max_iter):
        new = np.where(t, 1.0, np.where(reach, group_reduce(m @ v, row_groups, direction), 0.0))
        if np.abs(new - v).max() <= tol:
            return new
        v = new
    raise VerifyError(f"reference value iteration did not converge to {tol} in {max_iter} iterations")


def interval_expectation(upper: sp.csr_array, lower: np.ndarray, v: np.ndarray, nature: str) -> np.ndarray:
    """``float64[rows]``: the max (``nature="max"``) or min over distributions ``p`` with
    ``lower <= p <= upper`` (entrywise on the stored pattern of ``upper``; ``lower`` is aligned with
    ``upper.data``) of ``sum_j p_j v_j``, for every row. Greedy: every entry gets its lower bound, the
    remaining mass ``1 - sum(lower)`` goes to the entries in order of decreasing (increasing) value."""
    _check_direction(nature)
    u = sp.csr_array(upper)
    rows = u.shape[0]
    row_of = np.repeat(np.arange(rows), np.diff(u.indptr))
    val = v[u.indices]
    order = np.lexsort((-val if nature == "max" else val, row_of))     # by row, then best value first
    slack = (u.data - lower)[order]
    budget = 1.0 - np.bincount(row_of, weights=lower, minlength=rows)
    excl = np.cumsum(slack) - slack                                    # exclusive running sum over all rows
    before = excl - excl[u.indptr[row_of]]                             # ... restarted at each row (row_of sorted)
    extra = np.clip(budget[row_of] - before, 0.0, slack)
    p = lower.astype(np.float64).copy()
    p[order] += extra
    return np.bincount(row_of, weights=p * val, minlength=rows)


def interval_bounded_reach(upper: sp.csr_array, lower: np.ndarray, row_groups: np.ndarray, target: np.ndarray,
                           horizon: int, nature: str = "max", direction: str = "max") -> np.ndarray:
    """``float64[states]`` bounded reachability on an interval model; ``nature`` resolves the intervals,
    ``direction`` the choices of an MDP."""
    t = np.asarray(target, dtype=bool)
    v = t.astype(np.float64)
    for _ in range(horizon):
        v = np.where(t, 1.0, group_reduce(interval_expectation(upper, lower, v, nature), row_groups, direction))
    return v


def interval_unbounded_reach(upper: sp.csr_array, lower: np.ndarray, row_groups: np.ndarray, target: np.ndarray,
                             nature: str = "max", direction: str = "max", tol: float = 1e-14,
                             max_iter: int = 1_000_000) -> np.ndarray:
    """``float64[states]`` unbounded reachability on an interval model: value iteration from 0 (the least
    fixed point, i.e. the value of the reachability game between the scheduler and nature)."""
    t = np.asarray(target, dtype=bool)
    reach = can_reach(upper, row_groups, t)
    v = t.astype(np.float64)
    for _ in range(max_iter):
        new = np.where(t, 1.0, np.where(
            reach, group_reduce(interval_expectation(upper, lower, v, nature), row_groups, direction), 0.0))
        if np.abs(new - v).max() <= tol:
            return new
        v = new
    raise VerifyError(f"reference interval iteration did not converge to {tol} in {max_iter} iterations")
