"""Collection throughput: ``collect()`` end to end to disk vs. stepping the same world without writing.

``ours``: transitions/s of :func:`worlds.collect.collect` on ``lavakeydoor`` (random policy, every
per-step field and concept recorded, shards fsync'ed, manifest written). ``peer``: transitions/s of
the same world stepped with the same random actions and ``reset(mask=done)`` only -- the ceiling
that any collector of this world can reach. ``ratio = ours / peer`` is the collector's efficiency.

Usage: ``python benchmarks/collect_throughput.py [--quick]`` (prints one JSON line).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from worlds.collect import collect
from worlds.policies import RandomPolicy
from worlds.registry import make_world

WORLD = "lavakeydoor"


def _peer(num_envs: int, transitions: int, seed: int) -> float:
    """Transitions/s of stepping the world with random actions, resetting done envs, writing nothing."""
    world = make_world(WORLD, num_envs=num_envs, seed=seed)
    rng = np.random.default_rng(seed)
    world.reset(seed=seed)
    steps = 0
    start = time.perf_counter()
    while steps < transitions:
        res = world.step(world.sample_actions(rng))
        done = res.terminated | res.truncated
        if done.any():
            world.reset(mask=done)
        steps += num_envs
    return steps / (time.perf_counter() - start)


def _ours(num_envs: int, episodes: int, seed: int) -> tuple[float, int]:
    world = make_world(WORLD, num_envs=num_envs, seed=seed)
    with tempfile.TemporaryDirectory() as d:
        report = collect(world, RandomPolicy(), episodes, Path(d) / "ds", seed=seed, progress=False, min_base_rate=0.0)
    return report.transitions_per_s, report.transitions


def run(quick: bool) -> dict:
    """One measurement; ``quick`` keeps it under ~20 s on a laptop core."""
    num_envs, episodes, seed = (32, 1000, 0) if quick else (64, 10000, 0)
    _ours(num_envs, max(4, episodes // 20), seed)  # warm-up (imports, page cache)
    ours, transitions = _ours(num_envs, episodes, seed)
    peer = _peer(num_envs, transitions, seed)
    return {
        "name": "collect_throughput", "ours": ours, "peer": peer, "ratio": ours / peer,
        "unit": "transitions/s", "higher_is_better": True,
        "config": {"world": WORLD, "num_envs": num_envs, "episodes": episodes, "transitions": transitions,
                   "policy": "random", "seed": seed, "quick": quick},
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small run (~20 s)")
    print(json.dumps(run(parser.parse_args().quick)))
