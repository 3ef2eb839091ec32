"""Training snapshots: weights-only ``snapshot-step=<N>.ckpt`` at the requested steps, loadable with
``weights_only=True``, invisible to resume, and without effect on the training trajectory."""

from __future__ import annotations

import json

import pytest
import pytorch_lightning as pl
import torch

from dynamics.base import ActionSpec, ObsSpec
from dynamics.training import fit_dynamics
from dynamics.training.callbacks import list_snapshots, snapshot_path
from dynamics.training.checkpoint import META_KEY, find_resume_checkpoint, load_model, read_checkpoint
from worlds.errors import OntolabError

STEPS, SNAPS = 12, (0, 3, 7)
SETTINGS = dict(val_every=4, checkpoint_every=4, seed=3)


def _weights(path):
    return read_checkpoint(path)["state_dict"]


class _Record(pl.Callback):
    """The model's weights after every optimizer step (the independent reference for each snapshot)."""

    def __init__(self):
        self.by_step = {}

    def on_train_start(self, trainer, pl_module):
        self.by_step[trainer.global_step] = {f"model.{k}": v.clone() for k, v in pl_module.model.state_dict().items()}

    def on_train_batch_end(self, trainer, pl_module, *rest):
        self.by_step[trainer.global_step] = {f"model.{k}": v.clone() for k, v in pl_module.model.state_dict().items()}


class _Crash(pl.Callback):
    def on_train_batch_start(self, trainer, *rest):
        if trainer.global_step == 9:
            raise RuntimeError("simulated crash at step 9")


@pytest.fixture(scope="module")
def snapped(kit, tmp_path_factory):
    src, out, rec = kit.walk_source(), tmp_path_factory.mktemp("snap"), _Record()
    result = fit_dynamics(kit.tiny_for(src), src, out, max_steps=STEPS, snapshot_steps=SNAPS + (50,),
                          callbacks=[rec], **SETTINGS, **kit.fast)
    return src, out, result, rec


def test_snapshots_hold_the_weights_at_their_steps_and_load_weights_only(kit, snapped):
    src, out, result, rec = snapped
    ckpts = out / "checkpoints"
    assert sorted(result.snapshots) == list(SNAPS)  # step 50 was never reached: no file
    assert list_snapshots(ckpts) == {s: snapshot_path(ckpts, s) for s in SNAPS}
    for step in SNAPS:
        path = snapshot_path(ckpts, step)
        raw = torch.load(path, weights_only=True)  # plain torch, no ontolab reader: loadable without pickle
        assert raw["global_step"] == step and "optimizer_states" not in raw and "callbacks" not in raw
        assert raw[META_KEY]["model"] == "tiny"
        state = read_checkpoint(path)["state_dict"]  # verified against its sidecar
        assert state.keys() == rec.by_step[step].keys()
        assert all(torch.equal(state[k], rec.by_step[step][k]) for k in state)
        model = load_model(path, build=lambda name, o, a, hp: kit.tiny_for(src))
        assert isinstance(model.obs_spec, ObsSpec) and isinstance(model.action_spec, ActionSpec)
    assert not torch.equal(_weights(snapshot_path(ckpts, 0))["model.dec.weight"],
                           _weights(snapshot_path(ckpts, 7))["model.dec.weight"])
    metrics = json.loads((out / "metrics.json").read_text())["snapshots"]
    assert metrics["requested"] == [*SNAPS, 50] and metrics["steps"] == list(SNAPS)
    assert metrics["files"]["3"] == "checkpoints/snapshot-step=3.ckpt"  # relative: the folder may be moved


def test_snapshots_do_not_change_training_and_are_never_resumed_from(kit, snapped, tmp_path):
    src, out, result, _ = snapped
    plain = fit_dynamics(kit.tiny_for(src), src, tmp_path / "plain", max_steps=STEPS, **SETTINGS, **kit.fast)
    ref = _weights(result.last_checkpoint)
    assert all(torch.equal(ref[k], _weights(plain.last_checkpoint)[k]) for k in ref)
    assert plain.snapshots == {} and not list_snapshots(tmp_path / "plain" / "checkpoints")

    # crash before step 10: last.ckpt is at step 8; the newer step-9 snapshot (no optimizer state) must not be picked
    crashed = tmp_path / "crashed"
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit_dynamics(kit.tiny_for(src), src, crashed, max_steps=STEPS, snapshot_steps=(0, 3, 7, 9), callbacks=[_Crash()],
                     **SETTINGS, **kit.fast)
    assert sorted(list_snapshots(crashed / "checkpoints")) == [0, 3, 7, 9]  # 9: saved after step 9, before the crash
    assert find_resume_checkpoint(crashed / "checkpoints").name == "last.ckpt"
    again = fit_dynamics(kit.tiny_for(src, seed=99), src, crashed, max_steps=STEPS, snapshot_steps=(0, 3, 7, 9),
                         resume=True, **SETTINGS, **kit.fast)
    assert sorted(again.snapshots) == [0, 3, 7, 9]
    assert all(torch.equal(ref[k], _weights(again.last_checkpoint)[k]) for k in ref)  # bitwise, as without snapshots


def test_bad_snapshot_steps_are_refused(kit, tmp_path):
    src = kit.walk_source()
    with pytest.raises(OntolabError, match=r"snapshot steps must be integers >= 0, got \[-1\]"):
        fit_dynamics(kit.tiny_for(src), src, tmp_path, max_steps=2, snapshot_steps=(-1,), **SETTINGS, **kit.fast)
