"""The probe stage: latents of the trained (and of a random) model, the probe harness, the ontology.

Writes ``results.csv`` (one row per method x site x concept x split x metric, with a 95% CI),
``ontology/`` (the chosen probe per concept, loaded by later stages), ``harness.json`` and the
cached latents.

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
from collections import defaultdict
from pathlib import Path

import torch

from experiments.config import ConfigError
from experiments.schema import RunConfig
from experiments.stages.inputs import checkpoint_of, no_actions
from experiments.stages.train import build_for_dataset
from worlds.dataset import TrajectoryDataset


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
    with torch.inference_mode():
        store = extract_latents(model, ds, splits, sites, out / "latents", progress=progress)
        random_model = build_for_dataset(dataclasses.replace(cfg, seed=cfg.seed + 1), ds).train(False)
        random_store = extract_latents(random_model, ds, splits, sites, out / "latents_random", progress=progress)
    res = run_harness(store, ds.schema, p.methods, sites, concepts=concepts, seeds=p.seeds, n_boot=p.n_boot,
                      seed=cfg.seed, random_store=random_store, control=p.control, mdl=p.mdl,
                      max_train_rows={m: p.max_train_rows for m in p.methods if m != "linear"},
                      progress=progress)
    rows, skipped = list(res.rows), dict(res.skipped)
    if p.imagination and "test" in ds.splits:
        # The planner only ever sees imagined latents: score each chosen probe on them (k steps ahead).
        by_site = defaultdict(dict)
        for name in res.ontology:
            e = res.ontology[name]
            by_site[(e.method, e.site)][name] = e.probe
        with torch.inference_mode():  # the sites imagine() produces (embed, say, reads an observation)
            imaginable = set(model.imagine(model.initial(1), no_actions(model)).sites)
        for (method, site), chosen in by_site.items():
            if site not in imaginable:
                skipped[f"imagined:{method}/{site}"] = f"site {site!r} is not produced by imagine()"
                continue
            try:
                rows += imagination_consistency(model, ds, chosen, site, method=method, split="test",
                                                n_boot=p.n_boot, seed=cfg.seed, stride=p.imagination_stride)
            except ProbeError as e:  # e.g. no held-out episode long enough for k = 15
                skipped[f"imagined:{method}/{site}"] = str(e)
    res = dataclasses.replace(res, rows=tuple(rows), skipped=skipped)
    res.save(out)
    return res


