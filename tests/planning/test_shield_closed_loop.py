"""The shield in the real closed loop: on the exact simulator, a reward that pays for lava and a planner that
ignores constraints walk into lava; the same planner behind a shield never does."""

from __future__ import annotations

import math

import numpy as np
import torch

from planning import Shield, make_planner, oracle_model
from planning.closed_loop import TrueStatePlannerPolicy, run_closed_loop
from rewards import RewardSpec
from worlds.lavakeydoor.world import LavaKeyDoor, LavaKeyDoorParams

# Lava two steps right of the start: "right, right" surely enters it.
LAYOUT = """
#######
#.....#
#A.L.G#
#..L..#
#.....#
#.....#
#######
"""
LURE = RewardSpec("in_lava", ("never in_lava",))     # the reward pays for exactly what the constraint forbids


def _loop(shielded: bool, episodes: int = 4):
    world = LavaKeyDoor.from_layouts([LAYOUT], num_envs=2, params=LavaKeyDoorParams(max_steps=8))
    oracle = oracle_model(world)
    planner = make_planner("exhaustive", oracle, oracle.true_reward(LURE), 3, cost_limit=math.inf)  # ignores the constraint
    policy = planner if not shielded else Shield(planner, threshold=0.0, continuations=4)
    return run_closed_loop(world, TrueStatePlannerPolicy(oracle, policy, world.num_envs), episodes, seed=0)


def test_shield_keeps_a_lava_seeking_planner_out_of_lava():
    torch.manual_seed(0)
    bare, shielded = _loop(False), _loop(True)
    assert (bare.violations > 0).all() and not bare.decisions.vetoed.any()    # every unshielded episode dies
    assert (shielded.violations == 0).all() and shielded.truncated.all()       # shielded: alive until the time limit
    d = shielded.decisions
    assert d.vetoed.any() and len(d.vetoed) == shielded.steps.sum()
    # a veto happens exactly where the planner's proposal enters lava next step: never at the start (two away)
    assert not d.vetoed[d.step == 0].any()
    np.testing.assert_array_equal(shielded.steps, 8)
