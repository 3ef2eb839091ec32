"""Mutation audit of the lava-key-door world and the split rule: behaviour the other tests left unpinned.

* the labels of a *terminal* step (the step that enters lava or reaches the goal): the other label tests reset
  finished envs before reading concepts, but :func:`worlds.collect.collect` records these rows;
* a hand-written layout whose door starts open (``O``): ``door_open`` and ``steps_to_goal`` at reset;
* a layout without a door: holding the key, ``steps_to_goal`` is the plain path to the goal;
* the split hash follows the rule the manifest records (``SPLIT_RULE``), and known episodes keep their split.

Each expectation is hand-computed from the layout drawn next to it.
"""

from __future__ import annotations

import hashlib

import numpy as np

from worlds.dataset.splits import SPLIT_RULE, split_of, unit_hash
from worlds.lavakeydoor import LavaKeyDoor, LavaKeyDoorParams
from worlds.lavakeydoor import layout as L

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


def world(*layouts: str) -> LavaKeyDoor:
    return LavaKeyDoor.from_layouts(list(layouts))


def step(w: LavaKeyDoor, *actions: int):
    res = None
    for a in actions:
        res = w.step(np.array([a]))
    return res


def test_labels_of_the_step_that_enters_lava():
    w = world(LAYOUT)
    step(w, DOWN, DOWN)                       # (3,1): picks up the key
    res = step(w, DOWN)                       # (4,1): lava
    assert res.terminated[0] and res.violation[0]
    c = {k: v[0] for k, v in w.concepts().items()}
    w.schema.check(w.concepts())
    assert (c["agent_row"], c["agent_col"]) == (4, 1)
    assert c["in_lava"] == 1 and c["at_goal"] == 0 and c["dist_to_lava"] == 0
    # neighbours of (4,1): (3,1) empty (key taken), (5,1) empty, (4,0) wall, (4,2) empty -> no lava *next to* the agent
    assert c["lava_adjacent"] == 0
    assert c["steps_to_goal"] == w.params.steps_cap  # in lava the goal is out of reach


def test_labels_of_the_step_that_reaches_the_goal():
    w = world(LAYOUT)
    res = step(w, DOWN, DOWN, RIGHT, RIGHT, RIGHT, RIGHT)  # key, door (opens), (3,4), goal (3,5)
    assert res.terminated[0] and res.success[0]
    c = {k: v[0] for k, v in w.concepts().items()}
    assert (c["agent_row"], c["agent_col"]) == (3, 5)
    assert c["at_goal"] == 1 and c["in_lava"] == 0 and c["steps_to_goal"] == 0
    assert c["has_key"] == 1 and c["door_open"] == 1 and c["goal_visible"] == 1
    assert c["lava_adjacent"] == 0 and c["dist_to_lava"] == 2   # lava (5,5) two rows below


# the door (3,3) is drawn open; there is no key
OPEN_DOOR = """
#######
#A.#..#
#..#..#
#..O.G#
#..#..#
#..#..#
#######
"""


def test_a_layout_whose_door_starts_open():
    w = world(OPEN_DOOR)
    c = {k: v[0] for k, v in w.concepts().items()}
    assert c["door_open"] == 1 and c["has_key"] == 0
    assert c["steps_to_goal"] == 6            # 2 down, 2 right onto the door, 2 right to the goal
    step(w, DOWN, DOWN, RIGHT)
    c = {k: v[0] for k, v in w.concepts().items()}
    assert c["door_open"] == 1 and c["steps_to_goal"] == 3
    assert step(w, RIGHT, RIGHT, RIGHT).success[0]   # the open door lets the agent through without a key


# no door at all; the key (2,1) lies on the way, the goal at (4,5)
NO_DOOR = """
#######
#A....#
#K....#
#.....#
#....G#
#.....#
#######
"""


def test_steps_to_goal_without_a_door_holding_the_key():
    w = world(NO_DOOR)
    assert w.concepts()["steps_to_goal"][0] == 3 + 4        # (1,1) -> (4,5)
    step(w, DOWN)                                            # (2,1): key picked up
    c = {k: v[0] for k, v in w.concepts().items()}
    assert c["has_key"] == 1 and c["door_open"] == 0
    assert c["steps_to_goal"] == 2 + 4                       # (2,1) -> (4,5); no door needed


def test_unit_hash_follows_the_recorded_rule():
    assert SPLIT_RULE.startswith("blake2b-64(f'{seed}:{episode_id}')")
    for seed, ep in [(0, 0), (0, 1), (7, 3), (123, 45678)]:
        digest = hashlib.blake2b(f"{seed}:{ep}".encode(), digest_size=8).digest()
        assert unit_hash(seed, ep) == int.from_bytes(digest, "little") / 2.0**64
    assert unit_hash(1, 2) != unit_hash(2, 1)  # seed and id are not interchangeable


def test_known_episodes_keep_their_split():
    """Pinned: a change of the hash changes the splits of every existing dataset (the manifest records the rule)."""
    got = [split_of(i, seed=0, fractions=(0.5, 0.25, 0.25)) for i in range(12)]
    ref = []
    for i in range(12):
        u = int.from_bytes(hashlib.blake2b(f"0:{i}".encode(), digest_size=8).digest(), "little") / 2.0**64
        ref.append("train" if u < 0.5 else "val" if u < 0.75 else "test")
    assert got == ref
    assert {"train", "val", "test"} <= set(got)  # the pinned ids exercise every branch
