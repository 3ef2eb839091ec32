"""The fitted ontology: for each human concept, the probe (method, latent site) that reads it.

An :class:`Ontology` is what later stages load: rewards read concepts through
:meth:`Ontology.resolve` (the signature of ``rewards.compile.Resolver`` once a state is bound, see
:meth:`Ontology.resolver`), planners apply it to imagined latents, the causal checks edit along
its probes' directions. It is chosen by :func:`select_ontology` on the VALIDATION split only, by
the rule in :data:`RULE`; the test and ood splits never influence it. :func:`method_ontologies` applies
the same rule to each probe method's candidates alone (one ontology per method, for comparing methods
by the behaviour of planners that use them).

On disk (``save(dir)`` / ``Ontology.load(dir)``; the folder is written under a temporary name and
renamed into place; no pickle)::

    ontology.json                 format, rule, one entry per concept (method, site, site shape,
                                  validation metric and score, probe file)
    probes/<concept>.safetensors  the probe (``Probe.save``)
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from torch import Tensor

from dynamics.base import LatentState
from probes.base import Probe, ProbeError
from probes.extract import temp_dir_for, write_json
from worlds.atomic import publish_dir
from worlds.concepts import Concept

FORMAT_VERSION = 1
INDEX = "ontology.json"
METHOD_ORDER: tuple[str, ...] = ("linear", "sparse", "mlp", "sae")
"""Simplicity order used to break ties (methods not listed come after, by name)."""
RULE = ("per concept, the (method, site) whose probe (hyperparameters chosen on validation) has the highest "
        "VALIDATION balanced accuracy (binary, categorical) or R^2 (scalar); ties (equal to 1e-9) go to the "
        "simpler method (linear < sparse < mlp < sae < others by name), then to the earlier site in the "
        "requested order; when the caller names the sites later stages read (planner_sites: those imagine() "
        "produces), only those compete (a concept with no candidate there keeps its best site); test and ood "
        "labels are never read")
MODES = ("value", "prob")


def validation_metric(concept: Concept) -> str:
    """The metric that chooses probes for ``concept``: ``"r2"`` for scalars, else ``"balanced_accuracy"``."""
    return "r2" if concept.kind == "scalar" else "balanced_accuracy"


def method_rank(method: str) -> tuple[int, str]:
    return (METHOD_ORDER.index(method), "") if method in METHOD_ORDER else (len(METHOD_ORDER), method)


@dataclass(frozen=True)
class OntologyEntry:
    """Where and how one concept is read: ``probe`` applied to site ``site`` (feature shape ``site_shape``)."""

    concept: Concept
    method: str
    site: str
    site_shape: tuple[int, ...]
    probe: Probe
    val_metric: str
    """``"balanced_accuracy"`` or ``"r2"`` (see :func:`validation_metric`)."""
    val_score: float
    """The validation score that chose this entry."""
    rule: str = RULE


@dataclass(frozen=True)
class Ontology:
    """Concept name -> :class:`OntologyEntry`, in schema order. Frozen; ``to`` returns a moved copy."""

    entries: Mapping[str, OntologyEntry]

    @property
    def concepts(self) -> tuple[str, ...]:
        return tuple(self.entries)

    def __getitem__(self, name: str) -> OntologyEntry:
        if name not in self.entries:
            raise ProbeError(f"unknown concept {name!r}; this ontology has: {', '.join(self.entries) or '(none)'}")
        return self.entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self.entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    # -- reading concepts from latents ------------------------------------------------------------------
    def resolve(self, state: LatentState, name: str, mode: str = "value") -> Tensor:
        """Concept ``name`` of every state in ``state`` (sites ``[*b *feature]``, e.g. ``[b h d]``).

        ``"value"``: ``[*b]`` the probe's hard prediction (int64 class index) for binary/categorical,
        the predicted value for scalar. ``"prob"``: ``[*b]`` P(true) for binary, ``[*b k]`` class
        probabilities for categorical (scalar concepts have none). Differentiable in the latents.
        """
        e = self[name]
        if mode not in MODES:
            raise ProbeError(f"mode must be one of {MODES}, got {mode!r}")
        if e.site not in state.sites:
            raise ProbeError(f"concept {name!r} is read from site {e.site!r}, but the state has: {', '.join(state.sites)}")
        x = state.sites[e.site]
        nf = len(e.site_shape)
        if x.ndim < nf or tuple(x.shape[x.ndim - nf:]) != e.site_shape:
            raise ProbeError(f"site {e.site!r} must end in feature shape {e.site_shape}, got a tensor of shape {tuple(x.shape)}")
        lead = x.shape[: x.ndim - nf]
        z = x.reshape(math.prod(lead), e.probe.norm.dim)  # [*b *feature] -> [(*b) d]
        if mode == "value":
            return e.probe.predict(z).reshape(lead)
        if e.concept.kind == "scalar":
            raise ProbeError(f"concept {name!r} is scalar and has no probability; resolve it with mode='value'")
        p = e.probe.predict_proba(z)  # [(*b) k]
        return p[:, 1].reshape(lead) if e.concept.kind == "binary" else p.reshape(*lead, p.shape[-1])

    def resolver(self, state: LatentState) -> Callable[[str, str], Tensor]:
        """``resolve(name, mode)`` bound to ``state``: a ``rewards.compile.Resolver``."""
        return lambda name, mode: self.resolve(state, name, mode)

    # -- moving, describing, saving ---------------------------------------------------------------------
    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "Ontology":
        return Ontology({k: replace(e, probe=e.probe.to(device, dtype)) for k, e in self.entries.items()})

    def summary(self) -> dict[str, dict[str, str]]:
        """``{concept: {"method", "site"}}`` (for ``summary.json``)."""
        return {k: {"method": e.method, "site": e.site} for k, e in self.entries.items()}

    def save(self, path: str | os.PathLike) -> Path:
        """Write the folder ``path`` atomically (temporary folder, then rename); returns ``path``."""
        final = Path(path)
        tmp = temp_dir_for(final)
        try:
            index: list[dict[str, Any]] = []
            for k, e in self.entries.items():
                rel = f"probes/{k}.safetensors"
                e.probe.save(tmp / rel)
                index.append({"concept": k, "method": e.method, "site": e.site, "site_shape": list(e.site_shape),
                              "val_metric": e.val_metric, "val_score": e.val_score, "rule": e.rule, "probe": rel})
            write_json(tmp / INDEX, {"format": FORMAT_VERSION, "entries": index})
            publish_dir(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final

    @classmethod
    def load(cls, path: str | os.PathLike, device: torch.device | str = "cpu") -> "Ontology":
        root = Path(path)
        try:
            index = json.loads((root / INDEX).read_text())
        except FileNotFoundError:
            raise ProbeError(f"no ontology at {root} ({INDEX} missing); fit one with run_harness and save it") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ProbeError(f"{root / INDEX} is not valid JSON ({e}); fit and save the ontology again") from None
        if index.get("format") != FORMAT_VERSION:
            raise ProbeError(f"{root}: ontology format {index.get('format')!r}, this ontolab reads {FORMAT_VERSION}")
        entries = {}
        for d in index["entries"]:
            if os.path.isabs(d["probe"]) or ".." in Path(d["probe"]).parts:  # never read outside the folder
                raise ProbeError(f"{root / INDEX} names probe file {d['probe']!r} outside {root}; fit and save the ontology again")
            probe = fresh(Probe.load(root / d["probe"], device=device))
            if probe.concept.name != d["concept"] or probe.method != d["method"]:
                raise ProbeError(f"{root / d['probe']} holds a {probe.method!r} probe of {probe.concept.name!r}, "
                                 f"the index says {d['method']!r} of {d['concept']!r}; fit and save the ontology again")
            entries[d["concept"]] = OntologyEntry(probe.concept, d["method"], d["site"], tuple(d["site_shape"]), probe,
                                                  d["val_metric"], float(d["val_score"]), d["rule"])
        return cls(entries)


def fresh(probe: Probe) -> Probe:
    """The probe with every tensor copied into fresh (contiguous, allocator-aligned) memory.

    Matmul rounding depends on memory layout and alignment: a fitted probe may hold strided views and a
    loaded one unaligned slices of the file buffer. Fresh copies on both sides make a saved-and-loaded
    ontology compute bit for bit what the fitted one does."""
    changes: dict[str, Any] = {k: tuple(t.clone(memory_format=torch.contiguous_format) for t in v) if isinstance(v, tuple)
                               else v.clone(memory_format=torch.contiguous_format) for k, v in probe._tensor_fields().items()}
    changes["norm"] = replace(probe.norm, mean=probe.norm.mean.clone(), std=probe.norm.std.clone())
    return replace(probe, **changes)


def select_ontology(candidates: Mapping[tuple[str, str, str], tuple[Probe, float]], concepts: Sequence[Concept],
                    site_shapes: Mapping[str, Sequence[int]], site_order: Sequence[str]) -> Ontology:
    """Choose one ``(method, site)`` per concept by :data:`RULE`.

    ``candidates[(method, site, concept)] = (probe, validation score)``; a NaN score never wins.
    Concepts without a candidate are left out of the ontology.
    """
    entries = {}
    for c in concepts:
        cands = [(m, s, p, v) for (m, s, name), (p, v) in candidates.items() if name == c.name]
        if not cands:
            continue
        best = max(v for *_, v in cands if not math.isnan(v)) if any(not math.isnan(v) for *_, v in cands) else math.nan
        tied = [x for x in cands if math.isnan(best) or (not math.isnan(x[3]) and x[3] >= best - 1e-9)]
        m, s, p, v = min(tied, key=lambda x: (method_rank(x[0]), list(site_order).index(x[1]) if x[1] in site_order else len(site_order)))
        entries[c.name] = OntologyEntry(c, m, s, tuple(int(i) for i in site_shapes[s]), fresh(p), validation_metric(c), float(v))
    return Ontology(entries)


def method_ontologies(candidates: Mapping[tuple[str, str, str], tuple[Probe, float]], concepts: Sequence[Concept],
                      site_shapes: Mapping[str, Sequence[int]], site_order: Sequence[str]) -> dict[str, Ontology]:
    """``{method: Ontology}``: :func:`select_ontology` on each method's candidates alone (every concept -> that
    method's best site, by the same rule), for every method with at least one candidate, in first-seen order.

    Planners driven by each of them compare probe methods by the behaviour they produce."""
    methods = list(dict.fromkeys(m for m, _, _ in candidates))
    return {m: select_ontology({k: v for k, v in candidates.items() if k[0] == m}, concepts, site_shapes, site_order)
            for m in methods}
