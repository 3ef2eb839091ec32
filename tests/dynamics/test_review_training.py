"""Review of dynamics training (session 8): each test failed on the code before its fix.

* ``best.ckpt`` competes with the final weights when ``max_steps`` is not a multiple of ``val_every``
  (the final validation ran after ``fit``, where ModelCheckpoint does not save);
* a resumed run keeps the ``best.ckpt`` of the validations before the kill (``last.ckpt`` is written
  before the validation at its step, so the score it carries lagged and the resumed run overwrote
  ``best.ckpt`` with worse weights);
* a refused ``fit_dynamics`` restores the global deterministic-algorithms flag (the Trainer's
  constructor sets it; a refusal by the Trainer or by the world-size check left it on);
* two saves killed in a row between sidecar and rename leave the intact checkpoint verifiable (the
  sidecar recorded the never-landed hash as ``previous``).
"""

from __future__ import annotations

import os

import pytest
import pytorch_lightning as pl
import torch

from dynamics.training import fit_dynamics
from dynamics.training.checkpoint import (BEST_NAME, LAST_NAME, AtomicCheckpointIO, read_checkpoint,
                                          verify_checkpoint)
from worlds.errors import OntolabError


class ValLosses(pl.Callback):
    """``{global_step: val/loss}`` of every validation inside ``fit`` (not the sanity check)."""

    def __init__(self) -> None:
        self.losses: dict[int, float] = {}

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            self.losses[int(trainer.global_step)] = float(trainer.callback_metrics["val/loss"])


class Crash(pl.Callback):
    """Raise at the start of global step ``step`` (a crash between checkpoints)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer: pl.Trainer, *args) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError(f"crash at step {self.step}")


def _best_record(folder) -> tuple[int, float]:
    ckpt = read_checkpoint(folder / "checkpoints" / BEST_NAME)
    scores = [v["best_model_score"] for k, v in ckpt["callbacks"].items() if k.startswith("ModelCheckpoint")]
    return int(ckpt["global_step"]), float(scores[0])


def test_best_checkpoint_competes_with_the_final_weights(kit, grid_source, tmp_path):
    seen = ValLosses()
    result = fit_dynamics(kit.tiny_for(grid_source), grid_source, tmp_path, max_steps=60, val_every=25, seed=0,
                          callbacks=[seen], **kit.fast)
    step, score = _best_record(tmp_path)
    assert (step, score) == (60, pytest.approx(result.val_loss))  # this seed's final weights are the best ...
    assert seen.losses[25] > seen.losses[50] > result.val_loss  # ... (0.70525 at 60 vs 0.70540 at 50)
    assert sorted(seen.losses) == [25, 50, 60]  # because they are validated inside fit
    assert result.val_loss == pytest.approx(seen.losses[60])
    weights = read_checkpoint(result.best_checkpoint)["state_dict"]
    assert all(torch.equal(v, read_checkpoint(result.last_checkpoint)["state_dict"][k]) for k, v in weights.items())


@pytest.mark.filterwarnings("ignore:resume=True but")
def test_a_resumed_run_keeps_the_best_of_the_validations_before_the_crash(kit, grid_source, tmp_path):
    settings = dict(max_steps=40, val_every=10, checkpoint_every=5, seed=11, **kit.fast)
    seen = ValLosses()
    fit_dynamics(kit.tiny_for(grid_source), grid_source, tmp_path / "a", callbacks=[seen], **settings)
    reference = _best_record(tmp_path / "a")
    assert reference[0] == min(seen.losses, key=seen.losses.get) == 30, seen.losses  # not the last validation
    for step in (12, 22, 32):  # each resume starts from last.ckpt, written before the validation at its step
        with pytest.raises(RuntimeError, match="crash at step"):
            fit_dynamics(kit.tiny_for(grid_source), grid_source, tmp_path / "b", resume=True,
                         callbacks=[Crash(step)], **settings)
    fit_dynamics(kit.tiny_for(grid_source), grid_source, tmp_path / "b", resume=True, **settings)
    step, score = _best_record(tmp_path / "b")
    assert (step, score) == (reference[0], pytest.approx(reference[1]))


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_refused_fit_restores_the_deterministic_flag(kit, grid_source, tmp_path):
    assert not torch.are_deterministic_algorithms_enabled()
    with pytest.raises(OntolabError, match="Lightning cannot train with"):
        fit_dynamics(kit.tiny_for(grid_source), grid_source, tmp_path / "a", max_steps=5, val_every=5,
                     **{**kit.fast, "precision": "bogus"})
    assert not torch.are_deterministic_algorithms_enabled()
    fit_dynamics(kit.tiny_for(grid_source), grid_source, tmp_path / "b", max_steps=5, val_every=5, **kit.fast)
    assert not torch.are_deterministic_algorithms_enabled()
    with pytest.raises(OntolabError, match="world_size: checkpoint 1, now 2"):  # refused after the Trainer exists
        fit_dynamics(kit.tiny_for(grid_source), grid_source, tmp_path / "b", max_steps=10, val_every=5, resume=True,
                     devices=2, strategy="ddp", **kit.fast)
    assert not torch.are_deterministic_algorithms_enabled()


def test_two_saves_killed_between_sidecar_and_rename_keep_the_intact_checkpoint(tmp_path, monkeypatch):
    io, path = AtomicCheckpointIO(), tmp_path / LAST_NAME
    io.save_checkpoint({"global_step": 1, "state_dict": {"w": torch.ones(3)}}, path)
    intact = path.read_bytes()
    real_replace = os.replace

    def killed(src, dst):  # the checkpoint's rename never happens (the sidecar's own rename does)
        if str(dst).endswith(".ckpt"):
            raise KeyboardInterrupt("killed between the sidecar and the rename")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", killed)
    for step in (2, 3):
        with pytest.raises(KeyboardInterrupt):
            io.save_checkpoint({"global_step": step, "state_dict": {"w": torch.full((3,), float(step))}}, path)
        assert path.read_bytes() == intact
        assert verify_checkpoint(path)["global_step"] == 1
    monkeypatch.setattr(os, "replace", real_replace)
    io.save_checkpoint({"global_step": 4, "state_dict": {"w": torch.zeros(3)}}, path)
    assert read_checkpoint(path)["global_step"] == 4
