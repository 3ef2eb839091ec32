"""The planner interface (receding-horizon model-predictive control) and the registry of planners.

A planner is an optimiser over action sequences ``[h *act]``: given one latent state it imagines
many sequences with the dynamics model, scores them with any :data:`~planning.types.RewardFn`, and
returns the first action of the sequence it settles on. Receding horizon: ``plan`` is called again
at every real step; the rest of the previous plan, shifted by one step, warm-starts the next call.
``reset()`` forgets it (call it at each new episode). One planner serving several envs keeps each env's
warm start apart with ``warm_state()`` / ``load_warm_state(...)`` (everything that carries over from one
decision to the next: the previous plan, and e.g. iCEM's kept elites).

Subclasses implement ``_optimise(state, warm, generator) -> Optimised``; this base class handles the
warm start, seeding, device and dtype (taken from the state), timing, and the final imagined score of
the returned plan (one extra batch-1 ``imagine`` call, so ``predicted_return`` is that of the plan
actually returned, e.g. a mean of elites that was never sampled itself).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import Tensor

from dynamics.base import DynamicsModel, LatentState
from planning.rollout import Scores, batch_size, elite_spread, float_dtype, rank, score_sequences
from planning.types import RewardFn


@dataclass(frozen=True)
class PlanInfo:
    """What one planning decision logs."""

    predicted_return: float
    """Imagined discounted return of the returned plan."""
    predicted_cost: float
    """Imagined summed constraint cost of the returned plan."""
    feasible: bool
    """``predicted_cost <= cost_limit``."""
    elite_spread: float
    """Standard deviation of the elite returns of the last iteration (0 for a single elite)."""
    latency_ms: float
    """Wall time of the decision in milliseconds (optimisation and final scoring)."""
    samples: int
    """Action sequences imagined for this decision (the final scoring excluded)."""
    horizon: int
    """Steps the predicted return sums over (the planner's ``horizon``)."""
    discount: float
    """Discount of the predicted return: ``sum_t discount**t * reward[t]``, ``t = 0 .. horizon - 1``."""
    vetoed: bool = False
    """Set by :class:`~planning.shield.Shield` when the planner's first action was replaced."""


@dataclass(frozen=True)
class Optimised:
    """What a subclass's ``_optimise`` returns."""

    plan: Tensor
    """``[h *act]`` the chosen action sequence."""
    elite_returns: Tensor
    """``[k]`` returns of the last iteration's elites (for ``PlanInfo.elite_spread``)."""
    samples: int
    """Number of sequences imagined."""


class Planner(ABC):
    """Base class of every planner; see the module docstring.

    Arguments shared by all planners: ``model`` (a :class:`~dynamics.base.DynamicsModel`; its
    ``action_spec`` says discrete or continuous), ``reward_fn`` (any :data:`RewardFn`), ``horizon``,
    ``discount`` (of rewards), ``cost_limit`` (a sequence is feasible when its summed cost is at most
    this; ``inf`` ignores constraints), ``low``/``high`` (continuous action bounds), ``generator``
    (a ``torch.Generator`` on the state's device) or ``seed`` (used to make one when none is given).
    """

    discrete_only: bool | None = None
    """``True``: needs discrete actions; ``False``: needs continuous actions; ``None``: either."""
    warm_attributes: tuple[str, ...] = ("last_plan",)
    """The attributes that carry over from one decision to the next (see :meth:`warm_state`); a subclass
    with more warm-start memory lists it here, and :meth:`reset` must set every one to ``None``."""

    def __init__(self, model: DynamicsModel, reward_fn: RewardFn, horizon: int, *, discount: float = 1.0,
                 cost_limit: float = 0.0, low: float = -1.0, high: float = 1.0,
                 generator: torch.Generator | None = None, seed: int = 0):
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        if not 0.0 < discount <= 1.0:
            raise ValueError(f"discount must lie in (0, 1], got {discount}")
        if not low < high:
            raise ValueError(f"action bounds need low < high, got low={low} high={high}")
        spec = model.action_spec
        if self.discrete_only is not None and spec.discrete != self.discrete_only:
            kind = "discrete" if self.discrete_only else "continuous"
            raise ValueError(f"{type(self).__name__} needs {kind} actions, got action_spec {spec}; "
                             f"use {'discrete_cem or exhaustive' if not self.discrete_only else 'cem, icem or mppi'}")
        self.model, self.reward_fn, self.horizon = model, reward_fn, int(horizon)
        self.discount, self.cost_limit = float(discount), float(cost_limit)
        self.low, self.high = float(low), float(high)
        self.discrete = spec.discrete
        self.num_actions, self.action_dim = spec.n, spec.dim
        self.generator, self.seed = generator, int(seed)
        self.last_plan: Tensor | None = None
        """``[h *act]`` the plan returned by the last decision (before shifting)."""

    # ------------------------------------------------------------------ public

    def reset(self) -> None:
        """Forget the warm start (call at the start of every episode)."""
        self.last_plan = None

    def warm_state(self) -> dict[str, Tensor | None]:
        """Everything the next decision is warm-started from: ``{attribute: tensor or None}`` for each of
        :attr:`warm_attributes` (``last_plan [h *act]``; iCEM adds its kept elites). Hold one per env and
        give it back with :meth:`load_warm_state` before that env's next decision."""
        return {name: getattr(self, name) for name in self.warm_attributes}

    def load_warm_state(self, warm: Mapping[str, Tensor | None] | None) -> None:
        """Restore a :meth:`warm_state` (``None``: a fresh episode, as :meth:`reset`)."""
        if warm is None:
            self.reset()
            return
        if set(warm) != set(self.warm_attributes):
            raise ValueError(f"{type(self).__name__} warm state needs keys {sorted(self.warm_attributes)}, got "
                             f"{sorted(warm)}; pass what this planner's warm_state() returned")
        for name in self.warm_attributes:
            setattr(self, name, warm[name])

    def plan(self, state: LatentState) -> tuple[Tensor, PlanInfo]:
        """Optimise from ``state[1 ...]`` and return ``(first action [*act], PlanInfo)``.

        Discrete actions come back as an ``int64`` scalar tensor, continuous ones as ``[a]``.
        """
        start = time.perf_counter()
        if batch_size(state) != 1:
            raise ValueError(f"plan() takes one state (batch size 1), got batch size {batch_size(state)}; "
                             f"use state.at(slice(i, i + 1)) for env i")
        with torch.inference_mode():
            device, dtype = state.feat.device, float_dtype(state)
            gen = self._generator(device)
            warm = self._shifted(device, dtype)
            out = self._optimise(state, warm, gen)
            final = self.score(state, out.plan[None])
            predicted_return, predicted_cost = float(final.returns[0]), float(final.costs[0])
        self.last_plan = out.plan
        info = PlanInfo(predicted_return=predicted_return, predicted_cost=predicted_cost,
                        feasible=predicted_cost <= self.cost_limit,
                        elite_spread=elite_spread(out.elite_returns), latency_ms=1e3 * (time.perf_counter() - start),
                        samples=out.samples, horizon=self.horizon, discount=self.discount)
        return out.plan[0], info

    def score(self, state: LatentState, actions: Tensor) -> Scores:
        """Imagined return and cost of ``actions[n h *act]`` from ``state[1 ...]`` (one ``imagine`` call)."""
        return score_sequences(self.model, state, actions, self.reward_fn, self.discount)

    def rank(self, scores: Scores) -> Tensor:
        """Indices best first, feasible-first (see :func:`planning.rollout.rank`)."""
        return rank(scores, self.cost_limit)

    # ------------------------------------------------------------------ for subclasses

    @abstractmethod
    def _optimise(self, state: LatentState, warm: Tensor | None, generator: torch.Generator) -> Optimised:
        """Search from ``state[1 ...]``; ``warm`` is the shifted previous plan ``[h *act]`` or ``None``."""

    def _uniform(self, n: int, device: torch.device, dtype: torch.dtype, generator: torch.Generator) -> Tensor:
        """``[n h *act]`` uniformly random sequences (indices, or values in ``[low, high]``)."""
        if self.discrete:
            return torch.randint(0, self.num_actions, (n, self.horizon), device=device, generator=generator)
        u = torch.rand((n, self.horizon, self.action_dim), device=device, dtype=dtype, generator=generator)
        return self.low + (self.high - self.low) * u

    def _clip(self, actions: Tensor) -> Tensor:
        return actions.clamp(self.low, self.high)

    # ------------------------------------------------------------------ internals

    def _generator(self, device: torch.device) -> torch.Generator:
        if self.generator is None:
            self.generator = torch.Generator(device=device).manual_seed(self.seed)
        if self.generator.device.type != device.type:
            raise ValueError(f"the planner's generator is on {self.generator.device}, the state on {device}; "
                             f"pass torch.Generator(device={str(device)!r})")
        return self.generator

    def _shifted(self, device: torch.device, dtype: torch.dtype) -> Tensor | None:
        """The previous plan moved one step forward; the new last step repeats the last discrete action
        or is the centre of the continuous bounds (as mbrl-lib and tdmpc2 refill it)."""
        if self.last_plan is None:
            return None
        prev = self.last_plan.to(device)
        if self.discrete:
            fill = prev[-1:]
        else:
            prev = prev.to(dtype)
            fill = torch.full_like(prev[-1:], 0.5 * (self.low + self.high))
        return torch.cat([prev[1:], fill])


_PLANNERS = {
    "cem": ("planning.cem", "CEM"),
    "discrete_cem": ("planning.discrete", "DiscreteCEM"),
    "exhaustive": ("planning.discrete", "Exhaustive"),
    "icem": ("planning.icem", "ICEM"),
    "mppi": ("planning.mppi", "MPPI"),
    "shooting": ("planning.shooting", "RandomShooting"),
}
PLANNER_NAMES: tuple[str, ...] = tuple(sorted(_PLANNERS))


def make_planner(name: str, model: DynamicsModel, reward_fn: RewardFn, horizon: int, **kw: Any) -> Planner:
    """The planner registered as ``name`` (one of :data:`PLANNER_NAMES`) with keyword arguments ``kw``."""
    import importlib

    if name not in _PLANNERS:
        raise ValueError(f"unknown planner {name!r}; known: {', '.join(PLANNER_NAMES)}")
    module, cls = _PLANNERS[name]
    return getattr(importlib.import_module(module), cls)(model, reward_fn, horizon, **kw)

