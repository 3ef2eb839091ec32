"""dynamics.behaviour: the hidden-concept test scores the model's 1-step prediction from the posterior of the step
BEFORE each decisive action, with that action, against the concept at that step -- checked with fake models whose
answers are known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dynamics.base import ActionSpec, DynamicsModel, LatentState, LossOutput, ObsSpec
from dynamics.behaviour import evaluate_hidden_concept, hidden_concept_events
from worlds.hidden import HiddenConceptTest
from worlds.trajectory import Episode


class Fake(DynamicsModel):
    """Posterior ``feat[t]`` = (step index, the visible bit of obs[t]); ``imagine`` records what it was given and
    keeps the bit; ``decode`` gives the outcome channel logit +5 when the bit is set (``knows``) or 0.4 always."""

    def __init__(self, knows: bool):
        super().__init__()
        self.obs_spec, self.action_spec, self.knows, self.calls = ObsSpec((2, 1, 1), "symbolic"), ActionSpec(True, n=3), knows, []

    sites = property(lambda self: {"feat": (2,)})
    hparams = property(lambda self: {})

    def initial(self, b):
        return LatentState({"feat": torch.zeros(b, 2)})

    def observe(self, obs, actions, is_first, *, sample=False, start=None):
        t = torch.arange(obs.shape[1], dtype=torch.float32).expand(obs.shape[0], -1)
        return LatentState({"feat": torch.stack([t, obs[:, :, 1, 0, 0].float()], -1)})

    def imagine(self, state, actions, *, sample=False):
        self.calls.append((state["feat"][:, 0].clone(), actions[:, 0].clone()))
        return LatentState({"feat": state["feat"][:, None]})

    def decode(self, state):
        bit = state["feat"][..., 1]
        logit = (2 * bit - 1) * 5 if self.knows else torch.full_like(bit, 0.4)
        return torch.stack([torch.zeros_like(logit), logit], -1)[..., None, None]  # [m 1 2 1 1]

    def loss(self, obs, actions, is_first):
        return LossOutput(torch.zeros(()), {}, self.initial(1))


def _episode(rng, n=30) -> Episode:
    bit = rng.random(n) < 0.5
    obs = np.zeros((n, 2, 1, 1), np.uint8)
    obs[np.arange(n), bit.astype(int)] = 1
    # the next step shows the outcome (channel 1) exactly when the concept held the step before
    first = np.zeros(n, bool)
    first[0] = True
    return Episode(obs=obs, actions=rng.integers(0, 3, n), is_first=first, is_terminal=np.zeros(n, bool),
                   reward=np.zeros(n, np.float32), success=np.zeros(n, bool), violation=np.zeros(n, bool),
                   concepts={"c": bit})


TEST = HiddenConceptTest("flip", "c", "a synthetic outcome", steps=lambda e: np.arange(0, len(e), 3),
                         happened=lambda obs: obs[:, 1, 0, 0].astype(bool), outcome=lambda p: p[:, 1, 0, 0])


def test_events_use_the_posterior_before_the_step_and_the_steps_action():
    rng = np.random.default_rng(0)
    eps = [_episode(rng) for _ in range(3)]
    model = Fake(knows=True)
    ev = hidden_concept_events(model, eps, TEST)
    steps = np.arange(3, 30, 3)  # step 0 has no step before it: dropped
    assert len(ev["p"]) == 3 * len(steps) and (np.bincount(ev["episode"]) == len(steps)).all()
    for e, (fed_t, fed_a) in zip(eps, model.calls):
        assert fed_t.tolist() == (steps - 1).tolist()  # the posterior of step t - 1 ...
        assert fed_a.tolist() == np.asarray(e.actions)[steps].tolist()  # ... and the action that leads into t
    concept = np.concatenate([e.concepts["c"][steps - 1] for e in eps])
    assert (ev["concept"] == concept).all()
    assert np.allclose(ev["p"], np.where(concept, torch.sigmoid(torch.tensor(5.0)).item(), torch.sigmoid(torch.tensor(-5.0)).item()))


@pytest.mark.parametrize("knows", [True, False])
def test_a_model_that_uses_the_concept_scores_1_and_0_a_blind_one_does_not(knows):
    rng = np.random.default_rng(1)
    eps = [_episode(rng) for _ in range(12)]
    out = evaluate_hidden_concept(Fake(knows), eps, TEST, n_boot=200)
    assert out["events"] == out["events_true"] + out["events_false"] == 12 * 9
    # happened at t is obs[t]'s bit, the concept is the bit at t - 1: they agree only by chance here
    assert 0.2 < out["truth_agreement"]["estimate"] < 0.8
    if knows:
        assert out["rate_when_true"]["estimate"] == 1.0 and out["rate_when_false"]["estimate"] == 0.0
        assert out["auroc"]["estimate"] == 1.0
    else:  # p = sigmoid(0.4) everywhere: predicted in both cases, no separation
        assert out["rate_when_true"]["estimate"] == out["rate_when_false"]["estimate"] == 1.0
        assert out["auroc"]["estimate"] == 0.5
    for k in ("rate_when_true", "rate_when_false", "auroc"):
        e = out[k]
        assert e["ci_low"] <= e["estimate"] <= e["ci_high"]


def test_no_event_is_a_skip_not_an_error():
    rng = np.random.default_rng(2)
    none = HiddenConceptTest("never", "c", "nothing", steps=lambda e: np.zeros(0, np.int64),
                             happened=TEST.happened, outcome=TEST.outcome)
    out = evaluate_hidden_concept(Fake(True), [_episode(rng)], none)
    assert out["events"] == 0 and "skipped" in out
