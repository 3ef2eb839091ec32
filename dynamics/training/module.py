"""The thin LightningModule around a plain :class:`~dynamics.base.DynamicsModel`.

``DynamicsModule(model, lr=..., weight_decay=...)`` receives the model (it never builds one), trains
``model.loss(obs, actions, is_first)`` with AdamW (gradient clipping is the Trainer's
``gradient_clip_val``), and validates with

* ``val/loss`` (and every ``val/<metric>`` of the model's :class:`~dynamics.base.LossOutput`);
* ``val/open_loop_<k>`` for ``k`` in ``open_loop_ks`` (default 1, 5, 15): each validation window
  ``[b t]`` is filtered for ``c = t - max(k)`` steps, then ``imagine`` rolls the last posterior
  forward with the true actions and ``decode`` predicts steps ``c .. t-1``; the error at step
  ``c + k - 1`` is 1 - per-cell accuracy of the argmax channel (symbolic), MSE on [0, 1] pixels
  (image) or MSE (vector). Windows whose imagined span crosses an ``is_first`` reset are left out of
  that ``k``. Skipped for models that cannot decode, and for ``k >= t``.

Validation runs on its own RNG stream (seeded by ``val_seed``; the training RNG state is saved
before and restored after), so validating never changes the training trajectory -- resumed and
uninterrupted runs stay bitwise equal -- and validation numbers are reproducible.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor

from dynamics.base import DynamicsModel
from dynamics.training.checkpoint import META_KEY, model_meta
from dynamics.training.figures import render_rollout

_PLAIN = (str, int, float, bool, type(None))


def check_plain(value: Any, where: str = "hparams") -> None:
    """Raise ``TypeError`` naming the key unless ``value`` is built from dicts (str keys), lists, tuples and scalars."""
    if isinstance(value, _PLAIN):
        return
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{where} keys must be str, got {k!r}")
            check_plain(v, f"{where}[{k!r}]")
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            check_plain(v, f"{where}[{i}]")
        return
    raise TypeError(f"{where} must hold plain JSON types (stored in weights_only checkpoints), got {type(value).__name__}")


def step_error(pred: Tensor, true: Tensor, kind: str) -> Tensor:
    """Per-step prediction error ``[b h]`` of ``pred[b h *obs]`` (decoder output) against ``true[b h *obs]``."""
    if kind == "symbolic":  # [b h c H W]: per-cell accuracy of the argmax channel
        hit = (pred.argmax(dim=2) == true.argmax(dim=2)).float()
        return 1.0 - hit.flatten(2).mean(-1)
    target = true.float() / 255.0 if kind == "image" else true.float()
    return (pred.float() - target).pow(2).flatten(2).mean(-1)


class DynamicsModule(pl.LightningModule):
    """Trains a plain dynamics model; see the module docstring for what is logged."""

    def __init__(self, model: DynamicsModel, *, lr: float = 3e-4, weight_decay: float = 0.0,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 open_loop_ks: Sequence[int] = (1, 5, 15), val_seed: int = 0, image_steps: int = 8):
        super().__init__()
        if not isinstance(model, DynamicsModel):
            raise TypeError(f"model must be a dynamics.base.DynamicsModel, got {type(model).__name__}")
        if not math.isfinite(lr) or lr <= 0 or not math.isfinite(weight_decay) or weight_decay < 0:
            raise ValueError(f"lr must be > 0 and weight_decay >= 0, got lr={lr}, weight_decay={weight_decay}")
        if any(int(k) < 1 for k in open_loop_ks):
            raise ValueError(f"open_loop_ks must be positive integers, got {tuple(open_loop_ks)}")
        check_plain(model.hparams, f"{type(model).__name__}.hparams")
        self.model = model
        self.meta = model_meta(model)
        self.lr, self.weight_decay, self.betas, self.eps = lr, weight_decay, tuple(betas), eps
        self.open_loop_ks = tuple(sorted({int(k) for k in open_loop_ks}))
        self.val_seed, self.image_steps = int(val_seed), int(image_steps)
        self.last_val_step = -1
        """Global step of the last completed validation (-1: none yet)."""
        self._rng_outside: tuple[Tensor, list[Tensor]] | None = None
        self._ol_sum = self._ol_count = torch.zeros(0)
        self._picture: tuple[np.ndarray, np.ndarray] | None = None

    # -- training ---------------------------------------------------------------------------------
    def training_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor:
        out = self.model.loss(batch["obs"], batch["actions"], batch["is_first"])
        b = int(batch["obs"].shape[0])
        self.log("train/loss", out.loss.detach(), prog_bar=True, batch_size=b)
        for name, value in out.metrics.items():
            if name != "loss":
                self.log(f"train/{name}", value, batch_size=b)
        return out.loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.model.parameters(), lr=self.lr, weight_decay=self.weight_decay,
                                 betas=self.betas, eps=self.eps)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[META_KEY] = self.meta

    # -- validation -------------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
        self._rng_outside = (torch.get_rng_state(), cuda)
        torch.manual_seed(self.val_seed)
        n = len(self.open_loop_ks)
        self._ol_sum = torch.zeros(n, dtype=torch.float64, device=self.device)
        self._ol_count = torch.zeros(n, dtype=torch.float64, device=self.device)
        self._picture = None

    def validation_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> None:
        obs, actions, is_first = batch["obs"], batch["actions"], batch["is_first"]
        out = self.model.loss(obs, actions, is_first)
        b = int(obs.shape[0])
        self.log("val/loss", out.loss, prog_bar=True, batch_size=b, sync_dist=True)
        for name, value in out.metrics.items():
            if name != "loss":
                self.log(f"val/{name}", value, batch_size=b, sync_dist=True)
        if self.model.can_decode:
            self._open_loop(obs, actions, is_first)

    def _open_loop(self, obs: Tensor, actions: Tensor, is_first: Tensor) -> None:
        """Accumulate the k-step errors of one batch ``[b t ...]`` (see the module docstring)."""
        t = int(obs.shape[1])
        ks = [k for k in self.open_loop_ks if k < t]
        if not ks:
            return
        context = t - max(ks)
        post = self.model.observe(obs[:, :context], actions[:, :context], is_first[:, :context])
        imagined = self.model.imagine(post.at((slice(None), context - 1)), actions[:, context:])
        pred = self.model.decode(imagined)  # [b h *obs], h = t - context
        true = obs[:, context:]
        err = step_error(pred, true, self.model.obs_spec.kind)  # [b h]
        valid = (is_first[:, context:].long().cumsum(1) == 0).to(err.dtype)  # no reset up to and including step j
        for i, k in enumerate(self.open_loop_ks):
            if k in ks:
                self._ol_sum[i] += (err[:, k - 1] * valid[:, k - 1]).sum().double()
                self._ol_count[i] += valid[:, k - 1].sum().double()
        if self._picture is None:
            n = min(self.image_steps, int(true.shape[1]))
            self._picture = (true[0, :n].detach().cpu().numpy(), pred[0, :n].detach().float().cpu().numpy())

    def on_validation_epoch_end(self) -> None:
        if self.model.can_decode and len(self._ol_sum):
            total = self.trainer.strategy.reduce(self._ol_sum, reduce_op="sum")
            count = self.trainer.strategy.reduce(self._ol_count, reduce_op="sum")
            for i, k in enumerate(self.open_loop_ks):
                if count[i] > 0:
                    # already summed over ranks; sync_dist only averages identical values (and keeps Lightning quiet)
                    self.log(f"val/open_loop_{k}", (total[i] / count[i]).float(), sync_dist=True)
        if not self.trainer.sanity_checking:
            self.last_val_step = int(self.trainer.global_step)
            self._log_picture()
        if self._rng_outside is not None:
            torch.set_rng_state(self._rng_outside[0])
            if self._rng_outside[1]:
                torch.cuda.set_rng_state_all(self._rng_outside[1])
            self._rng_outside = None

    def _log_picture(self) -> None:
        logger = self.logger
        if self._picture is None or logger is None or not hasattr(logger, "log_image") or not self.trainer.is_global_zero:
            return
        true, pred = self._picture
        image = render_rollout(true, pred, self.model.obs_spec.kind, f"step {self.trainer.global_step}: true vs imagined")
        logger.log_image(key="val/open_loop_rollout", images=[image], step=int(self.trainer.global_step))
