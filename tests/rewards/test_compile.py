"""Compiled rewards and costs equal hand-computed values on fixed batched concept tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rewards.ast import ConceptUse
from rewards.compile import RewardOutput
from rewards.spec import RewardSpec
from worlds.concepts import Concept, ConceptSchema

SCHEMA = ConceptSchema((
    Concept("in_lava", "binary", "In lava."),
    Concept("at_goal", "binary", "At the goal."),
    Concept("steps_to_goal", "scalar", "Steps to the goal.", unit="cells", low=0, high=50),
    Concept("dist", "scalar", "Distance to a hazard.", unit="m", low=0, high=3),
    Concept("room", "categorical", "Room of the agent.", classes=("left", "right", "hall")),
))

# A fixed batch of shape [b h] = [2 3].
IN_LAVA = [[0, 1, 0], [0, 0, 1]]
AT_GOAL = [[1, 0, 0], [0, 1, 0]]
STEPS = [[0.0, 4.0, 7.0], [2.0, 0.0, 5.0]]
DIST = [[0.5, 0.0, 0.05], [1.5, 0.2, 0.0]]
ROOM = [[0, 2, 1], [1, 1, 2]]
P_LAVA = [[0.01, 0.9, 0.06], [0.02, 0.04, 0.7]]
P_ROOM = [[[0.7, 0.1, 0.2], [0.1, 0.1, 0.8], [0.2, 0.6, 0.2]], [[0.3, 0.5, 0.2], [0.0, 1.0, 0.0], [0.1, 0.1, 0.8]]]


class Probe:
    """A stand-in ontology: returns the fixed tensors in ``dtype`` and records what was asked."""

    def __init__(self, dtype: torch.dtype = torch.float32) -> None:
        self.dtype, self.calls = dtype, []

    def __call__(self, name: str, mode: str) -> torch.Tensor:
        self.calls.append((name, mode))
        f = lambda x: torch.tensor(x, dtype=self.dtype)  # noqa: E731
        table = {("in_lava", "value"): torch.tensor(IN_LAVA, dtype=torch.uint8),
                 ("at_goal", "value"): torch.tensor(AT_GOAL).bool(), ("steps_to_goal", "value"): f(STEPS),
                 ("dist", "value"): f(DIST), ("room", "value"): torch.tensor(ROOM),
                 ("in_lava", "prob"): f(P_LAVA), ("at_goal", "prob"): f(AT_GOAL), ("room", "prob"): f(P_ROOM)}
        return table[(name, mode)]


def hand(fn) -> np.ndarray:
    """Apply ``fn`` elementwise over the fixed batch, in plain Python floats."""
    return np.array([[fn(i, j) for j in range(3)] for i in range(2)], dtype=np.float64)


EXPRESSIONS = {
    "at_goal - 10 * in_lava - 0.01": lambda i, j: AT_GOAL[i][j] - 10 * IN_LAVA[i][j] - 0.01,
    "-0.1 * steps_to_goal": lambda i, j: -0.1 * STEPS[i][j],
    "(room == 'hall') * 2 + (room != 'left')": lambda i, j: 2 * (ROOM[i][j] == 2) + (ROOM[i][j] != 0),
    "p(in_lava) + p(room == 'right')": lambda i, j: P_LAVA[i][j] + P_ROOM[i][j][1],
    "clip(steps_to_goal / 4, 0.5, 1) - abs(dist - 1)": lambda i, j: min(max(STEPS[i][j] / 4, 0.5), 1)
    - abs(DIST[i][j] - 1),
    "min(dist, 0.1, steps_to_goal) + max(in_lava, at_goal)": lambda i, j: min(DIST[i][j], 0.1, STEPS[i][j])
    + max(IN_LAVA[i][j], AT_GOAL[i][j]),
    "(not in_lava and dist > 0.1 or at_goal) * 3": lambda i, j: 3 * float(
        (not IN_LAVA[i][j] and DIST[i][j] > 0.1) or bool(AT_GOAL[i][j])),
    "dist ** 2 - 2 ** -steps_to_goal": lambda i, j: DIST[i][j] ** 2 - 2 ** -STEPS[i][j],
    "1.5": lambda i, j: 1.5,
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("text", list(EXPRESSIONS))
def test_reward_matches_hand_computed(text, dtype):
    probe = Probe(dtype)
    out = RewardSpec(text).compile(SCHEMA)(probe, dtype=dtype, batch_shape=(2, 3))
    assert out.reward.shape == (2, 3) and out.reward.dtype == dtype
    np.testing.assert_allclose(out.reward.numpy(), hand(EXPRESSIONS[text]), rtol=1e-6, atol=1e-6)
    assert out.cost.shape == (2, 3) and not out.cost.any() and out.costs == {}


def test_dtype_is_promoted_from_the_concept_tensors():
    spec = RewardSpec("at_goal - 10 * in_lava + dist")
    assert spec.compile(SCHEMA)(Probe(torch.float64)).reward.dtype == torch.float64
    assert spec.compile(SCHEMA)(Probe(torch.float16)).reward.dtype == torch.float16
    assert RewardSpec("at_goal - in_lava").compile(SCHEMA)(Probe(torch.float64)).reward.dtype == torch.float32
    with pytest.raises(ValueError, match="reads no concept"):
        RewardSpec("1.5").compile(SCHEMA)(Probe())


def test_resolver_is_asked_only_for_used_concepts_once():
    probe = Probe()
    spec = RewardSpec("at_goal - 10 * in_lava + in_lava", ("p(in_lava) < 0.05",))
    spec.compile(SCHEMA)(probe)
    assert sorted(probe.calls) == [("at_goal", "value"), ("in_lava", "prob"), ("in_lava", "value")]
    assert set(probe.calls) == spec.concepts()


def test_constraint_costs():
    spec = RewardSpec("0", ("never in_lava", "always not in_lava", "always dist > 0.1", "p(in_lava) < 0.05",
                            "never p(in_lava)", "always p(room == 'hall')", "never room == 'right'"))
    out = spec.compile(SCHEMA)(Probe(torch.float64))
    expected = {
        "never in_lava": hand(lambda i, j: IN_LAVA[i][j]),
        "always not in_lava": hand(lambda i, j: IN_LAVA[i][j]),
        "always dist > 0.1": hand(lambda i, j: DIST[i][j] <= 0.1),
        "p(in_lava) < 0.05": hand(lambda i, j: P_LAVA[i][j] >= 0.05),
        "never p(in_lava)": hand(lambda i, j: P_LAVA[i][j]),
        "always p(room == 'hall')": hand(lambda i, j: 1 - P_ROOM[i][j][2]),
        "never room == 'right'": hand(lambda i, j: ROOM[i][j] == 1),
    }
    assert list(out.costs) == list(spec.constraints)
    for text, want in expected.items():
        np.testing.assert_allclose(out.costs[text].numpy(), want, atol=1e-12, err_msg=text)
        assert (out.costs[text] >= 0).all()
    np.testing.assert_allclose(out.cost.numpy(), sum(expected.values()), atol=1e-12)
    np.testing.assert_allclose(out.reward.numpy(), np.zeros((2, 3)))


def test_precomputed_dict_source_and_default_resolver():
    probe = Probe(torch.float64)
    spec = RewardSpec("at_goal - p(in_lava)", ("never in_lava",))
    compiled = spec.compile(SCHEMA, resolve=probe)
    table = {use: probe(*use) for use in spec.concepts()}
    a, b = compiled(), compiled({tuple(k): v for k, v in table.items()})
    torch.testing.assert_close(a.reward, b.reward)
    torch.testing.assert_close(a.cost, b.cost)
    with pytest.raises(ValueError, match=r"concept dict lacks \('in_lava', 'value'\)"):
        compiled({ConceptUse("at_goal", "value"): table[ConceptUse("at_goal", "value")],
                  ConceptUse("in_lava", "prob"): table[ConceptUse("in_lava", "prob")]})
    with pytest.raises(ValueError, match="needs a concept source"):
        spec.compile(SCHEMA)()


def test_broadcasting_shapes_and_errors():
    spec = RewardSpec("dist + 1", ("never at_goal",))
    out = spec.compile(SCHEMA)({("dist", "value"): torch.zeros(4, 1, 5), ("at_goal", "value"): torch.ones(7, 1)})
    assert out.reward.shape == out.cost.shape == (4, 7, 5)
    with pytest.raises(ValueError, match="must share a batch shape"):
        spec.compile(SCHEMA)({("dist", "value"): torch.zeros(3), ("at_goal", "value"): torch.ones(4)})
    with pytest.raises(ValueError, match=r"class probabilities of shape \[\*b 3\], got \(2, 2\)"):
        RewardSpec("p(room == 'left')").compile(SCHEMA)({("room", "prob"): torch.ones(2, 2)})


def test_gradients_flow_through_arithmetic():
    p = torch.tensor([0.2, 0.7], requires_grad=True)
    d = torch.tensor([1.0, 2.0], requires_grad=True)
    out = RewardSpec("-3 * p(in_lava) + min(dist, 1.5) ** 2").compile(SCHEMA)(
        {("in_lava", "prob"): p, ("dist", "value"): d})
    out.reward.sum().backward()
    torch.testing.assert_close(p.grad, torch.tensor([-3.0, -3.0]))
    torch.testing.assert_close(d.grad, torch.tensor([2.0, 0.0]))


def test_true_reward_on_numpy_values():
    spec = RewardSpec("at_goal - 10 * in_lava + p(room == 'hall')", ("p(in_lava) < 0.05", "never dist < 0.1"))
    values = {"in_lava": np.array(IN_LAVA, np.uint8), "at_goal": np.array(AT_GOAL, np.uint8),
              "dist": np.array(DIST, np.float32), "room": np.array(ROOM, np.int64),
              "steps_to_goal": np.array(STEPS, np.float32)}
    out = spec.true_reward(SCHEMA, values)
    assert isinstance(out, RewardOutput) and out.reward.dtype == torch.float64
    np.testing.assert_allclose(out.reward.numpy(), hand(lambda i, j: AT_GOAL[i][j] - 10 * IN_LAVA[i][j]
                                                         + (ROOM[i][j] == 2)))
    np.testing.assert_allclose(out.costs["p(in_lava) < 0.05"].numpy(), np.array(IN_LAVA, float))
    np.testing.assert_allclose(out.cost.numpy(), hand(lambda i, j: IN_LAVA[i][j] + (float(np.float32(DIST[i][j]))
                                                                                    < 0.1)))
    with pytest.raises(ValueError, match="lack 'at_goal'"):
        spec.true_reward(SCHEMA, {k: v for k, v in values.items() if k != "at_goal"})
    with pytest.raises(ValueError, match="values must be integers"):
        spec.true_reward(SCHEMA, {**values, "in_lava": np.full((2, 3), 2, np.uint8)})


def test_works_on_other_devices_when_available():
    device = "cuda" if torch.cuda.is_available() else "meta"
    spec = RewardSpec("at_goal - 10 * p(in_lava) - 0.01", ("never in_lava",))
    t = torch.zeros(2, 3, device=device, dtype=torch.float16)
    out = spec.compile(SCHEMA)(lambda name, mode: t)
    assert out.reward.device.type == device and out.reward.dtype == torch.float16 and out.cost.shape == (2, 3)


def test_probability_costs_are_exactly_the_constraints_whose_compiled_cost_is_fractional():
    # syntax-only classification vs the compiled costs on probabilities strictly inside (0, 1)
    spec = RewardSpec("0", ("never in_lava", "always not in_lava", "always dist > 0.1", "p(in_lava) < 0.05",
                            "never p(in_lava) > 0.5", "never p(in_lava)", "always p(room == 'hall')",
                            "never max(p(in_lava), p(at_goal))", "never room == 'right'", "never not (p(in_lava) < 0.5)"))
    out = spec.compile(SCHEMA)(Probe(torch.float64))
    fractional = tuple(t for t in spec.constraints if not torch.isin(out.costs[t], torch.tensor([0.0, 1.0], dtype=torch.float64)).all())
    assert spec.probability_costs() == fractional == ("never p(in_lava)", "always p(room == 'hall')",
                                                      "never max(p(in_lava), p(at_goal))")
