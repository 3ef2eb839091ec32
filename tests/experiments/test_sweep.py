"""`ontolab sweep`: which overrides are grid axes, the grid, aggregation over seeds against hand computations."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from experiments.config import ConfigError
from experiments.sweep import ONE_SEED, T_OVER_SEEDS, aggregate, expand_grid, parse_sweep_args, run_sweep, seed_interval

ONTOLAB = shutil.which("ontolab") or str(Path(sys.executable).parent / "ontolab")
T975 = {2: 4.302652729911275, 1: 12.706204736174698}  # Student t 0.975 quantiles for 2 and 1 degrees of freedom (tables)


def est(v, lo, hi):
    return {"estimate": v, "ci_low": lo, "ci_high": hi}


def summary(seed, acc, r2=None, success=0.5):
    """A synthetic summary.json: has_key read by linear@deter with balanced accuracy ``acc``."""
    probes = [{"method": "linear", "site": "deter", "concept": "has_key", "split": "test", "metric": "balanced_accuracy",
               **est(acc, acc - 0.05, acc + 0.05)},
              {"method": "prior", "site": "deter", "concept": "has_key", "split": "test", "metric": "balanced_accuracy",
               **est(0.5, 0.5, 0.5)}]
    if r2 is not None:
        probes.append({"method": "mlp", "site": "feat", "concept": "steps_to_goal", "split": "test", "metric": "r2",
                       **est(r2, r2 - 0.1, r2 + 0.1)})
    return {"world": "lavakeydoor", "seed": seed, "probes": probes,
            "ontology": {"has_key": {"method": "linear", "site": "deter"}},
            "planning": [{"planner": "cem", "model": "learned", "reward": "latent", "probe_method": "linear",
                          "success_rate": est(success, 0.0, 1.0), "violation_rate": est(0.0, 0.0, 0.5),
                          "mean_true_return": est(1.0, 0.5, 1.5)}],
            "dynamics": {"open_loop": {"metric": "accuracy", "model": {"1": est(0.9 + seed / 100, 0.8, 1.0)},
                                       "copy_last_frame": {"1": est(0.8, 0.7, 0.9)}}}}


# -- grid expansion -----------------------------------------------------------------------------------


def test_scalar_lists_are_axes_list_keys_take_lists_and_lists_of_lists_are_axes(tmp_path):
    spec = parse_sweep_args(["seeds=[0,1,2]", "probes.methods=[linear,mlp]", "dynamics.lr=[0.001,0.003]",
                             "probes.sites=[[deter],[feat]]", "world.size=[9,11]", "dynamics.hparams.deter=[32,64]",
                             "data.episodes=40", f"out={tmp_path / 'sw'}"])
    assert spec.seeds == (0, 1, 2)
    assert dict(spec.axes) == {"dynamics.lr": (0.001, 0.003), "probes.sites": (["deter"], ["feat"]),
                               "world.size": (9, 11), "dynamics.hparams.deter": (32, 64)}
    assert spec.overrides == ("probes.methods=[linear,mlp]", "data.episodes=40")  # a list-typed key: its value
    assert spec.out == tmp_path / "sw" and spec.cache_dir == tmp_path / "sw" / "cache"
    points = expand_grid(spec)
    assert len(points) == 2 * 2 * 2 * 2 * 3
    assert len({p.name for p in points}) == len(points)
    assert len({p.group for p in points}) == 16
    first = points[0]
    assert first.name == "lr-0.001_sites-deter_size-9_deter-32_seed-0"
    assert [p.seed for p in points[:3]] == [0, 1, 2]  # the seed varies fastest
    assert f"out={tmp_path / 'sw' / first.name}" in first.overrides
    assert f"cache_dir={tmp_path / 'sw' / 'cache'}" in first.overrides
    assert {"dynamics.lr=0.001", 'probes.sites=["deter"]', "seed=0", "probes.methods=[linear,mlp]"} <= set(first.overrides)


def test_every_grid_point_resolves_to_the_config_it_names(tmp_path):
    from experiments.schema import resolve

    spec = parse_sweep_args(["seeds=[3,4]", "probes.methods=[[linear],[linear,sparse]]", f"out={tmp_path}"])
    cfgs = [resolve(list(p.overrides)) for p in expand_grid(spec)]
    assert [(c.seed, c.probes.methods) for c in cfgs] == [(3, ("linear",)), (4, ("linear",)),
                                                        (3, ("linear", "sparse")), (4, ("linear", "sparse"))]
    assert {c.cache_dir for c in cfgs} == {str(tmp_path / "cache")}


def test_without_axes_there_is_one_group_named_base(tmp_path):
    points = expand_grid(parse_sweep_args([f"out={tmp_path}", "seeds=[7]"]))
    assert [(p.group, p.name, p.seed) for p in points] == [("base", "base_seed-7", 7)]
    with pytest.raises(ConfigError, match="needs a grid"):  # no axis and no seeds: `ontolab run` is the command
        parse_sweep_args([f"out={tmp_path}"])


@pytest.mark.parametrize("args, needle", [
    (["seeds=[0,0]"], "lists a seed twice"),
    (["seeds=[a,b]"], "list of integer seeds"),
    (["dynamics.lr=[]"], "has no values"),
    (["dynamics.lr=[0.1,0.1]"], "lists a value twice"),
    (["nosuchkey=[1,2]"], "unknown config key 'nosuchkey'"),
])
def test_bad_grids_are_refused(args, needle, tmp_path):
    with pytest.raises(ConfigError, match=needle):
        spec = parse_sweep_args([f"out={tmp_path}", *args])
        run_sweep(spec, runner=lambda cfg, **kw: pytest.fail("no point may run"))


# -- aggregation ----------------------------------------------------------------------------------------


def test_t_interval_over_seeds_matches_a_hand_computation():
    mean, lo, hi = seed_interval([0.8, 0.9, 0.7])
    half = T975[2] * 0.1 / math.sqrt(3)  # sd of (0.8, 0.9, 0.7) is 0.1
    assert mean == pytest.approx(0.8) and lo == pytest.approx(0.8 - half) and hi == pytest.approx(0.8 + half)
    with pytest.raises(ValueError, match="at least 2"):
        seed_interval([0.5])


def test_aggregation_over_seeds_per_group():
    runs = [{"group": "a", "seed": 0, "summary": summary(0, 0.8, r2=0.5, success=0.4)},
            {"group": "a", "seed": 1, "summary": summary(1, 0.9, success=0.6)},  # no steps_to_goal row here
            {"group": "a", "seed": 2, "summary": summary(2, 0.7, r2=0.7, success=0.8)},
            {"group": "b", "seed": 0, "summary": summary(0, 0.6)}]
    agg = aggregate(runs)
    rows = {(r["group"], r["method"], r["concept"]): r for r in agg["probes"]}
    a = rows[("a", "linear", "has_key")]
    half = T975[2] * 0.1 / math.sqrt(3)
    assert a["n_seeds"] == 3 and a["seeds"] == [0, 1, 2] and a["interval"] == T_OVER_SEEDS
    assert (a["estimate"], a["ci_low"], a["ci_high"], a["sd"]) == pytest.approx((0.8, 0.8 - half, 0.8 + half, 0.1))
    r2 = rows[("a", "mlp", "steps_to_goal")]  # present in two of the three seeds
    half2 = T975[1] * math.sqrt(0.02) / math.sqrt(2)  # sd of (0.5, 0.7) = sqrt(0.02)
    assert r2["n_seeds"] == 2 and r2["seeds"] == [0, 2]
    assert (r2["estimate"], r2["ci_low"], r2["ci_high"]) == pytest.approx((0.6, 0.6 - half2, 0.6 + half2))
    prior = rows[("a", "prior", "has_key")]
    assert (prior["estimate"], prior["ci_low"], prior["ci_high"]) == pytest.approx((0.5, 0.5, 0.5))  # no spread
    b = rows[("b", "linear", "has_key")]  # one seed: the run's own interval, said so
    assert (b["estimate"], b["ci_low"], b["ci_high"]) == pytest.approx((0.6, 0.55, 0.65))
    assert b["n_seeds"] == 1 and b["interval"] == ONE_SEED
    [plan_a] = [r for r in agg["planning"] if r["group"] == "a"]
    assert plan_a["success_rate"]["estimate"] == pytest.approx(0.6) and plan_a["n_seeds"] == 3
    half3 = T975[2] * 0.2 / math.sqrt(3)
    assert plan_a["success_rate"]["ci_low"] == pytest.approx(0.6 - half3)
    assert agg["open_loop"]["a"]["model"]["1"]["estimate"] == pytest.approx(0.91)
    assert agg["ontology"]["a"]["has_key"] == {"method": "linear", "site": "deter", "votes": 3}


def test_sweep_with_a_stub_runner_writes_the_sweep_folder(tmp_path):
    accs = {(9, 0): 0.8, (9, 1): 0.9, (11, 0): 0.6, (11, 1): 0.7}
    seen = []

    def runner(cfg, progress=True):
        size = cfg.world_params().size
        seen.append((size, cfg.seed, cfg.out, cfg.cache_dir))
        return SimpleNamespace(summary=summary(cfg.seed, accs[(size, cfg.seed)]))

    out = tmp_path / "sw"
    result = run_sweep(parse_sweep_args(["seeds=[0,1]", "world.size=[9,11]", f"out={out}"]), runner=runner, progress=False)
    assert [(s, seed) for s, seed, _, _ in seen] == [(9, 0), (9, 1), (11, 0), (11, 1)]
    assert {c for *_, c in seen} == {str(out / "cache")}
    assert seen[0][2] == str(out / "size-9_seed-0")
    record = json.loads((out / "sweep.json").read_text())
    assert record["axes"] == {"world.size": [9, 11]} and record["seeds"] == [0, 1]
    assert [g["name"] for g in record["groups"]] == ["size-9", "size-11"]
    assert record["groups"][0]["runs"][1]["command"].startswith("ontolab run ")
    assert "seed=1" in record["groups"][0]["runs"][1]["command"]
    with open(out / "sweep.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["method"] == "linear"]
    assert [(r["group"], round(float(r["estimate"]), 6), r["n_seeds"]) for r in rows] == [("size-11", 0.65, "2"), ("size-9", 0.85, "2")]
    report = result.report.read_text()
    assert "t-interval over seeds" in report and "| group | world.size | runs |" in report
    assert "[seed 1](size-9_seed-1/report.md)" in report
    assert "![probe_metrics](plots/probe_metrics.png)" in report and (out / "plots" / "probe_metrics.png").is_file()
    assert (out / "sweep_planning.csv").read_text().count("\n") == 3  # header + one row per group


def test_one_seed_says_so_in_the_report(tmp_path):
    result = run_sweep(parse_sweep_args([f"out={tmp_path / 'sw'}", "seeds=[0]"]), progress=False,
                       runner=lambda cfg, progress=True: SimpleNamespace(summary=summary(cfg.seed, 0.8)))
    assert ONE_SEED in result.report.read_text()


def test_bad_axis_value_is_refused_by_the_command_before_any_work(tmp_path):
    env = dict(os.environ, WANDB_MODE="disabled", ONTOLAB_DEBUG="")
    r = subprocess.run([ONTOLAB, "sweep", "seeds=[0,1]", "dynamics.lr=[0.001,fast]", f"out={tmp_path / 'sw'}"],
                       cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().startswith("ontolab: error: ") and len(r.stderr.strip().splitlines()) == 1
    assert "dynamics.lr" in r.stderr
    assert not (tmp_path / "sw").exists()


@pytest.mark.slow
def test_tiny_real_sweep_of_two_seeds(tmp_path):
    tiny = ["data.episodes=40", "data.ood_episodes=8", "data.num_envs=8", "dynamics.max_steps=6",
            "dynamics.val_every=3", "dynamics.batch_size=4", "dynamics.window=16", "dynamics.hparams.deter=32",
            "dynamics.hparams.hidden=32", "dynamics.hparams.embed=32", "dynamics.hparams.stoch=4",
            "dynamics.hparams.classes=4", "probes.methods=[linear]", "probes.n_boot=50", "probes.mdl=false",
            "probes.max_train_rows=500", "probes.sites=[deter]", "threads=1"]
    env = dict(os.environ, WANDB_MODE="disabled", ONTOLAB_DEBUG="")
    r = subprocess.run([ONTOLAB, "sweep", "seeds=[0,1]", f"out={tmp_path / 'sw'}", *tiny], cwd=tmp_path,
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / "sw"
    s0, s1 = (json.loads((out / f"base_seed-{s}" / "summary.json").read_text()) for s in (0, 1))
    record = json.loads((out / "sweep.json").read_text())
    row = next(r for r in record["probes"] if r["method"] == "linear" and r["split"] == "test" and r["metric"] == "balanced_accuracy")
    vals = [next(x["estimate"] for x in s["probes"] if all(x[k] == row[k] for k in ("method", "site", "concept", "split", "metric")))
            for s in (s0, s1)]
    assert row["n_seeds"] == 2 and row["estimate"] == pytest.approx(sum(vals) / 2)
    assert (out / "report.md").is_file() and (out / "cache").is_dir()
