"""The shield excludes first actions whose imagined rollouts violate a constraint, even the most rewarding."""

from __future__ import annotations

import math

import pytest
import torch

from dynamics.base import ActionSpec, LatentState
from planning import Shield, make_planner
from rewards import RewardOutput


def test_shield_vetoes_the_violating_best_action(toys):
    model = toys.ChainModel(danger=True)                # at the chain's end action 1 pays 8 but violates
    planner = make_planner("exhaustive", model, toys.chain_reward, 3, cost_limit=math.inf)
    shield = Shield(planner, threshold=0.0)
    for s in range(5):                                  # from every state, including the end
        unshielded, _ = planner.plan(model.state(s))
        action, info = shield.plan(model.state(s))
        assert int(action) != 1 or s < 4
        if s == 4:
            assert int(unshielded) == 1 and info.vetoed and int(action) == 0   # safest, then best return
            assert shield.last_risk.tolist() == [0.0, 1.0, 0.0, 0.0]
            assert int(planner.last_plan[0]) == 0       # the warm start follows the executed action
        else:
            assert not info.vetoed and int(action) == int(unshielded)


def test_shield_keeps_a_safe_proposal_and_checks_continuations(toys):
    model = toys.ChainModel(danger=True)
    planner = make_planner("exhaustive", model, toys.chain_reward, 3)          # feasible-first: never proposes 1
    shield = Shield(planner, threshold=0.0)
    action, info = shield.plan(model.state(3))          # one step from the end: every first action can stay safe
    assert int(action) == 1 and not info.vetoed        # 1 is the key's last digit here, not the dangerous move
    assert torch.all(shield.last_risk == 0)


@pytest.mark.parametrize("threshold,vetoed", [(0.1, True), (0.6, False)])
def test_shield_uses_the_violation_probability_of_a_stochastic_model(toys, threshold, vetoed):
    torch.manual_seed(0)                                # the toy model samples with the global generator
    model = toys.ChainModel(key=(2, 2, 2, 2), risk=0.3)   # action 2 is right but violates w.p. 0.3 when sampled
    planner = make_planner("exhaustive", model, toys.chain_reward, 2)          # the mode never violates
    proposal, _ = planner.plan(model.state())
    assert int(proposal) == 2
    shield = Shield(planner, threshold=threshold, model_samples=200, continuations=4)
    action, info = shield.plan(model.state())
    assert info.vetoed == vetoed and (int(action) != 2) == vetoed
    assert 0.2 < float(shield.last_risk[2]) < 0.4


def test_shield_on_continuous_actions(toys):
    """x' = x + u; reward x, cost 1 once x > 1: from x = 0.5 the greedy move u = 1 violates."""

    class Step(toys.LinearModel):
        def __init__(self):
            super().__init__([[1.0]], [[1.0]])

    def reward(states: LatentState, actions: torch.Tensor) -> RewardOutput:
        x = states.feat[..., 0]
        return RewardOutput(x, (x > 1.0).to(x), {})

    model = Step()
    assert model.action_spec == ActionSpec(discrete=False, dim=1)
    planner = make_planner("cem", model, reward, 1, cost_limit=math.inf, num_samples=64, num_elites=8, seed=0)
    shield = Shield(planner, threshold=0.0, candidates=32)
    state = LatentState({"feat": torch.tensor([[0.5]], dtype=torch.float64)})
    proposal, _ = planner.plan(state)
    assert float(proposal) > 0.5
    action, info = shield.plan(state)
    assert info.vetoed and 0.0 <= float(action) <= 0.5      # the best candidate that keeps x <= 1
    assert float(action) > 0.3                                # (32 uniform candidates: one lands close to 0.5)


def test_shield_risk_is_not_biased_low_by_choosing_among_many_noisy_tails(toys):
    """Action 2 violates w.p. 0.3 whatever follows. With 32 tails x 4 samples, the minimum over tails of
    the per-tail estimates is ~0 (some tail's 4 draws are all safe); the re-estimate on fresh draws is not."""
    torch.manual_seed(0)
    model = toys.ChainModel(key=(2, 2, 2, 2), risk=0.3)
    planner = make_planner("exhaustive", model, toys.chain_reward, 2)
    shield = Shield(planner, threshold=0.1, model_samples=4, continuations=32)
    risks = []
    for _ in range(30):
        shield.plan(model.state())
        risks.append(float(shield.last_risk[2]))
    naive = []
    for _ in range(30):    # the biased estimator this replaces: min over tails of the per-tail rates
        first = torch.tensor([2])
        tails = shield._tails(model.state(), 32)
        seqs = torch.cat([first.expand(32, 1), tails], 1).repeat_interleave(4, 0)
        from planning.rollout import score_sequences
        sc = score_sequences(model, model.state(), seqs, toys.chain_reward, 1.0, sample=True)
        naive.append(float((sc.costs > 0).float().view(32, 4).mean(1).min()))
    assert sum(naive) / len(naive) < 0.05
    assert 0.2 < sum(risks) / len(risks) < 0.4
