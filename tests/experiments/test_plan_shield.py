"""plan.shield: the stage runs every learned-model planner also behind a Shield, rows side by side with veto_rate."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from experiments.config import ConfigError
from experiments.report import planning_section
from experiments.schema import resolve
from experiments.stages.plan import run_plan

HIDDEN = 16
BASE = ["world=lavakeydoor", "world.size=7", "world.max_steps=6", "dynamics=gru", f"dynamics.hparams.deter={HIDDEN}",
        f"dynamics.hparams.hidden={HIDDEN}", f"dynamics.hparams.embed={HIDDEN}", "wandb.mode=disabled",
        "plan.planners=[discrete_cem]", "plan.episodes=2", "plan.num_envs=2", "plan.horizon=3", "plan.samples=8",
        "plan.elites=2", "plan.iterations=1", "plan.n_boot=20", "plan.reward=-0.1 * steps_to_goal - 10 * in_lava",
        "plan.constraints=[never in_lava]"]
SHIELD = ["plan.shield=true", "plan.shield_samples=2", "plan.shield_continuations=2"]


@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory, tiny_run_files):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("run")
    tiny_run_files.checkpoint(root, HIDDEN)
    tiny_run_files.ontology(root, ("in_lava", "steps_to_goal"), HIDDEN)
    return root / "dynamics", root / "probes"


@pytest.mark.parametrize("shield", [False, True])
def test_shield_rows_sit_beside_the_unshielded_ones_with_a_veto_rate(run_dirs, tmp_path, shield):
    cfg = resolve([*BASE, *(SHIELD if shield else [])])
    metrics = run_plan(cfg, *run_dirs, tmp_path, progress=False)
    rows = {r["planner"]: r for r in json.loads((tmp_path / "metrics.json").read_text())["rows"]
            if r["model"] == "learned"}
    assert set(rows) == ({"discrete_cem", "discrete_cem+shield"} if shield else {"discrete_cem"})
    assert "veto_rate" not in rows["discrete_cem"]
    dec = list(csv.DictReader((tmp_path / "decisions.csv").open()))
    if shield:
        r = rows["discrete_cem+shield"]
        assert (r["model"], r["reward"], r["probe_method"]) == ("learned", "latent", "linear")
        mine = [d for d in dec if d["planner"] == "discrete_cem+shield"]
        vetoed = sum(d["vetoed"] == "True" for d in mine) / len(mine)       # the rate is the decisions' fraction
        v = r["veto_rate"]
        assert v["estimate"] == pytest.approx(vetoed) and v["ci_low"] <= v["estimate"] <= v["ci_high"]
        bars = {q["planner"] for q in metrics["quality_bar"]}
        assert bars == {"discrete_cem", "discrete_cem+shield"}
    assert not any(d["vetoed"] == "True" for d in dec if d["planner"] != "discrete_cem+shield")
    table = "\n".join(planning_section({"planning": metrics["rows"], "planning_details": metrics}))
    assert ("vetoed decisions" in table) == shield and ("discrete_cem+shield" in table) == shield


def test_shield_settings_are_validated():
    cfg = resolve([*BASE, *SHIELD, "plan.shield_threshold=0.1", "plan.shield_horizon=2"]).plan
    assert cfg.shield and cfg.shield_threshold == 0.1 and cfg.shield_samples == 2 and cfg.shield_horizon == 2
    assert not resolve(BASE).plan.shield
    for bad, match in [("plan.shield_threshold=1.0", r"plan.shield_threshold must lie in \[0, 1\)"),
                       ("plan.shield_samples=0", "plan.shield_samples must be a positive integer"),
                       ("plan.shield_continuations=0", "plan.shield_continuations must be a positive integer"),
                       ("plan.shield_horizon=0", "plan.shield_horizon must be a positive integer or null")]:
        with pytest.raises(ConfigError, match=match):
            resolve([*BASE, *SHIELD, bad])
    with pytest.raises(ConfigError, match=r"plan.shield=true needs constraints.*plan.shield=false"):
        resolve([*BASE, *SHIELD, "plan.constraints=[]"])
    with pytest.raises(ConfigError, match=r"constraints \['never p\(in_lava\)'\] cost a probability.*plan.cost_limit > 0"):
        resolve([*BASE, *SHIELD, "plan.constraints=[never p(in_lava)]"])
    assert resolve([*BASE, *SHIELD, "plan.constraints=[never p(in_lava)]", "plan.cost_limit=0.5"]).plan.shield
    # a probability compared with a threshold is a 0/1 condition: its cost is an indicator, no limit needed
    assert resolve([*BASE, *SHIELD, "plan.constraints=['p(in_lava) < 0.05']"]).plan.shield
    assert resolve([*BASE, *SHIELD, "plan.constraints=['never p(in_lava) > 0.1']"]).plan.shield
