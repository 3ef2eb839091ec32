"""Causal necessity by erasure: remove a concept linearly, and a random subspace as the null.

LEACE (Belrose et al. 2023, "LEACE: Perfect linear concept erasure in closed form") finds the
smallest affine edit after which *no* linear classifier predicts the concept better than a
constant. We use EleutherAI's ``concept-erasure`` package (``LeaceFitter``) for the fit and keep
the result as a small frozen :class:`Eraser` that takes numpy or torch and moves with ``.to``.

An erasure experiment needs a null: erasing *any* ``r`` directions can hurt a downstream quantity
(imagination accuracy, planning return). :func:`random_subspace_eraser` projects out a random
subspace of the same rank as the LEACE eraser, so "LEACE hurts more than random" is the claim.

Concept encoding for the fit (``z``): integer or bool labels ``[n]`` are one-hot encoded (binary
labels give the same rank-1 eraser either way); float ``[n]`` or ``[n k]`` values are used as is
(scalar concepts: erases the linear *correlation* with the value).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import torch
from concept_erasure import LeaceFitter


@dataclass(frozen=True)
class Eraser:
    """``x -> x - ((x - bias) @ proj_right.T) @ proj_left.T``: an affine edit of rank ``rank``.

    Same convention as ``concept_erasure.LeaceEraser`` (``P = I - proj_left @ proj_right``)."""

    proj_left: torch.Tensor
    """``[d r]``"""
    proj_right: torch.Tensor
    """``[r d]``"""
    bias: torch.Tensor | None
    """``[d]`` point the edit is centred on (the fit data's mean), or ``None``."""
    method: Literal["leace", "orth", "random"]

    @property
    def rank(self) -> int:
        return int(self.proj_left.shape[1])

    @property
    def dim(self) -> int:
        return int(self.proj_left.shape[0])

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> "Eraser":
        def mv(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device=device, dtype=dtype)

        return replace(self, proj_left=mv(self.proj_left), proj_right=mv(self.proj_right), bias=mv(self.bias))

    def __call__(self, x: Any) -> Any:
        """Erase ``x[... d]``; numpy in -> numpy out (input dtype), torch in -> torch out (input dtype)."""
        is_numpy = not isinstance(x, torch.Tensor)
        xt = torch.as_tensor(np.asarray(x)) if is_numpy else x
        if xt.shape[-1] != self.dim:
            raise ValueError(f"x must have last dimension {self.dim} (the eraser's), got shape {tuple(xt.shape)}")
        xe = xt.to(device=self.proj_left.device, dtype=self.proj_left.dtype)
        delta = xe - self.bias if self.bias is not None else xe
        out = (xe - (delta @ self.proj_right.T) @ self.proj_left.T).to(xt.dtype)
        return out.cpu().numpy() if is_numpy else out.to(xt.device)


def _concept_matrix(z: Any, num_classes: int | None) -> torch.Tensor:
    za = z.detach().cpu().numpy() if isinstance(z, torch.Tensor) else np.asarray(z)
    if za.ndim == 1 and za.dtype.kind in "biu":
        k = int(num_classes) if num_classes is not None else int(za.max()) + 1
        if za.min() < 0 or za.max() >= k:
            raise ValueError(f"integer concept labels must lie in [0, {k}), got values {np.unique(za)[:8]}")
        return torch.as_tensor(za[:, None] == np.arange(k)[None, :], dtype=torch.float64)
    if za.ndim == 1:
        za = za[:, None]
    if za.ndim != 2:
        raise ValueError(f"z must have shape (n,) or (n, k), got {za.shape}")
    return torch.as_tensor(za, dtype=torch.float64)


def _svd_tol(x: torch.Tensor, z: torch.Tensor, method: str) -> float:
    """Cut-off for the singular values of the cross-covariance that LEACE erases: only numerically-zero ones drop.

    ``LeaceFitter``'s default ``svd_tol=0.01`` is absolute, in the units of ``z`` (and, for ``"orth"``, of ``x``): a
    rare or weakly read concept has no singular value above it and is not erased at all (a 1%-frequent binary
    concept that a linear probe read with AUROC 0.67 got a rank-0 eraser and kept its AUROC, so the necessity
    check measured nothing). The singular values of the whitened cross-covariance are at most ``sqrt(tr Cov z)``
    (times ``sqrt(tr Cov x)`` without whitening); the cut-off is ``sqrt(eps)`` of that, which still drops the
    exactly-dependent direction of a one-hot encoding (its columns sum to one).
    """
    def spread(t: torch.Tensor) -> float:
        return float((t - t.mean(0)).square().sum() / max(t.shape[0] - 1, 1))  # trace of the covariance
    scale = spread(z) * (spread(x) if method == "orth" else 1.0)
    tol = (scale ** 0.5) * torch.finfo(x.dtype).eps ** 0.5
    return max(tol, torch.finfo(x.dtype).tiny)  # LeaceFitter needs svd_tol > 0


def fit_leace(
    x: Any,
    z: Any,
    *,
    num_classes: int | None = None,
    method: Literal["leace", "orth"] = "leace",
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float64,
) -> Eraser:
    """Fit a LEACE eraser of concept ``z[n]`` / ``z[n k]`` from latents ``x[n d]`` (numpy or torch)."""
    xt = torch.as_tensor(np.asarray(x)) if not isinstance(x, torch.Tensor) else x
    if xt.ndim != 2:
        raise ValueError(f"x must have shape (n, d), got {tuple(xt.shape)}")
    zt = _concept_matrix(z, num_classes)
    if zt.shape[0] != xt.shape[0]:
        raise ValueError(f"x and z must have the same number of rows, got {xt.shape[0]} and {zt.shape[0]}")
    xt, zt = xt.to(device=device, dtype=dtype), zt.to(device=device, dtype=dtype)
    le = LeaceFitter.fit(xt, zt, method=method, svd_tol=_svd_tol(xt, zt, method)).eraser
    # Drop the directions the fitter zeroed (singular values under its tolerance): the eraser's
    # rank is then the number of columns, which the random-subspace null must match.
    weight = le.proj_left.norm(dim=0) * le.proj_right.norm(dim=1)
    keep = weight > 1e-8 * weight.max().clamp_min(1e-300)
    return Eraser(le.proj_left[:, keep], le.proj_right[keep], le.bias, method)


def random_subspace_eraser(
    dim: int,
    rank: int,
    seed: int = 0,
    *,
    bias: Any = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float64,
) -> Eraser:
    """Orthogonal projection out of a uniformly random ``rank``-dimensional subspace of R^dim."""
    if not 0 <= rank <= dim:
        raise ValueError(f"rank must lie in [0, dim={dim}], got {rank}")
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, rank, generator=g, dtype=torch.float64))
    b = None if bias is None else torch.as_tensor(np.asarray(bias) if not isinstance(bias, torch.Tensor) else bias)
    return Eraser(q, q.T.contiguous(), b, "random").to(device=device, dtype=dtype)


def leace_erase(x_fit: Any, z_fit: Any, x_apply: Any, *, num_classes: int | None = None) -> Any:
    """Fit LEACE on ``(x_fit[n d], z_fit)`` and apply it to ``x_apply[m d]`` (same type back)."""
    return fit_leace(x_fit, z_fit, num_classes=num_classes)(x_apply)


def random_subspace_erase(x: Any, rank: int, seed: int = 0) -> Any:
    """Project a random ``rank``-dimensional subspace out of ``x[n d]`` (centred on ``x``'s mean)."""
    xa = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return random_subspace_eraser(xa.shape[-1], rank, seed, bias=xa.reshape(-1, xa.shape[-1]).mean(0))(x)
