"""One row of the probe harness's results table, and its CSV file.

Every row is one number with its interval: (method, site, concept, split, metric) identify it and
``estimate, ci_low, ci_high`` give it. Names are fixed so that tables from different runs join:
splits are :data:`SPLITS`, metrics :data:`METRICS`, and the baseline rows use the methods in
:data:`BASELINE_METHODS` (``"prior"``: the label prior, ``"random_model"``: the probe on an
untrained dynamics network, ``"observation"``: the probe on the raw observation).
"""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Iterable

from probes.stats import Estimate
from worlds.atomic import atomic_write_text

SPLITS: tuple[str, ...] = ("test", "ood", "imagined_k1", "imagined_k5", "imagined_k15", "test_nonterminal")
"""``test_nonterminal``: the test rows that are not an episode's terminal step (the history baseline only:
what the history reveals where a planner still acts -- a terminal event is usually in the frame)."""
METRICS: tuple[str, ...] = (
    "balanced_accuracy", "auroc", "macro_f1", "r2", "mae", "ece", "selectivity", "compression",
    "compression_control", "codelength", "codelength_control",
    "state_consistency", "causal_sufficiency", "causal_sufficiency_null", "causal_sufficiency_probe",
    "causal_sufficiency_probe_null", "causal_necessity", "causal_necessity_null",
)
"""``compression_control``: MDL compression of the same probe method on the control task's labels.
``codelength`` / ``codelength_control``: the online code length in bits of the coded test rows (:mod:`probes.mdl`; a
total, so compare it only across rows of one run: every method and site codes the same test rows).

The model-based checks (:mod:`probes.consistency`, :mod:`probes.causal`; split ``test``): ``state_consistency``
(agreement across histories reaching one true state), ``causal_sufficiency`` / ``_null`` (success rate of
probe-direction / same-norm random edits, judged on the decoded imagined future of a world scenario),
``causal_sufficiency_probe`` / ``_null`` (the weaker generic criterion: the same probe, not a decoded future,
judges whether its edit still reads k steps later), ``causal_necessity`` / ``_null`` (prediction-loss rise after
LEACE / random-subspace erasure)."""
BASELINE_METHODS: tuple[str, ...] = ("prior", "random_model", "observation")


@dataclass(frozen=True)
class ResultRow:
    """One reported number: a metric of a probe method at a latent site for a concept on a split."""

    method: str
    """Probe method name (e.g. ``"linear"``) or a baseline in :data:`BASELINE_METHODS`."""
    site: str
    """Name of the latent site the probe reads (see the dynamics model's latent cache)."""
    concept: str
    """Concept name from the world's schema."""
    split: str
    """One of :data:`SPLITS`."""
    metric: str
    """One of :data:`METRICS`."""
    estimate: float
    ci_low: float
    ci_high: float

    def __post_init__(self) -> None:
        for name in ("method", "site", "concept"):
            v = getattr(self, name)
            if not isinstance(v, str) or not v or "\n" in v:
                raise ValueError(f"ResultRow.{name} must be a non-empty one-line string, got {v!r}")
        if self.split not in SPLITS:
            raise ValueError(f"ResultRow.split must be one of {SPLITS}, got {self.split!r}")
        if self.metric not in METRICS:
            raise ValueError(f"ResultRow.metric must be one of {METRICS}, got {self.metric!r}")
        for name in ("estimate", "ci_low", "ci_high"):
            object.__setattr__(self, name, float(getattr(self, name)))
        lo, est, hi = self.ci_low, self.estimate, self.ci_high
        if not any(math.isnan(v) for v in (lo, est, hi)) and not lo <= hi:
            raise ValueError(f"ResultRow needs ci_low <= ci_high, got [{lo}, {hi}]")

    @classmethod
    def from_estimate(cls, method: str, site: str, concept: str, split: str, metric: str, est: Estimate) -> "ResultRow":
        return cls(method, site, concept, split, metric, est.estimate, est.lower, est.upper)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(ResultRow))


def write_results_csv(rows: Iterable[ResultRow], path: str | os.PathLike) -> Path:
    """Write ``rows`` to ``path`` atomically (temp file in the same folder, fsync, os.replace)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        if not isinstance(row, ResultRow):
            raise TypeError(f"rows must be ResultRow objects, got {type(row).__name__}")
        d = row.to_dict()
        d.update({k: repr(d[k]) for k in ("estimate", "ci_low", "ci_high")})  # repr: round-trips exactly
        writer.writerow(d)
    path = atomic_write_text(path, buf.getvalue())
    return path


def read_results_csv(path: str | os.PathLike) -> list[ResultRow]:
    """Read a file written by :func:`write_results_csv` (rows are validated again)."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != COLUMNS:
            raise ValueError(f"{path}: expected columns {COLUMNS}, got {reader.fieldnames}")
        return [ResultRow(**{**r, **{k: float(r[k]) for k in ("estimate", "ci_low", "ci_high")}}) for r in reader]
