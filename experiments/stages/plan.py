"""The planning stage: planners act in the REAL world through the learned model and a probe-compiled reward.

In one stage, for ``plan.episodes`` episodes each (seed ``cfg.seed``, so every policy sees the same
stream of layouts):

* every configured planner that fits the world's action space (``discrete_only`` of its class: a
  discrete world gets ``discrete_cem``/``exhaustive``/``shooting``, a continuous one ``cem``/``icem``/
  ``mppi``/``shooting``) x {learned model + latent reward (the configured :class:`rewards.RewardSpec`
  compiled against the probes' ontology), oracle model + true reward (the world's simulator and true
  concepts: the planner alone)};
* one learned-model row per ontology in the probes folder (``ontology/``, plus ``ontologies/<method>/``
  where the probe stage wrote per-method ones), so probe methods are compared by behaviour; the
  ``imagined-fit`` one (the chosen probes refitted on posterior + imagined latents, ``probes.imagined_fit``)
  runs even with ``plan.per_method=false``: posterior-fitted vs imagined-fitted probes, by behaviour;
* baselines: a random policy and the world's oracle policy;
* with ``plan.shield=true``, every learned-model row again with its planner wrapped in a
  :class:`planning.Shield` (planner ``"<name>+shield"``, same model/reward/probe_method), side by side.

The shield, as run here: after the planner proposes a first action, every discrete action (for
continuous ones: the proposal, the centre and random candidates) is imagined by the learned model,
followed by ``plan.shield_continuations`` tails (the planner's own plan tail and random ones) over
``plan.shield_horizon`` steps, each ``plan.shield_samples`` times with ``sample=True`` (the model's
stochastic latents drawn from its prior; 1 sample: the mode only). A rollout *violates* when its summed
constraint cost, read off the imagined latents by the same probes as the reward, exceeds
``plan.cost_limit``; an action's risk is the violating fraction of its samples under its safest tail,
and the proposal is vetoed when that exceeds ``plan.shield_threshold`` (the safest action, then the best
imagined return, is executed instead). What the cost is depends on how the constraint is written
(:mod:`rewards.compile`): ``never in_lava`` reads the probe's *hard* prediction (argmax), so the cost
of a step is an indicator and a rollout violates when the probe says lava at any imagined step (with
``cost_limit=0``); the risk is then the fraction of sampled futures in which the argmax flips to lava
-- a step the probe reads at p(lava) = 0.4 is only caught if sampling pushes it over 0.5.
``never p(in_lava)`` makes the cost the expected number of lava steps, which is > 0 on every rollout:
the config then requires ``plan.cost_limit > 0`` (a veto means more than that many expected lava steps
in more than ``shield_threshold`` of the samples). The planner's own feasibility uses the same
``cost_limit``. The shield vetoes what the model *predicts* to violate: it cannot catch a lava cell the
model or the probe does not see. Metrics rows of shielded runs add ``veto_rate`` (fraction of decisions
vetoed; decisions of one episode are correlated, so its interval is a bootstrap over episodes, and exact where
no decision -- or every one -- was vetoed, where that bootstrap would collapse to [0, 0]: Clopper-Pearson with
the episodes as trials, :func:`rewards.evaluation.exact_if_unanimous`); ``decisions.csv`` marks each veto
(``vetoed``).
Why ``plan.shield_continuations`` defaults to 1: the risk is a minimum over tails of per-tail estimates
from ``shield_samples`` draws each, and a minimum of noisy estimates is biased low -- a first step that
violates in 30% of draws gets risk 0 under some tail with probability 1 - (1 - 0.7^4)^32 ~ 1 for 32
tails x 4 samples (on the quickstart: 0 vetoes in 4800 decisions, 11/20 lava episodes unchanged).

Writes ``episodes.csv`` (one row per episode), ``decisions.csv`` (one row per planning decision:
predicted return, realised return -- the reward spec on the true concepts of the next ``plan.horizon`` real
states, discounted like the predicted one, cut at the episode's end (:class:`planning.Decisions`) --, elite
spread, latency) and ``metrics.json``: ``rows`` (per planner x model x reward x probe method:
success_rate, violation_rate, mean_true_return, mean_steps, ms_per_step, each
``{estimate, ci_low, ci_high}``, 95%), ``shift`` (the probes' accuracy on the states each policy
visited vs on the dataset's held-out episodes), ``quality_bar`` and ``skipped`` (what did not run, why).
An empty ``plan.reward`` skips the stage with that reason (``episodes.csv``/``decisions.csv`` then hold
only their headers). With ``plan.overoptimisation=true`` it also writes ``overoptimisation.json`` and
``overoptimisation.png`` (:mod:`planning.overoptimisation`: proxy vs true return as best-of-n and CEM
pressure grow, open loop, for the learned model with the latent reward and, as a control, the oracle
model with the true reward).

Standalone (:func:`experiments.stages.commands.cmd_plan`): ``ontolab plan [CONFIG] run=RUN_DIR [key=value ...]`` plans with the model
and probes of a finished run (its ``config.yaml`` is the base config; outputs go to ``RUN_DIR/plan`` unless
``out=`` says otherwise), or ``ontolab plan [CONFIG] checkpoint=PATH ontology=PATH out=PATH`` with a
dynamics checkpoint (a ``.ckpt`` file or a folder holding ``checkpoints/last.ckpt``) and a probes folder
(holding ``ontology/``) or an ontology folder (holding ``ontology.json``).

Reward evaluation (:mod:`rewards.evaluation`), with the same ontologies: on the held-out (``test``) posterior
latents the probe stage cached (``probes/latents``), the latent reward vs the true one per step (Pearson,
Spearman, MAE/RMSE/bias of the total and of each top-level term) and the per-step confusion of every
constraint, with bootstrap CIs over episodes: ``metrics.json`` ``reward_eval`` and ``reward_eval.csv``.
"""

from __future__ import annotations

import csv
import inspect
import io
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from experiments.config import to_dict
from experiments.provenance import atomic_write_text, write_json
from experiments.schema import RunConfig
from experiments.stages.inputs import checkpoint_of, no_actions
from experiments.stages.verdict import SHIELD_SUFFIX, quality_bar
from probes.imagined import LABEL as IMAGINED_LABEL
from probes.imagined import SUFFIX as IMAGINED_SUFFIX

EPISODE_COLUMNS = ("planner", "model", "reward", "probe_method", "episode", "env", "true_return", "success",
                   "violations", "steps", "truncated", "ms_per_step")
DECISION_COLUMNS = ("planner", "model", "reward", "probe_method", "episode", "step", "predicted_return",
                    "realised_return", "predicted_cost", "elite_spread", "latency_ms", "vetoed")


def skip_reason(cfg: RunConfig) -> str | None:
    """Why the stage does nothing (``None`` when it runs)."""
    if not cfg.plan.reward.strip():
        return "plan.reward is empty: no reward to plan for (set e.g. plan.reward='-0.1 * steps_to_goal')"
    return None


def _est(e: Any) -> dict[str, float] | None:
    return None if e is None else e.as_json()


def _planner_classes() -> dict[str, type]:
    from planning import CEM, ICEM, MPPI, DiscreteCEM, Exhaustive, RandomShooting

    return {"cem": CEM, "discrete_cem": DiscreteCEM, "exhaustive": Exhaustive, "icem": ICEM, "mppi": MPPI,
            "shooting": RandomShooting}


def compatible_planners(names: tuple[str, ...], discrete: bool) -> tuple[list[str], dict[str, str]]:
    """``(usable names, {name: why skipped})`` for a world with discrete or continuous actions."""
    classes, ok, skipped = _planner_classes(), [], {}
    for n in names:
        need = classes[n].discrete_only
        if need is None or need == discrete:
            ok.append(n)
        else:
            skipped[f"planner:{n}"] = f"needs {'discrete' if need else 'continuous'} actions; this world's are " \
                                      f"{'discrete' if discrete else 'continuous'}"
    return ok, skipped


def _planner_kwargs(name: str, cfg: RunConfig, world) -> dict[str, Any]:
    """The configured budget, passed only where the planner's constructor takes it."""
    p = cfg.plan
    kw = {"num_samples": p.samples, "num_elites": min(p.elites, p.samples), "iterations": p.iterations,
          "discount": p.discount, "cost_limit": p.cost_limit, "seed": cfg.seed}
    space = world.single_action_space
    if isinstance(space, gym.spaces.Box):
        kw.update(low=float(np.min(space.low)), high=float(np.max(space.high)))
    cls = _planner_classes()[name]
    accepted = {a for c in cls.__mro__ if "__init__" in vars(c) for a in inspect.signature(c.__init__).parameters}
    return {k: v for k, v in kw.items() if k in accepted}


def _ontologies(probes_dir: Path, device: torch.device) -> list[tuple[str | None, Any]]:
    """``[(label, Ontology)]``: the chosen ontology, then any per-method ones (``ontologies/<method>/``).
    ``probes_dir`` may also be an ontology folder itself (holding ``ontology.json``): then only that one."""
    from probes import Ontology

    if (probes_dir / "ontology.json").is_file():
        return [(None, Ontology.load(probes_dir, device=device))]
    found = [(None, Ontology.load(probes_dir / "ontology", device=device))]
    extra = probes_dir / "ontologies"
    for d in sorted(extra.iterdir()) if extra.is_dir() else ():
        if (d / "ontology.json").is_file():
            found.append((d.name, Ontology.load(d, device=device)))
    return found


def _latent_problem(spec, ontology, imaginable: set[str]) -> str | None:
    """Why ``spec`` cannot be read off imagined latents through ``ontology`` (``None`` when it can)."""
    names = sorted({u.name for u in spec.concepts()})
    missing = [n for n in names if n not in ontology]
    if missing:
        return f"the ontology has no probe for {missing} (see probes/harness.json 'skipped')"
    blind = [f"{n} (site {ontology[n].site})" for n in names if ontology[n].site not in imaginable]
    if blind:
        return f"probes of {blind} read sites that model.imagine() does not produce; probe other sites"
    return None


def _probe_method(spec, ontology) -> str | None:
    methods = sorted({ontology[u.name].method for u in spec.concepts() if u.name in ontology})
    return "+".join(methods) or None


REWARD_EVAL_COLUMNS = ("ontology", "probe_method", "kind", "item", "metric", "estimate", "ci_low", "ci_high")


def reward_evaluations(cfg: RunConfig, spec, model, ontologies, probes_dir: Path) -> tuple[dict[str, Any], list, dict[str, str]]:
    """Latent vs true reward on the probe stage's held-out posterior latents (``probes_dir/latents``, split
    ``test``), once per ontology planned with (:func:`rewards.evaluation.evaluate_on_store`).

    Returns ``(header, [(ontology label, probe_method, RewardEvaluation)], {skip key: why})``; ``header`` says
    where the latents came from and whether their model fingerprint is the planning checkpoint's (it also
    differs when a newer ontolab adds a hyperparameter: the numbers then describe the probes on the probe
    stage's model)."""
    from probes import LatentStore
    from probes.extract import MANIFEST, model_fingerprint
    from rewards.evaluation import evaluate_on_store
    from worlds.errors import OntolabError

    root = probes_dir / "latents"
    header: dict[str, Any] = {"split": "test", "latents": str(root), "same_model": None, "evaluations": []}
    if not (root / MANIFEST).is_file():
        return header, [], {"reward_eval": f"no cached latents at {root} (an ontology folder has none): plan with a "
                                           f"probes folder (run=RUN_DIR, or ontology=RUN_DIR/probes)"}
    store = LatentStore.open(root)
    header["same_model"] = store.key.get("model") == model_fingerprint(model)
    evals, skipped = [], {}
    for label, ontology in ontologies:
        name = label or "chosen"
        try:
            ev = evaluate_on_store(spec, ontology, store, split="test", n_boot=cfg.plan.n_boot, seed=cfg.seed,
                                   device=cfg.plan.device)
        except OntolabError as e:  # e.g. a concept without a probe, a site the store lacks
            skipped[f"reward_eval/{name}"] = str(e)
            continue
        evals.append((name, label or _probe_method(spec, ontology), ev))
    return header, evals, skipped


def run_plan(cfg: RunConfig, dynamics_dir: Path, probes_dir: Path, out: Path, *, progress: bool = True) -> dict[str, Any]:
    """Run the closed loops of ``cfg.plan`` into ``out``; returns the ``metrics.json`` object.

    ``dynamics_dir`` is the train stage's folder (or a checkpoint file), ``probes_dir`` the probe stage's
    folder (or an ontology folder)."""
    out.mkdir(parents=True, exist_ok=True)
    reason = skip_reason(cfg)
    if reason:
        result = {"skipped_stage": reason, "rows": [], "shift": [], "quality_bar": [], "skipped": {}}
        write_json(result, out / "metrics.json")
        _write_csv(out / "episodes.csv", EPISODE_COLUMNS, [])
        _write_csv(out / "decisions.csv", DECISION_COLUMNS, [])
        return result

    from dynamics.training import load_model
    from planning import Shield, concept_reward, make_planner, oracle_model
    from planning.closed_loop import (LatentFilter, ModelPlannerPolicy, OraclePolicy, RandomPolicy,
                                      TrueStatePlannerPolicy, run_closed_loop, true_step_reward)
    from rewards import RewardSpec
    from worlds.registry import make_world

    p, device = cfg.plan, torch.device(cfg.plan.device)
    world = make_world(cfg.world.name, num_envs=min(p.num_envs, p.episodes), seed=cfg.seed, **cfg.world.params)
    spec = RewardSpec(p.reward, tuple(p.constraints), name="plan")
    spec.check(world.schema)
    model = load_model(checkpoint_of(dynamics_dir), expected_model=cfg.dynamics.model).to(device)
    ontologies = _ontologies(probes_dir, device)
    if not p.per_method:  # the chosen ontology and its imagined-latent refit (the per-method ones stay in the probes folder)
        ontologies = [o for i, o in enumerate(ontologies) if i == 0 or o[0] == IMAGINED_LABEL]
    oracle = oracle_model(world).to(device)
    with torch.inference_mode():
        imaginable = set(model.imagine(model.initial(1), no_actions(model, device)).sites)
    names, skipped = compatible_planners(tuple(p.planners), world.discrete_actions)
    n = world.num_envs
    main_ontology = ontologies[0][1]

    def observer_kw(ontology) -> dict[str, Any]:
        """Filter with the learned model and read every probed concept (for the shift measure)."""
        return {"reader": ontology.resolver, "read_names": ontology.concepts}

    runs: list[tuple[dict[str, Any], Any, Any]] = []  # (labels, log, ontology read or None)

    def run(labels: dict[str, Any], policy, ontology=None) -> None:
        t0 = time.perf_counter()
        log = run_closed_loop(world, policy, p.episodes, seed=cfg.seed, progress=progress,
                              true_reward=true_step_reward(spec, world.schema))
        labels = {**labels, "seconds": round(time.perf_counter() - t0, 2)}
        runs.append((labels, log, ontology))

    for name in names:
        for label, ontology in ontologies:
            why = _latent_problem(spec, ontology, imaginable)
            tag = f"{name}/learned/latent" + (f"/{label}" if label else "")
            if why:
                skipped[tag] = why
                continue
            reward_fn = concept_reward(spec.compile(world.schema), ontology.resolver)
            labels = {"model": "learned", "reward": "latent", "probe_method": label or _probe_method(spec, ontology)}
            for shielded in (False, True) if p.shield else (False,):
                planner = make_planner(name, model, reward_fn, p.horizon, **_planner_kwargs(name, cfg, world))
                if shielded:
                    planner = Shield(planner, threshold=p.shield_threshold, horizon=p.shield_horizon,
                                     continuations=p.shield_continuations, model_samples=p.shield_samples, seed=cfg.seed)
                policy = ModelPlannerPolicy(model, planner, n, context=p.context, device=device, **observer_kw(ontology))
                run({"planner": name + SHIELD_SUFFIX * shielded, **labels, "shielded": shielded}, policy, ontology)
        planner = make_planner(name, oracle, oracle.true_reward(spec), p.horizon, **_planner_kwargs(name, cfg, world))
        run({"planner": name, "model": "oracle", "reward": "true", "probe_method": None},
            TrueStatePlannerPolicy(oracle, planner, n, device=device))
    for base in ("random", "oracle"):
        observer = LatentFilter(model, n, context=p.context, device=device)
        kw = {"observer": observer, **observer_kw(main_ontology)}
        policy = RandomPolicy(cfg.seed, **kw) if base == "random" else OraclePolicy(**kw)
        run({"planner": base, "model": None, "reward": None, "probe_method": None}, policy, main_ontology)

    result = _metrics(cfg, world, spec, runs, probes_dir, skipped)
    reward_eval, evals, why = reward_evaluations(cfg, spec, model, ontologies, probes_dir)
    result["skipped"].update(why)
    result["reward_eval"] = {**reward_eval, "evaluations": [{"ontology": o, "probe_method": m, **ev.to_dict()}
                                                            for o, m, ev in evals]}
    if p.overoptimisation:
        result["overoptimisation"] = _overoptimisation(cfg, model, oracle, spec, main_ontology, imaginable, out)
    write_json(result, out / "metrics.json")
    _write_csv(out / "episodes.csv", EPISODE_COLUMNS, _episode_rows(runs))
    _write_csv(out / "decisions.csv", DECISION_COLUMNS, _decision_rows(runs))
    _write_csv(out / "reward_eval.csv", REWARD_EVAL_COLUMNS, [[o, m, *r.values()] for o, m, ev in evals for r in ev.rows()])
    return result


def _overoptimisation(cfg: RunConfig, model, oracle, spec, ontology, imaginable: set[str], out: Path) -> dict[str, Any]:
    """Proxy vs true return vs pressure for the learned model (latent reward) and the oracle (true reward,
    a control: no gap); writes ``overoptimisation.json`` and ``.png``; returns the JSON object."""
    from planning import concept_reward
    from planning.overoptimisation import overoptimisation_curve, save_curves
    from worlds.registry import make_world

    p = cfg.plan
    world = make_world(cfg.world.name, num_envs=min(p.num_envs, p.overopt_episodes), seed=cfg.seed, **cfg.world.params)
    kw = dict(horizon=p.horizon, episodes=p.overopt_episodes, best_of=p.overopt_best_of,
              cem_samples=p.overopt_cem_samples, cem_iterations=p.overopt_cem_iterations, discount=p.discount,
              cost_limit=p.cost_limit, seed=cfg.seed, n_boot=p.n_boot, device=p.device)
    curves, skipped = [], {}
    why = _latent_problem(spec, ontology, imaginable)
    if why:
        skipped["learned"] = why
    else:
        proxy = concept_reward(spec.compile(world.schema), ontology.resolver)
        curves.append(overoptimisation_curve(world, model, proxy, spec, label="learned model, latent reward", **kw))
    curves.append(overoptimisation_curve(world, oracle, oracle.true_reward(spec), spec,
                                         label="oracle model, true reward", **kw))
    extra = {"reward": spec.to_dict(), "execution": "open_loop", "skipped": skipped,
             "notes": "proxy: imagined return of the returned plan; true: the same plan executed open loop in the "
                      "real world from the same start state, the reward spec on the true concepts (an ended episode "
                      "holds its last state); best-of-n kl = log n - (n-1)/n nats; cem pressure = samples x iterations"}
    json_path, png = save_curves(curves, out, extra=extra)
    return {"file": json_path.name, "plot": png.name, **extra, "curves": [c.to_dict() for c in curves]}


def _metrics(cfg: RunConfig, world, spec, runs, probes_dir: Path, skipped: dict[str, str]) -> dict[str, Any]:
    from planning.evaluation import mean_estimate, summarize, visited_accuracy
    from probes.results import read_results_csv
    from rewards.evaluation import exact_if_unanimous

    p = cfg.plan
    results = probes_dir / "results.csv"
    all_rows = read_results_csv(results) if results.is_file() else []
    dataset = {(r.method, r.site, r.concept, r.metric): r for r in all_rows if r.split == "test"}
    # the history baseline where a planner acts: on the non-terminal test steps when scored there (a terminal
    # event such as stepping into lava is in the frame and would make a concept look knowable)
    history = {(r.concept, r.metric): (r.estimate, r.split) for split in ("test", "test_nonterminal")
               for r in all_rows if r.method == "history" and r.split == split}
    rows, shift = [], []
    for labels, log, ontology in runs:
        s = summarize(log, n_boot=p.n_boot, seed=cfg.seed)
        key = {k: labels[k] for k in ("planner", "model", "reward", "probe_method")}
        rows.append({**key, "episodes": s.episodes, **{k: _est(v) for k, v in s.metrics().items()},
                     "predicted_return": _est(s.predicted_return), "seconds": labels["seconds"]})
        if labels.get("shielded"):  # fraction of decisions vetoed: episode-cluster bootstrap, exact at 0/m and m/m
            d = log.decisions
            veto = mean_estimate(d.vetoed.astype(np.float64), groups=d.episode, n_boot=p.n_boot, seed=cfg.seed)
            rows[-1]["veto_rate"] = _est(exact_if_unanimous(veto, d.vetoed, d.episode))
        if ontology is None or not log.visited.readings:
            continue
        refit = labels["probe_method"] == IMAGINED_LABEL  # its dataset rows are "<method>+imagined"
        for concept, metrics in visited_accuracy(log, world.schema, n_boot=p.n_boot, seed=cfg.seed).items():
            e = ontology[concept]
            for metric, est in metrics.items():
                ref = dataset.get((e.method + IMAGINED_SUFFIX * refit, e.site, concept, metric))
                hist, hist_split = history.get((concept, metric), (None, None))
                shift.append({**key, "concept": concept, "method": e.method, "site": e.site, "metric": metric,
                              "in_reward": concept in {u.name for u in spec.concepts()},
                              "visited": _est(est), "states": int(log.visited.episode.size),
                              "dataset_test": None if ref is None else
                              {"estimate": ref.estimate, "ci_low": ref.ci_low, "ci_high": ref.ci_high},
                              "history_test": hist, "history_split": hist_split})
    return {"world": cfg.world.name, "reward": spec.to_dict(), "episodes": p.episodes, "settings": to_dict(p),
            "rows": rows, "shift": shift, "quality_bar": quality_bar(rows, shift), "skipped": skipped}


def _episode_rows(runs) -> list[list[Any]]:
    rows = []
    for labels, log, _ in runs:
        key = [labels[k] for k in ("planner", "model", "reward", "probe_method")]
        for k in range(log.num_episodes):
            rows.append(key + [k, int(log.env[k]), float(log.true_return[k]), bool(log.success[k]),
                               int(log.violations[k]), int(log.steps[k]), bool(log.truncated[k]),
                               round(float(log.ms_per_step[k]), 4)])
    return rows


def _decision_rows(runs) -> list[list[Any]]:
    rows = []
    for labels, log, _ in runs:
        key = [labels[k] for k in ("planner", "model", "reward", "probe_method")]
        d = log.decisions
        for j in range(len(d.episode)):
            rows.append(key + [int(d.episode[j]), int(d.step[j]), float(d.predicted_return[j]),
                               float(d.realised_return[j]), float(d.predicted_cost[j]), float(d.elite_spread[j]),
                               round(float(d.latency_ms[j]), 4), bool(d.vetoed[j])])
    return rows


def _write_csv(path: Path, header: tuple[str, ...], rows: list[list[Any]]) -> None:
    """A CSV written atomically; ``None`` becomes an empty field."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows([["" if v is None else v for v in r] for r in rows])
    atomic_write_text(path, buf.getvalue())
