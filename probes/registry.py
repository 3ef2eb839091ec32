"""Probe methods by name: ``make_fitter(method, concept, **hparams)`` and ``method_names()``.

Unknown method names and unknown hyperparameters fail at construction, naming what is accepted.
"""

from __future__ import annotations

import inspect
from typing import Any

from probes.base import ProbeError, ProbeFitter
from probes.linear import LinearFitter
from probes.mlp import MLPFitter
from probes.sae import SAEProbeFitter
from probes.sparse import SparseFitter
from worlds.concepts import Concept

_FITTERS: dict[str, type[ProbeFitter]] = {
    "linear": LinearFitter,
    "mlp": MLPFitter,
    "sae": SAEProbeFitter,
    "sparse": SparseFitter,
}


def method_names() -> tuple[str, ...]:
    """The registered probe methods, sorted."""
    return tuple(sorted(_FITTERS))


def hparam_names(method: str) -> tuple[str, ...]:
    """The keyword hyperparameters ``method`` accepts (``device`` and ``dtype`` included)."""
    cls = _fitter_class(method)
    params = inspect.signature(cls.__init__).parameters.values()
    return tuple(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)


def _fitter_class(method: str) -> type[ProbeFitter]:
    if method not in _FITTERS:
        raise ProbeError(f"unknown probe method {method!r}; known methods: {', '.join(method_names())}")
    return _FITTERS[method]


def make_fitter(method: str, concept: Concept, **hparams: Any) -> ProbeFitter:
    """A fitter of ``method`` for ``concept``; e.g. ``make_fitter("linear", c, l2=1e-2)``."""
    cls = _fitter_class(method)
    allowed = hparam_names(method)
    unknown = sorted(set(hparams) - set(allowed))
    if unknown:
        raise ProbeError(f"probe method {method!r} has no hyperparameter(s) {unknown}; it accepts: {', '.join(allowed)}")
    return cls(concept, **hparams)
