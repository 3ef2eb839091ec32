"""Stop training on the first non-finite number, before it reaches the weights.

:class:`NonFiniteGuard` is a Lightning callback that checks, at every training step,

1. the batch's observations (``on_train_batch_start``; float observations only -- uint8 cannot be NaN),
2. the loss (``on_before_backward``), and
3. every gradient (``on_before_optimizer_step``: after backward, *before* clipping and the update).

On the first failure it raises :class:`NonFiniteError` naming the global step. The hooks run inside
the optimizer's closure, so the raise aborts ``optimizer.step`` before any parameter changes: the
weights stay those of the last good step, and since Lightning saves no checkpoint on an exception
(``ModelCheckpoint(save_on_exception=False)``, the default) the last good checkpoint is kept.
:class:`~dynamics.training.checkpoint.AtomicCheckpointIO` also refuses to write non-finite weights.

Under ``precision="16-mixed"`` a ``GradScaler`` is expected to meet inf gradients and skip those
steps by itself, so the gradient check is off there (``check_grads=False``); the loss and batch
checks stay on.
"""

from __future__ import annotations

from typing import Any, Mapping

import pytorch_lightning as pl
import torch
from torch import Tensor

from worlds.errors import OntolabError


class NonFiniteError(OntolabError):
    """Training met a NaN or inf (in a batch, the loss or a gradient); the message names the step."""


def check_finite_batch(batch: Mapping[str, Tensor], step: int, stage: str = "train") -> None:
    """Raise :class:`NonFiniteError` if a floating-point tensor of ``batch`` holds NaN or inf."""
    for key, value in batch.items():
        if isinstance(value, Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise NonFiniteError(
                f"{stage} batch at global step {step} has {bad} non-finite values in {key!r}; "
                "clean the dataset (worlds.trajectory.Episode.validate rejects such episodes)"
            )


def nonfinite_grads(parameters: Mapping[str, torch.nn.Parameter]) -> list[str]:
    """Names of the parameters whose gradient holds a NaN or inf (``[]`` when all are finite)."""
    return [name for name, p in parameters.items() if p.grad is not None and not bool(torch.isfinite(p.grad).all())]


class NonFiniteGuard(pl.Callback):
    """Raise :class:`NonFiniteError` on a non-finite batch, loss or gradient, before the optimizer step."""

    def __init__(self, check_grads: bool = True, check_batches: bool = True):
        self.check_grads = check_grads
        self.check_batches = check_batches

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        if self.check_batches and isinstance(batch, Mapping):
            check_finite_batch(batch, trainer.global_step, "train")

    def on_validation_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if self.check_batches and isinstance(batch, Mapping):
            check_finite_batch(batch, trainer.global_step, "validation")

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Tensor) -> None:
        if not bool(torch.isfinite(loss.detach()).all()):
            raise NonFiniteError(
                f"training loss is {loss.detach().float().item()} at global step {trainer.global_step}; "
                "stopped before the update (the last checkpoint is the last good one): lower lr or check the data"
            )

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        if not self.check_grads:
            return
        bad = nonfinite_grads(dict(pl_module.named_parameters()))
        if bad:
            shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
            raise NonFiniteError(
                f"non-finite gradient at global step {trainer.global_step} in {shown}; "
                "stopped before the update (the last checkpoint is the last good one): lower lr or set grad_clip"
            )
