"""Exact gridworld: a small lava-key-door grid enumerated from its rules (true dynamics, no learning),
checked with Storm, against a forward numpy computation and against simulation of the real world.

The rules are re-implemented here from the docstring of :mod:`worlds.lavakeydoor.world` (moves blocked
by walls and by the locked door without the key; stepping on the key picks it up; the door opens when
entered with the key; lava and the goal end the episode), so the simulation checks the transcription.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from planning.verify.intervals import empirical_rate
from planning.verify.model import ExplicitModel
from planning.verify.reference import bounded_reach
from planning.verify.storm import check, state_values
from worlds.lavakeydoor import LavaKeyDoor, LavaKeyDoorParams
from worlds.lavakeydoor.layout import DOOR_LOCKED, DOOR_OPEN, GOAL, KEY, LAVA, WALL, parse_layout

LAYOUT = """
#######
#A.#..#
#..#.G#
#K.D..#
#..#L.#
#.L#..#
#######
"""
MOVES = [(0, 0), (-1, 0), (1, 0), (0, -1), (0, 1)]          # noop, up, down, left, right
POLICY = np.array([0.1, 0.2, 0.3, 0.15, 0.25])                # a fixed stochastic policy over the 5 actions
HORIZON = 20


def _step(cells: np.ndarray, state: tuple, action: int) -> tuple:
    """Successor of ``state = (row, col, has_key, door_open)`` under ``action`` (deterministic rules)."""
    r, c, key, door = state
    tr, tc = r + MOVES[action][0], c + MOVES[action][1]
    code = int(cells[tr, tc])
    if code == KEY and key:
        code = -1                                              # picked up: now empty
    locked = code == DOOR_LOCKED and not door
    if code == WALL or (locked and not key):
        return state
    return (tr, tc, key or code == KEY, door or locked)


def enumerate_dtmc(text: str) -> tuple[ExplicitModel, list[tuple]]:
    """The DTMC over reachable (row, col, has_key, door_open) states under ``POLICY``; lava and goal absorbing."""
    cells, (r0, c0) = parse_layout(text)
    start = (r0, c0, False, bool((cells == DOOR_OPEN).any()))
    index, states, edges = {start: 0}, [start], []
    todo = [start]
    while todo:
        s = todo.pop()
        code = cells[s[0], s[1]]
        terminal = code in (LAVA, GOAL)
        for a, p in enumerate(POLICY):
            t = s if terminal else _step(cells, s, a)
            if t not in index:
                index[t] = len(states)
                states.append(t)
                todo.append(t)
            edges.append((index[s], index[t], p))
    n = len(states)
    src, dst, prob = map(np.array, zip(*edges))
    matrix = sp.coo_array((prob, (src, dst)), shape=(n, n)).tocsr()     # duplicates summed
    at = np.array([cells[s[0], s[1]] for s in states])
    labels = {"lava": at == LAVA, "goal": at == GOAL}
    return ExplicitModel.dtmc(matrix, labels), states


def forward_lava_probability(model: ExplicitModel, horizon: int) -> float:
    """P(lava within ``horizon`` steps) by pushing the state distribution forward (lava is absorbing)."""
    dist = model.initial_distribution
    lava = model.labels["lava"]
    m = sp.csr_array(model.matrix)
    for _ in range(horizon):
        dist = m.T @ dist
    return float(dist[lava].sum())


@pytest.fixture(scope="module")
def grid() -> tuple[ExplicitModel, list[tuple]]:
    return enumerate_dtmc(LAYOUT)


def test_state_space_is_small_and_has_key_and_door_states(grid):
    model, states = grid
    assert 10 < model.num_states < 200
    assert any(s[2] for s in states) and any(s[3] for s in states)   # the key can be taken, the door opened


def test_storm_equals_forward_and_backward_numpy(grid):
    model, _ = grid
    prop = f'P=? [F<={HORIZON} "lava"]'
    res = check(model, prop)
    exact = forward_lava_probability(model, HORIZON)
    assert 0.05 < exact < 0.95
    assert res.probability == pytest.approx(exact, abs=1e-9)
    assert res.lower - 1e-12 <= exact <= res.upper + 1e-12
    value, _, _ = state_values(model, prop)
    back = bounded_reach(model.matrix, model.row_groups, model.labels["lava"], HORIZON)
    np.testing.assert_allclose(value, back, atol=1e-9)
    assert res.states == model.num_states


def test_empirical_rates_of_the_real_world_inside_their_99pct_intervals(grid):
    model, _ = grid
    exact = check(model, f'P=? [F<={HORIZON} "lava"]').probability
    exact_goal = check(model, f'P=? [F<={HORIZON} "goal"]').probability
    episodes = 4000
    world = LavaKeyDoor.from_layouts([LAYOUT], num_envs=episodes, params=LavaKeyDoorParams(max_steps=HORIZON))
    world.reset()
    rng = np.random.default_rng(0)
    done = np.zeros(episodes, dtype=bool)
    lava = np.zeros(episodes, dtype=bool)
    goal = np.zeros(episodes, dtype=bool)
    for _ in range(HORIZON):
        step = world.step(rng.choice(5, size=episodes, p=POLICY))
        lava |= step.violation & ~done
        goal |= step.success & ~done
        done |= step.terminated | step.truncated
    assert done.all()                                   # every episode ended within the horizon
    emp = empirical_rate(int(lava.sum()), episodes, confidence=0.99)
    assert emp.contains(exact), (emp, exact)
    emp_goal = empirical_rate(int(goal.sum()), episodes, confidence=0.99)
    assert goal.sum() > 0 and emp_goal.contains(exact_goal), (emp_goal, exact_goal)
