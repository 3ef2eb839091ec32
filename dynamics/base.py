"""The one interface every dynamics model implements.

A dynamics model is a plain ``nn.Module`` trained only to predict observations from actions. It
never sees rewards, values or concept labels: that is what makes the latent space worth probing.
Training wraps it in a thin LightningModule (:mod:`dynamics.training`); probes and planners use the
plain module and never import Lightning.

Subclasses implement (shapes: ``b`` batch, ``t`` time, ``h`` horizon)
    ``initial(batch_size) -> LatentState``                    the state before any observation ``[b ...]``
    ``observe(obs[b t *obs], actions[b t *act], is_first[b t], *, sample=False, start=None) -> LatentState``
                                                              filter a real sequence (posterior), ``[b t ...]``,
                                                              from ``initial`` or from the posterior ``start[b ...]``
    ``imagine(state[b ...], actions[b h *act], *, sample=False) -> LatentState`` roll forward with no observations (prior),
                                                              ``[b h ...]``; step ``i`` applies ``actions[:, i]``
    ``decode(state) -> predicted observation``                 reconstruction (models without a decoder raise)
    ``loss(obs, actions, is_first) -> LossOutput``             the training objective on a window
    ``sites``                                                 ``{site name: feature shape}`` a probe may read
    ``hparams``                                               constructor arguments as plain types

Step convention (see :mod:`worlds.trajectory`): ``actions[:, t]`` is the action that led *into*
step ``t``; at ``is_first`` the state is reset to ``initial`` before the step is filtered.
Discrete actions arrive as ``int64[b t]`` indices, continuous ones as ``float32[b t a]``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, fields
from typing import Any, Iterator, Mapping, get_type_hints

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class ObsSpec:
    """What the model observes: ``shape`` (e.g. ``(8, 5, 5)`` or ``(12,)``) and ``kind``.

    ``kind`` is ``"symbolic"`` (one-hot uint8 channels ``[c h w]``: reconstructed with a per-cell
    cross-entropy), ``"image"`` (uint8 RGB ``[3 h w]``, scaled to [0, 1]) or ``"vector"`` (float32).
    """

    shape: tuple[int, ...]
    kind: str

    def __post_init__(self) -> None:
        if self.kind not in ("symbolic", "image", "vector"):
            raise ValueError(f"obs kind must be 'symbolic', 'image' or 'vector', got {self.kind!r}")
        if self.kind == "vector" and len(self.shape) != 1:
            raise ValueError(f"vector observations must have shape (d,), got {self.shape}")
        if self.kind != "vector" and len(self.shape) != 3:
            raise ValueError(f"{self.kind} observations must have shape (c, h, w), got {self.shape}")

    @classmethod
    def from_manifest(cls, spec: Mapping[str, Any]) -> "ObsSpec":
        """From a dataset manifest's ``obs_spec`` (``{"shape": [...], "obs_kind": ...}``)."""
        return cls(tuple(int(s) for s in spec["shape"]), str(spec["obs_kind"]))


@dataclass(frozen=True)
class ActionSpec:
    """``discrete`` with ``n`` actions (int64 indices), or continuous with ``dim`` components in [-1, 1]."""

    discrete: bool
    n: int = 0
    dim: int = 0

    @classmethod
    def from_manifest(cls, spec: Mapping[str, Any]) -> "ActionSpec":
        """From a dataset manifest's ``action_spec`` (``{"kind": "discrete", "n": 5}`` or continuous with ``shape``)."""
        if spec["kind"] == "discrete":
            return cls(discrete=True, n=int(spec["n"]))
        return cls(discrete=False, dim=int(math.prod(int(s) for s in spec["shape"])))

    @property
    def input_dim(self) -> int:
        """Width of the action vector a network consumes (one-hot for discrete actions)."""
        return self.n if self.discrete else self.dim


@dataclass(frozen=True)
class LatentState:
    """Named latent sites with leading batch (and, for sequences, time) dims.

    ``sites`` maps a site name (e.g. ``"deter"``, ``"stoch"``, ``"embed"``, ``"feat"``) to a tensor
    ``[b *feature]`` or ``[b t *feature]``. A model's ``sites`` property documents the names and
    feature shapes; ``feat`` is always present and is what heads and planners read by default.
    """

    sites: Mapping[str, Tensor] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Tensor:
        try:
            return self.sites[name]
        except KeyError:
            raise KeyError(f"unknown latent site {name!r}; this state has: {', '.join(self.sites)}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self.sites)

    @property
    def feat(self) -> Tensor:
        return self["feat"]

    def map(self, fn) -> "LatentState":
        """Apply ``fn`` to every site tensor (e.g. indexing, ``.detach()``, ``.to(device)``)."""
        return LatentState({k: fn(v) for k, v in self.sites.items()})

    def at(self, index: Any) -> "LatentState":
        """Index every site the same way, e.g. ``state.at((slice(None), -1))`` for the last step."""
        return self.map(lambda v: v[index])

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "LatentState":
        return self.map(lambda v: v.to(device=device, dtype=dtype if v.is_floating_point() else None))


@dataclass(frozen=True)
class LossOutput:
    """The training objective on one window: ``loss`` (scalar) and detached ``metrics`` for logging."""

    loss: Tensor
    metrics: dict[str, Tensor]
    state: LatentState


class DynamicsModel(nn.Module, ABC):
    """Base class of every dynamics model (see the module docstring for the contract)."""

    obs_spec: ObsSpec
    action_spec: ActionSpec

    @property
    @abstractmethod
    def sites(self) -> dict[str, tuple[int, ...]]:
        """``{site name: feature shape}`` of every latent a probe may read."""

    @property
    @abstractmethod
    def hparams(self) -> dict[str, Any]:
        """Constructor arguments as plain JSON types (stored in checkpoints; ``weights_only`` loads them)."""

    @abstractmethod
    def initial(self, batch_size: int) -> LatentState:
        """The state before any observation: every site ``[b *feature]``."""

    @abstractmethod
    def observe(self, obs: Tensor, actions: Tensor, is_first: Tensor, *, sample: bool = False,
                start: LatentState | None = None) -> LatentState:
        """Filter a real sequence into one posterior latent per step: every site ``[b t *feature]``.

        ``sample=False`` (the default) takes the mode/mean of any stochastic part, so repeated calls agree.
        ``start`` (``[b ...]``, e.g. ``observe(...).at((slice(None), -1))`` of the steps before) continues
        filtering from that posterior instead of ``initial``: ``actions[:, 0]`` then leads from ``start``
        into step 0 (unless ``is_first[:, 0]``, which resets as always). Filtering ``t`` steps one call at
        a time this way gives the same states as one call over all ``t`` (O(1) work per new step).
        """

    @abstractmethod
    def imagine(self, state: LatentState, actions: Tensor, *, sample: bool = False) -> LatentState:
        """Roll ``state[b ...]`` forward ``h = actions.shape[1]`` steps with no observations: ``[b h ...]``.

        ``sample=False`` (the default: what planners want) follows the prior's mode/mean; deterministic
        models ignore ``sample``.
        """

    @abstractmethod
    def loss(self, obs: Tensor, actions: Tensor, is_first: Tensor) -> LossOutput:
        """The model's training objective on a window ``[b t ...]``."""

    def decode(self, state: LatentState) -> Tensor:
        """Predicted observation for every state in ``state`` (logits for symbolic observations)."""
        raise NotImplementedError(f"{type(self).__name__} does not reconstruct observations")

    @property
    def can_decode(self) -> bool:
        return type(self).decode is not DynamicsModel.decode


_TYPE_WORDS = {int: "an integer", float: "a finite number", str: "a string", bool: "true or false"}


def check_config_types(config: Any) -> None:
    """Raise ``TypeError`` naming the field and the expected type unless every ``int`` / ``float`` / ``str`` /
    ``bool`` field of the config dataclass ``config`` holds that type (``ValueError`` for a NaN or infinite
    float); the models' config validation, before their range checks.

    ``bool`` is not an integer here (``deter=true`` is refused, not read as 1); an ``int`` is accepted for
    a ``float`` field."""
    hints = get_type_hints(type(config))
    for f in fields(config):
        want, value = hints.get(f.name), getattr(config, f.name)
        if want not in _TYPE_WORDS:
            continue
        if want is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if ok and not math.isfinite(value):
                raise ValueError(f"{f.name} must be a finite number, got {value!r}")
        elif want is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:
            ok = isinstance(value, want)
        if not ok:
            raise TypeError(f"{f.name} must be {_TYPE_WORDS[want]}, got {value!r} ({type(value).__name__})")
