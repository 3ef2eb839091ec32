"""SAE probe: recovers a planted sparse feature without labels, resolves its sign on labelled rows only."""

from __future__ import annotations

import torch
from sklearn.metrics import balanced_accuracy_score, r2_score

from probes.sae import SAEFitter, SAEProbeFitter
from worlds.concepts import Concept

torch.set_num_threads(1)
ON = Concept("torch_lit", "binary", "the torch is lit")
OFF = Concept("torch_dark", "binary", "the torch is dark")
MAG = Concept("brightness", "scalar", "how bright the torch is", low=0.0, high=10.0)
SAE = {"n_features": 16, "l1": 0.1, "epochs": 30, "lr": 1e-2, "seed": 0}
K = 3  # the planted feature the concepts read


def planted(n: int = 4000, d: int = 20, m: int = 8, seed: int = 0):
    """``x = codes @ dirs + noise``: ``m`` sparse non-negative features along random unit directions."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(m, d, generator=g)
    dirs = dirs / dirs.norm(dim=1, keepdim=True)
    on = torch.rand(n, m, generator=g) < 0.15
    codes = on * (1 + 2 * torch.rand(n, m, generator=g))
    x = codes @ dirs * 3 + 0.05 * torch.randn(n, d, generator=g) + 1
    return x, on[:, K].to(torch.int64), codes[:, K], dirs[K]


def bacc(p, x, y) -> float:
    return balanced_accuracy_score(y.numpy(), p.predict(x).numpy())


def test_sae_recovers_the_planted_feature_and_its_direction():
    x, y, _, direction = planted()
    p = SAEProbeFitter(ON, n_label=200, **SAE).fit(x[:3000], y[:3000])
    assert bacc(p, x[3000:], y[3000:]) > 0.95
    assert float(p.direction() @ direction) > 0.9  # unit vectors: cosine, and the sign points to "lit"
    assert float(p.a[0]) > 0


def test_sign_is_resolved_on_the_labelled_split():
    x, y, _, direction = planted()
    p = SAEProbeFitter(OFF, n_label=200, **SAE).fit(x[:3000], 1 - y[:3000])
    assert bacc(p, x[3000:], 1 - y[3000:]) > 0.95
    assert float(p.a[0]) < 0 and float(p.direction() @ direction) < -0.9


def test_the_autoencoder_never_sees_labels_and_only_labelled_rows_matter():
    x, y, _, _ = planted(2000)
    sae = SAEFitter(**SAE).fit(x)  # the SAE fitter has no label argument at all
    a = SAEProbeFitter(ON, n_label=100, **SAE).fit(x, y)
    assert torch.equal(a.enc[0], sae.w_enc[int(a.features[0])])  # same SAE whatever the labels
    rows = torch.randperm(2000, generator=torch.Generator().manual_seed(SAE["seed"]))[:100]
    y2 = 1 - y  # change every label outside the labelled subset ...
    y2[rows] = y[rows]
    b = SAEProbeFitter(ON, n_label=100, **SAE).fit(x, y2)
    assert torch.equal(a.score(x), b.score(x))  # ... and the probe is unchanged
    c = SAEProbeFitter(ON, sae=sae, n_label=100, seed=SAE["seed"]).fit(x, y)  # a shared, given SAE
    assert torch.equal(c.score(x), a.score(x))


def test_scalar_concept_is_a_linear_readout_of_the_feature():
    x, _, mag, _ = planted()
    p = SAEProbeFitter(MAG, n_label=300, **SAE).fit(x[:3000], mag[:3000])
    assert r2_score(mag[3000:].numpy(), p.predict(x[3000:]).numpy()) > 0.8


def test_noise_labels_score_at_chance_on_held_out_data():
    x, y, _, _ = planted()
    y = y[torch.randperm(4000, generator=torch.Generator().manual_seed(5))]
    p = SAEProbeFitter(ON, n_label=300, **SAE).fit(x[:2000], y[:2000])
    proba = p.predict_proba(x[2000:])[:, 1]
    thr = proba.median()  # the base rate is ~0.15: compare rankings, not the 0.5 threshold
    assert abs(balanced_accuracy_score(y[2000:].numpy(), (proba > thr).numpy()) - 0.5) < 0.05


def test_top_k_and_tied_autoencoders_also_recover_the_feature():
    x, y, _, direction = planted()
    for extra in ({"top_k": 3}, {"tied": True, "l1": 0.3}):  # tied SAEs converge more slowly here
        p = SAEProbeFitter(ON, n_label=200, **{**SAE, **extra}).fit(x[:3000], y[:3000])
        assert bacc(p, x[3000:], y[3000:]) > 0.85, extra
        assert float(p.direction() @ direction) > 0.8, extra
