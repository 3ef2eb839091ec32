"""Environment throughput: the vectorised ``lavakeydoor`` world vs. MiniGrid's lava crossing.

``ours``: env steps/s of :class:`worlds.lavakeydoor.LavaKeyDoor` with ``num_envs`` envs, uniformly
random actions and ``reset(mask=done)`` of the envs whose episode ended (layout generation and
distance maps included; concepts not queried). ``peer``: env steps/s of MiniGrid's
``MiniGrid-LavaCrossingS9N1-v0`` (same grid size, also procedurally generated with lava) through
gymnasium's single-env API with random actions, reset when done -- the usual way it is stepped.
``ratio = ours / peer``.

Usage: ``python benchmarks/env_throughput.py [--quick]`` (prints one JSON line), or through
``benchmarks/run.py env_throughput``.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

PEER_ID = "MiniGrid-LavaCrossingS9N1-v0"


def ours(num_envs: int, steps: int, seed: int) -> float:
    """Env steps/s of the vectorised world (``steps`` vector steps after a short warm-up)."""
    from worlds.lavakeydoor import LavaKeyDoor

    world = LavaKeyDoor(num_envs, seed=seed)
    rng = np.random.default_rng(seed)
    actions = rng.integers(0, 5, size=(steps + 20, num_envs))
    for t in range(steps + 20):
        if t == 20:                                        # warm-up done (first layout pool filled)
            start = time.perf_counter()
        res = world.step(actions[t])
        done = res.terminated | res.truncated
        if done.any():
            world.reset(mask=done)
    return num_envs * steps / (time.perf_counter() - start)


def peer(steps: int, seed: int) -> float:
    """Env steps/s of MiniGrid's lava crossing through ``gym.make`` (single env)."""
    import gymnasium as gym
    import minigrid  # noqa: F401  (registers the MiniGrid ids)

    env = gym.make(PEER_ID)
    env.reset(seed=seed)
    actions = np.random.default_rng(seed).integers(0, env.action_space.n, size=steps)
    start = time.perf_counter()
    for a in actions:
        _, _, terminated, truncated, _ = env.step(int(a))
        if terminated or truncated:
            env.reset()
    elapsed = time.perf_counter() - start
    env.close()
    return steps / elapsed


def run(quick: bool) -> dict:
    cfg = {"num_envs": 1024, "ours_steps": 150 if quick else 1500, "peer_steps": 4000 if quick else 40000,
           "seed": 0, "world": "lavakeydoor (size 9, view 5, families scatter/river/rooms)", "peer_id": PEER_ID,
           "policy": "uniform random, done envs reset"}
    o = ours(cfg["num_envs"], cfg["ours_steps"], cfg["seed"])
    p = peer(cfg["peer_steps"], cfg["seed"])
    return {"name": "env_throughput", "ours": o, "peer": p, "ratio": o / p, "unit": "env steps/s",
            "higher_is_better": True, "config": cfg}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a reduced run (a few seconds)")
    print(json.dumps(run(ap.parse_args().quick)))
