"""``ontolab probe``: the probe stage on its own, from a dataset and a checkpoint; bad inputs fail in one line."""

from __future__ import annotations

import csv
import hashlib
import json
import warnings

import numpy as np
import pytest
import torch

from dynamics import build_model
from dynamics.training.checkpoint import META_KEY, AtomicCheckpointIO, model_meta
from experiments.config import ConfigError
from experiments.stages.commands import cmd_probe
from probes import Ontology
from worlds import TrajectoryDataset, collect, make_policy, make_world

HIDDEN = 16
TINY = ["wandb.mode=disabled", "probes.methods=[linear]", "probes.sites=[deter]", "probes.n_boot=20",
        "probes.mdl=false", "probes.imagination=false", "probes.concepts=[has_key,in_lava,agent_row]"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A small lavakeydoor dataset and a GRU trained on it for a few steps, saved as `ontolab train` does."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("probe_cmd")
    world = make_world("lavakeydoor", num_envs=8, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rare-concept warning: expected on a dataset this small
        collect(world, make_policy("mixture", epsilon=0.3), 32, root / "ds", seed=0, ood_episodes=0,
                progress=False, split_fractions=(0.6, 0.2, 0.2))
    ds = TrajectoryDataset.open(root / "ds")
    torch.manual_seed(0)
    model = build_model("gru", {"shape": ds.obs_spec["shape"], "kind": ds.obs_spec["obs_kind"]},
                        {"discrete": True, "n": ds.action_spec["n"]}, deter=HIDDEN, hidden=HIDDEN, embed=HIDDEN)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = np.random.default_rng(0)
    ids = ds.episode_ids("train")
    long = ids[ds.episode_lengths(ids) >= 8]
    for _ in range(5):  # a few steps: the command must not care how well the model is trained
        ws = [ds.window(int(i), 0, 8, ["obs", "actions", "is_first"]) for i in gen.choice(long, 4)]
        b = {k: torch.from_numpy(np.stack([w[k] for w in ws])) for k in ("obs", "actions", "is_first")}
        loss = model.loss(b["obs"], b["actions"], b["is_first"]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    ckpt = {"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, META_KEY: model_meta(model),
            "global_step": 5}
    AtomicCheckpointIO().save_checkpoint(ckpt, root / "train" / "checkpoints" / "last.ckpt")
    return root, ds


def test_probe_command_writes_results_and_an_ontology(inputs, capsys):
    root, ds = inputs
    out = root / "probes"
    assert cmd_probe([f"data={root / 'ds'}", f"checkpoint={root / 'train'}", f"out={out}", *TINY]) == 0
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["concept"] for r in rows} >= {"has_key", "in_lava", "agent_row"}
    linear = [r for r in rows if r["method"] == "linear"]
    assert linear and {r["site"] for r in linear} == {"deter"}
    assert {"balanced_accuracy", "r2"} <= {r["metric"] for r in linear}
    for r in rows:
        lo, est, hi = (float(r[k]) if r[k] not in ("", "nan") else np.nan for k in ("ci_low", "estimate", "ci_high"))
        assert np.isnan(est) or lo - 1e-9 <= est <= hi + 1e-9
    onto = Ontology.load(out / "ontology")
    assert set(onto) <= {"has_key", "in_lava", "agent_row"} and len(list(onto)) >= 2
    for name in onto:
        assert onto[name].site == "deter" and onto[name].probe.norm.dim == HIDDEN
    # what produced it, beside it: the config (the checkpoint's model) and the input fingerprints
    cfg = (out / "config.yaml").read_text()
    assert "model: gru" in cfg and f"deter: {HIDDEN}" in cfg
    ins = json.loads((out / "inputs.json").read_text())
    assert ins["dataset_fingerprint"] == ds.fingerprint
    ckpt = root / "train" / "checkpoints" / "last.ckpt"
    assert ins["checkpoint_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert "ontology/" in capsys.readouterr().out
    # a .ckpt file works as well as the train folder, and the same inputs give the same ontology
    again = root / "probes_file"
    assert cmd_probe([f"data={root / 'ds'}", f"checkpoint={ckpt}", f"out={again}", *TINY]) == 0
    other = Ontology.load(again / "ontology")
    for name in onto:
        assert torch.equal(onto[name].probe.weight, other[name].probe.weight)


@pytest.mark.parametrize("args, match", [
    (["checkpoint={root}/train"], "needs a dataset: data=PATH"),
    (["data={root}/ds"], "needs a trained model: checkpoint=PATH"),
    (["data={root}/ds", "checkpoint="], "checkpoint= needs a path"),
    (["data={root}/nowhere", "checkpoint={root}/train"], r"data=.*nowhere"),
    (["data={root}/ds", "checkpoint={root}/ds"], "holds no dynamics checkpoint"),
    (["data={root}/ds", "dynamics={root}/train"], "names the model kind .* checkpoint="),
    (["data={root}/ds", "checkpoint={root}/train", "dynamics=rssm"], "holds a 'gru' model but dynamics.model='rssm'"),
    # spr has no `recon_balance`: the checkpoint's gru hparams used to be checked against spr first
    (["data={root}/ds", "checkpoint={root}/train", "dynamics=spr"],
     r"holds a 'gru' model but dynamics.model='spr'; drop dynamics= or pass dynamics=gru$"),
    (["data={root}/ds", "checkpoint={root}/train", "dynamics.hparams.deter=8"], r"other dynamics.hparams \(deter\)"),
    (["data={root}/ds", "checkpoint={root}/train", "probes.sites=[nowhere]"], "has no site"),
])
def test_bad_inputs_fail_in_one_line_before_any_output(inputs, args, match):
    root, _ = inputs
    out = root / "never"
    with pytest.raises(ConfigError, match=match) as e:
        cmd_probe([a.format(root=root) for a in args] + [f"out={out}", *TINY[:1]])
    assert "\n" not in str(e.value)
    assert not out.exists()


def test_a_model_mismatch_is_named_before_the_configured_models_hparams_are_checked(inputs, tmp_path):
    """An RSSM checkpoint with dynamics=gru: the checkpoint's hparams (stoch, classes...) are no gru hparams, but the
    problem to report is the model mismatch, with the fix; a config file's dynamics.model is checked the same way."""
    root, ds = inputs
    torch.manual_seed(0)
    model = build_model("rssm", {"shape": ds.obs_spec["shape"], "kind": ds.obs_spec["obs_kind"]},
                        {"discrete": True, "n": ds.action_spec["n"]}, deter=HIDDEN, hidden=HIDDEN, embed=HIDDEN,
                        stoch=4, classes=4)
    ckpt = {"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, META_KEY: model_meta(model),
            "global_step": 0}
    AtomicCheckpointIO().save_checkpoint(ckpt, tmp_path / "rssm.ckpt")
    config = tmp_path / "gru.yaml"
    config.write_text("dynamics:\n  model: gru\n")
    for args in (["dynamics=gru"], [str(config)]):
        with pytest.raises(ConfigError, match=r"holds a 'rssm' model but dynamics.model='gru'; drop dynamics= or pass "
                                              r"dynamics=rssm$") as e:
            cmd_probe([*args, f"data={root / 'ds'}", f"checkpoint={tmp_path / 'rssm.ckpt'}", f"out={tmp_path / 'out'}"])
        assert "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()


def test_data_may_name_a_runs_data_stage_folder(inputs, tmp_path):
    """`ontolab run` links RUN/data to the data stage's folder, which holds the dataset in dataset/: data=RUN/data
    finds it (it used to say the dataset was incomplete and to re-collect it)."""
    import shutil

    from experiments.stages.commands import probe_inputs

    root, ds = inputs
    stage = tmp_path / "cache" / "data" / "0123abcd"
    shutil.copytree(root / "ds", stage / "dataset")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "data").symlink_to(stage, target_is_directory=True)
    for given in (tmp_path / "run" / "data", stage, stage / "dataset"):
        cfg, data, _, _ = probe_inputs([f"data={given}", f"checkpoint={root / 'train'}", f"out={tmp_path / 'out'}", *TINY])
        assert data.resolve() == (stage / "dataset").resolve() and cfg.data.path == str(data)  # config.yaml names it
        assert TrajectoryDataset.open(data, verify=False).fingerprint == ds.fingerprint
    (stage / "dataset" / "manifest.json").unlink()  # an incomplete dataset is still named as such
    with pytest.raises(ConfigError, match=r"data=.*dataset/manifest.json is missing"):
        probe_inputs([f"data={tmp_path / 'run' / 'data'}", f"checkpoint={root / 'train'}", f"out={tmp_path / 'out'}"])
