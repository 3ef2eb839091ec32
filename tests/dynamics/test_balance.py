"""Class-balanced reconstruction (dynamics/balance.py) and its use by the RSSM."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dynamics.balance import ClassBalance
from dynamics.base import ActionSpec, ObsSpec
from dynamics.registry import build_model


def one_hot_grid(codes: torch.Tensor, c: int) -> torch.Tensor:
    """``int[n h w]`` -> one-hot ``uint8[n c h w]``."""
    return F.one_hot(codes, c).permute(0, 3, 1, 2).to(torch.uint8)


def test_weights_before_counts_are_ones_and_after_are_normalised_inverse_frequencies():
    b = ClassBalance(3, 0.5)
    assert torch.equal(b.weights(), torch.ones(3))
    codes = torch.tensor([[[0, 0, 0, 0], [0, 0, 1, 2]]])  # 6 x class 0, 1 x class 1, 1 x class 2
    b.update(one_hot_grid(codes, 3))
    assert b.counts.tolist() == [6.0, 1.0, 1.0]
    freq = torch.tensor([7.0, 2.0, 2.0]) / 11.0  # add-one smoothing
    w = b.weights()
    expected = freq ** -0.5 / (freq ** 0.5).sum()
    torch.testing.assert_close(w, expected.float())
    assert float((w * freq).sum()) == pytest.approx(1.0, abs=1e-6)
    assert w[1] > w[0] and w[1] == w[2]
    assert torch.equal(ClassBalance(3, 0.0).weights(), torch.ones(3))


def test_loss_is_the_hand_computed_weighted_cross_entropy():
    torch.manual_seed(0)
    b = ClassBalance(3, 1.0)
    b.counts += torch.tensor([8.0, 3.0, 1.0], dtype=torch.float64)
    logits = torch.randn(2, 3, 2, 2)
    codes = torch.tensor([[[0, 1], [2, 0]], [[1, 1], [0, 2]]])
    obs = one_hot_grid(codes, 3)
    w = b.weights()
    logp = logits.log_softmax(1)
    hand = torch.stack([sum(-w[codes[n, i, j]] * logp[n, codes[n, i, j], i, j] for i in range(2) for j in range(2))
                        for n in range(2)])
    torch.testing.assert_close(b.loss(logits, obs), hand)


def test_adjusted_logits_of_the_weighted_minimiser_recover_the_true_frequencies():
    """The weighted CE is minimised by softmax ∝ w p; ``adjust`` must give p back (logit adjustment)."""
    torch.manual_seed(0)
    p = torch.tensor([0.85, 0.1, 0.04, 0.01])
    codes = torch.multinomial(p, 20000, replacement=True).reshape(20000, 1, 1)
    obs = one_hot_grid(codes, 4)
    b = ClassBalance(4, 0.5)
    b.update(obs)
    logits = torch.zeros(4, requires_grad=True)
    opt = torch.optim.Adam([logits], lr=0.05)
    for _ in range(800):
        opt.zero_grad()
        b.loss(logits.view(1, 4, 1, 1).expand(len(obs), 4, 1, 1), obs).mean().backward()
        opt.step()
    raw = logits.detach().softmax(0)
    calibrated = b.adjust(logits.detach().view(4, 1, 1)).view(4).softmax(0)
    freq = obs.float().mean((0, 2, 3))
    assert raw[3] > 2 * freq[3]  # the weighted minimiser over-predicts the rare class ...
    torch.testing.assert_close(calibrated, freq, atol=0.01, rtol=0.05)  # ... the adjustment undoes it


SMALL = {"rssm": dict(deter=16, stoch=4, hidden=16, embed=16), "gru": dict(deter=16, hidden=16, embed=16)}


@pytest.mark.parametrize("name", ["rssm", "gru"])
def test_models_count_only_in_training_and_decode_is_adjusted(name):
    torch.manual_seed(0)
    spec, act = ObsSpec((4, 3, 3), "symbolic"), ActionSpec(True, n=3)
    m = build_model(name, spec, act, recon_balance=0.5, **SMALL[name])
    g = torch.Generator().manual_seed(0)
    obs = one_hot_grid(torch.randint(0, 4, (2 * 5, 3, 3), generator=g), 4).reshape(2, 5, 4, 3, 3)
    actions, first = torch.randint(0, 3, (2, 5), generator=g), torch.zeros(2, 5, dtype=torch.bool)
    first[:, 0] = True
    m.train(False)
    m.loss(obs, actions, first)
    assert float(m.balance.counts.sum()) == 0.0  # evaluation never counts
    m.train(True)
    m.loss(obs, actions, first).loss.backward()
    assert float(m.balance.counts.sum()) == 2 * 5 * 9
    torch.testing.assert_close(m.balance.counts, obs.sum((0, 1, 3, 4)).double())
    assert "balance.counts" in m.state_dict()
    state = m.observe(obs, actions, first)
    raw = m.decoder(state["feat"].reshape(10, -1)).reshape(2, 5, 4, 3, 3)
    torch.testing.assert_close(m.decode(state), raw - m.balance.weights().log()[:, None, None])
    imagined = m.imagine(state.at((slice(None), -1)), actions[:, :3])  # open-loop predictions are adjusted too
    raw = m.decoder(imagined["feat"].reshape(6, -1)).reshape(2, 3, 4, 3, 3)
    torch.testing.assert_close(m.decode(imagined), raw - m.balance.weights().log()[:, None, None])
    clone = build_model(name, spec, act, recon_balance=0.5, **SMALL[name])
    clone.load_state_dict(m.state_dict())
    assert torch.equal(clone.balance.counts, m.balance.counts)


def test_balance_is_on_by_default_off_at_zero_and_for_vector_observations():
    assert build_model("rssm", ObsSpec((4, 3, 3), "symbolic"), ActionSpec(True, n=3)).balance.power == 0.5
    assert build_model("rssm", ObsSpec((4, 3, 3), "symbolic"), ActionSpec(True, n=3), recon_balance=0.0).balance is None
    assert build_model("rssm", ObsSpec((5,), "vector"), ActionSpec(True, n=3), recon_balance=0.5).balance is None


@pytest.mark.parametrize("bad", [-0.1, 2.5, math.inf])
def test_bad_recon_balance_is_refused(bad):
    with pytest.raises(ValueError, match="recon_balance must (lie in|be a finite number)"):
        build_model("rssm", ObsSpec((4, 3, 3), "symbolic"), ActionSpec(True, n=3), recon_balance=bad)
