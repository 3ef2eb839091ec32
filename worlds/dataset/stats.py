"""Streaming per-concept base rates: how often each concept takes each value in a dataset.

A :class:`ConceptStats` accumulates sufficient statistics episode by episode (class counts for
binary / categorical concepts; count, mean, sum of squared deviations, min and max for scalar
ones) and merges with another (Chan et al.'s parallel update, numerically stable, so per-split
statistics combine exactly into the whole-dataset ones). :meth:`ConceptStats.summary` gives the
JSON-ready base rates recorded in every manifest and returned by ``collect``:

* binary       ``{"kind": "binary", "count": n, "rate": mean}``
* categorical  ``{"kind": "categorical", "count": n, "freq": {class: frequency}}``
* scalar       ``{"kind": "scalar", "count": n, "mean": m, "std": s, "min": lo, "max": hi}``

(rates are ``None`` when ``count`` is 0).
"""

from __future__ import annotations

import copy
from typing import Any, Mapping

import numpy as np

from worlds.concepts import ConceptSchema


class ConceptStats:
    """Accumulates base rates of every concept of ``schema`` over the steps it is shown."""

    def __init__(self, schema: ConceptSchema):
        self.schema = schema
        self.count = 0
        self._counts = {c.name: np.zeros(c.num_classes, np.int64) for c in schema if c.kind != "scalar"}
        self._mean = {c.name: 0.0 for c in schema if c.kind == "scalar"}
        self._m2 = dict.fromkeys(self._mean, 0.0)
        self._min = dict.fromkeys(self._mean, np.inf)
        self._max = dict.fromkeys(self._mean, -np.inf)

    def update(self, concepts: Mapping[str, np.ndarray]) -> "ConceptStats":
        """Add the steps of one episode: ``{name: values[t]}`` (already validated against the schema)."""
        n = len(next(iter(concepts.values()))) if concepts else 0
        if n == 0:
            return self
        for name, counts in self._counts.items():
            counts += np.bincount(np.asarray(concepts[name], np.int64), minlength=len(counts))
        for name in self._mean:
            v = np.asarray(concepts[name], np.float64)
            self._combine_scalar(name, n, float(v.mean()), float(((v - v.mean()) ** 2).sum()), float(v.min()), float(v.max()))
        self.count += n
        return self

    def merge(self, other: "ConceptStats") -> "ConceptStats":
        """A new accumulator holding the steps of both ``self`` and ``other``."""
        out = copy.deepcopy(self)
        for name in out._counts:
            out._counts[name] += other._counts[name]
        if other.count:
            for name in out._mean:
                out._combine_scalar(name, other.count, other._mean[name], other._m2[name], other._min[name], other._max[name])
        out.count += other.count
        return out

    def _combine_scalar(self, name: str, n_b: int, mean_b: float, m2_b: float, lo: float, hi: float) -> None:
        # Chan, Golub & LeVeque (1979) pairwise update; self.count is the size of the "a" part.
        n_a, n = self.count, self.count + n_b
        delta = mean_b - self._mean[name]
        self._mean[name] += delta * n_b / n
        self._m2[name] += m2_b + delta**2 * n_a * n_b / n
        self._min[name] = min(self._min[name], lo)
        self._max[name] = max(self._max[name], hi)

    def summary(self) -> dict[str, dict[str, Any]]:
        """JSON-ready base rates of every concept (see the module docstring for the format)."""
        out: dict[str, dict[str, Any]] = {}
        n = self.count
        for c in self.schema:
            if c.kind == "binary":
                out[c.name] = {"kind": "binary", "count": n, "rate": float(self._counts[c.name][1] / n) if n else None}
            elif c.kind == "categorical":
                freq = self._counts[c.name] / n if n else [None] * len(c.classes)
                out[c.name] = {"kind": "categorical", "count": n,
                               "freq": {k: (float(f) if n else None) for k, f in zip(c.classes, freq)}}
            else:
                ok = n > 0
                out[c.name] = {
                    "kind": "scalar", "count": n,
                    "mean": self._mean[c.name] if ok else None,
                    "std": float(np.sqrt(self._m2[c.name] / n)) if ok else None,
                    "min": self._min[c.name] if ok else None,
                    "max": self._max[c.name] if ok else None,
                }
        return out


def rare_concepts(base_rates: Mapping[str, Mapping[str, Any]], min_rate: float) -> tuple[str, ...]:
    """Names of concepts with a value seen in fewer than ``min_rate`` of the steps.

    A binary concept is rare when ``min(rate, 1 - rate) < min_rate`` (almost always false, or almost
    always true); a categorical one when some class has frequency below ``min_rate``. Probes cannot
    learn a concept from data that (almost) never shows both values. Scalar concepts are rare only
    when constant (``std == 0``). Concepts with no steps at all are reported as rare.
    """
    rare = []
    for name, r in base_rates.items():
        if r["count"] == 0:
            rare.append(name)
        elif r["kind"] == "binary":
            if min(r["rate"], 1.0 - r["rate"]) < min_rate:
                rare.append(name)
        elif r["kind"] == "categorical":
            if min(r["freq"].values()) < min_rate:
                rare.append(name)
        elif r["std"] == 0.0:
            rare.append(name)
    return tuple(rare)
