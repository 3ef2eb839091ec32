"""MiniGrid worlds through GymAdapterWorld: labels equal MiniGrid's own state after scripted
actions, lava is a violation, the encoding agrees with MiniGrid's constants, the BFS oracle is optimal."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("minigrid")

from minigrid.core.constants import OBJECT_TO_IDX, STATE_TO_IDX  # noqa: E402

from worlds import make_world  # noqa: E402
from worlds.minigrid_adapter import (  # noqa: E402
    CELL_CLASSES,
    MiniGridDoorKey,
    MiniGridDoorKeyParams,
    MiniGridLavaCrossing,
    MiniGridLavaCrossingParams,
    minigrid_symbolic,
)

LEFT, RIGHT, FORWARD, PICKUP, DROP, TOGGLE = range(6)
VEC = ((1, 0), (0, 1), (-1, 0), (0, -1))  # MiniGrid's DIR_TO_VEC


def _find(env, kind: str) -> list[tuple[int, int]]:
    return [(x, y) for x in range(env.grid.width) for y in range(env.grid.height)
            if env.grid.get(x, y) is not None and env.grid.get(x, y).type == kind]


def _face(env, cell: tuple[int, int]) -> None:
    """Put the agent on a free neighbour of ``cell`` facing it (writes MiniGrid's own state)."""
    for d, (dx, dy) in enumerate(VEC):
        x, y = cell[0] - dx, cell[1] - dy
        here = env.grid.get(x, y)
        if 0 < x < env.grid.width - 1 and 0 < y < env.grid.height - 1 and (here is None or here.type == "floor"):
            env.agent_pos, env.agent_dir = (x, y), d
            return
    raise AssertionError(f"no free cell next to {cell}")


def _independent_labels(env) -> dict[str, float]:
    """What MiniGrid's own state says, read differently from the labeler (agent_sees, Door fields)."""
    door = env.grid.get(*_find(env, "door")[0])
    keys = _find(env, "key")
    return {
        "agent_col": env.agent_pos[0], "agent_row": env.agent_pos[1], "agent_dir": env.agent_dir,
        "has_key": int(env.carrying is not None and env.carrying.type == "key"),
        "door_open": int(door.is_open), "at_goal": int(tuple(env.agent_pos) in _find(env, "goal")),
        "key_visible": int(bool(keys) and env.agent_sees(*keys[0])),
    }


def test_doorkey_scripted_pickup_unlock_and_goal():
    w = MiniGridDoorKey(1, seed=0)
    w.reset()
    env = w.envs()[0]
    assert w.concepts()["has_key"][0] == 0 and w.concepts()["door_open"][0] == 0
    _face(env, _find(env, "key")[0])
    r = w.step(np.array([PICKUP]))
    c = w.concepts()
    assert c["has_key"][0] == 1 and env.carrying.type == "key" and not r.terminated[0]
    assert r.obs[0, CELL_CLASSES.index("key"), 6, 3] == 1  # the carried key shows in the agent's cell
    _face(env, _find(env, "door")[0])
    w.step(np.array([TOGGLE]))
    assert w.concepts()["door_open"][0] == 1 and env.grid.get(*_find(env, "door")[0]).is_open
    _face(env, _find(env, "goal")[0])
    r = w.step(np.array([FORWARD]))
    assert r.success[0] and r.terminated[0] and not r.violation[0] and r.reward[0] > 0
    assert w.concepts()["at_goal"][0] == 1 and w.concepts()["steps_to_goal"][0] == 0


def test_doorkey_labels_equal_minigrid_state_along_random_and_oracle_rollouts():
    w = MiniGridDoorKey(3, MiniGridDoorKeyParams(families=("5x5", "6x6", "8x8")), seed=1)
    w.reset()
    rng = np.random.default_rng(0)
    seen = {k: set() for k in ("has_key", "door_open", "key_visible")}
    for t in range(120):
        c = w.concepts()
        for i, env in enumerate(w.envs()):
            for k, v in _independent_labels(env).items():
                assert c[k][i] == v, (t, i, k)
        for k in seen:
            seen[k] |= set(c[k].tolist())
        actions = w.oracle_actions() if t % 3 else w.sample_actions(rng)
        r = w.step(actions)
        if (r.terminated | r.truncated).any():
            w.reset(mask=r.terminated | r.truncated)
    assert all(v == {0, 1} for v in seen.values()), seen  # each binary concept took both values


@pytest.mark.parametrize("cls, params", [
    (MiniGridLavaCrossing, MiniGridLavaCrossingParams(families=("S9N1", "S11N5"))),
    (MiniGridDoorKey, MiniGridDoorKeyParams(families=("6x6", "8x8"))),
])
def test_oracle_is_a_shortest_plan(cls, params):
    """Following the BFS oracle lowers steps_to_goal by exactly one per step and ends in success."""
    w = cls(4, params, seed=2)
    w.reset()
    running = np.ones(4, bool)
    before = w.concepts()["steps_to_goal"]
    while running.any():
        r = w.step(w.oracle_actions())
        after = w.concepts()["steps_to_goal"]
        np.testing.assert_array_equal(after[running], before[running] - 1)
        assert r.success[r.terminated].all() and not r.violation.any() and not r.truncated[running].any()
        running &= ~r.terminated
        before = after


def test_lava_step_is_a_violation():
    w = MiniGridLavaCrossing(1, seed=3)
    w.reset()
    env = w.envs()[0]
    _face(env, _find(env, "lava")[0])
    c = w.concepts()
    assert c["lava_ahead"][0] == 1 and c["in_lava"][0] == 0
    r = w.step(np.array([FORWARD]))
    assert r.violation[0] and r.terminated[0] and not r.success[0] and r.reward[0] == 0
    assert w.concepts()["in_lava"][0] == 1
    assert tuple(env.agent_pos) in _find(env, "lava")


def test_symbolic_encoding_agrees_with_minigrid_constants_and_image():
    for name, idx in OBJECT_TO_IDX.items():
        img = np.zeros((7, 7, 3), np.uint8)
        img[..., 0] = idx
        for state, s in STATE_TO_IDX.items():
            img[..., 2] = s
            expect = f"door_{state}" if name == "door" else name
            onehot = minigrid_symbolic({"image": img})
            assert (onehot[CELL_CLASSES.index(expect)] == 1).all()
    w = MiniGridDoorKey(2, seed=4)
    obs = w.reset()
    assert obs.shape == (2, 13, 7, 7) and obs.dtype == np.uint8 and (obs.sum(1) == 1).all()
    image = w.envs()[0].gen_obs()["image"]  # [w h 3]
    wall = CELL_CLASSES.index("wall")
    np.testing.assert_array_equal(obs[0, wall], (image[..., 0] == OBJECT_TO_IDX["wall"]).T)


def test_seeded_worlds_are_reproducible():
    def rollout(seed):
        w = make_world("minigrid_lavacrossing", num_envs=2, seed=seed, families=("S9N1", "S9N2"))
        rng, out = np.random.default_rng(0), [w.reset()]
        for _ in range(15):
            r = w.step(w.sample_actions(rng))
            out.append(w.reset(mask=r.terminated | r.truncated))
        return np.stack(out), w.family()

    (a, fa), (b, fb), (c, _) = rollout(5), rollout(5), rollout(6)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(fa, fb)
    assert not np.array_equal(a, c)


def test_params_are_validated_and_gym_ids_work():
    import gymnasium as gym

    with pytest.raises(ValueError, match="S9N1"):
        make_world("minigrid_lavacrossing", families=("S99",))
    with pytest.raises(ValueError, match="allowed: families, max_steps"):
        make_world("minigrid_doorkey", size=6)
    w = make_world("minigrid_doorkey", num_envs=1, seed=0, max_steps=2)
    w.reset()
    assert not w.step(np.array([LEFT])).truncated[0] and w.step(np.array([LEFT])).truncated[0]
    env = gym.make("ontolab/MiniGridLavaCrossing-v0")
    obs, info = env.reset(seed=0)
    assert obs.shape == (13, 7, 7) and "lava_ahead" in info["concepts"]


def test_a_reset_mask_of_the_wrong_shape_is_refused():
    from worlds.pointmass import PointMass, PointMassParams

    for w in (make_world("minigrid_lavacrossing", num_envs=2, seed=0, families=("S9N1",)), PointMass(2, PointMassParams(), seed=0)):
        w.reset()
        with pytest.raises(ValueError, match=r"mask must have shape \(2,\)"):
            w.reset(mask=np.array([True, False, True]))
        assert w.reset(mask=np.array([True, False])).shape[0] == 2
