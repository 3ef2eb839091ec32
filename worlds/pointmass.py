"""PointMass: continuous navigation to a goal among circular hazards (a vectorised world).

A point mass moves in the arena ``[-1, 1]^2`` under a 2-D force ``action[n 2]`` in ``[-1, 1]``
(scaled by ``max_force``). Physics is a damped double integrator, semi-implicit Euler::

    vel <- vel + dt * (force / mass - damping * vel);  |vel| capped at max_speed
    pos <- clip(pos + dt * vel, -1, 1);                 velocity into a wall is zeroed

Entering a hazard disc ends the episode with a *violation*; coming within ``goal_radius`` of the
goal ends it with *success*. Reward: +1 on success, -1 on a violation, ``-step_cost`` otherwise.
Episodes are truncated after ``max_steps``. Stepping an env that is already done is allowed (the
result is meaningless; the caller resets it), as :mod:`worlds.gym_env`'s autoreset needs.

Observation (float32 vector, ``obs_kind = "vector"``), in this order:

* ``pos[2]``                                    always;
* ``vel[2]``                                    if ``observe_velocity``;
* ``rays[num_rays]``  distance (arena units) from the mass to the nearest hazard boundary along
  ``num_rays`` evenly spaced directions (angle ``2 pi j / num_rays``), capped at ``ray_range``;
* ``goal - pos [2]``                            if ``goal_obs`` is ``"always"`` or ``"at_start"``
  (``"at_start"``: only in an episode's first observation, zeros afterwards).

Which concepts need memory: with the defaults (velocity and goal always observed) ``speed`` and
``dist_to_goal`` are functions of the current observation, while ``dist_to_hazard`` (and so
``near_hazard``) is only approximately readable from 8 rays, exactly from the history (the rays
seen from several positions pin the hazard discs down). ``observe_velocity=False`` makes ``speed``
need memory (differences of positions); ``goal_obs="at_start"`` makes ``dist_to_goal`` need
memory (remember the goal seen at step 0); ``goal_obs="never"`` makes it unidentifiable.

Layout families: ``one_hazard`` and ``two_hazards`` (training) and ``wall_of_hazards`` (held out:
a vertical line of three discs with gaps between them, start and goal on opposite sides).
Hazards are stored padded to ``MAX_HAZARDS``; a radius of 0 marks an absent hazard.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from worlds.base import StepResult, VectorWorld
from worlds.concepts import Concept, ConceptSchema
from worlds.gym_env import register_gym_id
from worlds.registry import register_world

FAMILIES: tuple[str, ...] = ("one_hazard", "two_hazards", "wall_of_hazards")
OOD_FAMILIES: tuple[str, ...] = ("wall_of_hazards",)
GOAL_OBS_MODES: tuple[str, ...] = ("always", "at_start", "never")
MAX_HAZARDS = 3
_DIAG = 2.0 * math.sqrt(2.0)  # largest distance between two points of the arena


@dataclass(frozen=True)
class PointMassParams:
    """Parameters of :class:`PointMass` (units: arena units, seconds)."""

    families: tuple[str, ...] = ("one_hazard", "two_hazards")
    """Layout families sampled (uniformly) at each reset; any of ``one_hazard, two_hazards, wall_of_hazards``."""
    dt: float = 0.1
    """Integration step in seconds."""
    mass: float = 1.0
    """Mass of the point."""
    damping: float = 1.0
    """Linear velocity damping per second."""
    max_force: float = 1.0
    """Force produced by an action component of 1."""
    max_speed: float = 0.5
    """Speed cap in arena units per second."""
    goal_radius: float = 0.1
    """Reaching within this distance of the goal is success."""
    near_margin: float = 0.15
    """``near_hazard`` is true within this distance of a hazard boundary."""
    num_rays: int = 8
    """Number of hazard range sensors."""
    ray_range: float = 0.5
    """Range cap of the sensors."""
    goal_obs: str = "always"
    """Whether the goal's relative position is observed: ``always``, ``at_start`` (step 0 only) or ``never``."""
    observe_velocity: bool = True
    """Whether the velocity is part of the observation."""
    max_steps: int = 200
    """Time limit (truncation) in steps."""
    step_cost: float = 0.01
    """Reward paid on every step that neither reaches the goal (+1) nor enters a hazard (-1)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "families", tuple(self.families))
        if not self.families or any(f not in FAMILIES for f in self.families):
            raise ValueError(f"families must be a non-empty subset of {FAMILIES}, got {self.families}")
        if self.goal_obs not in GOAL_OBS_MODES:
            raise ValueError(f"goal_obs must be one of {GOAL_OBS_MODES}, got {self.goal_obs!r}")
        for name in ("dt", "mass", "max_force", "max_speed", "goal_radius", "ray_range"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.damping < 0 or self.near_margin < 0:
            raise ValueError(f"damping and near_margin must be >= 0, got {self.damping}, {self.near_margin}")
        if self.num_rays < 0 or self.max_steps < 1:
            raise ValueError(f"num_rays must be >= 0 and max_steps >= 1, got {self.num_rays}, {self.max_steps}")


@dataclass(frozen=True)
class PointMassState:
    """Full state of every env (copies). ``k = MAX_HAZARDS``; radius 0 marks an absent hazard."""

    pos: np.ndarray
    """``[n 2]`` position."""
    vel: np.ndarray
    """``[n 2]`` velocity."""
    goal: np.ndarray
    """``[n 2]`` goal centre."""
    hazard_center: np.ndarray
    """``[n k 2]`` hazard disc centres."""
    hazard_radius: np.ndarray
    """``[n k]`` hazard disc radii."""
    t: np.ndarray
    """``[n]`` steps since the episode started."""
    family: np.ndarray
    """``[n]`` family index."""


def _schema(p: PointMassParams) -> ConceptSchema:
    u = "arena units"
    return ConceptSchema((
        Concept("in_hazard", "binary", "The mass is inside a hazard disc (a violation)."),
        Concept("near_hazard", "binary", f"The mass is within {p.near_margin} of a hazard boundary."),
        Concept("at_goal", "binary", f"The mass is within {p.goal_radius} of the goal."),
        Concept("dist_to_goal", "scalar", "Euclidean distance to the goal centre.", unit=u, low=0.0, high=_DIAG),
        Concept("speed", "scalar", "Speed of the mass.", unit=f"{u}/s", low=0.0, high=p.max_speed),
        Concept("dist_to_hazard", "scalar", "Distance to the nearest hazard boundary (0 inside).", unit=u, low=0.0, high=_DIAG),
    ))


class PointMass(VectorWorld):
    """Point-mass navigation among hazards; see the module docstring for dynamics and observations."""

    name = "pointmass"
    families = FAMILIES
    ood_families = OOD_FAMILIES
    obs_kind = "vector"

    def __init__(self, num_envs: int, params: PointMassParams = PointMassParams(), seed: int | None = None):
        self.num_envs, self.params = num_envs, params
        self.rng = np.random.default_rng(seed)
        self.schema = _schema(params)
        p, n = params, num_envs
        self.obs_dim = 2 + 2 * p.observe_velocity + p.num_rays + 2 * (p.goal_obs != "never")
        self.single_observation_space = gym.spaces.Box(-np.inf, np.inf, (self.obs_dim,), np.float32)
        self.single_action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        angles = 2 * np.pi * np.arange(p.num_rays) / max(p.num_rays, 1)
        self.ray_dirs = np.stack([np.cos(angles), np.sin(angles)], axis=-1)  # [r 2]
        self.pos, self.vel, self.goal = np.zeros((n, 2)), np.zeros((n, 2)), np.zeros((n, 2))
        self.hazard_center, self.hazard_radius = np.zeros((n, MAX_HAZARDS, 2)), np.zeros((n, MAX_HAZARDS))
        self.t, self.fam = np.zeros(n, np.int64), np.zeros(n, np.int64)

    # --- state access (tests, replay) -------------------------------------------------------
    def get_state(self) -> PointMassState:
        """A copy of every env's full state."""
        return PointMassState(self.pos.copy(), self.vel.copy(), self.goal.copy(), self.hazard_center.copy(),
                              self.hazard_radius.copy(), self.t.copy(), self.fam.copy())

    def set_state(self, state: PointMassState) -> np.ndarray:
        """Overwrite every env's state (hazard arrays may have ``k <= MAX_HAZARDS``); returns obs ``[n d]``."""
        n, k = self.num_envs, np.shape(state.hazard_radius)[-1]
        if np.shape(state.pos) != (n, 2) or np.shape(state.hazard_center) != (n, k, 2) or k > MAX_HAZARDS:
            raise ValueError(f"state must have pos (n, 2) and hazards (n, k<={MAX_HAZARDS}) with n={n}, "
                             f"got pos {np.shape(state.pos)}, hazard_center {np.shape(state.hazard_center)}")
        self.pos, self.vel, self.goal = (np.array(a, np.float64).reshape(n, 2) for a in (state.pos, state.vel, state.goal))
        self.hazard_center, self.hazard_radius = np.zeros((n, MAX_HAZARDS, 2)), np.zeros((n, MAX_HAZARDS))
        self.hazard_center[:, :k], self.hazard_radius[:, :k] = state.hazard_center, state.hazard_radius
        self.t, self.fam = np.array(state.t, np.int64).reshape(n), np.array(state.family, np.int64).reshape(n)
        return self._obs()

    # --- VectorWorld -------------------------------------------------------------------------
    def reset(self, seed: int | None = None, mask: np.ndarray | None = None) -> np.ndarray:
        mask = self._reset_mask(seed, mask)
        # Layout sampling is rejection sampling per env: a loop over the envs being reset only.
        for i in np.flatnonzero(mask):
            fam = self.params.families[self.rng.integers(len(self.params.families))]
            start, goal, centers, radii = _sample_layout(fam, self.rng)
            self.pos[i], self.vel[i], self.goal[i] = start, 0.0, goal
            self.hazard_center[i], self.hazard_radius[i] = 0.0, 0.0
            self.hazard_center[i, : len(radii)], self.hazard_radius[i, : len(radii)] = centers, radii
            self.fam[i], self.t[i] = FAMILIES.index(fam), 0
        return self._obs()

    def step(self, actions: np.ndarray) -> StepResult:
        p = self.params
        a = np.asarray(actions, np.float64)
        if a.shape != (self.num_envs, 2):
            raise ValueError(f"actions must have shape ({self.num_envs}, 2), got {a.shape}")
        force = np.clip(a, -1.0, 1.0) * p.max_force
        vel = self.vel + p.dt * (force / p.mass - p.damping * self.vel)
        speed = np.linalg.norm(vel, axis=-1, keepdims=True)
        vel = vel * np.minimum(1.0, p.max_speed / np.maximum(speed, 1e-12))
        pos = self.pos + p.dt * vel
        hit_wall = np.abs(pos) > 1.0
        self.pos, self.vel = np.clip(pos, -1.0, 1.0), np.where(hit_wall, 0.0, vel)
        self.t += 1
        violation = self._hazard_distance() < 0.0
        success = ~violation & (np.linalg.norm(self.goal - self.pos, axis=-1) <= p.goal_radius)
        terminated = violation | success
        truncated = ~terminated & (self.t >= p.max_steps)
        reward = np.where(success, 1.0, np.where(violation, -1.0, -p.step_cost)).astype(np.float32)
        return StepResult(self._obs(), reward, terminated, truncated, success, violation)

    def concepts(self) -> dict[str, np.ndarray]:
        p = self.params
        d_haz = self._hazard_distance()
        d_goal = np.linalg.norm(self.goal - self.pos, axis=-1)
        return {
            "in_hazard": (d_haz < 0).astype(np.uint8),
            "near_hazard": (d_haz < p.near_margin).astype(np.uint8),
            "at_goal": (d_goal <= p.goal_radius).astype(np.uint8),
            "dist_to_goal": np.clip(d_goal, 0.0, _DIAG).astype(np.float32),
            "speed": np.clip(np.linalg.norm(self.vel, axis=-1), 0.0, p.max_speed).astype(np.float32),
            "dist_to_hazard": np.clip(d_haz, 0.0, _DIAG).astype(np.float32),
        }

    def family(self) -> np.ndarray:
        return self.fam.copy()

    def oracle_actions(self) -> np.ndarray:
        """``[n 2]`` a velocity-field controller (no planning, so local minima are possible).

        Desired velocity = goal attraction (slowing down within 0.3 of the goal) with the component
        pointing into any hazard closer than ``d0`` removed, plus repulsion along the hazard's
        outward normal and a swirl along its tangent (on the goal's side) that both grow as the
        boundary nears and fade within 0.4 of the goal (so a goal beside a hazard still wins). The
        force tracks that velocity and cancels the damping. It reads the true state (privileged).
        Measured (seeds 0-2, 1000 episodes each): 100% success, 0% violations on the training
        families and on ``wall_of_hazards``, ~34 / ~38 steps per episode.
        """
        p, d0 = self.params, 0.35
        to_goal = self.goal - self.pos
        dist = np.linalg.norm(to_goal, axis=-1, keepdims=True)
        v = p.max_speed * to_goal / np.maximum(dist, 1e-9) * np.clip(dist / 0.3, 0.2, 1.0)  # [n 2]
        rel = self.pos[:, None, :] - self.hazard_center  # [n k 2]
        norm = np.linalg.norm(rel, axis=-1, keepdims=True)
        normal = rel / np.maximum(norm, 1e-9)
        gap = norm[..., 0] - self.hazard_radius  # [n k]
        w = np.where(self.hazard_radius > 0, np.clip((d0 - gap) / d0, 0.0, 1.0), 0.0)[..., None]  # [n k 1]
        inward = np.minimum(np.einsum("nd,nkd->nk", v, normal), 0.0)[..., None]
        v = v - (w * inward * normal).sum(1)
        tangent = np.stack([-normal[..., 1], normal[..., 0]], axis=-1)
        side = np.where(np.einsum("nd,nkd->nk", to_goal, tangent) >= 0, 1.0, -1.0)[..., None]
        near_goal = np.clip(dist / 0.4, 0.0, 1.0)[..., None]  # let the goal win when it sits beside a hazard
        v = v + p.max_speed * (w * near_goal * (0.8 * normal + 0.6 * side * tangent)).sum(1)
        v = v * np.minimum(1.0, p.max_speed / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-9))
        force = p.mass * ((v - self.vel) / p.dt + p.damping * self.vel)
        return np.clip(force / p.max_force, -1.0, 1.0).astype(np.float32)

    # --- helpers -----------------------------------------------------------------------------
    def _hazard_distance(self) -> np.ndarray:
        """``[n]`` signed distance to the nearest hazard boundary (negative inside); inf if none."""
        d = np.linalg.norm(self.pos[:, None, :] - self.hazard_center, axis=-1) - self.hazard_radius
        return np.where(self.hazard_radius > 0, d, np.inf).min(axis=1)

    def _rays(self) -> np.ndarray:
        """``[n r]`` distance along each ray to the first hazard boundary it crosses, capped at ``ray_range``.

        Ray ``pos + s u`` meets circle ``(c, r)`` where ``s^2 - 2 b s + |w|^2 - r^2 = 0`` with
        ``w = c - pos``, ``b = w . u``: the entry root ``b - sqrt(D)`` from outside, the exit root
        ``b + sqrt(D)`` from inside.
        """
        w = self.hazard_center - self.pos[:, None, :]  # [n k 2]
        b = np.einsum("nkd,rd->nrk", w, self.ray_dirs)  # [n r k]
        c = (w**2).sum(-1)[:, None, :] - self.hazard_radius[:, None, :] ** 2  # [n 1 k]
        disc = b**2 - c
        root = np.sqrt(np.maximum(disc, 0.0))
        s = np.where(c > 0, b - root, b + root)
        hit = (disc >= 0) & (s >= 0) & (self.hazard_radius[:, None, :] > 0)
        return np.minimum(np.where(hit, s, np.inf).min(-1, initial=np.inf), self.params.ray_range)

    def _obs(self) -> np.ndarray:
        p = self.params
        parts = [self.pos]
        if p.observe_velocity:
            parts.append(self.vel)
        parts.append(self._rays())
        if p.goal_obs == "always":
            parts.append(self.goal - self.pos)
        elif p.goal_obs == "at_start":
            parts.append((self.goal - self.pos) * (self.t == 0)[:, None])
        return np.concatenate(parts, axis=-1).astype(np.float32)


def _sample_layout(family: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(start[2], goal[2], centers[k 2], radii[k])`` for one episode of ``family``."""
    if family == "one_hazard":
        centers, radii = rng.uniform(-0.4, 0.4, (1, 2)), rng.uniform(0.2, 0.35, 1)
    elif family == "two_hazards":
        while True:
            centers, radii = rng.uniform(-0.55, 0.55, (2, 2)), rng.uniform(0.15, 0.3, 2)
            if np.linalg.norm(centers[0] - centers[1]) >= radii.sum() + 0.2:  # leave a passage
                break
    elif family == "wall_of_hazards":
        x0, y0 = rng.uniform(-0.2, 0.2), rng.uniform(-0.1, 0.1)
        centers = np.stack([np.full(3, x0), y0 + np.array([-0.7, 0.0, 0.7])], axis=-1)
        radii = np.full(3, 0.2)
        side = rng.choice([-1.0, 1.0])
        start = np.array([x0 + side * rng.uniform(0.45, 0.9), rng.uniform(-0.9, 0.9)])
        goal = np.array([x0 - side * rng.uniform(0.45, 0.9), rng.uniform(-0.9, 0.9)])
        return np.clip(start, -0.95, 0.95), np.clip(goal, -0.95, 0.95), centers, radii
    else:
        raise ValueError(f"unknown family {family!r}; known: {FAMILIES}")
    while True:  # start and goal clear of hazards and at least 1 apart
        start, goal = rng.uniform(-0.9, 0.9, (2, 2))
        clear = [(np.linalg.norm(x - centers, axis=-1) - radii).min() >= 0.1 for x in (start, goal)]
        if all(clear) and np.linalg.norm(start - goal) >= 1.0:
            return start, goal, centers, radii


register_world(PointMass, PointMassParams)
register_gym_id("pointmass", "ontolab/PointMass-v0")
