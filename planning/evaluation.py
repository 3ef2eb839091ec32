"""What a closed-loop run measured, with confidence intervals: outcomes and the planner-induced shift.

* :func:`summarize` -- per policy: ``success_rate`` and ``violation_rate`` (fraction of episodes with
  at least one violation) with exact Clopper-Pearson intervals; ``mean_true_return``, ``mean_steps``,
  ``ms_per_step`` and the mean imagined ``predicted_return`` with percentile bootstrap intervals over
  episodes (episodes are independent units).
* :func:`visited_accuracy` -- the ELK failure mode, measured: on the states the policy actually
  visited, the probes' readings against the true concepts (balanced accuracy / R^2, the metric that
  chose the probe, plus plain accuracy / MAE), each with a cluster bootstrap over episodes. Compare
  with the same probe's score on held-out dataset episodes (``probes/results.csv``): a planner that
  seeks states where the probes are wrong shows up as a drop.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from planning.closed_loop import EpisodeLog
from probes.metrics import R2, BalancedAccuracy
from probes.stats import bootstrap, clopper_pearson
from worlds.concepts import ConceptSchema
from worlds.estimate import Estimate

OUTCOME_METRICS: tuple[str, ...] = ("success_rate", "violation_rate", "mean_true_return", "mean_steps", "ms_per_step")


@dataclass(frozen=True)
class LoopSummary:
    """Outcome estimates of one :class:`EpisodeLog` (95% intervals by default)."""

    episodes: int
    success_rate: Estimate
    violation_rate: Estimate
    mean_true_return: Estimate
    mean_steps: Estimate
    ms_per_step: Estimate
    predicted_return: Estimate | None
    """Mean imagined return of the decisions (``None`` for policies that do not plan)."""

    def metrics(self) -> dict[str, Estimate]:
        return {k: getattr(self, k) for k in OUTCOME_METRICS}


def rate(hits: int, trials: int, level: float = 0.95) -> Estimate:
    """``hits / trials`` with its exact (Clopper-Pearson) interval."""
    lo, hi = clopper_pearson(int(hits), int(trials), level)
    return Estimate(hits / trials, float(lo), float(hi), level, 0, int(trials))


def mean_estimate(x: np.ndarray, *, groups: np.ndarray | None = None, n_boot: int = 1000, seed: int = 0,
                  level: float = 0.95) -> Estimate:
    """Mean of ``x[n]`` with a percentile bootstrap interval (resampling ``groups``; rows by default)."""
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), level)
    g = np.arange(x.size) if groups is None else groups
    return bootstrap(np.mean, x, groups=g, n_boot=n_boot, level=level, seed=seed)


def summarize(log: EpisodeLog, *, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> LoopSummary:
    """The outcome estimates of ``log`` (see the module docstring)."""
    e = log.num_episodes
    d = log.decisions
    kw = dict(n_boot=n_boot, seed=seed, level=level)
    return LoopSummary(
        episodes=e,
        success_rate=rate(int(log.success.sum()), e, level),
        violation_rate=rate(int((log.violations > 0).sum()), e, level),
        mean_true_return=mean_estimate(log.true_return, **kw),
        mean_steps=mean_estimate(log.steps, **kw),
        ms_per_step=mean_estimate(log.ms_per_step, **kw),
        predicted_return=mean_estimate(d.predicted_return, groups=d.episode, **kw) if len(d.episode) else None,
    )


def _accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.mean(np.asarray(y_true) == np.asarray(y_pred)))


def _mae(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.mean(np.abs(np.asarray(y_true, np.float64) - np.asarray(y_pred, np.float64))))


def visited_accuracy(log: EpisodeLog, schema: ConceptSchema, *, n_boot: int = 1000, seed: int = 0,
                     level: float = 0.95) -> dict[str, dict[str, Estimate]]:
    """``{concept: {metric: Estimate}}`` of the readings in ``log.visited`` against the true values.

    Binary and categorical concepts get ``balanced_accuracy`` (NaN when the visited states hold one
    class only: it then equals plain recall of that class) and ``accuracy``; scalar concepts get ``r2``
    and ``mae``. Intervals resample whole episodes. Concepts without readings are left out.
    """
    v = log.visited
    out: dict[str, dict[str, Estimate]] = {}
    for name, pred in v.readings.items():
        c, y = schema[name], np.asarray(v.truth[name])
        kw = dict(groups=v.episode, n_boot=n_boot, level=level, seed=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # sklearn warns on one-class samples; the NaN says it
            if c.kind == "scalar":
                out[name] = {"r2": bootstrap(R2(), y, pred, **kw), "mae": bootstrap(_mae, y, pred, **kw)}
            else:
                ba = (bootstrap(BalancedAccuracy(c.num_classes), y.astype(np.int64), pred.astype(np.int64), **kw)
                      if np.unique(y).size > 1 else Estimate(float("nan"), float("nan"), float("nan"), level))
                out[name] = {"balanced_accuracy": ba, "accuracy": bootstrap(_accuracy, y, pred, **kw)}
    return out
