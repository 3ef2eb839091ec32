"""Results of model checking: one checked property, and the report row of the summary.

The summary schema is ``{"property", "policy", "probability", "upper_bound", "empirical", "states"}``
(see :meth:`PropertyReport.to_dict`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class CheckResult:
    """One property checked by Storm, its value weighted by the model's initial distribution.

    ``lower`` / ``upper`` are Storm's certified bounds (sound value iteration) when it provides them,
    ``nan`` otherwise; for a robust (interval-model) check ``probability`` is the value under the
    worst-case resolution of the intervals, see :mod:`planning.verify.intervals`.
    """

    property: str
    """The PCTL text, e.g. ``'P=? [F<=20 "lava"]'``."""
    probability: float
    """The computed probability (initial-distribution weighted)."""
    lower: float
    """Certified lower bound on ``probability`` (``nan`` if Storm gave none)."""
    upper: float
    """Certified upper bound on ``probability`` (``nan`` if Storm gave none)."""
    states: int
    """Number of states of the checked model."""
    seconds: float
    """Wall time of Storm's model check (validation, parsing and building the model excluded)."""


@dataclass(frozen=True)
class Empirical:
    """A rate measured by simulation, with its Clopper-Pearson interval."""

    rate: float
    """``hits / episodes``."""
    lower: float
    upper: float
    hits: int
    episodes: int
    confidence: float
    """Two-sided confidence level of ``[lower, upper]``, e.g. ``0.99``."""

    def contains(self, p: float) -> bool:
        """Whether ``p`` lies in the interval."""
        return self.lower <= p <= self.upper


@dataclass(frozen=True)
class PropertyReport:
    """One row of the verification summary: a property under a policy, checked and measured."""

    property: str
    """The PCTL text."""
    policy: str
    """Name of the policy (or planner) the model was built under."""
    probability: float
    """Storm's answer on the point-estimate model."""
    upper_bound: float | None
    """Robust upper bound over every model consistent with the counts (``None`` if not computed)."""
    empirical: Empirical | None
    """Rate measured in the real world under the same policy (``None`` if not measured)."""
    states: int
    """Number of states of the checked model."""

    def to_dict(self) -> dict:
        """The summary row ``{"property", "policy", "probability", "upper_bound", "empirical", "states"}``
        (``empirical`` is a dict ``{rate, lower, upper, hits, episodes, confidence}`` or ``None``)."""
        return {
            "property": self.property,
            "policy": self.policy,
            "probability": self.probability,
            "upper_bound": self.upper_bound,
            "empirical": None if self.empirical is None else asdict(self.empirical),
            "states": self.states,
        }
