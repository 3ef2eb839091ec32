"""``ontolab plan`` outputs: the success/violation plot, ``realised_return`` per decision, a constant reward end
to end, the files of a skipped stage, and a missing ``.ckpt`` named as such."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from experiments.config import ConfigError
from experiments.provenance import write_config
from experiments.schema import resolve
from experiments.stages.commands import cmd_plan
from experiments.stages.plan import DECISION_COLUMNS, EPISODE_COLUMNS, run_plan

HIDDEN = 8
WORLD = ["world=lavakeydoor", "world.size=7", "world.max_steps=8"]
TINY = ["wandb.mode=disabled", "plan.planners=[discrete_cem]", "plan.episodes=2", "plan.num_envs=2", "plan.horizon=3",
        "plan.samples=8", "plan.elites=2", "plan.iterations=1", "plan.n_boot=20"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_run_files) -> Path:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("run")
    tiny_run_files.checkpoint(root, HIDDEN)
    tiny_run_files.ontology(root, ("in_lava", "steps_to_goal"), HIDDEN)
    write_config(resolve([*WORLD, "dynamics=gru", f"out={root}"]), root / "config.yaml")
    return root


def test_a_constant_reward_plans_and_writes_the_plot_and_realised_returns(run_dir, tmp_path, capsys):
    out = tmp_path / "p"
    assert cmd_plan([f"run={run_dir}", f"out={out}", *TINY, "plan.reward=-0.01"]) == 0
    assert (out / "planning.png").is_file() and (out / "planning.png").read_bytes()[:4] == b"\x89PNG"
    assert "success/violation plot: planning.png" in capsys.readouterr().out
    with (out / "decisions.csv").open() as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == DECISION_COLUMNS
        rows = list(reader)
    with (out / "episodes.csv").open() as f:
        episodes = {(r["planner"], r["model"], r["episode"]): int(r["steps"]) for r in csv.DictReader(f)}
    assert {r["model"] for r in rows} == {"learned", "oracle"}
    for r in rows:                                                   # -0.01 per step over min(horizon, steps left)
        left = episodes[(r["planner"], r["model"], r["episode"])] - int(r["step"])
        assert float(r["predicted_return"]) == pytest.approx(-0.03, rel=1e-6)
        assert float(r["realised_return"]) == pytest.approx(-0.01 * min(3, left), rel=1e-9)
    metrics = json.loads((out / "metrics.json").read_text())
    assert all(np.isfinite(r["mean_true_return"]["estimate"]) for r in metrics["rows"])


def test_a_skipped_stage_writes_both_csv_headers(tmp_path):
    cfg = resolve([*WORLD, f"out={tmp_path}", "plan.reward="])
    result = run_plan(cfg, tmp_path / "none", tmp_path / "none", tmp_path / "plan")
    assert "plan.reward is empty" in result["skipped_stage"]
    for name, header in (("episodes.csv", EPISODE_COLUMNS), ("decisions.csv", DECISION_COLUMNS)):
        assert (tmp_path / "plan" / name).read_text() == ",".join(header) + "\n"


def test_a_missing_checkpoint_file_is_named_as_such(run_dir, tmp_path):
    args = ["checkpoint=/x/nope.ckpt", f"ontology={run_dir / 'probes'}", f"out={tmp_path / 'o'}", *TINY,
            "plan.reward=-0.1 * steps_to_goal"]
    with pytest.raises(ConfigError) as e:
        cmd_plan(args)
    msg = str(e.value)
    assert msg.startswith("checkpoint=/x/nope.ckpt: no such checkpoint file;") and "\n" not in msg
    assert "checkpoints/last.ckpt" not in msg and not (tmp_path / "o").exists()
