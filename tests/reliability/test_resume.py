"""Resume: a run stopped, crashed or SIGKILLed anywhere ends with bitwise the weights of an uninterrupted run.

The reference is one uninterrupted run of ``STEPS`` steps. Checkpoint and validation intervals do not
change the training trajectory (validation has its own RNG stream), so every interrupted variant,
whatever its ``checkpoint_every``, must end with ``torch.equal`` weights. Two controls show the test
can fail: resuming without restoring the RNG state, or restarting the data order, both diverge.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from dynamics.training import fit_dynamics
from dynamics.training.callbacks import RngState
from dynamics.training.checkpoint import read_checkpoint
from dynamics.training.data import InfiniteBatchSampler, SplitStream, TrainWindows

STEPS = 40
SETTINGS = dict(val_every=10, checkpoint_every=5, seed=11)
REPO = Path(__file__).resolve().parents[2]

CHILD = r"""
import json, os, signal, sys
sys.path.insert(0, sys.argv[1])
import torch
torch.set_num_threads(1)
import pytorch_lightning as pl
import conftest as c
import dynamics.training.checkpoint as ck
from dynamics.training import fit_dynamics

args = json.loads(sys.argv[2])
where, step = args.pop("where"), args.pop("step")
armed = []

def die():
    os.kill(os.getpid(), signal.SIGKILL)

class Kill(pl.Callback):
    def on_train_batch_start(self, trainer, *rest):
        if where == "batch_start" and trainer.global_step == step:
            die()
    def on_before_optimizer_step(self, trainer, *rest):
        if where == "optimizer_step" and trainer.global_step == step:
            die()

real_save, real_write, real_replace = ck.AtomicCheckpointIO.save_checkpoint, ck._write_temp, os.replace
def save(self, checkpoint, path, storage_options=None):
    if checkpoint["global_step"] == step and str(path).endswith("last.ckpt"):
        armed.append(True)
    return real_save(self, checkpoint, path, storage_options)
def write_temp(target, data):  # die with half of the new checkpoint written
    if where == "mid_write" and armed and target.name == "last.ckpt":
        with open(target.with_name(f".{target.name}.{os.getpid()}.tmp"), "wb") as f:
            f.write(data[: len(data) // 2]); f.flush(); os.fsync(f.fileno())
        die()
    return real_write(target, data)
def replace(src, dst):  # die after the sidecar names the new file, before the rename
    if where == "before_rename" and armed and str(dst).endswith("last.ckpt"):
        die()
    return real_replace(src, dst)
ck.AtomicCheckpointIO.save_checkpoint, ck._write_temp, ck.os.replace = save, write_temp, replace

src = c.walk_source()
fit_dynamics(c.tiny_for(src), src, args.pop("out"), callbacks=[Kill()], **c.FAST, **args)
print("NOT KILLED")
"""


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(out / "checkpoints" / "last.ckpt")["state_dict"]


def _assert_bitwise_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    diff = {k: (a[k] - b[k]).abs().max().item() for k in a if not torch.equal(a[k], b[k])}
    assert not diff, f"weights differ from the uninterrupted run: {diff}"


@pytest.fixture(scope="module")
def reference(kit, tmp_path_factory) -> dict[str, torch.Tensor]:
    src, out = kit.walk_source(), tmp_path_factory.mktemp("reference")
    result = fit_dynamics(kit.tiny_for(src), src, out, max_steps=STEPS, **SETTINGS, **kit.fast)
    assert result.steps == STEPS
    return _weights(out)


def _resume(kit, out: Path, **overrides) -> dict[str, torch.Tensor]:
    src = kit.walk_source()
    result = fit_dynamics(kit.tiny_for(src, seed=99), src, out, max_steps=STEPS, resume=True,
                          **{**SETTINGS, **overrides}, **kit.fast)
    assert result.steps == STEPS
    return _weights(out)


def test_resume_after_a_clean_stop(kit, reference, tmp_path):
    src = kit.walk_source()
    fit_dynamics(kit.tiny_for(src), src, tmp_path, max_steps=17, **SETTINGS, **kit.fast)
    _assert_bitwise_equal(_resume(kit, tmp_path), reference)


class _Crash(pl.Callback):
    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise RuntimeError(f"simulated crash at step {self.step}")


def test_resume_after_a_crash_between_checkpoints(kit, reference, tmp_path):
    src = kit.walk_source()
    with pytest.raises(RuntimeError, match="simulated crash at step 23"):
        fit_dynamics(kit.tiny_for(src), src, tmp_path, max_steps=STEPS, callbacks=[_Crash(23)], **SETTINGS, **kit.fast)
    assert read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == 20
    _assert_bitwise_equal(_resume(kit, tmp_path), reference)


def test_resume_from_best_when_last_is_corrupt(kit, reference, tmp_path):
    src = kit.walk_source()
    fit_dynamics(kit.tiny_for(src), src, tmp_path, max_steps=27, **SETTINGS, **kit.fast)
    last = tmp_path / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    with pytest.warns(UserWarning, match="last.ckpt is corrupt"):
        _assert_bitwise_equal(_resume(kit, tmp_path), reference)


@pytest.mark.parametrize("control", ["no_rng_restore", "data_restarts"])
def test_controls_without_the_resume_machinery_diverge(kit, reference, tmp_path, monkeypatch, control):
    src = kit.walk_source()
    fit_dynamics(kit.tiny_for(src), src, tmp_path, max_steps=17, **SETTINGS, **kit.fast)
    if control == "no_rng_restore":
        monkeypatch.setattr(RngState, "load_state_dict", lambda self, state: None)
    else:
        real_init = InfiniteBatchSampler.__init__

        def from_zero(self, batch_size, start_batch=0, rank=0, world_size=1):
            real_init(self, batch_size, 0, rank, world_size)

        monkeypatch.setattr(InfiniteBatchSampler, "__init__", from_zero)
    resumed = _resume(kit, tmp_path)
    assert not all(torch.equal(resumed[k], reference[k]) for k in reference)


def _stream(kit) -> tuple[SplitStream, int]:
    return SplitStream(kit.walk_source(), "train", kit.fast["window"]), SETTINGS["seed"]


def _kill_child(kit, out: Path, where: str, step: int, **overrides) -> None:
    args = {"out": str(out), "max_steps": STEPS, **SETTINGS, **overrides, "where": where, "step": step}
    proc = subprocess.run([sys.executable, "-c", CHILD, kit.tests_dir, json.dumps(args)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, f"the child was not SIGKILLed (rc {proc.returncode}): {proc.stderr[-2000:]}"


@pytest.mark.slow
def test_sigkill_inside_a_step_mid_epoch(kit, reference, tmp_path):
    n = TrainWindows(*_stream(kit)).windows_per_epoch
    assert (13 * kit.fast["batch_size"]) % n != 0, "the premise: step 13 is inside a sampler epoch"
    _kill_child(kit, tmp_path, "optimizer_step", 13)
    assert read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == 10
    _assert_bitwise_equal(_resume(kit, tmp_path), reference)


@pytest.mark.slow
def test_sigkill_exactly_at_a_sampler_epoch_boundary(kit, reference, tmp_path):
    n, batch = TrainWindows(*_stream(kit)).windows_per_epoch, kit.fast["batch_size"]
    boundary = n // math.gcd(n, batch)  # first step after which a whole number of epochs was consumed
    assert boundary < STEPS
    _kill_child(kit, tmp_path, "batch_start", boundary, checkpoint_every=boundary)
    assert read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == boundary
    _assert_bitwise_equal(_resume(kit, tmp_path, checkpoint_every=boundary), reference)


@pytest.mark.slow
@pytest.mark.parametrize("where", ["mid_write", "before_rename"])
def test_sigkill_during_a_checkpoint_save_keeps_last_readable(kit, reference, tmp_path, where):
    _kill_child(kit, tmp_path, where, 15)
    assert read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == 10  # the previous one, intact
    _assert_bitwise_equal(_resume(kit, tmp_path), reference)
    assert not list((tmp_path / "checkpoints").glob(".*.tmp")), "the dead process's temp file is cleaned up"

