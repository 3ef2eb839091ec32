"""Planner throughput and quality: our MPPI vs. pytorch_mppi's ``MPPI`` driving the same dynamics model.

Two comparisons, in the same run, with the same number of samples ``K``, horizon ``T``, noise std,
temperature (``lambda``), action bounds [-1, 1], one MPPI iteration per decision and a zero initial plan:

* **learned** (the headline ``ours / peer / ratio``: the issue asks for "the same dynamics model"): a
  small RSSM (:func:`dynamics.registry.build_model` ``"rssm"`` on the pointmass world's observation and
  action specs, untrained, weights seeded) and a latent reward compiled from ``REWARD`` against seeded
  random linear probes on its ``feat`` site (the same path a probe-compiled reward takes in the plan
  stage; untrained weights and random probes cost exactly what trained ones cost). pytorch_mppi calls
  ``dynamics(state[K nx], u[K nu])`` once per horizon step on one flat state vector: the RSSM's latent
  sites are packed as ``x = feat = [deter, stoch]`` (``nx = deter + stoch``); the adapter slices ``x``
  into ``deter``/``stoch``, calls the public ``model.imagine`` for one step and returns its ``feat``.
  Ours calls ``imagine`` once per decision (the horizon loop is inside) and the reward once on ``[K T]``.
  Decisions are taken closed loop in the real pointmass world from the model's filtered posterior
  (:class:`planning.latent_filter.LatentFilter`, not timed), so the states are real posteriors.
* **oracle**: the same two planners on the pointmass oracle (the true simulator,
  :meth:`planning.oracle.PointMassOracle.step`) with the true reward -- a second throughput figure
  and the **true-return comparison**. The untrained model and random probes make the learned loop's
  returns meaningless (they are reported, flagged), so "equal or better true return" is judged on the
  oracle: both planners act in the real world for ``return_episodes`` episodes (layouts seeded
  identically), true return (+1 goal, -1 hazard, -0.01 per step) per episode, bootstrap CIs over
  episodes (:mod:`probes.stats`) for each mean and for the paired difference ``ours - peer``;
  ``ours_not_worse`` is ``True`` when that difference's 95% CI reaches 0 or above.

Throughput = imagined latent steps per second, ``K * T / median seconds per decision`` (the mean-based
figure is reported too); also ms per decision. The two planners run in LOCK STEP, each in its own copy
of the world, deciding alternately (:func:`lockstep`): on a busy shared machine, timing one after the
other made the ratio swing from 0.3 to 2. Ours also pays one extra batch-1 ``imagine`` per decision
(the returned plan's predicted return, :meth:`planning.Planner.plan`; ~2.4 of ~20 ms on the small RSSM
at K=256, T=15). pytorch_mppi adds its control-cost term ``lambda * u' Sigma^-1 eps`` to every
sample's cost (ours does not) -- a small algorithmic difference that can move returns either way.

Threads: the headline figures run at the torch thread count the caller pinned (``benchmarks/run.py``
pins one per available core; run directly, this module pins the same way), recorded as
``config.torch_threads``. With more than one, both comparisons are repeated on one thread
(``single_thread``; see ``threads_note`` in the output), and the true-return episodes run on one thread
(returns do not depend on it; on a busy 2-core machine 2 threads made an oracle decision ~30x slower).

pytorch-mppi is a dependency of this benchmark only (imported inside :func:`peer_planner`).

Usage: ``python benchmarks/planner.py [--quick]`` (prints one JSON line), or ``benchmarks/run.py planner``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Callable, NamedTuple

import numpy as np
import torch

REWARD = "-dist_to_goal - 10 * in_hazard"
LEARNED = {"model": "rssm", "deter": 64, "stoch": 16, "hidden": 64, "embed": 64}
"""The learned model: a small Gaussian-latent RSSM (the default is 192 wide; small tensors make per-call
overhead, where the two planners differ, a larger share of the time)."""


# ---------------------------------------------------------------------------------------------- setup

class Flat(NamedTuple):
    """How pytorch_mppi sees a model: one flat state ``[K nx]`` and a one-step dynamics on it.

    (A NamedTuple, not a dataclass: ``benchmarks/run.py`` loads this file without registering it in
    ``sys.modules``, which ``dataclass`` needs under postponed annotations.)"""

    nx: int
    pack: Callable[[dict], torch.Tensor]
    """``{site: [K ...]} -> x[K nx]``"""
    unpack: Callable[[torch.Tensor], dict]
    """``x[K nx] -> {site: [K ...]}`` (views)"""
    step: Callable[[dict, torch.Tensor], dict]
    """``(sites[K ...], u[K a]) -> next sites[K ...]``"""


def oracle_flat(oracle) -> Flat:
    """The oracle's sites (``pos, vel, goal, hazard_center, hazard_radius, done``) as one flat vector."""
    k = oracle.sites["hazard_radius"][0]
    widths = {"pos": 2, "vel": 2, "goal": 2, "hazard_center": 2 * k, "hazard_radius": k, "done": 1}
    names = list(widths)

    def unpack(x: torch.Tensor) -> dict:
        out, i = {}, 0
        for name in names:
            out[name] = x[:, i:i + widths[name]]
            i += widths[name]
        out["hazard_center"] = out["hazard_center"].reshape(-1, k, 2)
        out["done"] = out["done"][:, 0] > 0.5
        return out

    def pack(s: dict) -> torch.Tensor:
        return torch.cat([s["pos"], s["vel"], s["goal"], s["hazard_center"].flatten(1), s["hazard_radius"],
                          s["done"][:, None].to(s["pos"].dtype)], dim=1)

    def step(sites: dict, u: torch.Tensor) -> dict:
        return {**sites, **oracle.step(sites, u)}

    return Flat(sum(widths.values()), pack, unpack, step)


def rssm_flat(model) -> Flat:
    """An RSSM's latent as one flat vector ``x = feat = [deter, stoch]``; one step is the public ``imagine``."""
    from dynamics.base import LatentState

    d = model.sites["deter"][0]

    def unpack(x: torch.Tensor) -> dict:
        return {"deter": x[:, :d], "stoch": x[:, d:], "feat": x}

    def step(sites: dict, u: torch.Tensor) -> dict:
        nxt = model.imagine(LatentState(sites), u[:, None])        # [K 1 ...]
        return {k: v[:, 0] for k, v in nxt.sites.items()}

    return Flat(model.sites["feat"][0], lambda s: s["feat"], unpack, step)


def random_ontology(schema, site: str, width: int, concepts: tuple[str, ...], seed: int):
    """Seeded random linear probes reading ``concepts`` off ``site [width]`` (a stand-in for fitted ones)."""
    from probes import LinearProbe, Normalizer, Ontology, OntologyEntry

    g = torch.Generator().manual_seed(seed)
    entries = {}
    for name in concepts:
        c = schema[name]
        probe = LinearProbe(c, Normalizer(torch.zeros(width), torch.ones(width)), {},
                            torch.randn(1, width, generator=g) / width ** 0.5, torch.zeros(1))
        entries[name] = OntologyEntry(c, "linear", site, (width,), probe,
                                      "r2" if c.kind == "scalar" else "balanced_accuracy", 0.0)
    return Ontology(entries)


def learned_setup(world, seed: int):
    """``(model, reward_fn)``: the small seeded RSSM on ``world``'s specs and the probe-compiled latent reward."""
    from dynamics import build_model
    from planning import concept_reward
    from rewards import RewardSpec

    obs_spec = {"shape": list(world.single_observation_space.shape), "kind": "vector"}
    hp = {k: v for k, v in LEARNED.items() if k != "model"}
    torch.manual_seed(seed)
    model = build_model(LEARNED["model"], obs_spec, {"discrete": False, "dim": 2}, **hp).eval()
    spec = RewardSpec(REWARD)
    ontology = random_ontology(world.schema, "feat", model.sites["feat"][0],
                               tuple(sorted({u.name for u in spec.concepts()})), seed)
    return model, concept_reward(spec.compile(world.schema), ontology.resolver)


# ---------------------------------------------------------------------------------------------- planners

def our_planner(model, reward_fn, cfg: dict) -> Callable:
    from planning import make_planner

    planner = make_planner("mppi", model, reward_fn, cfg["horizon"], num_samples=cfg["samples"], iterations=1,
                           noise_std=cfg["noise_std"], temperature=cfg["temperature"], cost_limit=float("inf"),
                           seed=cfg["seed"])

    def decide(state, first: bool):
        if first:
            planner.reset()
        action, _ = planner.plan(state)
        return action

    return decide


def peer_planner(flat: Flat, reward_fn, dtype: torch.dtype, cfg: dict) -> Callable:
    from pytorch_mppi import MPPI

    from dynamics.base import LatentState

    def dynamics(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return flat.pack(flat.step(flat.unpack(x), u))

    def running_cost(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return -reward_fn(LatentState(flat.unpack(x)), u).reward

    ctrl = MPPI(dynamics, running_cost, flat.nx, noise_sigma=cfg["noise_std"] ** 2 * torch.eye(2, dtype=dtype),
                num_samples=cfg["samples"], horizon=cfg["horizon"], lambda_=cfg["temperature"],
                u_min=-torch.ones(2, dtype=dtype), u_max=torch.ones(2, dtype=dtype),
                U_init=torch.zeros(cfg["horizon"], 2, dtype=dtype))

    def decide(state, first: bool):
        if first:
            ctrl.reset()
            ctrl.U = torch.zeros(cfg["horizon"], 2, dtype=dtype)
        x = flat.pack(dict(state.sites))[0]
        with torch.inference_mode():
            return ctrl.command(x)

    return decide


# ---------------------------------------------------------------------------------------------- closed loop

class OracleStates:
    """The planner's state is the world's true state."""

    def __init__(self, oracle):
        self.oracle = oracle

    def start(self, world, obs) -> None:
        pass

    def update(self, world, obs, action) -> None:
        pass

    def state(self, world):
        return self.oracle.state_of(world)


class PosteriorStates:
    """The planner's state is the learned model's posterior, filtered from the real observations."""

    def __init__(self, model):
        from planning.latent_filter import LatentFilter

        self.filter, self.mask = LatentFilter(model, 1), np.ones(1, bool)

    def start(self, world, obs) -> None:
        self.filter.start(obs, self.mask)

    def update(self, world, obs, action) -> None:
        self.filter.update(obs, action.astype(np.float32), self.mask)

    def state(self, world):
        return self.filter.state


def lockstep(deciders: dict, states: dict, cfg: dict, n_episodes: int, max_steps: int) -> dict:
    """Closed-loop episodes of every planner in ``deciders`` in its own copy of the real world, in lock step.

    Episode ``k`` starts every copy from the same layout (``reset(seed=1000 + k)``); at each step every
    planner still running decides once (the order alternates step by step), so the planners share the
    machine's load -- on a busy shared machine, timing them one after the other made the ratio swing
    from 0.3 to 2. Filtering the posterior is not timed. Returns ``{name: stats}``.
    """
    from worlds.pointmass import PointMass

    names = list(deciders)
    worlds = {n: PointMass(1, seed=0) for n in names}
    times = {n: [] for n in names}
    returns, success, violation = ({n: [] for n in names} for _ in range(3))
    torch.manual_seed(cfg["seed"])                                 # pytorch_mppi samples from the global generator
    for ep in range(n_episodes):
        running, total = set(names), dict.fromkeys(names, 0.0)
        for n in names:
            states[n].start(worlds[n], worlds[n].reset(seed=1000 + ep))
        for t in range(max_steps):
            for n in (names if t % 2 == 0 else names[::-1]):
                if n not in running:
                    continue
                state = states[n].state(worlds[n])
                start = time.perf_counter()
                action = deciders[n](state, first=t == 0)
                times[n].append(time.perf_counter() - start)
                a = np.asarray(action, dtype=np.float64).reshape(1, 2)
                res = worlds[n].step(a)
                total[n] += float(res.reward[0])
                if res.terminated[0] or res.truncated[0] or t == max_steps - 1:
                    running.discard(n)
                    returns[n].append(total[n])
                    success[n].append(bool(res.success[0]))
                    violation[n].append(bool(res.violation[0]))
                else:
                    states[n].update(worlds[n], res.obs, a)
            if not running:
                break
    out = {}
    for n in names:
        s = np.asarray(times[n])
        out[n] = {"steps_per_s": cfg["samples"] * cfg["horizon"] / float(np.median(s)),
                  "steps_per_s_mean": cfg["samples"] * cfg["horizon"] * len(s) / float(s.sum()),
                  "ms_per_decision": 1e3 * float(np.median(s)), "ms_per_decision_mean": 1e3 * float(s.mean()),
                  "decisions": len(s), "episodes": n_episodes, "true_return": float(np.mean(returns[n])),
                  "returns": returns[n], "successes": int(sum(success[n])), "violations": int(sum(violation[n]))}
    return out


def compare_returns(ours: list[float], peer: list[float], seed: int) -> dict:
    """Mean true return of each with a bootstrap CI over episodes, and the paired difference ``ours - peer``."""
    from probes.stats import bootstrap, bootstrap_paired_difference

    o, p = np.asarray(ours), np.asarray(peer)
    groups = np.arange(len(o))                                     # episode k of both saw the same layout: paired
    diff = bootstrap_paired_difference(np.mean, [o], np.mean, [p], groups=groups, n_boot=2000, seed=seed)
    return {"ours": bootstrap(np.mean, o, groups=groups, n_boot=2000, seed=seed).as_json(),
            "peer": bootstrap(np.mean, p, groups=groups, n_boot=2000, seed=seed).as_json(),
            "difference": diff.as_json(), "ours_not_worse": bool(diff.upper >= 0.0), "episodes": len(o)}


# ---------------------------------------------------------------------------------------------- run

def learned_loops(cfg: dict, n_episodes: int, max_steps: int) -> dict:
    """``{"ours", "peer"}``: both planners on the small RSSM, deciding from its filtered posterior, in lock step."""
    from worlds.pointmass import PointMass

    model, latent_reward = learned_setup(PointMass(1, seed=0), cfg["seed"])
    deciders = {"ours": our_planner(model, latent_reward, cfg),
                "peer": peer_planner(rssm_flat(model), latent_reward, torch.float32, cfg)}
    lockstep(deciders, {n: PosteriorStates(model) for n in deciders}, cfg, 1, 1)      # warm-up
    return lockstep(deciders, {n: PosteriorStates(model) for n in deciders}, cfg, n_episodes, max_steps)


def oracle_loops(cfg: dict, n_episodes: int, max_steps: int) -> dict:
    """``{"ours", "peer"}``: both planners on the oracle with the true reward, in lock step."""
    from planning import oracle_model
    from rewards import RewardSpec
    from worlds.pointmass import PointMass

    oracle = oracle_model(PointMass(1, seed=0), dtype=torch.float32)
    true_reward = oracle.true_reward(RewardSpec(REWARD))
    deciders = {"ours": our_planner(oracle, true_reward, cfg),
                "peer": peer_planner(oracle_flat(oracle), true_reward, torch.float32, cfg)}
    lockstep(deciders, {n: OracleStates(oracle) for n in deciders}, cfg, 1, 1)        # warm-up
    return lockstep(deciders, {n: OracleStates(oracle) for n in deciders}, cfg, n_episodes, max_steps)


def _figure(loops: dict) -> dict:
    o, p = loops["ours"], loops["peer"]
    return {"ours": o["steps_per_s"], "peer": p["steps_per_s"], "ratio": o["steps_per_s"] / p["steps_per_s"],
            "ratio_of_means": o["steps_per_s_mean"] / p["steps_per_s_mean"],
            "ms_per_decision": {"ours": o["ms_per_decision"], "peer": p["ms_per_decision"]},
            "ms_per_decision_mean": {"ours": o["ms_per_decision_mean"], "peer": p["ms_per_decision_mean"]},
            "decisions": {"ours": o["decisions"], "peer": p["decisions"]}}


def run(quick: bool) -> dict:
    threads = torch.get_num_threads()
    cfg = {"samples": 256 if quick else 1000, "horizon": 15 if quick else 20, "noise_std": 0.5, "temperature": 0.05,
           "seed": 0, "dtype": "float32", "iterations_per_decision": 1, "reward": REWARD,
           "world": "pointmass (one_hazard, two_hazards)", "torch_threads": threads, "learned_model": LEARNED,
           "learned_episodes": 1 if quick else 2, "learned_max_steps": 6 if quick else 15,
           "pinned_oracle_episodes": 1, "pinned_oracle_max_steps": 6 if quick else 30,
           "return_episodes": 6 if quick else 16, "return_max_steps": 200}
    learned = learned_loops(cfg, cfg["learned_episodes"], cfg["learned_max_steps"])
    # The true-return comparison runs on one thread: returns do not depend on the thread count, and on a
    # busy 2-core machine 2 threads made each oracle decision ~30x slower (threads_note).
    torch.set_num_threads(1)
    try:
        truth = oracle_loops(cfg, cfg["return_episodes"], cfg["return_max_steps"])
        single = {"learned": _figure(learned_loops(cfg, cfg["learned_episodes"], cfg["learned_max_steps"])),
                  "oracle": _figure(truth)} if threads > 1 else None
    finally:
        torch.set_num_threads(threads)
    pinned_oracle = oracle_loops(cfg, cfg["pinned_oracle_episodes"], cfg["pinned_oracle_max_steps"]) \
        if threads > 1 else truth
    head, oo, op = _figure(learned), truth["ours"], truth["peer"]
    return {
        "name": "planner", "ours": head["ours"], "peer": head["peer"], "ratio": head["ratio"],
        "unit": "imagined latent steps/s", "higher_is_better": True,
        "ratio_means": "throughput ours / peer, imagined latent steps per second (samples x horizon / median "
                       "seconds per decision), of our MPPI vs pytorch_mppi.MPPI driving the SAME learned model (a "
                       "small seeded RSSM, latent packed into one flat vector for pytorch_mppi) with the same "
                       "samples, horizon, noise, temperature and bounds, both in lock step in the real pointmass "
                       "world, at config.torch_threads threads; target >= 1. 'oracle': the same on the true "
                       "simulator; 'single_thread': both at one thread; 'true_return': returns, on the oracle",
        "ms_per_decision": head["ms_per_decision"],
        "learned": head,
        "oracle": _figure(pinned_oracle),
        "single_thread": single,
        "threads_note": "on a shared 2-core machine whose other core is busy, 2 intra-op threads made every small op "
                        "wait for the busy core (an RSSM imagine of [256 15] ~10x, an oracle decision ~30x slower "
                        "than on 1 thread), so the pinned-thread figures measure contention as much as the planners; "
                        "'single_thread' is the steadier comparison there. Medians of per-decision times, planners "
                        "interleaved step by step, keep both figures paired",
        "meets_target": {"pinned_threads": head["ratio"] >= 1.0,
                         "single_thread": None if single is None else single["learned"]["ratio"] >= 1.0},
        "profile_note": "where ours loses time on the learned model (one thread, K=1000, T=20, measured by hand): the "
                        "probe-compiled reward evaluated once on [K T] took ~48 ms of a ~85 ms decision, the same "
                        "reward evaluated per step on [K] (as pytorch_mppi calls it) ~32 ms: each linear probe "
                        "materialises the normalised latents and a finiteness mask of [K*T d] (probes.base."
                        "Probe.score / as_latents), out of cache, for a matmul of ~0.3 ms. Ours also pays one "
                        "batch-1 imagine of the returned plan per decision (PlanInfo.predicted_return, ~2-5 ms)",
        "true_return": {"model": "oracle", "threads": 1, **compare_returns(oo["returns"], op["returns"], cfg["seed"]),
                        "successes": {"ours": oo["successes"], "peer": op["successes"]},
                        "violations": {"ours": oo["violations"], "peer": op["violations"]},
                        "why_oracle": "the learned model is untrained and its probes random, so its closed-loop "
                                      "returns say nothing about either planner (they are in details.learned); on "
                                      "the oracle both planners optimise the true reward through the true dynamics",
                        "ours_not_worse_means": "the 95% bootstrap CI (episodes resampled, paired by layout) of "
                                                "mean(ours - peer) true return reaches 0 or above"},
        "learned_model": {**LEARNED, "trained": False, "flat_state": "x = feat = [deter, stoch], nx = deter + stoch",
                          "reward": f"{REWARD!r} compiled against seeded random linear probes on feat"},
        "config": cfg, "details": {"learned": learned, "oracle": truth}, "peer_name": "pytorch_mppi.MPPI",
    }


def _pin_threads() -> None:
    """As ``benchmarks/run.py``: one torch / BLAS thread per core this process may use."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(cores)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a reduced run (well under a minute)")
    _pin_threads()
    print(json.dumps(run(ap.parse_args().quick)))
