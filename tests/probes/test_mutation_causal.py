"""Mutation-audit tests of causal sufficiency (session 8): the null edit has the SAME norm as the probe edit, and
anchors whose unedited rollout already reads the target are dropped.

No fast test noticed a null edit of unit norm (the existing model is insensitive to small random edits either way)
or keeping every anchor (there the unedited rollout never reads the target). The model below is linear
(``imagine: z -> M z``, ``M = P + 0.3 (I - P)``, ``P = v v^T``; decode is the identity), so both can be checked
against hand computations: ``M^-1`` recovers each edit from the decoded futures, and the unedited reading after
``k`` steps is ``probe(M^k x)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor

from dynamics import ActionSpec, DynamicsModel, LatentState, ObsSpec
from probes.causal import Scenario, causal_sufficiency
from probes.linear import LinearFitter
from worlds.concepts import Concept
from worlds.trajectory import Episode

torch.set_num_threads(1)
D = 8
V = torch.linalg.qr(torch.randn(D, D, generator=torch.Generator().manual_seed(0), dtype=torch.float64))[0][:, 0]
P = torch.outer(V, V)
M = P + 0.3 * (torch.eye(D, dtype=torch.float64) - P)
KEY = Concept("key", "binary", "The episode's hidden bit.")


class Linear(DynamicsModel):
    def __init__(self):
        super().__init__()
        self.obs_spec, self.action_spec = ObsSpec((D,), "vector"), ActionSpec(True, n=2)
        self.register_buffer("m", M.float())

    @property
    def sites(self) -> dict[str, tuple[int, ...]]:
        return {"feat": (D,)}

    @property
    def hparams(self) -> dict[str, Any]:
        return {}

    def initial(self, batch_size: int) -> LatentState:
        return LatentState({"feat": torch.zeros(batch_size, D)})

    def observe(self, obs, actions, is_first, *, sample=False) -> LatentState:
        return LatentState({"feat": obs.float()})

    def imagine(self, state, actions, *, sample=False) -> LatentState:
        z, out = state["feat"], []
        for _ in range(actions.shape[1]):
            z = z @ self.m.T
            out.append(z)
        return LatentState({"feat": torch.stack(out, 1)})

    def decode(self, state: LatentState) -> Tensor:
        return state["feat"]

    def loss(self, obs, actions, is_first):
        raise NotImplementedError


def episodes(n: int, seed: int, signal: float, length: int = 8) -> list[Episode]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        key = i % 2
        obs = ((2 * key - 1) * signal * V.numpy()[None] + 0.5 * rng.normal(size=(length, D))).astype(np.float32)
        flags = np.zeros(length, bool)
        out.append(Episode(obs=obs, actions=np.zeros(length, np.int64), is_first=np.r_[True, flags[1:]],
                           is_terminal=flags, reward=np.zeros(length, np.float32), success=flags, violation=flags,
                           concepts={"key": np.full(length, key, np.uint8)}))
    return out


def _probe():
    train = episodes(20, seed=1, signal=1.0)
    x = torch.cat([torch.from_numpy(e.obs) for e in train])
    return LinearFitter(KEY, l2=1e-2).fit(x, np.concatenate([e.concepts["key"] for e in train]))


def test_null_edit_has_the_norm_of_the_probe_edit():
    model, probe, test = Linear(), _probe(), episodes(10, seed=2, signal=1.0)
    anchors = np.c_[np.arange(10), np.zeros(10, np.int64)]
    x = torch.from_numpy(np.stack([e.obs[0] for e in test]))
    target = (1 - probe.predict(x)).numpy()
    edits: list[Tensor] = []
    m_inv = torch.linalg.inv(M)

    def check(edit: Tensor, base: Tensor) -> Tensor:          # decoded [m 1 d]: recover the edit through M^-1
        edits.append((edit[:, 0].double() - base[:, 0].double()) @ m_inv.T)
        return torch.ones(edit.shape[0], dtype=torch.bool)

    scen = Scenario("recorder", anchors, np.zeros((10, 1), np.int64), target, check)
    r = causal_sufficiency(model, test, probe, "feat", scenario=scen, n_boot=50)
    probe_edit, null_edit = edits                               # called for the probe edit, then for the null
    torch.testing.assert_close(null_edit.norm(dim=1), probe_edit.norm(dim=1), rtol=1e-4, atol=1e-5)
    assert abs(float(probe_edit.norm(dim=1).mean()) - r.edit_norm) < 1e-4
    cos = torch.nn.functional.cosine_similarity(null_edit, probe_edit, dim=1)
    assert cos.abs().max() < 0.99                               # and it is another direction


def test_anchors_whose_unedited_future_already_reads_the_target_are_dropped():
    model, probe = Linear(), _probe()
    test = episodes(30, seed=3, signal=0.15)                    # weak signal: the reading at t is often noise
    k = 3
    r = causal_sufficiency(model, test, probe, "feat", k=k, n_boot=50)
    x = np.concatenate([e.obs[: len(e) - k] for e in test]).astype(np.float64)      # every anchor t <= T-1-k
    target = 1 - probe.predict(torch.from_numpy(x).float()).numpy()
    future = x @ np.linalg.matrix_power(M.numpy(), k).T
    base = probe.predict(torch.from_numpy(future).float()).numpy()
    assert 0 < (base == target).sum() < len(x)                  # some anchors show nothing and must go
    assert r.num_anchors == int((base != target).sum())


@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")  # relative_rise = rise / clean loss 0
def test_necessity_null_rise_is_the_mean_over_every_null_draw():
    """``horizon=0``: the loss is the reconstruction of step ``t`` itself, here ``mean((erase(x) - x)^2)`` (decode is
    the identity, the clean loss 0), so the null rise is the mean of that over anchors AND over the null draws."""
    from probes.causal import causal_necessity
    from probes.erasure import random_subspace_eraser

    model, test = Linear(), episodes(6, seed=4, signal=1.0)
    x = np.concatenate([e.obs for e in test]).astype(np.float64)
    y = np.concatenate([e.concepts["key"] for e in test])
    r = causal_necessity(model, test, KEY, "feat", train_latents=x, train_labels=y, horizon=0, null_draws=3,
                         n_boot=50, seed=7)
    assert r.num_anchors == len(x) and r.loss_clean.estimate == 0.0
    per_draw = []
    for i in range(3):
        null = random_subspace_eraser(D, r.rank, 7 + 1 + i, bias=x.mean(0))
        per_draw.append(float(((null(x) - x) ** 2).mean()))
    assert len(set(np.round(per_draw, 6))) == 3                       # the draws differ ...
    assert abs(r.null_rise.estimate - np.mean(per_draw)) < 1e-4 * np.mean(per_draw)   # ... and all three count


def test_categorical_edit_moves_along_target_row_minus_current_row():
    """The module docstring: for a categorical probe the edit direction is the difference of the target's and the
    current class's readout rows (the direction that raises the target's logit against the current one)."""
    from probes.causal import probe_edit

    g = torch.Generator().manual_seed(5)
    centres = torch.tensor([[3.0, 0, 0, 0], [0, 3.0, 0, 0], [0, 0, 3.0, 0]])
    y = torch.arange(300) % 3
    x = centres[y] + 0.5 * torch.randn(300, 4, generator=g)
    room = Concept("room", "categorical", "which room", classes=("a", "b", "c"))
    probe = LinearFitter(room, l2=1e-2).fit(x, y)
    xs = x[:12]
    current = probe.predict(xs)
    target = (current + 1) % 3
    delta, reached = probe_edit(probe, xs, target, confidence=0.8)
    w = probe.direction()
    u = w[target] - w[current]
    torch.testing.assert_close(delta / delta.norm(dim=1, keepdim=True), u / u.norm(dim=1, keepdim=True),
                               rtol=1e-5, atol=1e-5)
    assert reached.all()
    p = probe.predict_proba(xs + delta).gather(1, target[:, None])[:, 0]
    torch.testing.assert_close(p, torch.full_like(p, 0.8), atol=1e-3, rtol=0)
