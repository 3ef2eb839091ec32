"""Rules, labels and generator of the lava-key-door world, against hand-computed values and a
brute-force search over (position, has_key, door_open) states written independently here."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest

from worlds.lavakeydoor import FAMILIES, LavaKeyDoor, LavaKeyDoorParams
from worlds.lavakeydoor import layout as L
from worlds.registry import make_world

NOOP, UP, DOWN, LEFT, RIGHT = range(5)

# start (1,1); key (3,1); door (3,3); goal (3,5); lava (4,1) and (5,5)
LAYOUT = """
#######
#A.#..#
#..#..#
#K.D.G#
#L.#..#
#..#.L#
#######
"""
# the agent stands next to the locked door without the key
NO_KEY = """
#######
#..#..#
#.AD.G#
#..#..#
#.K#..#
#..#..#
#######
"""


def world(*layouts: str, **params) -> LavaKeyDoor:
    return LavaKeyDoor.from_layouts(list(layouts), params=LavaKeyDoorParams(**params))


def act(w: LavaKeyDoor, *actions: int):
    res = None
    for a in actions:
        res = w.step(np.array([a]))
    return res


def test_walls_block_and_moves():
    w = world(LAYOUT)
    act(w, UP)
    assert w.agent_pos()[0].tolist() == [1, 1]
    act(w, LEFT)
    assert w.agent_pos()[0].tolist() == [1, 1]
    act(w, RIGHT, RIGHT)                                   # (1,3) is a wall
    assert w.agent_pos()[0].tolist() == [1, 2]
    act(w, DOWN, NOOP)
    assert w.agent_pos()[0].tolist() == [2, 2]


def test_key_pickup_removes_key():
    w = world(LAYOUT)
    res = act(w, DOWN, DOWN)
    c = w.concepts()
    assert w.agent_pos()[0].tolist() == [3, 1] and c["has_key"][0] == 1
    assert w.grid()[0, 3, 1] == L.EMPTY and not res.terminated[0]
    assert res.reward[0] == pytest.approx(-0.01)


def test_door_blocks_without_key_and_opens_with_key():
    w = world(NO_KEY)
    act(w, RIGHT)
    assert w.agent_pos()[0].tolist() == [2, 2] and w.concepts()["door_open"][0] == 0
    w = world(LAYOUT)
    act(w, DOWN, DOWN, RIGHT, RIGHT)                       # pick up key, walk into the door
    c = w.concepts()
    assert w.agent_pos()[0].tolist() == [3, 3]
    assert c["door_open"][0] == 1 and c["has_key"][0] == 1 and w.grid()[0, 3, 3] == L.DOOR_OPEN


def test_goal_and_lava_terminate_with_flags():
    w = world(LAYOUT)
    res = act(w, DOWN, DOWN, RIGHT, RIGHT, RIGHT, RIGHT)
    assert res.terminated[0] and res.success[0] and not res.violation[0] and not res.truncated[0]
    assert res.reward[0] == 1.0 and w.concepts()["at_goal"][0] == 1 and w.concepts()["steps_to_goal"][0] == 0
    w = world(LAYOUT)
    res = act(w, DOWN, DOWN, DOWN)
    c = w.concepts()
    assert res.terminated[0] and res.violation[0] and not res.success[0] and res.reward[0] == -1.0
    assert c["in_lava"][0] == 1 and c["steps_to_goal"][0] == w.params.steps_cap


def test_time_limit_truncates():
    w = world(LAYOUT, max_steps=3)
    flags = [act(w, NOOP).truncated[0] for _ in range(3)]
    assert flags == [False, False, True]


def test_concepts_hand_computed():
    w = world(LAYOUT)
    c = {k: v[0] for k, v in w.concepts().items()}
    w.schema.check(w.concepts())
    assert (c["agent_row"], c["agent_col"]) == (1, 1)
    assert (c["has_key"], c["door_open"], c["in_lava"], c["at_goal"]) == (0, 0, 0, 0)
    assert c["lava_adjacent"] == 0
    assert c["steps_to_goal"] == 6                         # 2 to key, 2 to door, 2 to goal
    assert c["dist_to_lava"] == 3                          # lava at (4,1)
    assert (c["key_visible"], c["door_visible"], c["goal_visible"]) == (1, 1, 0)
    act(w, DOWN, DOWN)
    c = {k: v[0] for k, v in w.concepts().items()}
    assert c["lava_adjacent"] == 1 and c["steps_to_goal"] == 4 and c["dist_to_lava"] == 1 and c["key_visible"] == 0
    assert c["goal_visible"] == 0                          # goal at column 5, view reaches column 3
    act(w, RIGHT, RIGHT)
    c = {k: v[0] for k, v in w.concepts().items()}
    assert c["steps_to_goal"] == 2 and c["goal_visible"] == 1


def test_symbolic_view_is_one_hot_and_egocentric():
    w = world(LAYOUT)
    obs = w.reset()
    assert obs.shape == (1, len(L.CELL_NAMES), 5, 5) and obs.dtype == np.uint8
    assert (obs.sum(1) == 1).all()
    code = obs[0].argmax(0)                                # [5 5]; agent at (1,1) -> window rows/cols -1..3
    assert (code[0] == L.OUTSIDE).all() and (code[:, 0] == L.OUTSIDE).all()
    assert code[1, 1] == L.WALL and code[2, 2] == L.EMPTY and code[4, 2] == L.KEY and code[4, 4] == L.DOOR_LOCKED


def test_rgb_observation():
    w = LavaKeyDoor(2, LavaKeyDoorParams(obs_mode="rgb", tile_px=4), seed=0)
    obs = w.reset()
    assert w.obs_kind == "image" and obs.shape == (2, 3, 20, 20) and obs.dtype == np.uint8
    assert w.single_observation_space.contains(obs[0])
    assert (obs[:, :, 9:11, 9:11] == np.array([230, 30, 30])[None, :, None, None]).all()   # agent at centre
    assert w.render().shape == (2, 36, 36, 3)


def brute_force_steps(grid: np.ndarray, pos, has_key: bool, door_open: bool) -> float:
    """Fewest actions to the goal by BFS over (row, col, has_key, door_open), simulating the rules
    directly on the character-level grid; lava moves are excluded; inf if unreachable."""
    start = (int(pos[0]), int(pos[1]), bool(has_key), bool(door_open))
    if grid[start[0], start[1]] == L.GOAL:
        return 0.0
    seen, queue = {start}, deque([(start, 0)])
    s = grid.shape[0]
    while queue:
        (r, c, k, d), dist = queue.popleft()
        for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1)):
            nr, nc = r + dr, c + dc
            if not (0 <= nr < s and 0 <= nc < s):
                continue
            cell = grid[nr, nc]
            door_here = cell in (L.DOOR_LOCKED, L.DOOR_OPEN)
            if cell == L.WALL or cell == L.LAVA or (door_here and not (d or k)):
                continue
            if cell == L.GOAL:
                return float(dist + 1)
            nk = k or cell == L.KEY
            nd = d or door_here
            state = (nr, nc, nk, nd)
            if state not in seen:
                seen.add(state)
                queue.append((state, dist + 1))
    return float("inf")


@pytest.mark.parametrize("families", [("scatter", "river", "rooms"), ("moat",)])
def test_steps_to_goal_matches_brute_force(families):
    w = LavaKeyDoor(12, LavaKeyDoorParams(families=families, lava_density=0.15), seed=7)
    rng = np.random.default_rng(0)
    cap = w.params.steps_cap
    for t in range(12):
        grid, pos, c = w.grid(), w.agent_pos(), w.concepts()
        for i in range(w.num_envs):
            if c["in_lava"][i]:
                assert c["steps_to_goal"][i] == cap
                continue
            ref = brute_force_steps(grid[i], pos[i], c["has_key"][i], c["door_open"][i])
            assert c["steps_to_goal"][i] == min(ref, cap), (t, i)
        # mostly oracle moves (so keys get picked up and doors opened), some random ones
        a = np.where(rng.random(w.num_envs) < 0.6, w.oracle_actions(), rng.integers(0, 5, w.num_envs))
        res = w.step(a)
        w.reset(mask=res.terminated | res.truncated)


@pytest.mark.parametrize("families", [("scatter", "river", "rooms"), ("moat",)])
def test_oracle_is_optimal_and_safe(families):
    n = 200
    w = LavaKeyDoor(n, LavaKeyDoorParams(families=families), seed=3)
    budget = w.concepts()["steps_to_goal"].astype(int)
    assert (budget < w.params.steps_cap).all()            # every generated layout is solvable
    done, success, violation = np.zeros(n, bool), np.zeros(n, bool), np.zeros(n, bool)
    length = np.zeros(n, int)
    for _ in range(budget.max()):
        res = w.step(w.oracle_actions())
        length += ~done
        success |= res.success & ~done
        violation |= res.violation & ~done
        done |= res.terminated | res.truncated
    assert success.all() and not violation.any()
    assert (length == budget).all()                        # the oracle takes exactly steps_to_goal actions


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_generates_solvable_layouts(family):
    rng = np.random.default_rng(0)
    lay = L.generate(np.full(40, FAMILIES.index(family)), 9, 0.2, rng)
    for i in range(len(lay)):
        cells = lay.cells[i]
        for code in (L.KEY, L.DOOR_LOCKED, L.GOAL):
            assert (cells == code).sum() == 1
        assert cells[tuple(lay.start[i])] == L.EMPTY
        assert brute_force_steps(cells, lay.start[i], False, False) < np.inf
        # the key is needed: with the door treated as a wall the goal is out of reach
        walled = np.where(cells == L.DOOR_LOCKED, L.WALL, cells)
        assert brute_force_steps(walled, lay.start[i], True, False) == np.inf
    if family == "moat":                                   # the goal is ringed by lava but for one gap
        for i in range(len(lay)):
            g = np.argwhere(lay.cells[i] == L.GOAL)[0]
            ring = lay.cells[i][g[0] - 1:g[0] + 2, g[1] - 1:g[1] + 2]
            assert (ring == L.LAVA).sum() == 7


def test_ood_family_only_on_request():
    w = LavaKeyDoor(300, seed=0)
    assert "moat" in w.ood_families and "moat" not in w.params.families
    assert not (w.family() == FAMILIES.index("moat")).any()
    assert set(np.unique(w.family())) == {FAMILIES.index(f) for f in ("scatter", "river", "rooms")}
    w = LavaKeyDoor(50, LavaKeyDoorParams(families=("moat",)), seed=0)
    assert (w.family() == FAMILIES.index("moat")).all()


def test_larger_grid_and_schema():
    w = make_world("lavakeydoor", num_envs=8, seed=0, size=13, view=7)
    obs = w.reset()
    assert obs.shape == (8, len(L.CELL_NAMES), 7, 7) and w.grid().shape == (8, 13, 13)
    w.schema.check(w.concepts())
    assert w.schema["agent_row"].high == 12


def test_reproducible_under_seed():
    def run(seed):
        w = LavaKeyDoor(16, seed=seed)
        rng = np.random.default_rng(0)
        out = [w.reset(seed=seed)]
        for _ in range(60):
            res = w.step(rng.integers(0, 5, 16))
            out.append(w.reset(mask=res.terminated | res.truncated))
        return np.stack(out), w.grid()

    (a, ga), (b, gb), (c, _) = run(5), run(5), run(6)
    assert np.array_equal(a, b) and np.array_equal(ga, gb) and not np.array_equal(a, c)


def test_partial_reset_leaves_other_envs():
    w = LavaKeyDoor(4, seed=0)
    before = w.reset()
    mask = np.array([True, False, True, False])
    after = w.reset(mask=mask)
    assert np.array_equal(before[~mask], after[~mask])
    assert after is not before
    # a mask of another length is refused (it used to reset whichever indices its True entries named)
    with pytest.raises(ValueError, match=r"mask must have shape \(4,\)"):
        w.reset(mask=np.array([True, False, True]))
    assert np.array_equal(w.reset(mask=np.zeros(4, bool)), after)


def test_bad_params_and_actions_fail_early():
    with pytest.raises(ValueError, match="view must be odd"):
        LavaKeyDoorParams(view=4)
    with pytest.raises(ValueError, match="families"):
        LavaKeyDoorParams(families=("lake",))
    with pytest.raises(ValueError, match="actions must be integers"):
        LavaKeyDoor(2, seed=0).step(np.array([0, 7]))
