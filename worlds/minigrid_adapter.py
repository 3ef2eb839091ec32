"""Any gymnasium env plus a labeler function as an ontolab world, and the MiniGrid worlds built on it.

:class:`~worlds.gym_adapter.GymAdapterWorld` (in :mod:`worlds.gym_adapter`, importable from here too) holds
``num_envs`` copies of a gymnasium env and steps them in a Python loop; see that module.

MiniGrid worlds (need the ``minigrid`` extra, imported lazily when a world is built):

* ``minigrid_lavacrossing`` -- ``MiniGrid-LavaCrossing{S9N1,S9N2,S9N3,S11N5}-v0`` (``S11N5`` held
  out); actions ``Discrete(3)``: left, right, forward. Stepping into lava is a violation.
* ``minigrid_doorkey`` -- ``MiniGrid-DoorKey-{5x5,6x6,8x8}-v0`` (``8x8`` held out); actions
  ``Discrete(6)``: left, right, forward, pickup, drop, toggle (MiniGrid's unused ``done`` is left out).

Observation (``obs_kind = "symbolic"``): MiniGrid's egocentric 7x7 view as ``uint8[13 7 7]``
(``[c h w]``: row 0 is the far edge of the view, the agent stands at row 6, column 3), one-hot
over :data:`CELL_CLASSES`. Colours are dropped (each object type has one colour in these tasks);
the door's open/closed/locked state is kept. The carried object shows in the agent's own cell, so
``has_key`` is visible; ``agent_row``, ``agent_col`` and ``agent_dir`` are not in the view and
must be inferred from history -- those are the concepts that need memory.

The oracle is a breadth-first search over (cell, direction, carrying key, door state) that never
enters lava; ``steps_to_goal`` is the length of that shortest plan (capped at ``STEPS_CAP``).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import gymnasium as gym
import numpy as np
from einops import rearrange

from worlds.concepts import Concept, ConceptSchema
from worlds.gym_adapter import GymAdapterWorld, Labeler, Outcome  # noqa: F401  (Labeler, Outcome re-exported)
from worlds.gym_env import register_gym_id
from worlds.registry import register_world

# ---------------------------------------------------------------- MiniGrid observation and labels
CELL_CLASSES: tuple[str, ...] = (
    "unseen", "empty", "wall", "floor", "door_open", "door_closed", "door_locked",
    "key", "ball", "box", "goal", "lava", "agent",
)
# minigrid.core.constants.OBJECT_TO_IDX (0 unseen .. 10 agent) -> CELL_CLASSES; doors (4) add STATE (0 open, 1 closed, 2 locked).
_OBJECT_TO_CLASS = np.array([0, 1, 2, 3, 4, 7, 8, 9, 10, 11, 12])
_DOOR, _KEY = 4, 5
DIRECTIONS: tuple[str, ...] = ("right", "down", "left", "up")  # MiniGrid's agent_dir 0..3
STEPS_CAP = 250


def minigrid_symbolic(obs: Mapping[str, np.ndarray]) -> np.ndarray:
    """``uint8[13 7 7]`` one-hot :data:`CELL_CLASSES` of MiniGrid's ``obs["image"]`` (``[w h 3]``)."""
    img = np.asarray(obs["image"])
    cls = np.where(img[..., 0] == _DOOR, 4 + img[..., 2], _OBJECT_TO_CLASS[img[..., 0]])  # [w h]
    onehot = (cls[None] == np.arange(len(CELL_CLASSES))[:, None, None]).astype(np.uint8)
    return rearrange(onehot, "c w h -> c h w")


def _type(cell: Any) -> str:
    return "empty" if cell is None else cell.type


def shortest_plan(env: gym.Env) -> tuple[int, int]:
    """``(first action, length)`` of a shortest action sequence that puts the agent on the goal.

    Breadth-first search over ``(x, y, dir, carrying_key, door_state)`` with the moves left,
    right, forward (never into lava, walls or a closed door), pickup (facing the key) and toggle
    (facing the door; a locked door opens only with the key). Handles at most one key and one door.
    Returns ``(0, STEPS_CAP)`` when the goal is unreachable, and so when the agent stands in lava (the episode
    has ended badly; as in lavakeydoor, whose ``steps_to_goal`` is capped there). Written by hand: MiniGrid
    ships no planner.
    """
    grid, w, h = env.grid, env.grid.width, env.grid.height
    if _type(grid.get(*env.agent_pos)) == "lava":  # a search from the lava cell would walk out of it
        return 0, STEPS_CAP
    key = door = None
    door_state = 0
    goals, blocked = set(), np.zeros((w, h), bool)
    for x in range(w):
        for y in range(h):
            cell = grid.get(x, y)
            t = _type(cell)
            if t == "goal":
                goals.add((x, y))
            elif t == "key":
                key = (x, y)
            elif t == "door":
                door, door_state = (x, y), 0 if cell.is_open else 2 if cell.is_locked else 1
            elif t not in ("empty", "floor"):
                blocked[x, y] = True  # walls, lava, balls, boxes
    carrying = env.carrying is not None and env.carrying.type == "key"
    start = (int(env.agent_pos[0]), int(env.agent_pos[1]), int(env.agent_dir), carrying, door_state)
    first: dict[tuple, int] = {start: -1}
    dist = {start: 0}
    queue = deque([start])
    while queue:
        s = queue.popleft()
        x, y, d, carry, ds = s
        if (x, y) in goals:
            return max(first[s], 0), dist[s]
        dx, dy = ((1, 0), (0, 1), (-1, 0), (0, -1))[d]
        fx, fy = x + dx, y + dy
        succ = [(0, (x, y, (d - 1) % 4, carry, ds)), (1, (x, y, (d + 1) % 4, carry, ds))]
        if 0 <= fx < w and 0 <= fy < h and not blocked[fx, fy]:
            if (fx, fy) == door:
                succ.append((5, (x, y, d, carry, 0 if ds == 2 and carry else 1 - ds if ds < 2 else ds)))
                if ds == 0:
                    succ.append((2, (fx, fy, d, carry, ds)))
            elif (fx, fy) == key and not carry:
                succ.append((3, (x, y, d, True, ds)))
            else:
                succ.append((2, (fx, fy, d, carry, ds)))
        for action, nxt in succ:
            if nxt not in dist:
                dist[nxt], first[nxt] = dist[s] + 1, action if first[s] < 0 else first[s]
                queue.append(nxt)
    return 0, STEPS_CAP


def _oracle(env: gym.Env) -> int:
    return shortest_plan(env)[0]


def _minigrid_outcome(env: gym.Env, reward: float, terminated: bool) -> tuple[bool, bool]:
    here = _type(env.grid.get(*env.agent_pos))
    return bool(terminated and here == "goal"), bool(terminated and here == "lava")


def _position_concepts(size: int) -> tuple[Concept, ...]:
    return (
        Concept("agent_col", "scalar", "Column (x) of the agent's cell.", unit="cells", low=0.0, high=size - 1.0),
        Concept("agent_row", "scalar", "Row (y) of the agent's cell.", unit="cells", low=0.0, high=size - 1.0),
        Concept("agent_dir", "categorical", "Direction the agent faces.", classes=DIRECTIONS),
    )


_STEPS = Concept("steps_to_goal", "scalar", "Fewest actions to reach the goal (never via lava).", unit="actions",
                 low=0.0, high=float(STEPS_CAP))


def _common_labels(env: gym.Env) -> dict[str, Any]:
    x, y = env.agent_pos
    return {"agent_col": x, "agent_row": y, "agent_dir": env.agent_dir,
            "at_goal": _type(env.grid.get(x, y)) == "goal", "steps_to_goal": min(shortest_plan(env)[1], STEPS_CAP)}


def _lava_labels(env: gym.Env) -> dict[str, Any]:
    return {**_common_labels(env), "in_lava": _type(env.grid.get(*env.agent_pos)) == "lava",
            "lava_ahead": _type(env.grid.get(*env.front_pos)) == "lava"}


def _doorkey_labels(env: gym.Env) -> dict[str, Any]:
    image = env.gen_obs()["image"]  # [w h 3]; the agent's own cell (3, 6) shows what it carries
    image[3, 6] = 0
    doors = [c for c in env.grid.grid if c is not None and c.type == "door"]
    return {**_common_labels(env), "has_key": env.carrying is not None and env.carrying.type == "key",
            "door_open": bool(doors and doors[0].is_open), "key_visible": bool((image[..., 0] == _KEY).any())}


def _make_minigrid(env_id: str, max_steps: int | None) -> Callable[[], gym.Env]:
    def make() -> gym.Env:
        try:
            import minigrid  # noqa: F401  (registers the MiniGrid-* ids)
        except ImportError as e:
            raise ImportError("MiniGrid worlds need the minigrid package: pip install 'ontolab[minigrid]'") from e
        return gym.make(env_id, **({} if max_steps is None else {"max_steps": max_steps}))
    return make


def _check_families(families: Sequence[str], known: tuple[str, ...]) -> tuple[str, ...]:
    families = tuple(families)
    if not families or any(f not in known for f in families):
        raise ValueError(f"families must be a non-empty subset of {known}, got {families}")
    return families


_SYMBOLIC = gym.spaces.Box(0, 1, (len(CELL_CLASSES), 7, 7), np.uint8)
LAVA_FAMILIES: tuple[str, ...] = ("S9N1", "S9N2", "S9N3", "S11N5")
DOORKEY_FAMILIES: tuple[str, ...] = ("5x5", "6x6", "8x8")


@dataclass(frozen=True)
class MiniGridLavaCrossingParams:
    """Parameters of ``minigrid_lavacrossing``."""

    families: tuple[str, ...] = ("S9N1",)
    """Layouts sampled at reset, from ``S9N1, S9N2, S9N3, S11N5`` (S = grid size, N = lava rivers)."""
    max_steps: int | None = None
    """Time limit; ``None`` keeps MiniGrid's (4 * size^2)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "families", _check_families(self.families, LAVA_FAMILIES))


class MiniGridLavaCrossing(GymAdapterWorld):
    """MiniGrid LavaCrossing: reach the goal across lava rivers through a gap; lava is a violation."""

    name = "minigrid_lavacrossing"
    families = LAVA_FAMILIES
    ood_families = ("S11N5",)
    obs_kind = "symbolic"
    cell_names = CELL_CLASSES

    def __init__(self, num_envs: int = 1, params: MiniGridLavaCrossingParams = MiniGridLavaCrossingParams(),
                 seed: int | None = None):
        self.params = params
        schema = ConceptSchema((
            *_position_concepts(11),
            Concept("in_lava", "binary", "The agent stands in lava (the episode ends in a violation)."),
            Concept("lava_ahead", "binary", "The cell the agent faces is lava."),
            Concept("at_goal", "binary", "The agent stands on the goal."),
            _STEPS,
        ))
        makers = {f: _make_minigrid(f"MiniGrid-LavaCrossing{f}-v0", params.max_steps) for f in self.families}
        super().__init__(makers, _lava_labels, schema, num_envs, seed, encode=minigrid_symbolic,
                         observation_space=_SYMBOLIC, obs_kind="symbolic", outcome=_minigrid_outcome,
                         oracle=_oracle, action_space=gym.spaces.Discrete(3),
                         sample_families=params.families, ood_families=self.ood_families)


@dataclass(frozen=True)
class MiniGridDoorKeyParams:
    """Parameters of ``minigrid_doorkey``."""

    families: tuple[str, ...] = ("6x6",)
    """Layouts sampled at reset, from ``5x5, 6x6, 8x8``."""
    max_steps: int | None = None
    """Time limit; ``None`` keeps MiniGrid's (10 * size^2)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "families", _check_families(self.families, DOORKEY_FAMILIES))


class MiniGridDoorKey(GymAdapterWorld):
    """MiniGrid DoorKey: pick up the key, unlock the door, reach the goal."""

    name = "minigrid_doorkey"
    families = DOORKEY_FAMILIES
    ood_families = ("8x8",)
    obs_kind = "symbolic"
    cell_names = CELL_CLASSES

    def __init__(self, num_envs: int = 1, params: MiniGridDoorKeyParams = MiniGridDoorKeyParams(),
                 seed: int | None = None):
        self.params = params
        schema = ConceptSchema((
            *_position_concepts(8),
            Concept("has_key", "binary", "The agent carries the key."),
            Concept("door_open", "binary", "The door is open."),
            Concept("at_goal", "binary", "The agent stands on the goal."),
            Concept("key_visible", "binary", "The key lies on the floor within the agent's (occluded) view."),
            _STEPS,
        ))
        makers = {f: _make_minigrid(f"MiniGrid-DoorKey-{f}-v0", params.max_steps) for f in self.families}
        super().__init__(makers, _doorkey_labels, schema, num_envs, seed, encode=minigrid_symbolic,
                         observation_space=_SYMBOLIC, obs_kind="symbolic", outcome=_minigrid_outcome,
                         oracle=_oracle, action_space=gym.spaces.Discrete(6),
                         sample_families=params.families, ood_families=self.ood_families)


register_world(MiniGridLavaCrossing, MiniGridLavaCrossingParams)
register_world(MiniGridDoorKey, MiniGridDoorKeyParams)
register_gym_id("minigrid_lavacrossing", "ontolab/MiniGridLavaCrossing-v0")
register_gym_id("minigrid_doorkey", "ontolab/MiniGridDoorKey-v0")
