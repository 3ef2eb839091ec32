"""ConceptSchema: validation of definitions and values, and a lossless dict round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest

from worlds.concepts import Concept, ConceptSchema

SCHEMA = ConceptSchema((
    Concept("has_key", "binary", "the agent carries the key"),
    Concept("room", "categorical", "which room the agent is in", classes=("left", "right", "hall")),
    Concept("steps_to_goal", "scalar", "shortest path length to the goal", unit="cells", low=0, high=162),
))


def test_round_trip_through_json():
    again = ConceptSchema.from_dict(json.loads(json.dumps(SCHEMA.to_dict())))
    assert again == SCHEMA
    assert again.names == ("has_key", "room", "steps_to_goal")


def test_lookup_and_kinds():
    assert SCHEMA["room"].num_classes == 3 and SCHEMA["has_key"].num_classes == 2
    assert SCHEMA["steps_to_goal"].dtype == np.float32 and SCHEMA["has_key"].dtype == np.uint8
    assert "room" in SCHEMA and "nope" not in SCHEMA
    with pytest.raises(KeyError, match="this world's concepts are: has_key, room, steps_to_goal"):
        SCHEMA["nope"]


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        (dict(name="has key", kind="binary", description="x"), "identifier"),
        (dict(name="a", kind="bool", description="x"), "kind must be one of"),
        (dict(name="a", kind="binary", description=""), "one non-empty line"),
        (dict(name="a", kind="binary", description="two\nlines"), "one non-empty line"),
        (dict(name="a", kind="categorical", description="x", classes=("only",)), ">= 2 classes"),
        (dict(name="a", kind="binary", description="x", classes=("p", "q")), "only categorical"),
        (dict(name="a", kind="scalar", description="x"), "finite range"),
        (dict(name="a", kind="scalar", description="x", low=2, high=1), "low 2.0 > high 1.0"),
    ],
)
def test_bad_definitions_are_refused(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        Concept(**kwargs)


def test_duplicate_names_are_refused():
    c = Concept("a", "binary", "x")
    with pytest.raises(ValueError, match=r"repeated: \['a'\]"):
        ConceptSchema((c, c))


def test_value_checks():
    good = {"has_key": np.array([0, 1]), "room": np.array([2, 0]), "steps_to_goal": np.array([3.0, 0.0])}
    SCHEMA.check(good)
    with pytest.raises(ValueError, match="missing \\['room'\\]"):
        SCHEMA.check({k: v for k, v in good.items() if k != "room"})
    with pytest.raises(ValueError, match="integers in \\[0, 2\\)"):
        SCHEMA.check({**good, "has_key": np.array([0, 2])})
    with pytest.raises(ValueError, match="integers in \\[0, 3\\)"):
        SCHEMA.check({**good, "room": np.array([0.5, 1])})
    with pytest.raises(ValueError, match="lie in \\[0.0, 162.0\\]"):
        SCHEMA.check({**good, "steps_to_goal": np.array([-1.0, 0.0])})
    with pytest.raises(ValueError, match="finite"):
        SCHEMA.check({**good, "steps_to_goal": np.array([np.nan, 0.0])})
    with pytest.raises(ValueError, match="share one shape"):
        SCHEMA.check({**good, "room": np.array([0, 1, 2])})
