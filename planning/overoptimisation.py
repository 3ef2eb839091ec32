"""Reward over-optimisation: how the imagined (proxy) return and the real (true) return move as the
planner optimises harder, in the spirit of Gao, Schulman & Hilton (2022), "Scaling laws for reward
model overoptimization".

The proxy is what the planner maximises: the reward read off imagined latents (a probe-compiled
:class:`rewards.RewardSpec`) along the dynamics model's imagined rollout. The truth is the same spec
evaluated on the world's TRUE concepts (``world.concepts()``) of the states the plan really reaches.
Optimisation pressure grows along two families, each from the same start states:

* **best-of-n** over uniformly random action sequences (:class:`~planning.shooting.RandomShooting`
  with ``num_samples = n``, no warm start), whose divergence from the action prior has the analytic
  value ``KL = log n - (n - 1) / n`` (:func:`best_of_n_kl`);
* **CEM** (:class:`~planning.discrete.DiscreteCEM` without polishing for discrete actions,
  :class:`~planning.cem.CEM` for continuous ones) at growing ``samples x iterations``; no closed-form KL,
  so its pressure axis is the number of sequences imagined.

Execution is OPEN LOOP from the episode's first state: every start state is filtered once (or, for an
:class:`~planning.oracle.OracleModel`, read with ``state_of``), the planner returns its ``h``-step plan
and its imagined return (the proxy), the world is reset to the same start state (``reset(seed)``) and
the whole plan is executed in the real world. The true return is ``sum_t discount**t r_true(s_t)``
over the same ``h`` steps; once a real episode ends (goal, violation or time limit) its last state is
held (absorbing), which is how :mod:`planning.oracle` imagines ends, so proxy and truth are on one
scale: with the oracle model and the true reward the two agree exactly (tested). ``world_return``
adds the world's own reward up to the end of the episode, for reference. Intervals are percentile
bootstraps over start states (episodes).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from dynamics.base import DynamicsModel, LatentState
from planning.closed_loop import LatentFilter
from planning.oracle import OracleModel
from planning.planner import Planner
from planning.types import RewardFn
from probes.stats import bootstrap
from rewards import RewardSpec
from worlds.atomic import atomic_write_bytes, atomic_write_json
from worlds.base import VectorWorld
from worlds.estimate import Estimate

BEST_OF_N: tuple[int, ...] = (1, 4, 16, 64, 256, 1024)
"""Default best-of-n sample counts."""
CEM_SAMPLES: tuple[int, ...] = (8, 16, 32, 64, 128, 256)
CEM_ITERATIONS: tuple[int, ...] = (1, 2, 3, 4, 5, 6)
"""Default CEM budgets, paired: ``(8, 1), (16, 2), ..., (256, 6)`` -- 8 to 1536 sequences per decision."""


def best_of_n_kl(n: int) -> float:
    """``KL(best-of-n || prior) = log n - (n - 1) / n`` nats (Stiennon et al. 2020; Gao et al. 2022).

    Exact when the score has no ties (a continuous distribution); with ties (e.g. few distinct action
    sequences) it is an upper bound (Beirami et al. 2024).
    """
    if n < 1:
        raise ValueError(f"best-of-n needs n >= 1, got {n}")
    return math.log(n) - (n - 1) / n


@dataclass(frozen=True)
class PressurePoint:
    """Proxy and true return at one optimisation pressure (estimates over start states)."""

    optimiser: str
    """``"best_of_n"`` or ``"cem"``."""
    samples: int
    """Sequences per iteration (``n`` for best-of-n)."""
    iterations: int
    sequences: int
    """Sequences imagined per decision (``samples * iterations``): the pressure axis of both families."""
    kl: float | None
    """Analytic ``KL(best-of-n || prior)`` in nats (best-of-n only)."""
    proxy_return: Estimate
    """Mean imagined return of the returned plan under the proxy (latent) reward."""
    true_return: Estimate
    """Mean true return of the same plan executed open loop in the real world (see the module docstring)."""
    gap: Estimate
    """Mean of ``proxy - true`` per start state (paired)."""
    proxy_cost: Estimate
    true_cost: Estimate
    """Summed constraint costs over the horizon (imagined / real), as the returns."""
    world_return: Estimate
    """Mean of the world's own reward over the executed steps (up to the episode's end)."""


@dataclass(frozen=True)
class OveroptimisationCurve:
    """One model/reward pair's :class:`PressurePoint` s, best-of-n first, then CEM."""

    label: str
    horizon: int
    episodes: int
    execution: str
    points: tuple[PressurePoint, ...]

    def family(self, optimiser: str) -> tuple[PressurePoint, ...]:
        return tuple(p for p in self.points if p.optimiser == optimiser)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types; every :class:`Estimate` becomes ``{estimate, ci_low, ci_high}``."""
        def plain(v: Any) -> Any:
            return v.as_json() if isinstance(v, Estimate) else v

        return {"label": self.label, "horizon": self.horizon, "episodes": self.episodes, "execution": self.execution,
                "points": [{f.name: plain(getattr(p, f.name)) for f in fields(p)} for p in self.points]}


_ESTIMATES = ("proxy_return", "true_return", "gap", "proxy_cost", "true_cost", "world_return")


def _planner(family: str, model: DynamicsModel, reward_fn: RewardFn, horizon: int, samples: int, iterations: int,
             *, discrete: bool, seed: int, **kw: Any) -> Planner:
    from planning.cem import CEM
    from planning.discrete import DiscreteCEM
    from planning.shooting import RandomShooting

    elites = max(1, samples // 8)
    if family == "best_of_n":
        return RandomShooting(model, reward_fn, horizon, num_samples=samples, num_elites=1, seed=seed, **kw)
    if discrete:  # no polish: the pressure is samples x iterations and nothing else
        return DiscreteCEM(model, reward_fn, horizon, num_samples=samples, num_elites=elites, iterations=iterations,
                           polish_rounds=0, seed=seed, **kw)
    return CEM(model, reward_fn, horizon, num_samples=samples, num_elites=elites, iterations=iterations, seed=seed, **kw)


def _start_states(world: VectorWorld, model: DynamicsModel, obs: np.ndarray, device: torch.device) -> LatentState:
    """``[n ...]`` what the planner plans from: the true state (oracle) or the posterior of the first observation."""
    if isinstance(model, OracleModel):
        return model.state_of(world, device=device)
    f = LatentFilter(model, world.num_envs, device=device)
    f.start(obs, np.ones(world.num_envs, dtype=bool))
    return f.state


def _execute(world: VectorWorld, seed: int, obs0: np.ndarray, plans: np.ndarray, truth: RewardSpec,
             discount: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run ``plans[n h *act]`` open loop from ``reset(seed)``: ``(true return, true cost, world return)`` ``[n]``."""
    obs = world.reset(seed=seed)
    if not np.array_equal(obs, obs0):
        raise RuntimeError(f"world {world.name!r}: reset(seed={seed}) gave other start states the second time; "
                           "the over-optimisation curve needs a reproducible reset")
    n, h = plans.shape[:2]
    ret, cost, wret = np.zeros(n), np.zeros(n), np.zeros(n)
    last_r, last_c = np.zeros(n), np.zeros(n)
    alive = np.ones(n, dtype=bool)
    for t in range(h):
        res = world.step(plans[:, t])
        out = truth.true_reward(world.schema, world.concepts())
        r, c = out.reward.numpy(), out.cost.numpy()
        last_r, last_c = np.where(alive, r, last_r), np.where(alive, c, last_c)  # ended episodes hold their last state
        ret += discount ** t * last_r
        cost += last_c
        wret += np.where(alive, res.reward, 0.0)
        ended = alive & (res.terminated | res.truncated)
        alive &= ~ended
        if ended.any() and t + 1 < h:
            world.reset(mask=ended)  # the world's contract; these envs are no longer read
    return ret, cost, wret


def overoptimisation_curve(world: VectorWorld, model: DynamicsModel, proxy_reward: RewardFn, truth: RewardSpec, *,
                           horizon: int, episodes: int, best_of: Sequence[int] = BEST_OF_N,
                           cem_samples: Sequence[int] = CEM_SAMPLES, cem_iterations: Sequence[int] = CEM_ITERATIONS,
                           discount: float = 1.0, cost_limit: float = 0.0, seed: int = 0, n_boot: int = 1000,
                           device: torch.device | str | None = None, label: str = "learned") -> OveroptimisationCurve:
    """Proxy vs true return at every pressure (see the module docstring), from ``episodes`` start states.

    Start states come from ``world.reset(seed=seed + r)`` for rounds ``r = 0, 1, ...`` of
    ``world.num_envs`` envs each. ``proxy_reward`` is what the planners maximise on ``model``'s imagined
    states; ``truth`` is scored on the real states. Reproducible: every planner is seeded with ``seed``.
    """
    if len(cem_samples) != len(cem_iterations):
        raise ValueError(f"cem_samples and cem_iterations pair up, got {len(cem_samples)} and {len(cem_iterations)} values")
    if episodes < 1 or horizon < 1:
        raise ValueError(f"need episodes >= 1 and horizon >= 1, got {episodes} and {horizon}")
    truth.check(world.schema)
    if device is None:  # where the model lives (an oracle may hold buffers only, or nothing: then the CPU)
        device = next(iter([*model.parameters(), *model.buffers()]), torch.zeros(0)).device
    device = torch.device(device)
    kw: dict[str, Any] = {"discount": discount, "cost_limit": cost_limit}
    if not world.discrete_actions:
        space = world.single_action_space
        kw.update(low=float(np.min(space.low)), high=float(np.max(space.high)))
    levels = [("best_of_n", int(n), 1) for n in best_of] + \
             [("cem", int(s), int(i)) for s, i in zip(cem_samples, cem_iterations)]
    n_env = world.num_envs
    rows: dict[tuple[str, int, int], dict[str, list[np.ndarray]]] = {lv: {k: [] for k in _ESTIMATES} for lv in levels}
    for r in range(math.ceil(episodes / n_env)):
        use = np.arange(min(n_env, episodes - r * n_env))                          # envs holding an episode
        obs0 = world.reset(seed=seed + r)
        states = _start_states(world, model, obs0, device)
        for lv in levels:
            planner = _planner(lv[0], model, proxy_reward, horizon, lv[1], lv[2], discrete=world.discrete_actions,
                               seed=seed + 7919 * r, **kw)
            plans = np.zeros((n_env, horizon, *world.single_action_space.shape),
                             dtype=np.int64 if world.discrete_actions else np.float32)
            proxy, pcost = np.zeros(len(use)), np.zeros(len(use))
            for j, i in enumerate(use):
                planner.reset()                                                   # no warm start: fresh pressure
                _, info = planner.plan(states.at(slice(i, i + 1)))
                plans[i] = planner.last_plan.detach().cpu().numpy()
                proxy[j], pcost[j] = info.predicted_return, info.predicted_cost
            true, tcost, wret = (v[use] for v in _execute(world, seed + r, obs0, plans, truth, discount))
            for k, v in zip(_ESTIMATES, (proxy, true, proxy - true, pcost, tcost, wret)):
                rows[lv][k].append(v)
    points = []
    for lv in levels:
        est = {k: _mean(np.concatenate(v), n_boot, seed) for k, v in rows[lv].items()}
        kl = best_of_n_kl(lv[1]) if lv[0] == "best_of_n" else None
        points.append(PressurePoint(lv[0], lv[1], lv[2], lv[1] * lv[2], kl, **est))
    return OveroptimisationCurve(label, int(horizon), int(episodes), "open_loop", tuple(points))


def _mean(x: np.ndarray, n_boot: int, seed: int) -> Estimate:
    """Mean over start states with a percentile bootstrap interval (start states are independent units)."""
    x = np.asarray(x, dtype=np.float64)
    return bootstrap(np.mean, x, groups=np.arange(x.size), n_boot=n_boot, seed=seed)


def save_curves(curves: Sequence[OveroptimisationCurve], folder: str | Path, *, extra: dict[str, Any] | None = None,
                name: str = "overoptimisation") -> tuple[Path, Path]:
    """``folder/{name}.json`` (every number) and ``folder/{name}.png`` (the plot), both written atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    doc = {**(extra or {}), "curves": [c.to_dict() for c in curves]}
    json_path = atomic_write_json(folder / f"{name}.json", doc)
    png = folder / f"{name}.png"
    atomic_write_bytes(png, plot_png(curves))
    return json_path, png


def plot_png(curves: Sequence[OveroptimisationCurve]) -> bytes:
    """PNG bytes: proxy (solid) and true (dashed) return vs pressure, best-of-n (vs KL) and CEM (vs sequences),
    95% bands. Drawn on a bare :class:`matplotlib.figure.Figure` (no pyplot global state, any backend)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2), layout="constrained")
    axes = fig.subplots(1, 2)
    colors = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")
    for ax, family, xlabel in ((axes[0], "best_of_n", "KL(best-of-n || uniform prior) [nats]"),
                               (axes[1], "cem", "sequences imagined per decision (samples x iterations)")):
        for color, curve in zip(colors, curves):
            pts = curve.family(family)
            if not pts:
                continue
            x = np.array([p.kl if family == "best_of_n" else p.sequences for p in pts], dtype=float)
            for key, style, what in (("proxy_return", "-", "proxy (imagined)"), ("true_return", "--", "true (real world)")):
                e = [getattr(p, key) for p in pts]
                ax.plot(x, [v.estimate for v in e], style, marker="o", color=color, label=f"{curve.label}: {what}")
                ax.fill_between(x, [v.lower for v in e], [v.upper for v in e], color=color, alpha=0.15, linewidth=0)
            if family == "best_of_n":
                for p, xi in zip(pts, x):
                    ax.annotate(f"n={p.samples}", (xi, 0.02), xycoords=("data", "axes fraction"), fontsize=7,
                                alpha=0.6, ha="center")
        if family == "cem":
            ax.set_xscale("log", base=2)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("return over the planning horizon")
        ax.set_title("best-of-n random shooting" if family == "best_of_n" else "CEM")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="best")
    h = curves[0].horizon if curves else 0
    fig.suptitle(f"Over-optimisation: proxy vs true return (open loop, horizon {h}, 95% CIs over start states)",
                 fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()
