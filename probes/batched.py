"""Batched solvers: many regularised GLMs on one shared design matrix, GEMM-heavy.

Every solver fits ``m`` problems at once -- one per (concept, regularisation value) pair -- on the
same normalised latents ``z [n d]``: one ``Z1 @ Theta^T`` and one ``R^T @ Z1`` per iteration instead
of ``m`` separate fits. Parameters are stacked as ``theta [m p]`` with the intercept(s) last per class
and never penalised. Objectives, per problem ``j`` (the scikit-learn match is in brackets)::

    binary       mean_i logloss(y_ij, s_ij) + l2_j/2 ||w_j||^2   [LogisticRegression, C = 1/(l2 n)]
    categorical  mean_i cross-entropy        + l2_j/2 ||W_j||_F^2 [multinomial, C = 1/(l2 n)]
    scalar       mean_i (y_ij - s_ij)^2 / 2  + l2_j/2 ||w_j||^2   [Ridge, alpha = l2 n]

and ``+ l1_j ||w_j||_1`` for :func:`fista` (``Lasso(alpha=l1)``; ``LogisticRegression(penalty="l1",
C = 1/(l1 n))``). We write these rather than call scikit-learn because scikit-learn fits one problem
per call. The L2 problems (ridge, logistic, multinomial) are solved by :mod:`probes.lbfgs`, which
shares one eigendecomposition of the design between all of them; :class:`GLM` and :func:`fista`
serve the L1 problems.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import einops
import torch
from torch import Tensor

Objective = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
"""``fun(theta [m' p], idx [m']) -> (loss [m'], grad [m' p])`` for the problems ``idx``."""


def augment(z: Tensor) -> Tensor:
    """``[n d] -> [n d+1]``: a column of ones (the intercept) appended."""
    return torch.cat([z, z.new_ones(z.shape[0], 1)], 1)


def ridge_solve(gram: Tensor, cross: Tensor, lambdas: Tensor) -> Tensor:
    """All ridge paths from one eigendecomposition.

    ``gram [d d] = Zc^T Zc / n`` and ``cross [d c] = Zc^T Yc / n`` of centred data; returns
    ``W [c L d]`` solving ``(gram + l I) w = cross`` for every target ``c`` and ``l`` in ``lambdas [L]``.
    """
    # float64: LAPACK's float32 eigh can fail to converge on rank-deficient grams (few rows)
    evals, vecs = (t.to(gram.dtype) for t in torch.linalg.eigh(gram.double()))
    r = vecs.T @ cross  # [d c]
    scaled = r[:, None, :] / (evals[:, None, None] + lambdas[None, :, None])  # [d L c]
    w = einops.einsum(vecs, scaled, "d e, e l c -> c l d")
    return w


@dataclass
class GLM:
    """The smooth part of ``m`` stacked problems sharing ``z1 = augment(z) [n d+1]``.

    ``targets``: binary ``[n m]`` in {0,1}; categorical ``[n m]`` class indices (``num_classes [m]``
    says how many classes problem ``j`` has; logits of the rest are masked); scalar ``[n m]`` values.
    ``l2 [m]`` is the ridge strength (0 for the smooth part of an L1 problem).
    """

    kind: str
    z1: Tensor
    targets: Tensor
    l2: Tensor
    k: int = 1
    num_classes: Tensor | None = None

    def __post_init__(self) -> None:
        self.n, self.p1 = self.z1.shape
        self._t = self.targets.T.contiguous()  # [m n]: reductions over n run along contiguous memory
        if self.kind == "categorical":
            kc = self.num_classes if self.num_classes is not None else torch.full((self.targets.shape[1],), self.k)
            self.mask = torch.arange(self.k, device=self.z1.device)[None, :] >= kc.to(self.z1.device)[:, None]  # [m k]
        pen = torch.ones(self.k, self.p1, dtype=torch.bool, device=self.z1.device)
        pen[:, -1] = False
        self.penalised = pen.flatten()  # [p], p = k (d+1)
        self._cache: tuple[Tensor, Tensor] | None = None

    @property
    def num_params(self) -> int:
        return self.k * self.p1

    def _targets(self, idx: Tensor) -> Tensor:
        """``[m' n]`` targets of problems ``idx`` (cached: the active set rarely changes)."""
        if self._cache is None or self._cache[0].shape != idx.shape or not torch.equal(self._cache[0], idx):
            self._cache = (idx, self._t[idx])
        return self._cache[1]

    def __call__(self, theta: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
        """``theta [m' k(d+1)]`` for problems ``idx [m']`` -> ``(loss [m'] float64, grad [m' k(d+1)])``.

        The loss is summed in float64 so that a float32 solve can still see its line-search decrease.
        """
        n, z1 = self.n, self.z1
        w = einops.rearrange(theta, "m (k p) -> (m k) p", k=self.k)
        s = w @ z1.T  # [(m k) n], the one GEMM forward
        t = self._targets(idx)
        if self.kind == "binary":
            loss = (torch.nn.functional.softplus(s) - t * s).sum(1, dtype=torch.float64) / n
            r = torch.sigmoid(s) - t
        elif self.kind == "scalar":
            r = s - t
            loss = 0.5 * (r * r).sum(1, dtype=torch.float64) / n
        else:
            s = einops.rearrange(s, "(m k) n -> m k n", k=self.k).masked_fill(self.mask[idx][:, :, None], -torch.inf)
            lse = torch.logsumexp(s, 1)  # [m n]
            loss = (lse - s.gather(1, t[:, None, :])[:, 0]).sum(1, dtype=torch.float64) / n
            r = torch.exp(s - lse[:, None, :])
            r.scatter_add_(1, t[:, None, :], torch.full_like(r[:, :1], -1.0))  # softmax - one-hot
            r = einops.rearrange(r, "m k n -> (m k) n")
        g = einops.rearrange(r @ z1 / n, "(m k) p -> m (k p)", k=self.k)  # the one GEMM backward
        pen = theta * self.penalised
        l2 = self.l2[idx][:, None]
        return loss + 0.5 * l2[:, 0].double() * (pen * pen).sum(1, dtype=torch.float64), g + l2 * pen

    def lipschitz(self) -> Tensor:
        """An upper bound on the gradient's Lipschitz constant (without the l2 term)."""
        top = torch.linalg.eigvalsh(self.z1.T @ self.z1 / self.n)[-1]
        return top * {"binary": 0.25, "categorical": 0.5, "scalar": 1.0}[self.kind]


def default_tol(dtype: torch.dtype) -> float:
    """Gradient tolerance that the dtype can reach: 1e-9 in float64, 1e-5 in float32."""
    return 1e-9 if dtype == torch.float64 else 1e-5


def soft_threshold(x: Tensor, thr: Tensor) -> Tensor:
    return torch.sign(x) * (x.abs() - thr).clamp_min(0)


def fista(glm: GLM, l1: Tensor, theta0: Tensor, *, max_iter: int = 5000, tol: float | None = None) -> tuple[Tensor, Tensor]:
    """Batched FISTA with adaptive restart for ``glm + l1_j ||w_j||_1`` (intercepts unpenalised).

    Fixed step ``1 / L`` (``L`` from :meth:`GLM.lipschitz` plus the l2 term). Stops when no problem's
    iterate moves more than ``tol`` (max abs change). Returns ``(theta [m p], converged [m])``.
    """
    tol = (1e-10 if theta0.dtype == torch.float64 else 1e-6) if tol is None else tol
    m = theta0.shape[0]
    idx = torch.arange(m, device=theta0.device)
    step = 1.0 / (glm.lipschitz() + glm.l2.amax())
    thr = (step * l1)[:, None] * glm.penalised  # [m p]
    x = theta0.clone()
    yk, tk = x.clone(), torch.ones(m, 1, dtype=x.dtype, device=x.device)
    moved = torch.full((m,), torch.inf, dtype=x.dtype, device=x.device)
    for _ in range(max_iter):
        _, g = glm(yk, idx)
        xn = soft_threshold(yk - step * g, thr)
        restart = ((yk - xn) * (xn - x)).sum(1, keepdim=True) > 0  # momentum points uphill: drop it
        tn = torch.where(restart, torch.ones_like(tk), (1 + (1 + 4 * tk * tk).sqrt()) / 2)
        mom = torch.where(restart, torch.zeros_like(tk), (tk - 1) / tn)
        moved = (xn - x).abs().amax(1)
        yk, x, tk = xn + mom * (xn - x), xn, tn
        if bool((moved <= tol).all()):
            break
    return x, moved <= tol
