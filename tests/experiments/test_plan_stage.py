"""The planning stage on a tiny run folder (a tiny checkpoint, a synthetic ontology): metrics.json, CSVs, skips."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from experiments.config import ConfigError
from experiments.schema import resolve
from experiments.stages.plan import run_plan
from probes.results import ResultRow, write_results_csv

HIDDEN = 16
BASE = ["world=lavakeydoor", "world.size=7", "world.max_steps=10", "dynamics=gru", f"dynamics.hparams.deter={HIDDEN}",
        f"dynamics.hparams.hidden={HIDDEN}", f"dynamics.hparams.embed={HIDDEN}", "wandb.mode=disabled",
        "plan.planners=[cem,discrete_cem]", "plan.episodes=4", "plan.num_envs=2", "plan.horizon=3", "plan.samples=12",
        "plan.elites=3", "plan.iterations=2", "plan.n_boot=50"]
REWARD = "plan.reward=-0.1 * steps_to_goal - 10 * in_lava"
PROBED = ("in_lava", "steps_to_goal", "has_key")
ROW_KEYS = {"planner", "model", "reward", "probe_method", "episodes", "success_rate", "violation_rate",
            "mean_true_return", "mean_steps", "ms_per_step"}


@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory, tiny_run_files) -> tuple[Path, Path]:
    """``(dynamics_dir, probes_dir)`` as the earlier stages leave them, built directly (no training)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("run")
    tiny_run_files.checkpoint(root, HIDDEN)
    tiny_run_files.ontology(root, PROBED, HIDDEN)
    write_results_csv([ResultRow("linear", "deter", "in_lava", "test", "balanced_accuracy", 0.9, 0.85, 0.95),
                       ResultRow("linear", "deter", "steps_to_goal", "test", "r2", 0.8, 0.7, 0.9)],
                      root / "probes" / "results.csv")
    return root / "dynamics", root / "probes"


@pytest.fixture(scope="module")
def staged(run_dirs, tmp_path_factory):
    out = tmp_path_factory.mktemp("planning")
    cfg = resolve([*BASE, REWARD])
    metrics = run_plan(cfg, *run_dirs, out, progress=False)
    return cfg, out, metrics


def test_metrics_json_has_a_row_per_planner_model_reward_and_the_baselines(staged):
    cfg, out, metrics = staged
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["rows"] == json.loads(json.dumps(metrics["rows"]))
    keys = {(r["planner"], r["model"], r["reward"], r["probe_method"]) for r in on_disk["rows"]}
    assert keys == {("discrete_cem", "learned", "latent", "linear"), ("discrete_cem", "oracle", "true", None),
                    ("random", None, None, None), ("oracle", None, None, None)}
    assert "continuous" in on_disk["skipped"]["planner:cem"]             # picked by the action space
    for r in on_disk["rows"]:
        assert ROW_KEYS <= set(r) and r["episodes"] == 4
        for m in ("success_rate", "violation_rate", "mean_true_return", "mean_steps", "ms_per_step"):
            e = r[m]
            assert set(e) == {"estimate", "ci_low", "ci_high"} and e["ci_low"] <= e["estimate"] <= e["ci_high"]
    oracle = next(r for r in on_disk["rows"] if r["planner"] == "oracle")
    assert oracle["success_rate"]["estimate"] == 1.0 and oracle["violation_rate"]["estimate"] == 0.0
    assert on_disk["reward"]["reward"] == "-0.1 * steps_to_goal - 10 * in_lava"
    [bar] = on_disk["quality_bar"]
    assert bar["planner"] == "discrete_cem" and isinstance(bar["passes"], bool)
    assert bar["passes"] or bar["diagnosis"]                              # a reason whenever it falls short


def test_shift_compares_visited_states_with_the_dataset(staged):
    _, out, metrics = staged
    shift = json.loads((out / "metrics.json").read_text())["shift"]
    planners = {s["planner"] for s in shift}
    assert planners == {"discrete_cem", "random", "oracle"}              # the learned rows and both baselines
    assert {s["concept"] for s in shift} == set(PROBED)
    row = next(s for s in shift if s["planner"] == "discrete_cem" and s["concept"] == "in_lava"
               and s["metric"] == "balanced_accuracy")
    assert row["dataset_test"] == {"estimate": 0.9, "ci_low": 0.85, "ci_high": 0.95} and row["in_reward"]
    assert not next(s for s in shift if s["concept"] == "has_key")["in_reward"]


def test_csvs_hold_every_episode_and_decision(staged):
    _, out, metrics = staged
    eps = list(csv.DictReader((out / "episodes.csv").open()))
    assert len(eps) == 4 * len(metrics["rows"])
    dec = list(csv.DictReader((out / "decisions.csv").open()))
    planned = [e for e in eps if e["model"] in ("learned", "oracle")]
    assert len(dec) == sum(int(e["steps"]) for e in planned)
    assert {"predicted_return", "elite_spread", "latency_ms"} <= set(dec[0])


def test_empty_reward_skips_with_a_reason(run_dirs, tmp_path):
    cfg = resolve(BASE)
    m = run_plan(cfg, *run_dirs, tmp_path, progress=False)
    assert "plan.reward is empty" in m["skipped_stage"] and m["rows"] == []
    assert json.loads((tmp_path / "metrics.json").read_text())["skipped_stage"] == m["skipped_stage"]


def test_reward_is_checked_against_the_world_at_config_time():
    with pytest.raises(ConfigError, match="in_hazard"):
        resolve([*BASE, "plan.reward=at_goal - 10 * in_hazard"])
    with pytest.raises(ConfigError, match="plan.planners"):
        resolve([*BASE, REWARD, "plan.planners=[nope]"])


def test_overoptimisation_settings_are_validated():
    cfg = resolve([*BASE, REWARD, "plan.overoptimisation=true", "plan.overopt_best_of=[1,8]"])
    assert cfg.plan.overoptimisation and cfg.plan.overopt_best_of == (1, 8) and not resolve(BASE).plan.overoptimisation
    with pytest.raises(ConfigError, match="pair up"):
        resolve([*BASE, REWARD, "plan.overopt_cem_samples=[8,16]", "plan.overopt_cem_iterations=[1]"])
    with pytest.raises(ConfigError, match="plan.overopt_best_of must hold positive integers"):
        resolve([*BASE, REWARD, "plan.overopt_best_of=[0,4]"])


def _est(x: float) -> dict:
    return {"estimate": x, "ci_low": x - 0.05, "ci_high": x + 0.05}


def _row(planner: str, model, success: float, violations: float, ret: float) -> dict:
    return {"planner": planner, "model": model, "reward": "latent" if model == "learned" else None,
            "probe_method": "linear" if model == "learned" else None, "success_rate": _est(success),
            "violation_rate": _est(violations), "mean_true_return": _est(ret)}


@pytest.mark.parametrize("history, split, expected, absent", [
    (0.95, "test", "knowable from the observations, lost by the dynamics model's latent", "not knowable"),
    (0.20, "test", "not knowable from the observation history", "lost by the dynamics"),
    (0.26, "test_nonterminal", "steps_to_goal only at 0.26 on non-terminal steps: not knowable", "lost by the dynamics"),
    (None, None, "probe error", "history baseline"),
])
def test_diagnosis_says_whether_a_poorly_read_reward_concept_is_knowable_from_the_history(history, split, expected, absent):
    from experiments.stages.verdict import quality_bar

    rows = [_row("discrete_cem", "learned", 0.0, 0.0, -1.6), _row("oracle", None, 1.0, 0.0, 0.9),
            _row("random", None, 0.1, 0.7, -1.1)]
    shift = [{"planner": "discrete_cem", "model": "learned", "probe_method": "linear", "concept": "steps_to_goal",
              "metric": "r2", "in_reward": True, "visited": _est(0.1), "dataset_test": _est(0.3),
              "history_test": history, "history_split": split}]
    [bar] = quality_bar(rows, shift)
    assert not bar["passes"]
    assert expected in bar["diagnosis"] and absent not in bar["diagnosis"]
    if history is not None:
        assert f"{history:.2f}" in bar["diagnosis"]
