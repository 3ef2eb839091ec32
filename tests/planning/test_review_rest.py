"""Review: the latent filter equals one observe over each episode (RSSM/GRU, discrete and continuous actions,
envs that reset at different times, finite context); the oracle imagines what the world does (batch of copies
of each env, terminal steps, absorbing after) without touching the real world."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from dynamics import build_model
from planning import oracle_model
from planning.latent_filter import LatentFilter
from worlds.lavakeydoor import LavaKeyDoor
from worlds.pointmass import PointMass

torch.set_num_threads(1)


def run(name, hp, kind, incremental, context=None):
    torch.manual_seed(0)
    if kind == "vector":
        model = build_model(name, {"shape": [6], "kind": "vector"}, {"discrete": False, "dim": 2}, deter=12, hidden=12, embed=12, **hp).eval()
    else:
        model = build_model(name, {"shape": [3, 5, 5], "kind": "symbolic"}, {"discrete": True, "n": 5}, deter=12, hidden=12, embed=12, **hp).eval()
    rng = np.random.default_rng(1)
    n = 3
    def obs_():
        if kind == "vector":
            return rng.normal(size=(n, 6)).astype(np.float32)
        idx = rng.integers(0, 3, (n, 5, 5))
        return np.eye(3, dtype=np.uint8)[idx].transpose(0, 3, 1, 2).copy()
    def act_():
        return rng.uniform(-1, 1, (n, 2)).astype(np.float32) if kind == "vector" else rng.integers(0, 5, n)
    f = LatentFilter(model, n, incremental=incremental, context=context)
    o = obs_()
    f.start(o, np.ones(n, bool))
    zero = np.zeros(2, np.float32) if kind == "vector" else 0
    hist = [[(o[i], zero)] for i in range(n)]
    worst = 0.0
    for t in range(14):
        a = act_(); o = obs_()
        active = rng.random(n) < 0.8
        f.update(o, a, active)
        for i in np.flatnonzero(active):
            hist[i].append((o[i], a[i]))
        done = active & (rng.random(n) < 0.2)
        if done.any():
            o2 = obs_()
            f.start(o2, done)
            for i in np.flatnonzero(done):
                hist[i] = [(o2[i], zero)]
        for i in range(n):
            h = hist[i]; trimmed = False
            if context is not None and len(h) > context:
                h = h[-context:]; trimmed = True
            ob = torch.as_tensor(np.stack([x[0] for x in h]))[None]
            ac = torch.as_tensor(np.stack([np.asarray(x[1]) for x in h]))[None]
            first = torch.zeros(ac.shape[:2], dtype=torch.bool); first[0, 0] = not trimmed
            with torch.inference_mode():
                ref = model.observe(ob, ac, first)
            for k in ref.sites:
                worst = max(worst, (f.state[k][i] - ref[k][0, -1]).abs().max().item())
    return worst


def check(world, k, H, rand_act, dtype, atol):
    oracle = oracle_model(world, dtype=dtype)
    rng = np.random.default_rng(0)
    for _ in range(3):
        world.step(world.oracle_actions())
    before = world.get_state()
    st = oracle.state_of(world)
    c0 = oracle.concepts(st)
    for name, v in world.concepts().items():
        np.testing.assert_allclose(c0[name].double().numpy(), v.astype(np.float64), atol=atol, err_msg=name)
    n = world.num_envs
    # replicate every env k times: [n*k]
    rep = st.map(lambda v: v.repeat_interleave(k, 0))
    acts = rand_act(rng, n * k, H)
    im = oracle.imagine(rep, torch.as_tensor(acts))
    after = world.get_state()
    for f in dataclasses.fields(before):
        assert np.array_equal(getattr(before, f.name), getattr(after, f.name)), f.name
    # reference: a world of n*k envs set to the replicated state, stepped
    ref = type(world)(n * k, world.params, seed=0)
    ref.set_state(type(before)(**{f.name: np.repeat(getattr(before, f.name), k, 0) for f in dataclasses.fields(before)}))
    done = im["done"].numpy()
    alive = np.ones(n * k, bool)
    vals = oracle.concepts(im)
    term_seen = 0
    for t in range(H):
        res = ref.step(acts[:, t])
        truth = ref.concepts()
        for name, v in truth.items():
            got = vals[name][:, t].double().numpy()
            np.testing.assert_allclose(got[alive], v.astype(np.float64)[alive], atol=atol, err_msg=f"{name} t={t}")
        np.testing.assert_array_equal(done[alive, t], (res.terminated | (~alive))[alive])
        term_seen += res.terminated[alive].sum()
        alive &= ~res.terminated
    # absorbing
    for key in ("pos",):
        x = im[key]
        d = im["done"]
        assert torch.equal(x[:, 1:][d[:, :-1]], x[:, :-1][d[:, :-1]])
    assert term_seen > 0



@pytest.mark.parametrize("name,hp", [("gru", {}), ("rssm", {"stoch": 3, "classes": 4})], ids=["gru", "rssm"])
@pytest.mark.parametrize("kind", ["vector", "symbolic"])
@pytest.mark.parametrize("incremental,context", [(True, None), (False, None), (None, 4)])
def test_filter_equals_observe_over_each_episode(name, hp, kind, incremental, context):
    assert run(name, hp, kind, incremental, context) < 1e-5


def test_oracle_imagines_the_world_from_copies_without_touching_it():
    check(LavaKeyDoor(8, seed=3), 4, 25, lambda r, m, h: r.integers(0, 5, (m, h)), torch.float32, 0.0)
    p = PointMass(8, seed=3)
    p.reset()
    check(p, 4, 40, lambda r, m, h: r.uniform(-1.5, 1.5, (m, h, 2)), torch.float64, 1e-9)
