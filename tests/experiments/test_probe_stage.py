"""The probe stage on a tiny run: one ontology per method (for the planners), and the model-based checks
(state consistency, causal sufficiency and necessity) as rows of results.csv, with reasons when skipped."""

from __future__ import annotations

import json
import warnings
from itertools import combinations

import numpy as np
import pytest
import torch

from dynamics import build_model
from dynamics.training.checkpoint import META_KEY, AtomicCheckpointIO, model_meta
from experiments.schema import resolve
from experiments.stages.plan import run_plan
from experiments.stages.probe import PROBE_JUDGED, SUFFICIENCY_K, _model_checks, imagination_probes, imagination_rows, run_probe
from probes import Ontology, causal_sufficiency, imagination_consistency
from probes.consistency import as_episodes
from probes.extract import LatentStore
from probes.imagined import LABEL as IMAGINED_LABEL
from probes.results import read_results_csv
from worlds import TrajectoryDataset, collect, make_policy, make_world

HIDDEN = 16
METHODS = ("linear", "sparse")
CONCEPTS = ("has_key", "door_open", "in_lava", "steps_to_goal")
MODEL = ["world=lavakeydoor", "world.size=7", "dynamics=gru", f"dynamics.hparams.deter={HIDDEN}",
         f"dynamics.hparams.hidden={HIDDEN}", f"dynamics.hparams.embed={HIDDEN}", "wandb.mode=disabled"]
PROBES = [*MODEL, f"probes.methods=[{','.join(METHODS)}]", "probes.sites=[deter]", "probes.n_boot=30",
          "probes.mdl=false", "probes.control=false", "probes.imagination=false", "probes.causal_stride=2",
          f"probes.concepts=[{','.join(CONCEPTS)}]"]
CHECK_METRICS = ("state_consistency", "causal_sufficiency", "causal_sufficiency_null", *PROBE_JUDGED,
                 "causal_necessity", "causal_necessity_null")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A tiny lavakeydoor dataset (``root/ds``) and an untrained GRU saved as `ontolab train` does (``root/train``)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("probe_stage")
    world = make_world("lavakeydoor", num_envs=8, seed=0, size=7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rare-concept warning: expected on a dataset this small
        collect(world, make_policy("mixture", epsilon=0.3), 80, root / "ds", seed=0, ood_episodes=0,
                progress=False, split_fractions=(0.4, 0.2, 0.4))  # enough test episodes to revisit states
    ds = TrajectoryDataset.open(root / "ds")
    torch.manual_seed(0)
    model = build_model("gru", {"shape": ds.obs_spec["shape"], "kind": ds.obs_spec["obs_kind"]},
                        {"discrete": True, "n": ds.action_spec["n"]}, deter=HIDDEN, hidden=HIDDEN, embed=HIDDEN)
    ckpt = {"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, META_KEY: model_meta(model),
            "global_step": 0}
    AtomicCheckpointIO().save_checkpoint(ckpt, root / "train" / "checkpoints" / "last.ckpt")
    return root, ds


@pytest.fixture(scope="module")
def staged(inputs):
    """The probe stage on :func:`inputs`."""
    root, ds = inputs
    cfg = resolve(PROBES)
    res = run_probe(cfg, root / "ds", root / "train", root / "probes", progress=False)
    return root, ds, cfg, res


def test_one_ontology_folder_per_method_each_the_methods_validation_argmax(staged):
    """(The site choice among several sites is tested on planted latents in tests/probes/test_harness.py.)"""
    root, _, cfg, res = staged
    folders = root / "probes" / "ontologies"
    assert sorted(p.name for p in folders.iterdir()) == sorted([*METHODS, IMAGINED_LABEL])
    chosen = Ontology.load(root / "probes" / "ontology")
    for m in METHODS:
        onto = Ontology.load(folders / m)
        assert set(onto) == set(chosen)  # every fitted concept, read by this method
        for name in onto:
            e = onto[name]
            assert e.method == m and e.probe.method == m
            scores = {s: res.val_scores[(m, s, name)] for s in cfg.probes.sites}
            best = max(scores.values())
            # the same rule as the chosen ontology: highest validation score, ties to the earlier site
            assert e.site == next(s for s in cfg.probes.sites if scores[s] >= best - 1e-9)
            assert e.val_score == pytest.approx(best)
    # the chosen ontology is, per concept, one of the per-method entries
    for name in chosen:
        e = chosen[name]
        assert Ontology.load(folders / e.method)[name].site == e.site
    summary = json.loads((root / "probes" / "harness.json").read_text())["ontologies"]
    assert set(summary) == set(METHODS)


def test_the_chosen_probes_are_refitted_on_imagined_latents_and_scored_beside_the_originals(staged):
    root, _, _, res = staged
    chosen = Ontology.load(root / "probes" / "ontology")
    refit = Ontology.load(root / "probes" / "ontologies" / IMAGINED_LABEL)
    assert refit.summary() == chosen.summary()  # same method and site per concept, only the training rows differ
    for name in refit:
        assert refit[name].probe.hparams == chosen[name].probe.hparams
    rows = {(r.method, r.concept, r.split) for r in read_results_csv(root / "probes" / "results.csv")}
    for name in refit:
        m = refit[name].method
        assert {(m + "+imagined", name, "test"), (m + "+imagined", name, "imagined_k1")} <= rows
    saved = json.loads((root / "probes" / "harness.json").read_text())
    assert saved["ontology_imagined_fit"] == refit.summary()
    assert not any(k.startswith("imagined_fit:") for k in saved["skipped"])


def test_every_check_is_a_row_or_a_reason(staged):
    root, _, _, res = staged
    rows = read_results_csv(root / "probes" / "results.csv")
    hj = json.loads((root / "probes" / "harness.json").read_text())
    skipped, checks = hj["skipped"], hj["model_checks"]
    chosen = Ontology.load(root / "probes" / "ontology")
    by = {(r.concept, r.metric): r for r in rows if r.metric in CHECK_METRICS}
    for r in by.values():
        assert r.split == "test"
        e = chosen[r.concept]
        assert (r.method, r.site) == (e.method, e.site)
        assert r.ci_low - 1e-9 <= r.estimate <= r.ci_high + 1e-9 or np.isnan(r.estimate)
    for name in chosen:
        e = chosen[name]
        assert (name, "state_consistency") in by or f"state_consistency:{e.method}/{e.site}" in skipped
        if name == "has_key":  # the lavakeydoor scenario: judged on the decoded future
            assert ((name, "causal_sufficiency") in by and (name, "causal_sufficiency_null") in by
                    or f"causal_sufficiency:{name}" in skipped)
            if (name, "causal_sufficiency") in by:
                d = checks["causal_sufficiency"][name]
                assert d["criterion"] == "key_door" and d["num_anchors"] > 0
        elif e.concept.kind == "scalar":  # no class to flip
            assert name in skipped["causal_sufficiency"] and not {(name, "causal_sufficiency"), (name, PROBE_JUDGED[0])} & set(by)
        else:  # the weaker generic criterion, under its own metric names
            assert (name, "causal_sufficiency") not in by
            assert ((name, PROBE_JUDGED[0]) in by and (name, PROBE_JUDGED[1]) in by) or f"causal_sufficiency:{name}" in skipped
            if (name, PROBE_JUDGED[0]) in by:
                d = checks["causal_sufficiency"][name]
                assert d["criterion"] == f"probe_k{SUFFICIENCY_K}" and d["metrics"] == list(PROBE_JUDGED)
                assert by[(name, PROBE_JUDGED[0])].estimate == d["success"]["estimate"]
        # LEACE needs the labels only: every concept is erased, whatever its kind or probe
        assert (name, "causal_necessity") in by or f"causal_necessity:{name}" in skipped
        if (name, "causal_necessity") in by:
            assert checks["causal_necessity"][name]["rank"] == 1  # binary (one-hot of 2) and scalar: one direction
    assert "causal_necessity" not in skipped
    assert any(m == "state_consistency" for _, m in by) and any(m == "causal_necessity" for _, m in by)
    assert any(m == PROBE_JUDGED[0] for _, m in by)
    assert (("steps_to_goal", "causal_necessity") in by), skipped.get("causal_necessity:steps_to_goal")  # a scalar
    assert checks["settings"]["split"] == "test" and checks["seconds"] >= 0
    assert set(hj["timings"]) >= {"harness", "by_checkpoint", "imagined_fit", "model_checks"}


def test_the_probe_judged_criterion_is_causal_sufficiency_without_a_scenario(staged):
    """Reference: probes.causal.causal_sufficiency called directly (criterion probe_k5) gives the stage's numbers."""
    root, ds, cfg, _ = staged
    from dynamics.training import load_model

    rows = {(r.concept, r.metric): r for r in read_results_csv(root / "probes" / "results.csv")}
    chosen = Ontology.load(root / "probes" / "ontology")
    name = next(n for n in chosen if (n, PROBE_JUDGED[0]) in rows)
    e = chosen[name]
    model = load_model(root / "train" / "checkpoints" / "last.ckpt")
    eps = as_episodes(ds, "test")  # fewer test episodes than probes.checks_episodes: all of them
    assert len(eps) <= cfg.probes.checks_episodes
    r = causal_sufficiency(model, eps, e.probe, e.site, k=SUFFICIENCY_K, stride=cfg.probes.causal_stride,
                           edit="direction" if e.method in ("linear", "sparse") else "gradient",
                           n_boot=cfg.probes.n_boot, seed=cfg.seed)
    assert r.criterion == f"probe_k{SUFFICIENCY_K}"
    assert rows[(name, PROBE_JUDGED[0])].estimate == r.success.estimate
    assert rows[(name, PROBE_JUDGED[1])].estimate == r.null.estimate


def test_every_method_is_scored_on_imagined_latents_at_the_chosen_site(staged):
    """Every method's probe at each concept's chosen site (and at its own best site), from one rollout per site;
    reference: probes.imagination_consistency, one call per method and site."""
    root, ds, cfg, res = staged
    from dynamics.training import load_model

    model = load_model(root / "train" / "checkpoints" / "last.ckpt")
    probes = imagination_probes(res)
    for name in res.ontology:
        for m in METHODS:
            assert probes[res.ontology[name].site][m][name] is res.fitted[(m, res.ontology[name].site, name)]
            own = res.by_method[m][name].site
            assert probes[own][m][name] is res.fitted[(m, own, name)]
    rows, skipped = imagination_rows(model, ds, probes, set(model.initial(1).sites), n_boot=20, seed=0, stride=3,
                                     ks=(1, 5))
    assert not skipped
    got = {(r.method, r.site, r.concept, r.split, r.metric): r for r in rows}
    assert len(got) == len(rows)
    want = []
    for site, by_method in probes.items():
        for m, chosen in by_method.items():
            want += imagination_consistency(model, ds, chosen, site, method=m, ks=(1, 5), stride=3, n_boot=20, seed=0)
    want = {(r.method, r.site, r.concept, r.split, r.metric): r for r in want}
    assert set(want) == set(got)
    for k, r in want.items():  # NaN-aware (e.g. AUROC with one class at some k)
        np.testing.assert_array_equal([got[k].estimate, got[k].ci_low, got[k].ci_high], [r.estimate, r.ci_low, r.ci_high])
    assert {m for m, *_ in got} == set(METHODS)


def test_state_consistency_matches_a_brute_force_count_of_cross_episode_pairs(staged):
    """Independent reference: every cross-episode pair of test steps in one true state, counted one by one."""
    root, ds, _, _ = staged
    rows = {r.concept: r for r in read_results_csv(root / "probes" / "results.csv") if r.metric == "state_consistency"}
    store = LatentStore.open(root / "probes" / "latents")
    chosen = Ontology.load(root / "probes" / "ontology")
    truth = store.concepts("test")
    keys = [tuple(np.round(float(truth[c][i]), 3) for c in ds.schema.names) for i in range(store.n("test"))]
    episodes = np.asarray(store.episodes("test"))
    checked = 0
    for name, row in rows.items():
        e = chosen[name]
        if e.concept.kind != "binary":
            continue
        pred = e.probe.predict(torch.from_numpy(np.array(store.site("test", e.site)))).numpy()
        states: dict[tuple, list[int]] = {}
        for i, k in enumerate(keys):
            states.setdefault(k, []).append(i)
        per_state = []
        for idx in states.values():
            pairs = [(i, j) for i, j in combinations(idx, 2) if episodes[i] != episodes[j]]
            if pairs:
                per_state.append(np.mean([pred[i] == pred[j] for i, j in pairs]))
        assert row.estimate == pytest.approx(np.mean(per_state), abs=1e-9)
        checked += 1
    assert checked >= 1


def test_switches_turn_the_checks_off(staged, tmp_path):
    root, _, _, _ = staged
    cfg = resolve([*PROBES, "probes.state_consistency=false", "probes.causal=false", "probes.methods=[linear]",
                   "probes.imagined_fit=false"])
    res = run_probe(cfg, root / "ds", root / "train", tmp_path / "probes", progress=False)
    assert not [r for r in res.rows if r.metric in CHECK_METRICS or r.method.endswith("+imagined")]
    hj = json.loads((tmp_path / "probes" / "harness.json").read_text())
    assert hj["model_checks"] == {} and not any(k.startswith(("causal", "state_")) for k in hj["skipped"])
    assert [p.name for p in (tmp_path / "probes" / "ontologies").iterdir()] == ["linear"]
    assert hj["ontology_imagined_fit"] is None


def test_a_model_without_a_decoder_gets_reasons_not_rows(staged, monkeypatch):
    root, ds, cfg, _ = staged
    from dynamics.training import load_model

    model = load_model(root / "train" / "checkpoints" / "last.ckpt")
    monkeypatch.setattr(type(model), "can_decode", property(lambda self: False))
    chosen = Ontology.load(root / "probes" / "ontology")
    store = LatentStore.open(root / "probes" / "latents")
    rows, skipped, _ = _model_checks(cfg, model, ds, store, chosen)
    assert not [r for r in rows if r.metric.startswith("causal_necessity") or r.metric.startswith("causal_sufficiency_n")
                or r.metric == "causal_sufficiency"]
    assert all("cannot decode" in skipped[f"causal_necessity:{n}"] for n in chosen)
    if "has_key" in chosen:
        assert "cannot decode" in skipped["causal_sufficiency:has_key"]
    assert [r for r in rows if r.metric == "state_consistency"]  # needs no decoder
    assert [r for r in rows if r.metric == PROBE_JUDGED[0]]  # neither does the probe-judged criterion


def test_the_plan_stage_runs_one_learned_planner_per_method(staged, tmp_path):
    root, _, _, _ = staged
    cfg = resolve([*MODEL, "world.max_steps=10", "plan.planners=[discrete_cem]", "plan.episodes=2", "plan.num_envs=2",
                   "plan.horizon=3", "plan.samples=8", "plan.elites=2", "plan.iterations=1", "plan.n_boot=20",
                   "plan.reward=-0.1 * steps_to_goal - 10 * in_lava"])
    metrics = run_plan(cfg, root / "train", root / "probes", tmp_path / "planning", progress=False)
    learned = [r for r in metrics["rows"] if r["model"] == "learned" and r["reward"] == "latent"]
    labels = [r["probe_method"] for r in learned]
    assert len(learned) == 1 + len(METHODS) + 1, metrics["skipped"]  # chosen, one per method, the imagined refit
    assert {*METHODS, IMAGINED_LABEL} <= set(labels)
    # the refit's planner-induced shift is measured against the refit's own held-out rows, not the original's
    test_rows = {(r.method, r.concept, r.metric): r for r in read_results_csv(root / "probes" / "results.csv")
                 if r.split == "test"}
    refit_shift = [s for s in metrics["shift"] if s["probe_method"] == IMAGINED_LABEL and s["dataset_test"]]
    assert refit_shift
    for s in refit_shift:
        assert s["dataset_test"]["estimate"] == test_rows[(s["method"] + "+imagined", s["concept"], s["metric"])].estimate
    # with plan.per_method=false: the chosen ontology and its imagined refit, no per-method rows
    cfg = resolve([*MODEL, "world.max_steps=10", "plan.planners=[discrete_cem]", "plan.episodes=2", "plan.num_envs=2",
                   "plan.horizon=3", "plan.samples=8", "plan.elites=2", "plan.iterations=1", "plan.n_boot=20",
                   "plan.reward=-10 * in_lava", "plan.per_method=false", "plan.overoptimisation=false"])
    metrics = run_plan(cfg, root / "train", root / "probes", tmp_path / "planning2", progress=False)
    learned = [r["probe_method"] for r in metrics["rows"] if r["model"] == "learned"]
    assert len(learned) == 2 and learned[1] == IMAGINED_LABEL


def test_baselines_are_fitted_with_every_configured_method(staged):
    root, _, _, res = staged
    methods = {r.method for r in read_results_csv(root / "probes" / "results.csv")}
    assert {"observation", "random_model", "observation:sparse", "random_model:sparse"} <= methods
    assert json.loads((root / "probes" / "harness.json").read_text())["settings"]["baseline_methods"] == list(METHODS)


def test_baseline_methods_are_checked_at_start_up():
    from experiments.config import ConfigError

    assert resolve([*PROBES, "probes.baseline_methods=[linear]"]).probes.baseline_methods == ("linear",)
    assert resolve(PROBES).probes.baseline_methods is None
    with pytest.raises(ConfigError, match=r"probes.baseline_methods: unknown method\(s\) \['ridge'\]"):
        resolve([*PROBES, "probes.baseline_methods=[ridge]"])


BAD_MLP = {"hidden": [2], "lr": 1e-5, "max_epochs": 1, "patience": 1}
GOOD_MLP = {"hidden": [16], "max_epochs": 20}


def test_a_configured_grid_reaches_the_harness_and_the_better_validation_point_is_chosen(inputs, tmp_path):
    """probes.grids: two MLP points (the poor one first), each laid over the default point; harness.json records the
    completed grid and the chosen point, which is the one with the higher validation score fitted alone."""
    from probes import run_harness
    from probes.extract import extract_latents
    from probes.grids import DEFAULT_GRIDS

    root, ds = inputs
    off = ["probes.by_checkpoint=false", "probes.imagined_fit=false", "probes.state_consistency=false",
           "probes.causal=false", "probes.history=false", "probes.baseline_methods=[]", "probes.concepts=[agent_row]"]
    grid = "probes.grids={mlp: [" + ", ".join(json.dumps(p) for p in (BAD_MLP, GOOD_MLP)) + "]}"
    cfg = resolve([*PROBES, "probes.methods=[mlp]", *off, grid])
    run_probe(cfg, root / "ds", root / "train", tmp_path / "probes", progress=False)
    saved = json.loads((tmp_path / "probes" / "harness.json").read_text())
    default = {k: (list(v) if isinstance(v, tuple) else v) for k, v in DEFAULT_GRIDS["mlp"][0].items()}
    points = [{**default, **p} for p in (BAD_MLP, GOOD_MLP)]
    assert saved["settings"]["grids"]["mlp"] == points
    # reference: each completed point fitted alone on the stage's cached latents
    from dynamics.training import load_model

    model = load_model(root / "train" / "checkpoints" / "last.ckpt")
    store = extract_latents(model, ds, ["train", "val", "test"], ["deter"], tmp_path / "probes" / "latents", progress=False)
    alone = [run_harness(store, ds.schema, ["mlp"], ["deter"], concepts=["agent_row"], grids={"mlp": [p]}, baselines=False,
                         control=False, mdl=False, n_boot=20, progress=False).val_scores[("mlp", "deter", "agent_row")]
             for p in points]
    best = int(np.argmax(alone))
    assert best == 1 and alone[1] > alone[0] + 0.2  # the second point: a choice was made, not the first kept
    assert saved["hparams"]["mlp/deter/agent_row"] == points[best]
    assert saved["val_scores"]["mlp/deter/agent_row"] == pytest.approx(alone[best])
