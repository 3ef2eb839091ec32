"""L2-regularised linear probes: logistic (binary), multinomial (categorical), ridge (scalar).

``LinearFitter(concept, l2=...)`` fits one probe; :func:`fit_grid` fits every concept x site x
regularisation value together (one shared design per site, :mod:`probes.lbfgs`) and picks the
regularisation on the validation split. Objectives (per-sample mean loss + ``l2/2 ||w||^2`` on
standardised latents, intercept unpenalised) match scikit-learn with ``C = 1/(l2 n)`` for
``LogisticRegression`` and ``alpha = l2 n`` for ``Ridge`` fitted on the same standardised latents.

``LinearProbe.direction()`` is ``d score / d x`` in raw latent space, ``weight / std``: ``[d]`` for
binary/scalar, ``[k d]`` for categorical.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import einops
import torch
from torch import Tensor

from probes.base import Probe, ProbeError, ProbeFitter, as_labels, as_latents
from probes.batched import default_tol, ridge_solve
from probes.lbfgs import Design, glm_lbfgs
from probes.normalize import EPS, Normalizer
from worlds.concepts import Concept


@dataclass(frozen=True, eq=False)
class LinearProbe(Probe):
    """``score = normalise(x) @ weight.T + bias``; ``weight [k d]``, ``bias [k]`` (k = 1 unless categorical)."""

    weight: Tensor
    bias: Tensor
    method = "linear"

    def _score(self, z: Tensor) -> Tensor:
        s = z @ self.weight.T + self.bias
        return s if self.concept.kind == "categorical" else s[:, 0]

    @functools.cached_property
    def _folded(self) -> tuple[Tensor, Tensor, Tensor | None]:
        return self._fold(self.weight, self.bias)

    def _score_raw(self, x: Tensor) -> Tensor:
        s = self._folded_affine(x, *self._folded)
        return s if self.concept.kind == "categorical" else s[:, 0]

    def direction(self) -> Tensor:
        """``d score / d x`` in raw latent space: ``weight / std``, ``[d]`` (or ``[k d]`` if categorical)."""
        w = self.weight / self.norm.std
        return w if self.concept.kind == "categorical" else w[0]


def _init_theta(kind: str, targets: Tensor, p1: int, k: int, dtype: torch.dtype) -> Tensor:
    """Zero weights; intercepts at the base rates (log-odds / log-frequencies / means) of each problem."""
    theta = torch.zeros(targets.shape[1], k, p1, dtype=dtype, device=targets.device)
    if kind == "binary":
        p = targets.mean(0).clamp(1e-6, 1 - 1e-6)
        theta[:, 0, -1] = torch.log(p / (1 - p))
    elif kind == "categorical":
        freq = torch.nn.functional.one_hot(targets, k).to(theta.dtype).mean(0).clamp_min(1e-6)  # [m k]
        theta[:, :, -1] = freq.log()
    else:
        theta[:, 0, -1] = targets.mean(0)
    return theta.flatten(1)


def fit_linear_batch(z: Tensor, concepts: Sequence[Concept], ys: Sequence[Tensor], lambdas: Tensor, *,
                     max_iter: int = 1000, tol: float | None = None,
                     design: Design | None = None) -> list[list[tuple[Tensor, Tensor]]]:
    """Fit every ``(concept, lambda)`` on ``z [n d]`` (standardised); ``ys[i] [n]`` validated labels.

    Returns ``out[i][l] = (weight [k d], bias [k])``. One :class:`~probes.lbfgs.Design` (a GEMM and an
    eigendecomposition; pass ``design`` to reuse one) serves all of them: the scalar concepts' ridge
    paths come straight from it; binary concepts are one batched L-BFGS over ``len(binary) * L``
    problems and categorical ones another, preconditioned by it.
    """
    n, d = z.shape
    L = lambdas.shape[0]
    tol = default_tol(z.dtype) if tol is None else tol
    design = Design.of(z) if design is None else design
    out: list[list[Any]] = [[None] * L for _ in concepts]
    groups: dict[str, list[int]] = {"binary": [], "categorical": [], "scalar": []}
    for i, c in enumerate(concepts):
        groups[c.kind].append(i)
    if groups["scalar"]:
        ycols = torch.stack([ys[i].to(z.dtype) for i in groups["scalar"]], 1)  # [n c]
        w, b = design.ridge(ycols, lambdas.to(z.dtype))  # [c L d], [c L]
        for j, i in enumerate(groups["scalar"]):
            for l in range(L):
                out[i][l] = (w[j, l][None], b[j, l][None])
    for kind in ("binary", "categorical"):
        idx = groups[kind]
        if not idx:
            continue
        k = 1 if kind == "binary" else max(concepts[i].num_classes for i in idx)
        tg = torch.stack([ys[i] for i in idx for _ in range(L)], 1)  # [n m], m = len(idx) * L
        targets = tg.to(z.dtype) if kind == "binary" else tg
        ncls = torch.tensor([concepts[i].num_classes for i in idx for _ in range(L)])
        l2 = lambdas.repeat(len(idx)).to(z.dtype)
        theta0 = einops.rearrange(_init_theta(kind, targets, d + 1, k, z.dtype), "m (k p) -> m k p", k=k)
        theta = _fit_path(design, kind, targets, l2, theta0, lambdas, len(idx), k=k, num_classes=ncls,
                          max_iter=max_iter, tol=tol)
        weight = einops.rearrange(theta[..., :d], "(c l) k d -> c l k d", l=L)
        bias = einops.rearrange(theta[..., d] - theta[..., :d] @ design.mean, "(c l) k -> c l k", l=L)
        for j, i in enumerate(idx):
            kc = concepts[i].num_classes if kind == "categorical" else 1
            for l in range(L):
                out[i][l] = (weight[j, l, :kc].clone(), bias[j, l, :kc].clone())
    return out


WARM_LAMBDAS = 3
"""How many of the weakest regularisation values start from the solution at the next stronger one."""


def _fit_path(design: Design, kind: str, targets: Tensor, l2: Tensor, theta0: Tensor, lambdas: Tensor, c: int,
              **kw: Any) -> Tensor:
    """:func:`~probes.lbfgs.glm_lbfgs` of ``c`` concepts x ``L`` lambdas (rows ``concept * L + lambda``).

    The weakest ``WARM_LAMBDAS`` values barely change the solution, so instead of starting cold they
    start from the solution at the next stronger value (a warm start, as scikit-learn's path is fitted
    in the benchmark): the stronger values are solved first, together, then the weak ones, together.
    Each problem still stops on its own gradient test (the same as from a cold start), so the answers
    agree with cold starts to within the tolerance. Measured on the probe_fit grid: 18% fewer L-BFGS
    iterations, about 6% less CPU time (a warm-started problem still needs ~4 iterations).
    """
    L = lambdas.shape[0]
    n_warm = WARM_LAMBDAS if L > WARM_LAMBDAS + 1 else 0
    order = torch.argsort(lambdas.cpu(), descending=True)  # strongest first

    def rows(ls: Tensor) -> Tensor:  # problem rows of lambda indices ``ls`` for every concept
        return (torch.arange(c)[:, None] * L + ls[None, :]).flatten().to(theta0.device)

    theta = theta0.clone()
    for ls, start_ls in ((order[:L - n_warm], None), (order[L - n_warm:], order[L - n_warm - 1].expand(n_warm))):
        if ls.numel() == 0:
            continue
        r = rows(ls)
        start = theta0[r] if start_ls is None else theta[rows(start_ls)]
        theta[r] = glm_lbfgs(design, kind, targets[:, r], l2[r], start, **{**kw, "num_classes": kw["num_classes"][r.cpu()]})[0]
    return theta


class LinearFitter(ProbeFitter):
    """One L2-regularised linear probe (logistic / multinomial / ridge by the concept's kind).

    Streaming: for a scalar concept ``update`` accumulates sufficient statistics (shifted sums in
    float64), so ``finish()`` never holds the data; for class concepts it buffers the batches.
    """

    method = "linear"

    def __init__(self, concept: Concept, *, l2: float = 1e-3, max_iter: int = 1000, tol: float | None = None,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        super().__init__(concept, device=device, dtype=dtype)
        if not l2 > 0:
            raise ProbeError(f"l2 must be > 0 (the solvers need a strictly convex objective), got {l2}")
        self.l2, self.max_iter, self.tol = float(l2), int(max_iter), tol
        self._mom: dict[str, Any] | None = None

    def hparams(self) -> dict[str, Any]:
        return {"l2": self.l2, "max_iter": self.max_iter, "tol": self.tol}

    def fit(self, x: Tensor, y: Tensor, x_val: Tensor | None = None, y_val: Tensor | None = None) -> LinearProbe:
        """Fit on ``x [n d]``, ``y [n]``; the validation split is not used (nothing to stop early)."""
        x, y = self._check(x, y)
        norm = Normalizer.fit(x)
        lam = torch.tensor([self.l2], dtype=self.dtype, device=self.device)
        (w, b), = fit_linear_batch(norm.apply(x), [self.concept], [y], lam, max_iter=self.max_iter, tol=self.tol)[0]
        return LinearProbe(self.concept, norm, self.hparams(), w, b)

    def update(self, x: Tensor, y: Tensor) -> "LinearFitter":
        if self.concept.kind != "scalar":
            return super().update(x, y)  # type: ignore[return-value]
        x = as_latents(x, "latents", None if self._mom is None else self._mom["sx"].shape[0]).to(self.device, torch.float64)
        y = as_labels(self.concept, y, x.shape[0], fitting=False).to(self.device, torch.float64)
        if self._mom is None:  # shift by the first batch's mean so the sums do not cancel
            self._mom = {"n": 0, "kx": x.mean(0), "ky": y.mean(), "sx": torch.zeros_like(x[0]), "sy": 0.0,
                         "sxx": x.new_zeros(x.shape[1], x.shape[1]), "sxy": torch.zeros_like(x[0]), "syy": 0.0}
        mo = self._mom
        xc, yc = x - mo["kx"], y - mo["ky"]
        mo["n"] += x.shape[0]
        mo["sx"] += xc.sum(0)
        mo["sy"] += float(yc.sum())
        mo["syy"] += float((yc * yc).sum())
        mo["sxx"] += xc.T @ xc
        mo["sxy"] += xc.T @ yc
        return self

    def finish(self) -> LinearProbe:
        if self.concept.kind != "scalar":
            return super().finish()  # type: ignore[return-value]
        mo = self._mom
        if mo is None:
            raise ProbeError("LinearFitter.finish() called before any update(x, y)")
        n = mo["n"]
        mx, my = mo["sx"] / n, mo["sy"] / n
        if mo["syy"] / n - my * my <= 0:
            raise ProbeError(f"labels for scalar concept {self.concept.name!r} are constant; a probe needs varying values")
        cov = mo["sxx"] / n - torch.outer(mx, mx)
        std = cov.diagonal().clamp_min(0).sqrt()
        std = torch.where(std < EPS, torch.ones_like(std), std)
        gram = cov / torch.outer(std, std)
        cross = ((mo["sxy"] / n - mx * my) / std)[:, None]
        w = ridge_solve(gram, cross, torch.tensor([self.l2], dtype=torch.float64, device=self.device))[0]  # [1 d]
        norm = Normalizer((mx + mo["kx"]).to(self.dtype), std.to(self.dtype))
        bias = torch.tensor([my + float(mo["ky"])], dtype=self.dtype, device=self.device)
        return LinearProbe(self.concept, norm, self.hparams(), w.to(self.dtype), bias)


# ------------------------------------------------------------------------------------------- the grid
def validation_score(concept: Concept, pred: Tensor, y: Tensor) -> Tensor:
    """Balanced accuracy (binary/categorical) or R^2 (scalar) of ``pred [n L]`` against ``y [n]`` -> ``[L]``."""
    if concept.kind == "scalar":
        y = y.to(pred.dtype)
        ss_tot = ((y - y.mean()) ** 2).sum().clamp_min(torch.finfo(pred.dtype).tiny)
        return 1 - ((pred - y[:, None]) ** 2).sum(0) / ss_tot
    recalls = [((pred == c) & (y[:, None] == c)).sum(0) / (y == c).sum() for c in torch.unique(y).tolist()]
    return torch.stack(recalls).to(torch.float64).mean(0)


@dataclass(frozen=True)
class GridResult:
    """Every probe of a grid and its validation score; keys are ``(site, concept_name)``.

    ``probes[key][l]`` was fitted with ``lambdas[l]``; ``best_index[key]`` is chosen by the rule:
    highest validation score (balanced accuracy or R^2); ties go to the stronger regularisation.
    """

    lambdas: tuple[float, ...]
    probes: Mapping[tuple[str, str], tuple[LinearProbe, ...]]
    val_scores: Mapping[tuple[str, str], tuple[float, ...]]
    best_index: Mapping[tuple[str, str], int]

    def best(self, site: str, concept: str) -> LinearProbe:
        return self.probes[(site, concept)][self.best_index[(site, concept)]]

    def best_lambda(self, site: str, concept: str) -> float:
        return self.lambdas[self.best_index[(site, concept)]]


def choose_lambda(scores: Sequence[float], lambdas: Sequence[float]) -> int:
    """Index of the best score; among equal scores, the largest lambda (stronger regularisation)."""
    return max(range(len(scores)), key=lambda i: (scores[i], lambdas[i]))


def fit_grid(x_by_site: Mapping[str, Tensor], y_by_concept: Mapping[str, Tensor], concepts: Iterable[Concept],
             lambdas: Sequence[float], x_val_by_site: Mapping[str, Tensor], y_val_by_concept: Mapping[str, Tensor], *,
             max_iter: int = 1000, tol: float | None = None, device: torch.device | str = "cpu",
             dtype: torch.dtype = torch.float32) -> GridResult:
    """Fit every concept x site x lambda (one batched pass per site) and choose lambda on validation.

    ``x_by_site[s] [n d_s]`` and ``y_by_concept[c] [n]`` are the training split; the ``*_val`` maps
    hold the validation split with the same keys. Each site is standardised with its own training
    statistics, then :func:`fit_linear_batch` fits all concepts and lambdas on it.
    """
    concepts = list(concepts)
    names = [c.name for c in concepts]
    for what, ymap in (("y_by_concept", y_by_concept), ("y_val_by_concept", y_val_by_concept)):
        if sorted(ymap) != sorted(names):
            raise ProbeError(f"{what} must have exactly the concepts {sorted(names)}, got {sorted(ymap)}")
    if sorted(x_val_by_site) != sorted(x_by_site):
        raise ProbeError(f"x_val_by_site must have the sites {sorted(x_by_site)}, got {sorted(x_val_by_site)}")
    lam = sorted({float(v) for v in lambdas})
    if not lam or lam[0] <= 0:
        raise ProbeError(f"lambdas must be a non-empty list of values > 0, got {list(lambdas)}")
    lam_t = torch.tensor(lam, dtype=dtype, device=device)
    probes, scores, best = {}, {}, {}
    for site in x_by_site:
        x = as_latents(x_by_site[site], f"training latents of site {site!r}").to(device, dtype)
        xv = as_latents(x_val_by_site[site], f"validation latents of site {site!r}", x.shape[1]).to(device, dtype)
        ys = [as_labels(c, y_by_concept[c.name], x.shape[0], f"training labels of {c.name!r}").to(device) for c in concepts]
        yvs = [as_labels(c, y_val_by_concept[c.name], xv.shape[0], f"validation labels of {c.name!r}", fitting=False).to(device)
               for c in concepts]
        norm = Normalizer.fit(x)
        fitted = fit_linear_batch(norm.apply(x), concepts, ys, lam_t, max_iter=max_iter, tol=tol)
        # every probe of the site scored on validation with one GEMM (Probe.predict would re-check and
        # re-normalise the validation latents once per probe)
        zv = norm.apply(xv)
        w_all = torch.cat([w for fits in fitted for w, _ in fits])  # [rows d], rows = sum of k over probes
        b_all = torch.cat([b for fits in fitted for _, b in fits])
        s_all = zv @ w_all.T + b_all  # [nv rows]
        at = 0
        for c, fits, yv in zip(concepts, fitted, yvs):
            k = fits[0][0].shape[0]
            s = einops.rearrange(s_all[:, at:at + k * len(lam)], "n (l k) -> n l k", k=k)
            at += k * len(lam)
            pred = s[..., 0] if c.kind == "scalar" else ((s[..., 0] > 0).long() if c.kind == "binary" else s.argmax(-1))
            sc = validation_score(c, pred, yv).tolist()
            hp = [{"l2": l, "max_iter": max_iter, "tol": tol} for l in lam]
            probes[(site, c.name)] = tuple(LinearProbe(c, norm, h, w, b) for h, (w, b) in zip(hp, fits))
            scores[(site, c.name)] = tuple(sc)
            best[(site, c.name)] = choose_lambda(sc, lam)
    return GridResult(tuple(lam), probes, scores, best)
