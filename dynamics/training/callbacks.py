"""The Lightning callbacks that decide which checkpoints are written when, and what they carry.

The two ``ModelCheckpoint`` callbacks (``best.ckpt`` by ``val/loss``, ``last.ckpt`` every n steps and at the
end), :class:`SnapshotCheckpoint` (weights-only ``snapshot-step=<N>.ckpt`` at given steps, for probing the
model as it learns; never resumed from) and :class:`RngState` (torch / CUDA / numpy / python RNG states in the
checkpoint, as plain types). How a checkpoint is written and read (atomically, verified, without pickle) is
:mod:`dynamics.training.checkpoint`.
"""

from __future__ import annotations

import os
import random
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from dynamics.training.checkpoint import BEST_NAME, SNAPSHOT_PREFIX, CheckpointError, read_checkpoint
from worlds.errors import OntolabError


class LastCheckpoint(ModelCheckpoint):
    """``last.ckpt`` every ``every_n_train_steps`` steps and at the end of training (max_steps or max_time)."""

    def __init__(self, dirpath: str | os.PathLike, every_n_train_steps: int):
        super().__init__(dirpath=dirpath, save_top_k=0, save_last=True, every_n_train_steps=every_n_train_steps,
                         enable_version_counter=False)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._last_global_step_saved != trainer.global_step and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


class BestCheckpoint(ModelCheckpoint):
    """``best.ckpt``: the weights with the lowest ``val/loss``, written after a validation that beats it.

    On resume the score to beat is the one recorded inside the ``best.ckpt`` on disk (none if there is
    no valid one), not the resumed checkpoint's record: ``last.ckpt`` is written at the end of its
    training step, *before* the validation at that step, so its record lags one validation (or holds
    none), and a resumed run would then overwrite ``best.ckpt`` with worse weights.
    """

    def __init__(self, dirpath: str | os.PathLike):
        super().__init__(dirpath=dirpath, filename=BEST_NAME.removesuffix(".ckpt"), monitor="val/loss", mode="min",
                         save_top_k=1, save_last=False, auto_insert_metric_name=False, enable_version_counter=False,
                         save_on_train_epoch_end=False)

    @property
    def state_key(self) -> str:
        # a plain ModelCheckpoint's key, so checkpoints written before this subclass existed still restore it
        return "ModelCheckpoint" + super().state_key[len(type(self).__qualname__):]

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        path = Path(self.dirpath) / BEST_NAME
        score = None
        if path.is_file():
            try:
                record = read_checkpoint(path).get("callbacks", {}).get(self.state_key, {})
                score = record.get("best_model_score") if isinstance(record, dict) else None
            except CheckpointError as e:
                warnings.warn(f"{e}; the next validation writes a new {BEST_NAME}", stacklevel=2)
        if torch.is_tensor(score):
            self.best_k_models = {str(path): score}
            self.best_model_path = self.kth_best_model_path = str(path)
            self.best_model_score = self.kth_value = score
        else:
            self.best_k_models, self.best_model_path, self.best_model_score = {}, "", None
            self.kth_best_model_path, self.kth_value = "", torch.tensor(float("inf"))


def checkpoint_callbacks(dirpath: str | os.PathLike, every_n_train_steps: int) -> list[ModelCheckpoint]:
    """``best.ckpt`` (see :class:`BestCheckpoint`) and ``last.ckpt`` (see :class:`LastCheckpoint`)."""
    return [BestCheckpoint(dirpath), LastCheckpoint(dirpath, every_n_train_steps)]


def snapshot_path(dirpath: str | os.PathLike, step: int) -> Path:
    """``dirpath/snapshot-step=<step>.ckpt``."""
    return Path(dirpath) / f"{SNAPSHOT_PREFIX}{int(step)}.ckpt"


def list_snapshots(dirpath: str | os.PathLike) -> dict[int, Path]:
    """``{step: path}`` of the snapshots in ``dirpath`` (sorted by step; not verified: :func:`read_checkpoint` does that)."""
    found = {}
    for p in Path(dirpath).glob(f"{SNAPSHOT_PREFIX}*.ckpt") if Path(dirpath).is_dir() else ():
        step = p.name[len(SNAPSHOT_PREFIX):-len(".ckpt")]
        if step.isdigit():
            found[int(step)] = p
    return dict(sorted(found.items()))


class SnapshotCheckpoint(pl.Callback):
    """Weights-only ``snapshot-step=<N>.ckpt`` when the global step reaches each of ``steps`` (0: before the first step).

    A snapshot is a ``Trainer.save_checkpoint(weights_only=True)``: weights, loop counters and the
    ontolab model meta (so :func:`load_model` reads it), written through the Trainer's checkpoint
    plugin (:class:`AtomicCheckpointIO`: atomic, with a sidecar). Saving reads no RNG, so snapshots do
    not change the training trajectory. Steps never reached (``max_time_s`` ran out) have no file; a
    resumed run writes the ones after its resume point (one already written before a kill is rewritten
    with bitwise the same weights).
    """

    def __init__(self, dirpath: str | os.PathLike, steps: Sequence[int]):
        bad = [s for s in steps if isinstance(s, bool) or not isinstance(s, int) or s < 0]
        if bad:
            raise OntolabError(f"snapshot steps must be integers >= 0, got {list(steps)}; pass e.g. [0, 100, 500]")
        self.dirpath, self.steps = Path(dirpath), frozenset(steps)
        self._saved: set[int] = set()

    def _save(self, trainer: pl.Trainer) -> None:
        # Every rank calls save_checkpoint (it holds a barrier; rank 0 writes), so the decision must not
        # depend on files another rank may already have written: only on the step and this process's record.
        step = int(trainer.global_step)
        if step in self.steps and step not in self._saved:
            trainer.save_checkpoint(snapshot_path(self.dirpath, step), weights_only=True)
            self._saved.add(step)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step == 0:
            self._save(trainer)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self._save(trainer)


def capture_rng() -> dict[str, Any]:
    """Global torch, CUDA, numpy and python RNG states as types ``torch.load(weights_only=True)`` accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": random.getstate(),
    }


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng` (CUDA states only when the device count matches)."""
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


class RngState(pl.Callback):
    """Saves the RNG states with every checkpoint and restores them on resume (Lightning does neither).

    Under DDP only rank 0's states are saved and every rank gets them back on resume.
    """

    def state_dict(self) -> dict[str, Any]:
        return capture_rng()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        restore_rng(state_dict)
