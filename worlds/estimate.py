"""``Estimate``: every number ontolab reports people compare carries its confidence interval.

Defined once, at the lowest layer, so that every stage (dynamics evaluation, probes, planning,
verification) returns the same type.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its confidence interval."""

    estimate: float
    """The metric on the full sample (for several seeds: the mean over seeds; bootstrap bias-corrected for a
    metric that declares ``bias_corrected``, e.g. ECE -- see :func:`probes.stats.bias_corrected`)."""
    lower: float
    """Lower end of the ``level`` confidence interval."""
    upper: float
    """Upper end of the ``level`` confidence interval."""
    level: float = 0.95
    """Nominal coverage of ``[lower, upper]``."""
    n_boot: int = 0
    """Number of bootstrap resamples drawn (0 if the interval did not come from a bootstrap)."""
    n_groups: int = 0
    """Number of independent units resampled (episodes; seeds for :func:`combine_seeds`)."""
    n_skipped: int = 0
    """Resamples skipped because the metric was undefined on them (e.g. one class only)."""
    count: int = 0
    """Elements pooled into the estimate (e.g. cells, steps), where that differs from ``n_groups``."""

    @property
    def half_width(self) -> float:
        return (self.upper - self.lower) / 2

    def contains(self, value: float) -> bool:
        return self.lower <= value <= self.upper

    def as_json(self) -> dict[str, float]:
        """``{"estimate", "ci_low", "ci_high"}``: how results files and ``summary.json`` write an estimate."""
        return {"estimate": self.estimate, "ci_low": self.lower, "ci_high": self.upper}

    def __str__(self) -> str:
        return f"{self.estimate:.4g} [{self.lower:.4g}, {self.upper:.4g}]"
