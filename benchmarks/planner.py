"""Planner throughput and quality: our MPPI vs. pytorch_mppi's ``MPPI`` on the same pointmass dynamics.

Both planners drive the SAME dynamics -- the pointmass oracle's batched true step
(:meth:`planning.oracle.PointMassOracle.step`) -- and the SAME reward, the true concepts compiled from
``-dist_to_goal - 10 * in_hazard`` (pytorch_mppi minimises its negative as a running cost), with the
same number of samples ``K``, horizon ``T``, noise std, temperature (``lambda``), action bounds, one
MPPI iteration per decision and a zero initial plan. pytorch_mppi calls ``dynamics(state[K nx],
u[K nu])`` once per horizon step on a flat state vector, so its adapter slices the flat vector into
the oracle's sites and concatenates them back (views and one ``cat`` per step). Ours calls
``imagine`` once per decision (it loops over the horizon inside) and the reward once on ``[K T]``.

``ours`` / ``peer``: imagined latent steps per second, ``K * T * decisions / planning time`` over a
few closed-loop episodes on the real world (layouts seeded identically for both). Also reported: ms
per decision and the mean TRUE return per episode (the world's reward: +1 goal, -1 hazard, -0.01 per
step), success and violation counts. ``ratio = ours / peer``.

pytorch-mppi is a dependency of this benchmark only (imported inside :func:`peer_planner`).

Usage: ``python benchmarks/planner.py [--quick]`` (prints one JSON line), or ``benchmarks/run.py planner``.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Callable

import numpy as np
import torch

REWARD = "-dist_to_goal - 10 * in_hazard"


def _setup(dtype: torch.dtype):
    from dynamics.base import LatentState
    from planning import oracle_model
    from rewards import RewardSpec
    from worlds.pointmass import PointMass

    world = PointMass(1, seed=0)
    oracle = oracle_model(world, dtype=dtype)
    reward_fn = oracle.true_reward(RewardSpec(REWARD))
    return world, oracle, reward_fn, LatentState


def our_planner(oracle, reward_fn, cfg: dict) -> Callable:
    from planning import make_planner

    planner = make_planner("mppi", oracle, reward_fn, cfg["horizon"], num_samples=cfg["samples"], iterations=1,
                           noise_std=cfg["noise_std"], temperature=cfg["temperature"], cost_limit=float("inf"),
                           seed=cfg["seed"])

    def decide(state, first: bool):
        if first:
            planner.reset()
        action, _ = planner.plan(state)
        return action

    return decide


def peer_planner(oracle, reward_fn, LatentState, cfg: dict) -> Callable:
    from pytorch_mppi import MPPI

    k = oracle.sites["hazard_radius"][0]
    widths = {"pos": 2, "vel": 2, "goal": 2, "hazard_center": 2 * k, "hazard_radius": k, "done": 1}
    names, nx = list(widths), sum(widths.values())

    def unpack(x: torch.Tensor) -> dict[str, torch.Tensor]:
        out, i = {}, 0
        for name in names:
            out[name] = x[:, i:i + widths[name]]
            i += widths[name]
        out["hazard_center"] = out["hazard_center"].reshape(-1, k, 2)
        out["done"] = out["done"][:, 0] > 0.5
        return out

    def pack(s: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([s["pos"], s["vel"], s["goal"], s["hazard_center"].flatten(1), s["hazard_radius"],
                          s["done"][:, None].to(s["pos"].dtype)], dim=1)

    def dynamics(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        sites = unpack(x)
        sites.update(oracle.step(sites, u))
        return pack(sites)

    def running_cost(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return -reward_fn(LatentState(unpack(x)), u).reward

    dtype = oracle.dtype
    ctrl = MPPI(dynamics, running_cost, nx, noise_sigma=cfg["noise_std"] ** 2 * torch.eye(2, dtype=dtype),
                num_samples=cfg["samples"], horizon=cfg["horizon"], lambda_=cfg["temperature"],
                u_min=-torch.ones(2, dtype=dtype), u_max=torch.ones(2, dtype=dtype),
                U_init=torch.zeros(cfg["horizon"], 2, dtype=dtype))

    def decide(state, first: bool):
        if first:
            ctrl.reset()
            ctrl.U = torch.zeros(cfg["horizon"], 2, dtype=dtype)
        flat = pack({n: state[n] for n in names})[0]
        with torch.inference_mode():
            return ctrl.command(flat)

    return decide


def episodes(decide: Callable, world, oracle, cfg: dict) -> dict:
    """Closed-loop episodes on the real world; planning time and true returns."""
    torch.manual_seed(cfg["seed"])                                 # pytorch_mppi samples from the global generator
    plan_s, decisions, returns, success, violation = 0.0, 0, [], 0, 0
    for ep in range(cfg["episodes"]):
        world.reset(seed=1000 + ep)
        total = 0.0
        for t in range(cfg["max_steps"]):
            state = oracle.state_of(world)
            start = time.perf_counter()
            action = decide(state, first=t == 0)
            plan_s += time.perf_counter() - start
            decisions += 1
            res = world.step(np.asarray(action, dtype=np.float64).reshape(1, 2))
            total += float(res.reward[0])
            if res.terminated[0] or res.truncated[0]:
                break
        returns.append(total)
        success += int(res.success[0])
        violation += int(res.violation[0])
    return {"steps_per_s": cfg["samples"] * cfg["horizon"] * decisions / plan_s,
            "ms_per_decision": 1e3 * plan_s / decisions, "true_return": float(np.mean(returns)),
            "successes": success, "violations": violation, "decisions": decisions}


def run(quick: bool) -> dict:
    cfg = {"samples": 256 if quick else 1000, "horizon": 15 if quick else 20, "episodes": 2 if quick else 10,
           "max_steps": 100 if quick else 200, "noise_std": 0.5, "temperature": 0.05, "seed": 0,
           "dtype": "float32", "world": "pointmass (one_hazard, two_hazards)", "reward": REWARD,
           "iterations_per_decision": 1, "torch_threads": 1}
    # The tensors here are tiny ([K 2] per op): intra-op threads only add synchronisation, and on a
    # busy 2-core machine they made both planners ~20x slower. Both run single-threaded.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(cfg)
    finally:
        torch.set_num_threads(threads)


def _run(cfg: dict) -> dict:
    world, oracle, reward_fn, LatentState = _setup(torch.float32)
    ours_fn = our_planner(oracle, reward_fn, cfg)
    peer_fn = peer_planner(oracle, reward_fn, LatentState, cfg)
    warm = oracle.state_of(world)                                  # warm-up (first-call allocations)
    ours_fn(warm, True), peer_fn(warm, True)
    o = episodes(ours_fn, world, oracle, cfg)
    p = episodes(peer_fn, world, oracle, cfg)
    return {"name": "planner", "ours": o["steps_per_s"], "peer": p["steps_per_s"], "ratio": o["steps_per_s"] / p["steps_per_s"],
            "unit": "imagined steps/s", "higher_is_better": True, "config": cfg,
            "ms_per_decision": {"ours": o["ms_per_decision"], "peer": p["ms_per_decision"]},
            "true_return": {"ours": o["true_return"], "peer": p["true_return"]},
            "details": {"ours": o, "peer": p}, "peer_name": "pytorch_mppi.MPPI"}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a reduced run (well under a minute)")
    print(json.dumps(run(ap.parse_args().quick)))
