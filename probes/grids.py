"""Fit one probe method over a hyperparameter grid for every concept on one design matrix; choose on validation.

``fit_method(method, x, ys, x_val, ys_val, concepts, grid, seeds)`` returns ``{concept: GridFit}``:
every grid point's probes (one per seed for stochastic methods, one in all for the deterministic
``linear`` and ``sparse``) and their validation scores (balanced accuracy or R^2, mean over
seeds). The chosen grid point is the best validation score; ties go to the first grid point, and
the default grids run from the strongest regularisation to the weakest. ``choose={concept: index}``
skips the choice (a control task reuses the task probe's hyperparameters). A caller's grid is checked up front by
:func:`checked_grid` (keys :func:`grid_keys`; the ``probes.grids`` config key and the harness use it). Inputs are checked once up
front, as every fitter checks them (:func:`validated`), whichever path the method then takes.

Batched where the method allows: ``linear`` fits every concept x l2 value on the site in one pass
(:func:`probes.linear.fit_grid`); ``sparse`` fits every concept x l1 value of one concept kind in
one batched FISTA run (the l1 values are fractions of each problem's ``l1_max``, the penalty at
which every weight is zero); ``sae`` trains one autoencoder per seed and grid point on the site
(unsupervised) and matches every concept to it. ``mlp`` and any other method are a loop of fits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from probes.base import Probe, ProbeError, as_labels, as_latents
from probes.batched import GLM, augment, fista
from probes.linear import _init_theta, fit_grid, validation_score
from probes.normalize import Normalizer
from probes.registry import hparam_names, make_fitter
from probes.sae import SAEFitter, SAEProbeFitter
from probes.sparse import SparseProbe
from worlds.concepts import Concept

DEFAULT_GRIDS: dict[str, tuple[dict[str, Any], ...]] = {
    "linear": tuple({"l2": v} for v in (10.0, 1.0, 1e-1, 1e-2, 1e-3, 1e-4)),
    "sparse": tuple({"l1_fraction": v} for v in (0.3, 0.1, 0.03, 0.01)),
    "mlp": ({"hidden": (64,), "lr": 3e-3, "batch_size": 512, "max_epochs": 50, "patience": 5},),
    "sae": ({"n_features": 64, "l1": 1e-2, "epochs": 10, "batch_size": 512},),
}
"""Per-method grids used when the caller gives none (strongest regularisation first).

The MLP's budget (2026-11-28, full default's cached latents, one core, all 60k training rows): the former
20 epochs / patience 3 stopped steps_to_goal early (held-out R^2 at ``embed`` 0.908; on 20k rows 0.887);
50 / 5 reach 0.917 (29 s for the site's 12 concepts), 100 / 10 0.920 (52 s); two hidden layers of 256
0.929 (14 s for that one concept). At ``feat``, 50 / 5 on all rows: agent_row 0.974, agent_col 0.966,
steps_to_goal 0.860, has_key 0.799 (20k rows, 20 / 3: 0.959, 0.952, 0.833, 0.785). Training all of a
site's MLPs as one batched network (stacked weights, ``bmm``, per-problem early stopping; equal to the
loop within 1e-5) was no faster: the fits are FLOP-bound, not overhead-bound (6.8 s vs 7.5 s on one
thread, 15.1 s vs 9.9 s on two), so the MLPs stay a loop of fits."""
LINEAR_TOL = 1e-4
"""Gradient tolerance of the batched linear solves: scikit-learn's default ``tol`` (the benchmark's setting)."""
LINEAR_MAX_ITER = 500
SPARSE_MAX_ITER = 300
"""FISTA iterations of the sparse grid (a grid point's ``max_iter`` overrides)."""
DETERMINISTIC = frozenset({"linear", "sparse"})
"""Methods whose fit does not depend on a seed: fitted once, not once per seed."""
_SAE_KEYS = ("n_features", "l1", "top_k", "tied", "lr", "epochs", "batch_size")
RUN_KEYS = frozenset({"seed", "device", "dtype", "sae"})
"""Fitter keywords a grid point does not set: the run's probe seeds, device and dtype (and the sae's prefitted SAE)."""
_SWEPT = {"linear": ("l2", "max_iter", "tol"), "sparse": ("l1_fraction", "max_iter", "tol")}
_SWEEP_KEY = {"linear": "l2", "sparse": "l1_fraction"}


@dataclass(frozen=True)
class GridFit:
    """One (method, site, concept): ``probes[g][s]`` at grid point ``g`` and seed ``s``; ``best`` is chosen."""

    method: str
    grid: tuple[dict[str, Any], ...]
    probes: tuple[tuple[Probe, ...], ...]
    val_scores: tuple[float, ...]
    best: int

    @property
    def chosen(self) -> tuple[Probe, ...]:
        """The chosen grid point's probes, one per seed."""
        return self.probes[self.best]

    @property
    def val_score(self) -> float:
        return self.val_scores[self.best]

    @property
    def hparams(self) -> dict[str, Any]:
        return dict(self.grid[self.best])


def grid_keys(method: str) -> tuple[str, ...]:
    """The hyperparameters one grid point of ``method`` may set: ``linear`` and ``sparse`` sweep ``l2`` /
    ``l1_fraction`` (plus ``max_iter``, ``tol``) in one batched fit; the other methods take their fitter's keywords
    (:func:`probes.registry.hparam_names`) except :data:`RUN_KEYS`."""
    if method in _SWEPT:
        return _SWEPT[method]
    return tuple(k for k in hparam_names(method) if k not in RUN_KEYS)


def checked_grid(method: str, points: Any, *, complete: bool = False) -> tuple[dict[str, Any], ...]:
    """``points`` as a grid of ``method``, checked before any fit (a :class:`ProbeError` naming the allowed keys).

    A non-empty list of mappings whose keys are :func:`grid_keys`; ``linear`` / ``sparse`` points each need ``l2`` /
    ``l1_fraction`` (no value twice); other points must build a fitter (:func:`probes.registry.make_fitter`). Numbers
    written as strings become floats (YAML 1.1 reads ``1e-3`` as a string). With ``complete``, where the method's
    default grid is one point (mlp, sae), each point is laid over it: unset hyperparameters keep the default budget.
    """
    keys = grid_keys(method)  # unknown method: ProbeError naming the known ones
    if isinstance(points, Mapping) or isinstance(points, (str, bytes)) or not isinstance(points, Sequence) or not points:
        raise ProbeError(f"the grid of method {method!r} must be a non-empty list of hyperparameter settings (e.g. "
                         f"[{{{keys[0]}: ...}}]), got {points!r}")
    out = []
    for i, point in enumerate(points):
        if not isinstance(point, Mapping):
            raise ProbeError(f"grid point {i} of method {method!r} must be a mapping of hyperparameters, got {point!r}")
        bad = sorted(str(k) for k in point if k not in keys)
        if bad:
            run = " (the seed, device and dtype are the run's)" if set(bad) & RUN_KEYS else ""
            raise ProbeError(f"grid point {i} of method {method!r} has unknown hyperparameter(s) {bad}; it takes: "
                             f"{', '.join(keys)}{run}")
        p = {str(k): _number(v) for k, v in point.items()}
        if method in _SWEEP_KEY and not isinstance(p.get(_SWEEP_KEY[method]), (int, float)):
            raise ProbeError(f"grid point {i} of method {method!r} needs a number {_SWEEP_KEY[method]!r}, got {point!r}")
        if complete and len(DEFAULT_GRIDS.get(method, ())) == 1:
            p = {**DEFAULT_GRIDS[method][0], **p}
        out.append(p)
    if method in _SWEEP_KEY:
        swept = [float(p[_SWEEP_KEY[method]]) for p in out]
        if len(set(swept)) != len(swept):
            raise ProbeError(f"the {method} grid repeats {_SWEEP_KEY[method]} values: {swept}")
    else:
        stand_in = Concept("grid_check", "binary", "a stand-in concept to check a grid point's values")
        for i, p in enumerate(out):
            try:
                make_fitter(method, stand_in, **p)
            except (ProbeError, TypeError, ValueError) as e:
                raise ProbeError(f"grid point {i} of method {method!r} ({p}): {e}") from None
    return tuple(out)


def _number(v: Any) -> Any:
    """``v``, or the float a numeric string such as ``"1e-3"`` spells."""
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return v
    return v


def as_tensor(a: Any, device: torch.device | str = "cpu", dtype: torch.dtype | None = None) -> Tensor:
    """A writable tensor copy of a (possibly memory-mapped, read-only) array."""
    t = torch.from_numpy(np.array(a))
    return t.to(device=device, dtype=dtype if (dtype is not None and t.is_floating_point()) else None)


def val_scores_of(concept: Concept, probes: Sequence[Probe], x_val: Tensor, y_val: Tensor) -> list[float]:
    """Validation score of each probe in ``probes`` (balanced accuracy or R^2)."""
    if not probes:
        return []
    pred = torch.stack([p.predict(x_val).to(torch.float64 if concept.kind == "scalar" else torch.int64) for p in probes], 1)
    yv = y_val.to(pred.device)
    return [float(v) for v in validation_score(concept, pred, yv.to(torch.float64) if concept.kind == "scalar" else yv.long())]


def _pick(scores: Sequence[float]) -> int:
    """First index of the best finite score (0 if none is finite)."""
    a = np.asarray(scores, np.float64)
    return int(np.nanargmax(a)) if np.isfinite(a).any() else 0


def fit_method(method: str, x: Tensor, ys: Mapping[str, Tensor], x_val: Tensor, ys_val: Mapping[str, Tensor],
               concepts: Sequence[Concept], grid: Sequence[Mapping[str, Any]], *, seeds: Sequence[int] = (0,),
               choose: Mapping[str, int] | None = None, device: torch.device | str = "cpu",
               dtype: torch.dtype = torch.float32) -> dict[str, GridFit]:
    """Fit ``method`` at every grid point for every concept on ``x [n d]`` (labels ``ys[name] [n]``).

    With ``choose``, only the chosen grid points are fitted where fits are per point (mlp, sae, other).
    """
    grid = tuple(dict(g) for g in grid)
    if not grid:
        raise ProbeError(f"the grid of method {method!r} is empty; give at least one hyperparameter setting")
    x, ys, x_val, ys_val = validated(x, ys, x_val, ys_val, concepts)
    x, x_val = x.to(device, dtype), x_val.to(device, dtype)
    if method == "linear":
        fits = _linear(x, ys, x_val, ys_val, concepts, grid, device, dtype)
    elif method == "sparse":
        fits = _sparse(x, ys, x_val, ys_val, concepts, grid, device, dtype)
    else:
        fits = _per_point(method, x, ys, x_val, ys_val, concepts, grid, seeds, choose, device, dtype)
    out = {}
    for c in concepts:
        probes = fits[c.name]
        scores = [float(np.mean(val_scores_of(c, ps, x_val, ys_val[c.name]))) if ps else float("nan") for ps in probes]
        best = choose[c.name] if choose is not None else _pick(scores)
        out[c.name] = GridFit(method, grid, tuple(tuple(ps) for ps in probes), tuple(scores), best)
    return out


def validated(x: Any, ys: Mapping[str, Any], x_val: Any, ys_val: Mapping[str, Any], concepts: Sequence[Concept]
              ) -> tuple[Tensor, dict[str, Tensor], Tensor, dict[str, Tensor]]:
    """The checks every fitter makes (:func:`probes.base.as_latents`, :func:`probes.base.as_labels`), once for the grid:
    finite ``[n d]`` latents, every concept labelled in both splits, training labels with >= 2 classes."""
    for c in concepts:
        if not isinstance(c, Concept):
            raise ProbeError(f"concepts must be worlds.concepts.Concept objects, got {type(c).__name__} {c!r}")
    missing = [c.name for c in concepts if c.name not in ys or c.name not in ys_val]
    if missing:
        raise ProbeError(f"no labels for concept(s) {missing}; training labels were given for {sorted(ys)}, validation "
                         f"labels for {sorted(ys_val)}: pass both for every concept fitted")
    x = as_latents(x, "training latents")
    x_val = as_latents(x_val, "validation latents", x.shape[1])
    ys = {c.name: as_labels(c, ys[c.name], x.shape[0], f"training labels of {c.name!r}") for c in concepts}
    ys_val = {c.name: as_labels(c, ys_val[c.name], x_val.shape[0], f"validation labels of {c.name!r}", fitting=False)
              for c in concepts}
    return x, ys, x_val, ys_val


def _linear(x, ys, x_val, ys_val, concepts, grid, device, dtype) -> dict[str, list[list[Probe]]]:
    unknown = sorted({k for g in grid for k in g} - {"l2", "max_iter", "tol"})
    if unknown or any("l2" not in g for g in grid):
        raise ProbeError(f"the linear grid takes 'l2' values (plus max_iter, tol), got {unknown or list(grid)}")
    lambdas = [float(g["l2"]) for g in grid]
    if len(set(lambdas)) != len(lambdas):
        raise ProbeError(f"the linear grid repeats l2 values: {lambdas}")
    res = fit_grid({"site": x}, {c.name: ys[c.name] for c in concepts}, concepts, lambdas, {"site": x_val},
                   {c.name: ys_val[c.name] for c in concepts}, max_iter=int(grid[0].get("max_iter", LINEAR_MAX_ITER)),
                   tol=float(grid[0].get("tol", LINEAR_TOL)), device=device, dtype=dtype)
    pos = {v: i for i, v in enumerate(res.lambdas)}  # fit_grid sorts the lambdas; map back to grid order
    return {c.name: [[res.probes[("site", c.name)][pos[v]]] for v in lambdas] for c in concepts}


def _sparse(x, ys, x_val, ys_val, concepts, grid, device, dtype) -> dict[str, list[list[Probe]]]:
    """L1 probes for every concept x ``l1_fraction`` of one kind in one batched FISTA run."""
    fixed = {k: v for k, v in grid[0].items() if k != "l1_fraction"}
    unknown = sorted(set(fixed) - {"max_iter", "tol"})
    if unknown or any("l1_fraction" not in g for g in grid):
        raise ProbeError(f"the sparse grid takes 'l1_fraction' (of each problem's l1_max) plus max_iter, tol; got {unknown or grid}")
    fracs = torch.tensor([float(g["l1_fraction"]) for g in grid], dtype=dtype, device=device)
    max_iter, tol = int(fixed.get("max_iter", SPARSE_MAX_ITER)), fixed.get("tol")
    norm = Normalizer.fit(x)
    z1 = augment(norm.apply(x))
    d, G = x.shape[1], len(grid)
    out: dict[str, list[list[Probe]]] = {}
    for kind in ("binary", "categorical", "scalar"):
        group = [c for c in concepts if c.kind == kind]
        if not group:
            continue
        k = max(c.num_classes for c in group) if kind == "categorical" else 1
        tg = torch.stack([ys[c.name].to(device) for c in group for _ in range(G)], 1)  # [n m], m = concepts x grid
        targets = tg.long() if kind == "categorical" else tg.to(dtype)
        ncls = torch.tensor([c.num_classes for c in group for _ in range(G)])
        glm = GLM(kind, z1, targets, torch.zeros(targets.shape[1], dtype=dtype, device=device), k=k, num_classes=ncls)
        theta0 = _init_theta(kind, targets, d + 1, k, dtype)
        _, g0 = glm(theta0, torch.arange(targets.shape[1], device=device))
        l1max = (g0 * glm.penalised).abs().amax(1)  # [m] the penalty at which every weight is zero
        l1s = l1max * fracs.repeat(len(group))
        theta, _ = fista(glm, l1s, theta0, max_iter=max_iter, tol=tol)
        theta = theta.reshape(len(group), G, k, d + 1)
        for j, c in enumerate(group):
            kc = c.num_classes if kind == "categorical" else 1
            out[c.name] = [[SparseProbe(c, norm, {"l1": float(l1s[j * G + g]), "l1_fraction": float(fracs[g]),
                                                  "max_iter": max_iter, "tol": tol},
                                        theta[j, g, :kc, :d].clone(), theta[j, g, :kc, d].clone())] for g in range(G)]
    return out


def _per_point(method, x, ys, x_val, ys_val, concepts, grid, seeds, choose, device, dtype) -> dict[str, list[list[Probe]]]:
    allowed = set(hparam_names(method)) - {"device", "dtype"}
    out: dict[str, list[list[Probe]]] = {c.name: [[] for _ in grid] for c in concepts}
    for gi, point in enumerate(grid):
        wanted = [c for c in concepts if choose is None or choose[c.name] == gi]
        if not wanted:
            continue
        for seed in seeds:
            hp = dict(point)
            if "seed" in allowed:
                hp["seed"] = int(seed)
            if method == "sae":  # one unsupervised autoencoder per seed and grid point, shared by the concepts
                sae_hp = {k: hp.pop(k) for k in _SAE_KEYS if k in hp}
                sae = SAEFitter(**sae_hp, seed=int(seed), device=device, dtype=dtype).fit(x)
                fitters = {c.name: SAEProbeFitter(c, sae=sae, **hp, device=device, dtype=dtype) for c in wanted}
            else:
                fitters = {c.name: make_fitter(method, c, **hp, device=device, dtype=dtype) for c in wanted}
            for c in wanted:
                out[c.name][gi].append(fitters[c.name].fit(x, ys[c.name].to(device), x_val, ys_val[c.name].to(device)))
            if method in DETERMINISTIC:
                break
    return out
