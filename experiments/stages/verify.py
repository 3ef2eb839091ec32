"""The verify stage: model-check the learned model over the identified ontology with Storm, and measure
how far the answer transfers to the real world.

For every policy of ``verify.policies`` -- ``uniform`` (uniformly random actions) and ``planner`` (the
first of ``plan.planners`` that fits the world's actions, optimising ``plan.reward`` read by the
probes) -- the learned model is abstracted (:func:`planning.verify.build_abstraction`: imagined
rollouts from posteriors of the dataset's first steps, abstract state = the probes' readings of
``verify.concepts``, scalars binned) and every property is checked:

* ``P=? [...]`` on the DTMC of that policy: Storm's point estimate, and the Clopper-Pearson interval
  model's robust ``[lower_bound, upper_bound]`` at joint ``verify.confidence`` (for the upper bound of
  a property without negation, unexplored states count as satisfying its labels; see
  :mod:`planning.verify.abstraction`);
* ``Pmax=? / Pmin=? [...]`` on the MDP over all counted actions (from the uniform rollouts).

The same event is measured in the REAL world (``cfg.world``) under the same policy -- ``F<=H "l"``:
the label's concept (truly, ``world.concepts()``) holds within ``H`` steps of the reset; ``F "l"``:
within the episode (the world's time limit applies there, not in the model) -- with an exact interval.
``agrees`` says whether the checked probability lies inside the real rate's interval, ``bound_holds``
whether the real rate is consistent with the robust bounds (the guarantee transferred); the ``note``
says plainly when they disagree, and which way. Also the counterfactual boundary check (:mod:`planning.verify.boundary`)
of the planner's plans (or of uniformly random sequences when no planner runs) against a no-op.

Writes ``metrics.json``: ``rows`` (one per property x policy: ``property, policy, probability,
upper_bound, lower_bound, empirical, empirical_ci, states, agrees, bound_holds, note`` ...), ``abstractions``,
``boundary``, ``settings`` and ``skipped`` (what did not run and why).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from experiments.config import ConfigError, to_dict
from experiments.provenance import write_json
from experiments.schema import RunConfig
from experiments.stages.inputs import checkpoint_of, no_actions, ontology_dir

REACH = re.compile(r'\s*P(max|min)?\s*=\s*\?\s*\[\s*F\s*(?:<=\s*(\d+))?\s*"([A-Za-z_][A-Za-z0-9_]*)"\s*\]\s*')
"""Properties whose real-world event we measure: reachability of one label, bounded or not."""
MDP_POLICY = "mdp (all actions)"


def skip_reason(cfg: RunConfig) -> str | None:
    """Why the stage does nothing (``None`` when it runs)."""
    if not cfg.verify.enabled:
        return "verify.enabled is false"
    if not cfg.verify.for_world(cfg.world.name).properties:
        return f"no verify.properties for world {cfg.world.name!r} (and no default recipe): set verify.properties/labels"
    return None


def load_start_states(model, data_path: Path, split: str, limit: int, device: torch.device):
    """``LatentState[k ...]``: the posterior after the first observation of up to ``limit`` episodes of ``split``
    (episodes in id order), i.e. the learned model's reading of real reset states."""
    from worlds.dataset import TrajectoryDataset

    ds = TrajectoryDataset.open(data_path, verify=False)
    if split not in ds.splits:
        raise ConfigError(f"verify.split: the dataset has no split {split!r}; its splits are {list(ds.splits)}")
    ids = ds.episode_ids(split)[:limit]
    steps = [ds.window(int(i), 0, 1, ["obs", "actions", "is_first"]) for i in ids]
    obs, act, first = (torch.as_tensor(np.stack([s[k] for s in steps]), device=device) for k in ("obs", "actions", "is_first"))
    with torch.inference_mode():
        return model.observe(obs, act, first).at((slice(None), 0))


def _planner(cfg: RunConfig, world, model, ontology, skipped: dict[str, str]):
    """The configured planner on the learned model and probe reward, or ``None`` (reason in ``skipped``)."""
    from experiments.stages.plan import _planner_kwargs, compatible_planners
    from planning import concept_reward, make_planner
    from rewards import RewardSpec

    if not cfg.plan.reward.strip():
        skipped["planner"] = "plan.reward is empty: no reward for the planner"
        return None, None
    names, why = compatible_planners(tuple(cfg.plan.planners), world.discrete_actions)
    if not names:
        skipped["planner"] = f"no configured planner fits this world's actions: {why}"
        return None, None
    spec = RewardSpec(cfg.plan.reward, tuple(cfg.plan.constraints), name="plan")
    missing = sorted({u.name for u in spec.concepts()} - set(ontology.concepts))
    if missing:
        skipped["planner"] = f"the ontology has no probe for the reward's concept(s) {missing}"
        return None, None
    reward_fn = concept_reward(spec.compile(world.schema), ontology.resolver)

    def build():
        return make_planner(names[0], model, reward_fn, cfg.plan.horizon, **_planner_kwargs(names[0], cfg, world))
    return names[0], build


def _events(log, concept_of: dict[str, str]) -> dict[str, np.ndarray]:
    """``{label: int64[episodes]}`` the first step at which the label's concept truly held (int64 max: never)."""
    v = log.visited
    out = {}
    for label, concept in concept_of.items():
        hit = np.asarray(v.truth[concept]) == 1
        first = np.full(log.num_episodes, np.iinfo(np.int64).max)
        np.minimum.at(first, v.episode[hit], v.step[hit])
        out[label] = first
    return out


def _real_rates(cfg: RunConfig, policy, episodes: int, envs: int, concept_of: dict[str, str], progress: bool):
    """``policy(world)`` for ``episodes`` real episodes: ``({label: first step int64[episodes]}, episodes)``."""
    from planning.closed_loop import run_closed_loop
    from worlds.registry import make_world

    world = make_world(cfg.world.name, num_envs=envs, seed=cfg.seed, **cfg.world.params)
    log = run_closed_loop(world, policy(world), episodes, seed=cfg.seed, progress=progress)
    return _events(log, concept_of), log.num_episodes


def _empirical(first_step: dict[str, np.ndarray], text: str, confidence: float):
    """The real-world rate of the event of ``text`` (``None`` unless it is ``F``/``F<=H`` of one label)."""
    from planning.verify import empirical_rate

    m = REACH.fullmatch(text)
    if m is None or m.group(3) not in first_step:
        return None
    horizon = int(m.group(2)) if m.group(2) is not None else None
    first = first_step[m.group(3)]
    hits = int(np.sum(first <= (horizon if horizon is not None else np.iinfo(np.int64).max - 1)))
    return empirical_rate(hits, len(first), confidence)


def _bounds(abstraction, text: str, mdp: bool, confidence: float) -> tuple[float, float, str]:
    """Robust ``(lower, upper)`` over every model consistent with the counts, and how unexplored states were treated."""
    from planning.verify import UNEXPLORED, robust_check
    from planning.verify.validate import property_labels

    monotone = "!" not in text
    targets = sorted(property_labels(text) - {"init"}) if monotone else []
    # A transition never counted is not impossible: with one target label, the upper bound also sends
    # each state's unseen mass (up to its Clopper-Pearson bound for 0 hits) to the target.
    unseen = targets[0] if len(targets) == 1 else None
    hi = robust_check(abstraction.interval_model(mdp=mdp, confidence=confidence, unexplored_as=targets,
                                                 unseen=unseen), text, "max")
    # ... and, for a property without negation, the lower bound sends it to a sink that carries none of
    # the property's labels (the reserved label UNEXPLORED): a row whose every sample went to the target
    # must not make the lower bound exactly 1 (nor an action never tried drop out of a Pmin).
    sink = UNEXPLORED if monotone and UNEXPLORED not in targets else None
    lo = robust_check(abstraction.interval_model(mdp=mdp, confidence=confidence, unseen=sink), text, "min")
    how = ("unexplored states count as target in the upper bound" if monotone else
           "unexplored states count as non-target in both bounds (the property has a negation)")
    if unseen is not None:
        how += "; so do transitions never observed (their Clopper-Pearson mass)"
    if sink is not None:
        how += "; the lower bound sends that mass to a non-target sink"
    return lo.probability, hi.probability, how


def _row(text: str, policy: str, abstraction, probability: float, lo: float, hi: float, emp, how: str,
         extra_note: str = "") -> dict[str, Any]:
    """One metrics row. ``agrees``: the checked probability lies inside the real rate's interval;
    ``bound_holds``: the real rate's interval reaches no higher than the robust upper bound (no lower than
    the robust lower bound) -- the guarantee transferred."""
    agrees = bound_holds = None
    notes = [extra_note] if extra_note else []
    if emp is not None:
        agrees = bool(emp.lower - 1e-12 <= probability <= emp.upper + 1e-12)
        bound_holds = bool(emp.lower <= hi + 1e-12 and lo - 1e-12 <= emp.upper)
        real = f"the real rate {emp.rate:.3f} (CI {emp.lower:.3f}-{emp.upper:.3f}, {emp.episodes} episodes)"
        if agrees:
            notes.append(f"agrees: the checked {probability:.3f} lies inside {real}")
        else:
            side = "UNDER" if probability < emp.lower else "OVER"
            notes.append(f"DISAGREES: the checked {probability:.3f} {side}estimates {real} by "
                         f"{abs(probability - emp.rate):.3f}: the ontology + dynamics are not trusted here")
        if emp.lower > hi + 1e-12:
            notes.append(f"the real rate is ABOVE the robust upper bound {hi:.3f}: the guarantee does NOT transfer")
        elif emp.upper < lo - 1e-12:
            notes.append(f"the real rate is BELOW the robust lower bound {lo:.3f}")
        else:
            notes.append(f"it lies within the robust bounds [{lo:.3f}, {hi:.3f}]")
        m = REACH.fullmatch(text)
        if m is not None and m.group(2) is None:
            notes.append("F has no time limit in the model; real episodes end at the world's time limit")
    elif not extra_note:
        notes.append("no real-world frequency for this property (measured only for F / F<=H of one label)")
    # terminal (absorbing) and unexplored states are never left by construction: not "sparse"
    stop = np.zeros(abstraction.num_states, dtype=bool)
    for name in abstraction.absorbing:
        stop |= np.asarray(abstraction.counts.labels[name], dtype=bool)
    sparse = int(np.sum((abstraction.counts.visits().sum(1) < 10) & ~stop))
    if sparse and hi - lo > 0.5:
        notes.append(f"bounds are loose: {sparse} state(s) were left fewer than 10 times (more rollouts tighten them)")
    unexplored = int(abstraction.unexplored.sum())
    if unexplored:
        notes.append(f"{unexplored} unexplored state(s); {how}")
    return {"property": text, "policy": policy, "probability": probability, "upper_bound": hi, "lower_bound": lo,
            "empirical": None if emp is None else emp.rate,
            "empirical_ci": None if emp is None else [emp.lower, emp.upper],
            "episodes": None if emp is None else emp.episodes, "states": abstraction.num_states,
            "transitions": abstraction.transitions, "agrees": agrees, "bound_holds": bound_holds,
            "note": "; ".join(notes)}


def run_verify(cfg: RunConfig, data_path: Path, dynamics_path: Path, probes_path: Path, out: Path, *,
               progress: bool = True) -> dict[str, Any]:
    """Abstract, check and measure (see the module docstring) into ``out``; returns the ``metrics.json`` object.

    ``dynamics_path``: the train stage's folder (``checkpoints/last.ckpt``) or a checkpoint file;
    ``probes_path``: the probe stage's folder (``ontology/`` in it) or an ontology folder; ``data_path``:
    the dataset the start states come from.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    reason = skip_reason(cfg)
    if reason:
        result = {"skipped_stage": reason, "rows": [], "abstractions": [], "boundary": None, "skipped": {}}
        write_json(result, out / "metrics.json")
        return result

    from dynamics.training import load_model
    from planning.closed_loop import ModelPlannerPolicy, RandomPolicy
    from planning.verify import PlannerPolicy, UniformPolicy, VerifyError, build_abstraction, check
    from probes import Ontology
    from worlds.registry import make_world

    v = cfg.verify.for_world(cfg.world.name)
    spec = v.spec()
    device = torch.device(cfg.plan.device)

    model = load_model(checkpoint_of(Path(dynamics_path)), expected_model=cfg.dynamics.model).to(device)
    ontology = Ontology.load(ontology_dir(Path(probes_path)), device=device)
    world = make_world(cfg.world.name, num_envs=1, seed=cfg.seed, **cfg.world.params)
    skipped: dict[str, str] = {}
    with torch.inference_mode():
        imaginable = set(model.imagine(model.initial(1), no_actions(model, device)).sites)
    try:
        spec.check(ontology)
        blind = [c for c in spec.concepts if ontology[c].site not in imaginable]
        if blind:
            raise VerifyError(f"the probes of {blind} read sites that model.imagine() does not produce; probe other sites")
    except VerifyError as e:
        result = {"skipped_stage": f"the abstraction cannot be read off imagined latents: {e}", "rows": [],
                  "abstractions": [], "boundary": None, "skipped": {}}
        write_json(result, out / "metrics.json")
        return result

    starts = load_start_states(model, data_path, v.split, v.starts, device)
    concept_of = {label: concept for concept, label in spec.labels.items()}
    space = world.single_action_space
    if world.discrete_actions:
        uniform = UniformPolicy(int(space.n))
    else:
        uniform = UniformPolicy(dim=int(np.prod(space.shape)), low=float(np.min(space.low)), high=float(np.max(space.high)))

    planner_name, make = (None, None)
    if "planner" in v.policies:
        planner_name, make = _planner(cfg, world, model, ontology, skipped)
    runs = []  # (policy label, latent policy, rollouts, real policy factory, real episodes)
    if "uniform" in v.policies or any(t.lstrip().startswith(("Pmax", "Pmin")) for t in v.properties):
        runs.append(("uniform", uniform, v.rollouts, lambda w: RandomPolicy(cfg.seed), v.real_episodes,
                     min(64, v.real_episodes)))
    if make is not None:
        runs.append((f"planner:{planner_name}", PlannerPolicy(make(), name=planner_name), v.planner_rollouts,
                     lambda w: ModelPlannerPolicy(model, make(), w.num_envs, context=cfg.plan.context, device=device),
                     v.planner_episodes, min(cfg.plan.num_envs, v.planner_episodes)))

    rows, abstractions, real = [], [], {}
    for label, policy, rollouts, real_policy, episodes, envs in runs:
        t0 = time.perf_counter()
        a = build_abstraction(model, ontology, spec, starts, policy, steps=v.horizon, rollouts=rollouts,
                              sample=v.sample, seed=cfg.seed)
        seconds = round(time.perf_counter() - t0, 2)
        real[label] = _real_rates(cfg, real_policy, episodes, envs, concept_of, progress)
        abstractions.append({"policy": label, "states": a.num_states, "transitions": a.transitions,
                             "rollouts": a.rollouts, "steps": a.steps, "unexplored": int(a.unexplored.sum()),
                             "starts": int(next(iter(starts.sites.values())).shape[0]), "seconds": seconds})
        for text in v.properties:
            mdp = text.lstrip().startswith(("Pmax", "Pmin"))
            if mdp and label != "uniform":
                continue
            try:
                if mdp:
                    res = check(a.mdp(), text)
                    lo, hi, how = _bounds(a, text, True, v.confidence)
                    rows.append(_row(text, MDP_POLICY, a, res.probability, lo, hi, None, how,
                                     "from the uniform rollouts' counted actions"))
                elif label in v.policies or label.startswith("planner:"):
                    res = check(a.dtmc(), text)
                    lo, hi, how = _bounds(a, text, False, v.confidence)
                    rows.append(_row(text, label, a, res.probability, lo, hi,
                                     _empirical(real[label][0], text, v.confidence), how))
            except VerifyError as e:
                skipped[f"{text} / {label}"] = str(e)

    # the MDP rows compare with every policy measured; fill them in after all real runs
    for r in rows:
        if r["policy"] == MDP_POLICY:
            rates = {p: _empirical(first, r["property"], v.confidence) for p, (first, _) in real.items()}
            note, r["agrees"] = _mdp_note(r["property"], r["probability"], r["lower_bound"], r["upper_bound"], rates)
            r["note"] = f"{note}; {r['note']}"

    boundary = _boundary(cfg, v, model, ontology, starts, make, uniform, device, skipped)
    result = {"world": cfg.world.name, "settings": to_dict(v), "rows": rows, "abstractions": abstractions,
              "boundary": boundary, "skipped": skipped,
              "assumptions": ("abstract states are valuations of probed concepts of imagined latents; the abstraction "
                              "assumes they are Markov (checked against the real world by the empirical column); "
                              "the robust bounds hold at the stated joint confidence for every abstract model "
                              "consistent with the counts when the property has no negation (the upper bound: when "
                              "it also names one label), otherwise only for successors that were seen at least once")}
    write_json(result, out / "metrics.json")
    return result


def _mdp_note(text: str, probability: float, lo: float, hi: float, rates: dict[str, Any]) -> tuple[str, bool | None]:
    """An MDP row has no single policy: every measured policy's real rate must be consistent with the optimum
    over all policies (``Pmax``: its interval starts at or below the checked maximum; ``Pmin``: ends at or above)."""
    measured = {p: e for p, e in rates.items() if e is not None}
    if not measured:
        return "no real-world frequency for this property (measured only for F / F<=H of one label)", None
    is_max = text.lstrip().startswith("Pmax")
    bad = sorted(p for p, e in measured.items() if (e.lower > probability if is_max else e.upper < probability))
    said = ", ".join(f"{p} {e.rate:.3f} (CI {e.lower:.3f}-{e.upper:.3f})" for p, e in measured.items())
    beyond = sorted(p for p, e in measured.items() if (e.lower > hi if is_max else e.upper < lo))
    tail = f"; {beyond} even beyond the robust bound" if beyond else ""
    if bad:
        return (f"DISAGREES: the real rate of {bad} lies {'above the maximum' if is_max else 'below the minimum'} "
                f"over all policies in the model{tail}; real rates: {said}"), False
    return f"agrees: every measured policy's real rate is consistent with the model's optimum; real rates: {said}", True


def _boundary(cfg, v, model, ontology, starts, make, uniform, device, skipped) -> dict[str, Any] | None:
    """The counterfactual boundary check of the planner's plans (or random sequences) against a no-op."""
    from planning.verify import VerifyError, constant_actions, counterfactual_boundary

    protected = [c for c in v.protected if c in ontology]
    if len(protected) < len(v.protected):
        skipped["boundary"] = f"protected concept(s) {sorted(set(v.protected) - set(protected))} have no probe"
    if not protected:
        return None
    n = min(v.boundary_starts, int(next(iter(starts.sites.values())).shape[0]))
    sub = starts.at(slice(0, n))
    h = cfg.plan.horizon
    if make is not None:
        planner = make()
        plans = []
        for i in range(n):
            planner.reset()
            planner.plan(sub.at(slice(i, i + 1)))
            plans.append(planner.last_plan)
        plans, what = torch.stack(plans).to(device), "the planner's plans"
    else:
        g = torch.Generator(device=device).manual_seed(cfg.seed)
        active = torch.ones(n, dtype=torch.bool, device=device)
        plans = torch.stack([uniform(sub, active, g) for _ in range(h)], 1)
        what = "uniformly random action sequences (no planner ran)"
    try:
        alt = constant_actions(model, n, int(plans.shape[1]), v.noop_action, device=device)
        rep = counterfactual_boundary(model, ontology, sub, plans, alt, protected, tolerance=v.tolerance,
                                      alternative_name=f"constant action {v.noop_action:g}", sample=v.sample,
                                      seed=cfg.seed, n_boot=v.n_boot, confidence=v.confidence)
    except VerifyError as e:
        skipped["boundary"] = str(e)
        return None
    return {**rep.to_dict(), "compared": what}



def verify_summary(path: str | Path) -> list[dict[str, Any]]:
    """The ``summary.json`` ``"verify"`` rows ``{property, policy, probability, upper_bound, empirical, states}``
    from the stage's folder (or its ``metrics.json``); ``[]`` when the stage did not run."""
    p = Path(path)
    p = p / "metrics.json" if p.is_dir() else p
    if not p.is_file():
        return []
    rows = json.loads(p.read_text()).get("rows", [])
    return [{k: r.get(k) for k in ("property", "policy", "probability", "upper_bound", "empirical", "states",
                                   "lower_bound", "empirical_ci", "agrees", "note")}
            for r in rows]
