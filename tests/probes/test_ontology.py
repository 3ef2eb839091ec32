"""The fitted Ontology: batched resolve equals the probes, save/load round trip, selection rule, clear errors."""

from __future__ import annotations

import math

import pytest
import torch

from dynamics.base import LatentState
from probes.base import ProbeError
from probes.harness import run_harness
from probes.ontology import Ontology, select_ontology


@pytest.fixture(scope="module")
def onto(planted) -> Ontology:
    res = run_harness(planted.store, planted.schema, ["linear"], ["signal", "noise"], n_boot=20, baselines=False,
                      control=False, mdl=False, progress=False)
    return res.ontology


def _state(b: int = 3, h: int = 5, d: int = 12, seed: int = 0) -> LatentState:
    g = torch.Generator().manual_seed(seed)
    return LatentState({"signal": 3 * torch.randn(b, h, d, generator=g), "noise": torch.randn(b, h, d, generator=g)})


def test_resolve_on_b_h_d_matches_the_probes(onto):
    state = _state()
    flat = state["signal"].reshape(15, 12)
    for name in ("flag", "room", "level"):
        probe = onto[name].probe
        assert onto[name].site == "signal"
        v = onto.resolve(state, name, "value")
        assert v.shape == (3, 5)
        torch.testing.assert_close(v.reshape(15), probe.predict(flat))
    torch.testing.assert_close(onto.resolve(state, "flag", "prob").reshape(15), onto["flag"].probe.predict_proba(flat)[:, 1])
    p = onto.resolve(state, "room", "prob")
    assert p.shape == (3, 5, 3)
    torch.testing.assert_close(p.reshape(15, 3), onto["room"].probe.predict_proba(flat))
    torch.testing.assert_close(p.sum(-1), torch.ones(3, 5))
    assert onto.resolve(state.at((0, 0)), "flag", "value").shape == ()  # a single state [d]


def test_resolver_has_the_rewards_signature(onto):
    state = _state()
    resolve = onto.resolver(state)
    torch.testing.assert_close(resolve("flag", "prob"), onto.resolve(state, "flag", "prob"))


def test_resolve_is_differentiable_in_the_latents(onto):
    x = _state()["signal"].requires_grad_(True)
    onto.resolve(LatentState({"signal": x}), "flag", "prob").sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_save_load_round_trip_gives_identical_outputs(onto, tmp_path):
    path = onto.save(tmp_path / "onto")
    back = Ontology.load(path)
    assert back.concepts == onto.concepts and back.summary() == onto.summary()
    state = _state(seed=1)
    for name in onto.concepts:
        assert back[name].val_score == onto[name].val_score and back[name].rule == onto[name].rule
        assert torch.equal(back.resolve(state, name, "value"), onto.resolve(state, name, "value"))
    assert torch.equal(back.resolve(state, "room", "prob"), onto.resolve(state, "room", "prob"))
    onto.save(tmp_path / "onto")  # overwriting an existing ontology folder works
    assert sorted(p.name for p in tmp_path.iterdir()) == ["onto"]


def test_to_float64_keeps_predictions(onto):
    state = _state().to(dtype=torch.float64)
    o64 = onto.to("cpu", torch.float64)
    assert o64["flag"].probe.norm.mean.dtype == torch.float64
    torch.testing.assert_close(o64.resolve(state, "flag", "prob").float(), onto.resolve(state.to(dtype=torch.float32), "flag", "prob"),
                               atol=1e-5, rtol=1e-5)


def test_summary_names_method_and_site(onto):
    assert onto.summary() == {n: {"method": "linear", "site": "signal"} for n in ("flag", "level", "room")}


def test_bad_inputs_give_clear_errors(onto):
    state = _state()
    with pytest.raises(ProbeError, match="unknown concept 'door'.*flag, level, room"):
        onto.resolve(state, "door", "value")
    with pytest.raises(ProbeError, match="mode must be one of"):
        onto.resolve(state, "flag", "logit")
    with pytest.raises(ProbeError, match="scalar and has no probability"):
        onto.resolve(state, "level", "prob")
    with pytest.raises(ProbeError, match="site 'signal', but the state has: noise"):
        onto.resolve(LatentState({"noise": state["noise"]}), "flag", "value")
    with pytest.raises(ProbeError, match=r"feature shape \(12,\)"):
        onto.resolve(LatentState({"signal": torch.zeros(2, 7)}), "flag", "value")


def test_selection_rule_prefers_score_then_simpler_method_then_earlier_site(onto):
    p = onto["flag"].probe
    c = p.concept
    shapes = {"a": (12,), "b": (12,)}
    pick = lambda cands: select_ontology(cands, [c], shapes, ["a", "b"])["flag"]  # noqa: E731
    assert (pick({("mlp", "a", "flag"): (p, 0.9), ("linear", "b", "flag"): (p, 0.8)}).method) == "mlp"
    tie = pick({("mlp", "a", "flag"): (p, 0.9), ("linear", "b", "flag"): (p, 0.9), ("sae", "a", "flag"): (p, 0.9)})
    assert (tie.method, tie.site) == ("linear", "b")
    assert pick({("linear", "b", "flag"): (p, 0.7), ("linear", "a", "flag"): (p, 0.7)}).site == "a"
    assert pick({("linear", "a", "flag"): (p, math.nan), ("mlp", "b", "flag"): (p, 0.6)}).method == "mlp"
    assert "flag" not in select_ontology({}, [c], shapes, ["a"])
