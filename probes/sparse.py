"""Sparse linear probes: L1-regularised logistic / multinomial / least squares, or the top-k units.

Objective on standardised latents: per-sample mean loss + ``l1 ||w||_1`` (intercept unpenalised),
solved by batched FISTA (:func:`probes.batched.fista`) -- batched over a whole L1 path at once. The
match in scikit-learn is ``Lasso(alpha=l1)`` (squared loss is halved there too) and
``LogisticRegression(penalty="l1", C=1/(l1 n), solver="saga")``.

With ``top_k`` the fitter runs the L1 path from ``l1_max`` (everything zero) down, takes the
strongest penalty whose solution has at least ``k`` non-zero units, keeps the ``k`` units with the
largest ``|weight|`` and refits an L2 probe on those units only. ``SparseProbe.units()`` lists the
units (latent dims) that carry the concept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from probes.base import ProbeError, ProbeFitter
from probes.batched import GLM, augment, fista
from probes.linear import LinearProbe, _init_theta, fit_linear_batch
from probes.normalize import Normalizer
from worlds.concepts import Concept


@dataclass(frozen=True, eq=False)
class SparseProbe(LinearProbe):
    """A linear probe whose ``weight [k d]`` is zero outside :meth:`units`."""

    method = "sparse"

    def units(self) -> Tensor:
        """Indices (int64, ascending) of the latent dims with a non-zero weight for any class."""
        return torch.nonzero(self.weight.abs().sum(0) > 0).flatten()


def _glm(concept: Concept, z: Tensor, y: Tensor, m: int) -> GLM:
    kind = concept.kind
    targets = y[:, None].expand(-1, m)
    targets = targets if kind == "categorical" else targets.to(z.dtype)
    k = concept.num_classes if kind == "categorical" else 1
    return GLM(kind, augment(z), targets, torch.zeros(m, dtype=z.dtype, device=z.device), k=k)


def l1_max(concept: Concept, z: Tensor, y: Tensor) -> float:
    """The smallest ``l1`` at which every weight is zero (largest |gradient| at the intercept-only fit)."""
    glm = _glm(concept, z, y, 1)
    theta0 = _init_theta(concept.kind, glm.targets, z.shape[1] + 1, glm.k, z.dtype)
    _, g = glm(theta0, torch.arange(1, device=z.device))
    return float((g[0] * glm.penalised).abs().max())


def fit_l1_path(concept: Concept, z: Tensor, y: Tensor, l1s: Tensor, *, max_iter: int = 5000,
                tol: float | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """L1 fits for every ``l1s [L]`` at once on standardised ``z [n d]``: ``(W [L k d], b [L k], converged [L])``."""
    L, d = l1s.shape[0], z.shape[1]
    glm = _glm(concept, z, y, L)
    theta0 = _init_theta(concept.kind, glm.targets, d + 1, glm.k, z.dtype)
    theta, conv = fista(glm, l1s.to(z.device, z.dtype), theta0, max_iter=max_iter, tol=tol)
    theta = theta.reshape(L, glm.k, d + 1)
    return theta[..., :d].clone(), theta[..., d].clone(), conv


class SparseFitter(ProbeFitter):
    """L1 probe (``top_k=None``) or top-k units refitted with L2 (``top_k=k``)."""

    method = "sparse"

    def __init__(self, concept: Concept, *, l1: float = 1e-2, top_k: int | None = None, path_length: int = 20,
                 refit_l2: float = 1e-4, max_iter: int = 5000, tol: float | None = None,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        super().__init__(concept, device=device, dtype=dtype)
        if not l1 > 0:
            raise ProbeError(f"l1 must be > 0, got {l1}")
        if top_k is not None and int(top_k) < 1:
            raise ProbeError(f"top_k must be a positive number of units or None, got {top_k}")
        self.l1, self.top_k, self.path_length = float(l1), None if top_k is None else int(top_k), int(path_length)
        self.refit_l2, self.max_iter, self.tol = float(refit_l2), int(max_iter), tol

    def hparams(self) -> dict[str, Any]:
        return {"l1": self.l1, "top_k": self.top_k, "path_length": self.path_length, "refit_l2": self.refit_l2,
                "max_iter": self.max_iter, "tol": self.tol}

    def fit(self, x: Tensor, y: Tensor, x_val: Tensor | None = None, y_val: Tensor | None = None) -> SparseProbe:
        """Fit on ``x [n d]``, ``y [n]`` (the validation split is not used)."""
        x, y = self._check(x, y)
        norm = Normalizer.fit(x)
        z = norm.apply(x)
        kc = self.concept.num_classes if self.concept.kind == "categorical" else 1
        if self.top_k is None:
            w, b, _ = fit_l1_path(self.concept, z, y, torch.tensor([self.l1]), max_iter=self.max_iter, tol=self.tol)
            return SparseProbe(self.concept, norm, self.hparams(), w[0, :kc], b[0, :kc])
        d = z.shape[1]
        if self.top_k > d:
            raise ProbeError(f"top_k must be at most the latent width {d}, got {self.top_k}")
        top = l1_max(self.concept, z, y)
        l1s = top * torch.logspace(0, -3, self.path_length, dtype=self.dtype, device=self.device)  # strongest first
        # only the support's ranking is used from the path, so a loose tolerance is enough there
        w, _, _ = fit_l1_path(self.concept, z, y, l1s, max_iter=self.max_iter, tol=1e-5 if self.tol is None else self.tol)
        mag = w.abs().sum(1)  # [L d]
        enough = ((mag > 0).sum(1) >= self.top_k).nonzero().flatten()
        at = int(enough[0]) if enough.numel() else len(l1s) - 1  # strongest penalty with >= k units
        units = mag[at].topk(self.top_k).indices.sort().values
        (wk, bk), = fit_linear_batch(z[:, units], [self.concept], [y],
                                     torch.tensor([self.refit_l2], dtype=self.dtype, device=self.device))[0]
        weight = torch.zeros(kc, d, dtype=self.dtype, device=self.device)
        weight[:, units] = wk
        return SparseProbe(self.concept, norm, self.hparams(), weight, bk)
