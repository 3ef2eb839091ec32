"""Bad input is a one-line VerifyError raised before Storm builds or checks anything.

(Storm itself does not validate: rows summing to 0.9 or 1 + 1e-7, negative entries and empty rows
all came back as probability 1.0 when measured.)
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import planning.verify.storm as storm
from planning.verify.model import ExplicitModel
from planning.verify.validate import VerifyError, property_labels
from worlds.errors import OntolabError

GOOD = np.array([[0.0, 0.5, 0.5, 0.0],
                 [0.0, 1.0, 0.0, 0.0],
                 [0.5, 0.0, 0.0, 0.5],
                 [0.0, 0.0, 0.0, 1.0]])
LABELS = {"goal": np.array([False, True, False, False]), "lava": np.array([False, False, False, True])}


@pytest.fixture(autouse=True)
def storm_must_not_run(monkeypatch):
    """Any call into Storm's builder or checker fails the test (flip ``allow`` to permit it)."""
    state = {"allow": False}

    def guard(real):
        def wrapped(*args, **kwargs):
            assert state["allow"], "Storm was called before the input was rejected"
            return real(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(storm, "storm_matrix", guard(storm.storm_matrix))
    monkeypatch.setattr(storm, "run_check", guard(storm.run_check))
    return state


def _dtmc(matrix, labels=LABELS, initial=None) -> ExplicitModel:
    return ExplicitModel.dtmc(sp.csr_array(np.asarray(matrix, dtype=np.float64)), labels, initial)


def _rejects(model, match: str, prop: str = 'P=? [F "lava"]') -> str:
    with pytest.raises(VerifyError, match=match) as info:
        storm.check(model, prop)
    msg = str(info.value)
    assert "\n" not in msg and isinstance(info.value, OntolabError)
    return msg


def test_good_model_passes(storm_must_not_run):
    storm_must_not_run["allow"] = True
    assert storm.check(_dtmc(GOOD), 'P=? [F "lava"]').probability == pytest.approx(1 / 3, abs=1e-8)


def test_unknown_label():
    msg = _rejects(_dtmc(GOOD), "unknown label", 'P=? [F<=5 "cliff"]')
    assert "cliff" in msg and "lava" in msg


@pytest.mark.parametrize("prop", ['P=? [F<= "lava"]', 'P=? [F "lava" &]', 'P=? [F lava]', 'P=? [F "lava"',
                                  'R=? [F "lava"]', 'F "lava"', ""])
def test_bad_syntax(prop):
    _rejects(_dtmc(GOOD), "propert", prop)


def test_two_properties_in_one_text():
    _rejects(_dtmc(GOOD), "exactly one", 'P=? [F "lava"]; P=? [F "goal"]')


def test_mdp_property_must_name_the_scheduler_direction():
    mdp = ExplicitModel.mdp(sp.csr_array(np.vstack([GOOD[:1], GOOD])), [2, 1, 1, 1], LABELS)
    _rejects(mdp, "Pmax=\\? or Pmin=\\?")


def test_empty_model():
    _rejects(ExplicitModel.dtmc(sp.csr_array((0, 0)), {}), "no states")


@pytest.mark.parametrize("total", [0.9, 1 + 1e-7, 1 - 1e-7])
def test_row_not_summing_to_one(total):
    bad = GOOD.copy()
    bad[2] = [total / 2, 0, 0, total / 2]
    msg = _rejects(_dtmc(bad), "sums to")
    assert "state 2" in msg


def test_negative_probability():
    bad = GOOD.copy()
    bad[0] = [0, 1.2, -0.2, 0]
    assert "state 0" in _rejects(_dtmc(bad), "negative")


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_probability(value):
    bad = GOOD.copy()
    bad[2, 0] = value
    assert "state 2" in _rejects(_dtmc(bad), "non-finite")


def test_empty_row():
    bad = GOOD.copy()
    bad[3] = 0.0                        # an absorbing state written without its self-loop
    msg = _rejects(_dtmc(bad), "empty row")
    assert "state 3" in msg and "self-loop" in msg


def test_empty_row_of_an_mdp_names_the_choice():
    rows = np.vstack([GOOD[:1], np.zeros((1, 4)), GOOD[1:]])
    msg = _rejects(ExplicitModel.mdp(sp.csr_array(rows), [2, 1, 1, 1], LABELS), "empty row", 'Pmax=? [F "lava"]')
    assert "state 0, choice 1" in msg


def test_state_without_choices():
    _rejects(ExplicitModel.mdp(sp.csr_array(GOOD), [2, 0, 1, 1], LABELS), "no choice", 'Pmax=? [F "lava"]')


@pytest.mark.parametrize("labels,match", [
    ({"init": np.ones(4, dtype=bool)}, "reserved"),
    ({"bad name": np.ones(4, dtype=bool)}, "label names"),
    ({"lava": np.ones(3, dtype=bool)}, "shape"),
    ({"lava": np.ones(4)}, "bool"),
])
def test_bad_labels(labels, match):
    _rejects(_dtmc(GOOD, labels), match, 'P=? [F "init"]')


@pytest.mark.parametrize("initial", [np.array([0.5, 0.4, 0, 0]), np.array([1.5, -0.5, 0, 0]), np.ones(3) / 3])
def test_bad_initial_distribution(initial):
    _rejects(_dtmc(GOOD, initial=initial), "initial")


def test_property_labels_are_the_quoted_names():
    assert property_labels('Pmax=? [!"goal" U<=4 "lava"]') == {"goal", "lava"}
