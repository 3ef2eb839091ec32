"""The probe stage on a dataset whose split rule left the test split empty (a small dataset, or split_fractions with
test = 0): the stage still writes its results (val-chosen ontology, ood rows, by_checkpoint.csv without rows), and
says what it skipped. It used to crash twice: ``KeyError: 'test'`` in the harness's control task, and
``ProbeError: split(s) ['test'] hold no episodes`` when a training snapshot's latents were extracted."""

from __future__ import annotations

import warnings

import pytest
import torch

from dynamics import build_model
from dynamics.training.callbacks import snapshot_path
from dynamics.training.checkpoint import META_KEY, AtomicCheckpointIO, model_meta
from experiments.schema import resolve
from experiments.stages.by_checkpoint import read_by_checkpoint_csv
from experiments.stages.probe import run_probe
from probes.results import read_results_csv
from worlds import TrajectoryDataset, collect, make_policy, make_world

HIDDEN = 8
CONFIG = ["world=lavakeydoor", "world.size=9", "dynamics=gru", f"dynamics.hparams.deter={HIDDEN}",
          f"dynamics.hparams.hidden={HIDDEN}", f"dynamics.hparams.embed={HIDDEN}", "wandb.mode=disabled",
          "probes.methods=[linear]", "probes.sites=[deter]", "probes.n_boot=20", "probes.concepts=[has_key,steps_to_goal]",
          "probes.history=false", "probes.imagined_fit=false", "probes.mdl=false"]  # control and by_checkpoint: on (defaults)


@pytest.fixture(scope="module")
def no_test(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("no_test")
    world = make_world("lavakeydoor", num_envs=4, seed=0, size=9)
    ood_world = make_world("lavakeydoor", num_envs=4, seed=1, size=9, families=("moat",))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rare-concept warning: expected on a dataset this small
        collect(world, make_policy("mixture", epsilon=0.3), 24, root / "ds", seed=0, ood_episodes=6, ood_world=ood_world,
                progress=False, split_fractions=(0.6, 0.4, 0.0))
    ds = TrajectoryDataset.open(root / "ds")
    assert "test" not in ds.splits and "ood" in ds.splits
    ckpts = root / "train" / "checkpoints"
    for step, seed in ((0, 1), (4, 0)):  # a snapshot at step 0 and the final weights at step 4
        torch.manual_seed(seed)
        model = build_model("gru", {"shape": ds.obs_spec["shape"], "kind": ds.obs_spec["obs_kind"]},
                            {"discrete": True, "n": ds.action_spec["n"]}, deter=HIDDEN, hidden=HIDDEN, embed=HIDDEN)
        ckpt = {"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, META_KEY: model_meta(model),
                "global_step": step}
        AtomicCheckpointIO().save_checkpoint(ckpt, snapshot_path(ckpts, step) if step == 0 else ckpts / "last.ckpt")
    return root


def test_a_dataset_without_test_episodes_is_probed_and_scored_on_ood(no_test):
    out = no_test / "probes"
    res = run_probe(resolve(CONFIG), no_test / "ds", no_test / "train", out, progress=False)
    rows = read_results_csv(out / "results.csv")
    assert rows and {r.split for r in rows} == {"ood"}
    assert {r.method for r in rows} >= {"linear", "prior", "observation", "random_model"}
    assert set(res.ontology) == {"has_key", "steps_to_goal"}
    assert "test" in res.skipped["selectivity"] and res.skipped["model_checks"] == "the dataset has no test split"
    assert read_by_checkpoint_csv(out / "by_checkpoint.csv") == []  # nothing to score at any step, and no crash
    assert not [k for k in res.skipped if k.startswith("by_checkpoint:step=0") and "hold no episodes" in res.skipped[k]]


def test_the_random_model_baseline_is_a_fresh_seeded_model_of_the_same_architecture(no_test):
    """The random-model rows read latents of a model built like the checkpoint's (same class and hparams), from
    seeded initial weights (run seed + 1), never the trained weights."""
    import dataclasses
    import json

    from dynamics.training import load_model
    from experiments.stages.train import build_for_dataset
    from probes.extract import model_fingerprint

    out = no_test / "probes_rand"
    cfg = resolve([*CONFIG, "probes.by_checkpoint=false", "probes.control=false"])
    run_probe(cfg, no_test / "ds", no_test / "train", out, progress=False)
    trained, fresh = (json.loads((out / d / "manifest.json").read_text()) for d in ("latents", "latents_random"))
    assert fresh["model"]["hparams"] == trained["model"]["hparams"] and fresh["model"]["name"] == trained["model"]["name"]
    ds = TrajectoryDataset.open(no_test / "ds")
    want = build_for_dataset(dataclasses.replace(cfg, seed=cfg.seed + 1), ds)
    assert fresh["key"]["model"] == model_fingerprint(want)
    assert trained["key"]["model"] == model_fingerprint(load_model(no_test / "train" / "checkpoints" / "last.ckpt"))
    assert fresh["key"]["model"] != trained["key"]["model"] and fresh["key"]["dataset"] == trained["key"]["dataset"]
