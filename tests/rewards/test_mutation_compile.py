"""Mutation audit of rewards/compile.py: ``clip`` with crossed bounds follows torch and numpy.

``clip(x, lo, hi) = min(max(x, lo), hi)`` (the module docstring): with ``lo > hi`` every value becomes ``hi``,
as ``torch.clamp`` and ``numpy.clip`` do. The other tests use only ``lo <= hi``, where
``max(min(x, hi), lo)`` gives the same numbers, so a swap of the two operations went unnoticed.
"""

from __future__ import annotations

import numpy as np
import torch

from rewards.ast import ConceptUse
from rewards.spec import RewardSpec
from worlds.concepts import Concept, ConceptSchema

SCHEMA = ConceptSchema((
    Concept("dist", "scalar", "Distance to a hazard.", unit="m", low=0, high=3),
    Concept("steps_to_goal", "scalar", "Steps to the goal.", unit="cells", low=0, high=50),
))
DIST = [0.0, 0.05, 0.5, 1.5, 3.0]
STEPS = [0.0, 4.0, 7.0, 2.0, 50.0]


def _reward(text: str) -> np.ndarray:
    source = {ConceptUse("dist", "value"): torch.tensor(DIST, dtype=torch.float64),
              ConceptUse("steps_to_goal", "value"): torch.tensor(STEPS, dtype=torch.float64)}
    return RewardSpec(text).compile(SCHEMA)(source).reward.numpy()


def test_clip_with_crossed_bounds_gives_the_upper_bound_like_torch_and_numpy():
    x = np.array(DIST)
    got = _reward("clip(dist, 1, 0.2)")
    np.testing.assert_array_equal(got, np.full(5, 0.2))
    np.testing.assert_array_equal(got, np.clip(x, 1.0, 0.2))
    np.testing.assert_array_equal(got, torch.clamp(torch.tensor(x), 1.0, 0.2).numpy())


def test_clip_with_bounds_read_from_concepts_elementwise():
    x, s = np.array(DIST), np.array(STEPS)
    got = _reward("clip(dist, steps_to_goal / 10, 1)")   # lo = 0, 0.4, 0.7, 0.2, 5 (crossed in the last)
    np.testing.assert_allclose(got, np.minimum(np.maximum(x, s / 10), 1.0), rtol=0, atol=1e-15)
    assert got[-1] == 1.0                                # lo 5 > hi 1: the upper bound wins
