"""Class-balanced reconstruction in the GRU model (the same ``recon_balance`` as the RSSM's, dynamics/balance.py);
counting and adjusted decoding of both models are checked in test_balance.py."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dynamics.base import ActionSpec, ObsSpec
from dynamics.gru import observed_prefix
from dynamics.registry import build_model

torch.set_num_threads(1)
SPEC, ACT = ObsSpec((4, 3, 3), "symbolic"), ActionSpec(True, n=3)
SMALL = dict(deter=16, hidden=16, embed=16)


def one_hot_grid(codes: torch.Tensor, c: int) -> torch.Tensor:
    """``int[n h w]`` -> one-hot ``uint8[n c h w]``."""
    return F.one_hot(codes, c).permute(0, 3, 1, 2).to(torch.uint8)


def batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    obs = one_hot_grid(torch.randint(0, 4, (2 * 5, 3, 3), generator=g), 4).reshape(2, 5, 4, 3, 3)
    actions, first = torch.randint(0, 3, (2, 5), generator=g), torch.zeros(2, 5, dtype=torch.bool)
    first[:, 0] = True
    return obs, actions, first


def test_gru_loss_is_the_hand_weighted_cross_entropy():
    torch.manual_seed(0)
    m = build_model("gru", SPEC, ACT, recon_balance=1.0, **SMALL).train(False)
    m.balance.counts += torch.tensor([20.0, 5.0, 2.0, 0.0], dtype=torch.float64)
    obs, actions, first = batch(1)
    torch.manual_seed(3)
    got = m.loss(obs, actions, first)
    torch.manual_seed(3)  # the same observed prefix
    mask = observed_prefix(first)
    logits = m.decoder(m._filter(obs, actions, first, mask)["feat"].reshape(10, -1))  # [(b t) c h w]
    freq = (torch.tensor([20.0, 5.0, 2.0, 0.0]) + 1) / (27 + 4)  # add-one smoothed frequencies
    w = freq ** -1.0 / (freq ** -1.0 * freq).sum()
    codes = obs.reshape(10, 4, 3, 3).argmax(1)
    logp = logits.log_softmax(1)
    per_step = torch.stack([sum(-w[codes[n, i, j]] * logp[n, codes[n, i, j], i, j] for i in range(3) for j in range(3))
                            for n in range(10)]).reshape(2, 5)
    torch.testing.assert_close(got.loss, per_step.mean())
    m0 = build_model("gru", SPEC, ACT, recon_balance=0.0, **SMALL).train(False)
    m0.load_state_dict({k: v for k, v in m.state_dict().items() if k != "balance.counts"})
    torch.manual_seed(3)
    plain = m0.loss(obs, actions, first).loss  # recon_balance=0: the unweighted cross-entropy
    ce = -(logp * obs.reshape(10, 4, 3, 3)).sum((1, 2, 3)).mean()
    torch.testing.assert_close(plain, ce)


def test_gru_balance_is_on_by_default_off_at_zero_and_for_vector_observations():
    assert build_model("gru", SPEC, ACT).balance.power == 0.5
    assert build_model("gru", SPEC, ACT).hparams["recon_balance"] == 0.5
    assert build_model("gru", SPEC, ACT, recon_balance=0.0).balance is None
    assert build_model("gru", ObsSpec((5,), "vector"), ACT, recon_balance=0.5).balance is None


@pytest.mark.parametrize("bad", [-0.1, 2.5, math.inf])
def test_bad_recon_balance_is_refused(bad):
    with pytest.raises(ValueError, match="recon_balance must (lie in|be a finite number)"):
        build_model("gru", SPEC, ACT, recon_balance=bad)


def test_spr_has_no_recon_balance():
    """SPR shares the GRU's recurrent core but reconstructs nothing: the option is not one of its hparams."""
    assert "recon_balance" not in build_model("spr", SPEC, ACT, **SMALL).hparams
    with pytest.raises((TypeError, ValueError), match="recon_balance"):
        build_model("spr", SPEC, ACT, recon_balance=0.5)
