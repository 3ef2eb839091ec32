"""Review of the probe harness's wiring (session 8): what each split is used for, and the latent cache's durability.

Each test here failed on the code before the review (the old functions are kept under /tmp/h_harn/ for the report).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from probes.extract import LatentStore, extract_latents
from probes.harness import run_harness

torch.set_num_threads(1)
FAST = dict(n_boot=20, mdl=False, progress=False)


def _without(store: LatentStore, path, drop: str) -> LatentStore:
    """``store`` with split ``drop`` left out (a dataset too small to hold a test episode, say)."""
    keep = [s for s in store.splits if s != drop]
    return LatentStore.from_arrays(
        path, schema=store.schema, sites={s: {n: np.array(store.site(s, n)) for n in store.site_names} for s in keep},
        concepts={s: {n: np.array(v) for n, v in store.concepts(s).items()} for s in keep},
        episodes={s: np.array(store.episodes(s)) for s in keep}, obs={s: np.array(store.obs(s)) for s in keep})


def test_without_a_test_split_the_control_task_is_skipped_not_a_crash(planted, tmp_path):
    """Selectivity is a test-split row. With ``splits=("ood",)``, or a store that holds no test split, the harness
    used to fit the control task anyway and crash with ``KeyError: 'test'`` (a bare traceback out of ``ontolab probe``
    on a dataset whose hash split left the test split empty). Now: the ood rows, no selectivity, a reason."""
    kw = dict(FAST, control=True, concepts=["flag", "level"])
    only_ood = run_harness(planted.store, planted.schema, ["linear"], ["signal"], splits=("ood",), **kw)
    no_test = run_harness(_without(planted.store, tmp_path / "no_test", "test"), planted.schema, ["linear"], ["signal"], **kw)
    for res in (only_ood, no_test):
        assert {r.split for r in res.rows} == {"ood"}
        assert not any(r.metric == "selectivity" for r in res.rows)
        assert "test" in res.skipped["selectivity"]
    assert no_test.skipped["split:test"] == "not in the latent store"
    # the fits and the choice are those of a run that scores test too (test is only ever scored)
    full = run_harness(planted.store, planted.schema, ["linear"], ["signal"], **kw)
    assert dict(only_ood.val_scores) == dict(full.val_scores) and only_ood.ontology.summary() == full.ontology.summary()
    ood = {(r.method, r.site, r.concept, r.metric): r.estimate for r in full.rows if r.split == "ood"}
    assert ood == {(r.method, r.site, r.concept, r.metric): r.estimate for r in only_ood.rows}


def test_every_array_of_a_latent_store_is_fsynced_before_its_manifest(lkd, tmp_path, monkeypatch):
    """A store is reused whenever its manifest's key matches, so the arrays must reach the disk before the (fsynced)
    manifest that declares the store complete; ``np.save`` / memmaps used to be flushed to the page cache only."""
    real, synced, order = os.fsync, set(), []

    def recording(fd):
        path = os.readlink(f"/proc/self/fd/{fd}")
        synced.add(path)
        order.append(path)
        return real(fd)

    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc/self/fd to name an fd's file")
    monkeypatch.setattr(os, "fsync", recording)
    out = tmp_path / "latents"
    store = extract_latents(lkd.model, lkd.ds, ("train", "val"), ("deter",), out, progress=False)
    tmp = next(p for p in synced if "/.latents.tmp-" in p).split("/.latents.tmp-")[0] + "/.latents.tmp-"
    rel = lambda p: p.split(tmp, 1)[1].split("/", 1)[1] if p.startswith(tmp) and "/" in p.split(tmp, 1)[1] else None  # noqa: E731
    files = {str(p.relative_to(out)) for p in out.rglob("*.npy")}
    assert files and files <= {rel(p) for p in synced}
    last_array = max(i for i, p in enumerate(order) if (rel(p) or "").endswith(".npy"))
    assert order.index(next(p for p in order if rel(p) == "manifest.json")) > last_array
    assert store.n("train") > 0
