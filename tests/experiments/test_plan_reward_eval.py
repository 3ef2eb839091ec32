"""The planning stage evaluates the latent reward on the probe stage's held-out latents: metrics.json
``reward_eval`` and ``reward_eval.csv`` (tiny checkpoint, synthetic ontology and latent store)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from experiments.report import reward_eval_section
from experiments.schema import resolve
from experiments.stages.inputs import checkpoint_of
from experiments.stages.plan import REWARD_EVAL_COLUMNS, reward_evaluations, run_plan
from probes import LatentStore, Ontology
from probes.extract import model_fingerprint
from rewards import RewardSpec
from worlds import make_world

HIDDEN = 16
BASE = ["world=lavakeydoor", "world.size=7", "world.max_steps=6", "dynamics=gru", f"dynamics.hparams.deter={HIDDEN}",
        f"dynamics.hparams.hidden={HIDDEN}", f"dynamics.hparams.embed={HIDDEN}", "wandb.mode=disabled",
        "plan.planners=[discrete_cem]", "plan.episodes=2", "plan.num_envs=2", "plan.horizon=2", "plan.samples=8",
        "plan.elites=2", "plan.iterations=1", "plan.n_boot=20", "plan.reward=-0.1 * steps_to_goal - 10 * in_lava",
        "plan.constraints=[never in_lava]"]


def _store(root: Path, model_key: str) -> LatentStore:
    """A ``test`` split of 5 episodes x 8 steps: random ``deter`` latents and valid random true concepts."""
    schema = make_world("lavakeydoor", 1, size=7).schema
    rng = np.random.default_rng(0)
    n = 40
    values = {c.name: (rng.uniform(c.low, c.high, n) if c.kind == "scalar" else rng.integers(0, c.num_classes, n))
              for c in schema}
    return LatentStore.from_arrays(root, schema=schema, sites={"test": {"deter": rng.normal(size=(n, HIDDEN))}},
                                   concepts={"test": values}, episodes={"test": np.repeat(np.arange(5), 8)},
                                   key={"model": model_key, "dataset": "arrays", "sites": ["deter"], "splits": ["test"]})


@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory, tiny_run_files) -> tuple[Path, Path, object]:
    torch.set_num_threads(1)
    from dynamics.training import load_model

    root = tmp_path_factory.mktemp("run")
    dynamics = tiny_run_files.checkpoint(root, HIDDEN)
    probes = tiny_run_files.ontology(root, ("in_lava", "steps_to_goal"), HIDDEN)
    model = load_model(checkpoint_of(dynamics))
    _store(probes / "latents", model_fingerprint(model))
    return dynamics, probes, model


def test_plan_stage_writes_reward_eval(run_dirs, tmp_path):
    dynamics, probes, _ = run_dirs
    m = run_plan(resolve(BASE), dynamics, probes, tmp_path, progress=False)
    on_disk = json.loads((tmp_path / "metrics.json").read_text())["reward_eval"]
    assert on_disk["same_model"] is True and on_disk["split"] == "test"
    [ev] = on_disk["evaluations"]                                # the chosen ontology (no per-method ones here)
    assert ev["ontology"] == "chosen" and ev["probe_method"] == "linear" and ev["steps"] == 40 and ev["episodes"] == 5
    assert [t["label"] for t in ev["terms"]] == ["-0.1 * steps_to_goal", "- 10 * in_lava"]
    [c] = ev["constraints"]
    assert c["constraint"] == "never in_lava" and c["tp"] + c["fp"] + c["fn"] + c["tn"] == 40
    assert ev["pearson"] == m["reward_eval"]["evaluations"][0]["pearson"]
    rows = list(csv.DictReader((tmp_path / "reward_eval.csv").open()))
    assert tuple(rows[0]) == REWARD_EVAL_COLUMNS and len(rows) == 2 + 4 * 3 + 7
    pearson = next(r for r in rows if r["metric"] == "pearson")
    assert float(pearson["estimate"]) == pytest.approx(ev["pearson"]["estimate"])
    md = "\n".join(reward_eval_section(on_disk))                   # the report's tables
    assert "| chosen (linear) | - 10 * in_lava |" in md and "| chosen | `never in_lava` |" in md


def test_reward_eval_flags_another_models_latents_and_skips_without_latents(run_dirs, tmp_path):
    dynamics, probes, model = run_dirs
    cfg, spec = resolve(BASE), RewardSpec("-0.1 * steps_to_goal", ("never in_lava",))
    ontologies = [(None, Ontology.load(probes / "ontology"))]
    _store(tmp_path / "other" / "latents", "another-model")
    header, evals, skipped = reward_evaluations(cfg, spec, model, ontologies, tmp_path / "other")
    assert header["same_model"] is False and len(evals) == 1 and not skipped
    header, evals, skipped = reward_evaluations(cfg, spec, model, ontologies, probes / "ontology")
    assert evals == [] and "no cached latents" in skipped["reward_eval"]
    unprobed = RewardSpec("at_goal")
    _, evals, skipped = reward_evaluations(cfg, unprobed, model, ontologies, probes)
    assert evals == [] and "no probe for ['at_goal']" in skipped["reward_eval/chosen"]
