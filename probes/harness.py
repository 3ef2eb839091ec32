"""The probe harness: a trained dynamics model's latents + true concepts -> comparable probe results and an Ontology.

``run_harness(store, schema, methods, sites)`` does, for every method x site x concept:

1. **fit** on the TRAIN split (normalisation statistics from train only) over the method's grid
   (:mod:`probes.grids`; linear: every concept x l2 on a site in one batched pass), the grid point
   chosen on the VAL split;
2. **score** on the ``"test"`` and ``"ood"`` splits with every metric of the concept's kind
   (:func:`probes.metrics.metric_names`), each with a 95% percentile interval from a bootstrap over
   EPISODES (over (seed, episode) when several probe seeds are fitted);
3. **selectivity** (split ``"test"``): the validation metric (balanced accuracy / R^2) of the task
   probe minus that of the same method and hyperparameters trained on control labels (one random
   label per observation type; types computed ONCE over the observations of all the store's
   splits), with a paired episode-bootstrap interval (skipped, listed as ``"selectivity"``, when no test split is scored);
4. **MDL** (split ``"test"``, only for ``mdl_methods``, linear by default because it is batched):
   online-code compression of (at most ``mdl_max_rows``, default 4000) test rows for the task (``"compression"``) and the control task
   (``"compression_control"``), see :mod:`probes.codelength`; the block probes use the task probe's
   chosen hyperparameters (scalar concepts are coded as quantile bins, by the linear method with
   ``l2 = BINNED_SCALAR_L2``).

Baselines beside every score (same splits and metrics): ``"prior"`` (site ``"none"``: the training
label prior), ``"observation"`` (site ``"obs"``: the probe on the current observation flattened to float)
and ``"random_model"`` (the probe on the same site of ``random_store``, latents of a randomly initialised
model of the same architecture). Both are fitted with *the same probe* as the rows they sit beside: once
per method of ``baseline_methods`` (default: every method in ``methods``), with that method's grid,
row cap and validation choice. The row of method ``m`` is :func:`baseline_name` ``(kind, m)``: the plain
``"observation"`` / ``"random_model"`` for ``linear`` (the names older results use, which were always
linear), ``"observation:mlp"``, ``"random_model:sparse"``... for the others. With
``history_baseline=True`` a fourth, ``"history"`` (site ``"history"``): a small GRU trained on the labels
over each episode's observation+action history (:mod:`probes.history`; actions from the store's attached
dataset, observations only without one) -- a supervised ceiling for what the history reveals, not a probe
of the model (about 25 s on one core for the lavakeydoor quickstart, so off by default here).

The :class:`~probes.ontology.Ontology` is chosen from validation scores only (:data:`probes.ontology.RULE`);
the same rule applied to each method's probes alone gives one ontology per method
(``HarnessResult.by_method``, saved as ``ontologies/<method>/``: planners compare methods by behaviour).
Later stages (rewards, planners, verification) apply the ontology to *imagined* latents, so with
``planner_sites`` (the sites the model's ``imagine`` produces) both are chosen among those sites only:
a site such as ``embed`` encodes the current observation and does not exist in imagination. A concept
with no candidate there keeps its best entry at any site (the planning stage then says why it cannot
plan with it). The rule over every site is still recorded (``HarnessResult.any_site``, ``harness.json``
``"ontology_any_site"``): where a concept lives best, as opposed to where a planner can read it.

Speed: linear and MLP fits use every training row by default; sparse and sae train on at most
``max_train_rows[method]`` rows (defaults 20000 / 10000, drawn with ``seed``). The MLP used to be capped
at 10000-20000 rows too; on the full default (60k training rows) lifting the cap (with the longer MLP
budget of :data:`probes.grids.DEFAULT_GRIDS`) raised held-out steps_to_goal R^2 at ``embed`` from 0.89 to
0.92 and agent_row at ``feat`` from 0.96 to 0.97, while sparse on every row gained < 0.01 for 3x the time.
Concepts with one class (or a constant value) in the training split are skipped and listed in
``HarnessResult.skipped``.
"""

from __future__ import annotations

import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from probes.base import Probe, ProbeError, varies
from probes.control import control_labels, observation_types
from probes.extract import LatentStore, temp_dir_for, write_json
from probes.grids import DEFAULT_GRIDS, GridFit, checked_grid
from probes.harness_context import BINNED_SCALAR_L2, NO_SITE, HarnessContext  # noqa: F401  (NO_SITE, BINNED_SCALAR_L2 re-exported)
from probes.history import METHOD as HISTORY_SITE
from probes.history import HistoryFitter, store_num_actions, store_split
from probes.imagined import LABEL as IMAGINED_LABEL
from probes.metrics import concept_estimates
from probes.ontology import RULE, Ontology, method_ontologies, select_ontology
from probes.registry import method_names
from probes.results import ResultRow, write_results_csv
from worlds.atomic import publish_dir
from worlds.concepts import Concept, ConceptSchema

DEFAULT_MAX_TRAIN_ROWS: dict[str, int | None] = {"linear": None, "mlp": None, "sparse": 20000, "sae": 10000}
OBS_SITE = "obs"
"""Site of the ``"observation"`` rows."""
BASELINE_SEP = ":"
"""Separates a baseline from the probe method it was fitted with in a row's method (``"random_model:mlp"``)."""
Key = tuple[str, str, str]


def baseline_name(kind: str, method: str) -> str:
    """Row method of baseline ``kind`` (``"observation"``, ``"random_model"``) fitted with probe ``method``:
    ``kind`` itself for ``linear``, else ``"<kind>:<method>"``."""
    return kind if method == "linear" else f"{kind}{BASELINE_SEP}{method}"


@dataclass(frozen=True)
class HarnessResult:
    """Rows of ``results.csv``, the chosen :class:`Ontology`, and every fitted (chosen) probe by ``(method, site, concept)``."""

    rows: tuple[ResultRow, ...]
    ontology: Ontology
    fitted: Mapping[Key, Probe]
    val_scores: Mapping[Key, float]
    hparams: Mapping[Key, dict[str, Any]]
    skipped: Mapping[str, str]
    """What was not computed and why (``concept``, ``method/site/concept`` -- a baseline's under its row name,
    ``random_model:mlp/site/concept`` --, ``random_model``, ``split:<name>``)."""
    settings: Mapping[str, Any]
    seconds: float

    by_method: Mapping[str, Ontology] = field(default_factory=dict)
    """One ontology per fitted method (:func:`~probes.ontology.method_ontologies`), saved as ``ontologies/<method>/``."""
    checks: Mapping[str, Any] = field(default_factory=dict)
    """Details of model-based checks added by the caller (``harness.json`` ``"model_checks"``)."""
    imagined: Ontology | None = None
    """The ontology refitted on posterior + imagined latents (:mod:`probes.imagined`, added by the caller), saved as
    ``ontologies/imagined-fit/``."""
    any_site: Ontology | None = None
    """The rule over every probed site (``None``: the same as ``ontology``, no ``planner_sites`` given)."""
    timings: Mapping[str, float] = field(default_factory=dict)
    """Seconds per part of the caller's stage (``harness.json`` ``"timings"``; ``seconds`` is this harness run's)."""

    def save(self, out_dir: str | Path) -> Path:
        """Write ``results.csv``, ``ontology/``, ``ontologies/<method>/`` and ``harness.json`` (settings, choices,
        skips, checks) into ``out_dir``. ``ontologies/`` is published as one folder (no stale method is left)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_results_csv(self.rows, out / "results.csv")
        self.ontology.save(out / "ontology")
        tmp = temp_dir_for(out / "ontologies")
        try:
            extra = {IMAGINED_LABEL: self.imagined} if self.imagined is not None else {}
            for method, onto in {**self.by_method, **extra}.items():
                if len(onto):
                    onto.save(tmp / method)
            publish_dir(tmp, out / "ontologies")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        join = lambda d: {"/".join(k): v for k, v in d.items()}  # noqa: E731
        write_json(out / "harness.json", {"settings": self.settings, "val_scores": join(self.val_scores),
                                          "hparams": join(self.hparams), "skipped": dict(self.skipped),
                                          "seconds": self.seconds, "ontology": self.ontology.summary(),
                                          "ontologies": {m: o.summary() for m, o in self.by_method.items() if len(o)},
                                          "ontology_any_site": (self.any_site or self.ontology).summary(),
                                          "ontology_imagined_fit": None if self.imagined is None else self.imagined.summary(),
                                          "model_checks": dict(self.checks),
                                          "timings": {k: round(float(v), 2) for k, v in self.timings.items()}})
        return out


def _check(what: str, given: Sequence[str], allowed: Sequence[str]) -> list[str]:
    bad = [g for g in given if g not in allowed]
    if bad or not given:
        raise ProbeError(f"unknown {what}(s) {bad or '(none given)'}; allowed: {', '.join(allowed)}")
    return list(given)


def run_harness(store: LatentStore, schema: ConceptSchema, methods: Sequence[str], sites: Sequence[str], *,
                concepts: Sequence[str] | None = None, splits: Sequence[str] = ("test", "ood"), seeds: Sequence[int] = (0,),
                lambdas: Sequence[float] | None = None, grids: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
                max_train_rows: Mapping[str, int | None] | None = None, n_boot: int = 1000, seed: int = 0,
                baselines: bool = True, baseline_methods: Sequence[str] | None = None, random_store: LatentStore | None = None,
                control: bool = True, mdl: bool = True, mdl_methods: Sequence[str] = ("linear",), mdl_shuffles: int = 3,
                mdl_max_rows: int | None = 4000, mdl_bins: int = 10, history_baseline: bool = False,
                planner_sites: Sequence[str] | None = None, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, progress: bool = True) -> HarnessResult:
    """Fit, score, compare and choose (see the module docstring). ``lambdas`` overrides the linear grid's l2 values;
    ``grids[method]`` any method's grid (a list of hyperparameter dicts, checked by :func:`probes.grids.checked_grid`;
    defaults in :data:`probes.grids.DEFAULT_GRIDS`);
    ``planner_sites`` the sites later stages can read (``imagine``'s), where the ontologies are chosen;
    ``baseline_methods`` the methods the observation and random-model baselines are fitted with (None: ``methods``)."""
    t0 = time.perf_counter()
    methods = _check("probe method", methods, method_names())
    sites = _check("site", sites, store.site_names)
    names = _check("concept", list(concepts) if concepts is not None else list(schema.names), schema.names)
    _check("concept", names, store.schema.names)
    _check("metric split", splits, ("test", "ood"))
    for need in ("train", "val"):
        _check("store split", [need], store.splits)
    baseline_methods = list(dict.fromkeys(methods if baseline_methods is None else baseline_methods))
    if baselines and baseline_methods:  # []: the label prior only
        _check("baseline method", baseline_methods, method_names())
    _check("mdl method", list(mdl_methods) or ["linear"], method_names())
    grid = {m: tuple(dict(g) for g in DEFAULT_GRIDS.get(m, ({},))) for m in method_names()}
    _check("grid method", list(grids or {}) or ["linear"], method_names())
    grid.update({m: checked_grid(m, gs) for m, gs in (grids or {}).items()})
    if lambdas is not None:
        grid["linear"] = tuple({"l2": float(v)} for v in sorted(lambdas, reverse=True))
    max_rows = {**DEFAULT_MAX_TRAIN_ROWS, **(max_train_rows or {})}
    seeds = [int(s) for s in seeds] or [0]
    skipped: dict[str, str] = {}
    eval_splits = [s for s in splits if s in store.splits]
    skipped.update({f"split:{s}": "not in the latent store" for s in splits if s not in store.splits})
    if random_store is not None:
        _check("random-model site", sites, random_store.site_names)
        for s in ("train", "val", *eval_splits):
            if s not in random_store.splits or not np.array_equal(random_store.episodes(s), store.episodes(s)):
                raise ProbeError(f"random_store must hold the same episodes as store on split {s!r}; extract both from one dataset")

    used = ["train", "val", *eval_splits]
    labels = {s: {n: np.array(v) for n, v in store.concepts(s).items() if n in names} for s in used}
    groups = {s: np.array(store.episodes(s)) for s in used}
    cs: list[Concept] = []
    for n in names:
        c, y = schema[n], labels["train"][n]
        if not varies(c, y):
            skipped[n] = "one class (or a constant value) in the training split: no probe can be fitted"
            warnings.warn(f"harness: concept {n!r} skipped: {skipped[n]}", stacklevel=2)
        else:
            cs.append(c)
    with_control = control and "test" in eval_splits  # selectivity and the control MDL rows are scored on test only
    if control and not with_control:
        skipped["selectivity"] = "no 'test' split scored: selectivity and compression_control are test rows"
    ctrl = _control_labels(store, cs, used, seed) if with_control else {}
    settings = {"methods": methods, "sites": sites, "concepts": [c.name for c in cs], "splits": eval_splits, "seeds": seeds,
                "grids": {m: list(grid[m]) for m in methods}, "max_train_rows": max_rows, "n_boot": n_boot, "seed": seed,
                "baselines": baselines, "baseline_methods": baseline_methods, "control": control, "mdl": mdl,
                "mdl_methods": list(mdl_methods), "mdl_shuffles": mdl_shuffles, "mdl_max_rows": mdl_max_rows,
                "mdl_bins": mdl_bins, "history_baseline": history_baseline, "device": str(device), "dtype": str(dtype), "store": store.key_hash,
                "random_store": None if random_store is None else random_store.key_hash, "ontology_rule": RULE,
                "planner_sites": None if planner_sites is None else list(planner_sites)}
    ctx = HarnessContext(labels, groups, ctrl, grid, max_rows, seeds, n_boot, seed, device, dtype, skipped)

    rows: list[ResultRow] = []
    fits: dict[Key, GridFit] = {}
    units = len(sites) * len(methods) + (len(baseline_methods) * (1 + len(sites) * (random_store is not None))
                                         + history_baseline if baselines else 0)
    with tqdm(total=units, disable=not progress, desc="probe harness", unit="fit") as bar:
        for site in sites:
            xs = {s: store.site(s, site) for s in used}
            for method in methods:
                bar.set_postfix_str(f"{method} @ {site}")
                task, control_fits = ctx.fit(method, site, xs, cs, with_control=with_control)
                fits.update({(method, site, n): f for n, f in task.items()})
                rows += ctx.score_rows(method, site, task, xs, eval_splits)
                for n, cf in control_fits.items():
                    rows.append(ctx.selectivity_row(method, site, schema[n], task[n], cf, xs["test"]))
                if mdl and method in mdl_methods and "test" in eval_splits:
                    rows += ctx.mdl_rows(method, site, task, control_fits, xs["test"], mdl_shuffles, mdl_max_rows, mdl_bins)
                bar.update(1)
        if baselines:
            rows += ctx.prior_rows(cs, eval_splits)
            obs = {s: np.asarray(store.obs(s)).reshape(store.n(s), -1).astype(np.float32) for s in used}
            if random_store is None:
                skipped["random_model"] = "no random_store given"
            for bm in baseline_methods:  # the same probe (method, grid, row cap) as the rows they sit beside
                bar.set_postfix_str(f"observation ({bm})")
                row = baseline_name("observation", bm)
                task, _ = ctx.fit(bm, OBS_SITE, obs, cs, with_control=False, row=row)
                rows += ctx.score_rows(row, OBS_SITE, task, obs, eval_splits)
                bar.update(1)
                for site in sites if random_store is not None else ():
                    bar.set_postfix_str(f"random model ({bm}) @ {site}")
                    xr = {s: random_store.site(s, site) for s in used}
                    row = baseline_name("random_model", bm)
                    task, _ = ctx.fit(bm, site, xr, cs, with_control=False, row=row)
                    rows += ctx.score_rows(row, site, task, xr, eval_splits)
                    bar.update(1)
            if history_baseline:
                bar.set_postfix_str("history (supervised GRU)")
                rows += _history_rows(ctx, store, cs, used, eval_splits)
                bar.update(1)

    candidates = {k: (f.chosen[0], f.val_score) for k, f in fits.items()}
    any_site = select_ontology(candidates, cs, store.site_shapes, sites)
    readable = {k: v for k, v in candidates.items() if planner_sites is None or k[1] in planner_sites}
    chosen = select_ontology(readable, cs, store.site_shapes, sites)
    ontology = Ontology({n: chosen.entries.get(n, any_site.entries.get(n)) for n in any_site})
    by_method = method_ontologies(readable, cs, store.site_shapes, sites)
    return HarnessResult(tuple(rows), ontology, {k: f.chosen[0] for k, f in fits.items()},
                         {k: f.val_score for k, f in fits.items()}, {k: f.hparams for k, f in fits.items()},
                         skipped, settings, time.perf_counter() - t0, by_method,
                         any_site=None if planner_sites is None else any_site)


def _history_rows(ctx: HarnessContext, store: LatentStore, cs: Sequence[Concept], used: Sequence[str],
                  splits: Sequence[str]) -> list[ResultRow]:
    """The ``"history"`` baseline: one GRU fitted on train (early-stopped on val) for all concepts, scored like the others."""
    data = {s: store_split(store, s, [c.name for c in cs]) for s in used}
    if data["train"].actions is None:
        ctx.skipped["history/actions"] = "the latent store has no dataset attached: the history baseline read observations only"
    fitted = HistoryFitter(cs, num_actions=store_num_actions(store), seed=ctx.seed, device=ctx.device,
                           dtype=ctx.dtype).fit(data["train"], data["val"])
    rows = []
    for s in splits:
        preds = fitted.predictions(data[s])
        for c in cs:
            rows += ctx.prediction_rows(HISTORY_SITE, HISTORY_SITE, c, s, *preds[c.name])
        if s == "test" and store.dataset is not None:  # also on the non-terminal steps (results.SPLITS)
            rows += _nonterminal_rows(ctx, store, cs, preds)
    return rows


def _nonterminal_rows(ctx: HarnessContext, store: LatentStore, cs: Sequence[Concept],
                      preds: Mapping[str, tuple[np.ndarray, np.ndarray | None]]) -> list[ResultRow]:
    """History rows on the test steps that are not an episode's terminal step (concepts constant there: none)."""
    keep = ~np.asarray(store.dataset.concat("test", ["is_terminal"])["is_terminal"], bool)
    rows = []
    for c in cs:
        y = ctx.labels["test"][c.name][keep]
        if not varies(c, y):
            continue  # e.g. in_lava, at_goal: events that only happen on terminal steps
        pred, proba = preds[c.name]
        ests = concept_estimates(c.kind, y, pred[keep], None if proba is None else proba[keep],
                                 groups=ctx.groups["test"][keep], num_classes=c.num_classes or None,
                                 n_boot=ctx.n_boot, seed=ctx.seed)
        rows += [ResultRow.from_estimate(HISTORY_SITE, HISTORY_SITE, c.name, "test_nonterminal", m, e)
                 for m, e in ests.items()]
    return rows


def _control_labels(store: LatentStore, cs: Sequence[Concept], used: Sequence[str], seed: int) -> dict[str, dict[str, np.ndarray]]:
    """Control labels per used split, from observation types computed once over ALL the store's splits; labels drawn from the train rows."""
    all_splits = store.splits
    types = observation_types(np.concatenate([np.asarray(store.obs(s)) for s in all_splits]))
    ends = np.cumsum([store.n(s) for s in all_splits])
    # each type's label is drawn from the TRAINING rows (Hewitt & Liang): held-out and OOD label proportions
    # must not shape the control task
    train = np.concatenate([np.full(store.n(s), s == "train") for s in all_splits])
    out: dict[str, dict[str, np.ndarray]] = {s: {} for s in used}
    for c in cs:
        y_all = np.concatenate([np.asarray(store.concepts(s)[c.name]) for s in all_splits])
        parts = np.split(control_labels(types, y_all, c.kind, seed=seed, donors=train if train.any() else None),
                         ends[:-1])
        for s, part in zip(all_splits, parts):
            if s in out:
                out[s][c.name] = part
    return out
