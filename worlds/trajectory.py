"""Trajectories: the one type every stage uses to pass real experience around.

Step convention (as in DreamerV3): step ``t`` holds the observation ``obs[t]`` *and the action
that led into it*, ``actions[t]``. At the first step of an episode (``is_first[t]``) there is no
such action and ``actions[t]`` is zero. So a model filters ``(actions[t], obs[t])`` pairs in order,
and ``imagine(state_t, actions[t+1 : t+1+h])`` predicts steps ``t+1 .. t+h``.

Concept values, true rewards, success and violation flags are labels of the state *at* step ``t``
(the reward is the one received on arriving there). They are for probes and evaluation only; the
dynamics network reads ``obs``, ``actions`` and ``is_first`` and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Episode:
    """One episode of length ``t`` (number of steps, initial observation included)."""

    obs: np.ndarray
    """``[t *obs_shape]`` observations (uint8 symbolic channels / image, or float32 vectors)."""
    actions: np.ndarray
    """``[t]`` int64 (discrete) or ``[t a]`` float32 (continuous): the action that led into step t."""
    is_first: np.ndarray
    """``[t]`` bool, true at step 0 only."""
    is_terminal: np.ndarray
    """``[t]`` bool, true at the last step if the episode ended in the world (not by time limit)."""
    reward: np.ndarray
    """``[t]`` float32 true reward received on arriving at step t -- evaluation only."""
    success: np.ndarray
    """``[t]`` bool -- evaluation only."""
    violation: np.ndarray
    """``[t]`` bool: a boundary was crossed arriving at step t -- evaluation only."""
    concepts: dict[str, np.ndarray] = field(default_factory=dict)
    """``{name: [t]}`` true concept values of the state at each step -- probes and evaluation only."""
    family: int = 0
    """Layout family index (into the world's ``families``)."""

    def __len__(self) -> int:
        return int(self.obs.shape[0])

    def step_fields(self) -> dict[str, np.ndarray]:
        """Every per-step array by its storage name (concepts as ``concept.<name>``)."""
        out = {
            "obs": self.obs, "actions": self.actions, "is_first": self.is_first,
            "is_terminal": self.is_terminal, "reward": self.reward,
            "success": self.success, "violation": self.violation,
        }
        out.update({f"concept.{k}": v for k, v in self.concepts.items()})
        return out

    def validate(self) -> None:
        """Raise ``ValueError`` if the per-step arrays disagree in length or the flags are inconsistent."""
        t = len(self)
        if t < 1:
            raise ValueError("an episode needs at least one step")
        bad = {k: v.shape for k, v in self.step_fields().items() if v.shape[:1] != (t,)}
        if bad:
            raise ValueError(f"per-step arrays must all have length {t}, got {bad}")
        if not self.is_first[0] or self.is_first[1:].any():
            raise ValueError("is_first must be true at step 0 and only there")
        if self.is_terminal[:-1].any():
            raise ValueError("is_terminal may only be true at the last step")
        if self.obs.dtype.kind == "f" and not np.isfinite(self.obs).all():
            raise ValueError("observations contain NaN or inf")
