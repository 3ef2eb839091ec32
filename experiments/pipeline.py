"""``ontolab run``: collect -> train -> (later stages) -> report, into one run folder.

The run folder holds ``config.yaml`` (resolved), one entry per stage (a link to the stage's cached
output, see :mod:`experiments.cache`), ``summary.json``, ``report.md`` with its ``plots/``, and
``tracking.json`` beside the run's wandb files in ``wandb/`` (see :mod:`experiments.tracking`).
Stages are cached under a fingerprint of their config section, of the code they run and of the
fingerprints of what they consume, so a rerun skips finished stages, another probe method reuses the
dataset and the model, a changed world setting redoes everything downstream, and so does a change to
a stage's code (an edit in ``probes/`` redoes the probe stage on, never the dataset or the model).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dynamics.registry import model_config
from experiments.cache import StageResult, run_lock, run_stage
from experiments.code_fingerprint import code_fingerprint
from experiments.config import ConfigError, to_dict
from experiments.provenance import write_config, write_json
from worlds.dataset.manifest import code_version
from experiments.schema import RunConfig


# Bump a stage's version when what it writes changes: its cached outputs are then redone. (A change to the
# code a stage runs redoes it anyway: its code fingerprint is in the key, see STAGE_MODULES.)
STAGE_VERSIONS = {"data": 1, "dynamics": 3, "probes": 2, "planning": 1, "verify": 1}

STAGE_MODULES = {"data": "experiments.stages.collect", "dynamics": "experiments.stages.train",
                 "probes": "experiments.stages.probe", "planning": "experiments.stages.plan",
                 "verify": "experiments.stages.verify"}
"""The module each stage runs: the fingerprint of its import closure (:mod:`experiments.code_fingerprint`)
is part of the stage's cache key, so editing e.g. ``probes/`` redoes the probe stage and those after it,
and reuses the dataset and the trained model."""


@dataclass(frozen=True)
class RunResult:
    out: Path
    stages: dict[str, StageResult]
    summary: dict[str, Any]
    worker: bool = False
    """True in a DDP helper process (:func:`run_training_worker`): it only helped train; no summary."""


def cache_dir(cfg: RunConfig) -> Path:
    return Path(cfg.cache_dir) if cfg.cache_dir else Path(cfg.out).parent / "cache"


def check_run_folder(cfg: RunConfig) -> Path:
    """Refuse an ``out`` that is a file, or a run folder that holds a different config (before any work)."""
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out={cfg.out!r} is a file; give a folder for the run")
    old = out / "config.yaml"
    if old.is_file():
        try:
            previous = yaml.safe_load(old.read_text())
        except yaml.YAMLError:
            previous = None
        current = _comparable(to_dict(cfg))
        if previous is not None and _comparable(previous) != current:
            diff = [k for k in sorted(set(current) | set(previous or {})) if current.get(k) != (previous or {}).get(k)]
            raise ConfigError(f"run folder {cfg.out!r} holds a run with a different config (differs in: "
                              f"{', '.join(diff)}); choose another out= or delete the folder")
    return out


def _comparable(d: dict[str, Any]) -> dict[str, Any]:
    """A config without the keys that do not change results (resume flags)."""
    d = dict(d or {})
    dyn = dict(d.get("dynamics", {}) or {})
    dyn.pop("resume", None)
    d["dynamics"] = dyn
    return d


def _link(run_dir: Path, name: str, target: Path) -> None:
    """``run_dir/name`` -> ``target`` (a relative symlink), replaced atomically."""
    link = run_dir / name
    tmp = run_dir / f".{name}.link-{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(os.path.relpath(target.resolve(), run_dir.resolve()), tmp)
    os.replace(tmp, link)


def stage_key(cfg: RunConfig, name: str, section: dict[str, Any]) -> dict[str, Any]:
    """The config part of stage ``name``'s cache key: its section, the seed, its version and its code."""
    return {**section, "seed": cfg.seed, "version": STAGE_VERSIONS[name], "code": code_fingerprint(STAGE_MODULES[name])}


def data_section(cfg: RunConfig) -> dict[str, Any]:
    return {"world": to_dict(cfg.world), "data": to_dict(cfg.data)}


def dynamics_section(cfg: RunConfig) -> dict[str, Any]:
    dyn = {k: v for k, v in to_dict(cfg.dynamics).items() if k not in ("resume",)}
    # the model's full hyperparameters, defaults included: a changed default retrains instead of reusing
    dyn["resolved_hparams"] = dataclasses.asdict(model_config(cfg.dynamics.model, **cfg.dynamics.hparams))
    return {"dynamics": dyn}


def run_pipeline(cfg: RunConfig, *, progress: bool = True) -> RunResult:
    """Run every stage of ``cfg`` into ``cfg.out``; finished stages are reused.

    Each stage is one ``stage(name, section, inputs, build)`` call below: its cache key is its config
    section (plus seed, :data:`STAGE_VERSIONS` entry and the fingerprint of the code it runs,
    :data:`STAGE_MODULES`) and the fingerprints of the stages it reads.
    A new stage is one more call (and a version entry); :func:`finish_run` then writes the summary,
    the report with its plots, and the wandb run.
    """
    from experiments.stages.collect import run_collect
    from experiments.stages.plan import run_plan
    from experiments.stages.probe import run_probe
    from experiments.stages.verify import run_verify

    if launched_rank() > 0:  # a DDP process that Lightning (or torchrun / srun) started to help train
        return run_training_worker(cfg)
    out = check_run_folder(cfg)
    given_data = None
    if cfg.data.path:  # a damaged or missing dataset is refused before the run folder is touched
        from worlds.dataset import TrajectoryDataset

        given_data = TrajectoryDataset.open(cfg.data.path)
    cache = cache_dir(cfg)
    stages: dict[str, StageResult] = {}
    notes: dict[str, Any] = {}  # what a stage tells the end of the run (e.g. that wandb is unreachable)

    def stage(name: str, section: dict[str, Any], inputs: dict[str, str], build, **kwargs: Any) -> StageResult:
        """Run (or reuse) stage ``name`` and link it into the run folder."""
        stages[name] = run_stage(cache, name, stage_key(cfg, name, section), inputs, build, **kwargs)
        _link(out, name, stages[name].path)
        return stages[name]

    with run_lock(out):
        write_config(cfg, out / "config.yaml")
        t0 = time.perf_counter()
        if given_data is not None:
            stages["data"] = StageResult("data", Path(cfg.data.path), given_data.fingerprint[:16], True, 0.0)
            _link(out, "data", stages["data"].path)
            data_path = Path(cfg.data.path)
        else:
            stage("data", data_section(cfg), {}, lambda tmp: run_collect(cfg, tmp / "dataset", progress=progress))
            data_path = stages["data"].path / "dataset"

        stage("dynamics", dynamics_section(cfg), {"data": stages["data"].fingerprint},
              lambda tmp: train_with_fallback(cfg, data_path, tmp, progress, notes),
              resumable=True, resume=cfg.dynamics.resume)
        # the imagined fit's horizon defaults to the planner's (experiments/stages/probe.py): in the key too
        stage("probes", {"probes": to_dict(cfg.probes),
                         "imagined_horizon": cfg.probes.imagined_horizon or cfg.plan.horizon},
              {"data": stages["data"].fingerprint, "dynamics": stages["dynamics"].fingerprint},
              lambda tmp: run_probe(cfg, data_path, stages["dynamics"].path, tmp, progress=progress))
        stage("planning", {"world": to_dict(cfg.world), "plan": to_dict(cfg.plan)},
              {"dynamics": stages["dynamics"].fingerprint, "probes": stages["probes"].fingerprint},
              lambda tmp: run_plan(cfg, stages["dynamics"].path, stages["probes"].path, tmp, progress=progress))
        # verify reads the planner's settings (its policy is the planner), so plan is in its key
        # with the world's default recipe filled in (verify_config.VERIFY_DEFAULTS is config, not walked by the code key)
        stage("verify", {"world": to_dict(cfg.world), "verify": to_dict(cfg.verify.for_world(cfg.world.name)),
                         "plan": to_dict(cfg.plan)},
              {"data": stages["data"].fingerprint, "dynamics": stages["dynamics"].fingerprint,
               "probes": stages["probes"].fingerprint},
              lambda tmp: run_verify(cfg, data_path, stages["dynamics"].path, stages["probes"].path, tmp,
                                     progress=progress))

        summary = finish_run(cfg, out, data_path, stages, time.perf_counter() - t0,
                             offline_reason=notes.get("wandb_offline_reason"))
    return RunResult(out, stages, summary)


def train_with_fallback(cfg: RunConfig, data_path: Path, tmp: Path, progress: bool, notes: dict[str, Any]) -> Any:
    """The train stage; with ``wandb.mode=online`` and wandb unreachable, trained again with offline logging.

    The training logger fails when training starts (after ``init_timeout``), before any step, so the
    stage's folder is emptied and training starts over with an offline logger; the reason goes to
    ``notes["wandb_offline_reason"]`` so that the run's own wandb run goes offline without waiting again.
    """
    from experiments.stages.train import run_train

    try:
        return run_train(cfg, data_path, tmp, progress=progress)
    except Exception as e:  # noqa: BLE001 -- re-raised below unless it is wandb failing to go online
        if cfg.wandb.mode != "online" or not _is_wandb_error(e):
            raise
        reason = " ".join(str(e).split())[:300]
    print(f"ontolab: warning: wandb online logging failed ({reason[:160]}); logging offline instead "
          "(`wandb sync` the run's wandb folders later)", file=sys.stderr)
    notes["wandb_offline_reason"] = reason
    for child in tmp.iterdir():  # the stage's own partial folder: start it over
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
    offline = dataclasses.replace(cfg, wandb=dataclasses.replace(cfg.wandb, mode="offline"))
    return run_train(offline, data_path, tmp, progress=progress)


RANK_VARIABLES = ("RANK", "SLURM_PROCID", "NODE_RANK", "LOCAL_RANK")
"""Where launchers put a process's rank: torchrun (RANK), srun (SLURM_PROCID), Lightning's own launcher of the
other processes on a node (LOCAL_RANK, NODE_RANK)."""


def launched_rank() -> int:
    """0 for the process a user started; > 0 for a process a DDP launcher started to help train (from the
    environment, read before anything is done: torchrun's ``RANK``, srun's ``SLURM_PROCID``, Lightning's
    ``NODE_RANK`` / ``LOCAL_RANK``). A malformed value counts as 0."""
    if "RANK" in os.environ or "SLURM_PROCID" in os.environ:
        name = "RANK" if "RANK" in os.environ else "SLURM_PROCID"
        return int(os.environ[name]) if os.environ[name].strip().isdigit() else 0
    ranks = [os.environ.get(k, "0").strip() for k in ("NODE_RANK", "LOCAL_RANK")]
    return sum(int(r) for r in ranks if r.isdigit())


def run_training_worker(cfg: RunConfig, *, poll_s: float = 0.5, timeout_s: float = 3600.0) -> RunResult:
    """What ``ontolab run`` does in a DDP process of rank > 0: train with rank 0, then stop.

    Lightning's DDP launcher starts the other processes by running the same command again (torchrun and srun
    start every process at once); each would otherwise run the whole pipeline -- take the run-folder lock
    (refused: rank 0 holds it), collect, and after training evaluate, probe and plan a second time. Here the
    process takes no lock and writes nothing: it waits for rank 0's finished data stage, finds the dynamics
    stage's folder under the same cache key, and trains in it as one more DDP process (Lightning lets only
    rank 0 write). If the model is already cached, rank 0 trains nothing and this process has nothing to do.
    """
    from experiments.cache import MARKER, stage_fingerprint
    from experiments.stages.train import run_train

    cache = cache_dir(cfg)
    started = time.time()
    if cfg.data.path:
        from worlds.dataset import TrajectoryDataset

        data_path, data_fp = Path(cfg.data.path), TrajectoryDataset.open(cfg.data.path).fingerprint[:16]
    else:
        data_fp = stage_fingerprint("data", stage_key(cfg, "data", data_section(cfg)), {})
        _wait_for(lambda: (cache / "data" / data_fp / MARKER).is_file(), "the data stage", poll_s, timeout_s)
        data_path = cache / "data" / data_fp / "dataset"
    dyn_fp = stage_fingerprint("dynamics", stage_key(cfg, "dynamics", dynamics_section(cfg)), {"data": data_fp})
    final, partial = cache / "dynamics" / dyn_fp, cache / "dynamics" / f".{dyn_fp}.partial"
    # Lightning's launcher starts this process from rank 0's trainer.fit, after rank 0 wrote run.json; torchrun /
    # srun start it with rank 0, so a run.json older than this process is a killed run's leftover, not rank 0's
    external = "RANK" in os.environ or "SLURM_PROCID" in os.environ

    def ready() -> bool:
        run_json = partial / "run.json"
        return (final / MARKER).is_file() or (run_json.is_file() and (not external or run_json.stat().st_mtime >= started - 2))

    _wait_for(ready, "rank 0 to start training", poll_s, timeout_s)
    if not (final / MARKER).is_file():
        run_train(cfg, data_path, partial, progress=False)
    return RunResult(Path(cfg.out), {}, {}, worker=True)


def _wait_for(done, what: str, poll_s: float, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            raise ConfigError(f"DDP process of rank {launched_rank()} waited {timeout_s:.0f} s for {what} of rank 0 "
                              "in vain; is rank 0 running with the same config and cache_dir?")
        time.sleep(poll_s)


def _is_wandb_error(e: BaseException) -> bool:
    import wandb

    return isinstance(e, wandb.errors.Error)


def finish_run(cfg: RunConfig, out: Path, data_path: Path, stages: dict[str, StageResult], seconds: float,
               *, offline_reason: str | None = None) -> dict[str, Any]:
    """``summary.json``, ``report.md`` with ``plots/``, then the wandb run; returns the summary.

    Logging comes last and cannot lose the run: everything it logs is already in the run folder, and
    a failure to log is a one-line warning (recorded in ``summary.json`` under ``wandb``).
    """
    from experiments.report import write_report

    summary = build_summary(cfg, data_path, stages, seconds)
    write_json(summary, out / "summary.json")
    write_report(cfg, summary, out)
    summary["wandb"] = log_run(cfg, summary, out, offline_reason=offline_reason)
    write_json(summary, out / "summary.json")
    return summary


def log_run(cfg: RunConfig, summary: dict[str, Any], out: Path, *, offline_reason: str | None = None) -> dict[str, Any]:
    """:func:`experiments.tracking.track_run`, with any failure turned into a warning and a record."""
    from experiments.tracking import track_run

    try:
        return track_run(cfg, summary, out, offline_reason=offline_reason).to_dict()
    except Exception as e:  # noqa: BLE001 -- deliberate: logging is optional, the run folder is the record
        msg = " ".join(f"{type(e).__name__}: {e}".split())[:300]
        print(f"ontolab: warning: wandb logging failed ({msg}); the run folder {out} holds every result", file=sys.stderr)
        return {"mode": cfg.wandb.mode, "error": msg}


def planning_summary(stages: dict[str, StageResult]) -> dict[str, Any]:
    """``{"planning": rows, "planning_details": {...}}`` for ``summary.json`` from ``planning/metrics.json``."""
    path = stages["planning"].path / "metrics.json" if "planning" in stages else None
    if path is None or not path.is_file():
        return {"planning": [], "planning_details": {"skipped_stage": "the planning stage did not run"}}
    m = json.loads(path.read_text())
    details = {k: m[k] for k in ("reward", "episodes", "shift", "quality_bar", "skipped", "skipped_stage",
                                         "overoptimisation", "reward_eval") if k in m}
    return {"planning": m.get("rows", []), "planning_details": details}


def _rate(v: dict[str, Any]) -> float:
    """One number per concept: the fraction true (binary), the mean (scalar), the rarest class's frequency."""
    if v.get("kind") == "binary":
        return float(v["rate"])
    if v.get("kind") == "scalar":
        return float(v["mean"])
    return float(min((v.get("freq") or {0: 0.0}).values()))


def verify_rows(stages: dict[str, StageResult]) -> list[dict[str, Any]]:
    """``summary.json``'s ``verify`` rows (property, policy, probability, upper_bound, empirical, states)."""
    from experiments.stages.verify import verify_summary

    return verify_summary(stages["verify"].path) if "verify" in stages else []


def build_summary(cfg: RunConfig, data_path: Path, stages: dict[str, StageResult], seconds: float) -> dict[str, Any]:
    """The ``summary.json`` object (schema in the README; keys are only ever added, never renamed)."""
    from experiments.stages.by_checkpoint import read_by_checkpoint_csv
    from probes.results import read_results_csv
    from worlds.dataset import TrajectoryDataset

    ds = TrajectoryDataset.open(data_path, verify=False)
    man = ds.manifest
    metrics = json.loads((stages["dynamics"].path / "metrics.json").read_text())
    return {
        "world": cfg.world.name,
        "seed": cfg.seed,
        "data": {
            "episodes": int(man["counts"]["episodes"]),
            "transitions": int(ds.num_transitions),
            "base_rates": {k: _rate(v) for k, v in ds.base_rates("in_distribution").items()},
            "base_rate_details": ds.base_rates("in_distribution"),
        },
        "dynamics": {
            "model": cfg.dynamics.model,
            "val_loss": metrics.get("val_loss"),
            "open_loop_error": {str(k): v for k, v in sorted((metrics.get("open_loop") or {}).items(), key=lambda kv: int(kv[0]))},
            "open_loop": json.loads((stages["dynamics"].path / "open_loop.json").read_text()),
            "train_seconds": metrics.get("train_seconds"),
            "transitions_per_s": metrics.get("transitions_per_s"),
            "steps": metrics.get("steps"),
        },
        "probes": [r.to_dict() for r in read_results_csv(stages["probes"].path / "results.csv")],
        "probes_by_checkpoint": read_by_checkpoint_csv(stages["probes"].path / "by_checkpoint.csv"),
        "ontology": json.loads((stages["probes"].path / "harness.json").read_text())["ontology"],
        **planning_summary(stages),
        "verify": verify_rows(stages),
        "timings": {name: round(s.seconds, 2) for name, s in stages.items()},
        "reused": {name: s.reused for name, s in stages.items()},
        "wall_seconds": round(seconds, 2),
        "code": code_version(),
        "fingerprints": {name: s.fingerprint for name, s in stages.items()},
    }
