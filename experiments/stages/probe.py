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

Model-based checks of the chosen ontology's probes (rows of ``results.csv`` with ``method, site`` =
the concept's chosen probe; all on split ``"test"``: the held-out test episodes, at most
``probes.checks_episodes`` of them drawn with the run seed; every interval a 95% bootstrap over
episodes):

- ``state_consistency`` (``probes.state_consistency``), every concept: agreement of the probe's
  outputs across test episodes that reach the same true state (the tuple of all concept values),
  :func:`probes.consistency.state_consistency`;
- ``causal_sufficiency`` / ``causal_sufficiency_null`` (``probes.causal``), concepts with a
  decoded-future scenario in :data:`probes.causal.SCENARIOS` (lavakeydoor: ``has_key``, set next to
  a locked door): success rate of the probe-direction edit / of a same-norm random edit;
- ``causal_necessity`` / ``causal_necessity_null`` (``probes.causal``), binary concepts whose chosen
  probe reads a linear direction (linear, sparse): rise of the model's 5-step open-loop prediction
  loss after LEACE erasure (fitted on the train split's latents) / after erasing a random subspace of
  the same rank (mean of 3), rollouts every ``probes.causal_stride`` steps.

Paired differences, edit norms and the other details go to ``harness.json`` ``"model_checks"``; a
check that cannot run (no decoder, a site ``imagine`` does not produce, no shared state) is listed in
``harness.json`` ``"skipped"`` (keys ``state_consistency:<method>/<site>``, ``causal_sufficiency[:<concept>]``,
``causal_necessity[:<concept>]``) with the reason.

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
from typing import Any

import numpy as np
import torch

from experiments.config import ConfigError
from experiments.schema import RunConfig
from experiments.stages.inputs import checkpoint_of, no_actions
from experiments.stages.train import build_for_dataset
from worlds.dataset import TrajectoryDataset

IMAGINED_MAX_ROWS = 20000
"""Training rows of the non-linear imagined-fit probes when ``probes.max_train_rows`` is null: posterior
plus imagined rows are ~(1 + horizon / stride) times the posterior ones, so they stay capped."""


def run_probe(cfg: RunConfig, data_path: Path, dynamics_dir: Path, out: Path, *, progress: bool = True):
    """Fit and score the configured probe methods on the model in ``dynamics_dir`` (a train folder or a
    ``.ckpt`` file); returns ``HarnessResult``."""
    from dynamics.training import load_model
    from probes import ProbeError, extract_latents, imagination_consistency, run_harness

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
    res = run_harness(store, ds.schema, p.methods, sites, concepts=concepts, seeds=p.seeds, n_boot=p.n_boot,
                      seed=cfg.seed, random_store=random_store, control=p.control, mdl=p.mdl,
                      max_train_rows=None if p.max_train_rows is None else {m: p.max_train_rows for m in p.methods if m != "linear"},
                      history_baseline=p.history, planner_sites=[s for s in sites if s in imaginable], progress=progress)
    rows, skipped = list(res.rows), dict(res.skipped)
    if p.by_checkpoint:  # the linear probe on every training snapshot too: by_checkpoint.csv (site x step)
        from experiments.stages.by_checkpoint import probe_by_checkpoint

        skipped.update(probe_by_checkpoint(dynamics_dir, ds, store, out, sites=sites, concepts=concepts,
                                           expected_model=cfg.dynamics.model, n_boot=p.n_boot, seed=cfg.seed)[1])
    if p.imagination and "test" in ds.splits:
        # The planner only ever sees imagined latents: score each chosen probe on them (k steps ahead).
        by_site = defaultdict(dict)
        for name in res.ontology:
            e = res.ontology[name]
            by_site[(e.method, e.site)][name] = e.probe
        for (method, site), chosen in by_site.items():
            if site not in imaginable:
                skipped[f"imagined:{method}/{site}"] = f"site {site!r} is not produced by imagine()"
                continue
            try:
                rows += imagination_consistency(model, ds, chosen, site, method=method, split="test",
                                                n_boot=p.n_boot, seed=cfg.seed, stride=p.imagination_stride)
            except ProbeError as e:  # e.g. no held-out episode long enough for k = 15
                skipped[f"imagined:{method}/{site}"] = str(e)
    imagined = None
    if p.imagined_fit:  # the same probes fitted on what the planner reads: posterior + imagined latents
        from probes.imagined import fit_on_imagined

        points = {n: res.hparams[(e.method, e.site, n)] for n, e in res.ontology.entries.items()}
        fit = fit_on_imagined(model, ds, store, res.ontology, points, horizon=p.imagined_horizon or cfg.plan.horizon,
                              stride=p.imagination_stride, max_rows={m: p.max_train_rows or IMAGINED_MAX_ROWS for m in p.methods if m != "linear"},
                              seeds=p.seeds, eval_stride=p.imagination_stride, n_boot=p.n_boot, seed=cfg.seed,
                              progress=progress)
        rows += fit.rows
        skipped.update(fit.skipped)
        imagined = fit.ontology if len(fit.ontology) else None
    checks: dict[str, Any] = {}
    if p.state_consistency or p.causal:
        if "test" in ds.splits:
            more, why, checks = _model_checks(cfg, model, ds, store, res.ontology)
            rows += more
            skipped.update(why)
        else:
            skipped["model_checks"] = "the dataset has no test split"
    res = dataclasses.replace(res, rows=tuple(rows), skipped=skipped, checks=checks, imagined=imagined)
    res.save(out)
    return res


LINEAR_READOUT = ("linear", "sparse")
"""Probe methods whose readout is one linear direction (the causal-necessity check erases linearly)."""
NECESSITY_HORIZON = 5
NULL_DRAWS = 3


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
                                            "null_draws": NULL_DRAWS, "sufficiency_edit": "direction"}}
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
        no_scenario = [n for n in ontology if (cfg.world.name, n) not in SCENARIOS]
        if no_scenario:
            have = ", ".join("/".join(k) for k in SCENARIOS) or "(none)"
            skipped["causal_sufficiency"] = (f"no decoded-future scenario for {cfg.world.name} concept(s) {no_scenario} "
                                             f"(scenarios exist for: {have})")
        for name in ontology:
            if (cfg.world.name, name) not in SCENARIOS:
                continue
            e = ontology[name]
            try:
                r = causal_sufficiency(model, eps, e.probe, e.site, scenario=SCENARIOS[(cfg.world.name, name)](eps),
                                       edit="direction", **kw)
            except ProbeError as err:  # e.g. a site imagine() does not produce, or non-symbolic views
                skipped[f"causal_sufficiency:{name}"] = str(err)
                continue
            if r.skipped:
                skipped[f"causal_sufficiency:{name}"] = r.skipped
                continue
            rows += r.rows(e.method)
            suff[name] = {"method": e.method, "site": e.site, "criterion": r.criterion, "success": r.success.as_json(),
                          "null": r.null.as_json(), "difference": r.difference.as_json(), "edit_norm": r.edit_norm,
                          "reached": r.reached, "num_anchors": r.num_anchors}
        erasable = [n for n in ontology if ontology[n].concept.kind == "binary" and ontology[n].method in LINEAR_READOUT]
        others = [n for n in ontology if n not in erasable]
        if others:
            skipped["causal_necessity"] = (f"only binary concepts read by a linear-direction probe ({', '.join(LINEAR_READOUT)}) "
                                           f"are erased; not checked: {others}")
        train = store.concepts("train")
        for name in erasable:
            e = ontology[name]
            try:
                r = causal_necessity(model, eps, e.concept, e.site, train_latents=np.array(store.site("train", e.site)),
                                     train_labels=np.array(train[name]), horizon=NECESSITY_HORIZON,
                                     null_draws=NULL_DRAWS, stride=p.causal_stride, **kw)
            except ProbeError as err:  # e.g. episodes shorter than the horizon
                skipped[f"causal_necessity:{name}"] = str(err)
                continue
            if r.skipped:
                skipped[f"causal_necessity:{name}"] = r.skipped
                continue
            rows += r.rows(e.method)
            nec[name] = {"method": e.method, "site": e.site, "rank": r.rank, "loss_clean": r.loss_clean.as_json(),
                         "rise": r.rise.as_json(), "null_rise": r.null_rise.as_json(), "difference": r.difference.as_json(),
                         "relative_rise": r.relative_rise.as_json(), "num_anchors": r.num_anchors}
        details.update(causal_sufficiency=suff, causal_necessity=nec)
    details["seconds"] = round(time.perf_counter() - t0, 2)
    return rows, skipped, details


