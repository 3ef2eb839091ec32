"""Probes fitted on posterior + imagined latents (probes.imagined) on a ring world whose answer is known.

Ring world: ``K`` cells, actions 0 stay / 1 right / 2 left, one-hot vector observations; ``home`` (the
agent is on cell 0) is rare, like the lava entries it stands in for. The model's posterior latent is the
one-hot cell; its imagination is exact in *position* but faded (``fade`` times the one-hot, plus a
constant): the rare concept's evidence shrinks in imagination, as the lavakeydoor model's lava does.
A probe fitted on posteriors alone then misses ``home`` in imagination; refitted on posterior + imagined
rows it reads both. The imagined rows themselves are checked against a brute-force enumeration.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from dynamics import ActionSpec, DynamicsModel, LatentState, LossOutput, ObsSpec
from probes import Ontology
from probes.base import ProbeError
from probes.consistency import imagination_consistency
from probes.extract import extract_latents
from probes.harness import run_harness
from probes.imagined import SUFFIX, fit_on_imagined, imagined_rows
from worlds import dataset
from worlds.concepts import Concept, ConceptSchema

torch.set_num_threads(1)
K = 6
SHIFT = np.array([0, 1, -1])
HOME = Concept("home", "binary", "The agent is on cell 0.")
POS = Concept("pos", "categorical", "Cell of the agent.", classes=tuple(f"c{i}" for i in range(K)))
EVEN = Concept("even", "binary", "The agent's cell index is even.")


class FadingModel(DynamicsModel):
    """Posterior = the one-hot cell; imagination = ``fade * one-hot(true cell) + (1 - fade) / K`` (exact for fade=1)."""

    def __init__(self, fade: float = 1.0):
        super().__init__()
        self.obs_spec, self.action_spec, self.fade = ObsSpec((K,), "vector"), ActionSpec(True, n=3), fade
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    @property
    def sites(self) -> dict[str, tuple[int, ...]]:
        return {"embed": (K,), "feat": (K,)}

    @property
    def hparams(self) -> dict[str, Any]:
        return {"fade": self.fade}

    def initial(self, batch_size: int) -> LatentState:
        return LatentState({"feat": torch.zeros(batch_size, K)})

    def observe(self, obs: Tensor, actions: Tensor, is_first: Tensor, *, sample: bool = False) -> LatentState:
        return LatentState({"embed": obs.float(), "feat": obs.float()})

    def imagine(self, state: LatentState, actions: Tensor, *, sample: bool = False) -> LatentState:
        pos = state["feat"].argmax(-1)
        steps = torch.as_tensor(SHIFT)[actions].cumsum(1)  # [b h]
        onehot = F.one_hot((pos[:, None] + steps) % K, K).float()
        return LatentState({"feat": self.fade * onehot + (1 - self.fade) / K})

    def loss(self, obs: Tensor, actions: Tensor, is_first: Tensor) -> LossOutput:
        raise NotImplementedError


@pytest.fixture(scope="module")
def ring(tmp_path_factory, ring_episodes):
    root = tmp_path_factory.mktemp("ring")
    with dataset.DatasetWriter(root / "data", world_name="ring", schema=ConceptSchema((POS, EVEN, HOME)),
                               obs_spec={"shape": [K], "dtype": "float32", "obs_kind": "vector"},
                               action_spec={"kind": "discrete", "n": 3}, families=["ring"],
                               split_fractions=(0.6, 0.2, 0.2)) as w:
        for e in ring_episodes(100, seed=0, lengths=(12, 20), k=K):
            w.add(e)
    return dataset.TrajectoryDataset.open(root / "data"), root


def harness_for(model, ds, root, name):
    store = extract_latents(model, ds, ["train", "val", "test"], ["embed", "feat"], root / name, progress=False)
    res = run_harness(store, ds.schema, ["linear"], ["feat"], concepts=["home"], n_boot=100, control=False, mdl=False,
                      baselines=False, grids={"linear": [{"l2": 1e-2}]}, progress=False)
    return store, res


def test_imagined_rows_are_every_future_step_of_every_anchor_with_its_label(ring_episodes):
    eps = ring_episodes(5, seed=1, lengths=(12, 20), k=K)
    im = imagined_rows(FadingModel(), eps, "feat", ["home", "pos"], horizon=4, stride=3, context=2)
    want = [(e, t, k) for k in range(1, 5) for e, ep in enumerate(eps) for t in range(1, len(ep) - 1, 3)
            if t + k <= len(ep) - 1]  # brute force: anchors t = 1, 4, ..., every k that stays inside the episode
    assert list(zip(im.episode, im.t, im.k)) == want
    truth = np.stack([eps[e].obs[t + k] for e, t, k in want])
    np.testing.assert_array_equal(im.x, truth)  # exact model: the imagined latent is the true future cell
    np.testing.assert_array_equal(im.labels["pos"], [eps[e].concepts["pos"][t + k] for e, t, k in want])
    assert {(e, len(eps[e]) - 1) for e, t, k in want if t + k == len(eps[e]) - 1}, "the last step is a target"


def test_refit_on_imagined_latents_reads_a_concept_that_fades_in_imagination(ring):
    ds, root = ring
    model = FadingModel(fade=0.2)
    store, res = harness_for(model, ds, root, "fading")
    onto = res.ontology
    before = {(r.split, r.metric): r.estimate for r in
              imagination_consistency(model, ds, {"home": onto["home"].probe}, "feat", method="linear", ks=(1, 5),
                                      n_boot=100)}
    fit = fit_on_imagined(model, ds, store, onto, {"home": {"l2": 1e-2}}, horizon=5, stride=1, ks=(1, 5), n_boot=100)
    after = {(r.split, r.metric): r.estimate for r in fit.rows if r.method == "linear" + SUFFIX and r.site == "feat"}
    assert before[("imagined_k1", "balanced_accuracy")] < 0.75  # the posterior probe misses faded home cells
    for k in (1, 5):
        assert after[(f"imagined_k{k}", "balanced_accuracy")] > 0.95
    assert after[("test", "balanced_accuracy")] > 0.95  # and still reads the posterior latents
    e = fit.ontology["home"]
    assert (e.method, e.site, e.probe.hparams["l2"]) == ("linear", "feat", 1e-2)  # the harness's grid point, refitted
    assert fit.info["rows"]["feat/train"]["imagined"] > 0
    fit.ontology.save(root / "o")  # the refit round-trips like any ontology
    again = Ontology.load(root / "o")
    x = torch.eye(K)
    assert torch.equal(again["home"].probe.predict_proba(x), e.probe.predict_proba(x))


def test_exact_imagination_changes_nothing_the_probe_can_see(ring):
    ds, root = ring
    model = FadingModel(fade=1.0)  # imagined rows are copies of posterior ones: the refit reads as well as the original
    store, res = harness_for(model, ds, root, "exact")
    fit = fit_on_imagined(model, ds, store, res.ontology, {"home": {"l2": 1e-2}}, horizon=3, ks=(1,), n_boot=100)
    got = {(r.split, r.metric): r.estimate for r in fit.rows}
    assert got[("test", "balanced_accuracy")] == got[("imagined_k1", "balanced_accuracy")] == 1.0


def test_what_cannot_be_refitted_is_skipped_with_the_reason_and_bad_inputs_refused(ring, ring_episodes):
    ds, root = ring
    model = FadingModel()
    store, res = harness_for(model, ds, root, "skips")
    e = res.ontology["home"]
    on_embed = Ontology({"home": type(e)(e.concept, "linear", "embed", e.site_shape, e.probe, e.val_metric, e.val_score)})
    fit = fit_on_imagined(model, ds, store, on_embed, {"home": {"l2": 1e-2}}, horizon=2, ks=(1,), n_boot=50)
    assert len(fit.ontology) == 0 and "not produced by imagine" in fit.skipped["imagined_fit:home"]
    as_sae = Ontology({"home": type(e)(e.concept, "sae", "feat", e.site_shape, e.probe, e.val_metric, e.val_score)})
    fit = fit_on_imagined(model, ds, store, as_sae, {"home": {}}, horizon=2, ks=(1,), n_boot=50)
    assert "not refitted" in fit.skipped["imagined_fit:home"]
    with pytest.raises(ProbeError, match="grid_points has no hyperparameters for concept 'home'"):
        fit_on_imagined(model, ds, store, res.ontology, {}, horizon=2)
    with pytest.raises(ProbeError, match="horizon must be >= 1"):
        imagined_rows(model, ring_episodes(2, seed=3, k=K), "feat", ["home"], horizon=0)
    with pytest.raises(ProbeError, match="unknown concept 'nope'"):
        imagined_rows(model, ring_episodes(2, seed=3, k=K), "feat", ["nope"], horizon=2)

