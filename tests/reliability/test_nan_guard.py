"""NaN in a batch: training halts before the optimizer step, naming the step; every checkpoint stays finite.

Policy: halt, not skip (``dynamics.training.guards.NonFiniteGuard``): a non-finite loss, gradient or
input batch raises :class:`NonFiniteError` naming the global step before the update is applied, and the
checkpoint plugin refuses to write non-finite weights (``test_checkpoint.py``). Moved here from
``tests/dynamics/test_training.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from dynamics.training import NonFiniteError, fit_dynamics
from dynamics.training.checkpoint import read_checkpoint
from dynamics.training.data import InMemoryWindowSource


def _weights(path):
    return read_checkpoint(path)["state_dict"]


class _NanAt(pl.Callback):
    """At step ``step``: make the loss NaN (``"loss"``) or every gradient of one weight NaN (``"grad"``)."""

    def __init__(self, step: int, what: str):
        self.step, self.what, self.before = step, what, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step != self.step:
            return
        self.before = {k: v.detach().clone() for k, v in pl_module.model.state_dict().items()}
        if self.what == "loss":
            pl_module.model.dec.bias.data[0] = float("nan")
        else:
            pl_module.model.enc[0].weight.register_hook(lambda g: g * float("nan"))


@pytest.mark.parametrize("what", ["loss", "grad"])
def test_guard_stops_before_a_nonfinite_update_and_keeps_the_good_checkpoint(kit, grid_source, tmp_path, what):
    spy, model = _NanAt(12, what), kit.tiny_for(grid_source)
    with pytest.raises(NonFiniteError, match="at global step 12"):
        fit_dynamics(model, grid_source, tmp_path, max_steps=30, val_every=5, seed=0, callbacks=[spy], **kit.fast)
    after = model.state_dict()
    untouched = [k for k in after if not (what == "loss" and k == "dec.bias")]
    assert all(torch.equal(after[k], spy.before[k]) for k in untouched), "the step must not be applied"
    last = _weights(tmp_path / "checkpoints" / "last.ckpt")
    assert all(torch.isfinite(v).all() for v in last.values())
    assert read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == 10


def test_guard_refuses_a_batch_with_nan_observations(kit, tmp_path):
    eps = kit.walk_episodes(16, 1, vector=True)
    eps[3].obs[4, 0] = np.nan
    source = InMemoryWindowSource({"train": eps[:12], "val": eps[12:]},
                                  {"shape": [2], "dtype": "float32", "obs_kind": "vector"}, {"kind": "discrete", "n": 5})
    model = kit.tiny_for(kit.walk_source(vector=True))
    with pytest.raises(NonFiniteError, match=r"train batch at global step \d+ has 1 non-finite values in 'obs'"):
        fit_dynamics(model, source, tmp_path, max_steps=200, val_every=100, seed=0, **kit.fast)
