"""Probe base: input validation, save/load round trips and refusals, moving, the registry."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch

from probes.base import Probe, ProbeError
from probes.linear import LinearFitter, LinearProbe
from probes.mlp import MLPProbe
from probes.normalize import Normalizer, NormalizerFitter
from probes.registry import make_fitter, method_names
from worlds.concepts import Concept
from worlds.errors import OntolabError

torch.set_num_threads(1)
BIN = Concept("door_open", "binary", "the door is open")
CAT = Concept("room", "categorical", "which room the agent is in", classes=("a", "b", "c"))
SCA = Concept("dist", "scalar", "distance to the goal", unit="cells", low=-50.0, high=50.0)
FAST = {"linear": {}, "sparse": {"l1": 1e-2}, "mlp": {"hidden": (8,), "max_epochs": 5},
        "sae": {"n_features": 8, "epochs": 2}}


def data(concept: Concept, n: int = 300, d: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g) * 2 + 1
    s = x @ torch.randn(d, 3, generator=g)
    if concept.kind == "binary":
        y = (s[:, 0] > s[:, 0].median()).to(torch.int64)
    elif concept.kind == "categorical":
        y = s.argmax(1)
    else:
        y = s[:, 0].clamp(-50, 50)
    return x, y


@pytest.mark.parametrize("x_bad, y_bad, match", [
    (lambda x: x[:-1], lambda y: y, "same length, got 300 labels for 299 latents"),
    (lambda x: x.index_put((torch.tensor([3]), torch.tensor([1])), torch.tensor(float("nan"))), lambda y: y, "finite"),
    (lambda x: x.index_put((torch.tensor([3]), torch.tensor([1])), torch.tensor(float("inf"))), lambda y: y, "finite"),
    (lambda x: x, lambda y: torch.zeros_like(y), "one class only"),
    (lambda x: x, lambda y: y + 1, r"integers in \[0, 2\), got values \[1.0, 2.0\]"),
    (lambda x: x, lambda y: y.to(torch.float32) * 0.5, r"integers in \[0, 2\)"),
    (lambda x: x[:, :, None], lambda y: y, r"shape \(n, d\)"),
    (lambda x: x, lambda y: y[:, None], r"shape \(n,\)"),
])
@pytest.mark.parametrize("method", ["linear", "mlp", "sae", "sparse"])
def test_bad_inputs_raise_one_line_probe_errors(method, x_bad, y_bad, match):
    x, y = data(BIN)
    with pytest.raises(ProbeError, match=match) as e:
        make_fitter(method, BIN, **FAST[method]).fit(x_bad(x), y_bad(y))
    assert isinstance(e.value, OntolabError) and isinstance(e.value, ValueError)
    assert "\n" not in str(e.value)


GRIDS = {"linear": [{"l2": 1.0}], "sparse": [{"l1_fraction": 0.1}], "mlp": [{"hidden": (8,), "max_epochs": 2}],
         "sae": [{"n_features": 8, "epochs": 1}]}
NAN = lambda x: x.index_put((torch.tensor([3]), torch.tensor([1])), torch.tensor(float("nan")))  # noqa: E731
BAD_GRID_INPUTS = {
    "length mismatch": (lambda x: x[:-1], lambda y: y, None, "same length, got 300 labels for 299 latents"),
    "constant labels": (lambda x: x, torch.zeros_like, None, "one class only"),
    "NaN training latents": (NAN, lambda y: y, None, "training latents must be finite, got NaN/inf in 1 of 300 rows"),
    "NaN validation latents": (lambda x: x, lambda y: y, "val", "validation latents must be finite"),
    "unknown concept": (lambda x: x, lambda y: y, "concept", r"no labels for concept\(s\) \['room'\]"),
}


@pytest.mark.parametrize("method", ["linear", "mlp", "sae", "sparse"])
@pytest.mark.parametrize("case", list(BAD_GRID_INPUTS))
def test_batched_grid_fits_validate_inputs_like_the_fitters(method, case):
    """probes.grids.fit_method (the harness's batched path) refuses what the fitters refuse, for every method.

    (The batched sparse fit used to run FISTA on NaN latents and die in ``linalg.eigh``.)"""
    from probes.grids import fit_method

    x_bad, y_bad, where, match = BAD_GRID_INPUTS[case]
    x, y = data(BIN)
    xv, yv = x.clone(), y.clone()
    concepts = [BIN]
    if where == "val":
        xv = NAN(xv)
    elif where == "concept":
        concepts = [BIN, CAT]
    with pytest.raises(ProbeError, match=match) as e:
        fit_method(method, x_bad(x), {BIN.name: y_bad(y)}, xv, {BIN.name: yv}, concepts, GRIDS[method])
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("method", ["linear", "mlp", "sae", "sparse"])
def test_an_unknown_concept_object_is_refused(method):
    with pytest.raises(ProbeError, match="concept must be a worlds.concepts.Concept, got str"):
        make_fitter(method, "door_open")


def test_class_and_scalar_label_checks():
    x, y = data(CAT)
    with pytest.raises(ProbeError, match=r"categorical concept 'room' must be integers in \[0, 3\)"):
        LinearFitter(CAT).fit(x, torch.where(y == 0, 5, y))
    with pytest.raises(ProbeError, match="one class only"):
        LinearFitter(CAT).fit(x, torch.ones_like(y))
    xs, ys = data(SCA)
    with pytest.raises(ProbeError, match=r"must lie in \[-50.0, 50.0\]"):
        LinearFitter(SCA).fit(xs, ys + 1000)
    with pytest.raises(ProbeError, match="constant"):
        LinearFitter(SCA).fit(xs, torch.full_like(ys, 2.0))
    with pytest.raises(ProbeError, match="must be finite"):
        LinearFitter(SCA).fit(xs, ys.index_put((torch.tensor([0]),), torch.tensor(float("nan"))))


def test_probe_refuses_latents_of_another_width_and_proba_of_scalars():
    x, y = data(BIN)
    p = LinearFitter(BIN).fit(x, y)
    with pytest.raises(ProbeError, match="must have 6 dims"):
        p.predict(x[:, :5])
    ps = LinearFitter(SCA).fit(*data(SCA))
    with pytest.raises(ProbeError, match="scalar, use predict"):
        ps.predict_proba(x)


@pytest.mark.parametrize("method", ["linear", "sparse", "mlp", "sae"])
@pytest.mark.parametrize("concept", [BIN, CAT, SCA], ids=lambda c: c.kind)
def test_save_load_round_trip_is_exact(tmp_path, method, concept):
    x, y = data(concept)
    p = make_fitter(method, concept, **FAST[method]).fit(x, y)
    path = tmp_path / "sub" / "p.safetensors"
    p.save(path)
    q = Probe.load(path)
    assert type(q) is type(p) and q.concept == concept and q.hparams == json.loads(json.dumps(p.hparams))
    assert torch.equal(q.score(x), p.score(x))
    assert torch.equal(q.predict(x), p.predict(x))
    assert torch.equal(q.norm.mean, p.norm.mean)
    if concept.kind != "scalar":
        assert torch.equal(q.predict_proba(x), p.predict_proba(x))
        assert p.predict_proba(x).shape == (x.shape[0], concept.num_classes)
    assert not list(tmp_path.glob("sub/.*")), "the temporary file was left behind"


def test_file_is_safetensors_with_a_json_header(tmp_path):
    p = LinearFitter(BIN).fit(*data(BIN))
    p.save(tmp_path / "p.safetensors")
    raw = (tmp_path / "p.safetensors").read_bytes()
    (hlen,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + hlen])
    meta = json.loads(header["__metadata__"]["ontolab_probe"])
    assert meta["method"] == "linear" and meta["concept"]["name"] == "door_open" and meta["hparams"]["l2"] == 1e-3
    assert {"weight", "bias", "norm.mean", "norm.std"} <= set(header)


def test_loading_the_wrong_method_or_a_corrupt_file_names_the_file(tmp_path):
    path = tmp_path / "lin.safetensors"
    LinearFitter(BIN).fit(*data(BIN)).save(path)
    with pytest.raises(ProbeError, match=rf"{path} holds a 'linear' probe, not a 'mlp' probe"):
        MLPProbe.load(path)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 5)
    with pytest.raises(ProbeError, match=rf"{bad} is not an ontolab probe file") as e:
        Probe.load(bad)
    assert "\n" not in str(e.value)
    trunc = tmp_path / "trunc.safetensors"
    trunc.write_bytes(path.read_bytes()[:-16])
    with pytest.raises(ProbeError, match=str(trunc)):
        Probe.load(trunc)
    with pytest.raises(ProbeError, match="no probe file at"):
        Probe.load(tmp_path / "missing.safetensors")


def test_to_changes_dtype_but_not_predictions():
    x, y = data(CAT)
    p = LinearFitter(CAT).fit(x, y)
    q = p.to("cpu", torch.float64)
    assert q.weight.dtype == torch.float64 and q.norm.std.dtype == torch.float64
    assert torch.allclose(q.predict_proba(x.double()), p.predict_proba(x).double(), atol=1e-5)
    assert p.weight.dtype == torch.float32  # frozen: the original is untouched


def test_registry_lists_methods_and_refuses_unknown_names():
    assert method_names() == ("linear", "mlp", "sae", "sparse")
    with pytest.raises(ProbeError, match="unknown probe method 'ridge'; known methods: linear, mlp, sae, sparse"):
        make_fitter("ridge", BIN)
    with pytest.raises(ProbeError, match=r"no hyperparameter\(s\) \['lambda_'\]; it accepts: l2"):
        make_fitter("linear", BIN, lambda_=1.0)


def test_streaming_normaliser_equals_batch_statistics():
    x = torch.randn(1000, 5, dtype=torch.float64) * 3 + 100
    f = NormalizerFitter(5, dtype=torch.float64)
    for chunk in x.split(137):
        f.update(chunk)
    s = f.finish()
    assert torch.allclose(s.mean, x.mean(0)) and torch.allclose(s.std, x.std(0, unbiased=False))
    ref = np.asarray(x).std(0)
    assert np.allclose(Normalizer.fit(x).std.numpy(), ref)


def test_streaming_update_finish_equals_fit():
    for concept in (BIN, SCA):
        x, y = data(concept)
        x, y = x.double(), y
        f = LinearFitter(concept, dtype=torch.float64)
        for xb, yb in zip(x.split(70), y.split(70)):
            f.update(xb, yb)
        a, b = f.finish(), LinearFitter(concept, dtype=torch.float64).fit(x, y)
        assert torch.allclose(a.norm.mean, b.norm.mean) and torch.allclose(a.norm.std, b.norm.std)
        assert torch.allclose(a.weight, b.weight, atol=1e-7) and torch.allclose(a.bias, b.bias, atol=1e-7)
        assert isinstance(a, LinearProbe)


@pytest.mark.parametrize("method", ["linear", "sparse", "mlp", "sae"])
@pytest.mark.parametrize("concept", [BIN, CAT, SCA], ids=lambda c: c.kind)
def test_score_folds_the_normalisation_and_still_refuses_non_finite_latents(method, concept):
    """``score(x)`` (normalisation folded into the first affine map) equals the method's map on the
    explicitly normalised latents, ``_score((x - mean) / std)``, and a NaN or inf latent row is refused
    by name although ``score`` no longer scans its input."""
    x, y = data(concept)
    p = make_fitter(method, concept, **FAST[method]).fit(x[:240], y[:240], x[240:], y[240:])
    x_new = torch.randn(50, x.shape[1], generator=torch.Generator().manual_seed(9)) * 3 + 2
    reference = p._score((x_new - p.norm.mean) / p.norm.std)
    torch.testing.assert_close(p.score(x_new), reference, rtol=1e-5, atol=1e-5)
    for bad in (float("nan"), float("inf")):
        x_bad = x_new.clone()
        x_bad[7, 2] = bad
        with pytest.raises(ProbeError, match="latents must be finite, got NaN/inf in 1 of 50 rows"):
            p.score(x_bad)


@pytest.mark.parametrize("method", ["linear", "mlp", "sae"])
def test_a_probe_first_scored_in_inference_mode_still_gives_gradients(method):
    """The folded map is cached on first use; made under ``torch.inference_mode`` (as a planner scores) it must
    not turn later gradients through ``score`` (the gradient edit of the causal checks) into an error."""
    x, y = data(BIN)
    p = make_fitter(method, BIN, **FAST[method]).fit(x[:240], y[:240], x[240:], y[240:])
    with torch.inference_mode():
        p.predict(x[:10])
    z = x[:10].clone().requires_grad_(True)
    p.score(z).sum().backward()
    assert z.grad is not None and bool(torch.isfinite(z.grad).all()) and float(z.grad.abs().sum()) > 0


def test_saturated_dimensions_keep_float32_logits_exact():
    """A dimension with a tiny training std and a non-zero mean (a saturated unit) made the folded bias cancel
    two large terms: logits off by 0.14. Such dims are centred instead; the logits match float64."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4000, 16, generator=g)
    x[:, :4] = 0.999 + 1e-5 * torch.randn(4000, 4, generator=g)  # |mean| / std ~ 1e5
    y = (x[:, 0] > 0.999).long()
    p = LinearFitter(BIN).fit(x[:3000], y[:3000])
    w, b = p.weight.double(), p.bias.double()
    reference = (((x[3000:].double() - p.norm.mean.double()) / p.norm.std.double()) @ w.T + b)[:, 0]
    assert float((p.score(x[3000:]).double() - reference).abs().max()) < 1e-4
