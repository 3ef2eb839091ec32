"""Human concepts: the human side of an ontology.

A :class:`ConceptSchema` lists the named concepts a world labels for every state. Nothing
downstream of ``worlds/`` may assume a particular world's concept names: probes, rewards and
planners read them from the schema.

Kinds:

* ``binary``       -- values in {0, 1}, stored as ``uint8``;
* ``categorical``  -- values in ``range(len(classes))``, stored as ``int64``;
* ``scalar``       -- real values with a unit and an inclusive range ``[low, high]``, stored as
  ``float32``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

import numpy as np

ConceptKind = Literal["binary", "categorical", "scalar"]
KINDS: tuple[str, ...] = ("binary", "categorical", "scalar")
_DTYPES = {"binary": np.uint8, "categorical": np.int64, "scalar": np.float32}


@dataclass(frozen=True)
class Concept:
    """One named concept with its kind and a one-line description a human would recognise."""

    name: str
    kind: ConceptKind
    description: str
    classes: tuple[str, ...] = ()
    """Class names, for ``categorical`` concepts only."""
    unit: str = ""
    """Unit of a ``scalar`` concept (e.g. ``"cells"``, ``"m/s"``)."""
    low: float = -math.inf
    """Smallest value a ``scalar`` concept takes."""
    high: float = math.inf
    """Largest value a ``scalar`` concept takes."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "low", float(self.low))
        object.__setattr__(self, "high", float(self.high))
        object.__setattr__(self, "classes", tuple(self.classes))
        if not self.name.isidentifier():
            raise ValueError(f"concept name must be an identifier, got {self.name!r}")
        if self.kind not in KINDS:
            raise ValueError(f"concept {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        if not self.description or "\n" in self.description:
            raise ValueError(f"concept {self.name!r}: description must be one non-empty line")
        if self.kind == "categorical" and len(self.classes) < 2:
            raise ValueError(f"categorical concept {self.name!r} needs >= 2 classes, got {self.classes}")
        if self.kind != "categorical" and self.classes:
            raise ValueError(f"concept {self.name!r}: only categorical concepts have classes")
        if self.kind == "scalar" and not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ValueError(f"scalar concept {self.name!r} needs a finite range, got [{self.low}, {self.high}]")
        if self.kind == "scalar" and not self.low <= self.high:
            raise ValueError(f"scalar concept {self.name!r}: low {self.low} > high {self.high}")

    @property
    def dtype(self) -> np.dtype:
        """The numpy dtype this concept's values are stored with."""
        return np.dtype(_DTYPES[self.kind])

    @property
    def num_classes(self) -> int:
        """2 for binary, ``len(classes)`` for categorical, 0 for scalar."""
        return {"binary": 2, "categorical": len(self.classes), "scalar": 0}[self.kind]

    def check(self, values: np.ndarray) -> None:
        """Raise ``ValueError`` naming this concept if ``values`` are not valid for its kind."""
        v = np.asarray(values)
        if self.kind == "scalar":
            if not np.all(np.isfinite(v)):
                raise ValueError(f"concept {self.name!r}: values must be finite")
            if v.size and (v.min() < self.low or v.max() > self.high):
                raise ValueError(
                    f"concept {self.name!r}: values must lie in [{self.low}, {self.high}], "
                    f"got [{v.min()}, {v.max()}]"
                )
        else:
            k = self.num_classes
            if v.size and (not np.all(v == np.round(v)) or v.min() < 0 or v.max() >= k):
                raise ValueError(f"concept {self.name!r}: values must be integers in [0, {k}), got {np.unique(v)[:8]}")

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "kind": self.kind, "description": self.description}
        if self.kind == "categorical":
            d["classes"] = list(self.classes)
        if self.kind == "scalar":
            d.update(unit=self.unit, low=self.low, high=self.high)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Concept":
        return cls(
            name=d["name"], kind=d["kind"], description=d["description"],
            classes=tuple(d.get("classes", ())), unit=d.get("unit", ""),
            low=float(d.get("low", -math.inf)), high=float(d.get("high", math.inf)),
        )


@dataclass(frozen=True)
class ConceptSchema:
    """An ordered, named set of concepts. Iterating yields :class:`Concept` objects."""

    concepts: tuple[Concept, ...]
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = [c.name for c in self.concepts]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"concept names must be unique, repeated: {dup}")
        object.__setattr__(self, "_index", {n: i for i, n in enumerate(names)})

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.concepts)

    def __iter__(self):
        return iter(self.concepts)

    def __len__(self) -> int:
        return len(self.concepts)

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def __getitem__(self, name: str) -> Concept:
        try:
            return self.concepts[self._index[name]]
        except KeyError:
            raise KeyError(f"unknown concept {name!r}; this world's concepts are: {', '.join(self.names)}") from None

    def check(self, values: Mapping[str, np.ndarray]) -> None:
        """Validate a ``{name: array}`` mapping: exactly the schema's names, valid values, equal shapes."""
        missing = [n for n in self.names if n not in values]
        extra = [n for n in values if n not in self._index]
        if missing or extra:
            raise ValueError(f"concept values must have exactly the schema's names; missing {missing}, unexpected {extra}")
        shapes = {n: np.shape(v) for n, v in values.items()}
        if len(set(shapes.values())) > 1:
            raise ValueError(f"concept value arrays must share one shape, got {shapes}")
        for c in self.concepts:
            c.check(values[c.name])

    def to_dict(self) -> dict[str, Any]:
        return {"concepts": [c.to_dict() for c in self.concepts]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ConceptSchema":
        return cls(tuple(Concept.from_dict(c) for c in d["concepts"]))
