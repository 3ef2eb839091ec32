"""Correctness review of dynamics/ (session 8): each test checks one formula or convention against an
independent reference (torch.distributions, a hand loop, the data convention of :mod:`worlds.trajectory`).

The first three tests failed before their fixes: a bootstrap resample with no cell of a rare class counted as
recall 0 (the lower end of the interval fell to 0), the VICReg variance was NaN for a one-row batch, and
``episode_windows(stride=0)`` was read as ``stride=length``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal, OneHotCategorical, kl_divergence

import dynamics.evaluate as evaluate
import dynamics.spr as spr
from dynamics.base import ActionSpec, ObsSpec
from dynamics.registry import build_model
from dynamics.training.data import InMemoryWindowSource, SplitStream, TrainWindows, ValWindows
from worlds.trajectory import Episode

torch.set_num_threads(1)

OBS = ObsSpec((3, 4, 4), "symbolic")
ACT = ActionSpec(True, n=5)
SMALL = {"deter": 16, "hidden": 16, "embed": 16}


def _batch(b: int, t: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    o = F.one_hot(torch.randint(0, 3, (b, t, 4, 4), generator=g), 3).permute(0, 1, 4, 2, 3).to(torch.uint8)
    a = torch.randint(0, 5, (b, t), generator=g)
    first = torch.zeros(b, t, dtype=torch.bool)
    first[:, 0] = True
    return o, a, first


# -- bugs fixed ------------------------------------------------------------------------------------------
def test_ratio_bootstrap_skips_resamples_without_cells_instead_of_counting_them_as_zero():
    """A class present in 2 of 20 episodes and always predicted right has recall 1 in every resample where it
    is defined; resamples that drew neither episode (~12% of them) have no recall. Counting them as 0 put the
    lower end of the 95% interval at 0."""
    num, den = np.zeros(20), np.zeros(20)
    num[[3, 11]] = den[[3, 11]] = [5.0, 7.0]
    est = evaluate._estimate(num, den, np.random.default_rng(0), resamples=2000, groups=np.arange(20))
    assert est.estimate == 1.0
    assert (est.lower, est.upper) == (1.0, 1.0)
    # the skipped resamples are those that drew neither episode, counted as for an undefined statistic
    idx = np.random.default_rng(0).integers(0, 20, size=(2000, 20))
    assert est.n_skipped == int((~np.isin(idx, [3, 11]).any(1)).sum()) > 0
    # resamples that always hold cells are unchanged: the same interval as a hand loop
    num, den = np.arange(1.0, 11.0), np.full(10, 12.0)
    est = evaluate._estimate(num, den, np.random.default_rng(2), resamples=500)
    idx = np.random.default_rng(2).integers(0, 10, size=(500, 10))
    ref = np.percentile(num[idx].sum(1) / den[idx].sum(1), [2.5, 97.5])
    assert (est.lower, est.upper) == pytest.approx(tuple(ref)) and est.n_skipped == 0


def test_vicreg_terms_are_finite_for_one_row_and_spr_loss_on_one_step():
    var, cov = spr.vicreg_terms(torch.randn(1, 4))
    assert torch.isfinite(var) and torch.isfinite(cov)
    assert var.item() == pytest.approx(1 - 1e-2, abs=1e-6)  # zero spread: std = sqrt(eps), hinge 1 - 0.01
    model = build_model("spr", {"shape": [3], "kind": "vector"}, {"discrete": True, "n": 2}, **SMALL)
    out = model.loss(torch.randn(1, 1, 3), torch.zeros(1, 1, dtype=torch.long), torch.ones(1, 1, dtype=torch.bool))
    assert torch.isfinite(out.loss)



def test_episode_windows_refuses_stride_zero():
    """``stride or length`` read stride=0 as ``length``; the check below it says stride must be positive."""
    ep = _episodes([5], 0)[0]
    with pytest.raises(ValueError, match="stride must be positive|length and stride must be positive"):
        evaluate.episode_windows([ep], 2, stride=0)
    assert evaluate.episode_windows([ep], 2)["obs"].shape[0] == 2  # the default (None) is still ``length``

# -- checked and right (regression guards) ---------------------------------------------------------------
def test_rssm_kl_matches_torch_distributions():
    torch.manual_seed(0)
    gauss = build_model("rssm", OBS, ACT, **SMALL, stoch=4)
    s1, s2 = torch.randn(7, 8), torch.randn(7, 8)
    (m1, d1), (m2, d2) = gauss._gaussian(s1), gauss._gaussian(s2)
    torch.testing.assert_close(gauss._kl(s1, s2), kl_divergence(Normal(m1, d1), Normal(m2, d2)).sum(-1))
    cat = build_model("rssm", OBS, ACT, **SMALL, stoch=4, classes=3, stoch_kind="discrete")
    s1, s2 = torch.randn(7, 12), torch.randn(7, 12)
    p, q = cat._probs(s1), cat._probs(s2)
    mixed = 0.99 * s1.reshape(7, 4, 3).softmax(-1) + 0.01 / 3  # unimix (DreamerV3: 1% uniform)
    torch.testing.assert_close(p, mixed)
    assert cat._probs(torch.tensor([[-50.0, 50.0, 0.0] * 4])).min() >= 0.01 / 3 - 1e-7
    torch.testing.assert_close(cat._kl(s1, s2), kl_divergence(OneHotCategorical(probs=p), OneHotCategorical(probs=q)).sum(-1))


@pytest.mark.parametrize("kind", ["gaussian", "discrete"])
def test_rssm_loss_clips_each_steps_kl_at_the_free_bits(kind):
    """DreamerV3: KL summed over the latent dims, clipped below at ``free_bits`` per (sequence, step), then averaged."""
    fb = {"gaussian": 1.5, "discrete": 0.3}[kind]  # about the median per-step KL of each untrained model
    hp = {"stoch": 4, "stoch_kind": kind, "overshoot": 0, "recon_balance": 0.0, "free_bits": fb}
    torch.manual_seed(0)
    model = build_model("rssm", OBS, ACT, **SMALL, **hp, **({"classes": 3} if kind == "discrete" else {}))
    o, a, first = _batch(3, 6)
    torch.manual_seed(1)
    got = model.loss(o, a, first).loss
    torch.manual_seed(1)  # the same posterior samples
    state, post = model._filter(o, a, first, sample=True)
    prior = model.prior(state["deter"])
    if kind == "gaussian":
        dist = lambda s: Normal(*model._gaussian(s))  # noqa: E731
        kl = kl_divergence(dist(post), dist(prior)).sum(-1)  # [b t]
    else:
        dist = lambda s: OneHotCategorical(probs=model._probs(s))  # noqa: E731
        kl = kl_divergence(dist(post), dist(prior)).sum(-1)
    assert kl.shape == (3, 6) and (kl < fb).any() and (kl > fb).any()  # the clip matters on some steps only
    recon = F.cross_entropy(model.decoder(state["feat"].flatten(0, 1)), o.flatten(0, 1).argmax(1),
                            reduction="none").flatten(1).sum(1).mean()
    ref = recon + (0.5 + 0.02) * kl.clamp(min=fb).mean()  # kl_dyn and kl_rep have the same value
    torch.testing.assert_close(got, ref)


def test_rssm_overshoot_loss_equals_a_hand_loop_of_imagined_rollouts():
    """From the posterior at s, ``imagine`` with actions s+1..s+H reaches frames s+1..s+H; rollouts that cross an
    episode start are left out."""
    torch.manual_seed(0)
    model = build_model("rssm", OBS, ACT, **SMALL, stoch=4, overshoot=3, recon_balance=0.0)
    stoch = model._stoch
    model._stoch = lambda stats, sample: stoch(stats, False)  # the prior mean: deterministic rollouts
    o, a, first = _batch(2, 7, seed=1)
    first[0, 4] = True
    with torch.no_grad():
        state = model.observe(o, a, first)
        got = model._overshoot_loss(state, o, a, first)
        terms = []
        for i in range(2):
            for s in range(7 - 3):
                rolled = model.imagine(state.at((slice(i, i + 1), s)), a[i:i + 1, s + 1:s + 4])
                for k in range(1, 4):
                    if not first[i, s + 1:s + k + 1].any():
                        logits = model.decoder(rolled.feat[:, k - 1])
                        terms.append(F.cross_entropy(logits, o[i:i + 1, s + k].argmax(1), reduction="sum"))
    torch.testing.assert_close(got, torch.stack(terms).mean())


@pytest.mark.parametrize("kind", ["gaussian", "discrete"])
def test_imagine_from_the_posterior_at_t_with_action_t_plus_1_reaches_observes_deter_at_t_plus_1(kind):
    """``actions[:, t]`` leads into step t, so one imagined step from post_t with ``actions[:, t+1]`` runs the
    same recurrent step as filtering step t+1 (only the stochastic part differs: prior vs posterior)."""
    torch.manual_seed(0)
    model = build_model("rssm", OBS, ACT, **SMALL, stoch=4, stoch_kind=kind).eval()
    o, a, first = _batch(2, 8, seed=2)
    with torch.inference_mode():
        post = model.observe(o, a, first)
        for t in range(7):
            step = model.imagine(post.at((slice(None), t)), a[:, t + 1:t + 2])
            torch.testing.assert_close(step["deter"][:, 0], post["deter"][:, t + 1])


def test_balance_adjustment_is_the_log_weight_shift_of_the_weighted_minimiser():
    """Fit free logits to the weighted CE on cells drawn from known p: softmax(adjust(logits)) recovers p."""
    from dynamics.balance import ClassBalance

    p = torch.tensor([0.85, 0.1, 0.05])
    bal = ClassBalance(3, 0.5)
    y = torch.multinomial(p, 6000, replacement=True, generator=torch.Generator().manual_seed(0))
    obs = F.one_hot(y, 3).T.reshape(1, 3, 60, 100).to(torch.uint8)
    bal.update(obs)
    freq = (bal.counts + 1) / (bal.counts.sum() + 3)
    torch.testing.assert_close(bal.weights().double(), freq ** -0.5 / (freq ** 0.5).sum(), rtol=1e-6, atol=1e-6)
    logits = torch.zeros(3, requires_grad=True)
    opt = torch.optim.LBFGS([logits], max_iter=100)

    def closure():
        opt.zero_grad()
        loss = bal.loss(logits[None, :, None, None].expand(1, 3, 60, 100), obs.float()).sum()
        loss.backward()
        return loss

    opt.step(closure)
    calibrated = bal.adjust(logits.detach()[:, None, None])[:, 0, 0].softmax(0)
    empirical = torch.bincount(y, minlength=3).float() / len(y)
    torch.testing.assert_close(calibrated, empirical, atol=2e-3, rtol=0)
    assert not torch.allclose(logits.detach().softmax(0), empirical, atol=2e-2)  # the raw minimiser is not calibrated


def _episodes(lengths, seed):
    rng = np.random.default_rng(seed)
    out = []
    for n in lengths:
        first = np.zeros(n, bool)
        first[0] = True
        out.append(Episode(obs=rng.normal(size=(n, 2)).astype(np.float32), actions=rng.integers(0, 3, n),
                           is_first=first, is_terminal=np.zeros(n, bool), reward=np.zeros(n, np.float32),
                           success=np.zeros(n, bool), violation=np.zeros(n, bool)))
    return out


def test_training_windows_stay_in_their_split_and_mark_every_episode_start():
    """Every window of every epoch lies in the train split's stream; each episode start inside it is ``is_first``."""
    train, val = _episodes([7, 3, 11, 5, 9], 0), _episodes([6, 8], 1)
    src = InMemoryWindowSource({"train": train, "val": val}, {"shape": [2], "obs_kind": "vector"}, {"kind": "discrete", "n": 3})
    stream = SplitStream(src, "train", 6)
    starts = np.cumsum([0] + [len(e) for e in train])
    obs = np.concatenate([e.obs for e in train])
    data = TrainWindows(stream, seed=3)
    for p in range(5 * data.windows_per_epoch):
        w, o = data[p], data.start_of(p)
        np.testing.assert_array_equal(w["obs"], obs[o:o + 6])
        np.testing.assert_array_equal(np.flatnonzero(w["is_first"]), [s - o for s in starts[:-1] if o <= s < o + 6])
    val_obs = np.concatenate([e.obs for e in val])
    vw = ValWindows(SplitStream(src, "val", 6), 8)
    assert len(vw) == 14 // 6 and all(np.array_equal(vw[k]["obs"], val_obs[6 * k:6 * k + 6]) for k in range(len(vw)))


@pytest.mark.parametrize("name", ["gru", "spr"])
def test_blanked_training_steps_are_what_imagine_computes(name):
    """Observation dropout trains exactly the open-loop path: the states of a window whose suffix from step c is
    blanked equal ``imagine`` from the state at c - 1 with actions c .. t-1."""
    torch.manual_seed(0)
    model = build_model(name, OBS, ACT, **SMALL).eval()
    o, a, first = _batch(2, 7, seed=3)
    c = 3
    mask = torch.arange(7) < c
    with torch.inference_mode():
        blanked = model._filter(o, a, first, mask.expand(2, 7))
        rolled = model.imagine(model.observe(o[:, :c], a[:, :c], first[:, :c]).at((slice(None), -1)), a[:, c:])
    torch.testing.assert_close(blanked["deter"][:, c:], rolled["deter"])
