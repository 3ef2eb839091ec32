"""Many L2-regularised logistic / multinomial regressions on one design, solved together.

:class:`Design` holds the centred design ``zc [n d]`` of one site and the eigendecomposition of its
second moment ``zc^T zc / n`` -- computed once and shared by every problem fitted on the site: the
ridge paths of all scalar concepts (:meth:`Design.ridge`) and the preconditioner of the batched
L-BFGS (:func:`glm_lbfgs`) for the class concepts.

:func:`glm_lbfgs` fits ``m`` problems (concept x regularisation value) at once. Per iteration it
costs exactly two GEMMs over the active problems -- scores of the search direction ``zc @ D^T`` and
the gradient ``R @ zc`` -- because it keeps every problem's scores ``S [m k n]``: the line search
moves along ``S + t S_D`` with elementwise work only, and never recomputes scores from the weights.
The initial inverse Hessian is ``(c_j (G (+) 1) + l2_j P)^-1`` in the eigenbasis of ``G`` (``P``
masks the unpenalised intercepts), with ``c_j`` (the mean GLM weight ``p (1 - p)``) started at the
base rate -- which makes the first step the exact Newton step from the base-rate intercept -- and
re-estimated from each curvature pair. torch's ``LBFGS`` optimiser and scikit-learn fit one problem
per call, which is why this is written here.

Objectives (scikit-learn's with ``C = 1 / (l2 n)``), per problem ``j``::

    binary       mean_i logloss(y_ij, s_ij) + l2_j/2 ||w_j||^2
    categorical  mean_i cross-entropy       + l2_j/2 ||W_j||_F^2   (classes >= num_classes_j masked)

Stopping is scikit-learn's: ``max |gradient of the mean objective| <= tol`` in the latent basis, or
the objective stops changing (relative change below 64 float64 epsilons), or the line search fails.
"""

from __future__ import annotations

from dataclasses import dataclass

import einops
import torch
import torch.nn.functional as F
from torch import Tensor

FTOL = 64 * torch.finfo(torch.float64).eps
"""Relative objective change below which a problem stops (scipy's ``ftol`` as scikit-learn sets it)."""


@dataclass(frozen=True)
class Design:
    """A centred design ``zc [n d]`` (``mean [d]`` removed) and ``zc^T zc / n = vecs diag(evals) vecs^T``."""

    zc: Tensor
    mean: Tensor
    evals: Tensor
    vecs: Tensor

    @classmethod
    def of(cls, z: Tensor) -> "Design":
        """Centre ``z [n d]`` and eigendecompose its second moment (one GEMM, one ``eigh`` in float64)."""
        n = z.shape[0]
        mean = z.mean(0)
        zc = z - mean
        gram = (zc.T @ zc).double() / n
        try:  # float64: LAPACK's float32 eigh fails to converge on rank-deficient grams (few rows)
            evals, vecs = torch.linalg.eigh(gram)
        except torch.linalg.LinAlgError:
            evals, vecs = _eigh_fallback(gram)
        return cls(zc, mean, evals.clamp_min(0).to(z.dtype), vecs.to(z.dtype))

    @property
    def n(self) -> int:
        return self.zc.shape[0]

    def ridge(self, y: Tensor, lambdas: Tensor) -> tuple[Tensor, Tensor]:
        """Ridge of targets ``y [n c]`` for every ``lambdas [L]``: ``(W [c L d], b [c L])`` on the uncentred ``z``.

        Solves ``(G + l I) w = zc^T (y - ybar) / n`` in the eigenbasis: all ``c x L`` paths for one GEMM.
        """
        ym = y.mean(0)
        r = self.vecs.T @ (self.zc.T @ (y - ym) / self.n)  # [d c]
        scaled = r[:, None, :] / (self.evals[:, None, None] + lambdas[None, :, None])  # [d L c]
        w = einops.einsum(self.vecs, scaled, "d e, e l c -> c l d")
        return w, ym[:, None] - w @ self.mean


def _eigh_fallback(gram: Tensor) -> tuple[Tensor, Tensor]:
    """Eigenpairs of a symmetric matrix LAPACK's ``syevd`` refused: via the SVD (always converges)."""
    u, s, _ = torch.linalg.svd(gram)
    return s.flip(0), u.flip(1)


def _loss_resid(kind: str, u: Tensor, t: Tensor, mask: Tensor | None, n: int) -> tuple[Tensor, Tensor]:
    """Mean loss ``[m]`` (float64 sum) and ``d loss_i / d s_i`` ``[m k n]`` at scores ``u [m k n]``."""
    if kind == "binary":
        u0 = u[:, 0]
        loss = F.binary_cross_entropy_with_logits(u0, t, reduction="none").sum(1, dtype=torch.float64) / n
        return loss, (torch.sigmoid(u0) - t)[:, None]
    u = u.masked_fill(mask[:, :, None], -torch.inf)
    lse = torch.logsumexp(u, 1)  # [m n]
    loss = (lse - u.gather(1, t[:, None, :])[:, 0]).sum(1, dtype=torch.float64) / n
    r = torch.exp(u - lse[:, None, :])
    r.scatter_add_(1, t[:, None, :], torch.full_like(r[:, :1], -1.0))  # softmax - one-hot
    return loss, r


def _resid(kind: str, u: Tensor, t: Tensor, mask: Tensor | None) -> Tensor:
    """``d loss_i / d s_i`` ``[m k n]`` only (at a point whose loss the line search already has)."""
    if kind == "binary":
        return (torch.sigmoid(u[:, 0]) - t)[:, None]
    r = torch.softmax(u.masked_fill(mask[:, :, None], -torch.inf), 1)
    r.scatter_add_(1, t[:, None, :], torch.full_like(r[:, :1], -1.0))  # softmax - one-hot
    return r


def _loss(kind: str, u: Tensor, t: Tensor, mask: Tensor | None, n: int) -> Tensor:
    """Mean loss ``[m]`` only (the line search's trial points)."""
    if kind == "binary":
        return F.binary_cross_entropy_with_logits(u[:, 0], t, reduction="none").sum(1, dtype=torch.float64) / n
    u = u.masked_fill(mask[:, :, None], -torch.inf)
    return (torch.logsumexp(u, 1) - u.gather(1, t[:, None, :])[:, 0]).sum(1, dtype=torch.float64) / n


def glm_lbfgs(design: Design, kind: str, targets: Tensor, l2: Tensor, theta0: Tensor, *, k: int = 1,
              num_classes: Tensor | None = None, max_iter: int = 1000, tol: float = 1e-5,
              history: int = 10) -> tuple[Tensor, Tensor, Tensor]:
    """Fit ``m`` problems on ``design``; ``theta [m k d+1]`` is (weight on ``zc``, intercept) per class.

    ``targets [n m]``: 0/1 floats (binary) or class indices (categorical, ``num_classes [m]``);
    ``l2 [m]``; ``theta0 [m k d+1]`` the start. Returns ``(theta [m k d+1], converged [m] bool,
    iterations [m] int64)``; the intercept is for the *centred* design (add ``-W @ design.mean``).
    """
    zc, vecs, evals, n = design.zc, design.vecs, design.evals, design.n
    m, d = theta0.shape[0], zc.shape[1]
    dt, dev = zc.dtype, zc.device
    tg = targets.T.contiguous()  # [m n]
    tg = tg.to(dt) if kind == "binary" else tg.long()
    mask = None
    if kind == "categorical":
        kc = num_classes.to(dev) if num_classes is not None else torch.full((m,), k, device=dev)
        mask = torch.arange(k, device=dev)[None, :] >= kc[:, None]  # [m k]
    l2 = l2.to(dev, dt)

    def scores(th: Tensor) -> Tensor:  # [m' k d+1] -> [m' k n]: the forward GEMM
        s = einops.rearrange(th[..., :d], "m k d -> (m k) d") @ zc.T
        return einops.rearrange(s, "(m k) n -> m k n", k=k) + th[..., d:]

    def grad(r: Tensor, th: Tensor, lam: Tensor) -> Tensor:  # the backward GEMM, + the penalty
        gw = einops.rearrange(einops.rearrange(r, "m k n -> (m k) n") @ zc, "(m k) d -> m k d", k=k) / n
        return torch.cat([gw + lam[:, None, None] * th[..., :d], r.sum(2, keepdim=True) / n], 2)

    def penalty(th: Tensor, lam: Tensor) -> Tensor:
        return 0.5 * lam.double() * (th[..., :d] * th[..., :d]).sum((1, 2), dtype=torch.float64)

    def precondition(q: Tensor, c: Tensor, lam: Tensor) -> Tensor:
        """``(c (G (+) 1) + lam P)^-1 q`` for ``q [m' k d+1]``, via the eigenbasis of ``G``."""
        qe = q[..., :d] @ vecs  # [m' k d]
        qe = qe / (c[:, :, None] * evals + lam[:, None, None])
        return torch.cat([qe @ vecs.T, q[..., d:] / c[:, :, None]], 2)

    theta = theta0.clone()
    iters = torch.zeros(m, dtype=torch.int64, device=dev)
    converged = torch.zeros(m, dtype=torch.bool, device=dev)
    act = torch.arange(m, device=dev)
    x, lam, t_act, mask_act = theta0.clone(), l2, tg, mask
    s_x = scores(x)
    f, r = _loss_resid(kind, s_x, t_act, mask_act, n)
    f = f + penalty(x, lam)
    g = grad(r, x, lam)
    # c: the mean GLM weight at the start (from zero weights, all predictions at the base rate: the
    # exact curvature there; from a warm start, its average over the rows)
    if kind == "binary":
        p = torch.sigmoid(s_x[:, 0])
        c = (p * (1 - p)).mean(1).clamp(1e-6, 0.25)[:, None]
    else:
        prob = torch.softmax(s_x.masked_fill(mask[:, :, None], -torch.inf), 1)
        c = (prob * (1 - prob)).sum(1).mean(1).div(kc.to(dt)).clamp(1e-6, 0.5)[:, None]
    ss: list[Tensor] = []
    ys: list[Tensor] = []
    rhos: list[Tensor] = []

    def retire(keep: Tensor) -> None:
        nonlocal act, x, f, g, s_x, lam, t_act, mask_act, c, ss, ys, rhos
        theta[act[~keep]] = x[~keep]
        act, x, f, g, s_x, lam, t_act, c = (v[keep] for v in (act, x, f, g, s_x, lam, t_act, c))
        mask_act = None if mask_act is None else mask_act[keep]
        ss, ys, rhos = [v[keep] for v in ss], [v[keep] for v in ys], [v[keep] for v in rhos]

    for _ in range(max_iter):
        # 1. retire problems whose gradient is small enough (scikit-learn's test, in the latent basis)
        small = g.abs().amax((1, 2)) <= tol
        if bool(small.any()):
            converged[act[small]] = True
            retire(~small)
        if act.numel() == 0:
            break
        iters[act] += 1
        # 2. two-loop recursion: D = -H g (pairs with rho = 0 are inert)
        q, alphas = g.clone(), []
        for s_, y_, r_ in zip(reversed(ss), reversed(ys), reversed(rhos)):
            a = r_ * (s_ * q).sum((1, 2))
            q -= a[:, None, None] * y_
            alphas.append(a)
        q = precondition(q, c, lam)
        for s_, y_, r_, a in zip(ss, ys, rhos, reversed(alphas)):
            q += s_ * (a - r_ * (y_ * q).sum((1, 2)))[:, None, None]
        D = -q
        gd = (g * D).sum((1, 2), dtype=torch.float64)
        bad = gd >= 0  # not a descent direction: fall back to the preconditioned gradient
        if bool(bad.any()):
            D[bad] = -precondition(g[bad], c[bad], lam[bad])
            gd[bad] = (g[bad] * D[bad]).sum((1, 2), dtype=torch.float64)
        # 3. line search along the scores: S + t S_D costs no GEMM (Armijo, quadratic interpolation)
        s_d = scores(D)  # [m' k n]
        pen0, pen1, pen2 = ((x[..., :d] * x[..., :d]).sum((1, 2), dtype=torch.float64),
                            (x[..., :d] * D[..., :d]).sum((1, 2), dtype=torch.float64),
                            (D[..., :d] * D[..., :d]).sum((1, 2), dtype=torch.float64))
        step = torch.ones_like(f)
        f_new = f.clone()
        pending = torch.ones_like(bad)
        u_all = None
        for trial in range(30):
            p_idx = pending.nonzero().flatten()
            tp = step[p_idx]
            if trial == 0:
                u = s_x + s_d
                u_all = u
            else:
                u = s_x[p_idx] + tp.to(dt)[:, None, None] * s_d[p_idx]
            fl = _loss(kind, u, t_act[p_idx] if trial else t_act, None if mask_act is None else
                       (mask_act[p_idx] if trial else mask_act), n)
            lp = lam[p_idx].double()
            ft = fl + 0.5 * lp * (pen0[p_idx] + 2 * tp * pen1[p_idx] + tp * tp * pen2[p_idx])
            ok = ft <= f[p_idx] + 1e-4 * tp * gd[p_idx]
            f_new[p_idx[ok]] = ft[ok]
            pending[p_idx[ok]] = False
            if not bool(pending.any()):
                break
            fail = p_idx[~ok]
            # minimiser of the quadratic through f(0), f'(0) and f(t), kept within [0.1 t, 0.5 t]
            tf, dfl = step[fail], (ft[~ok] - f[fail] - gd[fail] * step[fail])
            tq = -gd[fail] * tf * tf / (2 * dfl)
            step[fail] = torch.where(torch.isfinite(tq), tq.clamp(0.1 * tf, 0.5 * tf), 0.5 * tf)
        failed = pending  # no sufficient decrease in 30 trials: the problem is as good as it gets
        step = torch.where(failed, torch.zeros_like(step), step)
        sd_ = step.to(dt)[:, None, None]
        x_new = x + sd_ * D
        s_new = u_all if bool((step == 1).all()) else s_x + sd_ * s_d
        r = _resid(kind, s_new, t_act, mask_act)  # (its loss is f_new, from the line search)
        g_new = grad(r, x_new, lam)
        # 4. curvature pair and the preconditioner's scale c; a pair with s.y <= 0 is stored inert
        s_, y_ = x_new - x, g_new - g
        sy = (s_ * y_).sum((1, 2))
        good = sy > 1e-10 * s_.flatten(1).norm(dim=1) * y_.flatten(1).norm(dim=1)
        rho = torch.where(good, 1.0 / sy.clamp_min(torch.finfo(dt).tiny), torch.zeros_like(sy))
        se = s_[..., :d] @ vecs
        sgs = (se * se * evals).sum((1, 2)) + (s_[..., d:] ** 2).sum((1, 2))
        c_new = (sy - lam * (s_[..., :d] ** 2).sum((1, 2))) / sgs.clamp_min(torch.finfo(dt).tiny)
        c = torch.where(good[:, None], c_new.clamp(1e-6, 1.0)[:, None], c)
        ss, ys, rhos = (ss + [s_])[-history:], (ys + [y_])[-history:], (rhos + [rho])[-history:]
        stalled = failed | ((f - f_new).abs() <= FTOL * torch.maximum(f_new.abs(), torch.ones_like(f_new)))
        x, s_x, f, g = x_new, s_new, f_new, g_new
        if bool(stalled.any()):
            converged[act[stalled]] = g[stalled].abs().amax((1, 2)) <= 100 * tol
            retire(~stalled)
    theta[act] = x
    return theta, converged, iters
