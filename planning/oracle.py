"""Oracle dynamics: a world's TRUE simulator behind the :class:`~dynamics.base.DynamicsModel` interface.

The oracle's "latent" state is the world's true state, so a planner run on it measures the planner
alone (no model error), and a reward compiled against its true concepts is the exact reward::

    oracle = oracle_model(world)                          # LavaKeyDoorOracle or PointMassOracle
    state = oracle.state_of(world)                        # [n ...] snapshot of the real envs
    reward_fn = oracle.true_reward(RewardSpec("-0.1 * steps_to_goal - 10 * in_lava"))
    planner = make_planner("discrete_cem", oracle, reward_fn, horizon=15)
    action, info = planner.plan(state.at(slice(0, 1)))

``imagine`` steps the true dynamics batched in torch (a Python loop over the horizon only, none over
the batch). An episode's end is absorbing in imagination: once the agent reaches the goal or a
violation, the state stays put, so concept-based rewards keep reading the final state. ``observe``,
``initial`` and ``loss`` do not apply (the true state is not filtered from observations) and raise.

Sites (``[*b ...]`` with leading batch dims; ``imagine`` returns ``[n h ...]``):

* lavakeydoor -- ``pos int64[2]`` (row, col), ``has_key bool``, ``door_open bool``, ``done bool``,
  ``feat float[5]`` (row, col, has_key, door_open, done); static per episode: ``cells int8[s s]``
  (cell codes), ``values int32[3 s s]`` (steps-to-goal maps), ``lava_dist int32[s s]``.
* pointmass -- ``pos float[2]``, ``vel float[2]``, ``done bool``, ``feat float[6]`` (pos, vel,
  goal - pos); static: ``goal float[2]``, ``hazard_center float[k 2]``, ``hazard_radius float[k]``.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from typing import Any, Callable, Mapping

import torch
from torch import Tensor

from dynamics.base import ActionSpec, DynamicsModel, LatentState, LossOutput, ObsSpec
from planning.types import RewardFn, concept_reward
from rewards import Resolver, RewardSpec
from worlds.base import VectorWorld
from worlds.concepts import ConceptSchema
from worlds.lavakeydoor import layout as L
from worlds.lavakeydoor.world import MOVES, LavaKeyDoorParams
from worlds.lavakeydoor.world import make_schema as lkd_schema
from worlds.pointmass import MAX_HAZARDS, PointMass, PointMassParams

_ConceptFn = Callable[[LatentState], Tensor]


class OracleModel(DynamicsModel):
    """Base of the oracle adapters: subclasses define the sites, one true step and the true concepts."""

    dynamic: tuple[str, ...] = ()
    """Sites that ``step`` changes (``feat`` is derived from the others once, after the rollout); every
    other site is static within an episode."""

    def __init__(self, schema: ConceptSchema, obs_spec: ObsSpec, action_spec: ActionSpec, dtype: torch.dtype):
        super().__init__()
        self.schema, self.obs_spec, self.action_spec, self.dtype = schema, obs_spec, action_spec, dtype
        self._concepts: dict[str, _ConceptFn] = self._concept_fns()
        missing = [c.name for c in schema if c.name not in self._concepts]
        if missing:
            raise TypeError(f"{type(self).__name__} computes no value for concepts {missing}")

    # ------------------------------------------------------------------ what subclasses implement

    @abstractmethod
    def state_of(self, world: VectorWorld, device: torch.device | str | None = None) -> LatentState:
        """The true state of every env of ``world``: sites ``[n ...]``."""

    @abstractmethod
    def step(self, sites: Mapping[str, Tensor], action: Tensor) -> dict[str, Tensor]:
        """One true step of every state ``[b ...]`` under ``action[b *act]``: the new dynamic sites."""

    @abstractmethod
    def _feat(self, sites: Mapping[str, Tensor]) -> Tensor:
        """``feat[*b d]`` of states ``[*b ...]``."""

    @abstractmethod
    def _concept_fns(self) -> dict[str, _ConceptFn]:
        """``{concept name: fn(states[*b ...]) -> [*b]}`` for every concept of the schema."""

    # ------------------------------------------------------------------ DynamicsModel

    @property
    def sites(self) -> dict[str, tuple[int, ...]]:
        return dict(self._site_shapes())

    @abstractmethod
    def _site_shapes(self) -> dict[str, tuple[int, ...]]: ...

    def imagine(self, state: LatentState, actions: Tensor, *, sample: bool = False) -> LatentState:
        """Step the true dynamics ``h = actions.shape[1]`` times from ``state[b ...]``: sites ``[b h ...]``."""
        cur = dict(state.sites)
        b, h = int(actions.shape[0]), int(actions.shape[1])
        if int(cur["done"].shape[0]) != b:
            raise ValueError(f"imagine needs one action sequence per state: state batch {int(cur['done'].shape[0])}, "
                             f"actions {tuple(actions.shape)}")
        steps: dict[str, list[Tensor]] = {k: [] for k in self.dynamic}
        for t in range(h):
            cur.update(self.step(cur, actions[:, t]))
            for k in self.dynamic:
                steps[k].append(cur[k])
        out = {k: torch.stack(v, dim=1) for k, v in steps.items()}
        for k, v in state.sites.items():
            if k not in out and k != "feat":
                out[k] = v.unsqueeze(1).expand(b, h, *v.shape[1:])
        out["feat"] = self._feat(out)
        return LatentState(out)

    def initial(self, batch_size: int) -> LatentState:
        raise NotImplementedError(f"{type(self).__name__} has no initial latent: take true states with state_of(world)")

    def observe(self, obs: Tensor, actions: Tensor, is_first: Tensor, *, sample: bool = False) -> LatentState:
        raise NotImplementedError(f"{type(self).__name__} does not filter observations: use state_of(world)")

    def loss(self, obs: Tensor, actions: Tensor, is_first: Tensor) -> LossOutput:
        raise NotImplementedError(f"{type(self).__name__} is the true simulator; it is not trained")

    # ------------------------------------------------------------------ true concepts and rewards

    def concepts(self, states: LatentState, names: tuple[str, ...] | None = None) -> dict[str, Tensor]:
        """True values ``{name: [*b]}`` of ``names`` (all schema concepts by default) for ``states``."""
        names = tuple(c.name for c in self.schema) if names is None else names
        unknown = [n for n in names if n not in self._concepts]
        if unknown:
            raise ValueError(f"unknown concepts {unknown}; this oracle knows {sorted(self._concepts)}")
        return {n: self._concepts[n](states) for n in names}

    def reader(self, states: LatentState) -> Resolver:
        """A lazy :data:`rewards.Resolver` of the true concepts of ``states`` (a :data:`ConceptReader`).

        ``p(x)`` of a true binary value is its indicator; values are computed on demand, once each.
        """
        cache: dict[str, Tensor] = {}

        def resolve(name: str, mode: str) -> Tensor:
            if name not in cache:
                cache[name] = self.concepts(states, (name,))[name]
            v = cache[name]
            concept = self.schema[name]
            if mode == "prob" and concept.kind == "categorical":
                return torch.nn.functional.one_hot(v.long(), concept.num_classes).to(self.dtype)
            return v

        return resolve

    def true_reward(self, spec: RewardSpec) -> RewardFn:
        """``spec`` compiled against this oracle's true concepts: the exact reward of imagined states."""
        return concept_reward(spec.compile(self.schema), self.reader)


def _lead_index(lead: torch.Size, device: torch.device) -> tuple[Tensor, ...]:
    """Broadcastable ``arange`` per leading dim, to gather ``grid[*lead ...]`` at per-state indices without copies."""
    return tuple(torch.arange(d, device=device).view(*([1] * i), d, *([1] * (len(lead) - i - 1)))
                 for i, d in enumerate(lead))


class LavaKeyDoorOracle(OracleModel):
    """The lava-key-door rules (:mod:`worlds.lavakeydoor.world`) in torch. A picked-up key and an opened
    door are read from ``has_key``/``door_open`` rather than from ``cells``, so ``cells`` stays static."""

    dynamic = ("pos", "has_key", "door_open", "done")

    def __init__(self, params: LavaKeyDoorParams = LavaKeyDoorParams(), dtype: torch.dtype = torch.float32):
        self.params = params
        v = params.view
        obs = ObsSpec((3, v * params.tile_px, v * params.tile_px), "image") if params.obs_mode == "rgb" \
            else ObsSpec((len(L.CELL_NAMES), v, v), "symbolic")
        super().__init__(lkd_schema(params), obs, ActionSpec(discrete=True, n=len(MOVES)), dtype)
        self.register_buffer("moves", torch.as_tensor(MOVES), persistent=False)

    @property
    def hparams(self) -> dict[str, Any]:
        return {"world": "lavakeydoor", "size": self.params.size, "view": self.params.view}

    def _site_shapes(self) -> dict[str, tuple[int, ...]]:
        s = self.params.size
        return {"pos": (2,), "has_key": (), "door_open": (), "done": (), "feat": (5,),
                "cells": (s, s), "values": (3, s, s), "lava_dist": (s, s)}

    def state_of(self, world: VectorWorld, device: torch.device | str | None = None) -> LatentState:
        if world.name != "lavakeydoor" or world.params.size != self.params.size:
            raise ValueError(f"this oracle needs a lavakeydoor world of size {self.params.size}, got {world.name!r}")
        st = world.get_state()
        sites = {"pos": torch.as_tensor(st.pos, device=device), "has_key": torch.as_tensor(st.has_key, device=device),
                 "door_open": torch.as_tensor(st.door_open, device=device),
                 "cells": torch.as_tensor(st.cells, device=device), "values": torch.as_tensor(st.values, device=device),
                 "lava_dist": torch.as_tensor(st.lava_dist, device=device)}
        here = self._code(sites, sites["pos"])
        sites["done"] = (here == L.LAVA) | (here == L.GOAL)
        sites["feat"] = self._feat(sites)
        return LatentState(sites)

    def _code(self, sites: Mapping[str, Tensor], rc: Tensor) -> Tensor:
        """Effective cell code at ``rc[*b 2]`` (``outside`` beyond the grid, key gone once held, door open)."""
        cells = sites["cells"]
        s = cells.shape[-1]
        r, c = rc[..., 0], rc[..., 1]
        inside = (r >= 0) & (r < s) & (c >= 0) & (c < s)
        code = cells[(*_lead_index(r.shape, r.device), r.clamp(0, s - 1), c.clamp(0, s - 1))].long()
        code = torch.where(inside, code, L.OUTSIDE)
        code = torch.where((code == L.KEY) & sites["has_key"], L.EMPTY, code)
        return torch.where((code == L.DOOR_LOCKED) & sites["door_open"], L.DOOR_OPEN, code)

    def _feat(self, sites: Mapping[str, Tensor]) -> Tensor:
        parts = [sites["pos"], sites["has_key"][..., None], sites["door_open"][..., None], sites["done"][..., None]]
        return torch.cat([p.to(self.dtype) for p in parts], dim=-1)

    def step(self, sites: Mapping[str, Tensor], action: Tensor) -> dict[str, Tensor]:
        pos, has_key, door_open, done = sites["pos"], sites["has_key"], sites["door_open"], sites["done"]
        target = pos + self.moves.to(pos.device)[action.long()]
        code = self._code(sites, target)
        locked = code == L.DOOR_LOCKED
        blocked = (code == L.WALL) | (code == L.OUTSIDE) | (locked & ~has_key)
        moved = ~blocked & ~done                                       # a finished episode is absorbing
        new = {"pos": torch.where(moved[..., None], target, pos),
               "has_key": has_key | (moved & (code == L.KEY)),
               "door_open": door_open | (moved & locked),
               "done": done | (moved & ((code == L.LAVA) | (code == L.GOAL)))}
        return new

    def _concept_fns(self) -> dict[str, _ConceptFn]:
        p, pad = self.params, self.params.view // 2

        def here(x: LatentState) -> Tensor:
            return self._code(x.sites, x["pos"])

        def flag(b: Tensor) -> Tensor:
            return b.to(self.dtype)

        def visible(x: LatentState, codes: tuple[int, ...]) -> Tensor:
            cells, pos = x["cells"], x["pos"]
            s = cells.shape[-1]
            ar = torch.arange(s, device=cells.device)
            near_r = (ar - pos[..., 0:1]).abs() <= pad                                  # [*b s]
            near_c = (ar - pos[..., 1:2]).abs() <= pad
            hit = torch.zeros_like(cells, dtype=torch.bool)
            for code in codes:
                hit |= cells == code
            return (hit & near_r[..., :, None] & near_c[..., None, :]).flatten(-2).any(-1)

        def lava_adjacent(x: LatentState) -> Tensor:
            nb = [self._code(x.sites, x["pos"] + self.moves[k].to(x["pos"].device)) == L.LAVA for k in range(1, 5)]
            return flag(torch.stack(nb, -1).any(-1))

        def steps_to_goal(x: LatentState) -> Tensor:
            pos, k = x["pos"], torch.where(x["door_open"], 2, x["has_key"].long())
            v = x["values"][(*_lead_index(k.shape, k.device), k, pos[..., 0], pos[..., 1])].clamp(max=p.steps_cap)
            return torch.where(here(x) == L.LAVA, p.steps_cap, v).to(self.dtype)

        def dist_to_lava(x: LatentState) -> Tensor:
            pos = x["pos"]
            d = x["lava_dist"][(*_lead_index(pos.shape[:-1], pos.device), pos[..., 0], pos[..., 1])]
            return d.clamp(max=2 * (p.size - 1)).to(self.dtype)

        return {
            "agent_row": lambda x: x["pos"][..., 0].to(self.dtype),
            "agent_col": lambda x: x["pos"][..., 1].to(self.dtype),
            "has_key": lambda x: flag(x["has_key"]),
            "door_open": lambda x: flag(x["door_open"]),
            "in_lava": lambda x: flag(here(x) == L.LAVA),
            "lava_adjacent": lava_adjacent,
            "at_goal": lambda x: flag(here(x) == L.GOAL),
            "key_visible": lambda x: flag(visible(x, (L.KEY,)) & ~x["has_key"]),
            "door_visible": lambda x: flag(visible(x, (L.DOOR_LOCKED, L.DOOR_OPEN))),
            "goal_visible": lambda x: flag(visible(x, (L.GOAL,))),
            "steps_to_goal": steps_to_goal,
            "dist_to_lava": dist_to_lava,
        }


class PointMassOracle(OracleModel):
    """The point-mass physics (:mod:`worlds.pointmass`) in torch; ``dtype=torch.float64`` matches the world exactly."""

    dynamic = ("pos", "vel", "done")

    def __init__(self, params: PointMassParams = PointMassParams(), dtype: torch.dtype = torch.float32):
        self.params = params
        obs_dim = 2 + 2 * params.observe_velocity + params.num_rays + 2 * (params.goal_obs != "never")
        super().__init__(PointMass(1, params).schema, ObsSpec((obs_dim,), "vector"), ActionSpec(discrete=False, dim=2), dtype)

    @property
    def hparams(self) -> dict[str, Any]:
        return {"world": "pointmass", "dt": self.params.dt, "damping": self.params.damping}

    def _site_shapes(self) -> dict[str, tuple[int, ...]]:
        k = MAX_HAZARDS
        return {"pos": (2,), "vel": (2,), "done": (), "feat": (6,), "goal": (2,),
                "hazard_center": (k, 2), "hazard_radius": (k,)}

    def state_of(self, world: VectorWorld, device: torch.device | str | None = None) -> LatentState:
        if world.name != "pointmass":
            raise ValueError(f"this oracle needs a pointmass world, got {world.name!r}")
        st = world.get_state()

        def f(a: Any) -> Tensor:
            return torch.as_tensor(a, device=device).to(self.dtype)

        sites = {"pos": f(st.pos), "vel": f(st.vel), "goal": f(st.goal), "hazard_center": f(st.hazard_center),
                 "hazard_radius": f(st.hazard_radius)}
        sites["done"] = (self._hazard_distance(sites) < 0) | (self._goal_distance(sites) <= self.params.goal_radius)
        sites["feat"] = self._feat(sites)
        return LatentState(sites)

    @staticmethod
    def _hazard_distance(x: Mapping[str, Tensor]) -> Tensor:
        """``[*b]`` signed distance to the nearest hazard boundary (negative inside; inf with no hazard)."""
        d = torch.linalg.vector_norm(x["pos"][..., None, :] - x["hazard_center"], dim=-1) - x["hazard_radius"]
        return torch.where(x["hazard_radius"] > 0, d, math.inf).min(dim=-1).values

    @staticmethod
    def _goal_distance(x: Mapping[str, Tensor]) -> Tensor:
        return torch.linalg.vector_norm(x["goal"] - x["pos"], dim=-1)

    def step(self, sites: Mapping[str, Tensor], action: Tensor) -> dict[str, Tensor]:
        p, pos, vel, done = self.params, sites["pos"], sites["vel"], sites["done"]
        force = action.to(pos.dtype).clamp(-1.0, 1.0) * p.max_force
        v = vel + p.dt * (force / p.mass - p.damping * vel)
        speed = torch.linalg.vector_norm(v, dim=-1, keepdim=True)
        v = v * torch.clamp(p.max_speed / speed.clamp(min=1e-12), max=1.0)
        x = pos + p.dt * v
        hit_wall = x.abs() > 1.0
        x, v = x.clamp(-1.0, 1.0), torch.where(hit_wall, 0.0, v)
        frozen = done[..., None]                                       # a finished episode is absorbing
        new = {"pos": torch.where(frozen, pos, x), "vel": torch.where(frozen, vel, v)}
        nxt = {**sites, **new}
        new["done"] = done | (self._hazard_distance(nxt) < 0) | (self._goal_distance(nxt) <= p.goal_radius)
        return new

    def _feat(self, sites: Mapping[str, Tensor]) -> Tensor:
        return torch.cat([sites["pos"], sites["vel"], sites["goal"] - sites["pos"]], dim=-1)

    def _concept_fns(self) -> dict[str, _ConceptFn]:
        p, diag = self.params, self.schema["dist_to_goal"].high      # the arena's diagonal

        def haz(x: LatentState) -> Tensor:
            return self._hazard_distance(x.sites)

        return {
            "in_hazard": lambda x: (haz(x) < 0).to(self.dtype),
            "near_hazard": lambda x: (haz(x) < p.near_margin).to(self.dtype),
            "at_goal": lambda x: (self._goal_distance(x.sites) <= p.goal_radius).to(self.dtype),
            "dist_to_goal": lambda x: self._goal_distance(x.sites).clamp(0.0, diag).to(self.dtype),
            "speed": lambda x: torch.linalg.vector_norm(x["vel"], dim=-1).clamp(0.0, p.max_speed).to(self.dtype),
            "dist_to_hazard": lambda x: haz(x).clamp(0.0, diag).to(self.dtype),
        }


_ORACLES: dict[str, Callable[..., OracleModel]] = {"lavakeydoor": LavaKeyDoorOracle, "pointmass": PointMassOracle}


def oracle_model(world: VectorWorld, dtype: torch.dtype = torch.float32) -> OracleModel:
    """The oracle adapter of ``world`` (same parameters), e.g. ``oracle_model(make_world("pointmass", 1))``."""
    if world.name not in _ORACLES:
        raise ValueError(f"no oracle for world {world.name!r}; oracles exist for {', '.join(sorted(_ORACLES))}")
    return _ORACLES[world.name](world.params, dtype=dtype)
