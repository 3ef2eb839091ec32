"""collect_sites: the cache holds exactly what observe returns, row-aligned with the pass-through fields."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from einops import rearrange

from dynamics.base import ActionSpec, ObsSpec
from dynamics.cache import collect_sites
from dynamics.registry import build_model
from worlds.trajectory import Episode

torch.set_num_threads(1)
SPEC = ObsSpec((6,), "vector")


def _batches(n: int = 3, b: int = 2, t: int = 5):
    g = torch.Generator().manual_seed(0)
    for i in range(n):
        first = torch.zeros(b, t, dtype=torch.bool)
        first[:, 0] = True
        yield {"obs": torch.randn(b, t, 6, generator=g), "actions": torch.randint(0, 3, (b, t), generator=g),
               "is_first": first, "concept.x": torch.arange(b * t).reshape(b, t) + 100 * i}


def test_cache_equals_observe_and_keeps_fields():
    torch.manual_seed(0)
    model = build_model("rssm", SPEC, ActionSpec(True, n=3), deter=16, hidden=16, embed=8, stoch=2, classes=3,
                        stoch_kind="discrete").eval()
    cache = collect_sites(model, _batches(), sites=["deter", "feat"])
    assert len(cache) == 3 * 2 * 5 and cache.shapes == {"deter": (16,), "feat": (22,)}
    for i, batch in enumerate(_batches()):
        with torch.inference_mode():
            state = model.observe(batch["obs"], batch["actions"], batch["is_first"])
        rows = cache.seq // 2 == i
        torch.testing.assert_close(cache["deter"][rows], rearrange(state["deter"], "b t d -> (b t) d"))
        assert torch.equal(cache["concept.x"][rows], batch["concept.x"].reshape(-1))
    assert cache.step.tolist()[:6] == [0, 1, 2, 3, 4, 0]


def test_cache_accepts_episodes_and_masks_and_refuses_unknown_sites():
    model = build_model("gru", SPEC, ActionSpec(True, n=3), deter=8, hidden=8, embed=4)
    flags = np.zeros(4, bool)
    ep = Episode(obs=np.zeros((4, 6), np.float32), actions=np.zeros(4, np.int64), is_first=np.r_[True, flags[1:]],
                 is_terminal=flags, reward=np.zeros(4, np.float32), success=flags, violation=flags,
                 concepts={"k": np.arange(4)})
    cache = collect_sites(model, [ep, ep])
    assert set(cache.sites) == set(model.sites) and len(cache) == 8
    assert cache["concept.k"].tolist() == [0, 1, 2, 3] * 2 and cache.seq.tolist() == [0] * 4 + [1] * 4
    batch = next(_batches(1))
    batch["mask"] = torch.tensor([[True] * 5, [True, True, False, False, False]])
    assert len(collect_sites(model, [batch])) == 7
    with pytest.raises(ValueError, match="unknown site.*has: embed, deter, feat"):
        collect_sites(model, [batch], sites=["stoch"])
