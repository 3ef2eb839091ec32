"""Latent extraction: rows equal a direct ``observe``, the cache is reused and invalidated by its key, splits stay disjoint."""

from __future__ import annotations

import copy
import os

import numpy as np
import pytest
import torch

from probes.base import ProbeError
from probes.extract import LatentStore, extract_latents, model_fingerprint


def test_rows_equal_a_direct_observe_of_each_episode(lkd):
    ds, store = lkd.ds, lkd.store
    for split in ("test", "ood"):
        eps, steps = store.episodes(split), store.steps(split)
        for i in ds.episode_ids(split)[:3]:
            ep = ds.episode(int(i))
            with torch.inference_mode():
                state = lkd.model.observe(torch.from_numpy(np.array(ep.obs))[None], torch.from_numpy(np.array(ep.actions))[None],
                                          torch.from_numpy(np.array(ep.is_first))[None], sample=False)
            rows = np.flatnonzero(eps == i)
            np.testing.assert_array_equal(steps[rows], np.arange(len(ep)))
            for site in lkd.sites:
                np.testing.assert_allclose(store.site(split, site)[rows], state[site][0].numpy(), atol=1e-5, rtol=1e-5)
            for name, v in ep.concepts.items():
                np.testing.assert_array_equal(store.concepts(split)[name][rows], v)


def test_store_rows_follow_the_dataset_and_obs_line_up(lkd):
    got = lkd.ds.concat("val", ["episode_id", "t", "obs"])
    np.testing.assert_array_equal(lkd.store.episodes("val"), got["episode_id"])
    np.testing.assert_array_equal(lkd.store.steps("val"), got["t"])
    np.testing.assert_array_equal(lkd.store.obs("val"), got["obs"])
    assert lkd.store.site("val", "deter").dtype == np.float32
    assert isinstance(lkd.store.site("val", "deter"), np.memmap)


def test_no_episode_in_two_splits(lkd):
    ids = {s: set(np.unique(lkd.store.episodes(s)).tolist()) for s in lkd.splits}
    for a in lkd.splits:
        assert ids[a] == set(lkd.ds.episode_ids(a).tolist())
        for b in lkd.splits:
            assert a == b or not ids[a] & ids[b]


def test_same_key_is_reused_without_running_the_model(lkd, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("observe ran although the cache should have been reused")

    monkeypatch.setattr(lkd.model, "observe", boom)
    again = extract_latents(lkd.model, lkd.ds, lkd.splits, list(reversed(lkd.sites)), lkd.root / "latents", progress=False)
    assert again.key_hash == lkd.store.key_hash


def test_a_changed_model_invalidates_the_cache(lkd, tmp_path):
    first = extract_latents(lkd.model, lkd.ds, ["test"], ["deter"], tmp_path / "s", progress=False)
    before = np.array(first.site("test", "deter"))
    changed = copy.deepcopy(lkd.model)
    with torch.no_grad():
        next(changed.parameters()).add_(0.5)
    assert model_fingerprint(changed) != model_fingerprint(lkd.model)
    second = extract_latents(changed, lkd.ds, ["test"], ["deter"], tmp_path / "s", progress=False)
    assert second.key_hash != first.key_hash
    assert not np.allclose(np.array(second.site("test", "deter")), before)
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []  # temp folders were renamed or removed
    assert model_fingerprint(copy.deepcopy(lkd.model)) == model_fingerprint(lkd.model)


def test_unknown_site_lists_the_models_sites(lkd, tmp_path):
    with pytest.raises(ProbeError, match="unknown site.*'nope'.*deter"):
        extract_latents(lkd.model, lkd.ds, ["test"], ["nope"], tmp_path / "x", progress=False)
    with pytest.raises(ProbeError, match="holds: deter, embed.*also has feat"):
        lkd.store.site("test", "nope")
    with pytest.raises(ProbeError, match="unknown split 'dev'"):
        lkd.store.site("dev", "deter")
    with pytest.raises(ProbeError, match="hold no episodes"):
        extract_latents(lkd.model, lkd.ds, ["dev"], ["deter"], tmp_path / "x", progress=False)


def test_store_without_dataset_says_how_to_read_obs(lkd):
    bare = LatentStore.open(lkd.root / "latents")
    with pytest.raises(ProbeError, match="open it with the dataset"):
        bare.obs("test")
    assert bare.attach(lkd.ds).obs("test").shape[0] == bare.n("test")


def test_from_arrays_refuses_overlapping_splits(tmp_path, planted):
    x = np.zeros((4, 2), np.float32)
    concepts = {"flag": np.array([0, 1, 0, 1], np.uint8), "level": np.zeros(4, np.float32), "room": np.zeros(4, np.int64)}
    with pytest.raises(ProbeError, match=r"episode\(s\) \[1\] appear in splits 'train' and 'val'"):
        LatentStore.from_arrays(tmp_path / "bad", schema=planted.schema, sites={"train": {"a": x}, "val": {"a": x}},
                                concepts={"train": concepts, "val": concepts},
                                episodes={"train": np.array([0, 0, 1, 1]), "val": np.array([1, 1, 2, 2])})
    assert not (tmp_path / "bad").exists()
