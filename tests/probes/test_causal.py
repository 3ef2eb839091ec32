"""Causal sufficiency and necessity (probes.causal) on a linear model whose answer is known.

The world: each episode has a hidden bit ``key``; every observation is ``(2 key - 1) v + 0.3 noise`` in
``R^16`` for a fixed unit vector ``v``. The model's latent is the observation, imagination keeps the
``v`` component and shrinks every other one by 0.3 per step, and the decoder is the identity. So the
future depends on the latent through ``v`` alone: an edit along the key probe's direction flips the
imagined future, a random edit of the same norm (projection ~ norm / 4 on ``v``) almost never does,
and erasing ``key`` (the ``v`` component) raises the prediction loss far more than erasing a random
direction does.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor

import worlds
from dynamics import ActionSpec, DynamicsModel, LatentState, LossOutput, ObsSpec, build_model
from probes.base import ProbeError
from probes.causal import (NecessityResult, Scenario, causal_necessity, causal_sufficiency, edit_state,
                           key_door_scenario, prediction_loss, probe_edit)
from probes.consistency import anchor_steps, posterior_states
from probes.linear import LinearFitter, LinearProbe
from probes.normalize import Normalizer
from worlds.collect import collect
from worlds.concepts import Concept
from worlds.dataset.reader import TrajectoryDataset
from worlds.policies import EpsilonOraclePolicy
from worlds.trajectory import Episode

torch.set_num_threads(1)
D = 16
V = torch.linalg.qr(torch.randn(D, D, generator=torch.Generator().manual_seed(0)))[0][:, 0]  # unit [D]
KEY = Concept("key", "binary", "The episode's hidden bit.")
SPEED = Concept("speed", "scalar", "A scalar.", unit="m/s", low=-10, high=10)


def key_episodes(n: int, seed: int, length: int = 14) -> list[Episode]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        key = i % 2
        obs = ((2 * key - 1) * V.numpy()[None] + 0.3 * rng.normal(size=(length, D))).astype(np.float32)
        flags = np.zeros(length, bool)
        out.append(Episode(obs=obs, actions=np.zeros(length, np.int64), is_first=np.r_[True, flags[1:]],
                           is_terminal=flags, reward=np.zeros(length, np.float32), success=flags, violation=flags,
                           concepts={"key": np.full(length, key, np.uint8), "speed": np.zeros(length, np.float32)}))
    return out


class LinearModel(DynamicsModel):
    """``feat = obs``; ``imagine: z -> P z + 0.3 (I - P) z`` with ``P = v v^T``; ``decode(z) = z``."""

    def __init__(self):
        super().__init__()
        self.obs_spec, self.action_spec = ObsSpec((D,), "vector"), ActionSpec(True, n=2)
        self.register_buffer("proj", torch.outer(V, V))

    @property
    def sites(self) -> dict[str, tuple[int, ...]]:
        return {"feat": (D,)}

    @property
    def hparams(self) -> dict[str, Any]:
        return {}

    def initial(self, batch_size: int) -> LatentState:
        return LatentState({"feat": torch.zeros(batch_size, D)})

    def observe(self, obs: Tensor, actions: Tensor, is_first: Tensor, *, sample: bool = False) -> LatentState:
        return LatentState({"feat": obs.float()})

    def imagine(self, state: LatentState, actions: Tensor, *, sample: bool = False) -> LatentState:
        z, out = state["feat"], []
        for _ in range(actions.shape[1]):
            z = z @ self.proj + 0.3 * (z - z @ self.proj)
            out.append(z)
        return LatentState({"feat": torch.stack(out, 1)})

    def decode(self, state: LatentState) -> Tensor:
        return state["feat"]

    def loss(self, obs: Tensor, actions: Tensor, is_first: Tensor) -> LossOutput:
        raise NotImplementedError


@pytest.fixture(scope="module")
def fitted():
    """The model, held-out episodes, and the key probe with its training latents and labels."""
    model, train, test = LinearModel(), key_episodes(20, seed=1), key_episodes(30, seed=2)
    x = torch.cat([torch.from_numpy(e.obs) for e in train])
    y = np.concatenate([e.concepts["key"] for e in train])
    return model, test, LinearFitter(KEY, l2=1e-2).fit(x, y), x, y


# ----------------------------------------------------------------------------------------- sufficiency
@pytest.mark.parametrize("edit", ["direction", "gradient"])
def test_probe_edit_flips_the_imagined_future_and_a_random_edit_does_not(fitted, edit):
    model, test, probe, _, _ = fitted
    r = causal_sufficiency(model, test, probe, "feat", k=5, edit=edit, n_boot=200)
    assert r.criterion == "probe_k5" and r.reached == 1.0 and r.num_anchors == 30 * (14 - 5)
    assert r.success.estimate > 0.97 and r.null.estimate < 0.03
    assert r.difference.lower > 0.9
    assert 0.9 < r.edit_norm < 2.0  # |v . z| is about 1: the edit crosses the boundary, with a margin
    rows = r.rows("linear")
    assert [(w.metric, w.split, w.concept) for w in rows] == [("causal_sufficiency", "test", "key"),
                                                              ("causal_sufficiency_null", "test", "key")]


def test_probe_edit_reaches_the_requested_confidence_with_the_smallest_step(fitted):
    _, test, probe, _, _ = fitted
    x = torch.from_numpy(np.stack([e.obs[0] for e in test]))
    target = 1 - probe.predict(x)
    delta, reached = probe_edit(probe, x, target, confidence=0.9)
    p = probe.predict_proba(x + delta).gather(1, target[:, None])[:, 0]
    assert reached.all() and torch.allclose(p, torch.full_like(p, 0.9), atol=1e-4)
    # Reference: for a linear probe the step is closed-form, (logit(0.9) - signed score) / |w|.
    w = probe.direction()
    s = probe.score(x) * torch.where(target == 1, 1.0, -1.0)
    torch.testing.assert_close(delta.norm(dim=1), (np.log(9) - s) / w.norm(), atol=1e-4, rtol=1e-4)


def test_decoded_scenario_check(fitted):
    model, test, probe, _, _ = fitted
    anchors = np.asarray([(e, t) for e, ep in enumerate(test) if ep.concepts["key"][0] == 0 for t in range(0, 14, 3)])
    scenario = Scenario("v_sign", anchors, np.zeros((len(anchors), 3), np.int64), np.ones(len(anchors), np.int64),
                        lambda edit, base: (edit[:, -1] @ V > 0) & (base[:, -1] @ V <= 0))
    r = causal_sufficiency(model, test, probe, "feat", scenario=scenario, n_boot=200)
    assert r.criterion == "v_sign" and r.num_anchors == len(anchors)
    assert r.success.estimate == 1.0 and r.null.estimate < 0.05
    empty = Scenario("none", np.zeros((0, 2), np.int64), np.zeros((0, 1), np.int64), np.zeros(0, np.int64), scenario.check)
    skipped = causal_sufficiency(model, test, probe, "feat", scenario=empty)
    assert "no anchors" in skipped.skipped and skipped.rows("linear") == []


def test_sufficiency_bad_inputs(fitted):
    model, test, probe, _, _ = fitted
    with pytest.raises(ProbeError, match="no episode has context"):
        causal_sufficiency(model, test, probe, "feat", k=14)
    with pytest.raises(ProbeError, match="unknown site 'deter'"):
        causal_sufficiency(model, test, probe, "deter")
    scalar = LinearProbe(SPEED, Normalizer(torch.zeros(D), torch.ones(D)), {}, torch.ones(1, D), torch.zeros(1))
    with pytest.raises(ProbeError, match="binary or categorical"):
        causal_sufficiency(model, test, scalar, "feat")


# ------------------------------------------------------------------------------------------- necessity
def test_leace_erasure_raises_prediction_loss_more_than_random_subspaces(fitted):
    model, test, _, x, y = fitted
    r = causal_necessity(model, test, KEY, "feat", train_latents=x, train_labels=y, horizon=3, n_boot=200)
    assert r.rank == 1 and r.num_anchors == 30 * (14 - 3)
    # Reference: erasure sets the v component to its training mean (~0) instead of +-1 (+ noise 0.3):
    # per step the squared error on v grows from 2 * 0.09 to 1 + 0.09, averaged over D cells.
    assert r.rise.estimate == pytest.approx((1 + 0.09 - 0.18) / D, rel=0.15)
    assert r.null_rise.estimate < r.rise.estimate / 4
    assert r.difference.lower > 0 and r.difference.contains(r.rise.estimate - r.null_rise.estimate)
    assert r.relative_rise.estimate == pytest.approx(r.rise.estimate / r.loss_clean.estimate)
    assert [w.metric for w in r.rows("linear")] == ["causal_necessity", "causal_necessity_null"]


def test_prediction_loss_matches_hand_values():
    pred = torch.zeros(2, 1, 3)
    obs = torch.tensor([[[1.0, 0.0, 0.0]], [[2.0, 2.0, 2.0]]])
    torch.testing.assert_close(prediction_loss(pred, obs, "vector"), torch.tensor([1 / 3, 4.0]))
    logits = torch.zeros(1, 1, 2, 1, 1)  # two channels, equal logits: cross-entropy log 2
    onehot = torch.tensor([1, 0], dtype=torch.uint8).reshape(1, 1, 2, 1, 1)
    torch.testing.assert_close(prediction_loss(logits, onehot, "symbolic"), torch.tensor([np.log(2)], dtype=torch.float32))


def test_necessity_needs_a_decoder_or_says_why(fitted):
    _, test, _, x, y = fitted

    class NoDecoder(LinearModel):
        decode = DynamicsModel.decode

    r = causal_necessity(NoDecoder(), test, KEY, "feat", train_latents=x, train_labels=y)
    assert isinstance(r, NecessityResult) and "cannot decode" in r.skipped and r.rows("linear") == []
    with_decoder = causal_necessity(NoDecoder(), test, KEY, "feat", train_latents=x, train_labels=y, n_boot=50,
                                    decode=lambda s: s["feat"])
    assert not with_decoder.skipped and with_decoder.rise.estimate > 0
    with pytest.raises(ProbeError, match="train_latents"):
        causal_necessity(LinearModel(), test, KEY, "feat")


# ------------------------------------------------------------------------------------ editing a site
@pytest.fixture(scope="module")
def lavakeydoor(tmp_path_factory):
    """A tiny lavakeydoor dataset (half oracle, half random play) and untrained tiny RSSM and GRU models for it."""
    path = tmp_path_factory.mktemp("lkd") / "ds"
    with warnings.catch_warnings():  # rare-concept warnings are expected for so few episodes
        warnings.simplefilter("ignore", UserWarning)
        collect(worlds.make_world("lavakeydoor", num_envs=8, seed=0, max_steps=60), EpsilonOraclePolicy(epsilon=0.5),
                40, path, seed=0, progress=False)
    ds = TrajectoryDataset.open(path)
    eps = [ds.episode(int(i)) for i in ds.episode_ids("train")]
    specs = ObsSpec.from_manifest(ds.obs_spec), ActionSpec.from_manifest(ds.action_spec)
    torch.manual_seed(0)
    rssm = build_model("rssm", *specs, deter=16, stoch=4, classes=4, hidden=16, embed=16)
    gru = build_model("gru", *specs, deter=16, hidden=16, embed=16)
    yield eps, rssm, gru
    ds.close()


def test_edit_state_keeps_dependent_sites_consistent(lavakeydoor):
    eps, rssm, gru = lavakeydoor
    anchors = anchor_steps([len(e) for e in eps], 1, 0, stride=5)
    post = posterior_states(rssm, eps, anchors)
    delta = torch.randn(post["feat"].shape)
    edited = edit_state(rssm, post, "feat", delta)  # RSSM: feat = [deter, stoch], both parts move
    torch.testing.assert_close(edited["deter"], post["deter"] + delta[:, :16])
    torch.testing.assert_close(edited["stoch"], post["stoch"] + delta[:, 16:])
    torch.testing.assert_close(edited["feat"], torch.cat([edited["deter"], edited["stoch"]], -1))
    edited = edit_state(rssm, post, "deter", delta[:, :16])
    torch.testing.assert_close(edited["stoch"], post["stoch"])
    torch.testing.assert_close(edited["feat"], torch.cat([post["deter"] + delta[:, :16], post["stoch"]], -1))
    gpost = posterior_states(gru, eps, anchors)  # GRU: feat is deter
    edited = edit_state(gru, gpost, "feat", delta[:, :16])
    torch.testing.assert_close(edited["deter"], gpost["deter"] + delta[:, :16])
    torch.testing.assert_close(edited["feat"], edited["deter"])
    with pytest.raises(ProbeError, match="reads an observation"):
        edit_state(rssm, post, "embed", torch.zeros_like(post["embed"]))
    with pytest.raises(ProbeError, match="delta must have the site's shape"):
        edit_state(rssm, post, "deter", delta)


def test_key_door_scenario_matches_the_world_rules(lavakeydoor):
    """Anchors: no key, locked door next to the agent in the imagined move's direction. The world agrees with
    the check: real moves into a locked door are blocked without the key and put the agent on an open door with it."""
    from worlds.lavakeydoor.layout import DOOR_LOCKED, DOOR_OPEN
    from worlds.lavakeydoor.world import MOVES

    eps = lavakeydoor[0]
    sc, c = key_door_scenario(eps), 2
    assert len(sc.anchors) > 0 and sc.actions.shape == (len(sc.anchors), 1) and (sc.target == 1).all()
    for (e, t), a in zip(sc.anchors, sc.actions[:, 0]):
        assert eps[e].concepts["has_key"][t] == 0 and eps[e].obs[t, DOOR_LOCKED, c + MOVES[a, 0], c + MOVES[a, 1]] == 1
    real = [(ep.obs[t + 1], ep.concepts["has_key"][t]) for ep in eps for t in range(len(ep) - 1)
            if ep.actions[t + 1] and ep.obs[t, DOOR_LOCKED, c + MOVES[ep.actions[t + 1], 0], c + MOVES[ep.actions[t + 1], 1]]]
    assert {key for _, key in real} == {0, 1}
    for nxt, key in real:
        assert nxt[DOOR_OPEN, c, c] == key
    base = torch.from_numpy(eps[0].obs[:1].astype(np.float32))[:, None]  # [1 1 c h w]: step 0, the door is shut
    opened = base.clone()
    opened[0, 0, :, c, c] = 0
    opened[0, 0, DOOR_OPEN, c, c] = 1
    assert sc.check(opened, base).tolist() == [True] and sc.check(base, base).tolist() == [False]


def test_smoke_rssm_on_lavakeydoor(lavakeydoor):
    eps, rssm, _ = lavakeydoor
    d = rssm.sites["feat"][0]
    has_key = Concept("has_key", "binary", "The agent has picked up the key this episode.")
    probe = LinearProbe(has_key, Normalizer(torch.zeros(d), torch.ones(d)), {}, torch.randn(1, d), torch.zeros(1))
    r = causal_sufficiency(rssm, eps, probe, "feat", k=3, n_boot=50)
    assert r.skipped or (0 <= r.success.estimate <= 1 and 0 <= r.null.estimate <= 1)
    door = causal_sufficiency(rssm, eps, probe, "feat", scenario=key_door_scenario(eps), n_boot=50)
    assert door.criterion == "key_door" and not door.skipped and 0 <= door.success.estimate <= 1
    x = torch.cat([posterior_states(rssm, [e], anchor_steps([len(e)], 1, 0))["feat"] for e in eps])
    n = causal_necessity(rssm, eps, has_key, "feat", train_latents=x, train_labels=(x[:, 0] > x[:, 0].median()).long(),
                         horizon=2, null_draws=2, n_boot=50)
    assert n.rank == 1 and np.isfinite(n.rise.estimate) and n.loss_clean.estimate > 0
    assert {w.metric for w in n.rows("linear")} == {"causal_necessity", "causal_necessity_null"}
