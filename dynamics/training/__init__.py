"""Training side of the dynamics stage: a thin Lightning wrapper around a plain dynamics model.

``fit_dynamics(model, data, out_dir, ...)`` is the entry point; it returns a :class:`TrainResult`.
Probes and planners never need this package: :func:`load_model` gives back the plain model.
"""

from dynamics.training.callbacks import RngState, SnapshotCheckpoint, list_snapshots, snapshot_path
from dynamics.training.checkpoint import (AtomicCheckpointIO, CheckpointError, find_resume_checkpoint, load_model,
                                          read_checkpoint, verify_checkpoint)
from dynamics.training.data import InMemoryWindowSource, WindowDataModule, WindowSource
from dynamics.training.fit import TrainResult, fit_dynamics
from dynamics.training.guards import NonFiniteError, NonFiniteGuard
from dynamics.training.module import DynamicsModule

__all__ = [
    "AtomicCheckpointIO",
    "CheckpointError",
    "DynamicsModule",
    "InMemoryWindowSource",
    "NonFiniteError",
    "NonFiniteGuard",
    "RngState",
    "SnapshotCheckpoint",
    "TrainResult",
    "WindowDataModule",
    "WindowSource",
    "find_resume_checkpoint",
    "fit_dynamics",
    "list_snapshots",
    "load_model",
    "read_checkpoint",
    "snapshot_path",
    "verify_checkpoint",
]
