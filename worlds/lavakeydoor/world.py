"""The lava-key-door gridworld as a :class:`~worlds.base.VectorWorld` (N envs stepped as arrays).

Rules. Actions ``0 noop, 1 up, 2 down, 3 left, 4 right``. Walls (and the grid edge) block. Moving
onto the key picks it up (it disappears from the grid; the agent keeps it for the rest of the
episode). Moving into the locked door while holding the key opens it and the agent moves onto the
door cell in the same step; without the key the move is blocked. Entering lava ends the episode
(``terminated``, ``violation``, reward -1); reaching the goal ends it (``terminated``, ``success``,
reward +1); every other step costs ``step_cost``. ``max_steps`` steps -> ``truncated``.

Observation. An egocentric, unrotated ``view x view`` window centred on the agent. Symbolic mode:
``uint8[c view view]`` one-hot over ``CELL_NAMES`` (exactly one channel per cell; cells beyond the
grid are ``outside``, not wall, so the border wall and the edge of the world stay distinct). The
agent is always the centre cell and has no channel; ``has_key`` is not shown (it must be
remembered). RGB mode: ``uint8[3 (view px) (view px)]`` (see :mod:`worlds.lavakeydoor.render`).

Stepping an env that is already done is allowed (the result is meaningless and the caller resets
it); :mod:`worlds.gym_env` relies on this for next-step autoreset.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import gymnasium as gym
import numpy as np

from worlds.base import StepResult, VectorWorld
from worlds.concepts import Concept, ConceptSchema
from worlds.lavakeydoor import layout as L
from worlds.lavakeydoor.hidden import DOOR_TEST
from worlds.lavakeydoor.render import make_tiles, render_codes

MOVES = np.array([[0, 0], [-1, 0], [1, 0], [0, -1], [0, 1]], dtype=np.int64)
"""``[5 2]`` (row, col) displacement of each action."""


@dataclass(frozen=True)
class LavaKeyDoorParams:
    """Parameters of the lava-key-door world."""

    size: int = 9
    """Side of the square grid in cells, border walls included (>= 7)."""
    view: int = 5
    """Side of the egocentric view in cells (odd, >= 3)."""
    families: tuple[str, ...] = L.TRAIN_FAMILIES
    """Layout families sampled uniformly at reset; the default excludes the OOD families (``moat``)."""
    lava_density: float = 0.1
    """Fraction of free cells turned to lava in ``scatter`` (half of it in the other families)."""
    max_steps: int | None = None
    """Time limit in steps before truncation; ``None`` means ``2 * size * size``."""
    step_cost: float = 0.01
    """Reward paid on every step that neither reaches the goal (+1) nor enters lava (-1)."""
    obs_mode: str = "symbolic"
    """``"symbolic"`` (one-hot ``uint8[c view view]``) or ``"rgb"`` (``uint8[3 view*px view*px]``)."""
    tile_px: int = 8
    """Pixels per cell side in ``rgb`` mode and in ``render``."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "families", tuple(self.families))
        if self.size < 7:
            raise ValueError(f"size must be >= 7 (walls, two rooms and a door), got {self.size}")
        if self.view < 3 or self.view % 2 == 0:
            raise ValueError(f"view must be odd and >= 3, got {self.view}")
        unknown = [f for f in self.families if f not in L.FAMILIES]
        if not self.families or unknown:
            raise ValueError(f"families must be a non-empty subset of {L.FAMILIES}, got {self.families}")
        if "moat" in self.families and self.size < 9:
            raise ValueError(f"the moat family needs size >= 9 (a lava ring inside a room), got size {self.size}")
        if not 0.0 <= self.lava_density <= 0.5:
            raise ValueError(f"lava_density must lie in [0, 0.5], got {self.lava_density}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1 or None, got {self.max_steps}")
        if self.obs_mode not in ("symbolic", "rgb"):
            raise ValueError(f"obs_mode must be 'symbolic' or 'rgb', got {self.obs_mode!r}")
        if self.tile_px < 2:
            raise ValueError(f"tile_px must be >= 2, got {self.tile_px}")

    @property
    def time_limit(self) -> int:
        return self.max_steps if self.max_steps is not None else 2 * self.size * self.size

    @property
    def steps_cap(self) -> int:
        """Value of ``steps_to_goal`` when the goal cannot be reached (or the agent is in lava)."""
        return 2 * self.size * self.size


def make_schema(p: LavaKeyDoorParams) -> ConceptSchema:
    """The concepts of the lava-key-door world for parameters ``p``."""
    s = p.size
    return ConceptSchema((
        Concept("agent_row", "scalar", "Row of the agent's cell, 0 at the top.", unit="cells", low=0, high=s - 1),
        Concept("agent_col", "scalar", "Column of the agent's cell, 0 at the left.", unit="cells", low=0, high=s - 1),
        Concept("has_key", "binary", "The agent has picked up the key this episode."),
        Concept("door_open", "binary", "The door has been unlocked and stands open."),
        Concept("in_lava", "binary", "The agent stands in lava (the episode has just ended badly)."),
        Concept("lava_adjacent", "binary", "Lava lies in one of the four cells next to the agent."),
        Concept("at_goal", "binary", "The agent stands on the goal (the episode has just succeeded)."),
        Concept("key_visible", "binary", "The key lies inside the agent's current view."),
        Concept("door_visible", "binary", "The door (locked or open) lies inside the agent's current view."),
        Concept("goal_visible", "binary", "The goal lies inside the agent's current view."),
        Concept("steps_to_goal", "scalar",
                f"Fewest actions to reach the goal without lava given key and door state ({p.steps_cap} if impossible).",
                unit="cells", low=0, high=p.steps_cap),
        Concept("dist_to_lava", "scalar",
                f"Manhattan distance from the agent to the nearest lava cell, ignoring walls ({2 * (s - 1)} if none).",
                unit="cells", low=0, high=2 * (s - 1)),
    ))


@dataclass(frozen=True)
class LavaKeyDoorState:
    """Full state of every env (copies): what :meth:`LavaKeyDoor.get_state` returns and ``set_state`` takes."""

    cells: np.ndarray
    """``int8[n s s]`` current cell codes (a picked-up key is gone, an opened door is ``door_open``)."""
    pos: np.ndarray
    """``int64[n 2]`` agent (row, col)."""
    has_key: np.ndarray
    """``bool[n]``."""
    door_open: np.ndarray
    """``bool[n]``."""
    t: np.ndarray
    """``int64[n]`` steps since the episode started."""
    family: np.ndarray
    """``int64[n]`` index into ``FAMILIES``."""
    values: np.ndarray
    """``int32[n 3 s s]`` steps-to-goal maps (see :class:`~worlds.lavakeydoor.layout.Layouts`)."""
    lava_dist: np.ndarray
    """``int32[n s s]`` Manhattan distance to the nearest lava cell."""


class LavaKeyDoor(VectorWorld):
    """``num_envs`` lava-key-door gridworlds (see the module docstring for the rules)."""

    name = "lavakeydoor"
    families = L.FAMILIES
    ood_families = L.OOD_FAMILIES
    view_position_concepts = ("agent_row", "agent_col")  # the 5x5 view is translated, never rotated
    cell_names = L.CELL_NAMES  # the symbolic view's channels (obs_mode="rgb" has none; callers check obs_kind)
    obs_kind = "symbolic"
    hidden_concept_tests = (DOOR_TEST,)  # has_key decides whether moving into the locked door opens it

    def __init__(self, num_envs: int, params: LavaKeyDoorParams = LavaKeyDoorParams(), seed: int | None = None):
        if not isinstance(params, LavaKeyDoorParams):
            raise TypeError(f"params must be LavaKeyDoorParams, got {type(params).__name__}")
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.num_envs, self.params = num_envs, params
        self.rng = np.random.default_rng(seed)
        self.schema = make_schema(params)
        s, v = params.size, params.view
        self._pad = v // 2
        self._family_ids = np.array([L.FAMILIES.index(f) for f in params.families], dtype=np.int64)
        self._fixed: L.Layouts | None = None
        self._pool: L.Layouts | None = None
        self._pool_next = 0
        self._tiles, self._agent_tiles = make_tiles(params.tile_px)
        self.obs_kind = "image" if params.obs_mode == "rgb" else "symbolic"
        if params.obs_mode == "rgb":
            side = v * params.tile_px
            self.single_observation_space = gym.spaces.Box(0, 255, (3, side, side), np.uint8)
        else:
            self.single_observation_space = gym.spaces.Box(0, 1, (len(L.CELL_NAMES), v, v), np.uint8)
        self.single_action_space = gym.spaces.Discrete(5)
        n, P = num_envs, s + 2 * self._pad
        self._cells = np.full((n, P, P), L.OUTSIDE, dtype=np.int8)     # padded with `outside`
        self._pos = np.zeros((n, 2), dtype=np.int64)                     # (row, col) in grid coordinates
        self._has_key = np.zeros(n, dtype=bool)
        self._door_open = np.zeros(n, dtype=bool)
        self._t = np.zeros(n, dtype=np.int64)
        self._family = np.zeros(n, dtype=np.int64)
        self._values = np.zeros((n, 3, s, s), dtype=np.int32)
        self._lava_dist = np.zeros((n, s, s), dtype=np.int32)
        self._win_offsets = np.arange(v)[:, None] * P + np.arange(v)[None, :]    # [v v] flat offsets
        self._codes = np.arange(len(L.CELL_NAMES), dtype=np.int8)[None, :, None, None]
        self._view = np.zeros((n, v, v), dtype=np.int8)
        self.reset()

    @classmethod
    def from_layouts(cls, layouts: Sequence[str], num_envs: int | None = None,
                     params: LavaKeyDoorParams = LavaKeyDoorParams(), family: str = "scatter") -> "LavaKeyDoor":
        """A world whose env ``i`` always resets to the hand-written ``layouts[i % len(layouts)]``
        (syntax in :func:`~worlds.lavakeydoor.layout.parse_layout`); ``params.size`` is set from them."""
        parsed = [L.parse_layout(t) for t in layouts]
        sizes = sorted({c.shape[0] for c, _ in parsed})
        if len(sizes) != 1:
            raise ValueError(f"all layouts must have one size, got sizes {sizes}")
        cells = np.stack([c for c, _ in parsed])
        values, lava_dist = L.value_maps(cells)
        fam = np.full(len(parsed), L.FAMILIES.index(family), dtype=np.int64)
        fixed = L.Layouts(cells, np.array([a for _, a in parsed], dtype=np.int64), fam, values, lava_dist)
        world = cls(num_envs or len(parsed), replace(params, size=sizes[0], families=(family,)), seed=0)
        world._fixed = fixed
        world.reset()
        return world

    # ------------------------------------------------------------------ episodes

    def reset(self, seed: int | None = None, mask: np.ndarray | None = None) -> np.ndarray:
        if seed is not None:
            self._pool, self._pool_next = None, 0
        idx = np.flatnonzero(self._reset_mask(seed, mask))  # reseeds self.rng; refuses a mask of another shape
        if len(idx):
            lay = self._fixed.take(idx % len(self._fixed)) if self._fixed is not None else self._draw(len(idx))
            cells = lay.cells
            p, s = self._pad, self.params.size
            self._cells[idx, p:p + s, p:p + s] = cells
            self._pos[idx] = lay.start
            self._family[idx] = lay.family
            self._values[idx] = lay.values
            self._lava_dist[idx] = lay.lava_dist
            self._has_key[idx] = False
            self._door_open[idx] = (cells == L.DOOR_OPEN).any(axis=(1, 2))
            self._t[idx] = 0
        return self._observe(idx if mask is not None else None)

    def _draw(self, m: int) -> L.Layouts:
        """The next ``m`` layouts of the pool, refilled from the world's generator when short.

        Layouts are generated ahead in chunks (the generator is vectorised, so a chunk of
        ``~num_envs`` layouts costs little more than a few); each one is still an independent draw.
        Leftovers of a chunk that cannot serve a request are discarded.
        """
        if self._pool is None or len(self._pool) - self._pool_next < m:
            chunk = max(m, min(max(self.num_envs, 16), 2048))
            fam = self._family_ids[self.rng.integers(0, len(self._family_ids), size=chunk)]
            self._pool = L.generate(fam, self.params.size, self.params.lava_density, self.rng)
            self._pool_next = 0
        lay = self._pool.take(np.arange(self._pool_next, self._pool_next + m))
        self._pool_next += m
        return lay

    def _transition(self, env: np.ndarray, pos: np.ndarray, has_key: np.ndarray, actions: np.ndarray):
        """Pure transition (no state change) for env indices ``env[k]`` at ``pos[k 2]`` taking ``actions[k]``.

        Returns ``(new_pos [k 2], code of the target cell [k], moved [k], opens [k])``."""
        target = pos + MOVES[actions]
        code = self._cells[env, target[:, 0] + self._pad, target[:, 1] + self._pad]
        locked = code == L.DOOR_LOCKED
        blocked = (code == L.WALL) | (code == L.OUTSIDE) | (locked & ~has_key)
        new_pos = np.where(blocked[:, None], pos, target)
        return new_pos, code, ~blocked, locked & has_key

    def step(self, actions: np.ndarray) -> StepResult:
        a = np.asarray(actions)
        if a.shape != (self.num_envs,) or a.dtype.kind not in "iu" or (a.size and (a.min() < 0 or a.max() > 4)):
            raise ValueError(f"actions must be integers in [0, 5) of shape ({self.num_envs},), got shape {a.shape} dtype {a.dtype}")
        env = np.arange(self.num_envs)
        new_pos, code, moved, opens = self._transition(env, self._pos, self._has_key, a.astype(np.int64))
        pr, pc = new_pos[:, 0] + self._pad, new_pos[:, 1] + self._pad
        picks = moved & (code == L.KEY)
        self._cells[env[picks], pr[picks], pc[picks]] = L.EMPTY
        self._cells[env[opens], pr[opens], pc[opens]] = L.DOOR_OPEN
        self._has_key |= picks
        self._door_open |= opens
        self._pos = new_pos
        self._t += 1
        success = moved & (code == L.GOAL)
        violation = moved & (code == L.LAVA)
        terminated = success | violation
        truncated = (self._t >= self.params.time_limit) & ~terminated
        reward = np.where(success, 1.0, np.where(violation, -1.0, -self.params.step_cost)).astype(np.float32)
        return StepResult(self._observe(), reward, terminated, truncated, success, violation)

    # ------------------------------------------------------------------ observation and labels

    def _observe(self, idx: np.ndarray | None = None) -> np.ndarray:
        """Refresh the cached egocentric views ``int8[n v v]`` of envs ``idx`` (all by default) and
        return the observations of all envs (a new array; arrays returned before are never changed)."""
        env = np.arange(self.num_envs) if idx is None else idx
        P = self._cells.shape[1]
        base = env * (P * P) + self._pos[env, 0] * P + self._pos[env, 1]     # top-left of each window
        view = np.take(self._cells, base[:, None, None] + self._win_offsets)  # [k v v]
        self._view[env] = view
        if self.params.obs_mode == "rgb":
            centre = np.full((len(env), 2), self._pad, dtype=np.int64)
            obs = render_codes(view, centre, self._tiles, self._agent_tiles)
        else:
            obs = (view[:, None] == self._codes).view(np.uint8)              # [k c v v] one-hot
        if idx is None:
            self._obs = obs
        else:
            self._obs = self._obs.copy()
            self._obs[idx] = obs
        return self._obs

    def _state_index(self) -> np.ndarray:
        """``[n]`` 0 = no key, 1 = key held and door locked, 2 = door open."""
        return np.where(self._door_open, 2, self._has_key.astype(np.int64))

    def concepts(self) -> dict[str, np.ndarray]:
        env, (r, c), p = np.arange(self.num_envs), self._pos.T, self._pad
        here = self._cells[env, r + p, c + p]
        in_lava = here == L.LAVA
        nb = np.stack([self._cells[env, r + p + dr, c + p + dc] for dr, dc in MOVES[1:]], axis=1)
        steps = np.minimum(self._values[env, self._state_index(), r, c], self.params.steps_cap)
        view = self._view.reshape(self.num_envs, -1)
        return {
            "agent_row": r.astype(np.float32),
            "agent_col": c.astype(np.float32),
            "has_key": self._has_key.astype(np.uint8),
            "door_open": self._door_open.astype(np.uint8),
            "in_lava": in_lava.astype(np.uint8),
            "lava_adjacent": (nb == L.LAVA).any(1).astype(np.uint8),
            "at_goal": (here == L.GOAL).astype(np.uint8),
            "key_visible": (view == L.KEY).any(1).astype(np.uint8),
            "door_visible": ((view == L.DOOR_LOCKED) | (view == L.DOOR_OPEN)).any(1).astype(np.uint8),
            "goal_visible": (view == L.GOAL).any(1).astype(np.uint8),
            "steps_to_goal": np.where(in_lava, self.params.steps_cap, steps).astype(np.float32),
            "dist_to_lava": np.minimum(self._lava_dist[env, r, c], 2 * (self.params.size - 1)).astype(np.float32),
        }

    def family(self) -> np.ndarray:
        return self._family.copy()

    def oracle_actions(self) -> np.ndarray:
        """Shortest-path action: argmin over the 5 actions of the resulting ``steps_to_goal``; entering
        lava is never chosen; ties go to the lowest action index (so noop when nothing helps)."""
        n = self.num_envs
        env = np.repeat(np.arange(n), 5)
        acts = np.tile(np.arange(5), n)
        new_pos, code, moved, opens = self._transition(env, self._pos[env], self._has_key[env], acts)
        has_key = self._has_key[env] | (moved & (code == L.KEY))
        state = np.where(self._door_open[env] | opens, 2, has_key.astype(np.int64))
        value = self._values[env, state, new_pos[:, 0], new_pos[:, 1]].astype(np.int64)
        value = np.where(moved & (code == L.LAVA), L.UNREACHABLE + 1, value)
        return value.reshape(n, 5).argmin(1).astype(np.int64)

    # ------------------------------------------------------------------ state access (planning oracle, tests)

    def get_state(self) -> LavaKeyDoorState:
        """A copy of every env's full state."""
        return LavaKeyDoorState(self.grid(), self._pos.copy(), self._has_key.copy(), self._door_open.copy(),
                                self._t.copy(), self._family.copy(), self._values.copy(), self._lava_dist.copy())

    def set_state(self, state: LavaKeyDoorState) -> np.ndarray:
        """Overwrite every env's state (copies are taken); returns the observations ``[n *obs]``."""
        n, s, p = self.num_envs, self.params.size, self._pad
        if np.shape(state.cells) != (n, s, s) or np.shape(state.pos) != (n, 2) or np.shape(state.values) != (n, 3, s, s):
            raise ValueError(f"state must have cells ({n}, {s}, {s}), pos ({n}, 2) and values ({n}, 3, {s}, {s}), got "
                             f"{np.shape(state.cells)}, {np.shape(state.pos)}, {np.shape(state.values)}")
        self._cells[:, p:p + s, p:p + s] = state.cells
        self._pos = np.array(state.pos, dtype=np.int64)
        self._has_key = np.array(state.has_key, dtype=bool).reshape(n)
        self._door_open = np.array(state.door_open, dtype=bool).reshape(n)
        self._t = np.array(state.t, dtype=np.int64).reshape(n)
        self._family = np.array(state.family, dtype=np.int64).reshape(n)
        self._values = np.array(state.values, dtype=np.int32)
        self._lava_dist = np.array(state.lava_dist, dtype=np.int32).reshape(n, s, s)
        return self._observe()

    # ------------------------------------------------------------------ inspection

    def grid(self) -> np.ndarray:
        """``int8[n s s]`` current cell codes of every env (a copy; the agent is at ``agent_pos()``)."""
        p, s = self._pad, self.params.size
        return self._cells[:, p:p + s, p:p + s].copy()

    def agent_pos(self) -> np.ndarray:
        """``int64[n 2]`` agent (row, col)."""
        return self._pos.copy()

    def render(self) -> np.ndarray:
        """``uint8[n (s px) (s px) 3]`` image of every env's whole grid with the agent (for videos)."""
        img = render_codes(self.grid(), self._pos, self._tiles, self._agent_tiles)
        return np.ascontiguousarray(img.transpose(0, 2, 3, 1))
