"""The probe stage: latents of the trained (and of a random) model, the probe harness, the ontology.

Writes ``results.csv`` (one row per method x site x concept x split x metric, with a 95% CI),
``by_checkpoint.csv`` (``probes.by_checkpoint``: the linear probe per training snapshot x site x concept,
see :mod:`experiments.stages.by_checkpoint`),
``ontology/`` (the chosen probe per concept, loaded by later stages), ``ontologies/<method>/`` (the
same rule restricted to one probe method: each concept -> that method's best site; the planning
stage runs one learned-model planner per folder), ``harness.json`` and the cached latents. Both are
chosen among the sites the model's ``imagine`` produces (``planner_sites`` of
:func:`probes.run_harness`): later stages read the probes off imagined latents. With
``probes.imagined_fit`` (default on), ``ontologies/imagined-fit/``: the chosen probes refitted on posterior +
imagined latents of the train split (:mod:`probes.imagined`, k = 1 .. ``probes.imagined_horizon`` or
``plan.horizon``), scored as rows ``<method>+imagined`` on ``test`` and ``imagined_k*``.

Hyperparameters: ``probes.grids`` (null: :data:`probes.grids.DEFAULT_GRIDS`) gives a method's grid points, each
chosen on the validation split; an mlp or sae point is laid over that method's default point
(:func:`probes.grids.checked_grid` ``complete=True``), and the completed grids are recorded in ``harness.json``
``settings.grids`` beside the chosen point per (method, site, concept) (``hparams``).

Baselines (``probes.baseline_methods``, null: every method of ``probes.methods``): the observation and
random-model baselines are fitted with each of those methods, rows ``observation`` / ``random_model``
(linear) and ``observation:<method>`` / ``random_model:<method>`` (:func:`probes.harness.baseline_name`).

Imagination consistency (``probes.imagination``; splits ``imagined_k1/5/15``): *every* fitted method's
probe of every concept, at the concept's chosen site (so the leaderboard, which shows each method at that
site, compares methods on imagined latents) and at the method's own best site (``ontologies/<method>/``,
what the per-method planner reads). One rollout per site serves every method; rollouts start every
``probes.imagination_stride`` steps of the test episodes.

Model-based checks of the chosen ontology's probes (rows of ``results.csv`` with ``method, site`` =
the concept's chosen probe; all on split ``"test"``: the held-out test episodes, at most
``probes.checks_episodes`` of them drawn with the run seed; every interval a 95% bootstrap over
episodes):

- ``state_consistency`` (``probes.state_consistency``), every concept: agreement of the probe's
  outputs across test episodes that reach the same true state (the tuple of all concept values),
  :func:`probes.consistency.state_consistency`;
- ``causal_sufficiency`` / ``causal_sufficiency_null`` (``probes.causal``), concepts with a
  decoded-future scenario in :data:`probes.causal.SCENARIOS` (lavakeydoor: ``has_key``, set next to
  a locked door): success rate of the probe-direction edit / of a same-norm random edit, judged on the
  *decoded* imagined future;
- ``causal_sufficiency_probe`` / ``causal_sufficiency_probe_null`` (``probes.causal``), the other binary
  and categorical concepts: the weaker, generic criterion ``probe_k5`` of
  :func:`probes.causal.causal_sufficiency` -- edit the latent until the probe reads the other class
  (along the direction for linear and sparse probes, along the probe's input gradient otherwise),
  imagine 5 steps with the true actions, and ask the *same probe* whether it still reads that class
  (anchors where the unedited rollout already reads it are dropped). The probe judges its own edit, so
  an edit that only fools the probe also counts: a separate metric name so nobody reads it as the
  decoded-future check. Scalar concepts have no class to flip and are listed as skipped;
- ``causal_necessity`` / ``causal_necessity_null`` (``probes.causal``), every concept (LEACE needs only
  the labels, not the probe: binary and categorical concepts one-hot, scalars as one float column):
  rise of the model's 5-step open-loop prediction loss after LEACE erasure (fitted on the train
  split's latents at the chosen site) / after erasing a random subspace of the same rank (mean of 3),
  rollouts every ``probes.causal_stride`` steps.

Paired differences, edit norms, criteria and the other details go to ``harness.json`` ``"model_checks"``
(and seconds per part of the stage to ``"timings"``); a check that cannot run (no decoder, a site
``imagine`` does not produce, no shared state) is listed in ``harness.json`` ``"skipped"`` (keys
``imagined:<site>``, ``state_consistency:<method>/<site>``, ``causal_sufficiency[:<concept>]``,
``causal_necessity:<concept>``) with the reason.

Standalone (:func:`experiments.stages.commands.cmd_probe`): ``ontolab probe [CONFIG] data=PATH checkpoint=PATH out=PATH
[key=value ...]`` fits the configured probe methods on a dataset (made by ``ontolab collect``) and a
trained model (``checkpoint=``: a ``.ckpt`` file or a folder made by ``ontolab train``, holding
``checkpoints/last.ckpt``). The checkpoint decides the model and its hyperparameters and the dataset
decides the world, unless the config says otherwise (then they must agree). ``dynamics=`` stays the
model *name* (``dynamics=gru``), as in every other command. Beside the outputs go ``config.yaml`` and
``inputs.json`` (dataset fingerprint, checkpoint sha256).
"""

from __future__ import annotations

import dataclasses
import time
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from experiments.config import ConfigError
from experiments.schema import RunConfig
from experiments.stages.inputs import checkpoint_of, no_actions
from experiments.stages.train import build_for_dataset
from worlds.dataset import TrajectoryDataset

if TYPE_CHECKING:
    from dynamics.base import DynamicsModel
    from probes import HarnessResult

IMAGINED_MAX_ROWS = 20000
"""Training rows of the non-linear imagined-fit probes when ``probes.max_train_rows`` is null: posterior
plus imagined rows are ~(1 + horizon / stride) times the posterior ones, so they stay capped."""


def run_probe(cfg: RunConfig, data_path: Path, dynamics_dir: Path, out: Path, *, progress: bool = True):
    """Fit and score the configured probe methods on the model in ``dynamics_dir`` (a train folder or a
    ``.ckpt`` file); returns ``HarnessResult``."""
    from dynamics.training import load_model
    from probes import extract_latents, run_harness
    from probes.grids import checked_grid

    p = cfg.probes
    ds = TrajectoryDataset.open(data_path, verify=False)
    model = load_model(checkpoint_of(dynamics_dir), expected_model=cfg.dynamics.model)
    sites = tuple(p.sites) or tuple(model.sites)
    unknown = [s for s in sites if s not in model.sites]
    if unknown:
        raise ConfigError(f"probes.sites: {cfg.dynamics.model} has no site(s) {unknown}; its sites are: {', '.join(model.sites)}")
    concepts = tuple(p.concepts) or tuple(ds.schema.names)
    missing = [c for c in concepts if c not in ds.schema]
    if missing:
        raise ConfigError(f"probes.concepts: unknown concept(s) {missing}; this world's concepts are: {', '.join(ds.schema.names)}")
    splits = [s for s in ("train", "val", "test", "ood") if s in ds.splits]
    with torch.inference_mode():  # the sites imagine() produces (embed, say, reads an observation)
        imaginable = set(model.imagine(model.initial(1), no_actions(model)).sites)
        store = extract_latents(model, ds, splits, sites, out / "latents", progress=progress)
        random_model = build_for_dataset(dataclasses.replace(cfg, seed=cfg.seed + 1), ds).train(False)
        random_store = extract_latents(random_model, ds, splits, sites, out / "latents_random", progress=progress)
    fitted_methods = tuple(dict.fromkeys((*p.methods, *(p.baseline_methods or ()))))
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    grids = {m: checked_grid(m, points, complete=True) for m, points in (p.grids or {}).items()}
    res = run_harness(store, ds.schema, p.methods, sites, concepts=concepts, seeds=p.seeds, n_boot=p.n_boot,
                      seed=cfg.seed, random_store=random_store, control=p.control, mdl=p.mdl, grids=grids or None,
                      baseline_methods=p.baseline_methods,
                      max_train_rows=None if p.max_train_rows is None else {m: p.max_train_rows for m in fitted_methods if m != "linear"},
                      history_baseline=p.history, planner_sites=[s for s in sites if s in imaginable], progress=progress)
    rows, skipped = list(res.rows), dict(res.skipped)
    timings["harness"] = time.perf_counter() - t0
    if p.by_checkpoint:  # the linear probe on every training snapshot too: by_checkpoint.csv (site x step)
        from experiments.stages.by_checkpoint import probe_by_checkpoint

        t0 = time.perf_counter()
        skipped.update(probe_by_checkpoint(dynamics_dir, ds, store, out, sites=sites, concepts=concepts,
                                           expected_model=cfg.dynamics.model, n_boot=p.n_boot, seed=cfg.seed)[1])
        timings["by_checkpoint"] = time.perf_counter() - t0
    if p.imagination and "test" in ds.splits:
        # The planner only ever sees imagined latents: score every method's probes on them (k steps ahead).
        t0 = time.perf_counter()
        more, why = imagination_rows(model, ds, imagination_probes(res), imaginable, n_boot=p.n_boot, seed=cfg.seed,
                                     stride=p.imagination_stride)
        rows += more
        skipped.update(why)
        timings["imagination"] = time.perf_counter() - t0
    imagined = None
    if p.imagined_fit:  # the same probes fitted on what the planner reads: posterior + imagined latents
        from probes.imagined import fit_on_imagined

        t0 = time.perf_counter()
        points = {n: res.hparams[(e.method, e.site, n)] for n, e in res.ontology.entries.items()}
        fit = fit_on_imagined(model, ds, store, res.ontology, points, horizon=p.imagined_horizon or cfg.plan.horizon,
                              stride=p.imagination_stride, max_rows={m: p.max_train_rows or IMAGINED_MAX_ROWS for m in p.methods if m != "linear"},
                              seeds=p.seeds, eval_stride=p.imagination_stride, n_boot=p.n_boot, seed=cfg.seed,
                              progress=progress)
        rows += fit.rows
        skipped.update(fit.skipped)
        imagined = fit.ontology if len(fit.ontology) else None
        timings["imagined_fit"] = time.perf_counter() - t0
    checks: dict[str, Any] = {}
    if p.state_consistency or p.causal:
        if "test" in ds.splits:
            t0 = time.perf_counter()
            more, why, checks = _model_checks(cfg, model, ds, store, res.ontology)
            rows += more
            skipped.update(why)
            timings["model_checks"] = time.perf_counter() - t0
        else:
            skipped["model_checks"] = "the dataset has no test split"
    res = dataclasses.replace(res, rows=tuple(rows), skipped=skipped, checks=checks, imagined=imagined, timings=timings)
    res.save(out)
    return res


IMAGINED_KS = (1, 5, 15)
"""Imagination horizons scored (the ``imagined_k*`` splits of :data:`probes.results.SPLITS`)."""


def imagination_probes(res: "HarnessResult") -> dict[str, dict[str, dict[str, Any]]]:
    """``site -> method -> concept -> probe``: every fitted method's probe of every ontology concept at the
    concept's chosen site and at the method's own best site (``res.by_method``), from ``res.fitted``."""
    out: dict[str, dict[str, dict[str, Any]]] = defaultdict(lambda: defaultdict(dict))
    for name in res.ontology:
        for method in res.settings["methods"]:
            own = res.by_method.get(method)
            sites = [res.ontology[name].site] + ([own[name].site] if own is not None and name in own else [])
            for site in dict.fromkeys(sites):
                if (method, site, name) in res.fitted:
                    out[site][method][name] = res.fitted[(method, site, name)]
    return {s: dict(m) for s, m in out.items()}


def imagination_rows(model: "DynamicsModel", ds: TrajectoryDataset, probes: dict[str, dict[str, dict[str, Any]]],
                     imaginable: set[str], *, n_boot: int, seed: int, stride: int,
                     ks: tuple[int, ...] = IMAGINED_KS) -> tuple[list, dict[str, str]]:
    """Rows ``(method, site, concept, "imagined_k{k}", metric)`` of every probe in ``probes`` (site -> method ->
    concept -> probe) on the test episodes: the rows :func:`probes.imagination_consistency` gives per method,
    but from one rollout per site shared by every method (imagining is the costly part; scoring is cheap)."""
    from probes import ProbeError
    from probes.consistency import as_episodes, concept_at, imagine_latents
    from probes.metrics import concept_estimates
    from probes.results import ResultRow

    rows: list = []
    skipped: dict[str, str] = {}
    eps = as_episodes(ds, "test")
    for site, by_method in probes.items():
        if site not in imaginable:
            skipped[f"imagined:{site}"] = f"site {site!r} is not produced by imagine()"
            continue
        try:
            im = imagine_latents(model, eps, site, ks=ks, stride=stride)
        except ProbeError as e:  # e.g. no held-out episode long enough for k = 15
            skipped[f"imagined:{site}"] = str(e)
            continue
        truth = {(n, k): concept_at(eps, n, im.anchors[k], k) for n in {n for m in by_method.values() for n in m}
                 for k in im.ks}
        for method, chosen in by_method.items():
            for name, probe in chosen.items():
                c = probe.concept
                for k in im.ks:
                    with torch.inference_mode():
                        x = im.latents[k]
                        pred = probe.predict(x).cpu().numpy()
                        proba = None if c.kind == "scalar" else probe.predict_proba(x).cpu().numpy()
                    est = concept_estimates(c.kind, truth[(name, k)], pred, proba, groups=im.anchors[k][:, 0],
                                            num_classes=c.num_classes or None, n_boot=n_boot, seed=seed)
                    rows += [ResultRow.from_estimate(method, site, name, f"imagined_k{k}", m, e) for m, e in est.items()]
    return rows, skipped


LINEAR_READOUT = ("linear", "sparse")
"""Probe methods whose readout is one linear direction: the generic sufficiency edit follows it (the others
follow the probe's input gradient)."""
NECESSITY_HORIZON = 5
NULL_DRAWS = 3
SUFFICIENCY_K = 5
"""Imagined steps of the generic, probe-judged sufficiency criterion (``probe_k5``)."""
PROBE_JUDGED = ("causal_sufficiency_probe", "causal_sufficiency_probe_null")
"""Metric names of the generic criterion's rows (success, null), kept apart from the decoded-future scenario's."""


def _model_checks(cfg: RunConfig, model, ds: TrajectoryDataset, store, ontology) -> tuple[list, dict[str, str], dict[str, Any]]:
    """State consistency and causal checks of ``ontology``'s probes on the test episodes (module docstring):
    ``(rows, skipped, details)``."""
    from probes import ProbeError
    from probes.causal import SCENARIOS, causal_necessity, causal_sufficiency
    from probes.consistency import anchor_steps, as_episodes, concept_at, state_consistency, state_keys

    p, t0 = cfg.probes, time.perf_counter()
    eps = as_episodes(ds, "test")
    n_all = len(eps)
    if n_all > p.checks_episodes:  # a seeded draw keeps the checks' cost bounded on big datasets
        keep = np.sort(np.random.default_rng(cfg.seed).choice(n_all, p.checks_episodes, replace=False))
        eps = [eps[int(i)] for i in keep]
    rows: list = []
    skipped: dict[str, str] = {}
    details: dict[str, Any] = {"settings": {"split": "test", "episodes": len(eps), "test_episodes": n_all,
                                            "causal_stride": p.causal_stride, "necessity_horizon": NECESSITY_HORIZON,
                                            "null_draws": NULL_DRAWS, "sufficiency_k": SUFFICIENCY_K,
                                            "sufficiency_edit": "direction (scenario; linear, sparse), gradient (other probes)"}}
    kw = dict(split="test", n_boot=p.n_boot, seed=cfg.seed)
    if p.state_consistency:
        # The true state: the tuple of every concept value of the world (an abstract state; layouts differ per episode).
        anchors = anchor_steps([len(e) for e in eps], 1, 0)
        keys = state_keys({c: concept_at(eps, c, anchors) for c in eps[0].concepts})
        pairs = np.unique(np.stack([keys, anchors[:, 0]], 1), axis=0)  # (state, episode) pairs
        shared = np.flatnonzero(np.bincount(pairs[:, 0], minlength=keys.max() + 1) >= 2)
        details["state_consistency"] = {"key": "tuple of all concept values", "states": int(len(np.unique(keys))),
                                        "shared_states": int(len(shared)),
                                        "steps_in_shared_states": int(np.isin(keys, shared).sum()), "steps": int(len(keys))}
        by_site: dict[tuple[str, str], dict] = defaultdict(dict)
        for name in ontology:
            by_site[(ontology[name].method, ontology[name].site)][name] = ontology[name].probe
        for (method, site), chosen in by_site.items():
            try:
                rows += state_consistency(model, eps, chosen, site, method=method, keys=keys, **kw)
            except ProbeError as e:  # e.g. no true state reached in two episodes
                skipped[f"state_consistency:{method}/{site}"] = str(e)
    if p.causal:
        suff, nec = {}, {}
        scalars = [n for n in ontology if (cfg.world.name, n) not in SCENARIOS and ontology[n].concept.kind == "scalar"]
        if scalars:
            have = ", ".join("/".join(k) for k in SCENARIOS) or "(none)"
            skipped["causal_sufficiency"] = (f"scalar concept(s) {scalars} have no class to flip and no decoded-future "
                                             f"scenario (scenarios exist for: {have}); not checked")
        for name in ontology:
            e = ontology[name]
            factory = SCENARIOS.get((cfg.world.name, name))
            if factory is None and e.concept.kind == "scalar":
                continue
            # A scenario judges the decoded future; without one the probe judges its own edit k steps later (weaker).
            edit = "direction" if factory is not None or e.method in LINEAR_READOUT else "gradient"
            try:
                r = causal_sufficiency(model, eps, e.probe, e.site, edit=edit, k=SUFFICIENCY_K,
                                       scenario=None if factory is None else factory(eps), stride=p.causal_stride, **kw)
            except ProbeError as err:  # e.g. a site imagine() does not produce, or non-symbolic views
                skipped[f"causal_sufficiency:{name}"] = str(err)
                continue
            if r.skipped:
                skipped[f"causal_sufficiency:{name}"] = r.skipped
                continue
            more = r.rows(e.method)
            if factory is None:
                more = [dataclasses.replace(row, metric=PROBE_JUDGED[i]) for i, row in enumerate(more)]
            rows += more
            suff[name] = {"method": e.method, "site": e.site, "criterion": r.criterion, "edit": edit,
                          "metrics": [row.metric for row in more], "success": r.success.as_json(),
                          "null": r.null.as_json(), "difference": r.difference.as_json(), "edit_norm": r.edit_norm,
                          "reached": r.reached, "num_anchors": r.num_anchors}
        train = store.concepts("train")
        for name in ontology:  # LEACE needs the labels only: every concept, whatever probe reads it
            e = ontology[name]
            y = np.asarray(train[name])
            labels = y.astype(np.float64) if e.concept.kind == "scalar" else y.astype(np.int64)
            try:
                r = causal_necessity(model, eps, e.concept, e.site, train_latents=np.array(store.site("train", e.site)),
                                     train_labels=labels, horizon=NECESSITY_HORIZON,
                                     null_draws=NULL_DRAWS, stride=p.causal_stride, **kw)
            except ProbeError as err:  # e.g. episodes shorter than the horizon
                skipped[f"causal_necessity:{name}"] = str(err)
                continue
            if r.skipped:
                skipped[f"causal_necessity:{name}"] = r.skipped
                continue
            rows += r.rows(e.method)
            nec[name] = {"method": e.method, "site": e.site, "kind": e.concept.kind, "rank": r.rank,
                         "loss_clean": r.loss_clean.as_json(),
                         "rise": r.rise.as_json(), "null_rise": r.null_rise.as_json(), "difference": r.difference.as_json(),
                         "relative_rise": r.relative_rise.as_json(), "num_anchors": r.num_anchors}
        details.update(causal_sufficiency=suff, causal_necessity=nec)
    details["seconds"] = round(time.perf_counter() - t0, 2)
    return rows, skipped, details


