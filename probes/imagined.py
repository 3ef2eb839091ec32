"""Probes fitted on what a planner reads: posterior latents *plus* latents imagined k steps ahead.

Why. The harness fits every probe on *posterior* latents (the model has just seen the frame), but a
planner only ever applies the probes to *imagined* latents, and these come from another distribution:
the prior drifts, rare objects fade (see ``dynamics/evaluate.py``'s per-class recall). Measured on
the quickstart model: on held-out lava entries one imagined step ahead, the posterior-fitted
``in_lava`` probe fired on 9 of 24 (AUROC 0.97: the ranking was there, the threshold was not), a probe
fitted on imagined latents on 16 of 24 -- and a planner that does not see the lava walks into it.

What. For each entry of an :class:`~probes.ontology.Ontology` whose site ``imagine`` produces, the
probe is fitted again, with the entry's own method and the hyperparameters the harness chose
(``grid_points[concept]``, a grid point of :func:`probes.grids.fit_method`; not searched again, so the
only change is the data), on

* the train split's posterior latents (all rows the harness used), and
* latents imagined from posterior anchors of the train episodes (every ``stride``-th step ``t``, each
  filtered over steps ``0..t`` exactly as an acting agent has them), ``k = 1 .. horizon`` steps ahead
  with the episode's true actions, labelled with the true concept at ``t + k``; rollout steps past an
  episode's last step are dropped (no rollout crosses an episode end, and every step of an episode,
  its terminal step included, is a target for every ``k`` that reaches it);

validation rows (early stopping, the sparse path) are built the same way from the val split. Rows are
capped at ``max_rows`` (a seeded draw) for methods that are a loop of fits. Rollouts follow the
prior's mode (``sample=False``), as the planners do.

Scored like the harness's own rows, under method ``"<method>+imagined"`` (:data:`SUFFIX`): split
``"test"`` on the held-out posterior latents and ``"imagined_k{k}"`` via
:func:`probes.consistency.imagination_consistency`, so results.csv holds both fits side by side.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from dynamics.base import DynamicsModel
from probes.base import ProbeError, varies
from probes.consistency import as_episodes, concept_at, imagination_consistency, imagine_latents
from probes.extract import LatentStore
from probes.grids import DETERMINISTIC, as_tensor, fit_method
from probes.metrics import concept_estimates
from probes.ontology import Ontology, fresh
from probes.results import ResultRow
from worlds.dataset.reader import TrajectoryDataset
from worlds.trajectory import Episode

LABEL = "imagined-fit"
"""Name of the refitted ontology's folder under the probe stage's ``ontologies/`` (and its planning rows' probe_method)."""
SUFFIX = "+imagined"
"""Appended to the method name of the refitted probes' result rows (``"linear+imagined"``)."""
REFITTABLE = ("linear", "sparse", "mlp")
"""Methods refitted here; ``sae`` is not (its probe reads a feature of an autoencoder fitted without labels)."""


@dataclass(frozen=True)
class ImaginedRows:
    """A design matrix of imagined latents: ``x [m d]``, ``labels[name] [m]`` at ``t + k``, and per row its
    episode index (into the episode list), anchor step ``t`` and horizon ``k``."""

    x: np.ndarray
    labels: Mapping[str, np.ndarray]
    episode: np.ndarray
    t: np.ndarray
    k: np.ndarray

    def __len__(self) -> int:
        return int(self.x.shape[0])


def imagined_rows(model: DynamicsModel, episodes: Sequence[Episode], site: str, names: Sequence[str], *,
                  horizon: int = 15, stride: int = 4, context: int = 1, batch_size: int = 256,
                  device: torch.device | str | None = None) -> ImaginedRows:
    """Imagine ``horizon`` steps (true actions, the prior's mode) from every ``stride``-th step ``t >= context-1``
    of each episode; keep ``site`` at every ``t + k <= last step``, k = 1 .. horizon (module docstring)."""
    if horizon < 1:
        raise ProbeError(f"horizon must be >= 1, got {horizon}")
    eps = list(episodes)
    im = imagine_latents(model, eps, site, ks=range(1, horizon + 1), context=context, stride=stride,
                         batch_size=batch_size, device=device)
    anchors = np.concatenate([im.anchors[k] for k in im.ks])
    k = np.concatenate([np.full(len(im.anchors[k]), k) for k in im.ks])
    labels = {n: np.concatenate([concept_at(eps, n, im.anchors[j], j) for j in im.ks]) for n in names}
    x = torch.cat([im.latents[j] for j in im.ks]).float().cpu().numpy()
    return ImaginedRows(x, labels, anchors[:, 0], anchors[:, 1], k)


@dataclass(frozen=True)
class ImaginedFit:
    """The refitted ontology, its result rows, and what was done (``info``) or skipped (``skipped``)."""

    ontology: Ontology
    rows: tuple[ResultRow, ...]
    info: Mapping[str, Any]
    skipped: Mapping[str, str]


def fit_on_imagined(model: DynamicsModel, dataset: TrajectoryDataset, store: LatentStore, ontology: Ontology,
                    grid_points: Mapping[str, Mapping[str, Any]], *, horizon: int = 15, stride: int = 4,
                    max_rows: Mapping[str, int | None] | None = None, seeds: Sequence[int] = (0,), ks: Sequence[int] = (1, 5, 15),
                    eval_stride: int = 4, n_boot: int = 1000, seed: int = 0, device: torch.device | str = "cpu",
                    dtype: torch.dtype = torch.float32, progress: bool = False) -> ImaginedFit:
    """Refit every refittable, imaginable entry of ``ontology`` on posterior + imagined latents and score it
    (module docstring). ``grid_points[concept]`` is the harness's chosen grid point for the entry's method
    and site (``HarnessResult.hparams[(method, site, concept)]``)."""
    for split in ("train", "val"):
        if split not in dataset.splits or split not in store.splits:
            raise ProbeError(f"fitting on imagined latents needs a {split!r} split in the dataset and the latent store")
    have = list(model.initial(1).sites)
    entries, skipped = {}, {}
    for name in ontology:
        e = ontology[name]
        if e.method not in REFITTABLE:
            skipped[f"imagined_fit:{name}"] = f"method {e.method!r} is not refitted (only {', '.join(REFITTABLE)})"
        elif e.site not in have:
            skipped[f"imagined_fit:{name}"] = f"site {e.site!r} is not produced by imagine()"
        elif name not in grid_points:
            raise ProbeError(f"grid_points has no hyperparameters for concept {name!r}; pass HarnessResult.hparams")
        else:
            entries[name] = e
    eps = {s: as_episodes(dataset, s) for s in ("train", "val")}
    limits = dict(max_rows or {})
    new, rows, info = {}, [], {"horizon": horizon, "stride": stride, "rows": {}}
    bar = tqdm(total=len(entries), disable=not progress, desc="probes on imagined latents", unit="concept")
    for site in dict.fromkeys(e.site for e in entries.values()):
        names = [n for n, e in entries.items() if e.site == site]
        im = {s: imagined_rows(model, eps[s], site, names, horizon=horizon, stride=stride, device=device) for s in eps}
        for s in eps:
            info["rows"][f"{site}/{s}"] = {"posterior": store.n(s), "imagined": len(im[s])}
        x = {s: np.concatenate([np.asarray(store.site(s, site)).reshape(store.n(s), -1), im[s].x]) for s in eps}
        for method in dict.fromkeys(entries[n].method for n in names):
            group = [n for n in names if entries[n].method == method]
            n_rows, limit = len(x["train"]), limits.get(method)
            idx = (np.arange(n_rows) if limit is None or n_rows <= limit or method == "linear"
                   else np.sort(np.random.default_rng(seed).choice(n_rows, limit, replace=False)))
            ys = {s: {n: np.concatenate([np.asarray(store.concepts(s)[n]), im[s].labels[n]]) for n in group} for s in eps}
            for n in group:  # one grid point per concept: fit concept by concept at its own point
                c = entries[n].concept
                y = ys["train"][n][idx]
                if not varies(c, y):
                    skipped[f"imagined_fit:{n}"] = "one class (or a constant value) in the training rows"
                    continue
                fits = fit_method(method, as_tensor(x["train"][idx], device, dtype), {n: as_tensor(y)},
                                  as_tensor(x["val"], device, dtype), {n: as_tensor(ys["val"][n])}, [c],
                                  [dict(grid_points[n])], seeds=seeds[:1] if method in DETERMINISTIC else seeds,
                                  device=device, dtype=dtype)
                new[n] = replace(entries[n], probe=fresh(fits[n].chosen[0]), val_score=float(fits[n].val_score))
                bar.update(1)
            rows += _test_rows(store, {n: new[n] for n in group if n in new}, method, site, n_boot, seed, device, dtype)
            chosen = {n: new[n].probe for n in group if n in new}
            if chosen and "test" in dataset.splits:
                try:
                    rows += imagination_consistency(model, dataset, chosen, site, method=method + SUFFIX, ks=ks,
                                                    split="test", stride=eval_stride, n_boot=n_boot, seed=seed)
                except ProbeError as err:  # e.g. no held-out episode long enough for the largest k
                    skipped[f"imagined:{method + SUFFIX}/{site}"] = str(err)
    bar.close()
    ordered = {n: new[n] for n in ontology if n in new}
    return ImaginedFit(Ontology(ordered), tuple(rows), info, skipped)


def _test_rows(store: LatentStore, entries: Mapping[str, Any], method: str, site: str, n_boot: int, seed: int,
               device: torch.device | str, dtype: torch.dtype) -> list[ResultRow]:
    """Rows ``(method+imagined, site, concept, "test", metric)`` on the held-out posterior latents."""
    if not entries or "test" not in store.splits:
        return []
    x = as_tensor(np.asarray(store.site("test", site)).reshape(store.n("test"), -1), device, dtype)
    groups, truth = np.asarray(store.episodes("test")), store.concepts("test")
    rows = []
    for n, e in entries.items():
        c = e.concept
        pred = e.probe.predict(x).cpu().numpy()
        proba = None if c.kind == "scalar" else e.probe.predict_proba(x).double().cpu().numpy()
        est = concept_estimates(c.kind, np.asarray(truth[n]), pred, proba, groups=groups,
                                num_classes=c.num_classes or None, n_boot=n_boot, seed=seed)
        rows += [ResultRow.from_estimate(method + SUFFIX, site, n, "test", m, v) for m, v in est.items()]
    return rows
