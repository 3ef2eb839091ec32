"""``ontolab plan``: the planning stage on its own, from a run folder or from explicit paths; bad inputs fail in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from experiments.config import ConfigError
from experiments.provenance import write_config
from experiments.schema import resolve
from experiments.stages.commands import cmd_plan
from worlds.errors import OntolabError

HIDDEN = 8
WORLD = ["world=lavakeydoor", "world.size=7", "world.max_steps=8"]
TINY = ["wandb.mode=disabled", "plan.planners=[discrete_cem]", "plan.episodes=2", "plan.num_envs=2", "plan.horizon=3",
        "plan.samples=8", "plan.elites=2", "plan.iterations=1", "plan.n_boot=20"]
REWARD = "plan.reward=-0.1 * steps_to_goal - 10 * in_lava"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_run_files) -> Path:
    """A run folder as ``ontolab run`` leaves it: config.yaml, dynamics/checkpoints/last.ckpt, probes/ontology/."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("run")
    tiny_run_files.checkpoint(root, HIDDEN)
    tiny_run_files.ontology(root, ("in_lava", "steps_to_goal"), HIDDEN)
    write_config(resolve([*WORLD, "dynamics=gru", f"out={root}"]), root / "config.yaml")
    return root


def test_plan_from_a_run_folder_writes_next_to_it_with_the_overoptimisation_curve(run_dir, capsys):
    args = [f"run={run_dir}", *TINY, REWARD, "plan.overoptimisation=true", "plan.overopt_episodes=2",
            "plan.overopt_best_of=[1,4]", "plan.overopt_cem_samples=[4]", "plan.overopt_cem_iterations=[2]"]
    assert cmd_plan(args) == 0
    out = run_dir / "plan"
    m = json.loads((out / "metrics.json").read_text())
    keys = {(r["planner"], r["model"]) for r in m["rows"]}
    assert keys == {("discrete_cem", "learned"), ("discrete_cem", "oracle"), ("random", None), ("oracle", None)}
    assert all(r["episodes"] == 2 for r in m["rows"])
    for f in ("episodes.csv", "decisions.csv", "config.yaml", "inputs.json", "overoptimisation.json", "overoptimisation.png"):
        assert (out / f).is_file(), f
    curves = json.loads((out / "overoptimisation.json").read_text())["curves"]
    assert [c["label"] for c in curves] == ["learned model, latent reward", "oracle model, true reward"]
    assert [(p["optimiser"], p["samples"], p["iterations"]) for p in curves[0]["points"]] == \
        [("best_of_n", 1, 1), ("best_of_n", 4, 1), ("cem", 4, 2)]
    for p in curves[1]["points"]:                                       # the oracle control has no gap
        assert abs(p["gap"]["estimate"]) < 1e-5
    assert m["overoptimisation"]["file"] == "overoptimisation.json"
    cfg = (out / "config.yaml").read_text()
    assert "size: 7" in cfg and "model: gru" in cfg                    # the run's config is the base
    assert json.loads((out / "inputs.json").read_text())["checkpoint"].endswith("last.ckpt")
    assert "discrete_cem" in capsys.readouterr().out


def test_plan_from_explicit_paths(run_dir, tmp_path):
    args = [*WORLD, f"checkpoint={run_dir / 'dynamics' / 'checkpoints' / 'last.ckpt'}",
            f"ontology={run_dir / 'probes' / 'ontology'}", f"out={tmp_path / 'p'}", *TINY, REWARD]
    assert cmd_plan(args) == 0                                          # dynamics.model comes from the checkpoint
    assert json.loads((tmp_path / "p" / "metrics.json").read_text())["rows"]


@pytest.mark.parametrize("extra,match", [
    ([], "needs run=RUN_DIR"),
    (["run=/nonexistent/run"], "no such folder"),
    (["checkpoint={root}/probes", "ontology={root}/probes", "out={tmp}"], "holds no dynamics checkpoint"),
    (["checkpoint={root}/dynamics", "ontology={root}/dynamics", "out={tmp}"], "holds no ontology"),
    (["checkpoint={root}/dynamics", "ontology={root}/probes"], "needs out=FOLDER"),
    (["run={root}", "plan.reward=at_goal - in_hazard"], "in_hazard"),
    (["run={root}", "plan.reward=10 * at_goal"], r"uses \['at_goal'\], which the ontology"),
    (["run={root}"], "needs a reward"),
    (["run={root}", "dynamics=rssm"], "holds a 'gru' model"),
    (["run={root}", "world.view=3"], "was trained on observations"),
    (["run={root}", "checkpoint="], "needs a path"),
])
def test_bad_inputs_fail_with_one_line(run_dir, tmp_path, extra, match):
    args = [a.format(root=run_dir, tmp=tmp_path / "o") for a in extra]
    reward = [REWARD] if not any(a.startswith("plan.reward") for a in args) and match != "needs a reward" else []
    with pytest.raises(ConfigError, match=match) as e:
        cmd_plan([*args, *TINY, *reward])
    assert "\n" not in str(e.value)
    assert not (tmp_path / "o").exists()                                # nothing written before the inputs are checked


def test_a_file_that_is_not_a_checkpoint_is_refused(run_dir, tmp_path):
    bogus = tmp_path / "x.ckpt"
    bogus.write_bytes(b"not a checkpoint")
    with pytest.raises(OntolabError, match="x.ckpt"):
        cmd_plan([f"checkpoint={bogus}", f"ontology={run_dir / 'probes'}", f"out={tmp_path / 'o'}", *TINY, REWARD])
