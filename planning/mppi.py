"""Model-predictive path integral control (MPPI; Williams et al. 2017) for continuous actions.

Per decision (``n`` samples, ``h`` horizon, ``a`` action dims)::

    U[h a] = shifted previous plan (warm start) or the centre of the bounds
    repeat `iterations` times (1 in classic MPPI):
        actions[n h a] = clip(U + noise_std * N(0, 1))
        score[n]       = return - constraint_penalty * violation        # one batched imagine call
        w[n]           = softmax(score / temperature)
        U             <- U + sum_n w_n (actions_n - U)                   # temperature-weighted noise
    return U

Constraints enter as a penalty on the violation ``max(cost - cost_limit, 0)`` because MPPI weights
every sample rather than selecting elites. ``PlanInfo.elite_spread`` reports the spread of the
``num_elites`` best samples under the same feasible-first ranking the other planners use.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dynamics.base import DynamicsModel, LatentState
from planning.planner import Optimised, Planner
from planning.rollout import float_dtype, violation
from planning.types import RewardFn


class MPPI(Planner):
    """MPPI for continuous actions (see the module docstring)."""

    discrete_only = False

    def __init__(self, model: DynamicsModel, reward_fn: RewardFn, horizon: int, *, num_samples: int = 500,
                 iterations: int = 1, noise_std: float = 0.5, temperature: float = 1.0,
                 constraint_penalty: float = 100.0, num_elites: int = 50, **kw):
        super().__init__(model, reward_fn, horizon, **kw)
        if num_samples < 1 or iterations < 1 or noise_std <= 0 or temperature <= 0 or constraint_penalty < 0:
            raise ValueError(f"need num_samples >= 1, iterations >= 1, noise_std > 0, temperature > 0, "
                             f"constraint_penalty >= 0, got {num_samples}, {iterations}, {noise_std}, {temperature}, "
                             f"{constraint_penalty}")
        self.num_samples, self.iterations = int(num_samples), int(iterations)
        self.noise_std, self.temperature = float(noise_std), float(temperature)
        self.constraint_penalty, self.num_elites = float(constraint_penalty), min(int(num_elites), int(num_samples))
        self.last_weights: Tensor | None = None
        """``[n]`` sample weights of the last iteration of the last decision, for inspection."""

    def _optimise(self, state: LatentState, warm: Tensor | None, generator: torch.Generator) -> Optimised:
        device, dtype = state.feat.device, float_dtype(state)
        shape = (self.horizon, self.action_dim)
        U = warm if warm is not None else torch.full(shape, 0.5 * (self.low + self.high), device=device, dtype=dtype)
        for _ in range(self.iterations):
            # 1. perturb the nominal sequence, inside the bounds
            noise = torch.randn((self.num_samples, *shape), device=device, dtype=dtype, generator=generator)
            actions = self._clip(U + self.noise_std * noise)
            # 2. one batched imagine + reward call; constraints as a penalty on the violation
            scores = self.score(state, actions)
            s = scores.returns - self.constraint_penalty * violation(scores, self.cost_limit)
            big = torch.finfo(s.dtype).max / 4        # finite stand-ins, so that s - s.max() below stays finite
            s = torch.nan_to_num(s, nan=-big, posinf=big, neginf=-big)
            # 3. path-integral weights and the weighted average of the (clipped) noise
            w = torch.softmax((s - s.max()) / self.temperature, dim=0)
            U = U + torch.einsum("n,nha->ha", w.to(dtype), actions - U)
        self.last_weights = w
        elites = self.rank(scores)[: self.num_elites]
        return Optimised(U, scores.returns[elites], self.num_samples * self.iterations)
