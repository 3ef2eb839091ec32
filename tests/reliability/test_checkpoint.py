"""Checkpoints: atomic hashed writes, corruption detection, no-pickle loads, newest-valid resume, load_model."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

import dynamics.training.checkpoint as ck
from dynamics.training import CheckpointError, fit_dynamics, load_model
from dynamics.training.checkpoint import (AtomicCheckpointIO, find_resume_checkpoint, read_checkpoint, sidecar_path,
                                          verify_checkpoint)
from worlds.errors import OntolabError


def _ckpt(step: int, value: float = 1.0) -> dict:
    return {"global_step": step, "state_dict": {"model.w": torch.full((3,), value)}, "note": [1, "a", None]}


def test_save_writes_file_and_sidecar_with_its_sha256(tmp_path):
    path = tmp_path / "sub" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint(_ckpt(4), path)
    record = json.loads(sidecar_path(path).read_text())
    assert record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest() and record["global_step"] == 4
    loaded = AtomicCheckpointIO().load_checkpoint(path)
    assert loaded["global_step"] == 4 and torch.equal(loaded["state_dict"]["model.w"], torch.ones(3))
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt", "last.ckpt.sha256.json"], "no temp file left"


@pytest.mark.parametrize("damage", ["empty", "half", "random"])
def test_corruption_is_detected_and_names_the_file(tmp_path, damage):
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint(_ckpt(1), path)
    data = path.read_bytes()
    if damage == "empty":
        path.write_bytes(b"")
    elif damage == "half":
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(data[:100] + os.urandom(len(data) - 200) + data[-100:])
    with pytest.raises(CheckpointError, match=f"checkpoint {path} is corrupt"):
        read_checkpoint(path)
    with pytest.raises(CheckpointError, match=str(path)):
        load_model(path)


def test_missing_sidecar_is_unverifiable(tmp_path):
    path = tmp_path / "x.ckpt"
    AtomicCheckpointIO().save_checkpoint(_ckpt(1), path)
    sidecar_path(path).unlink()
    with pytest.raises(CheckpointError, match="has no sidecar"):
        read_checkpoint(path)


def test_objects_are_never_unpickled(tmp_path):
    """A verified file holding an arbitrary object fails with weights_only=True; there is no fallback."""
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "obj": OntolabError("x")}, path)
    sidecar_path(path).write_text(json.dumps({"sha256": hashlib.sha256(path.read_bytes()).hexdigest()}))
    with pytest.raises(CheckpointError, match="cannot be loaded with weights_only=True"):
        read_checkpoint(path)


def test_nonfinite_weights_are_never_written(tmp_path):
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint(_ckpt(1), path)
    with pytest.raises(CheckpointError, match="weights at step 2 are not finite"):
        AtomicCheckpointIO().save_checkpoint(_ckpt(2, float("nan")), path)
    assert read_checkpoint(path)["global_step"] == 1


@pytest.mark.parametrize("crash_in", ["_write_temp", "replace"])
def test_a_crash_during_save_leaves_the_previous_file_valid(tmp_path, monkeypatch, crash_in):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint(_ckpt(1), path)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # stands in for a kill: nothing after this point runs

    if crash_in == "_write_temp":
        monkeypatch.setattr(ck, "_write_temp", crash)
    else:  # the sidecar already records the new hash when the rename dies
        real = os.replace
        monkeypatch.setattr(ck.os, "replace", lambda a, b: crash() if str(b) == str(path) else real(a, b))
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint(_ckpt(2, 2.0), path)
    monkeypatch.undo()
    assert verify_checkpoint(path)["global_step"] == 1
    assert read_checkpoint(path)["global_step"] == 1
    io.save_checkpoint(_ckpt(3, 3.0), path)
    assert read_checkpoint(path)["global_step"] == 3


def test_resume_picks_the_newest_valid_checkpoint(tmp_path):
    io = AtomicCheckpointIO()
    assert find_resume_checkpoint(tmp_path) is None
    io.save_checkpoint(_ckpt(5), tmp_path / "best.ckpt")
    io.save_checkpoint(_ckpt(9), tmp_path / "last.ckpt")
    assert find_resume_checkpoint(tmp_path).name == "last.ckpt"
    (tmp_path / "last.ckpt").write_bytes(b"\0" * 10)
    with pytest.warns(UserWarning, match="last.ckpt is corrupt"):
        assert find_resume_checkpoint(tmp_path).name == "best.ckpt"
    (tmp_path / "best.ckpt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="no valid checkpoint.*best.ckpt.*last.ckpt"):
        find_resume_checkpoint(tmp_path)


def test_fit_never_silently_restarts_from_corrupt_checkpoints(kit, grid_source, tmp_path):
    fit_dynamics(kit.tiny_for(grid_source), grid_source, tmp_path, max_steps=6, val_every=3, seed=0, **kit.fast)
    for name in ("best.ckpt", "last.ckpt"):
        path = tmp_path / "checkpoints" / name
        path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(CheckpointError, match="no valid checkpoint to resume from"):
        fit_dynamics(kit.tiny_for(grid_source), grid_source, tmp_path, max_steps=12, val_every=3, seed=0, resume=True,
                     **kit.fast)


def test_load_model_rebuilds_the_trained_model(kit, grid_source, tmp_path):
    model = kit.tiny_for(grid_source, hidden=12)
    result = fit_dynamics(model, grid_source, tmp_path, max_steps=6, val_every=3, seed=0, **kit.fast)
    loaded = load_model(result.last_checkpoint, "tiny", build=kit.build_tiny)
    assert isinstance(loaded, kit.TinyModel) and not loaded.training and loaded.hidden == 12
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    with pytest.raises(CheckpointError, match=rf"checkpoint {result.last_checkpoint} holds a 'tiny' model, expected 'rssm'"):
        load_model(result.last_checkpoint, "rssm", build=kit.build_tiny)

    def wrong_size(name, obs_spec, action_spec, hparams):
        return kit.TinyModel(obs_spec, action_spec, hidden=8)

    with pytest.raises(CheckpointError, match=rf"checkpoint {result.last_checkpoint}: weights do not fit model 'tiny'"):
        load_model(result.last_checkpoint, build=wrong_size)
    with pytest.raises(CheckpointError, match=rf"checkpoint {result.last_checkpoint}: cannot rebuild model 'tiny'"):
        load_model(result.last_checkpoint)  # the registry does not know the test model


def test_load_model_through_the_registry(grid_source, tmp_path, kit):
    from dynamics import registry
    spec = grid_source.obs_spec
    torch.manual_seed(0)
    model = registry.build_model("gru", {"shape": spec["shape"], "kind": spec["obs_kind"]},
                                 {"discrete": True, "n": 5}, deter=16, hidden=16, embed=16)
    result = fit_dynamics(model, grid_source, tmp_path, max_steps=4, val_every=2, seed=0, **kit.fast)
    loaded = load_model(result.best_checkpoint, expected_model="gru")
    assert type(loaded) is type(model) and loaded.hparams == model.hparams
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), read_checkpoint(
        result.best_checkpoint)["state_dict"].values()))



# A "zygote" imports torch and Lightning once, then forks one writer per round (imports take seconds
# here, a fork milliseconds). Each writer resumes from the newest valid checkpoint and saves ~2 MB
# checkpoints back to back, printing each step once its save returned, until the test SIGKILLs it.
SAVE_LOOP = r"""
import os, sys
import torch
torch.set_num_threads(1)
from dynamics.training.checkpoint import AtomicCheckpointIO, find_resume_checkpoint, read_checkpoint

folder, rounds = sys.argv[1], int(sys.argv[2])
for _ in range(rounds):
    pid = os.fork()
    if pid == 0:
        io, last = AtomicCheckpointIO(), find_resume_checkpoint(folder)
        step = read_checkpoint(last)["global_step"] if last is not None else 0
        print("ready", os.getpid(), step, flush=True)
        while True:
            step += 1
            io.save_checkpoint({"global_step": step, "state_dict": {"model.w": torch.full((512, 1024), float(step))}},
                               f"{folder}/last.ckpt")
            print("saved", step, flush=True)
    _, status = os.waitpid(pid, 0)
    print("dead", os.waitstatus_to_exitcode(status), flush=True)
"""


def test_sigkill_at_five_random_moments_of_checkpoint_writes(tmp_path):
    """A process saving checkpoints back to back is SIGKILLed 5 times at random (seeded) instants.

    After every kill the last checkpoint loads, holds the weights of its own step (never a mix), its
    step never goes backwards (neither across kills nor below a save the writer reported done), and
    no temp file is ever taken for a checkpoint.
    """
    rng, steps = random.Random(5), []
    zygote = subprocess.Popen([sys.executable, "-c", SAVE_LOOP, str(tmp_path), "5"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(5):
            ready = zygote.stdout.readline().split()
            assert ready[:1] == ["ready"], zygote.stderr.read()[-2000:] if zygote.poll() is not None else ready
            assert int(ready[2]) == (steps[-1] if steps else 0), "the resumed step is the last one saved"
            time.sleep(rng.uniform(0.05, 0.6))
            os.kill(int(ready[1]), signal.SIGKILL)
            done = []
            for line in iter(zygote.stdout.readline, ""):
                word, value = line.split()
                if word == "dead":
                    assert int(value) == -signal.SIGKILL
                    break
                done.append(int(value))
            found = find_resume_checkpoint(tmp_path)
            assert found is not None and found.name == "last.ckpt", "a temp file is never taken for a checkpoint"
            ckpt = read_checkpoint(found)
            step = ckpt["global_step"]
            assert torch.equal(ckpt["state_dict"]["model.w"], torch.full((512, 1024), float(step))), "no mix of two saves"
            assert step >= max(done, default=0) and step >= (steps[-1] if steps else 0), "the step never goes backwards"
            steps.append(step)
    finally:
        zygote.kill()
        zygote.communicate(timeout=30)
    assert steps == sorted(steps) and steps[-1] > 0
