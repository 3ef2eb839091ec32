"""Gymnasium wrappers: the single env equals the vectorised world step for step, gymnasium's own
checker passes, both make_vec modes work and next-step autoreset behaves as gymnasium documents."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from gymnasium.vector import AutoresetMode

import worlds.lavakeydoor  # noqa: F401  (registers ontolab/LavaKeyDoor-v0)
from worlds.gym_env import WorldEnv, WorldVectorEnv, register_gym_id, register_gym_ids
from worlds.lavakeydoor import LavaKeyDoor

GYM_ID = "ontolab/LavaKeyDoor-v0"
LAVA_NEXT_TO_START = """
#######
#.L#..#
#KA#..#
#..D.G#
#..#..#
#..#..#
#######
"""


def test_single_env_equals_vector_world_step_for_step():
    seed, rng = 11, np.random.default_rng(0)
    env = WorldEnv("lavakeydoor", lava_density=0.2)
    world = LavaKeyDoor(1, env.world.params, seed=None)
    obs_e, info = env.reset(seed=seed)
    obs_w = world.reset(seed=seed)
    episodes = 0
    for _ in range(300):
        assert np.array_equal(obs_e, obs_w[0])
        for k, v in world.concepts().items():
            assert info["concepts"][k] == v[0], k
        assert info["family"] == world.family()[0]
        a = int(rng.integers(0, 5))
        obs_e, r, term, trunc, info = env.step(a)
        res = world.step(np.array([a]))
        obs_w = res.obs
        assert (r, term, trunc) == (pytest.approx(float(res.reward[0])), res.terminated[0], res.truncated[0])
        assert (info["success"], info["violation"]) == (res.success[0], res.violation[0])
        if term or trunc:
            episodes += 1
            obs_e, info = env.reset()
            obs_w = world.reset(mask=res.terminated | res.truncated)
    assert episodes >= 2


def test_gymnasium_env_checker_passes():
    with warnings.catch_warnings():
        warnings.simplefilter("error")                     # the checker reports problems as warnings
        check_env(gym.make(GYM_ID).unwrapped)
        check_env(gym.make(GYM_ID, render_mode="rgb_array").unwrapped)
        check_env(gym.make(GYM_ID, obs_mode="rgb").unwrapped)
        check_env(WorldEnv("lavakeydoor", size=11), skip_render_check=True)   # built directly, no spec


def test_make_passes_params_and_renders():
    env = gym.make(GYM_ID, size=11, view=7, render_mode="rgb_array")
    obs, info = env.reset(seed=0)
    assert obs.shape == (8, 7, 7) and env.unwrapped.world.params.size == 11
    assert env.render().shape == (88, 88, 3)
    assert set(info) == {"concepts", "success", "violation", "family"}


@pytest.mark.parametrize("mode", ["vector_entry_point", "sync"])
def test_make_vec_modes(mode):
    envs = gym.make_vec(GYM_ID, num_envs=8, vectorization_mode=mode, lava_density=0.2)
    assert envs.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    obs, info = envs.reset(seed=0)
    assert obs.shape == (8, 8, 5, 5) and obs in envs.observation_space
    envs.action_space.seed(0)
    ended = 0
    for _ in range(80):
        obs, reward, term, trunc, info = envs.step(envs.action_space.sample())
        assert obs.shape == (8, 8, 5, 5) and reward.shape == term.shape == trunc.shape == (8,)
        assert info["concepts"]["steps_to_goal"].shape == (8,) and info["_concepts"].all()
        ended += int((term | trunc).sum())
    assert ended > 0
    envs.close()


def test_vector_modes_have_the_same_info_structure():
    infos = []
    for mode in ("vector_entry_point", "sync"):
        envs = gym.make_vec(GYM_ID, num_envs=3, vectorization_mode=mode)
        _, info = envs.reset(seed=0)
        _, _, _, _, info = envs.step(np.zeros(3, dtype=np.int64))
        infos.append({k: sorted(v) if isinstance(v, dict) else np.shape(v) for k, v in info.items()})
    assert infos[0] == infos[1]


def test_next_step_autoreset():
    world = LavaKeyDoor.from_layouts([LAVA_NEXT_TO_START], num_envs=2)
    envs = WorldVectorEnv(2, world)
    first, _ = envs.reset(seed=0)
    obs, r, term, trunc, info = envs.step(np.array([1, 0]))    # env 0 walks up into lava
    assert term.tolist() == [True, False] and info["violation"].tolist() == [True, False] and r[0] == -1.0
    obs, r, term, trunc, info = envs.step(np.array([3, 0]))    # env 0 is reset, its action ignored
    assert r[0] == 0.0 and not term[0] and not trunc[0] and not info["violation"][0]
    assert np.array_equal(obs[0], first[0]) and info["concepts"]["agent_col"][0] == 2
    obs, r, term, trunc, info = envs.step(np.array([3, 0]))    # now it moves (onto the key)
    assert info["concepts"]["has_key"].tolist() == [1, 0]


def test_reset_mask_option():
    envs = gym.make_vec(GYM_ID, num_envs=4, vectorization_mode="vector_entry_point")
    obs, _ = envs.reset(seed=0)
    for _ in range(3):
        moved, *_ = envs.step(np.full(4, 4))
    again, _ = envs.reset(options={"reset_mask": np.array([False, True, False, False])})
    assert np.array_equal(again[[0, 2, 3]], moved[[0, 2, 3]])


def test_vector_env_reproducible_under_seed():
    def run(seed):
        envs = gym.make_vec(GYM_ID, num_envs=4, vectorization_mode="vector_entry_point")
        out = [envs.reset(seed=seed)[0]]
        rng = np.random.default_rng(1)
        out += [envs.step(rng.integers(0, 5, 4))[0] for _ in range(40)]
        return np.stack(out)

    assert np.array_equal(run(3), run(3)) and not np.array_equal(run(3), run(4))


def test_registration_is_generic_and_idempotent():
    register_gym_id("lavakeydoor", "ontolab/LavaKeyDoorCopy-v0")
    register_gym_id("lavakeydoor", "ontolab/LavaKeyDoorCopy-v0")
    env = gym.make("ontolab/LavaKeyDoorCopy-v0")
    assert isinstance(env.unwrapped, WorldEnv)
    ids = register_gym_ids()
    assert ids["lavakeydoor"] == GYM_ID and all(i in gym.registry for i in ids.values())


def test_wrong_world_instance_is_refused():
    with pytest.raises(ValueError, match="num_envs=1"):
        WorldEnv(LavaKeyDoor(2, seed=0))
    with pytest.raises(ValueError, match="unknown parameter"):
        gym.make(GYM_ID, lava=0.3)
