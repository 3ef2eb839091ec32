"""The standalone stage commands: ``ontolab probe``, ``ontolab plan`` and ``ontolab verify``.

Each runs one stage of ``ontolab run`` on inputs the user names, and checks every input before any
work, each problem a one-line :class:`~experiments.config.ConfigError`:

* ``ontolab probe [CONFIG] data=PATH checkpoint=PATH out=PATH [key=value ...]`` -- the probe stage on a
  dataset (``data=``: a folder made by ``ontolab collect``, or a run's data stage folder ``RUN/data``, whose
  ``dataset/`` it reads) and a trained model (``checkpoint=``: a ``.ckpt`` file or a folder made by ``ontolab train``).
  The checkpoint decides the model and its hyperparameters and the dataset the world, unless the config
  says otherwise (then they must agree). ``dynamics=`` stays the model *name*, as in every command.
* ``ontolab plan [CONFIG] run=RUN_DIR | checkpoint=PATH ontology=PATH out=PATH`` -- the planning stage
  with the model and probes of a finished run (its ``config.yaml`` is the base config; outputs go to
  ``RUN_DIR/plan`` unless ``out=``) or of the named checkpoint and probes / ontology folder.
* ``ontolab verify [CONFIG] run=RUN_DIR | checkpoint=PATH ontology=PATH data=DATASET out=PATH`` -- the
  verify stage, with the same path keys.

Beside the outputs go ``config.yaml`` and ``inputs.json`` (the inputs' fingerprints / sha256).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from experiments.config import ConfigError, load_yaml
from experiments.provenance import write_config, write_json
from experiments.schema import RunConfig, replace, resolve
from experiments.stages.inputs import checkpoint_of, dataset_of, ontology_dir


# ------------------------------------------------------------------------------------ ontolab probe
PROBE_PATH_KEYS = ("checkpoint",)
"""Keys of ``ontolab probe`` that are paths, not config keys (``data=`` is the config's ``data.path``)."""


def probe_inputs(args: list[str]) -> tuple[RunConfig, Path, Path, Path]:
    """``(config, dataset, checkpoint, out)`` of ``ontolab probe ARGS``, every input checked before any
    work (one-line :class:`ConfigError` s)."""
    from dynamics.training import load_model
    from experiments.cli import _split_args
    from experiments.stages.train import build_for_dataset
    from worlds.dataset import DatasetError, TrajectoryDataset

    config_file, overrides = _split_args(args)
    ckpt_arg, rest = None, []
    for a in overrides:
        key, _, value = a.partition("=")
        key, value = key.strip(), value.strip()
        if key in PROBE_PATH_KEYS:
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
    data = dataset_of(Path(data_arg).expanduser())  # a run's data stage folder (RUN/data) names its dataset/
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
    configured = _configured_model(config_file, rest)
    if configured is not None and configured != model.name:  # before resolving: the checkpoint's hparams are its model's
        raise ConfigError(f"checkpoint {ckpt} holds a {model.name!r} model but dynamics.model={configured!r}; "
                          f"drop dynamics= or pass dynamics={model.name}")
    base = {"world": {"name": ds.world_name}, "dynamics": {"model": model.name, "hparams": hparams}}
    cfg = resolve(rest, config_file, base)
    cfg = replace(cfg, data=replace(cfg.data, path=str(data)))  # the dataset itself (config.yaml records it)
    if cfg.dynamics.model != model.name:
        raise ConfigError(f"checkpoint {ckpt} holds a {model.name!r} model but dynamics.model={cfg.dynamics.model!r}; "
                          f"drop dynamics= or pass dynamics={model.name}")
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


def _configured_model(config_file: str | None, overrides: list[str]) -> str | None:
    """The ``dynamics.model`` a config file and overrides set (``dynamics=`` included), or None; malformed values are
    left to :func:`~experiments.schema.resolve` to refuse."""
    from experiments.config import merge, parse_overrides
    from experiments.schema import ALIASES

    data = merge(load_yaml(config_file) if config_file is not None else {}, parse_overrides(overrides, ALIASES))
    section = data.get("dynamics")
    model = section.get("model") if isinstance(section, dict) else None
    return model if isinstance(model, str) else None


def cmd_probe(args: list[str]) -> int:
    """``ontolab probe [CONFIG] data=PATH checkpoint=PATH out=PATH [key=value ...]`` (see the module docstring)."""
    from experiments.cli import pin_threads

    cfg, data, ckpt, out = probe_inputs(args)
    pin_threads(cfg)
    out.mkdir(parents=True, exist_ok=True)
    write_config(cfg, out / "config.yaml")
    from worlds.dataset import TrajectoryDataset

    ds = TrajectoryDataset.open(data, verify=False)
    write_json({"data": str(data.resolve()), "dataset_fingerprint": ds.fingerprint, "checkpoint": str(ckpt.resolve()),
                "checkpoint_sha256": hashlib.sha256(ckpt.read_bytes()).hexdigest()}, out / "inputs.json")
    from experiments.stages.probe import run_probe

    res = run_probe(cfg, data, ckpt, out)
    for name in res.ontology:
        e = res.ontology[name]
        print(f"{name:>16}: {e.method}/{e.site}  validation {e.val_metric} {e.val_score:.3f}")
    for what, why in res.skipped.items():
        print(f"{'skipped':>16}: {what} ({why})")
    print(f"results.csv, ontology/ and harness.json in {out} ({res.seconds:.1f} s)")
    return 0


# ------------------------------------------------------------------------------------ ontolab plan
PATH_KEYS = ("run", "checkpoint", "ontology")
"""``ontolab plan`` / ``ontolab verify`` path keys, taken out of the overrides before the config is resolved (``dynamics=`` is
the model-name alias and ``probes.*`` a config section, so the paths have names of their own)."""


def pop_paths(overrides: list[str]) -> tuple[dict[str, Path], list[str]]:
    paths, rest = {}, []
    for a in overrides:
        key, _, value = a.partition("=")
        if key.strip() in PATH_KEYS:
            if not value.strip():
                raise ConfigError(f"{key.strip()}= needs a path, got nothing")
            paths[key.strip()] = Path(value.strip()).expanduser()
        else:
            rest.append(a)
    return paths, rest


def split_run_args(args: list[str], missing: str) -> tuple[str | None, list[str], dict[str, Path], Path | None]:
    """``(config file, overrides, paths, run folder or None)`` of ``[CONFIG] run=... | checkpoint=... ontology=...
    key=value ...``; ``missing`` is the error when neither a run nor both checkpoint and ontology are given."""
    from experiments.cli import _split_args

    config_file, overrides = _split_args(args)
    paths, overrides = pop_paths(overrides)
    if "run" not in paths and not {"checkpoint", "ontology"} <= set(paths):
        raise ConfigError(missing)
    return config_file, overrides, paths, paths.get("run")


def run_config(run: Path) -> dict:
    """A finished run's resolved ``config.yaml`` as the base config of a standalone command (its ``out`` and
    ``cache_dir`` dropped: the command writes elsewhere)."""
    import yaml

    try:
        base = yaml.safe_load((run / "config.yaml").read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"run={run}: config.yaml is not valid YAML ({' '.join(str(e).split())})") from None
    base.pop("out", None), base.pop("cache_dir", None)
    return base


def plan_inputs(args: list[str]) -> tuple[RunConfig, Path, Path, Path]:
    """``(config, checkpoint, probes or ontology folder, out)`` of ``ontolab plan ARGS``, every input
    checked before any work (one-line :class:`ConfigError` s)."""
    config_file, overrides, paths, run = split_run_args(args, "`ontolab plan` needs run=RUN_DIR (a folder made by "
                                                        "`ontolab run`), or both checkpoint=PATH and ontology=PATH")
    base = None
    if run is not None:
        if not run.is_dir():
            raise ConfigError(f"run={run}: no such folder; give a run folder made by `ontolab run`")
        if (run / "config.yaml").is_file():
            base = run_config(run)
    dynamics = paths.get("checkpoint", run / "dynamics" if run is not None else None)
    probes = paths.get("ontology", run / "probes" if run is not None else None)
    ckpt = checkpoint_of(dynamics)
    if not ckpt.is_file():
        where = "checkpoint=" if "checkpoint" in paths else f"run={run}: "
        if dynamics.suffix == ".ckpt" and not dynamics.is_dir():
            raise ConfigError(f"{where}{dynamics}: no such checkpoint file; give an existing .ckpt file or a folder "
                              "made by `ontolab train`")
        raise ConfigError(f"{where}{dynamics} holds no dynamics checkpoint ({ckpt} missing); give a .ckpt file "
                          "or a folder made by `ontolab train`")
    if not probes.is_dir() or not ((probes / "ontology.json").is_file() or (probes / "ontology" / "ontology.json").is_file()):
        where = "ontology=" if "ontology" in paths else f"run={run}: "
        raise ConfigError(f"{where}{probes} holds no ontology (neither ontology.json nor ontology/ontology.json); "
                          "give a probes folder or an ontology folder")
    from dynamics.training import load_model

    model = load_model(ckpt)  # a one-line CheckpointError if the file is not a dynamics checkpoint
    base = dict(base or {})
    base["dynamics"] = {"model": model.name, **(base.get("dynamics") or {})}  # the checkpoint's, unless configured
    if not any(a.partition("=")[0].strip() == "out" for a in overrides):
        if run is None:
            raise ConfigError("`ontolab plan` with checkpoint= and ontology= needs out=FOLDER for its outputs")
        overrides = [*overrides, f"out={run / 'plan'}"]
    cfg = resolve(overrides, config_file, base)
    if not cfg.plan.reward.strip():
        raise ConfigError("`ontolab plan` needs a reward: plan.reward='-0.1 * steps_to_goal - 10 * in_lava' (for example)")
    _check_model_and_ontology(cfg, model, ckpt, probes)
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out={cfg.out!r} is a file; give a folder for the planning outputs")
    return cfg, ckpt, probes, out


def _check_model_and_ontology(cfg: RunConfig, model, ckpt: Path, probes: Path) -> None:
    """The checkpoint fits the world (observation and action specs) and the ontology reads the reward's concepts."""
    from dynamics.base import ActionSpec, ObsSpec
    from rewards import RewardSpec
    from worlds.dataset import action_spec_of, obs_spec_of
    from worlds.registry import make_world

    if model.name != cfg.dynamics.model:  # the checkpoint decides the model; the config follows it
        raise ConfigError(f"checkpoint {ckpt} holds a {model.name!r} model but dynamics.model={cfg.dynamics.model!r}; "
                          f"set dynamics={model.name}")
    world = make_world(cfg.world.name, num_envs=1, seed=cfg.seed, **cfg.world.params)
    want = ObsSpec.from_manifest(obs_spec_of(world)), ActionSpec.from_manifest(action_spec_of(world))
    if (model.obs_spec, model.action_spec) != want:
        raise ConfigError(f"checkpoint {ckpt} was trained on observations {model.obs_spec.shape} ({model.obs_spec.kind}) "
                          f"and {model.action_spec}, world {cfg.world.name!r} with these settings gives "
                          f"{want[0].shape} ({want[0].kind}) and {want[1]}; pass the run's world settings")
    from experiments.stages.plan import _ontologies

    ontology = _ontologies(probes, torch.device("cpu"))[0][1]
    spec = RewardSpec(cfg.plan.reward, tuple(cfg.plan.constraints))
    missing = sorted({u.name for u in spec.concepts()} - set(ontology.concepts))
    if missing:
        raise ConfigError(f"plan.reward uses {missing}, which the ontology at {probes} does not probe (it has: "
                          f"{', '.join(ontology.concepts)}); probe them or change the reward")


def cmd_plan(args: list[str]) -> int:
    """``ontolab plan [CONFIG] run=RUN_DIR | checkpoint=PATH ontology=PATH [key=value ...]`` (see the module docstring)."""
    from experiments.cli import pin_threads

    cfg, ckpt, probes, out = plan_inputs(args)
    pin_threads(cfg)
    out.mkdir(parents=True, exist_ok=True)
    write_config(cfg, out / "config.yaml")
    digest = hashlib.sha256(ckpt.read_bytes()).hexdigest()[:16]
    write_json({"checkpoint": str(ckpt.resolve()), "checkpoint_sha256_16": digest, "ontology": str(probes.resolve())},
               out / "inputs.json")
    from experiments.stages.plan import run_plan

    metrics = run_plan(cfg, ckpt, probes, out)
    from experiments.plots import plot_planning, run_plot_jobs

    plot = run_plot_jobs({"planning": lambda path: plot_planning(metrics["rows"], path)}, out)["planning"]
    for r in metrics["rows"]:
        def fmt(e):
            return "n/a" if e is None or e["estimate"] is None else f"{e['estimate']:.3g} [{e['ci_low']:.3g}, {e['ci_high']:.3g}]"
        print(f"{r['planner']:>13} {str(r['model']):>8} {str(r['reward']):>7}  success {fmt(r['success_rate'])}  "
              f"violations {fmt(r['violation_rate'])}  return {fmt(r['mean_true_return'])}")
    print(f"episodes.csv, decisions.csv and metrics.json in {out}"
          + (" (with overoptimisation.json/.png)" if "overoptimisation" in metrics else ""))
    print(f"success/violation plot: {plot.name}" if isinstance(plot, Path) else f"no success/violation plot: {plot}")
    return 0


# ------------------------------------------------------------------------------------ ontolab verify
def verify_inputs(args: list[str]) -> tuple[RunConfig, Path, Path, Path, Path]:
    """``(config, dataset, checkpoint, ontology folder, out)`` of ``ontolab verify ARGS``, each input checked
    before any work (one-line :class:`ConfigError` s). Same path keys as ``ontolab plan``."""
    config_file, overrides, paths, run = split_run_args(args, "`ontolab verify` needs run=RUN_DIR (a folder made by "
                                                        "`ontolab run`), or checkpoint=PATH, ontology=PATH and data=DATASET")
    base = None
    if run is not None:
        if not (run / "config.yaml").is_file():
            raise ConfigError(f"run={run}: not a run folder (no config.yaml); give a folder made by `ontolab run`")
        base = run_config(run)
        if not any(a.partition("=")[0].strip() == "out" for a in overrides):
            if (run / "verify").is_symlink():
                raise ConfigError(f"{run / 'verify'} is the pipeline's cached verify stage; give out=FOLDER for a "
                                  f"standalone check")
            overrides = [*overrides, f"out={run / 'verify'}"]
    elif not any(a.partition("=")[0].strip() == "out" for a in overrides):
        raise ConfigError("`ontolab verify` with checkpoint= and ontology= needs out=FOLDER for its outputs")
    ckpt = checkpoint_of(paths.get("checkpoint", run / "dynamics" if run is not None else Path()))
    onto = ontology_dir(paths.get("ontology", run / "probes" if run is not None else Path()))
    if not ckpt.is_file():
        raise ConfigError(f"no dynamics checkpoint at {ckpt}; give checkpoint=FILE or a folder made by `ontolab train`")
    if not (onto / "ontology.json").is_file():
        raise ConfigError(f"no ontology at {onto} (no ontology.json); give ontology= a probes or ontology folder")
    from dynamics.training import load_model

    name = getattr(load_model(ckpt), "name", None)     # the checkpoint decides the model, unless configured
    if name is not None:
        base = dict(base or {})
        base["dynamics"] = {"model": name, **(base.get("dynamics") or {})}
    cfg = resolve(overrides, config_file, base)
    if run is not None and not cfg.data.path:
        data = dataset_of(run / "data")
    elif cfg.data.path:
        data = dataset_of(Path(cfg.data.path).expanduser())  # a run's data stage folder names its dataset/
    else:
        raise ConfigError("`ontolab verify` with checkpoint= and ontology= needs data=DATASET (start states are "
                          "filtered from its episodes)")
    if not (data / "manifest.json").is_file() and not data.is_dir():
        raise ConfigError(f"no dataset at {data}; give data= a folder made by `ontolab collect`")
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out={cfg.out!r} is a file; give a folder for the verify outputs")
    return cfg, data, ckpt, onto, out


def cmd_verify(args: list[str]) -> int:
    """``ontolab verify [CONFIG] run=RUN_DIR [key=value ...]`` or ``... checkpoint=PATH ontology=PATH data=DATASET
    out=FOLDER``.

    With ``run=``, the run's resolved ``config.yaml`` is the base config (a CONFIG file and overrides go
    on top), its ``data``/``dynamics``/``probes`` are used, and the output goes to ``RUN_DIR/verify``
    unless ``out=`` is given. ``checkpoint=`` (a ``.ckpt`` file or a train folder) and ``ontology=`` (a
    probes or ontology folder) override the run's, as in ``ontolab plan``.
    """
    from experiments.cli import pin_threads
    from experiments.stages.verify import run_verify

    cfg, data, ckpt, onto, out = verify_inputs(args)
    from worlds.dataset import DatasetError, TrajectoryDataset

    try:  # read before anything is written; the module docstring promises inputs.json beside every command's outputs
        fingerprint = TrajectoryDataset.open(data, verify=False).fingerprint
    except DatasetError as e:
        raise ConfigError(f"data={data}: {e}") from None
    inputs = {"data": str(data.resolve()), "dataset_fingerprint": fingerprint, "checkpoint": str(ckpt.resolve()),
              "checkpoint_sha256": hashlib.sha256(ckpt.read_bytes()).hexdigest(), "ontology": str(onto.resolve()),
              "ontology_sha256": hashlib.sha256((onto / "ontology.json").read_bytes()).hexdigest()}
    pin_threads(cfg)
    out.mkdir(parents=True, exist_ok=True)
    write_config(cfg, out / "config.yaml")
    write_json(inputs, out / "inputs.json")
    result = run_verify(cfg, data, ckpt, onto, out)
    for r in result["rows"]:
        emp = "n/a" if r["empirical"] is None else f"{r['empirical']:.3f}"
        verdict = {True: "agrees", False: "DISAGREES", None: ""}[r["agrees"]]
        print(f"{r['policy']:<22} {r['property']:<26} checked {r['probability']:.3f} "
              f"[{r['lower_bound']:.3f}, {r['upper_bound']:.3f}]  real {emp}  states {r['states']}  {verdict}")
    if result.get("skipped_stage"):
        print(f"verify skipped: {result['skipped_stage']}")
    print(f"metrics.json in {out}")
    return 0
