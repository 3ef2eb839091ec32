"""The "how to add a world" example of the README runs as written.

The code between the ``example`` markers below is the README's code, verbatim (one block per
marked region); ``test_readme_shows_this_example`` fails when the two drift apart.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

# --- example 1 start ---
from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from worlds import Concept, ConceptSchema, StepResult, VectorWorld, make_world, register_world


@dataclass(frozen=True)
class CliffWalkParams:
    length: int = 8
    """Cells in the corridor: cell 0 is a cliff, the last cell is the goal."""


class CliffWalk(VectorWorld):
    """A 1-D corridor, stepped as arrays: action 0 steps left, 1 steps right."""

    name, families, obs_kind = "cliffwalk", ("default",), "vector"

    def __init__(self, num_envs: int, params: CliffWalkParams = CliffWalkParams(), seed: int | None = None):
        self.num_envs, self.length, self.rng = num_envs, params.length, np.random.default_rng(seed)
        self.schema = ConceptSchema((
            Concept("at_cliff", "binary", "The walker fell off the cliff."),
            Concept("dist_to_goal", "scalar", "Cells left to walk.", unit="cells", low=0, high=params.length - 1),
        ))
        self.single_observation_space = gym.spaces.Box(0, 1, (params.length,), np.float32)
        self.single_action_space = gym.spaces.Discrete(2)
        self.pos = np.ones(num_envs, np.int64)

    def reset(self, seed=None, mask=None):
        self.rng = self.rng if seed is None else np.random.default_rng(seed)
        mask = np.ones(self.num_envs, bool) if mask is None else mask
        self.pos[mask] = self.rng.integers(1, self.length - 1, mask.sum())
        return np.eye(self.length, dtype=np.float32)[self.pos]

    def step(self, actions):
        self.pos = np.clip(self.pos + 2 * np.asarray(actions) - 1, 0, self.length - 1)
        win, fall = self.pos == self.length - 1, self.pos == 0
        obs = np.eye(self.length, dtype=np.float32)[self.pos]
        return StepResult(obs, win - fall.astype(np.float32), win | fall, np.zeros_like(win), win, fall)

    def concepts(self):
        return {"at_cliff": (self.pos == 0).astype(np.uint8),
                "dist_to_goal": (self.length - 1.0 - self.pos).astype(np.float32)}

    def family(self):
        return np.zeros(self.num_envs, np.int64)

    def oracle_actions(self):
        return np.ones(self.num_envs, np.int64)


register_world(CliffWalk, CliffWalkParams)
world = make_world("cliffwalk", num_envs=4, seed=0, length=6)
# --- example 1 end ---

# --- example 2 start ---
import gymnasium as gym

from worlds import Concept, ConceptSchema
from worlds.gym_adapter import GymAdapterWorld

cartpole = GymAdapterWorld(
    lambda: gym.make("CartPole-v1"),
    labeler=lambda env: {"leaning_right": env.state[2] > 0},  # env is the unwrapped env
    schema=ConceptSchema((Concept("leaning_right", "binary", "The pole leans to the right."),)),
    num_envs=4,
    seed=0,
)
# --- example 2 end ---

ROOT = Path(__file__).resolve().parents[2]


def test_custom_world_builds_steps_and_labels():
    obs = world.reset()
    assert obs.shape == (4, 6) and world.num_envs == 4 and world.length == 6
    start = world.pos.copy()
    c = world.concepts()
    world.schema.check(c)
    np.testing.assert_array_equal(c["dist_to_goal"], 5 - start)
    res = world.step(np.zeros(4, np.int64))  # one step left
    np.testing.assert_array_equal(world.pos, start - 1)
    np.testing.assert_array_equal(res.violation, start == 1)
    np.testing.assert_array_equal(world.concepts()["at_cliff"], (start == 1).astype(np.uint8))
    world.reset(mask=res.terminated)
    reached = np.zeros(4, bool)
    for _ in range(4):  # the oracle walks right: from any start cell (1..4) it reaches cell 5 in 4 steps
        res = world.step(world.oracle_actions())
        reached |= res.success
        world.reset(mask=res.terminated)
    assert reached.all()


def test_unknown_param_is_refused_listing_the_allowed_ones():
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['width'\].*allowed: length"):
        make_world("cliffwalk", width=3)


def test_any_gymnasium_env_with_a_labeler():
    obs = cartpole.reset()
    assert obs.shape == (4, 4) and obs.dtype == np.float32
    for _ in range(5):
        c = cartpole.concepts()
        angles = np.array([env.state[2] for env in cartpole.envs()])
        np.testing.assert_array_equal(c["leaning_right"], (angles > 0).astype(np.uint8))
        res = cartpole.step(cartpole.oracle_actions())  # no oracle given: random actions
        assert res.obs.shape == (4, 4) and not res.success.any() and not res.violation.any()


def _marked_blocks(text: str) -> list[str]:
    return [m.strip("\n") for m in re.findall(r"# --- example \d start ---\n(.*?)# --- example \d end ---", text, re.S)]


def test_readme_shows_this_example():
    readme = ROOT / "README.md"
    text = readme.read_text()
    assert "## Adding a world" in text, "README.md lost its 'Adding a world' section"
    section = text.split("## Adding a world", 1)[1].split("\n## ", 1)[0]
    shown = [b.strip("\n") for b in re.findall(r"```python\n(.*?)```", section, re.S)]
    assert shown == _marked_blocks(Path(__file__).read_text()), "README example and this test differ; copy one to the other"
