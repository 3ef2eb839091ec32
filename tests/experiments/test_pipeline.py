"""`ontolab run` end to end on a tiny budget: the run folder, summary.json, stage caching.

The lock, a refused run folder and interrupted runs are tested in ``tests/reliability/test_run_faults.py``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.pipeline import run_pipeline
from experiments.schema import resolve

ONTOLAB = str(Path(sys.executable).parent / "ontolab")
TINY = ["data.episodes=40", "data.ood_episodes=8", "data.num_envs=8", "dynamics.max_steps=6",
        "dynamics.val_every=3", "dynamics.batch_size=4", "dynamics.window=16", "wandb.mode=disabled",
        "dynamics.hparams.deter=32", "dynamics.hparams.hidden=32", "dynamics.hparams.embed=32",
        "dynamics.hparams.stoch=4", "dynamics.hparams.classes=4", "probes.methods=[linear,sparse]",
        "probes.n_boot=50", "probes.mdl=false", "probes.max_train_rows=500", "probes.sites=[deter,feat]"]

TINY_PLAN_VERIFY = ["threads=1", "plan.episodes=4", "plan.num_envs=4", "plan.overopt_episodes=2",
                    "plan.overopt_best_of=[1,4]", "plan.overopt_cem_samples=[8]", "plan.overopt_cem_iterations=[1]",
                    "verify.rollouts=100", "verify.real_episodes=40", "verify.planner_rollouts=2",
                    "verify.planner_episodes=2", "verify.boundary_starts=2", "verify.n_boot=50"]


def tiny(tmp_path: Path, *extra: str):
    return resolve([f"out={tmp_path / 'run'}", f"cache_dir={tmp_path / 'cache'}", *TINY, *extra])


@pytest.mark.slow
def test_quickstart_command_end_to_end(tmp_path):
    env = dict(os.environ, WANDB_MODE="offline")
    r = subprocess.run([ONTOLAB, "quickstart", f"out={tmp_path / 'run'}", *TINY, *TINY_PLAN_VERIFY], cwd=tmp_path,
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "report:" in r.stdout
    run = tmp_path / "run"
    for name in ("config.yaml", "summary.json", "report.md", "data", "dynamics", "probes/results.csv", "probes/ontology"):
        assert (run / name).exists(), name
    s = json.loads((run / "summary.json").read_text())
    assert s["world"] == "lavakeydoor" and s["seed"] == 0
    assert s["data"]["episodes"] == 48 and s["data"]["transitions"] > 0
    assert set(s["data"]["base_rates"]) >= {"has_key", "in_lava", "steps_to_goal"}
    assert all(isinstance(v, float) for v in s["data"]["base_rates"].values())
    assert s["dynamics"]["model"] == "rssm" and isinstance(s["dynamics"]["val_loss"], float)
    assert set(s["dynamics"]["open_loop_error"]) == {"1", "5", "15"}
    assert set(s["timings"]) >= {"data", "dynamics", "probes", "planning"}
    plan = {(r["planner"], r["model"], r["reward"]) for r in s["planning"]}
    assert {("discrete_cem", "learned", "latent"), ("discrete_cem", "oracle", "true"),
            ("random", None, None), ("oracle", None, None)} <= plan
    for r in s["planning"]:
        assert {"planner", "model", "reward", "probe_method", "episodes", "success_rate", "violation_rate",
                "mean_true_return", "ms_per_step"} <= set(r)
    rows = s["probes"]
    assert {r["method"] for r in rows} >= {"linear", "sparse", "prior", "random_model", "observation"}
    assert {r["split"] for r in rows} >= {"test", "ood"}
    assert {"balanced_accuracy", "r2", "selectivity"} <= {r["metric"] for r in rows}
    for r in rows:
        assert set(r) == {"method", "site", "concept", "split", "metric", "estimate", "ci_low", "ci_high"}
    assert set(s["ontology"]) == set(s["data"]["base_rates"]) - set(
        json.loads((run / "probes" / "harness.json").read_text())["skipped"])
    for choice in s["ontology"].values():
        assert set(choice) == {"method", "site"} and choice["site"] in ("deter", "feat")
    report = (run / "report.md").read_text()
    assert "## Dynamics" in report and "## Probes" in report and "## Planning" in report
    assert "## Over-optimisation" in report and "## Verification" in report
    assert (run / "planning" / "overoptimisation.png").is_file() and (run / "verify" / "metrics.json").is_file()
    assert {r["policy"] for r in s["verify"]} >= {"uniform"}
    for r in s["verify"]:
        assert {"property", "policy", "probability", "upper_bound", "empirical", "states"} <= set(r)
        assert r["probability"] is None or r["probability"] <= r["upper_bound"] + 1e-9
    assert (run / "plots").is_dir()


@pytest.mark.slow
def test_stages_are_cached_and_invalidated(tmp_path, monkeypatch):
    first = run_pipeline(tiny(tmp_path), progress=False)
    assert not any(s.reused for s in first.stages.values())
    again = run_pipeline(tiny(tmp_path), progress=False)
    assert all(s.reused for s in again.stages.values())
    assert again.summary["data"] == first.summary["data"]

    # another training setting reuses the dataset and retrains the model (into a new run folder)
    other = run_pipeline(tiny(tmp_path / "b", f"cache_dir={tmp_path / 'cache'}", "dynamics.lr=0.002"), progress=False)
    assert other.stages["data"].reused and not other.stages["dynamics"].reused
    # a changed world setting redoes everything downstream
    world = run_pipeline(tiny(tmp_path / "c", f"cache_dir={tmp_path / 'cache'}", "world.size=11"), progress=False)
    assert not any(s.reused for s in world.stages.values())
    # another probe method reuses the dataset and the model
    probe = run_pipeline(tiny(tmp_path / "d", f"cache_dir={tmp_path / 'cache'}", "probes.methods=[linear]"), progress=False)
    assert probe.stages["data"].reused and probe.stages["dynamics"].reused and not probe.stages["probes"].reused
    # the planner's horizon is the imagined fit's default horizon: the probe stage is redone, the model reused
    horizon = run_pipeline(tiny(tmp_path / "e", f"cache_dir={tmp_path / 'cache'}", "plan.horizon=5"), progress=False)
    assert horizon.stages["dynamics"].reused and not horizon.stages["probes"].reused
    # changed probe code (the probe stage's code fingerprint) redoes the probe stage and those after it, never
    # the dataset or the model; the same config and code again reuses everything
    import experiments.pipeline as pipeline

    real = pipeline.code_fingerprint
    monkeypatch.setattr(pipeline, "code_fingerprint",
                        lambda module: real(module) + ("-edited" if module in (pipeline.STAGE_MODULES["probes"],
                                                                               pipeline.STAGE_MODULES["planning"],
                                                                               pipeline.STAGE_MODULES["verify"]) else ""))
    edited = run_pipeline(tiny(tmp_path), progress=False)
    assert edited.stages["data"].reused and edited.stages["dynamics"].reused
    assert not any(edited.stages[s].reused for s in ("probes", "planning", "verify"))
