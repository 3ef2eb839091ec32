"""Collect a trajectory dataset by running a policy in a vectorised world.

``collect(world, policy, episodes, out, seed=0)`` steps all envs together, keeps one growing
buffer of rows per env (``[cap n ...]`` arrays, one write pointer per env, so a step costs one
vectorised write per field), cuts an episode out when its env is done, resets the done envs with
``world.reset(mask=done)``, and streams the episodes through :class:`~worlds.dataset.DatasetWriter`.

Row convention (see :class:`~worlds.trajectory.Episode`): an episode's row 0 holds the reset
observation with ``actions = 0`` and ``is_first = True``; each step then appends the action taken,
the next observation, its reward and flags, and the concepts of the new state.

To avoid a bias toward short episodes, the episodes kept are the first ``episodes`` *started*
(not the first finished): envs that start an episode beyond the budget keep stepping, unrecorded.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
from tqdm.auto import tqdm

from worlds.base import VectorWorld
from worlds.dataset.manifest import action_spec_of, obs_spec_of
from worlds.dataset.splits import SPLITS
from worlds.dataset.stats import rare_concepts
from worlds.dataset.writer import DatasetWriter
from worlds.policies import Policy
from worlds.trajectory import Episode

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CollectReport:
    """What :func:`collect` wrote."""

    path: str
    fingerprint: str
    """sha256 of the manifest (equals ``TrajectoryDataset.open(path).fingerprint``)."""
    episodes: int
    transitions: int
    """Environment steps recorded (stored rows minus episodes)."""
    split_episodes: Mapping[str, int]
    split_transitions: Mapping[str, int]
    base_rates: Mapping[str, Mapping[str, Any]]
    """Per-concept base rates over the in-distribution episodes (train + val + test); see ``worlds.dataset.stats``."""
    rare_concepts: tuple[str, ...]
    """Concepts with a value seen in under ``min_base_rate`` of the in-distribution steps."""
    seconds: float
    transitions_per_s: float


class _RowBuffer:
    """Per-env episode rows: ``{field: [cap n ...]}`` with a write pointer per env; grows by doubling."""

    def __init__(self, num_envs: int, cap: int = 64):
        self.n, self.cap = num_envs, cap
        self.ptr = np.zeros(num_envs, np.int64)
        self.data: dict[str, np.ndarray] = {}
        self._envs = np.arange(num_envs)

    def write(self, rows: Mapping[str, np.ndarray], mask: np.ndarray | None = None) -> None:
        """Append one row to every env (or to the envs in ``mask``): ``rows[field]`` is ``[n ...]``."""
        envs = self._envs if mask is None else self._envs[mask]
        if len(envs) == 0:
            return
        if self.ptr[envs].max() >= self.cap:
            self.cap *= 2
            self.data = {k: np.concatenate([v, np.zeros_like(v)]) for k, v in self.data.items()}
        for k, v in rows.items():
            v = np.asarray(v)
            if k not in self.data:
                self.data[k] = np.zeros((self.cap, self.n, *v.shape[1:]), v.dtype)
            self.data[k][self.ptr[envs], envs] = v[envs]
        self.ptr[envs] += 1

    def take(self, env: int) -> dict[str, np.ndarray]:
        """Copy out env ``env``'s rows and start it afresh."""
        out = {k: v[: self.ptr[env], env].copy() for k, v in self.data.items()}
        self.ptr[env] = 0
        return out


def _first_rows(world: VectorWorld, obs: np.ndarray) -> dict[str, np.ndarray]:
    """Rows for freshly reset envs: reset observation, zero action, ``is_first``."""
    n = world.num_envs
    act_shape = () if world.discrete_actions else world.single_action_space.shape
    false = np.zeros(n, bool)
    rows = {"obs": obs, "actions": np.zeros((n, *act_shape), np.int64 if world.discrete_actions else np.float32),
            "is_first": np.ones(n, bool), "is_terminal": false, "reward": np.zeros(n, np.float32),
            "success": false, "violation": false}
    rows.update({f"concept.{k}": v for k, v in world.concepts().items()})
    return rows


def _to_episode(rows: Mapping[str, np.ndarray], family: int) -> Episode:
    return Episode(
        obs=rows["obs"], actions=rows["actions"], is_first=rows["is_first"], is_terminal=rows["is_terminal"],
        reward=rows["reward"], success=rows["success"], violation=rows["violation"],
        concepts={k[len("concept."):]: v for k, v in rows.items() if k.startswith("concept.")}, family=int(family),
    )


def _run(world: VectorWorld, policy: Policy, episodes: int, writer: DatasetWriter, rng: np.random.Generator,
         seed: int, ood: bool, bar: Any) -> int:
    """Collect ``episodes`` episodes of ``world`` into ``writer``; returns the number of env steps recorded."""
    n = world.num_envs
    buf = _RowBuffer(n)
    obs = world.reset(seed=seed)
    policy.reset(world, rng, None)
    ordinal = np.arange(n)                      # start order of each env's current episode
    started, finished, steps = n, 0, 0
    family = np.asarray(world.family(), np.int64).copy()
    buf.write(_first_rows(world, obs))
    while finished < episodes:
        actions = np.asarray(policy(world, rng))
        res = world.step(actions)
        rows = {"obs": res.obs, "actions": actions, "is_first": np.zeros(n, bool), "is_terminal": res.terminated,
                "reward": res.reward, "success": res.success, "violation": res.violation}
        rows.update({f"concept.{k}": v for k, v in world.concepts().items()})
        buf.write(rows)
        keep = ordinal < episodes
        steps += int(keep.sum())
        done = np.asarray(res.terminated, bool) | np.asarray(res.truncated, bool)
        if not done.any():
            continue
        for i in np.flatnonzero(done):
            ep_rows = buf.take(i)
            if ordinal[i] < episodes:
                writer.add(_to_episode(ep_rows, family[i]), ood=ood)
                finished += 1
                bar.update(1)
            ordinal[i] = started
            started += 1
        obs = world.reset(mask=done)
        policy.reset(world, rng, done)
        family[done] = np.asarray(world.family(), np.int64)[done]
        buf.write(_first_rows(world, obs), mask=done)
    return steps


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def collect(
    world: VectorWorld, policy: Policy, episodes: int, out: str | os.PathLike, *, seed: int,
    ood_episodes: int = 0, ood_world: VectorWorld | None = None, config: Mapping[str, Any] | None = None,
    progress: bool = True, min_base_rate: float = 0.01, shard_steps: int = 65536, overwrite: bool = False,
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
) -> CollectReport:
    """Run ``policy`` in ``world`` for ``episodes`` episodes (plus ``ood_episodes`` in ``ood_world``,
    stored as split ``"ood"``) and write the dataset to ``out``. Warns about concepts rarer than
    ``min_base_rate`` (see :func:`worlds.dataset.rare_concepts`)."""
    episodes = _check_int("episodes", episodes, 1)
    ood_episodes = _check_int("ood_episodes", ood_episodes, 0)
    seed = _check_int("seed", seed, 0)
    if not isinstance(world, VectorWorld):
        raise ValueError(f"world must be a VectorWorld (e.g. worlds.make_world(...)), got {type(world).__name__}")
    if not callable(policy) or not hasattr(policy, "reset"):
        raise ValueError(f"policy must be a worlds.policies.Policy (see make_policy), got {type(policy).__name__}")
    if not 0.0 <= float(min_base_rate) < 0.5:
        raise ValueError(f"min_base_rate must lie in [0, 0.5), got {min_base_rate!r}")
    if ood_episodes and ood_world is None:
        raise ValueError(f"ood_episodes={ood_episodes} needs an ood_world built with only the held-out families {world.ood_families}")
    if ood_world is not None:
        same = (ood_world.name == world.name and ood_world.schema == world.schema
                and obs_spec_of(ood_world) == obs_spec_of(world) and action_spec_of(ood_world) == action_spec_of(world))
        if not same:
            raise ValueError(f"ood_world must be the same world as world (name, schema, observation and action specs), got {ood_world.name!r} vs {world.name!r}")
    config = {**(config or {}), "collect": {"policy": repr(policy), "episodes": episodes, "ood_episodes": ood_episodes,
                                            "num_envs": world.num_envs, "seed": seed}}

    seeds = np.random.SeedSequence(seed).spawn(4)
    start = time.perf_counter()
    with DatasetWriter.for_world(out, world, shard_steps=shard_steps, config=config, seed=seed,
                                 split_fractions=split_fractions, overwrite=overwrite) as writer:
        with tqdm(total=episodes + ood_episodes, disable=not progress, unit="ep", desc=f"collect {world.name}") as bar:
            steps = _run(world, policy, episodes, writer, np.random.default_rng(seeds[0]),
                         int(seeds[1].generate_state(1)[0]), False, bar)
            if ood_episodes:
                steps += _run(ood_world, policy, ood_episodes, writer, np.random.default_rng(seeds[2]),
                              int(seeds[3].generate_state(1)[0]), True, bar)
        rates = writer.base_rates(SPLITS)
        counts = writer.split_counts()
        path = writer.close()
    seconds = time.perf_counter() - start

    rare = rare_concepts(rates, float(min_base_rate))
    if rare:
        msg = (f"collect {world.name}: concept(s) {', '.join(rare)} take some value in under {min_base_rate:.1%} of the "
               f"in-distribution steps; probes for them will be unreliable -- change the policy mix or collect more episodes")
        warnings.warn(msg, stacklevel=2)
        log.warning(msg)
    return CollectReport(
        path=str(path), fingerprint=str(writer.fingerprint), episodes=episodes + ood_episodes, transitions=steps,
        split_episodes={s: c["episodes"] for s, c in counts.items()},
        split_transitions={s: c["transitions"] for s, c in counts.items()}, base_rates=rates,
        rare_concepts=rare, seconds=seconds, transitions_per_s=steps / max(seconds, 1e-9),
    )
