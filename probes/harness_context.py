"""The per-run context of :func:`probes.harness.run_harness`: the run's shared labels, groups and settings, the fit
of one method at one site (task and control probes), and the result rows made from its predictions (scores, the
prior baseline, selectivity, MDL)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from probes.base import Probe, ProbeError, varies
from probes.codelength import codelength_results, coded_concept, mdl_subsample
from probes.control import selectivity
from probes.grids import GridFit, as_tensor, fit_method
from probes.mdl import mdl_estimates
from probes.metrics import concept_estimates, metric_objects, prior_predictions
from probes.ontology import validation_metric
from probes.results import ResultRow
from probes.stats import Estimate, bootstrap_seeds
from worlds.concepts import Concept

NO_SITE = "none"
"""Site of the ``"prior"`` rows (the prior reads no latent)."""
BINNED_SCALAR_L2 = 1e-2
"""l2 of the linear multinomial probe that codes a scalar concept's quantile bins in the MDL rows."""
_PROBA_METRICS = ("auroc", "ece")


@dataclass
class HarnessContext:
    """Shared arrays and settings of one harness run (fitting, scoring and row making)."""

    labels: dict[str, dict[str, np.ndarray]]
    groups: dict[str, np.ndarray]
    ctrl: dict[str, dict[str, np.ndarray]]
    grid: dict[str, tuple[dict[str, Any], ...]]
    max_rows: dict[str, int | None]
    seeds: list[int]
    n_boot: int
    seed: int
    device: Any
    dtype: torch.dtype
    skipped: dict[str, str]

    def fit(self, method: str, site: str, xs: Mapping[str, np.ndarray], cs: Sequence[Concept], *,
            with_control: bool, row: str | None = None) -> tuple[dict[str, GridFit], dict[str, GridFit]]:
        """Task fits (grid chosen on val) and, if asked, control fits at the task's chosen grid points. ``row`` is the
        row method of these fits (default ``method``; a baseline's :func:`probes.harness.baseline_name`): skips are
        listed under ``<row>/<site>/<concept>``, so a baseline's skip neither hides nor is hidden by the main fit's."""
        row = row or method
        n = xs["train"].shape[0]
        limit = self.max_rows.get(method)
        idx = np.arange(n) if limit is None or n <= limit else np.sort(np.random.default_rng(self.seed).choice(n, limit, replace=False))
        x, xv = as_tensor(xs["train"][idx], self.device, self.dtype), as_tensor(xs["val"], self.device, self.dtype)

        ok = [c for c in cs if varies(c, self.labels["train"][c.name][idx])]
        for c in cs:
            if c not in ok:
                self.skipped[f"{row}/{site}/{c.name}"] = "one class in the subsampled training rows"
        ys = {c.name: as_tensor(self.labels["train"][c.name][idx]) for c in ok}
        yv = {c.name: as_tensor(self.labels["val"][c.name]) for c in ok}
        kw = dict(device=self.device, dtype=self.dtype)
        task = fit_method(method, x, ys, xv, yv, ok, self.grid[method], seeds=self.seeds, **kw) if ok else {}
        if not with_control or not self.ctrl:
            return task, {}
        cc = [c for c in ok if varies(c, self.ctrl["train"][c.name][idx])]
        for c in ok:
            if c not in cc:
                self.skipped[f"{row}/{site}/{c.name}/control"] = "control labels have one class in training"
        if not cc:
            return task, {}
        yc = {c.name: as_tensor(self.ctrl["train"][c.name][idx]) for c in cc}
        ycv = {c.name: as_tensor(self.ctrl["val"][c.name]) for c in cc}
        control = fit_method(method, x, yc, xv, ycv, cc, self.grid[method], seeds=self.seeds,
                             choose={c.name: task[c.name].best for c in cc}, **kw)
        return task, control

    def _predict(self, probes: Sequence[Probe], x: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray | None]]:
        xt = as_tensor(x, self.device, self.dtype)
        scalar = probes[0].concept.kind == "scalar"
        preds = [p.predict(xt).cpu().numpy() for p in probes]
        probas = [None if scalar else p.predict_proba(xt).double().cpu().numpy() for p in probes]
        return preds, probas

    def estimates(self, c: Concept, probes: Sequence[Probe], x: np.ndarray, y: np.ndarray, groups: np.ndarray) -> dict[str, Estimate]:
        preds, probas = self._predict(probes, x)
        k = c.num_classes or None
        if len(probes) == 1:
            return concept_estimates(c.kind, y, preds[0], probas[0], groups=groups, num_classes=k, n_boot=self.n_boot, seed=self.seed)
        out = {}
        for name, metric in metric_objects(c.kind, c.num_classes).items():
            arrays = [(y, pr if name in _PROBA_METRICS else pd) for pd, pr in zip(preds, probas)]
            out[name] = bootstrap_seeds(metric, arrays, groups=[groups] * len(probes), n_boot=self.n_boot, seed=self.seed)
        return out

    def score_rows(self, method: str, site: str, fits: Mapping[str, GridFit], xs: Mapping[str, np.ndarray],
                   splits: Sequence[str]) -> list[ResultRow]:
        rows = []
        for n, f in fits.items():
            c = f.chosen[0].concept
            for s in splits:
                for metric, est in self.estimates(c, f.chosen, xs[s], self.labels[s][n], self.groups[s]).items():
                    rows.append(ResultRow.from_estimate(method, site, n, s, metric, est))
        return rows

    def prior_rows(self, cs: Sequence[Concept], splits: Sequence[str]) -> list[ResultRow]:
        rows = []
        for c in cs:
            for s in splits:
                y = self.labels[s][c.name]
                pred, proba = prior_predictions(c.kind, self.labels["train"][c.name], len(y), num_classes=c.num_classes or None)
                ests = concept_estimates(c.kind, y, pred, proba, groups=self.groups[s], num_classes=c.num_classes or None,
                                         n_boot=self.n_boot, seed=self.seed)
                rows += [ResultRow.from_estimate("prior", NO_SITE, c.name, s, m, e) for m, e in ests.items()]
        return rows

    def prediction_rows(self, method: str, site: str, c: Concept, split: str, pred: np.ndarray,
                        proba: np.ndarray | None) -> list[ResultRow]:
        """Rows of every metric of ``c`` on ``split`` for given predictions ``[n]`` (and class probabilities ``[n k]``)."""
        ests = concept_estimates(c.kind, self.labels[split][c.name], pred, proba, groups=self.groups[split],
                                 num_classes=c.num_classes or None, n_boot=self.n_boot, seed=self.seed)
        return [ResultRow.from_estimate(method, site, c.name, split, m, e) for m, e in ests.items()]

    def selectivity_row(self, method: str, site: str, c: Concept, task: GridFit, ctrl: GridFit, x_test: np.ndarray) -> ResultRow:
        """Task minus control score on test. With several probe seeds (one task and one control probe per seed) the
        mean over seeds of the paired difference, its interval a bootstrap over (seed, episode) drawing the same
        resamples as the task rows (:func:`probes.stats.bootstrap_seeds`); with one, the paired episode bootstrap."""
        if len(task.chosen) != len(ctrl.chosen):
            raise ProbeError(f"selectivity pairs task and control probes seed by seed, got {len(task.chosen)} task and "
                             f"{len(ctrl.chosen)} control probes for {c.name!r}; fit the control task with the same seeds")
        pt, _ = self._predict(task.chosen, x_test)
        pc, _ = self._predict(ctrl.chosen, x_test)
        metric = metric_objects(c.kind, c.num_classes)[validation_metric(c)]
        y, yc, groups = self.labels["test"][c.name], self.ctrl["test"][c.name], self.groups["test"]
        if len(pt) == 1:
            est = selectivity(metric, (y, pt[0]), (yc, pc[0]), groups=groups, n_boot=self.n_boot, seed=self.seed)
        else:
            est = bootstrap_seeds(_Difference(metric), [(y, a, yc, b) for a, b in zip(pt, pc)],
                                  groups=[groups] * len(pt), n_boot=self.n_boot, seed=self.seed)
        return ResultRow.from_estimate(method, site, c.name, "test", "selectivity", est)

    def mdl_rows(self, method: str, site: str, task: Mapping[str, GridFit], ctrl: Mapping[str, GridFit],
                 x_test: np.ndarray, shuffles: int, max_rows: int | None, n_bins: int) -> list[ResultRow]:
        idx = mdl_subsample(x_test.shape[0], max_rows, self.seed)
        targets = []
        for n, f in task.items():
            c = f.chosen[0].concept
            y, yc = self.labels["test"][n][idx], (self.ctrl["test"][n][idx] if n in ctrl else None)
            coded, yk, yck = coded_concept(c, y, yc, n_bins)
            if coded.num_classes < 2:
                self.skipped[f"{method}/{site}/{n}/mdl"] = "the coded test labels have one bin"
                continue
            hp = fitter_hparams(method, f)
            if c.kind == "scalar" and method == "linear":  # a ridge l2 means nothing to the multinomial on bins
                hp = {"l2": BINNED_SCALAR_L2}
            targets.append((n, coded, yk, hp))
            if yck is not None:
                targets.append((f"{n}\ncontrol", coded, yck, hp))
        if not targets:
            return []
        res = codelength_results(method, np.array(x_test[idx], np.float32), targets, shuffles=shuffles, seed=self.seed,
                                 device=self.device, dtype=self.dtype)
        rows = []
        for tid, rs in res.items():
            suffix = "_control" if tid.endswith("\ncontrol") else ""
            ests = mdl_estimates(rs, self.groups["test"][idx], n_boot=self.n_boot, seed=self.seed)
            rows += [ResultRow.from_estimate(method, site, tid.split("\n")[0], "test", m + suffix, e) for m, e in ests.items()]
        return rows


@dataclass(frozen=True)
class _Difference:
    """``metric(y, pred) - metric(y_control, pred_control)`` on the same rows, batched over bootstrap resamples."""

    metric: Any

    def __call__(self, y: np.ndarray, pred: np.ndarray, yc: np.ndarray, pc: np.ndarray) -> float:
        return float(self.metric(y, pred)) - float(self.metric(yc, pc))

    def batched(self, counts: np.ndarray, group_index: np.ndarray, y: np.ndarray, pred: np.ndarray, yc: np.ndarray,
                pc: np.ndarray) -> np.ndarray:
        return (np.asarray(self.metric.batched(counts, group_index, y, pred), np.float64)
                - np.asarray(self.metric.batched(counts, group_index, yc, pc), np.float64))


def fitter_hparams(method: str, fit: GridFit) -> dict[str, Any]:
    """The chosen grid point as ``make_fitter`` keywords (sparse: the absolute l1 its fraction resolved to)."""
    if method == "sparse":
        hp = fit.chosen[0].hparams
        return {k: hp[k] for k in ("l1", "max_iter", "tol") if k in hp}
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in fit.hparams.items()}

