"""The collect stage: a world, a coverage policy and an on-disk trajectory dataset."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from experiments.config import ConfigError, to_dict
from experiments.schema import RunConfig
from worlds.collect import CollectReport, collect
from worlds.policies import make_policy
from worlds.registry import get_world


def build_worlds(cfg: RunConfig):
    """The training world and, if OOD episodes are asked for, a world generating only held-out families."""
    entry = get_world(cfg.world.name)
    params = cfg.world_params()
    world = entry.cls(num_envs=cfg.data.num_envs, params=params, seed=cfg.seed)
    ood_world = None
    if cfg.data.ood_episodes:
        if not entry.cls.ood_families or "families" not in {f.name for f in dataclasses.fields(params)}:
            raise ConfigError(f"world {cfg.world.name!r} has no held-out layout families; set data.ood_episodes=0")
        ood_params = dataclasses.replace(params, families=tuple(entry.cls.ood_families))
        ood_world = entry.cls(num_envs=cfg.data.num_envs, params=ood_params, seed=cfg.seed + 1_000_003)
    return world, ood_world


def run_collect(cfg: RunConfig, out: Path, *, progress: bool = True) -> CollectReport:
    """Collect ``cfg.data.episodes`` (+ OOD) episodes into the dataset folder ``out`` (atomically)."""
    world, ood_world = build_worlds(cfg)
    policy_kw = {"epsilon": cfg.data.epsilon} if cfg.data.policy in ("epsilon_oracle", "mixture") else {}
    policy = make_policy(cfg.data.policy, **policy_kw)
    return collect(
        world, policy, cfg.data.episodes, out, seed=cfg.seed,
        ood_episodes=cfg.data.ood_episodes, ood_world=ood_world, config=to_dict(cfg),
        progress=progress, min_base_rate=cfg.data.min_base_rate,
        shard_steps=cfg.data.shard_steps, split_fractions=cfg.data.split_fractions,
    )
