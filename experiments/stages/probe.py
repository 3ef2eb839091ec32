"""The probe stage: latents of the trained (and of a random) model, the probe harness, the ontology.

Writes ``results.csv`` (one row per method x site x concept x split x metric, with a 95% CI),
``ontology/`` (the chosen probe per concept, loaded by later stages), ``harness.json`` and the
cached latents.

Standalone (:func:`cmd_probe`): ``ontolab probe [CONFIG] data=PATH checkpoint=PATH out=PATH
[key=value ...]`` fits the configured probe methods on a dataset (made by ``ontolab collect``) and a
trained model (``checkpoint=``: a ``.ckpt`` file or a folder made by ``ontolab train``, holding
``checkpoints/last.ckpt``). The checkpoint decides the model and its hyperparameters and the dataset
decides the world, unless the config says otherwise (then they must agree). ``dynamics=`` stays the
model *name* (``dynamics=gru``), as in every other command. Beside the outputs go ``config.yaml`` and
``inputs.json`` (dataset fingerprint, checkpoint sha256).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import defaultdict
from pathlib import Path

import torch

from experiments.config import ConfigError, load_yaml
from experiments.schema import RunConfig, resolve
from experiments.stages.train import build_for_dataset
from worlds.dataset import TrajectoryDataset


def checkpoint_of(dynamics: Path) -> Path:
    """The checkpoint a dynamics path names: the file itself, or ``checkpoints/last.ckpt`` in a train folder."""
    return dynamics if dynamics.is_file() else dynamics / "checkpoints" / "last.ckpt"


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
            imaginable = set(model.imagine(model.initial(1), _no_actions(model)).sites)
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


def _no_actions(model) -> torch.Tensor:
    """A zero-length action sequence ``[1 0 ...]`` in the model's action format."""
    spec = model.action_spec
    return torch.zeros(1, 0, dtype=torch.long) if spec.discrete else torch.zeros(1, 0, spec.dim)


# ------------------------------------------------------------------------------------ ontolab probe
PATH_KEYS = ("checkpoint",)
"""Keys of ``ontolab probe`` that are paths, not config keys (``data=`` is the config's ``data.path``)."""


def probe_inputs(args: list[str]) -> tuple[RunConfig, Path, Path, Path]:
    """``(config, dataset, checkpoint, out)`` of ``ontolab probe ARGS``, every input checked before any
    work (one-line :class:`ConfigError` s)."""
    from dynamics.training import load_model
    from experiments.cli import _split_args
    from worlds.dataset import DatasetError

    config_file, overrides = _split_args(args)
    ckpt_arg, rest = None, []
    for a in overrides:
        key, _, value = a.partition("=")
        key, value = key.strip(), value.strip()
        if key in PATH_KEYS:
            if not value:
                raise ConfigError(f"{key}= needs a path, got nothing")
            ckpt_arg = Path(value).expanduser()
            continue
        if key == "dynamics" and ("/" in value or Path(value).expanduser().exists()):
            raise ConfigError(f"dynamics={value} names the model kind (rssm, gru, spr); give the trained model as "
                              f"checkpoint={value}")
        rest.append(a)
    data_arg = next((a.partition("=")[2].strip() for a in reversed(rest)
                     if a.partition("=")[0].strip() in ("data", "data.path")), None)
    if data_arg is None and config_file is not None:  # the dataset may come from the config file
        section = load_yaml(config_file).get("data")
        data_arg = str((section.get("path") if isinstance(section, dict) else section) or "").strip() or None
    if not data_arg:
        raise ConfigError("`ontolab probe` needs a dataset: data=PATH (made by `ontolab collect`)")
    if ckpt_arg is None:
        raise ConfigError("`ontolab probe` needs a trained model: checkpoint=PATH (a .ckpt file or a folder made by "
                          "`ontolab train`)")
    data = Path(data_arg).expanduser()
    try:
        ds = TrajectoryDataset.open(data)  # verifies the checksums before any work
    except DatasetError as e:
        raise ConfigError(f"data={data_arg}: {e}") from None
    ckpt = checkpoint_of(ckpt_arg)
    if not ckpt.is_file():
        raise ConfigError(f"checkpoint={ckpt_arg} holds no dynamics checkpoint ({ckpt} missing); give a .ckpt file "
                          "or a folder made by `ontolab train`")
    model = load_model(ckpt)  # a one-line CheckpointError if the file is not a dynamics checkpoint
    hparams = {k: v for k, v in model.hparams.items() if k not in ("obs_spec", "action_spec")}
    base = {"world": {"name": ds.world_name}, "dynamics": {"model": model.name, "hparams": hparams}}
    cfg = resolve(rest, config_file, base)
    if cfg.dynamics.model != model.name:
        raise ConfigError(f"checkpoint {ckpt} holds a {model.name!r} model but dynamics.model={cfg.dynamics.model!r}; "
                          f"drop the setting or set dynamics={model.name}")
    from experiments.stages.train import build_for_dataset

    fresh = build_for_dataset(cfg, ds)  # the random-model baseline must share the checkpoint's architecture
    if (fresh.obs_spec, fresh.action_spec) != (model.obs_spec, model.action_spec):
        raise ConfigError(f"checkpoint {ckpt} was trained on observations {model.obs_spec.shape} and {model.action_spec}; "
                          f"dataset {data} holds {fresh.obs_spec.shape} and {fresh.action_spec}; give the model's dataset")
    if dict(fresh.hparams) != dict(model.hparams):
        differ = sorted(k for k in set(fresh.hparams) | set(model.hparams) if fresh.hparams.get(k) != model.hparams.get(k))
        raise ConfigError(f"checkpoint {ckpt} was trained with other dynamics.hparams ({', '.join(differ)}) than the "
                          "config gives; drop those dynamics.hparams settings")
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out={cfg.out!r} is a file; give a folder for the probe outputs")
    return cfg, data, ckpt, out


def cmd_probe(args: list[str]) -> int:
    """``ontolab probe [CONFIG] data=PATH checkpoint=PATH out=PATH [key=value ...]`` (see the module docstring)."""
    from experiments.cli import pin_threads
    from experiments.provenance import write_config, write_json

    cfg, data, ckpt, out = probe_inputs(args)
    pin_threads(cfg)
    out.mkdir(parents=True, exist_ok=True)
    write_config(cfg, out / "config.yaml")
    ds = TrajectoryDataset.open(data, verify=False)
    write_json({"data": str(data.resolve()), "dataset_fingerprint": ds.fingerprint, "checkpoint": str(ckpt.resolve()),
                "checkpoint_sha256": hashlib.sha256(ckpt.read_bytes()).hexdigest()}, out / "inputs.json")
    res = run_probe(cfg, data, ckpt, out)
    for name in res.ontology:
        e = res.ontology[name]
        print(f"{name:>16}: {e.method}/{e.site}  validation {e.val_metric} {e.val_score:.3f}")
    for what, why in res.skipped.items():
        print(f"{'skipped':>16}: {what} ({why})")
    print(f"results.csv, ontology/ and harness.json in {out} ({res.seconds:.1f} s)")
    return 0
