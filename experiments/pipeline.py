"""``ontolab run``: collect -> train -> (later stages) -> report, into one run folder.

The run folder holds ``config.yaml`` (resolved), one entry per stage (a link to the stage's cached
output, see :mod:`experiments.cache`), ``summary.json`` and ``report.md``. Stages are cached under a
fingerprint of their config section and of the fingerprints of what they consume, so a rerun skips
finished stages, another probe method reuses the dataset and the model, and a changed world setting
redoes everything downstream.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from experiments.cache import StageResult, run_lock, run_stage
from experiments.config import ConfigError, to_dict
from experiments.provenance import write_config, write_json
from worlds.dataset.manifest import code_version
from experiments.schema import RunConfig


# Bump a stage's version when what it writes changes: its cached outputs are then redone.
STAGE_VERSIONS = {"data": 1, "dynamics": 2, "probes": 1, "planning": 1}


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
    """Run every stage of ``cfg`` into ``cfg.out``; finished stages are reused."""
    from experiments.report import write_report
    from experiments.stages.collect import run_collect
    from experiments.stages.plan import run_plan
    from experiments.stages.probe import run_probe
    from experiments.stages.train import run_train

    out = check_run_folder(cfg)
    cache = cache_dir(cfg)
    stages: dict[str, StageResult] = {}
    with run_lock(out):
        write_config(cfg, out / "config.yaml")
        t0 = time.perf_counter()
        data_section = {"world": to_dict(cfg.world), "data": to_dict(cfg.data), "seed": cfg.seed,
                        "version": STAGE_VERSIONS["data"]}
        if cfg.data.path:
            from worlds.dataset import TrajectoryDataset

            ds = TrajectoryDataset.open(cfg.data.path)
            stages["data"] = StageResult("data", Path(cfg.data.path), ds.fingerprint[:16], True, 0.0)
        else:
            stages["data"] = run_stage(cache, "data", data_section, {},
                                       lambda tmp: run_collect(cfg, tmp / "dataset", progress=progress))
        _link(out, "data", stages["data"].path)
        data_path = stages["data"].path if cfg.data.path else stages["data"].path / "dataset"

        dyn_section = {k: v for k, v in to_dict(cfg.dynamics).items() if k not in ("resume",)}
        stages["dynamics"] = run_stage(cache, "dynamics", {"dynamics": dyn_section, "seed": cfg.seed, "version": STAGE_VERSIONS["dynamics"]},
                                       {"data": stages["data"].fingerprint},
                                       lambda tmp: run_train(cfg, data_path, tmp, progress=progress),
                                       resumable=True, resume=cfg.dynamics.resume)
        _link(out, "dynamics", stages["dynamics"].path)

        stages["probes"] = run_stage(cache, "probes", {"probes": to_dict(cfg.probes), "seed": cfg.seed,
                                                       "version": STAGE_VERSIONS["probes"]},
                                     {"data": stages["data"].fingerprint, "dynamics": stages["dynamics"].fingerprint},
                                     lambda tmp: run_probe(cfg, data_path, stages["dynamics"].path, tmp, progress=progress))
        _link(out, "probes", stages["probes"].path)

        stages["planning"] = run_stage(cache, "planning", {"world": to_dict(cfg.world), "plan": to_dict(cfg.plan),
                                                           "seed": cfg.seed, "version": STAGE_VERSIONS["planning"]},
                                       {"dynamics": stages["dynamics"].fingerprint, "probes": stages["probes"].fingerprint},
                                       lambda tmp: run_plan(cfg, stages["dynamics"].path, stages["probes"].path, tmp,
                                                            progress=progress))
        _link(out, "planning", stages["planning"].path)

        summary = build_summary(cfg, data_path, stages, time.perf_counter() - t0)
        write_json(summary, out / "summary.json")
        write_report(cfg, summary, out)
    return RunResult(out, stages, summary)


def planning_summary(stages: dict[str, StageResult]) -> dict[str, Any]:
    """``{"planning": rows, "planning_details": {...}}`` for ``summary.json`` from ``planning/metrics.json``."""
    path = stages["planning"].path / "metrics.json" if "planning" in stages else None
    if path is None or not path.is_file():
        return {"planning": [], "planning_details": {"skipped_stage": "the planning stage did not run"}}
    m = json.loads(path.read_text())
    details = {k: m[k] for k in ("reward", "episodes", "shift", "quality_bar", "skipped", "skipped_stage") if k in m}
    return {"planning": m.get("rows", []), "planning_details": details}


def _rate(v: dict[str, Any]) -> float:
    """One number per concept: the fraction true (binary), the mean (scalar), the rarest class's frequency."""
    if v.get("kind") == "binary":
        return float(v["rate"])
    if v.get("kind") == "scalar":
        return float(v["mean"])
    return float(min((v.get("freq") or {0: 0.0}).values()))


def build_summary(cfg: RunConfig, data_path: Path, stages: dict[str, StageResult], seconds: float) -> dict[str, Any]:
    """The ``summary.json`` object (schema in the README; keys are only ever added, never renamed)."""
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
        "ontology": json.loads((stages["probes"].path / "harness.json").read_text())["ontology"],
        **planning_summary(stages),
        "timings": {name: round(s.seconds, 2) for name, s in stages.items()},
        "reused": {name: s.reused for name, s in stages.items()},
        "wall_seconds": round(seconds, 2),
        "code": code_version(),
        "fingerprints": {name: s.fingerprint for name, s in stages.items()},
    }
