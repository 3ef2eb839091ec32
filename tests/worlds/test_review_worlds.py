"""Review of worlds/ against independent references.

* lavakeydoor: steps_to_goal against a BFS over (cell, has_key, door_open) written from the rules alone, on grid
  sizes the main tests do not use (7 and 11); the egocentric view, the *_visible concepts, dist_to_lava and
  lava_adjacent against a view rebuilt cell by cell from the grid;
* collected datasets: the action stored at step t is the one that moved the agent from step t-1 to step t;
* the gymnasium vector env equals gymnasium's own ``SyncVectorEnv`` (next-step autoreset) step for step;
* MiniGrid: ``steps_to_goal`` in lava is the cap (it used to be the length of a path walking out of the lava).
"""

from __future__ import annotations

import collections
import warnings

import numpy as np
import pytest

from worlds.lavakeydoor import LavaKeyDoor, LavaKeyDoorParams
from worlds.lavakeydoor import layout as L

MOVES = ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1))


def rule_bfs(cells: np.ndarray, pos, has_key: bool, door_open: bool) -> int | None:
    """Fewest actions to the goal, simulating the module docstring's rules move by move (lava never entered)."""
    s = cells.shape[0]
    if cells[pos[0], pos[1]] == L.GOAL:
        return 0
    key = tuple(np.argwhere(cells == L.KEY)[0]) if (cells == L.KEY).any() else None
    start = (int(pos[0]), int(pos[1]), bool(has_key), bool(door_open))
    dist, queue = {start: 0}, collections.deque([start])
    while queue:
        r, c, k, d = state = queue.popleft()
        for dr, dc in MOVES[1:]:
            nr, nc = r + dr, c + dc
            if not (0 <= nr < s and 0 <= nc < s) or cells[nr, nc] in (L.WALL, L.LAVA):
                continue
            nd = d
            if cells[nr, nc] == L.DOOR_LOCKED and not d:
                if not k:
                    continue  # locked and no key: blocked
                nd = True     # opened, and moved onto it in the same step
            if cells[nr, nc] == L.GOAL:
                return dist[state] + 1
            nxt = (nr, nc, k or (nr, nc) == key, nd)
            if nxt not in dist:
                dist[nxt] = dist[state] + 1
                queue.append(nxt)
    return None


def view_of(cells: np.ndarray, pos, v: int) -> np.ndarray:
    """The ``v x v`` window centred on ``pos``, cell by cell, ``OUTSIDE`` beyond the grid."""
    s, h = cells.shape[0], v // 2
    out = np.full((v, v), L.OUTSIDE)
    for a in range(v):
        for b in range(v):
            r, c = pos[0] - h + a, pos[1] - h + b
            if 0 <= r < s and 0 <= c < s:
                out[a, b] = cells[r, c]
    return out


@pytest.mark.parametrize("size,view,families", [(7, 3, ("scatter", "river", "rooms")),
                                                (11, 5, ("scatter", "river", "rooms", "moat"))])
def test_lavakeydoor_labels_and_view_against_a_rule_bfs_and_a_rebuilt_view(size, view, families):
    w = LavaKeyDoor(12, LavaKeyDoorParams(size=size, view=view, families=families, lava_density=0.25), seed=size)
    rng, cap = np.random.default_rng(0), w.params.steps_cap
    obs = w.reset()
    for _ in range(15):
        grid, pos, c = w.grid(), w.agent_pos(), w.concepts()
        for i in range(w.num_envs):
            ref = cap if c["in_lava"][i] else rule_bfs(grid[i], pos[i], c["has_key"][i], c["door_open"][i])
            assert c["steps_to_goal"][i] == (cap if ref is None else min(ref, cap))
            lava = np.argwhere(grid[i] == L.LAVA)
            manhattan = np.abs(lava - pos[i]).sum(1).min() if len(lava) else 2 * (size - 1)
            assert c["dist_to_lava"][i] == manhattan
            assert c["lava_adjacent"][i] == any(grid[i][pos[i][0] + dr, pos[i][1] + dc] == L.LAVA for dr, dc in MOVES[1:])
            ref_view = view_of(grid[i], pos[i], view)
            assert obs[i].shape == (len(L.CELL_NAMES), view, view) and (obs[i].sum(0) == 1).all()
            assert (obs[i].argmax(0) == ref_view).all()
            assert c["key_visible"][i] == (ref_view == L.KEY).any()
            assert c["goal_visible"][i] == (ref_view == L.GOAL).any()
            assert c["door_visible"][i] == np.isin(ref_view, (L.DOOR_LOCKED, L.DOOR_OPEN)).any()
        a = np.where(rng.random(w.num_envs) < 0.6, w.oracle_actions(), rng.integers(0, 5, w.num_envs))
        res = w.step(a)
        obs = w.reset(mask=res.terminated | res.truncated)


def test_collected_actions_lead_into_their_step(tmp_path):
    from worlds.collect import collect
    from worlds.dataset import TrajectoryDataset
    from worlds.policies import make_policy

    w = LavaKeyDoor(6, LavaKeyDoorParams(size=7), seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rare-concept warning on a tiny dataset
        rep = collect(w, make_policy("mixture"), 24, tmp_path / "ds", seed=1, progress=False, shard_steps=64)
    ds = TrajectoryDataset.open(rep.path)
    moves, moved = np.array(MOVES), 0
    for i in range(ds.num_episodes):
        e = ds.episode(i)
        pos = np.stack([e.concepts["agent_row"], e.concepts["agent_col"]], 1).astype(int)
        assert e.actions[0] == 0 and e.is_first[0] and not e.is_first[1:].any()
        step = np.diff(pos, axis=0)
        expected = moves[e.actions[1:]]
        blocked = (step == 0).all(1)
        assert ((step == expected).all(1) | blocked).all()   # a move is the action's, or the move was blocked
        moved += int((~blocked).sum())
        assert (np.diff(e.concepts["has_key"].astype(int)) >= 0).all()
        assert e.success[-1] == e.concepts["at_goal"][-1] and e.violation[-1] == e.concepts["in_lava"][-1]
    assert moved > 50


@pytest.mark.parametrize("name,params", [("lavakeydoor", {"size": 7, "max_steps": 12}), ("pointmass", {"max_steps": 10})])
def test_vector_env_equals_gymnasiums_sync_vector_env(name, params):
    """gymnasium's own SyncVectorEnv over the single env is the reference for next-step autoreset."""
    from gymnasium.vector import AutoresetMode, SyncVectorEnv

    from worlds.gym_env import WorldEnv, WorldVectorEnv

    ref = SyncVectorEnv([lambda: WorldEnv(name, **params)], autoreset_mode=AutoresetMode.NEXT_STEP)
    env = WorldVectorEnv(1, name, **params)
    o_ref, _ = ref.reset(seed=5)
    o, _ = env.reset(seed=5)
    assert np.array_equal(o_ref, o)
    rng, ends = np.random.default_rng(0), 0
    for _ in range(60):
        a = rng.uniform(-1, 1, (1, 2)).astype(np.float32) if name == "pointmass" else rng.integers(0, 5, size=1)
        got, want = env.step(a), ref.step(a)
        for x, y in zip(got[:4], want[:4]):
            np.testing.assert_allclose(x, y)
        for k, v in want[4]["concepts"].items():
            np.testing.assert_allclose(got[4]["concepts"][k], v)
        assert np.array_equal(got[4]["success"], want[4]["success"])
        ends += int(want[2][0] or want[3][0])
    assert ends >= 3  # autoresets happened


def _step_into_lava(world) -> None:
    env = world.envs()[0]
    lava = [(x, y) for x in range(env.grid.width) for y in range(env.grid.height)
            if env.grid.get(x, y) is not None and env.grid.get(x, y).type == "lava"]
    for x0, y0 in lava:
        for d, (dx, dy) in enumerate(((1, 0), (0, 1), (-1, 0), (0, -1))):
            x, y = x0 - dx, y0 - dy
            if 0 < x < env.grid.width - 1 and 0 < y < env.grid.height - 1 and env.grid.get(x, y) is None:
                env.agent_pos, env.agent_dir = (x, y), d
                res = world.step(np.array([2]))  # forward
                assert res.violation[0] and res.terminated[0]
                return
    raise AssertionError("no free cell next to lava")


def test_minigrid_steps_to_goal_is_the_cap_in_lava():
    """In lava the episode is over: steps_to_goal is STEPS_CAP (as lavakeydoor caps it). The BFS used to start from
    the lava cell and walk out of it, so a dead agent next to the goal was labelled 1 or 2 steps from it."""
    pytest.importorskip("minigrid")
    from worlds.minigrid_adapter import STEPS_CAP, MiniGridLavaCrossing, shortest_plan

    for seed in range(3):
        w = MiniGridLavaCrossing(1, seed=seed)
        w.reset()
        assert w.concepts()["steps_to_goal"][0] < STEPS_CAP  # solvable from the start
        _step_into_lava(w)
        c = w.concepts()
        assert c["in_lava"][0] == 1
        assert c["steps_to_goal"][0] == STEPS_CAP
        assert shortest_plan(w.envs()[0]) == (0, STEPS_CAP)
