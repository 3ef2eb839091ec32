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
per call; torch's own ``LBFGS`` optimiser is also one problem per call (one line search for all).
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


def ridge_path(z: Tensor, y: Tensor, lambdas: Tensor) -> tuple[Tensor, Tensor]:
    """Ridge for targets ``y [n c]`` and ``lambdas [L]`` on ``z [n d]``: ``(W [c L d], b [c L])``."""
    n = z.shape[0]
    zm, ym = z.mean(0), y.mean(0)
    zc, yc = z - zm, y - ym
    w = ridge_solve(zc.T @ zc / n, zc.T @ yc / n, lambdas)
    b = ym[:, None] - w @ zm
    return w, b


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


def lbfgs(fun: Objective, theta0: Tensor, *, max_iter: int = 1000, tol: float | None = None,
          history: int = 10, curv: Tensor | None = None, l2: Tensor | None = None,
          penalised: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Batched L-BFGS with a per-problem backtracking (Armijo) line search.

    Initial inverse Hessian: ``gamma I`` (the usual scaling) or, given the design's curvature per
    coordinate ``curv [p]`` (the eigenvalues of ``Z^T Z / n`` when solving in its eigenbasis), the
    diagonal ``1 / (c_j curv + l2_j penalised)`` with ``c_j`` (the mean GLM weight ``p(1-p)``)
    re-estimated from each curvature pair -- a preconditioner that makes the batched solve converge
    in far fewer iterations on correlated latents.

    ``theta0 [m p]``; stops a problem when ``max |grad| <= tol``, when its loss stops changing
    (relative change below 10 float64 epsilons), or when its line search fails. Finished problems
    leave the active set, so the GEMMs shrink as problems converge. Returns ``(theta [m p],
    converged [m] bool)``.
    """
    tol = default_tol(theta0.dtype) if tol is None else tol
    ftol = 10 * torch.finfo(torch.float64).eps  # the loss is float64 (see GLM.__call__)
    theta, m = theta0.clone(), theta0.shape[0]
    done = torch.zeros(m, dtype=torch.bool, device=theta.device)
    converged = torch.zeros_like(done)
    act = torch.arange(m, device=theta.device)
    x = theta.clone()
    f, g = fun(x, act)
    ss: list[Tensor] = []
    ys: list[Tensor] = []
    rhos: list[Tensor] = []
    gamma = torch.ones(m, 1, dtype=theta.dtype, device=theta.device)  # gamma, or c_j with curv
    if curv is not None:
        gamma = gamma * 0.25
        l2c, pen = l2.to(theta.dtype)[:, None], penalised.to(theta.dtype)[None, :]
        curv = curv.to(theta.dtype)[None, :]
    for _ in range(max_iter):
        # 1. retire problems whose gradient is small enough
        small = g.abs().amax(1) <= tol
        if bool(small.any()):
            converged[act[small]] = True
            keep = ~small
            theta[act[small]] = x[small]
            act, x, f, g, gamma = act[keep], x[keep], f[keep], g[keep], gamma[keep]
            ss, ys, rhos = [t[keep] for t in ss], [t[keep] for t in ys], [t[keep] for t in rhos]
            if curv is not None:
                l2c = l2c[keep]
        if act.numel() == 0:
            break
        # 2. two-loop recursion: d = -H g (pairs with rho = 0 are inert)
        q, alphas = g.clone(), []
        for s_, y_, r_ in zip(reversed(ss), reversed(ys), reversed(rhos)):
            a = r_ * (s_ * q).sum(1, keepdim=True)
            q -= a * y_
            alphas.append(a)
        r = gamma * q if curv is None else q / (gamma * curv + l2c * pen)
        for s_, y_, r_, a in zip(ss, ys, rhos, reversed(alphas)):
            r += s_ * (a - r_ * (y_ * r).sum(1, keepdim=True))
        d = -r
        gd = (g * d).sum(1, dtype=torch.float64)
        bad = gd >= 0  # not a descent direction: fall back to steepest descent
        d[bad], gd[bad] = -g[bad], -(g[bad] * g[bad]).sum(1, dtype=torch.float64)
        # 3. backtracking line search, all active problems evaluated together
        t = torch.ones_like(f, dtype=x.dtype)
        ok = torch.zeros_like(done[: act.numel()])
        for _ls in range(30):
            fn, gn = fun(x + t[:, None] * d, act)
            ok = fn <= f + 1e-4 * t * gd
            if bool(ok.all()):
                break
            t = torch.where(ok, t, 0.5 * t)
        xn = x + t[:, None] * d
        # 4. update curvature pairs; a pair with s.y <= 0 is stored as inert (rho = 0)
        s_, y_ = xn - x, gn - g
        sy = (s_ * y_).sum(1, keepdim=True)
        good = sy > 1e-12 * (s_ * s_).sum(1, keepdim=True).sqrt() * (y_ * y_).sum(1, keepdim=True).sqrt()
        rho = torch.where(good, 1.0 / sy.clamp_min(torch.finfo(sy.dtype).tiny), torch.zeros_like(sy))
        if curv is None:
            gamma = torch.where(good, sy / (y_ * y_).sum(1, keepdim=True).clamp_min(torch.finfo(sy.dtype).tiny), gamma)
        else:  # s^T y ~= s^T (c curv + l2) s  ->  c
            c = (sy - l2c * (s_ * s_ * pen).sum(1, keepdim=True)) / (s_ * s_ * curv).sum(1, keepdim=True).clamp_min(1e-30)
            gamma = torch.where(good, c.clamp(1e-6, 1.0), gamma)
        ss, ys, rhos = (ss + [s_])[-history:], (ys + [y_])[-history:], (rhos + [rho])[-history:]
        stalled = ~ok | ((f - fn).abs() <= ftol * fn.abs().clamp_min(1.0))
        x, f, g = torch.where(ok[:, None], xn, x), torch.where(ok, fn, f), torch.where(ok[:, None], gn, g)
        if bool(stalled.any()):
            converged[act[stalled]] = (g[stalled].abs().amax(1) <= 100 * tol) | ok[stalled]
            theta[act[stalled]] = x[stalled]
            keep = ~stalled
            act, x, f, g, gamma = act[keep], x[keep], f[keep], g[keep], gamma[keep]
            ss, ys, rhos = [t_[keep] for t_ in ss], [t_[keep] for t_ in ys], [t_[keep] for t_ in rhos]
            if curv is not None:
                l2c = l2c[keep]
            if act.numel() == 0:
                break
    theta[act] = x
    return theta, converged


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
