"""The cross-entropy method over continuous action sequences, with feasible-first elites.

Per decision (shapes: ``n`` samples, ``h`` horizon, ``a`` action dims, ``k`` elites)::

    mean[h a] = shifted previous plan (warm start) or the centre of the bounds;  std[h a] = init_std
    repeat `iterations` times:
        actions[n h a] = clip(mean + std * N(0, 1))        # sample around the current distribution
        actions[0]     = clip(mean)                        # the current mean always competes
        scores         = one batched imagine + reward call
        elites[k h a]  = top k by (violation, -return)     # Wen & Topcu 2018: feasible first
        mean, std      <- elite mean / std (smoothed by `momentum`, std >= min_std)
    return the MEAN OF THE LAST ELITES

Returning the elite mean rather than the single best sample follows mbrl-lib (PR #70,
``return_mean_elites``): under a learned model the best of many samples is the one whose value the
model overestimates most, while the elite mean averages that error away.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dynamics.base import DynamicsModel, LatentState
from planning.planner import Optimised, Planner
from planning.rollout import float_dtype
from planning.types import RewardFn


class CEM(Planner):
    """Cross-entropy method for continuous actions (see the module docstring).

    ``last_elites`` (``[k h a]``) holds the final elites of the last decision, for inspection.
    """

    discrete_only = False

    def __init__(self, model: DynamicsModel, reward_fn: RewardFn, horizon: int, *, num_samples: int = 500,
                 num_elites: int = 50, iterations: int = 6, init_std: float = 0.5, min_std: float = 0.05,
                 momentum: float = 0.1, **kw):
        super().__init__(model, reward_fn, horizon, **kw)
        if not 1 <= num_elites <= num_samples:
            raise ValueError(f"need 1 <= num_elites <= num_samples, got num_elites={num_elites} num_samples={num_samples}")
        if iterations < 1 or init_std <= 0 or min_std < 0 or not 0 <= momentum < 1:
            raise ValueError(f"need iterations >= 1, init_std > 0, min_std >= 0, 0 <= momentum < 1, got "
                             f"{iterations}, {init_std}, {min_std}, {momentum}")
        self.num_samples, self.num_elites, self.iterations = int(num_samples), int(num_elites), int(iterations)
        self.init_std, self.min_std, self.momentum = float(init_std), float(min_std), float(momentum)
        self.last_elites: Tensor | None = None

    def _optimise(self, state: LatentState, warm: Tensor | None, generator: torch.Generator) -> Optimised:
        device, dtype = state.feat.device, float_dtype(state)
        shape = (self.horizon, self.action_dim)
        # warm start: the shifted previous plan; a fresh std every decision (as tdmpc2's _plan)
        mean = warm if warm is not None else torch.full(shape, 0.5 * (self.low + self.high), device=device, dtype=dtype)
        std = torch.full(shape, self.init_std, device=device, dtype=dtype)
        for _ in range(self.iterations):
            # 1. sample sequences around the current distribution, inside the bounds
            noise = torch.randn((self.num_samples, *shape), device=device, dtype=dtype, generator=generator)
            actions = self._clip(mean + std * noise)
            actions[0] = self._clip(mean)
            # 2. imagine and score every sample at once
            scores = self.score(state, actions)
            # 3. elites: feasible first, then by return
            idx = self.rank(scores)[: self.num_elites]
            elites = actions[idx]
            # 4. refit the sampling distribution to the elites
            elite_mean, elite_std = elites.mean(0), elites.std(0, unbiased=False)
            mean = self.momentum * mean + (1 - self.momentum) * elite_mean
            std = (self.momentum * std + (1 - self.momentum) * elite_std).clamp(min=self.min_std)
        self.last_elites = elites
        return Optimised(elite_mean, scores.returns[idx], self.num_samples * self.iterations)
