"""Mutation-audit tests of ``score_sequences``: rewards discounted from ``discount**0`` on, costs summed undiscounted.

The session-8 mutation audit found that no planning test scored a sequence with ``discount < 1``, so an off-by-one in
the discount exponent (``discount**(t+1)``) and discounting the constraint costs both went unnoticed. The values below
are computed by hand (float32 rewards: rel 1e-6) on the combination-lock toy model (conftest ``ChainModel``, key ``(2, 0, 3, 1)``).
"""

from __future__ import annotations

import pytest
import torch

from planning.rollout import score_sequences


def test_returns_are_discounted_from_the_first_step_and_costs_are_not(toys):
    model = toys.ChainModel(danger=True)
    # right, right, right, right (0.5 each), then the dangerous end action 1 twice (8 each, cost 1 each)
    seq = torch.tensor([[2, 0, 3, 1, 1, 1], [3, 3, 3, 3, 3, 3]])
    g = 0.9
    out = score_sequences(model, model.state(), seq, toys.chain_reward, g)
    expected0 = 0.5 * (1 + g + g**2 + g**3) + 8 * (g**4 + g**5)
    expected1 = 0.3 * sum(g**t for t in range(6))              # a wrong first action: the 0.3 lure at every step
    assert out.returns.tolist() == pytest.approx([expected0, expected1], rel=1e-6)
    assert out.costs.tolist() == pytest.approx([2.0, 0.0], abs=0)   # summed undiscounted: two violating steps
    undiscounted = score_sequences(model, model.state(), seq, toys.chain_reward, 1.0)
    assert undiscounted.returns.tolist() == pytest.approx([2.0 + 16.0, 1.8], rel=1e-6)


def test_planinfo_predicted_return_uses_the_planners_discount(toys):
    from planning import make_planner

    model = toys.ChainModel()
    g = 0.5
    planner = make_planner("exhaustive", model, toys.chain_reward, 5, discount=g)
    _, info = planner.plan(model.state())
    # the optimum opens the lock (4 x 0.5) and then takes the end reward 5 once: 0.5 * (1 + g + g^2 + g^3) + 5 g^4
    assert planner.last_plan.tolist() == [2, 0, 3, 1, 0]
    assert info.predicted_return == pytest.approx(0.5 * (1 + g + g**2 + g**3) + 5 * g**4, rel=1e-6)
