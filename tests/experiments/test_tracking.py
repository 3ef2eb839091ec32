"""One wandb run per `ontolab run`: offline by default, disabled on request, artifacts by reference, never fatal."""

from __future__ import annotations

import json

import pytest

from experiments.pipeline import log_run
from experiments.plots import plot_planning
from experiments.schema import resolve
from experiments.tracking import TrackingResult, summary_scalars, track_run

TRAINING_ID = "abcd1234"


def est(v, half=0.1):
    return {"estimate": v, "ci_low": v - half, "ci_high": v + half}


def probe(method, site, concept, split, metric, v):
    return {"method": method, "site": site, "concept": concept, "split": split, "metric": metric, **est(v)}


SUMMARY = {
    "world": "lavakeydoor", "seed": 0,
    "data": {"episodes": 48, "transitions": 900, "base_rates": {"has_key": 0.25, "steps_to_goal": 7.5}},
    "dynamics": {"model": "rssm", "val_loss": 1.5, "open_loop_error": {"1": 0.1, "5": 0.2},
                 "open_loop": {"model": {"1": est(0.9), "5": est(0.8)}, "copy_last_frame": {"1": est(0.85), "5": est(0.7)}}},
    "probes": [probe("linear", "deter", "has_key", "test", "balanced_accuracy", 0.91),
               probe("linear", "deter", "has_key", "test", "selectivity", 0.3),
               probe("prior", "deter", "has_key", "test", "balanced_accuracy", 0.5),
               probe("random_model", "deter", "has_key", "test", "balanced_accuracy", 0.6),
               probe("mlp", "feat", "steps_to_goal", "test", "r2", 0.7),
               probe("mlp", "feat", "steps_to_goal", "ood", "r2", 0.4)],
    "ontology": {"has_key": {"method": "linear", "site": "deter"}, "steps_to_goal": {"method": "mlp", "site": "feat"}},
    "planning": [{"planner": "cem", "model": "learned", "reward": "latent", "probe_method": "linear", "episodes": 4,
                  "success_rate": est(0.5, 0.3), "violation_rate": est(0.25, 0.2), "mean_true_return": est(-1.0),
                  "mean_steps": est(20.0), "ms_per_step": est(3.0)},
                 {"planner": "random", "model": None, "reward": None, "probe_method": None, "episodes": 4,
                  "success_rate": est(0.0, 0.0), "violation_rate": est(0.75, 0.2), "mean_true_return": est(-2.0),
                  "mean_steps": est(30.0), "ms_per_step": est(0.1)}],
    "timings": {"data": 1.0, "dynamics": 2.0},
    "fingerprints": {"data": "d" * 16, "dynamics": "e" * 16, "probes": "f" * 16},
}


@pytest.fixture
def wandb_home(tmp_path, monkeypatch):
    """Keep wandb's own folders (settings, cache, artifact staging) inside the test folder."""
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home" / var.lower()))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    return tmp_path / "wandb-home"


def run_folder(tmp_path):
    """A finished-looking run folder: summary, a plot, and the three things logged as artifacts."""
    run = tmp_path / "run"
    (run / "data" / "dataset").mkdir(parents=True)
    (run / "data" / "dataset" / "manifest.json").write_text("{}")
    (run / "dynamics" / "checkpoints").mkdir(parents=True)
    (run / "dynamics" / "checkpoints" / "last.ckpt").write_bytes(b"checkpoint-bytes-" * 4096)
    (run / "dynamics" / "run.json").write_text(json.dumps({"wandb_run_id": TRAINING_ID}))
    (run / "probes" / "ontology").mkdir(parents=True)
    (run / "probes" / "ontology" / "ontology.json").write_text("{}")
    (run / "summary.json").write_text(json.dumps(SUMMARY))
    plot_planning(SUMMARY["planning"], run / "plots" / "planning.png")
    return run


def cfg(run, mode):
    return resolve([f"out={run}", f"wandb.mode={mode}", "wandb.project=ontolab-test"])


def test_summary_scalars_flatten_the_stage_metrics():
    s = summary_scalars(SUMMARY)
    assert s["data/episodes"] == 48 and s["data/base_rate/steps_to_goal"] == 7.5
    assert s["dynamics/val_loss"] == 1.5 and s["dynamics/open_loop_error/k5"] == 0.2
    assert s["dynamics/open_loop/copy_last_frame/k1"] == 0.85
    assert s["probes/has_key/test/balanced_accuracy"] == 0.91  # the ontology's choice (linear @ deter)
    assert s["probes/has_key/test/selectivity"] == 0.3
    assert s["probes/steps_to_goal/ood/r2"] == 0.4
    assert not any("random_model" in k or "prior" in k for k in s)  # baselines go to the tables
    assert s["planning/cem/learned/linear/success_rate"] == 0.5 and s["planning/random/violation_rate"] == 0.75
    assert s["timings/dynamics"] == 2.0


def test_offline_run_logs_tables_images_and_artifacts_by_reference(tmp_path, wandb_home):
    run = run_folder(tmp_path)
    result = track_run(cfg(run, "offline"), SUMMARY, run)
    assert result.mode == "offline" and result.fallback is None and result.run_id
    assert json.loads((run / "tracking.json").read_text()) == json.loads(json.dumps(result.to_dict()))
    assert {"summary", "table:probes/results", "table:probes/leaderboard", "table:planning/rows", "image:planning",
            f"artifact:dataset-{'d' * 16}", f"artifact:dynamics-{'e' * 16}", f"artifact:ontology-{'f' * 16}"} <= set(result.logged)
    [wandb_dir] = list((run / "wandb").glob(f"offline-run-*-{result.run_id}"))
    tables = {p.name.split("_")[0]: json.loads(p.read_text()) for p in (wandb_dir / "files" / "media" / "table").rglob("*.table.json")}
    assert len(tables["results"]["data"]) == len(SUMMARY["probes"])
    assert len(tables["rows"]["data"]) == len(SUMMARY["planning"])
    assert [r[0] for r in tables["leaderboard"]["data"]] == ["has_key", "steps_to_goal"]
    assert list((wandb_dir / "files" / "media" / "images").rglob("planning*.png"))
    # by reference: the run's log names file:// URIs, and no copy of the checkpoint is staged anywhere
    log = next(wandb_dir.glob("run-*.wandb")).read_bytes()
    ckpt = (run / "dynamics" / "checkpoints" / "last.ckpt").resolve()
    assert ckpt.as_uri().encode() in log
    assert (run / "data").resolve().as_uri().encode() in log
    blob = ckpt.read_bytes()
    staged = [p for root in (run / "wandb", wandb_home) if root.exists() for p in root.rglob("*")
              if p.is_file() and p.stat().st_size == len(blob) and p.read_bytes() == blob]
    assert not staged, staged
    assert TRAINING_ID.encode() in log  # the training run's id is in the config


@pytest.mark.parametrize("how", ["config", "env"])
def test_disabled_logs_nothing(tmp_path, wandb_home, monkeypatch, how):
    run = run_folder(tmp_path)
    if how == "env":
        monkeypatch.setenv("WANDB_MODE", "disabled")
    result = track_run(cfg(run, "disabled" if how == "config" else "offline"), SUMMARY, run)
    assert result == TrackingResult("disabled")
    assert not (run / "wandb").exists()
    assert json.loads((run / "tracking.json").read_text())["mode"] == "disabled"


def test_a_failure_to_log_never_loses_the_run(tmp_path, monkeypatch, capsys):
    import experiments.tracking as tracking

    def broken(*args, **kwargs):
        raise RuntimeError("disk quota exceeded")

    monkeypatch.setattr(tracking, "track_run", broken)
    record = log_run(cfg(tmp_path / "run", "offline"), SUMMARY, tmp_path / "run")
    assert record == {"mode": "offline", "error": "RuntimeError: disk quota exceeded"}
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ontolab: warning: wandb logging failed (RuntimeError: disk quota exceeded)")
