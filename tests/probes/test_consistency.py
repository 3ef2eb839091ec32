"""Imagination and state consistency (probes.consistency) against worlds whose answer is known.

A ring world: ``K`` cells, actions 0 stay / 1 right / 2 left, one-hot vector observations. The oracle
model's latent *is* the true state and it imagines exactly, so a probe reading it is right at every
horizon; a model that imagines garbage leaves the probe at chance. State agreement is checked
against a brute-force enumeration of cross-episode pairs.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

import worlds
from dynamics import ActionSpec, DynamicsModel, LatentState, LossOutput, ObsSpec, build_model
from probes.base import ProbeError
from probes.consistency import (StateAgreement, imagination_consistency, imagine_latents, state_agreement,
                                state_consistency, state_keys)
from probes.linear import LinearFitter, LinearProbe
from probes.normalize import Normalizer
from probes.stats import draw_counts, group_codes, resample_values
from worlds.collect import collect
from worlds.concepts import Concept
from worlds.dataset.reader import TrajectoryDataset
from worlds.policies import RandomPolicy
from worlds.trajectory import Episode

torch.set_num_threads(1)
K = 4
SHIFT = np.array([0, 1, -1])
POS = Concept("pos", "categorical", "Cell of the agent.", classes=tuple(f"c{i}" for i in range(K)))
EVEN = Concept("even", "binary", "The agent's cell index is even.")


class OracleModel(DynamicsModel):
    """Latent = the one-hot cell (plus ``extra`` history-dependent dims); imagination is exact."""

    def __init__(self, extra: int = 0):
        super().__init__()
        self.obs_spec, self.action_spec, self.extra = ObsSpec((K,), "vector"), ActionSpec(True, n=3), extra
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    @property
    def sites(self) -> dict[str, tuple[int, ...]]:
        return {"embed": (K,), "feat": (K + self.extra,)}

    @property
    def hparams(self) -> dict[str, Any]:
        return {}

    def initial(self, batch_size: int) -> LatentState:
        return LatentState({"feat": torch.zeros(batch_size, K + self.extra)})

    def _history(self, actions: Tensor) -> Tensor:
        """``[b t extra]``: parity of the number of 'stay' actions so far -- history, not state."""
        return ((actions == 0).cumsum(1) % 2).float().unsqueeze(-1).expand(*actions.shape, self.extra)

    def observe(self, obs: Tensor, actions: Tensor, is_first: Tensor, *, sample: bool = False) -> LatentState:
        return LatentState({"embed": obs.float(), "feat": torch.cat([obs.float(), self._history(actions)], -1)})

    def imagine(self, state: LatentState, actions: Tensor, *, sample: bool = False) -> LatentState:
        pos = state["feat"][:, :K].argmax(-1)
        steps = torch.as_tensor(SHIFT)[actions].cumsum(1)                     # [b h]
        onehot = F.one_hot((pos[:, None] + steps) % K, K).float()
        return LatentState({"feat": torch.cat([onehot, self._history(actions)], -1)})

    def loss(self, obs: Tensor, actions: Tensor, is_first: Tensor) -> LossOutput:
        raise NotImplementedError


class GarbageModel(OracleModel):
    """Observes exactly, imagines a random cell."""

    def imagine(self, state: LatentState, actions: Tensor, *, sample: bool = False) -> LatentState:
        g = torch.Generator().manual_seed(int(actions.sum()))
        return LatentState({"feat": F.one_hot(torch.randint(0, K, actions.shape, generator=g), K).float()})


def fitted_probes(model: OracleModel, episodes: list[Episode]) -> dict[str, LinearProbe]:
    x = torch.cat([model.observe(*(torch.from_numpy(getattr(e, f))[None] for f in ("obs", "actions", "is_first")))["feat"][0]
                   for e in episodes])
    return {c.name: LinearFitter(c, l2=1e-2).fit(x, np.concatenate([e.concepts[c.name] for e in episodes]))
            for c in (POS, EVEN)}


def by(rows, **kw):
    return {(r.split, r.metric): r for r in rows if all(getattr(r, k) == v for k, v in kw.items())}


# ------------------------------------------------------------------------------ imagination consistency
def test_imagined_latents_are_the_true_future_states_for_an_exact_model(ring_episodes):
    eps = ring_episodes(6, seed=1)
    im = imagine_latents(OracleModel(), eps, "feat", ks=(1, 5, 15), context=3, stride=2)
    for k in (1, 5, 15):  # an off-by-one in the replayed actions would break this
        a = im.anchors[k]
        # every anchor t = 2, 4, ... with t + k <= last step, and no other: brute-force reference
        want = [(e, t) for e, ep in enumerate(eps) for t in range(2, len(ep), 2) if t + k <= len(ep) - 1]
        assert [tuple(r) for r in a] == want
        truth = np.stack([eps[e].obs[t + k] for e, t in a])
        np.testing.assert_array_equal(im.latents[k].numpy(), truth)
    # the last step of an episode is a target for each k whose anchor grid reaches it (terminal events count)
    last = {(e, len(ep) - 1) for e, ep in enumerate(eps)}
    for k in (1, 5, 15):
        hits = {(e, t + k) for e, t in im.anchors[k]} & last
        assert hits == {(e, n) for e, n in last if (n - k - 2) % 2 == 0 and n - k >= 2}


def test_exact_imagination_scores_one_and_garbage_scores_chance(ring_episodes):
    train, test = ring_episodes(10, seed=2), ring_episodes(30, seed=3, lengths=(25, 40))
    probes = fitted_probes(OracleModel(), train)
    rows = imagination_consistency(OracleModel(), test, probes, "feat", method="linear", n_boot=200)
    assert {r.split for r in rows} == {"imagined_k1", "imagined_k5", "imagined_k15"}
    for concept in ("pos", "even"):
        exact = by(rows, concept=concept)
        for k in (1, 5, 15):
            assert exact[(f"imagined_k{k}", "balanced_accuracy")].estimate == 1.0
            assert exact[(f"imagined_k{k}", "auroc")].estimate == 1.0
    garbage = imagination_consistency(GarbageModel(), test, probes, "feat", method="linear", n_boot=200)
    for concept, chance in (("pos", 1 / K), ("even", 0.5)):
        for k in (1, 5, 15):
            acc = by(garbage, concept=concept)[(f"imagined_k{k}", "balanced_accuracy")]
            assert abs(acc.estimate - chance) < 0.07 and acc.ci_low < chance + 0.02
            assert abs(by(garbage, concept=concept)[(f"imagined_k{k}", "auroc")].estimate - 0.5) < 0.07


def test_imagination_bad_inputs(ring_episodes):
    eps, probes = ring_episodes(3, seed=4, lengths=(10, 12)), {}
    with pytest.raises(ProbeError, match="no episode has context"):
        imagine_latents(OracleModel(), eps, "feat", ks=(15,))
    with pytest.raises(ProbeError, match="unknown site 'deter'"):
        imagine_latents(OracleModel(), eps, "deter", ks=(1,))
    with pytest.raises(ProbeError, match="reads an observation"):
        imagine_latents(OracleModel(), eps, "embed", ks=(1,))
    with pytest.raises(ProbeError, match="no results split"):
        imagination_consistency(OracleModel(), eps, probes, "feat", method="linear", ks=(2,))
    with pytest.raises(ProbeError, match="unknown concept 'nope'"):
        imagination_consistency(OracleModel(), eps, {"nope": None}, "feat", method="linear", ks=(1,))


# ------------------------------------------------------------------------------------ state consistency
def brute_agreement(pred: np.ndarray, keys: np.ndarray, eps: np.ndarray, kind: str) -> float:
    """Reference: enumerate every cross-episode pair of every state."""
    vals, rows = [], []
    for s in np.unique(keys):
        idx = np.flatnonzero(keys == s)
        pairs = [(i, j) for i, j in itertools.combinations(idx, 2) if eps[i] != eps[j]]
        if pairs:
            vals.append(np.mean([(pred[i] - pred[j]) ** 2 / 2 if kind == "scalar" else pred[i] == pred[j] for i, j in pairs]))
            rows += list(idx)
    return 1 - np.mean(vals) / np.var(pred[rows]) if kind == "scalar" else float(np.mean(vals))


@pytest.mark.parametrize("kind", ["binary", "categorical", "scalar"])
def test_state_agreement_matches_pair_enumeration_and_its_bootstrap_path(kind):
    rng = np.random.default_rng(0)
    n = 300
    keys, eps = rng.integers(0, 20, n), rng.integers(0, 15, n)
    pred = rng.normal(size=n) + 0.3 * keys if kind == "scalar" else rng.integers(0, 2 if kind == "binary" else 4, n)
    metric = StateAgreement(kind)
    assert metric(pred, keys, eps) == pytest.approx(brute_agreement(pred, keys, eps, kind), abs=1e-12)
    codes, g = group_codes(eps, n)
    counts = draw_counts(g, 30, seed=1)  # resampled episodes: batched sums == recomputing on gathered rows
    np.testing.assert_allclose(metric.batched(counts, codes, pred, keys, eps),
                               resample_values(lambda *a: metric(*a), [pred, keys, eps], codes, counts), atol=1e-12)


def test_state_agreement_is_one_for_the_true_state_and_lower_for_history_noise():
    rng = np.random.default_rng(1)
    keys, eps = rng.integers(0, 10, 400), rng.integers(0, 40, 400)
    exact = state_agreement(keys % 3, keys, eps, kind="categorical", n_boot=200)
    assert (exact.estimate, exact.lower, exact.upper) == (1.0, 1.0, 1.0) and exact.count == 10
    noise = state_agreement(rng.integers(0, 2, 400), keys, eps, kind="binary", n_boot=200)
    assert noise.contains(0.5) and noise.upper < 0.6
    scalar = state_agreement(keys * 0.5, keys, eps, kind="scalar", n_boot=200)
    assert scalar.estimate == pytest.approx(1.0)
    assert abs(state_agreement(rng.normal(size=400), keys, eps, kind="scalar", n_boot=200).estimate) < 0.15
    with pytest.raises(ProbeError, match="two different episodes"):
        state_agreement(keys, np.arange(400), eps, kind="binary")


def test_state_keys_group_equal_concept_tuples():
    keys = state_keys({"a": np.array([0, 0, 1, 1]), "b": np.array([0.1001, 0.1, 0.1, 0.2])}, decimals=3)
    assert keys[0] == keys[1] != keys[2] != keys[3]
    with pytest.raises(ProbeError, match="unknown"):
        state_keys({"a": np.zeros(3)}, names=["b"])


def test_state_consistency_rows_for_a_state_probe_and_a_history_probe(ring_episodes):
    eps = ring_episodes(12, seed=5)
    eye = Normalizer(torch.zeros(K + 1), torch.ones(K + 1))
    reads_state = LinearProbe(EVEN, eye, {}, torch.tensor([[1.0, -1.0, 1.0, -1.0, 0.0]]), torch.zeros(1))
    reads_history = LinearProbe(EVEN, eye, {}, torch.tensor([[0.0, 0.0, 0.0, 0.0, 1.0]]), torch.tensor([-0.5]))
    rows = {}
    for name, probe in (("state", reads_state), ("history", reads_history)):
        (row,) = state_consistency(OracleModel(extra=1), eps, {"even": probe}, "feat", method=name, n_boot=200)
        assert (row.split, row.metric, row.concept) == ("test", "state_consistency", "even")
        rows[name] = row
    assert rows["state"].estimate == 1.0
    assert rows["history"].ci_high < 0.75 and abs(rows["history"].estimate - 0.5) < 0.15


# --------------------------------------------------------------------------------- smoke: a real RSSM
@pytest.fixture(scope="module")
def lavakeydoor(tmp_path_factory):
    """A tiny random-play lavakeydoor dataset and an untrained tiny RSSM for it."""
    path = tmp_path_factory.mktemp("lkd") / "ds"
    with pytest.warns(UserWarning, match="under 1.0%"):  # random play rarely opens the door: expected here
        collect(worlds.make_world("lavakeydoor", num_envs=4, seed=0, max_steps=30), RandomPolicy(), 12, path, seed=0,
                progress=False)
    ds = TrajectoryDataset.open(path)
    torch.manual_seed(0)
    model = build_model("rssm", ObsSpec.from_manifest(ds.obs_spec), ActionSpec.from_manifest(ds.action_spec),
                        deter=16, stoch=4, classes=4, hidden=16, embed=16)
    yield ds, model
    ds.close()


def test_smoke_rssm_on_lavakeydoor(lavakeydoor):
    ds, model = lavakeydoor
    d = model.sites["feat"][0]
    probe = LinearProbe(ds.schema["has_key"], Normalizer(torch.zeros(d), torch.ones(d)), {}, torch.randn(1, d),
                        torch.zeros(1))
    rows = imagination_consistency(model, ds, {"has_key": probe}, "feat", method="linear", ks=(1, 5), split="train",
                                   n_boot=50)
    assert {r.split for r in rows} == {"imagined_k1", "imagined_k5"}
    assert all(np.isnan(r.estimate) or 0 <= r.estimate <= 1 for r in rows)
    with pytest.raises(ProbeError, match="'test' or 'ood'"):
        state_consistency(model, ds, {"has_key": probe}, "feat", method="linear", split="train")
    eps = [ds.episode(int(i)) for i in ds.episode_ids("train")]
    with pytest.raises(ProbeError, match="two different episodes"):  # every concept: no state recurs in 12 episodes
        state_consistency(model, eps, {"has_key": probe}, "feat", method="linear")
    (row,) = state_consistency(model, eps, {"has_key": probe}, "feat", method="linear", n_boot=50,
                               key_concepts=("has_key", "door_open", "key_visible", "door_visible"))
    assert 0 <= row.estimate <= 1 and row.ci_low <= row.ci_high
    with pytest.raises(ProbeError, match="reads an observation"):
        imagine_latents(model, ds, "embed", split="train", ks=(1,))
