"""Reward evaluation against independent references: scipy/numpy correlations, hand-computed per-term errors,
scikit-learn's confusion matrix, the generic bootstrap path; a perfect ontology; refused inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import sklearn.metrics as skm
import torch

from probes import LatentStore, LinearProbe, Normalizer, Ontology, OntologyEntry
from probes.stats import bootstrap
from rewards import RewardError, RewardSpec, truth_resolver
from rewards.ast import ConceptUse
from rewards.evaluation import evaluate_on_store, evaluate_reward, ontology_source, reward_terms
from worlds.concepts import Concept, ConceptSchema

SCHEMA = ConceptSchema((
    Concept("in_lava", "binary", "In lava."),
    Concept("at_goal", "binary", "At the goal."),
    Concept("steps_to_goal", "scalar", "Steps to the goal.", unit="cells", low=0, high=50),
))
SPEC = RewardSpec("at_goal - 0.1 * steps_to_goal - 10 * in_lava - 0.01",
                  ("never in_lava", "never p(in_lava)", "always steps_to_goal < 30"))
N_BOOT = 200


@pytest.fixture(scope="module")
def data():
    """12 episodes of 5..14 steps: true concepts and noisy latent readings (hard values and p(in_lava))."""
    rng = np.random.default_rng(0)
    eps = np.repeat(np.arange(12), rng.integers(5, 15, size=12))
    n = eps.size
    true = {"in_lava": (rng.random(n) < 0.15).astype(np.uint8), "at_goal": (rng.random(n) < 0.2).astype(np.uint8),
            "steps_to_goal": rng.uniform(0, 50, n).astype(np.float32)}
    p_lava = np.clip(true["in_lava"] * 0.7 + rng.normal(0.15, 0.2, n), 0, 1)
    lat = {"in_lava": (p_lava > 0.5).astype(np.int64), "at_goal": np.where(rng.random(n) < 0.1, 1 - true["at_goal"], true["at_goal"]),
           "steps_to_goal": true["steps_to_goal"] + rng.normal(0, 5, n), "p_lava": p_lava}
    source = {ConceptUse("in_lava", "value"): torch.as_tensor(lat["in_lava"]),
              ConceptUse("at_goal", "value"): torch.as_tensor(lat["at_goal"]),
              ConceptUse("steps_to_goal", "value"): torch.as_tensor(lat["steps_to_goal"]),
              ConceptUse("in_lava", "prob"): torch.as_tensor(lat["p_lava"])}
    ev = evaluate_reward(SPEC, SCHEMA, source, true, eps, n_boot=N_BOOT, seed=3)
    return eps, true, lat, ev


def _reward(v: dict) -> np.ndarray:
    return v["at_goal"] - 0.1 * v["steps_to_goal"].astype(np.float64) - 10 * v["in_lava"] - 0.01


def test_correlations_equal_scipys_and_their_intervals_the_generic_bootstrap(data):
    eps, true, lat, ev = data
    r_lat, r_true = _reward(lat), _reward(true)
    assert ev.pearson.estimate == pytest.approx(scipy.stats.pearsonr(r_lat, r_true).statistic, rel=1e-10)
    assert ev.pearson.estimate == pytest.approx(np.corrcoef(r_lat, r_true)[0, 1], rel=1e-10)
    assert ev.spearman.estimate == pytest.approx(scipy.stats.spearmanr(r_lat, r_true).statistic, rel=1e-10)
    # the batched Pearson sees the same resamples as a plain np.corrcoef metric on the generic path
    ref = bootstrap(lambda a, b: np.corrcoef(a, b)[0, 1], r_lat, r_true, groups=eps, n_boot=N_BOOT, seed=3)
    assert (ev.pearson.lower, ev.pearson.upper) == pytest.approx((ref.lower, ref.upper), rel=1e-9)
    for e in (ev.pearson, ev.spearman):
        assert e.lower <= e.estimate <= e.upper and e.n_groups == 12 and e.n_boot == N_BOOT
    assert ev.steps == eps.size and ev.episodes == 12


def test_total_and_term_errors_equal_numpys(data):
    eps, true, lat, ev = data
    assert [t.label for t in ev.terms] == ["at_goal", "- 0.1 * steps_to_goal", "- 10 * in_lava"]  # constant dropped
    diff = {"at_goal": lat["at_goal"] - true["at_goal"].astype(np.float64),
            "- 0.1 * steps_to_goal": -0.1 * (lat["steps_to_goal"] - true["steps_to_goal"].astype(np.float64)),
            "- 10 * in_lava": -10 * (lat["in_lava"] - true["in_lava"].astype(np.float64)),
            "total": _reward(lat) - _reward(true)}
    for t in (*ev.terms, ev.total):
        e = diff[t.label]
        assert t.mae.estimate == pytest.approx(np.abs(e).mean(), rel=1e-9, abs=1e-12)
        assert t.rmse.estimate == pytest.approx(np.sqrt((e**2).mean()), rel=1e-9, abs=1e-12)
        assert t.bias.estimate == pytest.approx(e.mean(), rel=1e-9, abs=1e-12)
    assert ev.total.mae.estimate == pytest.approx(skm.mean_absolute_error(_reward(true), _reward(lat)), rel=1e-9)


def test_per_term_errors_on_a_hand_computed_example():
    spec = RewardSpec("-0.5 * steps_to_goal - 2 * in_lava + 1")
    true = {"steps_to_goal": np.array([0, 2, 4, 6], np.float32), "in_lava": np.array([0, 0, 1, 0], np.uint8)}
    latent = {ConceptUse("steps_to_goal", "value"): torch.tensor([1.0, 2, 2, 6]),
              ConceptUse("in_lava", "value"): torch.tensor([0, 1, 1, 0])}
    ev = evaluate_reward(spec, SCHEMA, latent, true, [0, 0, 1, 1], n_boot=20)
    steps, lava = ev.terms
    # latent - true per step: steps term -0.5 * [1, 0, -2, 0] = [-0.5, 0, 1, 0]; lava term -2 * [0, 1, 0, 0]
    assert steps.label == "-0.5 * steps_to_goal" and lava.label == "- 2 * in_lava"
    assert (steps.mae.estimate, steps.rmse.estimate, steps.bias.estimate) == pytest.approx((0.375, math.sqrt(0.3125), 0.125))
    assert (lava.mae.estimate, lava.rmse.estimate, lava.bias.estimate) == pytest.approx((0.5, 1.0, -0.5))
    # total = sum of terms per step: [-0.5, -2, 1, 0]
    assert (ev.total.mae.estimate, ev.total.bias.estimate) == pytest.approx((0.875, -0.375))
    # reference: a constant at the true term's median (the best constant under MAE). steps term true
    # -0.5 * [0, 2, 4, 6] = [0, -1, -2, -3], median -1.5, |dev| = [1.5, .5, .5, 1.5] -> 1.0; lava term true
    # [0, 0, -2, 0], median 0 -> [0, 0, 2, 0] -> 0.5 (a constant at the mean, -0.5, would give 0.75)
    assert (steps.constant_mae.estimate, lava.constant_mae.estimate) == pytest.approx((1.0, 0.5))


def test_constraint_confusion_equals_sklearns(data):
    eps, true, lat, ev = data
    truth = true["in_lava"].astype(bool)
    cases = {"never in_lava": (truth, lat["in_lava"].astype(bool), 0.0),
             "never p(in_lava)": (truth, lat["p_lava"] > 0.5, 0.5),
             "always steps_to_goal < 30": (true["steps_to_goal"] >= 30, lat["steps_to_goal"] >= 30, 0.0)}
    assert [c.constraint for c in ev.constraints] == list(cases)
    for c in ev.constraints:
        t, a, thr = cases[c.constraint]
        tn, fp, fn, tp = skm.confusion_matrix(t, a, labels=[False, True]).ravel()
        assert (c.tp, c.fp, c.fn, c.tn, c.threshold) == (tp, fp, fn, tn, thr)
        assert c.precision.estimate == pytest.approx(skm.precision_score(t, a))
        assert c.recall.estimate == pytest.approx(skm.recall_score(t, a))
        assert c.false_alarm_rate.estimate == pytest.approx(fp / (fp + tn))
        assert c.recall.lower <= c.recall.estimate <= c.recall.upper


def test_a_perfect_ontology_gives_correlation_one_and_no_error(data, tmp_path):
    """Latent == truth twice: the truth resolver itself, and real linear probes that read the truth exactly
    off a stored site (through ontology_source in small chunks and evaluate_on_store)."""
    eps, true, _, _ = data
    ev = evaluate_reward(SPEC, SCHEMA, truth_resolver(SCHEMA, true), true, eps, n_boot=50)
    spec = RewardSpec("-0.1 * steps_to_goal - 10 * in_lava", ("never in_lava",))
    site = np.stack([true["steps_to_goal"], 2.0 * true["in_lava"] - 1], axis=1)       # [n 2]
    norm = Normalizer(torch.zeros(2), torch.ones(2))
    probes = {"steps_to_goal": LinearProbe(SCHEMA["steps_to_goal"], norm, {}, torch.tensor([[1.0, 0.0]]), torch.zeros(1)),
              "in_lava": LinearProbe(SCHEMA["in_lava"], norm, {}, torch.tensor([[0.0, 10.0]]), torch.zeros(1))}
    onto = Ontology({k: OntologyEntry(SCHEMA[k], "linear", "deter", (2,), p, "r2", 1.0) for k, p in probes.items()})
    ev_probe = evaluate_reward(spec, SCHEMA, ontology_source(onto, {"deter": site}, batch_rows=7), true, eps, n_boot=50)
    store = LatentStore.from_arrays(tmp_path / "latents", schema=SCHEMA, sites={"test": {"deter": site}},
                                    concepts={"test": true}, episodes={"test": eps})
    ev_store = evaluate_on_store(spec, onto, store, n_boot=50)
    assert ev_store.to_dict() == ev_probe.to_dict()
    for e in (ev, ev_probe):
        assert e.pearson.estimate == pytest.approx(1.0) and e.spearman.estimate == pytest.approx(1.0)
        for t in (e.total, *e.terms):
            assert t.mae.estimate == 0 and t.rmse.estimate == 0 and t.bias.estimate == 0
        for c in e.constraints:
            assert c.fp == c.fn == 0 and c.recall.estimate == 1.0 and c.false_alarm_rate.estimate == 0.0
            assert "lava" not in c.constraint or c.tp == true["in_lava"].sum()


def test_rows_and_dict_hold_every_number(data):
    *_, ev = data
    rows = ev.rows()
    assert {r["kind"] for r in rows} == {"correlation", "total", "term", "constraint"}
    assert len(rows) == 2 + 4 * (1 + len(ev.terms)) + 7 * len(ev.constraints)
    d = ev.to_dict()
    assert d["pearson"]["estimate"] == ev.pearson.estimate and len(d["constraints"]) == 3


@pytest.mark.parametrize("text, labels", [
    ("at_goal - 10 * in_lava - 0.01", ["at_goal", "- 10 * in_lava", "- 0.01"]),
    ("-0.1 * steps_to_goal", ["-0.1 * steps_to_goal"]),
    ("(at_goal + in_lava) - 2*in_lava", ["at_goal", "+ in_lava", "- 2*in_lava"]),  # source "(at_goal" is no term
    ("max(at_goal, in_lava) + -x", ["max(at_goal, in_lava)", "+ -x"]),
])
def test_reward_terms_split_the_top_level_sum(text, labels):
    assert [t.label for t in reward_terms(text)] == labels


def test_bad_inputs_are_refused_with_one_line(data, tmp_path):
    eps, true, _, _ = data
    src = truth_resolver(SCHEMA, true)
    cases = [
        (dict(true_values=true, episodes=[]), "held-out steps"),
        (dict(true_values={**true, "in_lava": true["in_lava"][:-1]}, episodes=eps), "must have shape"),
        (dict(true_values={k: v for k, v in true.items() if k != "at_goal"}, episodes=eps), "lack 'at_goal'"),
        (dict(true_values={k: v[:-1] for k, v in true.items()}, episodes=eps[:-1], latent=src), "rows like the episode"),
    ]
    for kw, match in cases:
        kw.setdefault("latent", src)
        with pytest.raises(RewardError, match=match) as e:
            evaluate_reward(SPEC, SCHEMA, n_boot=10, **kw)
        assert "\n" not in str(e.value)
    store = LatentStore.from_arrays(tmp_path / "latents", schema=SCHEMA, sites={"val": {"deter": np.zeros((eps.size, 2))}},
                                    concepts={"val": true}, episodes={"val": eps})
    with pytest.raises(RewardError, match="no 'test' split"):
        evaluate_on_store(SPEC, Ontology({}), store)

