"""Planners over discrete action sequences: CEM over per-step categoricals, and exhaustive search.

:class:`DiscreteCEM` (shapes: ``n`` samples, ``h`` horizon, ``A`` actions, ``k`` elites)::

    probs[h A] = uniform, mixed with the one-hot shifted previous plan (warm start)
    repeat `iterations` times:
        actions[n h] ~ Categorical(probs[t]) independently per step; actions[0] = best so far / warm plan
        scores       = one batched imagine + reward call
        elites[k h]  = top k by (violation, -return)                  # feasible first
        probs       <- (1 - smoothing) * elite frequencies + smoothing * probs
    polish: up to `polish_rounds` times, score every single-step change of the best (one imagine call each)
    return the best-ranked sequence seen

It returns the best sequence rather than the per-step mode because the per-step modes of
independent categoricals can form a sequence no elite contains (e.g. half the elites go left then
up, half up then left). The polish (coordinate search, ``h * A`` sequences per round) fixes the
single-step slips CEM often leaves once the categoricals have collapsed -- e.g. a wrong last action,
which the elites of a deceptive problem rarely disagree on; ``polish_rounds=0`` gives plain CEM.

:class:`Exhaustive` scores all ``A**h`` sequences -- the exact optimum, as a reference for short horizons.
"""

from __future__ import annotations

import einops
import torch
import torch.nn.functional as F
from torch import Tensor

from dynamics.base import DynamicsModel, LatentState
from planning.planner import Optimised, Planner
from planning.rollout import Scores
from planning.types import RewardFn


class DiscreteCEM(Planner):
    """Cross-entropy method over categorical action sequences (see the module docstring).

    ``last_probs`` (``[h A]``) holds the final per-step distributions of the last decision.
    """

    discrete_only = True

    def __init__(self, model: DynamicsModel, reward_fn: RewardFn, horizon: int, *, num_samples: int = 500,
                 num_elites: int = 50, iterations: int = 5, smoothing: float = 0.3, warm_weight: float = 0.5,
                 polish_rounds: int = 2, **kw):
        super().__init__(model, reward_fn, horizon, **kw)
        if not 1 <= num_elites <= num_samples or iterations < 1:
            raise ValueError(f"need 1 <= num_elites <= num_samples and iterations >= 1, got "
                             f"{num_elites}, {num_samples}, {iterations}")
        if not 0 <= smoothing < 1 or not 0 <= warm_weight < 1:
            raise ValueError(f"need 0 <= smoothing < 1 and 0 <= warm_weight < 1, got {smoothing}, {warm_weight}")
        self.num_samples, self.num_elites, self.iterations = int(num_samples), int(num_elites), int(iterations)
        self.smoothing, self.warm_weight = float(smoothing), float(warm_weight)
        self.polish_rounds = int(polish_rounds)
        self.last_probs: Tensor | None = None

    def _optimise(self, state: LatentState, warm: Tensor | None, generator: torch.Generator) -> Optimised:
        device, A = state.feat.device, self.num_actions
        probs = torch.full((self.horizon, A), 1.0 / A, device=device)
        if warm is not None:
            probs = self.warm_weight * F.one_hot(warm, A).to(probs) + (1 - self.warm_weight) * probs
        best = warm
        for _ in range(self.iterations):
            # 1. sample each step from its categorical; the best sequence so far always competes
            actions = torch.multinomial(probs, self.num_samples, replacement=True, generator=generator).T  # [n h]
            if best is not None:
                actions[0] = best
            # 2. one batched imagine + reward call; feasible-first elites
            scores = self.score(state, actions)
            order = self.rank(scores)
            idx = order[: self.num_elites]
            best = actions[order[0]]
            # 3. refit the per-step categoricals to the elites' action frequencies, smoothed
            freq = F.one_hot(actions[idx], A).to(probs).mean(0)                                              # [h A]
            probs = (1 - self.smoothing) * freq + self.smoothing * probs
        self.last_probs = probs
        elite_returns, total = scores.returns[idx], self.num_samples * self.iterations
        # 4. polish: try every single-step change of the best sequence (h * A sequences, one imagine call)
        for _ in range(self.polish_rounds):
            h = torch.arange(self.horizon, device=device)
            changed = einops.repeat(best, "h -> t a h", t=self.horizon, a=A).clone()
            changed[h, :, h] = torch.arange(A, device=device)                                         # [t a h]
            candidates = torch.cat([best[None], einops.rearrange(changed, "t a h -> (t a) h")])
            scores = self.score(state, candidates)
            total += int(candidates.shape[0])
            top = int(self.rank(scores)[0])
            if top == 0:
                break
            best = candidates[top]
        return Optimised(best, elite_returns, total)


class Exhaustive(Planner):
    """Scores every one of the ``A**h`` sequences and returns the best (feasible first).

    Refuses more than ``max_sequences``; ``chunk`` (optional) splits the batch into several
    ``imagine`` calls to bound memory (one call by default).
    """

    discrete_only = True

    def __init__(self, model: DynamicsModel, reward_fn: RewardFn, horizon: int, *, max_sequences: int = 1 << 18,
                 chunk: int | None = None, num_elites: int = 10, **kw):
        super().__init__(model, reward_fn, horizon, **kw)
        total = self.num_actions ** self.horizon
        if total > max_sequences:
            raise ValueError(f"exhaustive search over {self.num_actions}**{self.horizon} = {total} sequences exceeds "
                             f"max_sequences={max_sequences}; shorten the horizon or use discrete_cem")
        self.total, self.chunk, self.num_elites = total, chunk or total, min(int(num_elites), total)

    def sequences(self, device: torch.device) -> Tensor:
        """``int64[A**h h]`` every sequence, in lexicographic order (step 0 most significant)."""
        A, h = self.num_actions, self.horizon
        index = torch.arange(self.total, device=device)
        powers = A ** torch.arange(h - 1, -1, -1, device=device)
        return (index[:, None] // powers) % A

    def _optimise(self, state: LatentState, warm: Tensor | None, generator: torch.Generator) -> Optimised:
        actions = self.sequences(state.feat.device)
        scores = Scores.cat([self.score(state, actions[i:i + self.chunk]) for i in range(0, self.total, self.chunk)])
        order = self.rank(scores)
        return Optimised(actions[order[0]], scores.returns[order[: self.num_elites]], self.total)
