"""Review of rewards/ and the planning stage's metrics (session 8): each test here failed before its fix.

* error positions on multi-line text name the line and the column in it (not the character offset);
* ``not`` inside arithmetic or a comparison is refused, as the documented grammar (and Python) says;
* ``constant_mae`` is the MAE of the best constant (the true term's median), which no constant beats;
* rates at 0/m or m/m (constraint confusion, the shield's veto rate) get an exact interval, not the
  bootstrap's collapsed [0, 0].
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from experiments.schema import resolve
from experiments.stages.plan import _metrics
from planning.closed_loop import Decisions, EpisodeLog, Visited
from probes.stats import bootstrap, clopper_pearson
from rewards.ast import Binary, Name, Number, Unary
from rewards.errors import RewardError
from rewards.evaluation import evaluate_reward, exact_if_unanimous
from rewards.parser import parse_constraint, parse_expression
from rewards.spec import RewardSpec
from worlds.concepts import Concept, ConceptSchema
from worlds.estimate import Estimate

SCHEMA = ConceptSchema((
    Concept("in_lava", "binary", "In lava."),
    Concept("at_goal", "binary", "At the goal."),
    Concept("dist", "scalar", "Distance to a hazard.", unit="m", low=0, high=3),
))


# -- error positions -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, position, where", [
    ("a +\n\n@", 5, "line 3, column 0 (offset 5)"),
    ("in_lava\n  +\n  @", 14, "line 3, column 2 (offset 14)"),
    ("at_goal\n  - 10 * * in_lava", 17, "line 2, column 9 (offset 17)"),
    ("  a + @", 6, "column 6"),            # one line: the offset is the column, leading blanks counted
    ("\ta + @", 5, "column 5"),
])
def test_error_location_names_line_and_column_on_multi_line_text(text, position, where):
    with pytest.raises(RewardError) as info:
        parse_expression(text)
    err = info.value
    assert err.position == position
    assert f" at {where} in " in str(err) and "\n" not in str(err)


def test_unknown_concept_on_a_later_line_names_that_line():
    spec = RewardSpec("at_goal\n  - 10 * lava")
    with pytest.raises(RewardError, match=r"unknown concept 'lava' at line 2, column 9 \(offset 17\)"):
        spec.check(SCHEMA)


def test_unclosed_parenthesis_names_the_line_of_the_opening_one():
    with pytest.raises(RewardError, match=r"close the '\(' at line 2, column 2 \(offset 6\), got end of input"):
        parse_expression("1 +\n  (2 * 3")


# -- `not` binds below comparisons: it cannot be an operand of a tighter operator --------------------------------
@pytest.mark.parametrize("text, column", [
    ("1 + not in_lava", 4),
    ("2 * not in_lava == at_goal", 4),   # was 2 * (not (in_lava == at_goal)): `not` swallowed the comparison
    ("in_lava == not at_goal", 11),
    ("-not in_lava", 1),
    ("2 ** not in_lava", 5),
    ("not in_lava + not at_goal", 14),
])
def test_not_inside_arithmetic_or_comparison_is_refused(text, column):
    with pytest.raises(RewardError, match="'not' cannot stand inside arithmetic or a comparison") as info:
        parse_expression(text)
    assert info.value.position == column


def test_not_where_the_grammar_allows_it_still_parses():
    a, b = Name("in_lava"), Name("at_goal")
    assert parse_expression("not not in_lava") == Unary("not", Unary("not", a))
    assert parse_expression("in_lava and not at_goal") == Binary("and", a, Unary("not", b))
    assert parse_expression("not in_lava == 1") == Unary("not", Binary("==", a, Number(1.0)))
    assert parse_expression("1 - (not in_lava)") == Binary("-", Number(1.0), Unary("not", a))
    assert parse_constraint("always not in_lava").expr == Unary("not", a)


# -- constant_mae: the best constant under MAE is the median -------------------------------------------------------
def test_constant_mae_is_the_best_constant_so_a_probe_that_never_fires_does_not_beat_it():
    # a rare term: in lava on 2 of 20 steps. A probe that never says lava reads nothing about the term, yet its
    # MAE (10 * 2/20 = 1.0) was below the old reference, a constant at the mean (10 * 2 * 0.1 * 0.9 = 1.8).
    lava = np.zeros(20, np.int64)
    lava[[3, 14]] = 1
    eps = np.repeat(np.arange(5), 4)
    never = {("in_lava", "value"): torch.zeros(20, dtype=torch.int64)}
    ev = evaluate_reward(RewardSpec("-10 * in_lava"), SCHEMA, never, {"in_lava": lava}, eps, n_boot=50)
    term = ev.terms[0]
    assert term.mae.estimate == pytest.approx(1.0)
    best_constant = min(np.abs(-10 * lava - c).mean() for c in np.linspace(-10, 0, 1001))
    assert term.constant_mae.estimate == pytest.approx(best_constant) == pytest.approx(1.0)
    assert term.mae.estimate >= term.constant_mae.estimate   # reading nothing does not beat "not reading it"


# -- exact intervals for unanimous rates ---------------------------------------------------------------------------
def _boot_rate(hits, groups):
    return bootstrap(np.mean, np.asarray(hits, np.float64), groups=groups, n_boot=200, seed=0)


def test_zero_of_m_gets_the_clopper_pearson_bound_with_episodes_as_trials():
    e, per = 20, 30
    groups = np.repeat(np.arange(e), per)
    hits = np.zeros(e * per, bool)
    boot = _boot_rate(hits, groups)
    assert (boot.lower, boot.upper) == (0.0, 0.0)            # what the percentile bootstrap says: certainty
    est = exact_if_unanimous(boot, hits, groups)
    assert est.estimate == 0.0 and est.lower == 0.0
    assert est.upper == pytest.approx(1 - 0.025 ** (1 / e))   # 0 of 20 episodes: about 0.168, not 0.006 (600 rows)
    # honest: vetoes that come whole episodes at a time at rate r give 0/600 with probability (1 - r)^20, which is
    # >= 2.5% for every r below the bound; the old [0, 0] excluded all of them
    assert (1 - est.upper) ** e == pytest.approx(0.025)


def test_m_of_m_is_the_mirror_image_and_interior_rates_keep_the_bootstrap():
    groups = np.repeat(np.arange(10), 5)
    full = exact_if_unanimous(_boot_rate(np.ones(50, bool), groups), np.ones(50, bool), groups)
    assert full.upper == 1.0 and full.lower == pytest.approx(0.025 ** (1 / 10))
    hits = np.zeros(50, bool)
    hits[[0, 7, 31]] = True
    boot = _boot_rate(hits, groups)
    assert exact_if_unanimous(boot, hits, groups) == boot
    empty = Estimate(float("nan"), float("nan"), float("nan"))
    assert exact_if_unanimous(empty, np.zeros(0, bool), np.zeros(0, np.int64)) is empty


def test_unequal_episodes_use_kish_effective_count():
    groups = np.repeat([0, 1, 2], [1, 1, 8])                 # n_eff = 10^2 / (1 + 1 + 64) = 1.515...
    hits = np.zeros(10, bool)
    est = exact_if_unanimous(_boot_rate(hits, groups), hits, groups)
    n_eff = 100 / 66
    assert est.upper == pytest.approx(float(clopper_pearson(0, n_eff)[1])) == pytest.approx(1 - 0.025 ** (1 / n_eff))


def test_constraint_confusion_rates_at_zero_are_exact():
    # no false alarm on 40 safe steps of 8 episodes: the false alarm rate is 0, its upper bound is not
    eps = np.repeat(np.arange(10), 5)
    truth = np.zeros(50, np.int64)
    truth[:10] = 1                                           # episodes 0 and 1 in lava throughout
    latent = truth.copy()
    latent[5:10] = 0                                         # episode 1 missed: recall 5/10
    ev = evaluate_reward(RewardSpec("0", ("never in_lava",)), SCHEMA, {("in_lava", "value"): torch.as_tensor(latent)},
                         {"in_lava": truth}, eps, n_boot=200)
    c = ev.constraints[0]
    assert (c.tp, c.fp, c.fn, c.tn) == (5, 0, 5, 40)
    assert c.false_alarm_rate.estimate == 0.0
    assert c.false_alarm_rate.upper == pytest.approx(1 - 0.025 ** (1 / 8))   # 8 safe episodes, 5 steps each
    assert c.precision.estimate == 1.0 and c.precision.upper == 1.0
    assert c.precision.lower == pytest.approx(0.025 ** (1 / 1))             # 5 flagged steps, all in one episode
    assert 0 < c.recall.estimate < 1                                        # interior: the bootstrap's interval


def test_plan_veto_rate_interval_is_not_collapsed_when_nothing_is_vetoed(tmp_path):
    e, per = 12, 10
    z = np.zeros(e * per)
    d = Decisions(episode=np.repeat(np.arange(e), per), step=np.tile(np.arange(per), e), predicted_return=z,
                  realised_return=z, predicted_cost=z, elite_spread=z, latency_ms=z, vetoed=np.zeros(e * per, bool))
    log = EpisodeLog("shielded", true_return=np.zeros(e), success=np.ones(e, bool), violations=np.zeros(e, np.int64),
                     steps=np.full(e, per), truncated=np.zeros(e, bool), ms_per_step=np.ones(e),
                     env=np.zeros(e, np.int64), decisions=d,
                     visited=Visited(np.zeros(0, np.int64), np.zeros(0, np.int64), {}, {}))
    cfg = resolve(["world=lavakeydoor", "plan.n_boot=50", "plan.reward=-10 * in_lava"])
    labels = {"planner": "cem+shield", "model": "learned", "reward": "latent", "probe_method": "linear",
              "shielded": True, "seconds": 0.0}
    out = _metrics(cfg, None, RewardSpec("-10 * in_lava"), [(labels, log, None)], tmp_path, {})
    v = json.loads(json.dumps(out["rows"][0]["veto_rate"]))
    assert v["estimate"] == 0.0 and v["ci_low"] == 0.0
    assert v["ci_high"] == pytest.approx(1 - 0.025 ** (1 / e))    # was 0.0: certainty from 12 episodes
