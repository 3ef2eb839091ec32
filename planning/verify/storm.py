"""Storm (stormpy 2.x) on explicit models: build sparse DTMCs / MDPs, check PCTL property texts.

API notes for stormpy 2.0 (the 1.x examples found online no longer work): models are built as
``stormpy.models.SparseDtmc[float](SparseModelComponents[float](transition_matrix=..., state_labeling=...))``
from a ``stormpy.datastructures.SparseMatrixBuilder[float]`` (row groups = the choices of an MDP);
properties are parsed with ``stormpy.parse_property(text)`` (no model context needed: labels are
looked up at check time, so unknown labels are caught here first); checks go through
``stormpy.model_checking(model, property, environment=...)``.

Environment. We use ``stormpy.environments.sound()`` (``force_soundness``: the linear-equation
solver is optimistic value iteration, the min-max solver topological with sound sub-solvers), with
an ABSOLUTE termination precision (default 1e-9) instead of the default relative 1e-6. Storm then
returns certified per-state lower / upper bounds. A plain ``Environment()`` is not sound (Jacobi
iteration; bounds [0, 1.1e10] were measured). Requesting a scheduler can drop the certified
bounds, so :func:`scheduler` is a separate call from :func:`check`.

stormpy is imported lazily: the rest of :mod:`planning.verify` (models, validation, reference)
works without it.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Iterator, Mapping

import numpy as np
import scipy.sparse as sp

from planning.verify.model import ExplicitModel
from planning.verify.result import CheckResult
from planning.verify.validate import VerifyError, validate_model, validate_property

DEFAULT_PRECISION = 1e-9
"""Absolute termination precision of Storm's sound solvers."""


def import_stormpy() -> Any:
    """The ``stormpy`` module, or a one-line :class:`VerifyError` naming the fix when it is missing."""
    try:
        import stormpy
    except ImportError:
        raise VerifyError("model checking needs Storm's Python API (stormpy >= 2.0): pip install stormpy") from None
    return stormpy


@contextmanager
def quiet_storm(stormpy: Any) -> Iterator[None]:
    """Silence Storm's own logging (it prints ERROR/WARN lines to stderr; we raise our own errors)."""
    dev = stormpy.developer
    level = dev.get_log_level()
    dev.set_log_level(dev.LogLevel.OFF)
    try:
        yield
    finally:
        dev.set_log_level(level)


def sound_environment(precision: float = DEFAULT_PRECISION) -> Any:
    """Storm's sound environment with an absolute termination ``precision`` for both solvers."""
    stormpy = import_stormpy()
    if not 0 < precision < 1:
        raise VerifyError(f"precision must lie in (0, 1), got {precision}")
    env = stormpy.environments.sound()
    rational = stormpy.Rational(str(Fraction(precision).limit_denominator(10**15)))
    for solver in (env.solver().native(), env.solver().min_max()):
        solver.precision = rational
        solver.relative_termination_criterion = False
    return env


def storm_matrix(stormpy: Any, value_type: type, pattern: sp.csr_array, values: list,
                 row_groups: np.ndarray | None) -> Any:
    """A ``SparseMatrixBuilder[value_type]`` matrix with the sparsity ``pattern`` (sorted csr) and one value
    per stored entry; ``row_groups`` (``int64[states + 1]``) gives the rows of each state of an MDP
    (``None`` for a DTMC: Storm refuses a DTMC matrix with explicit row groups)."""
    rows, cols = pattern.shape
    row_of = np.repeat(np.arange(rows), np.diff(pattern.indptr))
    grouped = row_groups is not None
    builder = stormpy.datastructures.SparseMatrixBuilder[value_type](
        rows=rows, columns=cols, entries=pattern.nnz, force_dimensions=True,
        has_custom_row_grouping=grouped, row_groups=len(row_groups) - 1 if grouped else 0)
    starts = row_groups[:-1].tolist() if grouped else []
    builder.add_next_values(row_of.tolist(), pattern.indices.tolist(), values, starts)
    return builder.build()


def storm_labeling(stormpy: Any, labels: Mapping[str, np.ndarray], initial: np.ndarray) -> Any:
    """A ``StateLabeling`` with every label plus ``init`` (the support of ``initial``)."""
    n = len(initial)
    labeling = stormpy.models.StateLabeling(n)
    for name, mask in {"init": initial > 0, **labels}.items():
        labeling.add_label(name)
        labeling.set_states(name, stormpy.datastructures.BitVector(n, np.flatnonzero(mask).tolist()))
    return labeling


@dataclass(frozen=True)
class StormModel:
    """A validated :class:`ExplicitModel` and its Storm counterpart (build once, check many properties)."""

    model: ExplicitModel
    sparse: Any
    """The ``stormpy.models.SparseDtmc[float]`` / ``SparseMdp[float]``."""
    seconds: float
    """Wall time of building the Storm model (validation excluded)."""

    @property
    def is_dtmc(self) -> bool:
        return self.model.is_dtmc


def build(model: ExplicitModel) -> StormModel:
    """Validate ``model`` (:func:`~planning.verify.validate.validate_model`) and build it in Storm."""
    validate_model(model)
    return _build_validated(model)


def _build_validated(model: ExplicitModel) -> StormModel:
    stormpy = import_stormpy()
    start = time.perf_counter()
    m = sp.csr_array(model.matrix, copy=True)
    m.eliminate_zeros()
    m.sort_indices()
    groups = None if model.is_dtmc else np.asarray(model.row_groups)
    matrix = storm_matrix(stormpy, float, m, m.data.tolist(), groups)
    labeling = storm_labeling(stormpy, model.labels, model.initial_distribution)
    components = stormpy.models.SparseModelComponents[float](transition_matrix=matrix, state_labeling=labeling)
    kind = stormpy.models.SparseDtmc if model.is_dtmc else stormpy.models.SparseMdp
    sparse = kind[float](components)
    return StormModel(model, sparse, time.perf_counter() - start)


def parse(text: str, labels: Mapping[str, np.ndarray] | list[str], nondeterministic: bool) -> Any:
    """Check ``text`` (:func:`~planning.verify.validate.validate_property`) and parse it with Storm;
    a syntax error becomes a one-line :class:`VerifyError`."""
    stormpy = import_stormpy()
    validate_property(text, labels, nondeterministic)
    with quiet_storm(stormpy):
        try:
            props = stormpy.parse_properties(text)
        except RuntimeError as err:            # Storm raises RuntimeError("WrongFormatException: ...")
            first = str(err).strip().splitlines()[0].split("Exception: ")[-1]
            raise VerifyError(f"cannot parse property {text!r}: {first}") from None
    if len(props) != 1:
        raise VerifyError(f"give exactly one property per check, got {len(props)} in {text!r}")
    return props[0]


def _prepare(model: ExplicitModel | StormModel, text: str) -> tuple[StormModel, Any]:
    """Validate the model and the property, and parse it, all before Storm builds anything; then build."""
    if isinstance(model, StormModel):
        return model, parse(text, model.model.labels, nondeterministic=not model.is_dtmc)
    validate_model(model)
    prop = parse(text, model.labels, nondeterministic=not model.is_dtmc)
    return _build_validated(model), prop


def _vectors(result: Any, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-state ``(value, lower, upper)`` ``float64[n]`` of a quantitative Storm result (nan: no bound)."""
    value = np.asarray(result.get_value_vector(), dtype=np.float64)
    lower = np.asarray(result.get_lower_bound_vector(), dtype=np.float64) if result.has_lower_bounds() \
        else np.full(n, np.nan)
    upper = np.asarray(result.get_upper_bound_vector(), dtype=np.float64) if result.has_upper_bounds() \
        else np.full(n, np.nan)
    return value, lower, upper


def run_check(stormpy: Any, sparse: Any, prop: Any, env: Any, **kwargs: Any) -> Any:
    """``stormpy.model_checking`` with Storm's logging silenced and its errors as :class:`VerifyError`."""
    with quiet_storm(stormpy):
        try:
            return stormpy.model_checking(sparse, prop, environment=env, **kwargs)
        except RuntimeError as err:
            raise VerifyError(f"Storm could not check {prop.get_raw_formula()}: "
                              f"{str(err).strip().splitlines()[0]}") from None


def state_values(model: ExplicitModel | StormModel, text: str,
                 precision: float = DEFAULT_PRECISION) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-state ``(value, lower, upper)``, each ``float64[states]``, of the property ``text``
    (``lower`` / ``upper`` are Storm's certified bounds, ``nan`` where it gives none)."""
    stormpy = import_stormpy()
    built, prop = _prepare(model, text)
    result = run_check(stormpy, built.sparse, prop, sound_environment(precision))
    return _vectors(result, built.model.num_states)


def check(model: ExplicitModel | StormModel, text: str, precision: float = DEFAULT_PRECISION) -> CheckResult:
    """Check the property ``text`` (e.g. ``'P=? [F<=20 "lava"]'``) on ``model``; the probability and
    its certified bounds are weighted by the model's initial distribution."""
    stormpy = import_stormpy()
    built, prop = _prepare(model, text)
    start = time.perf_counter()
    result = run_check(stormpy, built.sparse, prop, sound_environment(precision))
    built_model = built.model
    value, lower, upper = _vectors(result, built_model.num_states)
    init = built_model.initial_distribution
    return CheckResult(text, float(init @ value), float(init @ lower), float(init @ upper),
                       built_model.num_states, time.perf_counter() - start)


def scheduler(model: ExplicitModel | StormModel, text: str, precision: float = DEFAULT_PRECISION) -> np.ndarray:
    """``int64[states]`` an optimal memoryless scheduler of an unbounded ``Pmax`` / ``Pmin`` property on an
    MDP: the choice index (within each state's row group) per state. A separate call from :func:`check`
    because asking Storm for a scheduler drops the certified bounds; bounded (``F<=H``) properties need
    memory (a step counter) and are refused."""
    stormpy = import_stormpy()
    if (model.model if isinstance(model, StormModel) else model).is_dtmc:
        raise VerifyError("a DTMC has no choices to schedule; build an MDP (CountModel.to_mdp) for a scheduler")
    built, prop = _prepare(model, text)
    result = run_check(stormpy, built.sparse, prop, sound_environment(precision), extract_scheduler=True)
    if not result.has_scheduler():
        raise VerifyError(f"Storm gave no scheduler for {text!r}; schedulers exist for unbounded properties "
                          f"(F, U), not bounded ones (F<=H)")
    sched = result.get_scheduler()
    return np.array([sched.get_choice(s).get_deterministic_choice() for s in range(built.model.num_states)],
                    dtype=np.int64)
