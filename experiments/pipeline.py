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
        section = {**section, "seed": cfg.seed, "version": STAGE_VERSIONS[name],
                   "code": code_fingerprint(STAGE_MODULES[name])}
        stages[name] = run_stage(cache, name, section, inputs, build, **kwargs)
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
            stage("data", {"world": to_dict(cfg.world), "data": to_dict(cfg.data)}, {},
                  lambda tmp: run_collect(cfg, tmp / "dataset", progress=progress))
            data_path = stages["data"].path / "dataset"

        dyn_section = {k: v for k, v in to_dict(cfg.dynamics).items() if k not in ("resume",)}
        # the model's full hyperparameters, defaults included: a changed default retrains instead of reusing
        dyn_section["resolved_hparams"] = dataclasses.asdict(model_config(cfg.dynamics.model, **cfg.dynamics.hparams))
        stage("dynamics", {"dynamics": dyn_section}, {"data": stages["data"].fingerprint},
              lambda tmp: train_with_fallback(cfg, data_path, tmp, progress, notes),
              resumable=True, resume=cfg.dynamics.resume)
        stage("probes", {"probes": to_dict(cfg.probes)},
              {"data": stages["data"].fingerprint, "dynamics": stages["dynamics"].fingerprint},
              lambda tmp: run_probe(cfg, data_path, stages["dynamics"].path, tmp, progress=progress))
        stage("planning", {"world": to_dict(cfg.world), "plan": to_dict(cfg.plan)},
              {"dynamics": stages["dynamics"].fingerprint, "probes": stages["probes"].fingerprint},
              lambda tmp: run_plan(cfg, stages["dynamics"].path, stages["probes"].path, tmp, progress=progress))
        # verify reads the planner's settings (its policy is the planner), so plan is in its key
        stage("verify", {"world": to_dict(cfg.world), "verify": to_dict(cfg.verify), "plan": to_dict(cfg.plan)},
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
