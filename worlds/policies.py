"""Vectorised collection policies: what acts in a world while a dataset is collected.

A policy maps a world and a generator to one action per env, ``policy(world, rng) -> actions[n *act]``,
without a loop over envs. Policies that keep per-episode state (:class:`MixturePolicy`) are told
which envs started a new episode through ``policy.reset(world, rng, mask)``; the collector calls it
after every ``world.reset``.

Coverage matters more than competence: probes need states where each concept takes each value, so
datasets are usually collected with a mixture of a noisy expert and random play.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from worlds.base import VectorWorld


class Policy:
    """Base class: ``__call__(world, rng) -> actions[n *act]``; ``reset`` is a no-op unless overridden."""

    def __call__(self, world: VectorWorld, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    def reset(self, world: VectorWorld, rng: np.random.Generator, mask: np.ndarray | None = None) -> None:
        """Envs where ``mask[n]`` (all if ``None``) have just started a new episode."""


@dataclass
class RandomPolicy(Policy):
    """Uniformly random actions (``world.sample_actions``)."""

    def __call__(self, world: VectorWorld, rng: np.random.Generator) -> np.ndarray:
        return world.sample_actions(rng)


@dataclass
class EpsilonOraclePolicy(Policy):
    """Per env and step: a uniformly random action with probability ``epsilon``, else ``world.oracle_actions()``."""

    epsilon: float = 0.1

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.epsilon) <= 1.0:
            raise ValueError(f"epsilon must lie in [0, 1], got {self.epsilon!r}")

    def __call__(self, world: VectorWorld, rng: np.random.Generator) -> np.ndarray:
        oracle = np.asarray(world.oracle_actions())
        if self.epsilon == 0.0:
            return oracle
        random = world.sample_actions(rng)
        explore = rng.random(world.num_envs) < self.epsilon
        explore = explore.reshape(explore.shape + (1,) * (oracle.ndim - 1))  # broadcast over action dims
        return np.where(explore, random, oracle).astype(random.dtype, copy=False)


@dataclass
class MixturePolicy(Policy):
    """Each env draws one of ``policies`` (with probabilities ``weights``) per episode, re-drawn at reset.

    Every component is evaluated on all envs each step (they are vectorised, so this is cheap) and
    each env takes the action of its own component.
    """

    policies: Sequence[Policy]
    weights: Sequence[float] | None = None
    assignment: np.ndarray | None = field(default=None, repr=False)
    """``int64[n]``: index of the component each env follows in its current episode."""

    def __post_init__(self) -> None:
        self.policies = tuple(self.policies)
        if not self.policies or not all(isinstance(p, Policy) for p in self.policies):
            raise ValueError(f"MixturePolicy needs a non-empty list of Policy objects, got {self.policies!r}")
        w = np.ones(len(self.policies)) if self.weights is None else np.asarray(self.weights, np.float64)
        if w.shape != (len(self.policies),) or not np.all(np.isfinite(w)) or (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"weights must be {len(self.policies)} non-negative numbers with a positive sum, got {self.weights!r}")
        self.weights = tuple(float(x) for x in w / w.sum())

    def reset(self, world: VectorWorld, rng: np.random.Generator, mask: np.ndarray | None = None) -> None:
        if self.assignment is None or self.assignment.shape != (world.num_envs,) or mask is None:
            self.assignment = rng.choice(len(self.policies), size=world.num_envs, p=self.weights)
        else:
            mask = np.asarray(mask, bool)
            self.assignment[mask] = rng.choice(len(self.policies), size=int(mask.sum()), p=self.weights)
        for p in self.policies:
            p.reset(world, rng, mask)

    def __call__(self, world: VectorWorld, rng: np.random.Generator) -> np.ndarray:
        if self.assignment is None or self.assignment.shape != (world.num_envs,):
            self.reset(world, rng)
        actions = np.stack([np.asarray(p(world, rng)) for p in self.policies])  # [k n *act]
        return actions[self.assignment, np.arange(world.num_envs)]


DEFAULT_MIXTURE_EPSILON = 0.3


def _mixture(components: Sequence[Mapping[str, Any] | Policy] | None = None, weights: Sequence[float] | None = None,
             epsilon: float | None = None) -> MixturePolicy:
    """Default (no ``components``): half the episodes ``epsilon_oracle(epsilon)``, half ``random`` --
    competent episodes reach keys and doors, random ones wander into hazards; probes need both."""
    if components is None:
        eps = DEFAULT_MIXTURE_EPSILON if epsilon is None else epsilon
        components, weights = [EpsilonOraclePolicy(eps), RandomPolicy()], (0.5, 0.5) if weights is None else weights
    elif epsilon is not None:
        raise ValueError("mixture: pass epsilon only for the default components, or set it inside each component dict")
    policies = []
    for c in components:
        if isinstance(c, Policy):
            policies.append(c)
        elif isinstance(c, Mapping) and "name" in c:
            policies.append(make_policy(c["name"], **{k: v for k, v in c.items() if k != "name"}))
        else:
            raise ValueError(f"mixture components must be Policy objects or dicts like {{'name': 'random'}}, got {c!r}")
    return MixturePolicy(policies, weights)


_POLICIES: dict[str, Callable[..., Policy]] = {
    "epsilon_oracle": EpsilonOraclePolicy,
    "mixture": _mixture,
    "oracle": lambda: EpsilonOraclePolicy(0.0),
    "random": RandomPolicy,
}


def policy_names() -> tuple[str, ...]:
    """Names accepted by :func:`make_policy`."""
    return tuple(sorted(_POLICIES))


def make_policy(name: str, **kwargs: Any) -> Policy:
    """Build a policy by name: ``random``, ``oracle``, ``epsilon_oracle(epsilon)`` or ``mixture(epsilon)``
    (the default mix) / ``mixture(components=[{"name": ..., ...}, ...], weights=[...])``."""
    if name not in _POLICIES:
        raise ValueError(f"unknown policy {name!r}; known policies: {', '.join(policy_names())}")
    try:
        return _POLICIES[name](**kwargs)
    except TypeError as e:
        raise ValueError(f"bad arguments {sorted(kwargs)} for policy {name!r}: {e}") from None
