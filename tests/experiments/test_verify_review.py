"""Review tests of the verify stage's robust bounds and notes, on hand-made abstractions of known chains.

The stage reports ``[lower_bound, upper_bound]`` as robust bounds "over every model consistent with the
counts"; on a chain whose true answer is known, that interval must cover the truth in (at least) the
stated fraction of independent draws of the counts.
"""

from __future__ import annotations

import numpy as np

from experiments.stages.verify import _bounds, _row
from planning.verify.abstraction import UNEXPLORED, Abstraction, AbstractionSpec
from planning.verify.model import CountModel

SPEC = AbstractionSpec(("s",), labels={"bad": "lava", "good": "goal"}, absorbing=("lava", "goal"))
# states: 0 start, 1 lava, 2 goal
LABELS = {"lava": np.array([0, 1, 0], bool), "goal": np.array([0, 0, 1], bool), UNEXPLORED: np.zeros(3, bool)}


def abstraction(states, actions, next_states, num_actions: int = 1) -> Abstraction:
    counts = CountModel.from_transitions(states, actions, next_states, 3, num_actions, LABELS, np.array([1.0, 0, 0]))
    return Abstraction(SPEC, np.zeros((3, 3), np.int64), counts, "uniform", len(states), 1)


def test_stage_bounds_cover_the_true_probability():
    # truth: the start goes to lava w.p. 0.9, to goal w.p. 0.1; 10 counted steps per draw. All ten go to lava
    # in 35% of the draws, where the old lower bound was exactly 1 (the support assumption).
    rng = np.random.default_rng(0)
    covered, draws = 0, 200
    for _ in range(draws):
        nxt = np.where(rng.random(10) < 0.9, 1, 2)
        lo, hi, _ = _bounds(abstraction([0] * 10, [0] * 10, nxt), 'P=? [F "lava"]', False, 0.95)
        covered += lo <= 0.9 <= hi
    assert covered >= 0.95 * draws                            # old code: 130 of 200


def test_stage_pmax_upper_bound_covers_an_untried_action():
    # action 0 counted 30 times (-> goal); action 1 never tried (in truth: -> lava). True Pmax = 1.
    a = abstraction([0] * 30, [0] * 30, [2] * 30, num_actions=2)
    lo, hi, _ = _bounds(a, 'Pmax=? [F<=3 "lava"]', True, 0.95)
    assert hi >= 1.0 - 1e-9 and lo <= 1e-9                   # old code: hi = 0.14


def test_terminal_states_are_not_called_sparse():
    # the start was left 50 times; lava and goal are terminal (never left by construction)
    a = abstraction([0] * 50, [0] * 50, [1] * 25 + [2] * 25)
    note = _row('P=? [F "lava"]', "uniform", a, 0.5, 0.0, 1.0, None, "")["note"]
    assert "fewer than 10 times" not in note                 # old code: "2 state(s) were left fewer than 10 times"
    sparse = abstraction([0] * 5, [0] * 5, [1, 1, 2, 2, 2])
    note = _row('P=? [F "lava"]', "uniform", sparse, 0.4, 0.0, 1.0, None, "")["note"]
    assert "1 state(s) were left fewer than 10 times" in note
