"""Random shooting: the baseline every other planner must beat with the same sample budget.

Draw ``num_samples`` uniformly random action sequences (discrete or continuous), add the shifted
previous plan when there is one, score them all in one batched ``imagine`` call, and keep the best
one under the feasible-first ranking of :func:`planning.rollout.rank`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dynamics.base import DynamicsModel, LatentState
from planning.planner import Optimised, Planner
from planning.rollout import float_dtype
from planning.types import RewardFn


class RandomShooting(Planner):
    """Best of ``num_samples`` uniformly random sequences (discrete or continuous actions).

    ``num_elites`` only sets how many top returns ``PlanInfo.elite_spread`` summarises.
    """

    def __init__(self, model: DynamicsModel, reward_fn: RewardFn, horizon: int, *, num_samples: int = 1000,
                 num_elites: int = 10, **kw):
        super().__init__(model, reward_fn, horizon, **kw)
        if num_samples < 1 or not 1 <= num_elites <= num_samples:
            raise ValueError(f"need num_samples >= 1 and 1 <= num_elites <= num_samples, got {num_samples}, {num_elites}")
        self.num_samples, self.num_elites = int(num_samples), int(num_elites)

    def _optimise(self, state: LatentState, warm: Tensor | None, generator: torch.Generator) -> Optimised:
        actions = self._uniform(self.num_samples, state.feat.device, float_dtype(state), generator)   # [n h *act]
        if warm is not None:                                                           # keep the old plan in the running
            actions[0] = warm
        scores = self.score(state, actions)                                            # one imagine call
        order = self.rank(scores)
        elites = order[: self.num_elites]
        return Optimised(actions[order[0]], scores.returns[elites], self.num_samples)
