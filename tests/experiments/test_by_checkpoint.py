"""Score by site x training checkpoint: snapshots from the train stage, ``probes/by_checkpoint.csv`` from the
probe stage, the heatmap in the report and in ``ontolab compare``, and the config keys' validation."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from dynamics import build_model
from dynamics.training.callbacks import snapshot_path
from dynamics.training.checkpoint import META_KEY, AtomicCheckpointIO, load_model, model_meta
from experiments.compare import compare_runs
from experiments.config import ConfigError
from experiments.plots import NothingToPlot, plot_by_checkpoint
from experiments.report import where_when_section
from experiments.schema import resolve
from experiments.stages.by_checkpoint import COLUMNS, probe_by_checkpoint, read_by_checkpoint_csv
from experiments.stages.probe import run_probe
from experiments.stages.train import run_train, snapshot_steps
from probes.extract import LatentStore
from worlds import TrajectoryDataset, collect, make_policy, make_world

HIDDEN = 16
CONCEPTS = ("has_key", "door_open", "in_lava", "steps_to_goal")
MODEL = ["world=lavakeydoor", "world.size=7", "dynamics=gru", f"dynamics.hparams.deter={HIDDEN}",
         f"dynamics.hparams.hidden={HIDDEN}", f"dynamics.hparams.embed={HIDDEN}", "wandb.mode=disabled"]
PROBES = ["probes.methods=[linear]", "probes.n_boot=30", "probes.mdl=false", "probes.control=false",
          "probes.imagination=false", "probes.state_consistency=false", "probes.causal=false",
          f"probes.concepts=[{','.join(CONCEPTS)}]"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("by_checkpoint")
    world = make_world("lavakeydoor", num_envs=8, seed=0, size=7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rare-concept warning: expected on a dataset this small
        collect(world, make_policy("mixture", epsilon=0.3), 60, root / "ds", seed=0, ood_episodes=0,
                progress=False, split_fractions=(0.5, 0.2, 0.3))
    return root, TrajectoryDataset.open(root / "ds")


def test_snapshot_steps_from_fractions():
    assert snapshot_steps((0.1, 0.25, 0.5), 1500) == (0, 150, 375, 750)
    assert snapshot_steps((0.5, 0.1, 0.5), 6) == (0, 1, 3)  # rounded half up, at least 1, deduplicated
    assert snapshot_steps((0.9,), 2) == (0, 1)  # below max_steps: the final weights are last.ckpt
    assert snapshot_steps((0.5,), 1) == (0,) and snapshot_steps((), 100) == ()


def test_train_and_probe_stages_write_snapshots_and_one_row_per_step_site_concept(data, tmp_path):
    root, ds = data
    cfg = resolve([*MODEL, *PROBES, "dynamics.max_steps=8", "dynamics.val_every=4", "dynamics.batch_size=4",
                   "dynamics.window=8", "dynamics.snapshots=[0.25,0.5]"])
    run_train(cfg, root / "ds", tmp_path / "train", progress=False)
    for step in (0, 2, 4):
        path = snapshot_path(tmp_path / "train" / "checkpoints", step)
        assert torch.load(path, weights_only=True)["global_step"] == step
        assert load_model(path, expected_model="gru").sites.keys() >= {"deter"}
    assert json.loads((tmp_path / "train" / "metrics.json").read_text())["snapshots"]["steps"] == [0, 2, 4]

    run_probe(cfg, root / "ds", tmp_path / "train", tmp_path / "probes", progress=False)
    rows = read_by_checkpoint_csv(tmp_path / "probes" / "by_checkpoint.csv")
    sites = tuple(load_model(tmp_path / "train" / "checkpoints" / "last.ckpt").sites)
    keys = [(r["step"], r["site"], r["concept"], r["metric"]) for r in rows]
    want = {(t, s, c, "r2" if c == "steps_to_goal" else "balanced_accuracy")
            for t in (0, 2, 4, 8) for s in sites for c in CONCEPTS}
    assert len(keys) == len(set(keys)) and set(keys) == want
    assert all(r["ci_low"] <= r["estimate"] <= r["ci_high"] for r in rows)
    assert not any(p.name.startswith(".by_checkpoint") for p in (tmp_path / "probes").iterdir())  # scratch removed
    # switched off: no file
    off = resolve([*MODEL, *PROBES, "probes.by_checkpoint=false"])
    run_probe(off, root / "ds", tmp_path / "train", tmp_path / "probes_off", progress=False)
    assert not (tmp_path / "probes_off" / "by_checkpoint.csv").exists()


def _save(model, path, step):
    ckpt = {"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, META_KEY: model_meta(model),
            "global_step": step}
    AtomicCheckpointIO().save_checkpoint(ckpt, path)


@pytest.fixture(scope="module")
def planted(data, tmp_path_factory):
    """Snapshot 0: a GRU with every weight zero (every latent is 0, so no probe can beat chance); the final model's
    latents: planted, the concept values themselves plus noise (a linear probe reads them almost perfectly). Plus a
    corrupt snapshot and one past the final step."""
    root, ds = data
    out = tmp_path_factory.mktemp("planted")
    torch.manual_seed(0)
    model = build_model("gru", {"shape": ds.obs_spec["shape"], "kind": ds.obs_spec["obs_kind"]},
                        {"discrete": True, "n": ds.action_spec["n"]}, deter=HIDDEN, hidden=HIDDEN, embed=HIDDEN).train(False)
    ckpts = out / "train" / "checkpoints"
    _save(model, ckpts / "last.ckpt", 10)
    zero = build_model("gru", {"shape": ds.obs_spec["shape"], "kind": ds.obs_spec["obs_kind"]},
                       {"discrete": True, "n": ds.action_spec["n"]}, deter=HIDDEN, hidden=HIDDEN, embed=HIDDEN)
    with torch.no_grad():
        for p in zero.parameters():
            p.zero_()
    _save(zero, snapshot_path(ckpts, 0), 0)
    _save(model, snapshot_path(ckpts, 5), 5)
    bad = snapshot_path(ckpts, 5)
    bad.write_bytes(bad.read_bytes()[:100])  # truncated: named in skipped, not loaded
    _save(zero, snapshot_path(ckpts, 20), 20)  # past the final step: not a point of the view
    sites = ("deter",)
    rng = np.random.default_rng(0)
    names = list(ds.schema.names)
    cols = {s: ds.concat(s, [*(f"concept.{c}" for c in names), "episode_id", "t"]) for s in ("train", "val", "test")}
    latents = {s: {"deter": np.concatenate([np.stack([v[f"concept.{c}"].astype(np.float32) for c in names], 1),
                                            rng.normal(size=(len(v["t"]), HIDDEN - len(names)))], 1)
                   + 0.05 * rng.normal(size=(len(v["t"]), HIDDEN))} for s, v in cols.items()}
    final = LatentStore.from_arrays(out / "latents", schema=ds.schema, sites=latents,
                                    concepts={s: {c: v[f"concept.{c}"] for c in names} for s, v in cols.items()},
                                    episodes={s: v["episode_id"] for s, v in cols.items()},
                                    steps={s: v["t"] for s, v in cols.items()})
    rows, skipped = probe_by_checkpoint(out / "train", ds, final, out, sites=sites, concepts=CONCEPTS,
                                        expected_model="gru", n_boot=30, seed=0)
    return out, rows, skipped


def test_scores_rise_from_a_chance_snapshot_to_the_final_model(planted):
    out, rows, skipped = planted
    assert rows == read_by_checkpoint_csv(out / "by_checkpoint.csv")
    assert {r["step"] for r in rows} == {0, 10}
    assert "corrupt" in skipped["by_checkpoint:step=5"]
    first = {r["concept"]: r for r in rows if r["step"] == 0}
    last = {r["concept"]: r for r in rows if r["step"] == 10}
    for c in ("has_key", "door_open", "in_lava"):
        assert first[c]["estimate"] == 0.5  # constant latents: one predicted class, balanced accuracy exactly chance
    assert first["steps_to_goal"]["estimate"] <= 0.01  # a constant prediction explains nothing
    for c in CONCEPTS:
        assert last[c]["estimate"] > 0.9 and last[c]["ci_low"] > first[c]["ci_high"]


def test_heatmap_report_section_and_compare(planted, tmp_path):
    out, rows, _ = planted
    png = plot_by_checkpoint(rows, tmp_path / "plots" / "by_checkpoint.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(NothingToPlot, match="no by-checkpoint rows"):
        plot_by_checkpoint([], tmp_path / "none.png")
    text = "\n".join(where_when_section({"probes_by_checkpoint": rows}, png, tmp_path))
    assert "## Where and when" in text and "](plots/by_checkpoint.png)" in text and "0.50 -> " in text
    assert where_when_section({"probes": []}) == []

    run = tmp_path / "runA"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({"world": "lavakeydoor", "seed": 0, "probes": [],
                                                  "probes_by_checkpoint": rows}))
    report = compare_runs([run], tmp_path / "cmp")
    assert (tmp_path / "cmp" / "plots" / "by_checkpoint-runA.png").is_file()
    assert "## Where and when" in report.read_text() and "plots/by_checkpoint-runA.png" in report.read_text()
    assert COLUMNS == ("step", "site", "concept", "metric", "estimate", "ci_low", "ci_high")


@pytest.mark.parametrize("arg, match", [
    ("dynamics.snapshots=[0.5,1.5]", r"dynamics.snapshots must be fractions of max_steps strictly between 0 and 1"),
    ("dynamics.snapshots=[0]", r"strictly between 0 and 1 .*got \[0.0\]"),
    ("dynamics.snapshots=[0.5,1]", r"strictly between 0 and 1"),
    ("dynamics.snapshots={a: 1}", r"config key 'dynamics.snapshots' must be a list"),
    ("dynamics.snapshots=true", r"config key 'dynamics.snapshots' must be a list"),
    ("dynamics.snapshots=[half]", r"config key 'dynamics.snapshots\[0\]' must be a number"),
    ("probes.by_checkpoint=maybe", r"config key 'probes.by_checkpoint' must be true or false"),
])
def test_bad_config_is_refused_in_one_line(arg, match):
    with pytest.raises(ConfigError, match=match) as err:
        resolve([arg])
    assert "\n" not in str(err.value)
