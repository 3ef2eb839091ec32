"""The callable types every planner is written against, declared once (after mbrl-lib's ``mbrl/types.py``).

A planner never knows which world, model or reward it optimises: it calls

    ``model.imagine(state[n ...], actions[n h *act]) -> states[n h ...]``   (a :class:`~dynamics.base.DynamicsModel`)
    ``reward_fn(states[n h ...], actions[n h *act]) -> StepRewards``       (a :data:`RewardFn`)

``StepRewards`` is anything with ``reward[n h]`` and ``cost[n h]`` tensors -- a
:class:`rewards.RewardOutput` is one. A compiled :class:`rewards.RewardSpec` becomes a
:data:`RewardFn` through :func:`concept_reward` and a :data:`ConceptReader` that says how concept
values are read off imagined states: a fitted ontology's probes (the point of ontolab), or the
oracle model's true concepts (:mod:`planning.oracle`, evaluation only).
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch
from torch import Tensor

from dynamics.base import LatentState
from rewards import CompiledReward, ConceptSource, RewardOutput


class StepRewards(Protocol):
    """Per-step reward and constraint cost of a batch of imagined states (shapes ``[n h]``)."""

    @property
    def reward(self) -> Tensor:
        """``[n h]`` reward of the state reached by step ``t``."""

    @property
    def cost(self) -> Tensor:
        """``[n h]`` constraint cost >= 0 of that state (zeros without constraints)."""


RewardFn = Callable[[LatentState, Tensor], StepRewards]
"""``reward_fn(states[n h ...], actions[n h *act]) -> StepRewards``: reward and cost of every imagined step.

``states`` is what ``model.imagine`` returned (step ``t`` is the state *after* ``actions[:, t]``).
It must be batched (no Python loop over ``n``) and must not change its inputs.
"""

ConceptReader = Callable[[LatentState], ConceptSource]
"""``read(states[*b ...]) -> ConceptSource``: concept values of a batch of latent states, as a
:data:`rewards.Resolver` (``resolve(name, mode) -> [*b]``) or a ``{(name, mode): tensor}`` dict."""


def concept_reward(compiled: CompiledReward, read: ConceptReader) -> RewardFn:
    """The :data:`RewardFn` of a compiled reward spec whose concepts are read off imagined states by ``read``.

    ``read`` is called once per batch with the ``[n h ...]`` states; the compiled reward then
    resolves exactly the concepts it uses, in the states' dtype. A spec that reads no concept at all
    (a constant such as ``-0.01``) takes its batch shape ``[n h]`` from the states' leading dims
    (``feat[n h d]``, the same as ``actions[n h]``) and the states' device and float dtype.
    """

    def reward_fn(states: LatentState, actions: Tensor) -> StepRewards:
        if compiled.uses:
            return compiled(read(states))
        feat = states.feat
        dtype = feat.dtype if feat.is_floating_point() else torch.get_default_dtype()
        out = compiled(read(states), dtype=dtype, batch_shape=feat.shape[:-1])
        move = lambda t: t.to(feat.device)  # noqa: E731  (a constant is built on the CPU)
        return RewardOutput(move(out.reward), move(out.cost), {k: move(v) for k, v in out.costs.items()})

    return reward_fn
