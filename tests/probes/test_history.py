"""The supervised history baseline: reads what only the history reveals, nothing from noise, refuses bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.metrics import balanced_accuracy_score, r2_score

from probes.base import ProbeError
from probes.harness import run_harness
from probes.history import METHOD, HistoryFitter, HistorySplit, store_num_actions, store_split
from probes.metrics import metric_names
from worlds.concepts import Concept

torch.set_num_threads(1)

CUE = Concept("cue_at_start", "binary", "the cue channel was on at the episode's first step")
COUNT = Concept("cues_so_far", "scalar", "number of steps so far with the pulse channel on", low=0.0, high=100.0)
ACT2 = Concept("action_two_back", "categorical", "the action that led into the previous step", classes=("a", "b", "c"))
NOISE = Concept("coin", "binary", "a fair coin per step, independent of everything")
CONCEPTS = (CUE, COUNT, ACT2, NOISE)
LENGTH, D_NOISE = 12, 3
FAST = dict(hidden=32, max_epochs=40, patience=5)


def make_split(episodes: int, seed: int, first_id: int = 0) -> HistorySplit:
    """Episodes of ``LENGTH`` steps; obs ``[n 2+D_NOISE]`` = (cue: on at step 0 only, pulse ~ Bernoulli(0.3), noise).

    The labels depend on the history only: ``cue_at_start`` on the episode's first observation (gone from
    every later one), ``cues_so_far`` on the count of pulses, ``action_two_back`` on the previous action.
    """
    rng = np.random.default_rng(seed)
    n = episodes * LENGTH
    t = np.tile(np.arange(LENGTH), episodes)
    cue = np.repeat(rng.integers(0, 2, episodes), LENGTH)
    pulse = (rng.random(n) < 0.3).astype(np.float32)
    obs = np.concatenate([((t == 0) * cue)[:, None], pulse[:, None], rng.random((n, D_NOISE))], 1).astype(np.float32)
    actions = rng.integers(0, 3, n)
    actions[t == 0] = 0
    prev = np.r_[0, actions[:-1]]
    prev[t <= 1] = 0
    count = np.concatenate([np.cumsum(pulse[i: i + LENGTH]) for i in range(0, n, LENGTH)])
    labels = {"cue_at_start": cue.astype(np.uint8), "cues_so_far": count, "action_two_back": prev,
              "coin": rng.integers(0, 2, n).astype(np.uint8)}
    return HistorySplit(obs, actions, np.repeat(np.arange(first_id, first_id + episodes), LENGTH), t, labels)


@pytest.fixture(scope="module")
def data():
    return {"train": make_split(160, 0), "val": make_split(40, 1, 1000), "test": make_split(80, 2, 2000)}


@pytest.fixture(scope="module")
def fitted(data):
    return HistoryFitter(CONCEPTS, seed=0, **FAST).fit(data["train"], data["val"])


def test_reads_a_cue_that_only_the_history_holds_while_the_current_observation_is_at_chance(data, fitted):
    test, train = data["test"], data["train"]
    later = test.steps >= 1  # the cue is visible at step 0 only
    pred, proba = fitted.predictions(test)["cue_at_start"]
    assert balanced_accuracy_score(test.labels["cue_at_start"][later], pred[later]) > 0.9
    assert proba.shape == (len(pred), 2) and np.allclose(proba.sum(1), 1)
    ref = LogisticRegression(max_iter=1000).fit(train.obs, train.labels["cue_at_start"])  # current observation alone
    assert abs(balanced_accuracy_score(test.labels["cue_at_start"][later], ref.predict(test.obs[later])) - 0.5) < 0.06


def test_scalar_and_action_functions_of_the_history_are_recovered(data, fitted):
    test, train = data["test"], data["train"]
    out = fitted.predictions(test)
    value, none = out["cues_so_far"]
    assert none is None and r2_score(test.labels["cues_so_far"], value) > 0.9
    ref = LinearRegression().fit(train.obs, train.labels["cues_so_far"])  # current observation alone: little
    assert r2_score(test.labels["cues_so_far"], ref.predict(test.obs)) < 0.3
    assert balanced_accuracy_score(test.labels["action_two_back"], out["action_two_back"][0]) > 0.9


def test_pure_noise_labels_stay_at_chance(data, fitted):
    pred, _ = fitted.predictions(data["test"])["coin"]
    assert abs(balanced_accuracy_score(data["test"].labels["coin"], pred) - 0.5) < 0.05


def test_same_seed_same_predictions_and_no_global_rng_side_effect(data, fitted):
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    again = HistoryFitter(CONCEPTS, seed=0, **FAST).fit(data["train"], data["val"])
    assert torch.equal(torch.random.get_rng_state(), before)
    a, b = fitted.scores(data["test"]), again.scores(data["test"])
    assert all(torch.equal(a[k], b[k]) for k in a)
    other = HistoryFitter(CONCEPTS, seed=1, **FAST).fit(data["train"], data["val"])
    assert not torch.equal(other.scores(data["test"])["cues_so_far"], a["cues_so_far"])


def test_a_step_sees_only_its_past_and_row_order_within_episodes_is_kept(data, fitted):
    test = data["test"]
    full = fitted.scores(test)["cues_so_far"]
    k = 5 * LENGTH + 7  # cut episode 5 after step 7: its first 8 predictions must not change
    head = HistorySplit(test.obs[:k], test.actions[:k], test.episodes[:k], test.steps[:k])
    assert torch.allclose(fitted.scores(head)["cues_so_far"], full[:k], atol=1e-5)


def test_bad_inputs_are_refused_with_one_line(data):
    tr, fit = data["train"], HistoryFitter(CONCEPTS, seed=0, **FAST)
    nan_obs = tr.obs.copy()
    nan_obs[3, 1] = np.nan
    shuffled = tr.episodes.copy()
    shuffled[[0, LENGTH + 1]] = shuffled[[LENGTH + 1, 0]]
    cases = {
        "at least one step": HistorySplit(tr.obs[:0], tr.actions[:0], tr.episodes[:0], None, tr.labels),
        "episodes must have shape": HistorySplit(tr.obs, tr.actions, tr.episodes[:-1], None, tr.labels),
        "must be finite": HistorySplit(nan_obs, tr.actions, tr.episodes, None, tr.labels),
        "contiguous": HistorySplit(tr.obs, tr.actions, shuffled, None, tr.labels),
        "run 0, 1": HistorySplit(tr.obs, tr.actions, tr.episodes, tr.steps + 1, tr.labels),
        "actions must have": HistorySplit(tr.obs, tr.actions[:-1], tr.episodes, None, tr.labels),
        "labels missing": HistorySplit(tr.obs, tr.actions, tr.episodes, None, {"coin": tr.labels["coin"]}),
        "same length": HistorySplit(tr.obs, tr.actions, tr.episodes, None, {**tr.labels, "coin": tr.labels["coin"][:-1]}),
    }
    for needle, bad in cases.items():
        with pytest.raises(ProbeError, match=needle) as e:
            fit.fit(bad)
        assert "\n" not in str(e.value)
    nan_labels = HistorySplit(tr.obs, tr.actions, tr.episodes, None, {**tr.labels, "cues_so_far": np.full(len(tr.obs), np.nan)})
    with pytest.raises(ProbeError, match="finite"):
        fit.fit(nan_labels)
    model = HistoryFitter(CONCEPTS[:1], seed=0, hidden=8, max_epochs=1).fit(tr)
    with pytest.raises(ProbeError, match=r"integers in \[0, 3\)"):
        model.scores(HistorySplit(tr.obs, tr.actions + 3, tr.episodes))
    with pytest.raises(ProbeError, match="non-empty"):
        HistoryFitter([])


def test_harness_rows_beside_the_other_baselines(planted):
    res = run_harness(planted.store, planted.schema, ["linear"], ["signal"], control=False, mdl=False, n_boot=50,
                      history_baseline=True, progress=False)
    rows = {(r.method, r.site, r.concept, r.split, r.metric) for r in res.rows}
    for c in planted.schema:
        for split in ("test", "ood"):
            for metric in metric_names(c.kind):
                assert (METHOD, METHOD, c.name, split, metric) in rows
                assert ("observation", "obs", c.name, split, metric) in rows
    assert "history/actions" in res.skipped  # a store without a dataset: observations only, said so
    assert res.settings["history_baseline"] is True


def test_store_split_reads_actions_from_the_attached_dataset(lkd):
    sp = store_split(lkd.store, "val")
    want = lkd.ds.concat("val", ["actions", "obs"])
    assert np.array_equal(sp.actions, want["actions"]) and np.array_equal(sp.obs, want["obs"])
    assert np.array_equal(sp.steps, lkd.store.steps("val")) and set(sp.labels) == set(lkd.ds.schema.names)
    assert store_num_actions(lkd.store) == lkd.ds.action_spec["n"]


def test_harness_scores_the_history_on_non_terminal_test_steps_too(lkd):
    # the rows are the history's predictions scored on exactly the test steps that are not terminal: concepts that
    # only change on a terminal step (stepping into lava, reaching the goal) have no such rows
    res = run_harness(lkd.store, lkd.ds.schema, ["linear"], ["deter"], control=False, mdl=False, n_boot=20,
                      history_baseline=True, progress=False)
    rows = {(r.concept, r.split, r.metric): r for r in res.rows if r.method == METHOD}
    term = lkd.ds.concat("test", ["is_terminal"])["is_terminal"].astype(bool)
    labels = lkd.store.concepts("test")
    for c in lkd.ds.schema:
        y = np.asarray(labels[c.name])[~term]
        varies = np.std(y) > 0 if c.kind == "scalar" else np.unique(y).size > 1
        assert ((c.name, "test_nonterminal", metric_names(c.kind)[0]) in rows) == varies, c.name
        assert (c.name, "test", metric_names(c.kind)[0]) in rows
    assert term.any() and not ((("in_lava", "test_nonterminal", "balanced_accuracy") in rows))
    # the estimate against sklearn on the same fit's predictions, restricted to the non-terminal steps
    cs = [c for c in lkd.ds.schema if c.name in {k[0] for k in rows}]
    fit = HistoryFitter(cs, num_actions=store_num_actions(lkd.store), seed=0).fit(store_split(lkd.store, "train"),
                                                                                 store_split(lkd.store, "val"))
    pred = fit.predictions(store_split(lkd.store, "test"))["steps_to_goal"][0]
    y = np.asarray(labels["steps_to_goal"])
    assert rows[("steps_to_goal", "test_nonterminal", "r2")].estimate == pytest.approx(r2_score(y[~term], pred[~term]), abs=1e-6)
    assert rows[("steps_to_goal", "test", "r2")].estimate == pytest.approx(r2_score(y, pred), abs=1e-6)
