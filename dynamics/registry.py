"""Named dynamics models: ``build_model(name, obs_spec, action_spec, **hparams)``.

Every model takes its two specs and a frozen config dataclass; ``model.hparams`` holds the specs (as
plain dicts) and every config field, so ``build_model(model.name, **model.hparams)`` rebuilds the
same architecture (this is how checkpoints are restored).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from dynamics.base import ActionSpec, DynamicsModel, ObsSpec
from dynamics.gru import GRUConfig, GRUModel
from dynamics.rssm import RSSM, RSSMConfig
from dynamics.spr import SPRConfig, SPRModel

_MODELS: dict[str, tuple[type[DynamicsModel], type]] = {
    RSSM.name: (RSSM, RSSMConfig),
    GRUModel.name: (GRUModel, GRUConfig),
    SPRModel.name: (SPRModel, SPRConfig),
}


def model_names() -> tuple[str, ...]:
    """Sorted names of every buildable model."""
    return tuple(sorted(_MODELS))


def model_config(name: str, **hparams: Any) -> Any:
    """The validated config dataclass of model ``name``; unknown hparams are refused, allowed ones listed."""
    if name not in _MODELS:
        raise ValueError(f"unknown dynamics model {name!r}; known models: {', '.join(model_names())}")
    config_cls = _MODELS[name][1]
    allowed = [f.name for f in dataclasses.fields(config_cls)]
    unknown = sorted(set(hparams) - set(allowed))
    if unknown:
        raise ValueError(f"unknown hparam(s) {unknown} for dynamics model {name!r}; allowed: {', '.join(allowed)}")
    return config_cls(**hparams)


def _obs_spec(spec: ObsSpec | Mapping[str, Any]) -> ObsSpec:
    if isinstance(spec, ObsSpec):
        return spec
    if not isinstance(spec, Mapping) or set(spec) != {"shape", "kind"}:
        raise TypeError(f"obs_spec must be an ObsSpec or a dict with keys shape, kind; got {spec!r}")
    return ObsSpec(shape=tuple(int(s) for s in spec["shape"]), kind=str(spec["kind"]))


def _action_spec(spec: ActionSpec | Mapping[str, Any]) -> ActionSpec:
    if isinstance(spec, ActionSpec):
        return spec
    if not isinstance(spec, Mapping) or not set(spec) <= {"discrete", "n", "dim"} or "discrete" not in spec:
        raise TypeError(f"action_spec must be an ActionSpec or a dict with keys discrete, n, dim; got {spec!r}")
    return ActionSpec(discrete=bool(spec["discrete"]), n=int(spec.get("n", 0)), dim=int(spec.get("dim", 0)))


def build_model(name: str, obs_spec: ObsSpec | Mapping[str, Any], action_spec: ActionSpec | Mapping[str, Any],
                **hparams: Any) -> DynamicsModel:
    """Build model ``name`` (one of :func:`model_names`) for the given specs and hyperparameters.

    The specs may be the dataclasses or the plain dicts found in ``model.hparams``. Raises
    ``ValueError`` naming the known models or the allowed hparams when either is wrong.
    """
    config = model_config(name, **hparams)
    obs, act = _obs_spec(obs_spec), _action_spec(action_spec)
    if act.discrete and act.n < 1 or not act.discrete and act.dim < 1:
        raise ValueError(f"action_spec needs n >= 1 (discrete) or dim >= 1 (continuous), got {act}")
    return _MODELS[name][0](obs, act, config)
