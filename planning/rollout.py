"""Scoring action sequences in imagination, and the feasible-first ranking every planner shares.

``score_sequences`` runs the whole batch through ONE ``model.imagine`` call and one reward call:

    states  = model.imagine(state[1 ...] expanded to [n ...], actions[n h *act])     # [n h ...]
    out     = reward_fn(states, actions)                                              # reward, cost [n h]
    returns = sum_t discount**t * reward[:, t]        costs = sum_t cost[:, t]        # [n]

Constraint costs are summed undiscounted (the expected number of violations over the horizon when
each step's cost is a violation indicator or probability). A sequence is *feasible* when its cost
is at most ``cost_limit``. Ranking follows Wen & Topcu (2018, "Constrained cross-entropy method for
safe reinforcement learning"): order by constraint violation ``max(cost - limit, 0)`` first and by
return second, so that while fewer than ``k`` samples are feasible the elites are the least
violating ones, and once enough are feasible they are the best feasible ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from dynamics.base import DynamicsModel, LatentState
from planning.types import RewardFn


@dataclass(frozen=True)
class Scores:
    """Imagined outcome of ``n`` action sequences."""

    returns: Tensor
    """``[n]`` discounted sum of rewards (NaN from a broken model is replaced by ``-inf``; infinities are kept)."""
    costs: Tensor
    """``[n]`` undiscounted sum of constraint costs (NaN replaced by ``+inf``)."""

    def __len__(self) -> int:
        return int(self.returns.shape[0])

    def take(self, idx: Tensor) -> "Scores":
        return Scores(self.returns[idx], self.costs[idx])

    @staticmethod
    def cat(parts: list["Scores"]) -> "Scores":
        return Scores(torch.cat([p.returns for p in parts]), torch.cat([p.costs for p in parts]))


def batch_size(state: LatentState) -> int:
    """Leading dim shared by every site of ``state`` (a one-line error when they disagree)."""
    sizes = {name: int(v.shape[0]) for name, v in state.sites.items()}
    if not sizes or len(set(sizes.values())) != 1:
        raise ValueError(f"a latent state needs sites with one shared batch dim, got {sizes}")
    return next(iter(sizes.values()))


def expand_state(state: LatentState, n: int) -> LatentState:
    """``state[1 ...] -> [n ...]`` without copying (``Tensor.expand``)."""
    if batch_size(state) != 1:
        raise ValueError(f"planners plan for one state: expected batch size 1, got {batch_size(state)}; "
                         f"plan each env separately or index it with state.at(slice(i, i + 1))")
    return state.map(lambda v: v.expand(n, *v.shape[1:]))


def float_dtype(state: LatentState) -> torch.dtype:
    """Dtype planners sample continuous actions in: that of ``feat`` when floating, else the default."""
    feat = state.sites.get("feat")
    if feat is not None and feat.is_floating_point():
        return feat.dtype
    return torch.get_default_dtype()


def discounts(horizon: int, discount: float, device: torch.device, dtype: torch.dtype) -> Tensor:
    """``[h]`` weights ``discount**t``."""
    return discount ** torch.arange(horizon, device=device, dtype=dtype)


def score_sequences(model: DynamicsModel, state: LatentState, actions: Tensor, reward_fn: RewardFn,
                    discount: float = 1.0, *, sample: bool = False) -> Scores:
    """Return and constraint cost of every sequence ``actions[n h *act]`` from ``state[1 ...]``.

    One batched ``imagine`` call and one ``reward_fn`` call, under ``torch.inference_mode``.
    ``sample=True`` draws from a stochastic model's prior instead of following its mode.
    """
    n, h = int(actions.shape[0]), int(actions.shape[1])
    with torch.inference_mode():
        states = model.imagine(expand_state(state, n), actions, sample=sample)
        out = reward_fn(states, actions)
        reward, cost = out.reward, out.cost
        if tuple(reward.shape) != (n, h) or tuple(cost.shape) != (n, h):
            raise ValueError(f"reward_fn must return reward and cost of shape ({n}, {h}), got "
                             f"{tuple(reward.shape)} and {tuple(cost.shape)}; it receives imagined states [n h ...]")
        dtype = reward.dtype if reward.is_floating_point() else torch.get_default_dtype()
        returns = (reward.to(dtype) * discounts(h, discount, reward.device, dtype)).sum(1)
        costs = cost.to(dtype).sum(1)
        # only NaN is replaced: nan_to_num's defaults would also turn a genuine -inf return (a forbidden state)
        # into -3.4e38, which elite_spread and PlanInfo then report as a finite number
        returns = torch.nan_to_num(returns, nan=-math.inf, posinf=math.inf, neginf=-math.inf)
        costs = torch.nan_to_num(costs, nan=math.inf, posinf=math.inf, neginf=-math.inf)
    return Scores(returns, costs)


def violation(scores: Scores, cost_limit: float) -> Tensor:
    """``[n]`` how far each sequence's cost exceeds ``cost_limit`` (0 when feasible)."""
    return (scores.costs - cost_limit).clamp(min=0.0)


def rank(scores: Scores, cost_limit: float = math.inf) -> Tensor:
    """``int64[n]`` indices from best to worst: least violation first, then highest return.

    ``cost_limit=inf`` ignores constraints (plain return ranking). Two stable sorts give the
    lexicographic order (torch has no lexsort).
    """
    by_return = torch.sort(scores.returns, descending=True, stable=True).indices
    if math.isinf(cost_limit):
        return by_return
    by_violation = torch.sort(violation(scores, cost_limit)[by_return], stable=True).indices
    return by_return[by_violation]


def elite_spread(returns: Tensor) -> float:
    """Standard deviation of the elites' returns (0 for a single elite; infinities ignored)."""
    finite = returns[torch.isfinite(returns)]
    return float(finite.std(unbiased=False)) if finite.numel() > 1 else 0.0
