"""Type checking against a concept schema, and RewardSpec construction/validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rewards.ast import ConceptUse
from rewards.check import check_constraint, check_expression
from rewards.errors import RewardError
from rewards.parser import parse_constraint, parse_expression
from rewards.spec import RewardSpec
from worlds.concepts import Concept, ConceptSchema
from worlds.errors import OntolabError

SCHEMA = ConceptSchema((
    Concept("in_lava", "binary", "In lava."),
    Concept("at_goal", "binary", "At the goal."),
    Concept("steps_to_goal", "scalar", "Steps to the goal.", unit="cells", low=0, high=50),
    Concept("dist_to_hazard", "scalar", "Distance to a hazard.", unit="m", low=0, high=3),
    Concept("room", "categorical", "Room of the agent.", classes=("left", "right", "hall")),
    Concept("door", "categorical", "Room the door leads to.", classes=("left", "right", "hall")),
    Concept("mode", "categorical", "Controller mode.", classes=("walk", "run")),
))


def typ(text: str) -> str:
    return check_expression(parse_expression(text), SCHEMA, text)


@pytest.mark.parametrize("text, expected", [
    ("at_goal - 10 * in_lava - 0.01", "num"), ("-0.1 * steps_to_goal", "num"), ("in_lava", "bool"),
    ("p(in_lava)", "prob"), ('p(room == "hall")', "prob"), ("room == 'left'", "bool"), ("'left' != room", "bool"),
    ("room == door", "bool"), ("not in_lava and at_goal", "bool"), ("p(in_lava) > 0.5 or at_goal", "bool"),
    ("min(in_lava, at_goal)", "bool"), ("max(in_lava, p(at_goal))", "prob"), ("min(in_lava, 2)", "num"),
    ("abs(in_lava)", "bool"), ("clip(p(in_lava), 0, 1)", "num"), ("in_lava < at_goal", "bool"),
    ("(room == 'left') + 1", "num"),
])
def test_types(text, expected):
    assert typ(text) == expected


@pytest.mark.parametrize("text, column, needle", [
    ("at_goal - lava", 10, "unknown concept 'lava'"),
    ("p(steps_to_goal)", 0, "p() needs a binary or categorical concept, got scalar concept 'steps_to_goal'"),
    ("not steps_to_goal", 4, "'not' needs a binary condition, got scalar concept 'steps_to_goal'"),
    ("in_lava and p(at_goal)", 12, "'and' needs a binary condition, got a probability"),
    ("at_goal or 1", 11, "'or' needs a binary condition, got a number"),
    ("room + 1", 0, "'+' needs a number, got categorical concept 'room'"),
    ("-room", 1, "unary '-' needs a number"),
    ("2 * min(1, room)", 11, "min() needs a number, got categorical concept 'room'"),
    ("room == 'kitchen'", 8, "categorical concept 'room' has no class 'kitchen'"),
    ("room < 'left'", 0, "'<' needs numbers, got categorical concept 'room'"),
    ("room == 1", 0, "cannot compare categorical concept 'room' with a number"),
    ("in_lava == 'left'", 11, "cannot compare binary concept 'in_lava' with class name 'left'"),
    ("'left' == 'left'", 0, "cannot compare class name"),
    ("room == mode", 5, "different classes"),
    ("'left'", 0, "a reward needs a number, got class name 'left'"),
    ("room", 0, "a reward needs a number, got categorical concept 'room'"),
    ("p(room)", 0, "needs a class"),
    ("p(room == 'attic')", 0, "has no class 'attic'"),
    ("p(in_lava == 'left')", 0, "binary concept 'in_lava' has no classes"),
    ("p(nope)", 0, "unknown concept 'nope'"),
    ("1 + left", 4, 'class names are quoted and compared to their concept: room == "left"'),
])
def test_type_errors_name_the_column(text, column, needle):
    with pytest.raises(RewardError) as info:
        typ(text)
    assert info.value.position == column and f"at column {column}" in str(info.value)
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_concept_lists_the_world_concepts():
    with pytest.raises(RewardError, match="this world's concepts are: in_lava, at_goal, steps_to_goal, "
                                          "dist_to_hazard, room, door, mode"):
        typ("in_lavaa")


@pytest.mark.parametrize("text, expected", [
    ("never in_lava", "bool"), ("always not in_lava", "bool"), ("always dist_to_hazard > 0.1", "bool"),
    ("p(in_lava) < 0.05", "bool"), ("never p(in_lava)", "prob"), ("always p(room == 'hall')", "prob"),
    ("room != 'left'", "bool"),
])
def test_constraint_types(text, expected):
    assert check_constraint(parse_constraint(text), SCHEMA, text) == expected


@pytest.mark.parametrize("text, column, needle", [
    ("never steps_to_goal", 6, "'never' needs a condition or a probability, got scalar concept"),
    ("always 1 - p(in_lava)", 9, "'always' needs a condition or a probability, got a number"),
    ("p(in_lava)", 0, "a constraint must be a condition, got a probability"),
    ("dist_to_hazard", 0, "a constraint must be a condition"),
    ("never room", 6, "'never' needs a number, got categorical concept 'room'"),
])
def test_constraint_type_errors(text, column, needle):
    with pytest.raises(RewardError) as info:
        check_constraint(parse_constraint(text), SCHEMA, text)
    assert info.value.position == column and needle in str(info.value)


def test_spec_check_locates_the_expression():
    spec = RewardSpec("at_goal", ("never in_lava", "always p(steps_to_goal) > 0"), name="safe")
    with pytest.raises(RewardError, match=r"^safe constraint 2: p\(\) needs a binary") as info:
        spec.check(SCHEMA)
    assert info.value.position == 7
    with pytest.raises(RewardError, match=r"^reward: unexpected '\)'"):
        RewardSpec("at_goal)")
    with pytest.raises(RewardError, match=r"^constraint 1: .*keyword 'never'"):
        RewardSpec("1", ("always never in_lava",))


def test_reward_error_is_an_ontolab_value_error():
    assert issubclass(RewardError, OntolabError) and issubclass(RewardError, ValueError)


def test_spec_concepts_lists_uses_with_modes():
    spec = RewardSpec("at_goal - 10 * in_lava",
                      ("p(in_lava) < 0.05", "never room == 'hall'", "never p(room == 'left')"))
    assert spec.concepts() == {ConceptUse("at_goal", "value"), ConceptUse("in_lava", "value"),
                               ConceptUse("in_lava", "prob"), ConceptUse("room", "value"), ConceptUse("room", "prob")}
    assert RewardSpec("-0.01").concepts() == frozenset()


def test_spec_from_dict_round_trip_and_validation():
    d = {"reward": "at_goal - 0.01", "constraints": ["never in_lava"], "name": "base"}
    spec = RewardSpec.from_dict(d)
    assert spec == RewardSpec("at_goal - 0.01", ("never in_lava",), "base")
    assert RewardSpec.from_dict(spec.to_dict()) == spec
    assert RewardSpec.from_dict({"reward": "1", "constraints": None}).constraints == ()
    assert RewardSpec("a", ["never b"]).constraints == ("never b",)  # a list is accepted and frozen
    assert RewardSpec("(a)-(b - c)").canonical().reward == "a - (b - c)"
    for bad, needle in [
        ({"reward": "1", "constraint": []}, "unknown key(s) ['constraint'] in reward spec; allowed keys: constraints"),
        ({"constraints": []}, "lacks the key 'reward'"),
        ({"reward": "1", "constraints": "never a"}, "constraints must be a list of strings, got str"),
        ({"reward": "1", "constraints": [1]}, "constraints must be a list of strings"),
        ({"reward": 1}, "reward must be a string expression, got int"),
        ({"reward": "1", "constraints": ["never a", "never a"]}, "constraints must be distinct"),
        (["reward"], "must be a mapping"),
    ]:
        with pytest.raises(RewardError) as info:
            RewardSpec.from_dict(bad)  # type: ignore[arg-type]
        assert needle in str(info.value)


@pytest.mark.parametrize("bad, got", [(None, "got NoneType"), (5, "got int"), ({"never in_lava": 1}, "got dict"),
                                      (["never in_lava", 2], "got ['never in_lava', 2]")])
def test_spec_refuses_constraints_that_are_not_a_list_of_strings(bad, got):
    with pytest.raises(RewardError) as info:
        RewardSpec("at_goal", constraints=bad)
    msg = str(info.value)
    assert msg.startswith("constraints must be a list of strings, ") and got in msg and "\n" not in msg
    assert 'e.g. constraints=("never in_lava",)' in msg
    assert RewardSpec("at_goal", constraints=(c for c in ["never in_lava"])).constraints == ("never in_lava",)


def test_true_reward_of_a_constant_spec_takes_the_batch_shape_of_the_values():
    values = {"in_lava": np.array([0, 1, 0]), "at_goal": np.array([0, 0, 1])}
    out = RewardSpec("-0.01").true_reward(SCHEMA, values)
    assert out.reward.shape == (3,) and out.reward.dtype == torch.float64
    assert out.reward.tolist() == [-0.01] * 3 and out.cost.tolist() == [0.0] * 3
    with_constraint = RewardSpec("-0.01", constraints=("never in_lava",)).true_reward(SCHEMA, values)
    assert with_constraint.reward.tolist() == [-0.01] * 3 and with_constraint.cost.tolist() == [0.0, 1.0, 0.0]
    with pytest.raises(RewardError, match="reads no concept needs at least one true concept value"):
        RewardSpec("-0.01").true_reward(SCHEMA, {})
