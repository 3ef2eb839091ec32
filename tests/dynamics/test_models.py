"""The dynamics models: shapes, resets, learning on a tiny deterministic task, the registry, hparams."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dynamics.base import ActionSpec, LatentState, ObsSpec
from dynamics.registry import build_model, model_names
from dynamics.rssm import straight_through
from dynamics.spr import effective_rank, vicreg_terms

torch.set_num_threads(1)

SMALL = {"deter": 32, "hidden": 32, "embed": 16}
SMALL_BY_MODEL = {"rssm": {**SMALL, "stoch": 4, "classes": 4, "stoch_kind": "discrete"},
                  "rssm_gaussian": {**SMALL, "stoch": 4, "stoch_kind": "gaussian"}, "gru": SMALL, "spr": SMALL}
VARIANTS = tuple(SMALL_BY_MODEL)
"""Every registered model, the RSSM with both latents: ``rssm`` (categorical) and ``rssm_gaussian`` (the default)."""
OBS = {"symbolic": ObsSpec((3, 4, 4), "symbolic"), "image": ObsSpec((3, 20, 12), "image"), "vector": ObsSpec((5,), "vector")}
ACT = {"discrete": ActionSpec(True, n=5), "continuous": ActionSpec(False, dim=2)}
MOVES = torch.tensor([[0, 0], [-1, 0], [1, 0], [0, -1], [0, 1]])


def small(name: str, obs: ObsSpec, act: ActionSpec, seed: int = 0, **extra):
    torch.manual_seed(seed)
    hp = {**SMALL_BY_MODEL[name], **extra}
    if obs.kind == "image":
        hp.setdefault("encoder", "conv")
        hp.setdefault("conv_depth", 4)
    return build_model(name.removesuffix("_gaussian"), obs, act, **hp)


def random_batch(obs: ObsSpec, act: ActionSpec, b: int, t: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    if obs.kind == "symbolic":
        c, h, w = obs.shape
        o = F.one_hot(torch.randint(0, c, (b, t, h, w), generator=g), c).permute(0, 1, 4, 2, 3).to(torch.uint8)
    elif obs.kind == "image":
        o = torch.randint(0, 256, (b, t, *obs.shape), generator=g, dtype=torch.uint8)
    else:
        o = torch.randn(b, t, *obs.shape, generator=g)
    a = torch.randint(0, act.n, (b, t), generator=g) if act.discrete else torch.rand(b, t, act.dim, generator=g) * 2 - 1
    first = torch.zeros(b, t, dtype=torch.bool)
    first[:, 0] = True
    return o, a, first


def walk(b: int, t: int, size: int = 4, seed: int = 0):
    """Random walks of an agent on a ``size x size`` grid: symbolic obs ``uint8[b t 2 size size]``
    (channel 1 marks the agent), actions ``int64[b t]`` (stay, up, down, left, right), positions ``[b t 2]``."""
    g = torch.Generator().manual_seed(seed)
    actions = torch.randint(0, 5, (b, t), generator=g)
    actions[:, 0] = 0
    pos = torch.zeros(b, t, 2, dtype=torch.long)
    pos[:, 0] = torch.randint(0, size, (b, 2), generator=g)
    for i in range(1, t):
        pos[:, i] = (pos[:, i - 1] + MOVES[actions[:, i]]).clamp(0, size - 1)
    agent = F.one_hot(pos[..., 0] * size + pos[..., 1], size * size).reshape(b, t, size, size)
    obs = torch.stack([1 - agent, agent], 2).to(torch.uint8)
    first = torch.zeros(b, t, dtype=torch.bool)
    first[:, 0] = True
    return obs, actions, first, pos


def test_variants_cover_every_model_and_both_rssm_latents():
    assert {v.removesuffix("_gaussian") for v in VARIANTS} == set(model_names())
    assert {SMALL_BY_MODEL[v].get("stoch_kind") for v in VARIANTS if v.startswith("rssm")} == {"discrete", "gaussian"}


@pytest.mark.parametrize("name,obs_kind,act_kind", list(itertools.product(VARIANTS, OBS, ACT)))
def test_shapes(name, obs_kind, act_kind):
    obs, act = OBS[obs_kind], ACT[act_kind]
    model = small(name, obs, act)
    o, a, first = random_batch(obs, act, 3, 6)
    out = model.loss(o, a, first)
    assert out.loss.shape == () and torch.isfinite(out.loss)
    out.loss.backward()
    assert all(torch.isfinite(v) for v in out.metrics.values())
    post = model.observe(o, a, first)
    assert set(model.sites) == set(post.sites)
    for site, shape in model.sites.items():
        assert tuple(post[site].shape) == (3, 6, *shape), site
    if name.startswith("rssm"):  # written out: 4 Gaussian dimensions, or 4 groups x 4 classes
        assert model.sites["stoch"] == ((4,) if name == "rssm_gaussian" else (16,))
        assert model.sites["feat"] == (SMALL["deter"] + model.sites["stoch"][0],)
    imagined = model.imagine(post.at((slice(None), -1)), a[:, :4])
    assert "feat" in imagined.sites
    for site in imagined:
        assert tuple(imagined[site].shape) == (3, 4, *model.sites[site]), site
    init = model.initial(3)
    assert tuple(init.feat.shape) == (3, *model.sites["feat"])
    if model.can_decode:
        assert tuple(model.decode(imagined).shape) == (3, 4, *obs.shape)
        assert tuple(model.decode(post).shape) == (3, 6, *obs.shape)
    else:
        with pytest.raises(NotImplementedError):
            model.decode(imagined)


@pytest.mark.parametrize("name", VARIANTS)
def test_zero_horizon_imagine(name):
    obs, act = OBS["symbolic"], ACT["discrete"]
    model = small(name, obs, act)
    state = model.initial(2)
    empty = model.imagine(state, torch.zeros(2, 0, dtype=torch.long))
    for site in empty:
        assert tuple(empty[site].shape) == (2, 0, *model.sites[site])
    with torch.inference_mode():
        assert tuple(model.imagine(state, torch.zeros(2, 0, dtype=torch.long)).feat.shape) == (2, 0, *model.sites["feat"])


@pytest.mark.parametrize("name,act_kind", list(itertools.product(VARIANTS, ACT)))
def test_is_first_resets_state(name, act_kind):
    obs, act = OBS["symbolic"], ACT[act_kind]
    model = small(name, obs, act).eval()
    o, a, first = random_batch(obs, act, 2, 8, seed=1)
    first[:, 3] = True
    first[1, 6] = True
    joined = model.observe(o, a, first)
    fresh = model.observe(o[:, 3:], a[:, 3:], first[:, 3:])  # first[:, 3] is the new episode's first step
    for site in model.sites:
        torch.testing.assert_close(joined[site][:, 3:], fresh[site], msg=site)
    # The action stored at a first step is ignored (it did not lead into the step).
    a2 = a.clone()
    a2[:, 3] = a2[:, 2] if act.discrete else -a2[:, 3]
    torch.testing.assert_close(model.observe(o, a2, first).feat, joined.feat)


@pytest.mark.parametrize("name", VARIANTS)
def test_imagine_matches_with_and_without_grad(name):
    obs, act = OBS["vector"], ACT["continuous"]
    model = small(name, obs, act).eval()
    o, a, first = random_batch(obs, act, 3, 5)
    state = model.observe(o, a, first).at((slice(None), -1))
    with_grad = model.imagine(state, a)
    with torch.inference_mode():
        without = model.imagine(state, a)
    for site in with_grad:
        torch.testing.assert_close(with_grad[site], without[site])


def test_straight_through_is_one_hot_with_gradients():
    logits = torch.randn(64, 4, 6, requires_grad=True)
    for sample in (True, False):
        out = straight_through(logits.softmax(-1), sample)
        assert set(out.detach().unique().tolist()) <= {0.0, 1.0}
        assert torch.equal(out.detach().sum(-1), torch.ones(64, 4))
        weights = torch.randn(6)
        (grad,) = torch.autograd.grad((out * weights).sum(), logits)
        assert grad.abs().sum() > 0
    # Samples follow the probabilities: a 90% class is drawn about 90% of the time.
    probs = torch.tensor([0.9, 0.05, 0.05]).expand(20000, 3)
    freq = straight_through(probs, True).mean(0)
    assert abs(float(freq[0]) - 0.9) < 0.01


def test_rssm_stoch_is_one_hot_per_group_and_gaussian_runs():
    obs, act = OBS["symbolic"], ACT["discrete"]
    model = small("rssm", obs, act)
    o, a, first = random_batch(obs, act, 2, 5)
    stoch = model.observe(o, a, first)["stoch"].reshape(2, 5, 4, 4)
    assert torch.equal(stoch.sum(-1), torch.ones(2, 5, 4)) and set(stoch.unique().tolist()) <= {0.0, 1.0}
    gauss = small("rssm", obs, act, stoch_kind="gaussian")
    state = gauss.observe(o, a, first).at((slice(None), -1))
    s1, s2 = gauss.imagine(state, a, sample=True), gauss.imagine(state, a, sample=True)
    assert not torch.equal(s1.feat, s2.feat), "samples should differ"
    torch.testing.assert_close(gauss.imagine(state, a).feat, gauss.imagine(state, a).feat)


def _agent_accuracy(model, obs, actions, first, pos, context: int, horizon: int) -> float:
    """How often the argmax of the predicted agent channel is the true agent cell, ``horizon`` steps open loop."""
    with torch.inference_mode():
        model.eval()
        state = model.observe(obs[:, :context], actions[:, :context], first[:, :context]).at((slice(None), -1))
        imagined = model.imagine(state, actions[:, context:context + horizon])
        size = obs.shape[-1]
        if model.can_decode:
            score = model.decode(imagined)[:, :, 1].flatten(2)  # [b h cells]
        else:  # SPR: retrieve the cell whose target latent is closest to the prediction
            cells = torch.eye(size * size).reshape(-1, 1, size, size)
            candidates = model.target_encoder(torch.cat([1 - cells, cells], 1).to(torch.uint8))
            score = F.normalize(model.predict_target(imagined), dim=-1) @ F.normalize(candidates, dim=-1).T
        truth = pos[:, context:context + horizon, 0] * size + pos[:, context:context + horizon, 1]
        return float((score.argmax(-1) == truth).float().mean())


@pytest.mark.parametrize("name", model_names())
def test_training_beats_chance_and_untrained(name):
    obs_spec, act = ObsSpec((2, 4, 4), "symbolic"), ACT["discrete"]
    model = small(name, obs_spec, act)
    untrained = small(name, obs_spec, act)
    test = walk(64, 10, seed=99)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for step in range(250):
        o, a, f, _ = walk(16, 10, seed=step)
        out = model.loss(o, a, f)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    trained_acc = _agent_accuracy(model, *test, context=4, horizon=3)
    untrained_acc = _agent_accuracy(untrained, *test, context=4, horizon=3)
    assert trained_acc > 3 / 16, (trained_acc, untrained_acc)  # chance is 1/16
    assert trained_acc > untrained_acc + 0.1, (trained_acc, untrained_acc)


def test_effective_rank_matches_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 8)) @ np.diag([3, 2, 1, 1, 0.5, 0.1, 0.01, 0.0])
    s = np.linalg.svd(x, compute_uv=False)
    p = s / s.sum()
    p = p[p > 0]
    ref = np.exp(-(p * np.log(p)).sum())
    assert effective_rank(torch.tensor(x)).item() == pytest.approx(ref, rel=1e-5)
    assert effective_rank(torch.ones(10, 4)).item() == pytest.approx(1.0, abs=1e-4)
    assert effective_rank(torch.eye(6)).item() == pytest.approx(6.0, rel=1e-5)


def test_vicreg_terms_match_hand_computation():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(40, 5)) * np.array([0.2, 1.0, 3.0, 0.5, 1.0])
    var, cov = vicreg_terms(torch.tensor(z))
    c = np.cov(z, rowvar=False)
    std = np.sqrt(np.diag(c) + 1e-4)
    assert var.item() == pytest.approx(np.maximum(0, 1 - std).mean(), rel=1e-6)
    assert cov.item() == pytest.approx(((c ** 2).sum() - (np.diag(c) ** 2).sum()) / 5, rel=1e-6)


def test_spr_anti_collapse_keeps_rank_higher():
    obs_spec, act = ObsSpec((2, 4, 4), "symbolic"), ACT["discrete"]
    ranks = {}
    for label, weights in {"vicreg": {}, "none": {"var_weight": 0.0, "cov_weight": 0.0}}.items():
        model = small("spr", obs_spec, act, seed=3, **weights)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        for step in range(60):
            out = model.loss(*walk(16, 10, seed=step)[:3])
            opt.zero_grad()
            out.loss.backward()
            opt.step()
        ranks[label] = float(out.metrics["erank_embed"])
    assert ranks["vicreg"] > ranks["none"], ranks


def test_spr_target_follows_online_encoder_by_ema():
    model = small("spr", OBS["vector"], ACT["discrete"], ema=0.9)
    online = [p.detach().clone() for p in model.encoder.parameters()]
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.add_(1.0)
    before = [p.detach().clone() for p in model.target_encoder.parameters()]
    model.update_target()
    for b, o, t in zip(before, online, model.target_encoder.parameters()):
        torch.testing.assert_close(t, 0.9 * b + 0.1 * (o + 1.0))
    assert not any(p.requires_grad for p in model.target_encoder.parameters())


def test_build_model_refuses_unknown_names_and_hparams():
    with pytest.raises(ValueError, match="known models: gru, rssm, spr"):
        build_model("dreamer", OBS["vector"], ACT["discrete"])
    with pytest.raises(ValueError, match=r"unknown hparam\(s\) \['detr'\].*allowed: deter"):
        build_model("rssm", OBS["vector"], ACT["discrete"], detr=64)
    with pytest.raises(ValueError, match="stoch_kind"):
        build_model("rssm", OBS["vector"], ACT["discrete"], stoch_kind="beta")


@pytest.mark.parametrize("name,obs_kind", list(itertools.product(VARIANTS, ["symbolic", "image"])))
def test_hparams_round_trip(name, obs_kind):
    obs, act = OBS[obs_kind], ACT["discrete"]
    model = small(name, obs, act).eval()
    hparams = json.loads(json.dumps(model.hparams))  # plain JSON types only
    rebuilt = build_model(model.name, **hparams).eval()
    assert [(k, v.shape) for k, v in rebuilt.state_dict().items()] == [(k, v.shape) for k, v in model.state_dict().items()]
    rebuilt.load_state_dict(model.state_dict())
    o, a, first = random_batch(obs, act, 2, 5)
    s1, s2 = model.observe(o, a, first), rebuilt.observe(o, a, first)
    i1, i2 = model.imagine(s1.at((slice(None), -1)), a), rebuilt.imagine(s2.at((slice(None), -1)), a)
    for x, y in [(s1.feat, s2.feat), (i1.feat, i2.feat)]:
        torch.testing.assert_close(x, y)
    if model.can_decode:
        torch.testing.assert_close(model.decode(i1), rebuilt.decode(i2))


def test_state_helpers_and_errors():
    model = small("gru", OBS["symbolic"], ACT["discrete"])
    o, a, first = random_batch(OBS["symbolic"], ACT["discrete"], 2, 3)
    with pytest.raises(ValueError, match=r"obs must have shape \(2, 3, 3, 4, 4\)"):
        model.observe(o[..., :3], a, first)
    with pytest.raises(TypeError, match="integer indices"):
        model.observe(o, a.float(), first)
    state = model.observe(o, a, first)
    assert isinstance(state.at((slice(None), -1)), LatentState)


@pytest.mark.parametrize("kind", ["gaussian", "discrete"])
def test_dyn_grad_scales_only_the_kl_dyn_gradient_into_deter(kind):
    """``dyn_grad`` leaves the loss value and the prior head's gradient alone and scales, linearly, the part
    of the upstream (GRU) gradient that comes through the prior head."""
    obs, act = OBS["symbolic"], ACT["discrete"]
    o, a, first = random_batch(obs, act, 3, 6)
    hp = {"stoch_kind": kind, "free_bits": 0.0} | ({"stoch": 4} if kind == "gaussian" else {})

    def grads(g: float):
        model = small("rssm", obs, act, seed=0, dyn_grad=g, **hp)
        torch.manual_seed(1)  # the same posterior samples for every g
        out = model.loss(o, a, first)
        out.loss.backward()
        return out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    (l0, g0), (l1, g1), (lh, gh) = grads(0.0), grads(1.0), grads(0.3)
    assert torch.allclose(l0, l1) and torch.allclose(lh, l1)
    for name in g1:
        if name.startswith("prior."):
            assert torch.allclose(gh[name], g1[name], atol=1e-6), name
    gru = "gru.weight_hh"
    assert not torch.allclose(g0[gru], g1[gru])  # the prior head does send gradient into deter
    assert torch.allclose(gh[gru], g0[gru] + 0.3 * (g1[gru] - g0[gru]), atol=1e-5)


@pytest.mark.parametrize("act_kind", list(ACT))
def test_action_mult_step_is_the_factored_multiplicative_formula(act_kind):
    """One imagined step with ``action_mult`` equals the formula written out with the module's weights:
    ``deter' = GRU(silu(LN(W_z s + W_a a + W_o((W_s [d, s]) * (W_m a)))), d)``; the term is not inert."""
    obs, act = OBS["symbolic"], ACT[act_kind]
    model = small("rssm", obs, act, seed=2, action_mult=6).eval()
    o, a, first = random_batch(obs, act, 3, 4, seed=3)
    state = model.observe(o, a, first).at((slice(None), -1))
    step = a[:, :1]
    got = model.imagine(state, step)["deter"][:, 0]

    def lin(layer: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
        return x @ layer.weight.T + (0.0 if layer.bias is None else layer.bias)

    d, s = state["deter"], state["stoch"]
    ea = (F.one_hot(step[:, 0], act.n).float() if act.discrete else step[:, 0])
    x = (lin(model.img_stoch, s) + lin(model.img_action, ea)
         + lin(model.mult_out, lin(model.mult_state, torch.cat([d, s], -1)) * lin(model.mult_action, ea)))
    with torch.no_grad():
        torch.testing.assert_close(got, model.gru(F.silu(model.img_norm(x)), d))
        model.mult_out.weight.zero_()
        assert not torch.allclose(model.imagine(state, step)["deter"][:, 0], got, atol=1e-4)


def test_action_mult_keeps_resets_and_refuses_negative_ranks():
    obs, act = OBS["symbolic"], ACT["discrete"]
    model = small("rssm", obs, act, action_mult=5).eval()
    o, a, first = random_batch(obs, act, 2, 8, seed=1)
    first[:, 3] = True
    torch.testing.assert_close(model.observe(o, a, first).feat[:, 3:], model.observe(o[:, 3:], a[:, 3:], first[:, 3:]).feat)
    with pytest.raises(ValueError, match="action_mult must be >= 0"):
        small("rssm", obs, act, action_mult=-1)
