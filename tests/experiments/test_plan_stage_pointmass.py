"""The planning stage on the continuous pointmass world: continuous planners, the analytic-controller oracle
baseline, and the continuous-CEM over-optimisation curve, on a tiny untrained GRU and synthetic probes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dynamics import build_model
from dynamics.training.checkpoint import META_KEY, AtomicCheckpointIO, model_meta
from experiments.schema import resolve
from experiments.stages.plan import run_plan
from probes import LinearProbe, Normalizer, Ontology, OntologyEntry
from worlds import make_world

HIDDEN = 8
MAX_STEPS = 60   # the analytic controller needs ~34-38 steps per episode (worlds.pointmass.oracle_actions)
BASE = ["world=pointmass", f"world.max_steps={MAX_STEPS}", "dynamics=gru", f"dynamics.hparams.deter={HIDDEN}",
        f"dynamics.hparams.hidden={HIDDEN}", f"dynamics.hparams.embed={HIDDEN}", "wandb.mode=disabled",
        "plan.planners=[cem,icem,mppi,discrete_cem]", "plan.episodes=2", "plan.num_envs=2", "plan.horizon=3",
        "plan.samples=8", "plan.elites=2", "plan.iterations=2", "plan.n_boot=20",
        "plan.reward=-dist_to_goal - 10 * in_hazard", "plan.overoptimisation=true", "plan.overopt_episodes=2",
        "plan.overopt_best_of=[1,4]", "plan.overopt_cem_samples=[4,8]", "plan.overopt_cem_iterations=[1,2]"]
PROBED = ("dist_to_goal", "in_hazard")
CONTINUOUS = ("cem", "icem", "mppi")


def _write_run(root: Path) -> tuple[Path, Path]:
    """``root/dynamics`` (an untrained seeded GRU checkpoint on pointmass) and ``root/probes`` (seeded random
    linear probes at site ``deter``), as the train and probe stages leave them."""
    world = make_world("pointmass", 1)
    torch.manual_seed(0)
    model = build_model("gru", {"shape": list(world.single_observation_space.shape), "kind": "vector"},
                        {"discrete": False, "dim": 2}, deter=HIDDEN, hidden=HIDDEN, embed=HIDDEN)
    ckpt = {"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, META_KEY: model_meta(model),
            "global_step": 0}
    AtomicCheckpointIO().save_checkpoint(ckpt, root / "dynamics" / "checkpoints" / "last.ckpt")
    g = torch.Generator().manual_seed(0)
    entries = {}
    for name in PROBED:
        c = world.schema[name]
        probe = LinearProbe(c, Normalizer(torch.zeros(HIDDEN), torch.ones(HIDDEN)), {},
                            torch.randn(1, HIDDEN, generator=g), torch.full((1,), 1.0 if c.kind == "scalar" else -1.0))
        entries[name] = OntologyEntry(c, "linear", "deter", (HIDDEN,), probe,
                                      "r2" if c.kind == "scalar" else "balanced_accuracy", 0.9)
    Ontology(entries).save(root / "probes" / "ontology")
    return root / "dynamics", root / "probes"


@pytest.fixture(scope="module")
def staged(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("pointmass_run")
    dynamics_dir, probes_dir = _write_run(root)
    out = root / "planning"
    metrics = run_plan(resolve(BASE), dynamics_dir, probes_dir, out, progress=False)
    return out, metrics


def test_continuous_planners_run_on_both_models_and_discrete_ones_are_skipped(staged):
    out, metrics = staged
    on_disk = json.loads((out / "metrics.json").read_text())
    keys = {(r["planner"], r["model"], r["reward"], r["probe_method"]) for r in on_disk["rows"]}
    expected = {(p, "learned", "latent", "linear") for p in CONTINUOUS} | {(p, "oracle", "true", None) for p in CONTINUOUS}
    assert keys == expected | {("random", None, None, None), ("oracle", None, None, None)}
    assert "discrete" in on_disk["skipped"]["planner:discrete_cem"]
    for r in on_disk["rows"]:
        assert r["episodes"] == 2
        for m in ("success_rate", "violation_rate", "mean_true_return", "mean_steps", "ms_per_step"):
            assert r[m]["ci_low"] <= r[m]["estimate"] <= r[m]["ci_high"], (r["planner"], m)
        assert 1 <= r["mean_steps"]["estimate"] <= MAX_STEPS
    assert {b["planner"] for b in on_disk["quality_bar"]} == set(CONTINUOUS)


def test_the_analytic_controller_baseline_succeeds(staged):
    _, metrics = staged
    oracle = next(r for r in metrics["rows"] if r["planner"] == "oracle" and r["model"] is None)
    assert oracle["success_rate"]["estimate"] == 1.0 and oracle["violation_rate"]["estimate"] == 0.0
    assert oracle["mean_steps"]["estimate"] < MAX_STEPS                  # it reached the goal, not the time limit
    # +1 at the goal, -0.01 per step before it (worlds.pointmass): the return follows from the step count
    steps = oracle["mean_steps"]["estimate"]
    assert oracle["mean_true_return"]["estimate"] == pytest.approx(1.0 - 0.01 * (steps - 1), abs=1e-5)


def test_the_shift_measure_reads_the_probed_concepts_on_visited_states(staged):
    _, metrics = staged
    assert {s["concept"] for s in metrics["shift"]} == set(PROBED)
    assert {s["planner"] for s in metrics["shift"]} == set(CONTINUOUS) | {"random", "oracle"}


def test_continuous_cem_overoptimisation_curve_runs_for_both_models(staged):
    out, metrics = staged
    doc = json.loads((out / "overoptimisation.json").read_text())
    assert (out / "overoptimisation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    curves = {c["label"]: c for c in doc["curves"]}
    assert set(curves) == {"learned model, latent reward", "oracle model, true reward"}
    for c in curves.values():
        assert [(p["optimiser"], p["samples"], p["iterations"]) for p in c["points"]] == \
            [("best_of_n", 1, 1), ("best_of_n", 4, 1), ("cem", 4, 1), ("cem", 8, 2)]
    for p in curves["oracle model, true reward"]["points"]:             # the simulator in imagination: no gap
        assert p["gap"]["estimate"] == pytest.approx(0.0, abs=1e-4)
    assert metrics["overoptimisation"]["file"] == "overoptimisation.json"
