"""The verify stage end to end on a tiny run folder (tiny dataset, randomly initialised model, synthetic ontology)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from experiments.config import ConfigError
from experiments.schema import resolve
from experiments.stages.collect import run_collect
from experiments.stages.commands import cmd_verify
from experiments.stages.verify import run_verify, verify_summary

HIDDEN = 16
BASE = ["world=lavakeydoor", "world.size=7", "world.max_steps=12", "dynamics=gru", f"dynamics.hparams.deter={HIDDEN}",
        f"dynamics.hparams.hidden={HIDDEN}", f"dynamics.hparams.embed={HIDDEN}", "wandb.mode=disabled",
        "data.episodes=10", "data.ood_episodes=0", "data.num_envs=5", "plan.planners=[discrete_cem]",
        "plan.horizon=3", "plan.samples=8", "plan.elites=2", "plan.iterations=1", "plan.num_envs=2",
        "plan.reward=-0.1 * steps_to_goal - 10 * in_lava", "verify.rollouts=64", "verify.horizon=6",
        "verify.real_episodes=30", "verify.planner_rollouts=2", "verify.planner_episodes=2", "verify.starts=6",
        "verify.split=train", "verify.boundary_starts=3", "verify.n_boot=50",
        "verify.properties=['P=? [F<=5 \"lava\"]', 'P=? [F \"goal\"]', 'Pmax=? [F<=5 \"lava\"]', "
        "'P=? [!\"goal\" U \"lava\"]']"]
PROBED = ("in_lava", "at_goal", "dist_to_lava", "steps_to_goal", "has_key", "door_open")
ROW_KEYS = {"property", "policy", "probability", "upper_bound", "empirical", "empirical_ci", "states", "agrees", "note"}


@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory, tiny_run_files) -> tuple[Path, Path, Path]:
    """``(data, dynamics_dir, probes_dir)`` as the earlier stages leave them (no training)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("run")
    cfg = resolve(BASE)
    run_collect(cfg, root / "data", progress=False)
    tiny_run_files.checkpoint(root, HIDDEN)
    tiny_run_files.ontology(root, PROBED, HIDDEN, scale=3.0, biases={"binary": -0.5, "scalar": 2.0})
    return root / "data", root / "dynamics", root / "probes"


@pytest.fixture(scope="module")
def staged(run_dirs, tmp_path_factory):
    out = tmp_path_factory.mktemp("verify")
    cfg = resolve(BASE)
    return cfg, out, run_verify(cfg, *run_dirs, out, progress=False)


def test_metrics_rows_have_the_schema(staged):
    cfg, out, metrics = staged
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["rows"] == json.loads(json.dumps(metrics["rows"]))
    rows = on_disk["rows"]
    policies = {r["policy"] for r in rows}
    assert policies == {"uniform", "planner:discrete_cem", "mdp (all actions)"}, on_disk["skipped"]
    for r in rows:
        assert ROW_KEYS <= set(r)
        assert -1e-9 <= r["lower_bound"] <= r["probability"] + 1e-9 and r["probability"] <= r["upper_bound"] + 1e-9
        assert r["upper_bound"] <= 1.0 + 1e-9
        assert r["states"] >= 1 and isinstance(r["note"], str) and r["note"]
    reach = [r for r in rows if r["policy"] != "mdp (all actions)" and "U" not in r["property"]]
    for r in reach:
        lo, hi = r["empirical_ci"]
        assert lo <= r["empirical"] <= hi and isinstance(r["agrees"], bool) and isinstance(r["bound_holds"], bool)
        assert ("DISAGREES" in r["note"]) == (not r["agrees"])
        assert r["agrees"] == (lo - 1e-12 <= r["probability"] <= hi + 1e-12)
    until = next(r for r in rows if "U" in r["property"] and r["policy"] == "uniform")
    assert until["empirical"] is None and until["agrees"] is None    # no real-world event measured for U
    uni = next(r for r in rows if r["policy"] == "uniform" and r["property"] == 'P=? [F<=5 "lava"]')
    assert uni["episodes"] == 30
    [a_uni, a_plan] = on_disk["abstractions"]
    assert a_uni["rollouts"] == 64 and a_plan["rollouts"] == 2 and a_uni["starts"] == 6
    b = on_disk["boundary"]
    assert b["compared"] == "the planner's plans" and b["effects"][0]["concept"] == "door_open"
    assert set(b["effects"][0]) >= {"mean_change", "max_change", "exceed_rate", "tolerance"}
    summary = verify_summary(out)
    assert len(summary) == len(rows)
    assert all({"property", "policy", "probability", "upper_bound", "empirical", "states"} <= set(s) for s in summary)


def test_reproducible(staged, run_dirs, tmp_path):
    cfg, _, metrics = staged
    again = run_verify(cfg, *run_dirs, tmp_path, progress=False)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert json.loads(json.dumps(again["rows"])) == json.loads(json.dumps(metrics["rows"]))
    assert strip(again["abstractions"]) == strip(metrics["abstractions"])


def test_disabled_and_missing_probe_are_reported(run_dirs, tmp_path):
    m = run_verify(resolve([*BASE, "verify.enabled=false"]), *run_dirs, tmp_path / "a", progress=False)
    assert m["skipped_stage"] == "verify.enabled is false" and m["rows"] == []
    m = run_verify(resolve([*BASE, "verify.concepts=[lava_adjacent]"]), *run_dirs, tmp_path / "b", progress=False)
    assert "no probe for ['lava_adjacent']" in m["skipped_stage"]
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["rows"] == []


def test_bad_property_text_is_a_config_error():
    with pytest.raises(ConfigError, match=r"unknown label\(s\) \['hazard'\].*'lava'"):
        resolve([*BASE[:-1], "verify.properties=['P=? [F<=5 \"hazard\"]']"])
    with pytest.raises(ConfigError, match="cannot parse property"):
        resolve([*BASE[:-1], "verify.properties=['P=? [F<= \"lava\"]']"])
    with pytest.raises(ConfigError, match="properties must look like"):
        resolve([*BASE[:-1], "verify.properties=['F \"lava\"']"])
    with pytest.raises(ConfigError, match="strictly increasing"):
        resolve([*BASE, "verify.bins={dist_to_lava: [3, 1]}"])
    with pytest.raises(ConfigError, match="must be binary"):
        resolve([*BASE, "verify.labels={steps_to_goal: far}", "verify.properties=['P=? [F \"far\"]']"])
    with pytest.raises(ConfigError, match="verify.protected"):
        resolve([*BASE, "verify.protected=[nope]"])


def test_command_line(run_dirs, tmp_path, capsys):
    data, dyn, probes = run_dirs
    args = [*BASE, "verify.policies=[uniform]", "verify.properties=['P=? [F<=5 \"lava\"]']",
            f"data={data}", f"checkpoint={dyn}", f"ontology={probes}", f"out={tmp_path / 'v'}"]
    assert cmd_verify(args) == 0
    assert "metrics.json in" in capsys.readouterr().out
    assert [r["policy"] for r in verify_summary(tmp_path / "v" / "metrics.json")] == ["uniform"]
    assert (tmp_path / "v" / "config.yaml").is_file()
    with pytest.raises(ConfigError, match="needs run=RUN_DIR"):
        cmd_verify([*BASE, f"data={data}", f"ontology={probes}"])
    with pytest.raises(ConfigError, match="needs out="):
        cmd_verify([*BASE, f"data={data}", f"checkpoint={dyn}", f"ontology={probes}"])
    with pytest.raises(ConfigError, match="no ontology"):
        cmd_verify([*BASE, f"data={data}", f"checkpoint={dyn}", f"ontology={tmp_path}", f"out={tmp_path / 'w'}"])
    with pytest.raises(ConfigError, match="unknown label"):
        cmd_verify([*BASE[:-1], "verify.properties=['P=? [F \"hazard\"]']", f"data={data}", f"checkpoint={dyn}",
                    f"ontology={probes}", f"out={tmp_path / 'w'}"])
    assert not (tmp_path / "w").exists()                            # refused before any output


def test_command_line_on_a_run_folder(run_dirs):
    from experiments.provenance import write_config

    root = run_dirs[0].parent                                          # data/, dynamics/, probes/ as a run leaves them
    write_config(resolve(BASE), root / "config.yaml")
    assert cmd_verify([f"run={root}", "verify.policies=[uniform]", "verify.rollouts=16"]) == 0
    rows = verify_summary(root / "verify")
    assert {r["policy"] for r in rows} == {"uniform", "mdp (all actions)"}   # the run's properties, from its config
