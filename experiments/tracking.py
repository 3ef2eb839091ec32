"""One wandb run per ``ontolab run``: config, stage metrics, tables, plots, and artifacts by reference.

:func:`track_run` is called once at the end of the pipeline, from the finished run folder:

- ``config``: the resolved config, the stage fingerprints and the training run's wandb id;
- ``summary``: the stage metrics as scalars (data counts and base rates, validation loss, open-loop
  accuracy, each concept's chosen probe score, planning rates, timings);
- tables (``wandb.Table``): every probe row, the per-concept leaderboard with baselines, the planning rows;
- images (``wandb.Image``): the report's plots in ``<run>/plots/``;
- artifacts **by reference** (``file://`` URIs, nothing is uploaded): the dataset, the dynamics
  checkpoint and the ontology, named ``<kind>-<stage fingerprint>`` so that runs sharing a cached
  stage share the artifact.

The mode is ``cfg.wandb.mode`` (``offline`` by default; the environment variable
``WANDB_MODE=disabled`` turns logging off whatever the config says). The wandb files live in
``<run>/wandb/`` (``wandb sync <run>/wandb/offline-run-*`` uploads an offline run later). With
``online`` and a server that cannot be reached (or no API key), ``wandb.init`` fails after
``init_timeout`` seconds (``WANDB_INIT_TIMEOUT``, default :data:`INIT_TIMEOUT_S`); the run is then
logged offline instead, with a one-line warning on stderr. What happened is written to
``<run>/tracking.json`` (mode, wandb run id and folder, the fallback's reason). Everything logged
here is also in the run folder without wandb (``summary.json``, ``report.md``, ``plots/``).

The dynamics training logger (``dynamics.training.fit``) stays its own wandb run: it logs per-step
curves, lives in the cached dynamics stage (``<run>/dynamics/wandb/``), resumes with the stage and is
shared by every pipeline run that reuses that stage -- so it cannot belong to one pipeline run. Its
id is recorded here (config ``training_wandb_run_id``) and the checkpoint artifact links the two.
The two never overlap in time: training's run is finished before this one starts.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from experiments.provenance import write_json

INIT_TIMEOUT_S = 30.0
"""Seconds ``wandb.init`` may take in online mode before the run falls back to offline logging."""


@dataclass(frozen=True)
class TrackingResult:
    """How the run was logged: the mode used, the wandb run id and folder, and why online fell back."""

    mode: str
    run_id: str | None = None
    run_dir: str | None = None
    fallback: str | None = None
    logged: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def effective_mode(mode: str) -> str:
    """``mode``, unless the environment says ``WANDB_MODE=disabled``."""
    return "disabled" if os.environ.get("WANDB_MODE", "").strip().lower() == "disabled" else mode


def summary_scalars(summary: Mapping[str, Any]) -> dict[str, float]:
    """The stage metrics of ``summary.json`` as flat ``section/name`` scalars."""
    out: dict[str, float] = {}

    def put(key: str, v: Any) -> None:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[key] = float(v)

    d = summary.get("data") or {}
    put("data/episodes", d.get("episodes"))
    put("data/transitions", d.get("transitions"))
    for c, v in (d.get("base_rates") or {}).items():
        put(f"data/base_rate/{c}", v)
    dyn = summary.get("dynamics") or {}
    put("dynamics/val_loss", dyn.get("val_loss"))
    put("dynamics/transitions_per_s", dyn.get("transitions_per_s"))
    for k, v in (dyn.get("open_loop_error") or {}).items():
        put(f"dynamics/open_loop_error/k{k}", v)
    for series in ("model", "copy_last_frame"):
        for k, e in ((dyn.get("open_loop") or {}).get(series) or {}).items():
            put(f"dynamics/open_loop/{series}/k{k}", (e or {}).get("estimate"))
    rows = {(r["method"], r["site"], r["concept"], r["split"], r["metric"]): r for r in summary.get("probes") or []}
    for c, choice in (summary.get("ontology") or {}).items():
        for split in ("test", "ood", "imagined_k5"):
            for metric in ("balanced_accuracy", "r2", "selectivity"):
                r = rows.get((choice["method"], choice["site"], c, split, metric))
                if r is not None:
                    put(f"probes/{c}/{split}/{metric}", r.get("estimate"))
    for r in summary.get("planning") or []:
        name = "/".join(str(r[k]) for k in ("planner", "model", "probe_method") if r.get(k) is not None)
        for key in ("success_rate", "violation_rate", "mean_true_return"):
            put(f"planning/{name}/{key}", (r.get(key) or {}).get("estimate"))
    for stage, s in (summary.get("timings") or {}).items():
        put(f"timings/{stage}", s)
    return out


def _tables(summary: Mapping[str, Any]) -> dict[str, tuple[list[str], list[list[Any]]]]:
    """``{name: (columns, rows)}`` of the comparison tables."""
    from experiments.report import probe_leaderboard

    probe_cols = ["method", "site", "concept", "split", "metric", "estimate", "ci_low", "ci_high"]
    tables = {"probes/results": (probe_cols, [[r.get(k) for k in probe_cols] for r in summary.get("probes") or []])}
    board_cols = ["concept", "method", "site", "metric"]
    parts = ["test", "ood", "imagined_k5", "selectivity", "prior", "random_model", "observation", "history"]  # report.md's
    board = []
    for b in probe_leaderboard(dict(summary)):
        row = [b[k] for k in board_cols]
        for p in parts:
            e = b.get(p) or {}
            row += [e.get("estimate"), e.get("ci_low"), e.get("ci_high")]
        board.append(row)
    tables["probes/leaderboard"] = (board_cols + [f"{p}_{s}" for p in parts for s in ("estimate", "ci_low", "ci_high")], board)
    keys = ["planner", "model", "reward", "probe_method", "episodes"]
    rates = ["success_rate", "violation_rate", "mean_true_return", "mean_steps", "ms_per_step", "veto_rate"]
    plan = [[r.get(k) for k in keys] + [(r.get(m) or {}).get(s) for m in rates for s in ("estimate", "ci_low", "ci_high")]
            for r in summary.get("planning") or []]
    tables["planning/rows"] = (keys + [f"{m}_{s}" for m in rates for s in ("estimate", "ci_low", "ci_high")], plan)
    return {k: v for k, v in tables.items() if v[1]}


def _artifacts(run_dir: Path, summary: Mapping[str, Any]) -> list[tuple[str, str, Path, bool]]:
    """``(name, type, local path, checksum)`` of the dataset, the dynamics checkpoint and the ontology that exist.

    The dataset is referenced without checksums (it can hold gigabytes; its fingerprint is in the
    artifact's name and metadata); the checkpoint and the ontology are small and are checksummed.
    """
    fps = summary.get("fingerprints") or {}
    found = []
    for name, kind, stage, rel, checksum in (("dataset", "dataset", "data", "data", False),
                                             ("dynamics", "model", "dynamics", "dynamics/checkpoints/last.ckpt", True),
                                             ("ontology", "ontology", "probes", "probes/ontology", True)):
        p = run_dir / rel
        if p.exists():
            found.append((f"{name}-{fps.get(stage, 'local')}", kind, p.resolve(), checksum))
    return found


def _init(wandb: Any, mode: str, run_dir: Path, project: str, name: str, config: dict, timeout: float,
          job_type: str = "ontolab-run") -> Any:
    settings = wandb.Settings(init_timeout=timeout, silent=True, console="off")
    # The group is read here, not left to wandb's process-wide settings: `ontolab sweep` sets it per sweep.
    return wandb.init(project=project, name=name, dir=str(run_dir), mode=mode, config=config,
                      group=os.environ.get("WANDB_RUN_GROUP") or None, job_type=job_type,
                      reinit="create_new", settings=settings)


def open_run(wandb: Any, mode: str, folder: Path, project: str, name: str, config: dict, timeout: float, *,
             job_type: str = "ontolab-run", offline_reason: str | None = None) -> tuple[Any, str, str | None]:
    """``wandb.init`` logging into ``folder/wandb``: ``(run, mode used, why online fell back or None)``.

    ``online`` that fails (unreachable server, no API key, ...) logs offline instead, with a one-line
    warning on stderr; ``offline_reason`` (online already failed earlier) logs offline at once, silently."""
    fallback = None
    if mode == "online" and offline_reason:
        mode, fallback = "offline", offline_reason
    try:
        return _init(wandb, mode, folder, project, name, config, timeout, job_type), mode, fallback
    except wandb.errors.Error as e:  # unreachable server, no API key, ...: keep the results, log them offline
        if mode != "online":
            raise
        fallback = " ".join(str(e).split())[:300]
        print(f"ontolab: warning: wandb online logging failed ({fallback[:160]}); logging offline to "
              f"{folder / 'wandb'} instead (`wandb sync` it later)", file=sys.stderr)
        return _init(wandb, "offline", folder, project, name, config, timeout, job_type), "offline", fallback


def track(mode: str, folder: Path, project: str, name: str, config: Mapping[str, Any],
          log: Callable[[Any, Any], list[str]], *, init_timeout: float | None = None, job_type: str = "ontolab-run",
          offline_reason: str | None = None) -> TrackingResult:
    """One wandb run logging into ``folder/wandb``; writes ``folder/tracking.json`` and returns the result.

    ``mode`` (``effective_mode``) ``disabled`` logs nothing; otherwise :func:`open_run` starts the run (online falls
    back to offline), ``log(wandb, run)`` logs and returns what it logged, and the run is finished with exit code 0,
    or 1 when ``log`` raised (the error propagates)."""
    mode = effective_mode(mode)
    if mode == "disabled":
        result = TrackingResult("disabled")
        write_json(result.to_dict(), folder / "tracking.json")
        return result
    os.environ.setdefault("WANDB_SILENT", "true")
    import wandb

    timeout = float(init_timeout if init_timeout is not None else os.environ.get("WANDB_INIT_TIMEOUT", INIT_TIMEOUT_S))
    run, mode, fallback = open_run(wandb, mode, folder, project, name, dict(config), timeout, job_type=job_type,
                                   offline_reason=offline_reason)
    status = 1
    try:
        logged = log(wandb, run)
        status = 0
    finally:
        run.finish(exit_code=status)
    result = TrackingResult(mode, run.id, str(Path(run.dir).parent) if getattr(run, "dir", None) else None,
                            fallback, tuple(logged))
    write_json(result.to_dict(), folder / "tracking.json")
    return result


def track_run(cfg: Any, summary: Mapping[str, Any], run_dir: str | Path, *, plots: Mapping[str, Any] | None = None,
              init_timeout: float | None = None, offline_reason: str | None = None) -> TrackingResult:
    """Log the finished run folder ``run_dir`` to one wandb run (see the module docstring); writes ``tracking.json``.

    ``cfg``: the resolved ``RunConfig``; ``plots``: ``{name: PNG path or skip reason}`` (default: the
    PNGs in ``run_dir/plots``). Raises only what the offline logger itself raises; an unreachable
    server in online mode falls back to offline logging. ``offline_reason``: online logging already
    failed earlier in this run (say, for the training logger): log offline at once, without a second warning.
    """
    from experiments.config import to_dict

    run_dir = Path(run_dir)
    train_run = run_dir / "dynamics" / "run.json"
    config = {**to_dict(cfg), "fingerprints": dict(summary.get("fingerprints") or {}),
              "training_wandb_run_id": json.loads(train_run.read_text()).get("wandb_run_id") if train_run.is_file() else None,
              "run_dir": str(run_dir.resolve())}

    def log(wandb: Any, run: Any) -> list[str]:
        logged = []
        run.summary.update(summary_scalars(summary))
        logged.append("summary")
        tables = {k: wandb.Table(columns=cols, data=rows) for k, (cols, rows) in _tables(summary).items()}
        if tables:
            run.log(tables)
            logged += [f"table:{k}" for k in tables]
        pngs = {k: Path(v) for k, v in (plots or {}).items() if isinstance(v, Path) and Path(v).is_file()} if plots is not None \
            else {p.stem: p for p in sorted((run_dir / "plots").glob("*.png"))}
        if pngs:
            run.log({f"plots/{k}": wandb.Image(str(p), caption=k) for k, p in pngs.items()})
            logged += [f"image:{k}" for k in pngs]
        for art_name, kind, path, checksum in _artifacts(run_dir, summary):
            art = wandb.Artifact(art_name, type=kind, metadata={"path": str(path), "run_dir": str(run_dir.resolve())})
            art.add_reference(path.as_uri(), checksum=checksum)
            run.log_artifact(art)
            logged.append(f"artifact:{art_name}")
        return logged

    return track(cfg.wandb.mode, run_dir, cfg.wandb.project, run_dir.resolve().name, config, log,
                 init_timeout=init_timeout, offline_reason=offline_reason)
