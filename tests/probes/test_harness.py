"""The probe harness on a real (tiny) lavakeydoor run and on planted synthetic latents."""

from __future__ import annotations

import dataclasses
import math
from collections import Counter

import numpy as np
import pytest

from probes.base import ProbeError
from probes.extract import LatentStore
from probes.harness import NO_SITE, OBS_SITE, baseline_name, run_harness
from probes.metrics import metric_names
from probes.ontology import Ontology
from probes.results import read_results_csv

METHODS = ["linear", "sparse", "mlp"]
FAST = dict(n_boot=100, mdl_shuffles=2, progress=False)


@pytest.fixture(scope="module")
def real(lkd):
    return run_harness(lkd.store, lkd.ds.schema, METHODS, list(lkd.sites), random_store=lkd.random_store, **FAST)


@pytest.fixture(scope="module")
def synth(planted):
    return run_harness(planted.store, planted.schema, ["linear", "mlp"], ["signal", "noise"], **FAST)


def _rows(result):
    return {(r.method, r.site, r.concept, r.split, r.metric): r for r in result.rows}


def test_rows_for_every_method_site_concept_split_metric(real, lkd):
    rows = _rows(real)
    assert len(rows) == len(real.rows), "duplicate (method, site, concept, split, metric) rows"
    concepts = real.settings["concepts"]
    assert len(concepts) >= 6 and set(concepts) | {k for k in real.skipped} >= set(lkd.ds.schema.names)
    assert real.settings["splits"] == ["test", "ood"]
    for c in concepts:
        kind = lkd.ds.schema[c].kind
        for split in ("test", "ood"):
            for metric in metric_names(kind):
                assert ("prior", NO_SITE, c, split, metric) in rows
                for m in METHODS:  # every method's baselines (probes.harness.baseline_name)
                    assert (baseline_name("observation", m), OBS_SITE, c, split, metric) in rows
                for site in lkd.sites:
                    for m in METHODS:
                        assert (m, site, c, split, metric) in rows
                        assert (baseline_name("random_model", m), site, c, split, metric) in rows
        for site in lkd.sites:
            for m in METHODS:  # a rare concept's control labels can have one class: then it is listed as skipped
                no_control = f"{m}/{site}/{c}/control" in real.skipped
                assert ((m, site, c, "test", "selectivity") in rows) != no_control
            assert ("linear", site, c, "test", "compression") in rows
            assert (("linear", site, c, "test", "compression_control") in rows) != (f"linear/{site}/{c}/control" in real.skipped)
    assert set(real.fitted) == {(m, s, c) for m in METHODS for s in lkd.sites for c in concepts}
    assert {"observation", "random_model", "observation:mlp", "random_model:sparse"} <= {k[0] for k in rows}
    assert real.settings["baseline_methods"] == METHODS


def test_intervals_bracket_their_estimates(real):
    """Percentile intervals; ECE is exempt from containing its estimate: its bootstrap distribution is biased
    upward (duplicated episodes make bins noisier), so near 0 the whole interval can lie above the estimate."""
    finite = [r for r in real.rows if all(math.isfinite(v) for v in (r.estimate, r.ci_low, r.ci_high))]
    assert len(finite) >= 0.9 * len(real.rows)
    for r in finite:
        assert r.ci_low <= r.ci_high, r
        if r.metric != "ece":
            assert r.ci_low <= r.estimate + 1e-9 and r.estimate <= r.ci_high + 1e-9, r


def test_ontology_is_the_validation_argmax(real, lkd):
    assert set(real.ontology.concepts) == set(real.settings["concepts"])
    for c in real.ontology.concepts:
        e = real.ontology[c]
        best = max(v for (m, s, n), v in real.val_scores.items() if n == c)
        assert e.val_score == best == real.val_scores[(e.method, e.site, c)]
        assert e.site in lkd.sites and e.method in METHODS


def test_save_writes_results_and_a_loadable_ontology(real, tmp_path):
    out = real.save(tmp_path / "probes")
    assert read_results_csv(out / "results.csv") == list(real.rows)
    assert Ontology.load(out / "ontology").summary() == real.ontology.summary()
    assert (out / "harness.json").is_file()


def test_planted_site_is_chosen_and_selective(synth):
    rows = _rows(synth)
    assert synth.ontology.summary() == {c: {"method": "linear", "site": "signal"} for c in ("flag", "level", "room")}
    sel = rows[("linear", "signal", "flag", "test", "selectivity")]
    assert sel.estimate > 0.2 and sel.ci_low > 0.1
    assert rows[("linear", "signal", "flag", "test", "balanced_accuracy")].estimate > 0.95
    assert rows[("linear", "signal", "level", "test", "r2")].estimate > 0.95
    noise = rows[("linear", "noise", "flag", "test", "balanced_accuracy")]
    assert abs(noise.estimate - 0.5) < 0.06
    assert abs(rows[("linear", "noise", "flag", "test", "selectivity")].estimate) < 0.06
    assert rows[("linear", "signal", "flag", "test", "compression")].estimate > rows[("linear", "noise", "flag", "test", "compression")].estimate
    assert rows[("linear", "signal", "room", "test", "compression")].estimate > rows[("linear", "signal", "room", "test", "compression_control")].estimate
    assert synth.skipped == {"random_model": "no random_store given"}


def test_one_ontology_per_method_is_that_methods_validation_argmax(synth, tmp_path):
    assert list(synth.by_method) == ["linear", "mlp"]
    for m, onto in synth.by_method.items():
        assert set(onto) == {"flag", "level", "room"}
        for name in onto:
            scores = {s: synth.val_scores[(m, s, name)] for s in ("signal", "noise")}
            assert onto[name].method == m and onto[name].site == max(scores, key=scores.get) == "signal"
            assert onto[name].val_score == scores["signal"]
    assert synth.by_method["linear"].summary() == synth.ontology.summary()  # linear wins every tie and here every concept
    out = synth.save(tmp_path / "probes")
    for m in ("linear", "mlp"):
        loaded = Ontology.load(out / "ontologies" / m)
        assert loaded.summary() == synth.by_method[m].summary()
    # a second save publishes the folder anew: a method no longer fitted leaves no stale ontology behind
    dataclasses.replace(synth, by_method={"mlp": synth.by_method["mlp"]}).save(out)
    assert sorted(p.name for p in (out / "ontologies").iterdir()) == ["mlp"]


def test_permuting_test_labels_does_not_change_the_ontology(planted, synth, tmp_path):
    st = planted.store
    rng = np.random.default_rng(5)
    concepts = {s: {n: np.array(v) for n, v in st.concepts(s).items()} for s in st.splits}
    perm = rng.permutation(st.n("test"))
    concepts["test"] = {n: v[perm] for n, v in concepts["test"].items()}
    shuffled = LatentStore.from_arrays(
        tmp_path / "shuffled", schema=planted.schema, concepts=concepts,
        sites={s: {n: np.array(st.site(s, n)) for n in st.site_names} for s in st.splits},
        episodes={s: np.array(st.episodes(s)) for s in st.splits}, obs={s: np.array(st.obs(s)) for s in st.splits})
    again = run_harness(shuffled, planted.schema, ["linear", "mlp"], ["signal", "noise"], **FAST)
    assert again.ontology.summary() == synth.ontology.summary()
    assert again.val_scores == synth.val_scores
    before, after = _rows(synth), _rows(again)
    key = ("linear", "signal", "flag", "test", "balanced_accuracy")
    assert after[key].estimate < before[key].estimate - 0.3  # the test rows did see the permutation


def test_seeded_runs_repeat_exactly(planted, synth):
    again = run_harness(planted.store, planted.schema, ["linear", "mlp"], ["signal", "noise"], **FAST)
    assert again.rows == synth.rows


def test_several_probe_seeds_give_a_seed_and_episode_interval(planted):
    res = run_harness(planted.store, planted.schema, ["mlp"], ["signal"], seeds=(0, 1), control=False, mdl=False,
                      baselines=False, concepts=["flag"], **{k: v for k, v in FAST.items() if k != "mdl_shuffles"})
    row = _rows(res)[("mlp", "signal", "flag", "test", "balanced_accuracy")]
    assert row.ci_low <= row.estimate <= row.ci_high and row.estimate > 0.9


def test_bad_inputs_name_what_is_allowed(planted):
    st, schema = planted.store, planted.schema
    with pytest.raises(ProbeError, match=r"unknown concept\(s\) \['door'\]; allowed: flag, level, room"):
        run_harness(st, schema, ["linear"], ["signal"], concepts=["door"])
    with pytest.raises(ProbeError, match=r"unknown site\(s\) \['deter'\]; allowed: noise, signal"):
        run_harness(st, schema, ["linear"], ["deter"])
    with pytest.raises(ProbeError, match=r"unknown probe method\(s\) \['ridge'\]; allowed: linear, mlp, sae, sparse"):
        run_harness(st, schema, ["ridge"], ["signal"])
    with pytest.raises(ProbeError, match=r"unknown metric split\(s\) \['val'\]"):
        run_harness(st, schema, ["linear"], ["signal"], splits=["val"])


def test_all_methods_run_including_sae(planted):
    res = run_harness(planted.store, planted.schema, ["sae", "sparse"], ["signal"], concepts=["flag"], **FAST)
    counts = Counter(r.method for r in res.rows)
    assert counts["sae"] and counts["sparse"] and counts["observation:sae"] and counts["observation:sparse"] and counts["prior"]
    assert res.ontology["flag"].method in ("sae", "sparse")


def test_planner_sites_restrict_the_ontologies_later_stages_load(planted, synth, tmp_path):
    # "signal" carries every concept and wins everywhere; if only "noise" can be read in imagination, the
    # ontology and the per-method ones must use it, while the rule over all sites stays on record.
    res = run_harness(planted.store, planted.schema, ["linear", "mlp"], ["signal", "noise"], planner_sites=["noise"], **FAST)
    assert {e.site for e in res.ontology.entries.values()} == {"noise"}
    assert all(e.site == "noise" for o in res.by_method.values() for e in o.entries.values())
    for name in res.ontology:  # the validation argmax among the readable site's methods
        best = max(("linear", "mlp"), key=lambda m: (res.val_scores[(m, "noise", name)], m == "linear"))
        assert res.ontology[name].method == best
    assert res.any_site.summary() == synth.ontology.summary()
    out = res.save(tmp_path / "probes")
    import json

    saved = json.loads((out / "harness.json").read_text())
    assert saved["ontology_any_site"] == synth.ontology.summary() != saved["ontology"]
    assert saved["settings"]["planner_sites"] == ["noise"]
    # a concept with no candidate at a readable site keeps its best entry anywhere (the planner then says why)
    none = run_harness(planted.store, planted.schema, ["linear"], ["signal"], planner_sites=["noise"], **FAST)
    assert none.ontology.summary() == none.any_site.summary() and not any(len(o) for o in none.by_method.values())


def test_the_mlp_trains_on_every_row_by_default_while_a_cap_still_subsamples(planted):
    # Normalisation statistics come from exactly the training rows a probe was fitted on: the MLP's must be
    # those of the whole train split (no default cap); a method given a cap sees a subsample.
    st = planted.store
    res = run_harness(st, planted.schema, ["mlp", "sparse"], ["signal"], concepts=["flag"], control=False, mdl=False,
                      baselines=False, max_train_rows={"sparse": 50}, n_boot=20, progress=False)
    full_mean = np.asarray(st.site("train", "signal"), np.float64).reshape(st.n("train"), -1).mean(0)
    assert st.n("train") > 50
    mlp_mean = res.fitted[("mlp", "signal", "flag")].norm.mean.double().numpy()
    sparse_mean = res.fitted[("sparse", "signal", "flag")].norm.mean.double().numpy()
    np.testing.assert_allclose(mlp_mean, full_mean, atol=1e-5)
    assert np.abs(sparse_mean - full_mean).max() > 1e-3


def _aux_store(planted, path):
    """The planted store with its sites swapped (``signal`` <-> ``noise``) and the flattened observation as site ``o``."""
    st = planted.store
    obs = {s: np.asarray(st.obs(s)).reshape(st.n(s), -1).astype(np.float32) for s in st.splits}
    return LatentStore.from_arrays(
        path, schema=planted.schema, concepts={s: {n: np.array(v) for n, v in st.concepts(s).items()} for s in st.splits},
        sites={s: {"signal": np.array(st.site(s, "noise")), "noise": np.array(st.site(s, "signal")), "o": obs[s]}
               for s in st.splits},
        episodes={s: np.array(st.episodes(s)) for s in st.splits}, obs={s: np.array(st.obs(s)) for s in st.splits})


def test_baselines_are_the_same_probe_as_the_rows_beside_them(planted, tmp_path):
    """Reference: each method fitted directly on the random model's latents / the observation as a site gives the
    very numbers of that method's baseline rows (same grid, row cap, validation choice and seed)."""
    aux = _aux_store(planted, tmp_path / "aux")
    kw = dict(control=False, mdl=False, n_boot=40, progress=False)
    methods = ["linear", "sparse"]
    res = run_harness(planted.store, planted.schema, methods, ["signal", "noise"], random_store=aux, **kw)
    ref_random = _rows(run_harness(aux, planted.schema, methods, ["signal"], baselines=False, **kw))
    ref_obs = _rows(run_harness(aux, planted.schema, methods, ["o"], baselines=False, **kw))
    rows = _rows(res)
    checked = 0
    for (m, site, c, split, metric), ref in ref_random.items():
        got = rows[(baseline_name("random_model", m), site, c, split, metric)]
        assert (got.estimate, got.ci_low, got.ci_high) == (ref.estimate, ref.ci_low, ref.ci_high)
        got = rows[(baseline_name("observation", m), OBS_SITE, c, split, metric)]
        ref = ref_obs[(m, "o", c, split, metric)]
        assert (got.estimate, got.ci_low, got.ci_high) == (ref.estimate, ref.ci_low, ref.ci_high)
        checked += 1
    assert checked >= 2 * 3 * 2 * 2  # methods x concepts x splits x (at least two metrics each)
    # the swap is visible: the random model's "signal" is the real noise, so its flag is at chance there
    assert abs(rows[("random_model:sparse", "signal", "flag", "test", "balanced_accuracy")].estimate - 0.5) < 0.1
    assert rows[("sparse", "signal", "flag", "test", "balanced_accuracy")].estimate > 0.9


def test_baseline_methods_choose_which_probes_the_baselines_use(planted):
    kw = dict(control=False, mdl=False, n_boot=20, progress=False, concepts=["flag"])
    st, schema = planted.store, planted.schema
    only_linear = run_harness(st, schema, ["linear", "sparse"], ["signal"], baseline_methods=["linear"], **kw)
    assert {r.method for r in only_linear.rows} == {"linear", "sparse", "prior", "observation"}
    other = run_harness(st, schema, ["linear"], ["signal"], baseline_methods=["sparse"], **kw)
    assert {r.method for r in other.rows} == {"linear", "prior", "observation:sparse"}
    prior_only = run_harness(st, schema, ["linear"], ["signal"], baseline_methods=[], **kw)
    assert {r.method for r in prior_only.rows} == {"linear", "prior"}
    with pytest.raises(ProbeError, match=r"unknown baseline method\(s\) \['ridge'\]; allowed: linear, mlp, sae, sparse"):
        run_harness(st, schema, ["linear"], ["signal"], baseline_methods=["ridge"], **kw)


BAD_MLP = {"hidden": (2,), "lr": 1e-5, "batch_size": 256, "max_epochs": 1, "patience": 1}
GOOD_MLP = {"hidden": (16,), "lr": 3e-3, "batch_size": 256, "max_epochs": 20, "patience": 3}


def test_a_given_grid_is_searched_and_the_better_validation_point_is_chosen(planted, tmp_path):
    """Two MLP points, the poor one first: the choice is the point with the higher validation score, the same score
    each point gets when fitted alone (the reference), and harness.json records the grid and the chosen point."""
    kw = dict(concepts=["flag"], baselines=False, control=False, mdl=False, n_boot=20, progress=False)
    st, schema, key = planted.store, planted.schema, ("mlp", "signal", "flag")
    res = run_harness(st, schema, ["mlp"], ["signal"], grids={"mlp": [BAD_MLP, GOOD_MLP]}, **kw)
    alone = [run_harness(st, schema, ["mlp"], ["signal"], grids={"mlp": [p]}, **kw).val_scores[key] for p in (BAD_MLP, GOOD_MLP)]
    assert alone[1] > alone[0] + 0.1
    assert res.hparams[key] == GOOD_MLP and res.val_scores[key] == max(alone)
    import json

    saved = json.loads((res.save(tmp_path / "probes") / "harness.json").read_text())
    assert saved["settings"]["grids"]["mlp"] == [{**p, "hidden": list(p["hidden"])} for p in (BAD_MLP, GOOD_MLP)]
    assert saved["hparams"]["mlp/signal/flag"]["hidden"] == [16]
    with pytest.raises(ProbeError, match=r"grid point 0 of method 'mlp' has unknown hyperparameter\(s\) \['hiden'\]"):
        run_harness(st, schema, ["mlp"], ["signal"], grids={"mlp": [{"hiden": (8,)}]}, **kw)


def test_baseline_skips_are_listed_under_their_own_row_names(planted, tmp_path):
    """A concept too rare for a capped method's subsample is skipped by the main fit AND by that method's baselines:
    each skip under its own row name (a random-model skip used to overwrite the main fit's key, same site)."""
    st = planted.store
    concepts = {s: {n: np.array(v) for n, v in st.concepts(s).items()} for s in st.splits}
    concepts["train"]["flag"] = np.zeros_like(concepts["train"]["flag"])
    concepts["train"]["flag"][0] = 1  # one positive row: the concept varies, a 50-row subsample misses it
    rare = LatentStore.from_arrays(
        tmp_path / "rare", schema=planted.schema, concepts=concepts,
        sites={s: {n: np.array(st.site(s, n)) for n in st.site_names} for s in st.splits},
        episodes={s: np.array(st.episodes(s)) for s in st.splits}, obs={s: np.array(st.obs(s)) for s in st.splits})
    res = run_harness(rare, planted.schema, ["sparse"], ["signal"], concepts=["flag", "level"], random_store=rare,
                      max_train_rows={"sparse": 50}, control=False, mdl=False, n_boot=20, progress=False)
    why = "one class in the subsampled training rows"
    assert {k: v for k, v in res.skipped.items() if k.endswith("/flag")} == {
        "sparse/signal/flag": why, "random_model:sparse/signal/flag": why, "observation:sparse/obs/flag": why}
    assert ("sparse", "signal", "level") in res.fitted
