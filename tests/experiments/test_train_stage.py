"""The train stage's open-loop report (``open_loop.json``): seen / never-seen cells where the world says how."""

from __future__ import annotations

import json

import pytest
import torch

from dynamics import ActionSpec, ObsSpec, build_model
from experiments.stages.train import evaluate_stage
from worlds.collect import collect
from worlds.dataset import TrajectoryDataset, action_spec_of, obs_spec_of
from worlds.policies import make_policy
from worlds.registry import make_world


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    world = make_world("lavakeydoor", num_envs=8, seed=0)
    out = tmp_path_factory.mktemp("data") / "ds"
    collect(world, make_policy("random"), 40, out, seed=0, progress=False, min_base_rate=0.0)
    return out, world


def test_seen_cells_are_reported_for_a_translated_grid_view(dataset, tmp_path):
    path, world = dataset
    torch.manual_seed(0)
    model = build_model("rssm", ObsSpec.from_manifest(obs_spec_of(world)), ActionSpec.from_manifest(action_spec_of(world)),
                        deter=32, hidden=32, embed=32, stoch=4, classes=4).train(False)
    result = evaluate_stage(model, path, tmp_path, split="train", context=5, horizons=(1, 3))
    assert result == json.loads((tmp_path / "open_loop.json").read_text())
    assert set(result["model_seen_cells"]) == {"1", "3"}
    frac = result["seen_fraction"]
    assert 0.0 < frac["3"] <= frac["1"] <= 1.0  # looking further ahead reaches more of the map never seen
    for k in ("1", "3"):  # the seen cells are the last view's plus those seen only before it
        last, mem = result["model_last_view_cells"][k], result["model_memory_cells"][k]
        assert 0.0 <= result["memory_fraction"][k] <= frac[k]
        both = last["estimate"] * (frac[k] - result["memory_fraction"][k]) + mem["estimate"] * result["memory_fraction"][k]
        assert both == pytest.approx(result["model_seen_cells"][k]["estimate"] * frac[k])
    for k in ("1", "3"):
        seen, allc = result["copy_seen_cells"][k]["estimate"], result["copy_last_frame"][k]["estimate"]
        assert 0.0 <= seen <= 1.0 and 0.0 <= allc <= 1.0
    # lavakeydoor declares a hidden-concept test (has_key decides the door): scored beside the open-loop numbers
    hidden, = result["hidden_concepts"]
    assert hidden["test"] == "door_opens" and hidden["concept"] == "has_key"
    assert hidden["events"] == hidden["events_true"] + hidden["events_false"]
    assert hidden["events_true"] > 0 and hidden["events_false"] > 0  # 40 random episodes bump into doors
    assert hidden["truth_agreement"]["estimate"] == 1.0 and 0.0 <= hidden["auroc"]["estimate"] <= 1.0


def test_no_seen_split_without_view_positions(dataset, tmp_path, monkeypatch):
    path, world = dataset
    monkeypatch.setattr(type(world), "view_position_concepts", None)
    model = build_model("gru", ObsSpec.from_manifest(obs_spec_of(world)), ActionSpec.from_manifest(action_spec_of(world)),
                        deter=16, hidden=16, embed=16).train(False)
    result = evaluate_stage(model, path, tmp_path, split="train", context=5, horizons=(1,))
    assert "model_seen_cells" not in result and "model" in result
    assert TrajectoryDataset.open(path).world_name == "lavakeydoor"


def test_recall_by_cell_class_is_reported_with_the_worlds_cell_names(dataset, tmp_path):
    from worlds.lavakeydoor import CELL_NAMES

    path, world = dataset
    torch.manual_seed(0)
    model = build_model("gru", ObsSpec.from_manifest(obs_spec_of(world)), ActionSpec.from_manifest(action_spec_of(world)),
                        deter=16, hidden=16, embed=16).train(False)
    result = evaluate_stage(model, path, tmp_path, split="train", context=5, horizons=(1, 3))
    assert result["class_names"] == list(CELL_NAMES)
    for key in ("model_balanced", "copy_balanced", "model_seen_balanced", "copy_seen_balanced"):
        assert set(result[key]) == {"1", "3"} and 0.0 <= result[key]["3"]["estimate"] <= 1.0
    recall = result["model_seen_class_recall"]["1"]
    assert set(recall) <= set(CELL_NAMES) and {"empty", "wall"} <= set(recall)
    assert sum(e["count"] for e in recall.values()) > 0
    # the macro recall is the mean of the per-class recalls
    assert result["copy_balanced"]["1"]["estimate"] == pytest.approx(
        sum(e["estimate"] for e in result["copy_class_recall"]["1"].values()) / len(result["copy_class_recall"]["1"]))


def test_wandb_mode_disabled_in_the_environment_turns_training_logging_off(dataset, tmp_path, monkeypatch):
    """WANDB_MODE=disabled wins over wandb.mode=offline for the training logger too (as for the run's own wandb
    run, experiments.tracking.effective_mode): no wandb folder is written."""
    from experiments.schema import resolve
    from experiments.stages.train import run_train

    path, _ = dataset
    monkeypatch.setenv("WANDB_MODE", "disabled")
    cfg = resolve([f"out={tmp_path / 'train'}", "wandb.mode=offline", "dynamics.max_steps=2", "dynamics.val_every=2",
                   "dynamics.batch_size=2", "dynamics.window=8", "dynamics.hparams.deter=16", "dynamics.hparams.hidden=16",
                   "dynamics.hparams.embed=16", "dynamics.hparams.stoch=4", "dynamics.snapshots=[]"])
    result = run_train(cfg, path, tmp_path / "train", progress=False)
    assert result.steps == 2 and (tmp_path / "train" / "metrics.json").is_file()
    assert not (tmp_path / "train" / "wandb").exists()
    assert json.loads((tmp_path / "train" / "run.json").read_text())["wandb_run_id"] is None
