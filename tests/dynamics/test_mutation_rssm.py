"""Mutation audit of dynamics/rssm.py: the Gaussian latent's mean and its standard-deviation floor.

* ``observe`` / ``imagine`` with ``sample=False`` take the Gaussian *mean*; sampled states average to it
  (checked from outside: many samples of one imagined step from one state);
* ``min_std`` bounds the standard deviation from below: statistics that push ``softplus`` to 0 still give
  ``std == min_std``, so sampled states spread by ``min_std`` and the KL stays finite.
"""

from __future__ import annotations

import math

import torch
from torch.distributions import Normal, kl_divergence

from dynamics.base import ActionSpec, ObsSpec
from dynamics.registry import build_model

torch.set_num_threads(1)

OBS = ObsSpec((3, 4, 4), "symbolic")
ACT = ActionSpec(True, n=5)
SMALL = {"deter": 16, "hidden": 16, "embed": 16, "stoch": 4}


def _obs(b: int, t: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    o = torch.nn.functional.one_hot(torch.randint(0, 3, (b, t, 4, 4), generator=g), 3).permute(0, 1, 4, 2, 3)
    a = torch.randint(0, 5, (b, t), generator=g)
    first = torch.zeros(b, t, dtype=torch.bool)
    first[:, 0] = True
    return o.to(torch.uint8), a, first


def test_unsampled_states_are_the_mean_of_sampled_ones():
    torch.manual_seed(0)
    model = build_model("rssm", OBS, ACT, **SMALL, min_std=0.3).eval()
    o, a, first = _obs(2, 5)
    with torch.no_grad():
        post = model.observe(o, a, first)                       # sample=False
        start = post.at((slice(None), -1))                      # [2 ...]
        n = 4000
        many = start.map(lambda t: t.repeat_interleave(n, 0))  # [2n ...]
        act = torch.tensor([1, 3]).repeat_interleave(n)[:, None]
        mode = model.imagine(start, torch.tensor([[1], [3]]))["stoch"][:, 0]             # [2 S]
        draws = model.imagine(many, act, sample=True)["stoch"][:, 0].reshape(2, n, -1)   # [2 n S]
    # the same deter, so the prior is the same Gaussian; its std is >= min_std = 0.3, the mean's error ~ std / sqrt(n)
    spread = draws.std(1)
    assert (spread > 0.25).all()
    assert ((draws.mean(1) - mode).abs() < 5 * spread / math.sqrt(n)).all()


def test_the_standard_deviation_never_falls_below_min_std():
    torch.manual_seed(0)
    model = build_model("rssm", OBS, ACT, **SMALL, min_std=0.2)
    mean = torch.randn(3, 4)
    stats = torch.cat([mean, torch.full((3, 4), -200.0)], -1)   # softplus(-200) == 0 in float32
    m, std = model._gaussian(stats)
    torch.testing.assert_close(m, mean)
    torch.testing.assert_close(std, torch.full((3, 4), 0.2))
    torch.manual_seed(1)
    draws = torch.stack([model._stoch(stats, True) for _ in range(2000)])            # [2000 3 4]
    assert ((draws.std(0) - 0.2).abs() < 0.02).all()
    # KL between two such Gaussians whose means differ by 1 in every dim: 4 * 1 / (2 * 0.2 ** 2) = 50 nats
    other = torch.cat([mean + 1, torch.full((3, 4), -200.0)], -1)
    kl = model._kl(stats, other)
    ref = kl_divergence(Normal(mean, 0.2), Normal(mean + 1, 0.2)).sum(-1)
    torch.testing.assert_close(kl, ref)
    torch.testing.assert_close(kl, torch.full((3,), 50.0), rtol=1e-4, atol=1e-4)


def test_the_overshooting_loss_enters_the_loss_times_its_weight():
    o, a, first = _obs(3, 6)
    out = {}
    for w in (0.0, 1.0, 2.5):
        torch.manual_seed(0)
        model = build_model("rssm", OBS, ACT, **SMALL, overshoot=2, overshoot_weight=w, recon_balance=0.0)
        torch.manual_seed(1)                                    # the same posterior and prior samples
        out[w] = model.loss(o, a, first)
    over = out[0.0].metrics["overshoot"]
    assert over > 0
    torch.testing.assert_close(out[1.0].metrics["overshoot"], over)
    torch.testing.assert_close(out[2.5].loss, out[0.0].loss + 2.5 * over)
    torch.testing.assert_close(out[1.0].loss, out[0.0].loss + over)
