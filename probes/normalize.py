"""Per-dimension standardisation of latents, with statistics from the training split only.

``NormalizerFitter`` accumulates sums over batches (``update(x) -> self``) and ``finish()`` returns a
frozen :class:`Normalizer` ``(mean [d], std [d])`` that probes store and apply to every split. The
statistics are never refitted on validation or test data: a probe is a fixed function of ``x``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

EPS = 1e-8
"""Dimensions whose training standard deviation is below this are left unscaled (std set to 1)."""
FOLD_LIMIT = 1e3
"""Largest ``|mean| / std`` of a dimension for which :meth:`Normalizer.fold` folds the mean into the bias: the
float32 rounding of the folded bias is then ~1e-4 of a weight (at 1e5, a saturated GRU unit, logits were off by 0.14)."""


@dataclass(frozen=True)
class Normalizer:
    """``apply(x) = (x - mean) / std``; ``mean``, ``std`` are ``[d]``."""

    mean: Tensor
    std: Tensor

    @property
    def dim(self) -> int:
        return self.mean.shape[0]

    def apply(self, x: Tensor) -> Tensor:
        """``[n d] -> [n d]`` standardised with the stored (training) statistics."""
        return (x.to(self.mean.dtype) - self.mean) / self.std

    def fold(self, weight: Tensor, bias: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """The affine map ``z @ weight.T + bias`` on normalised ``z`` as one on raw ``x``: ``(w, b, shift)`` with
        ``(x - shift) @ w.T + b`` (``shift`` ``None``: ``x @ w.T + b``) equal to ``apply(x) @ weight.T + bias`` up to
        rounding, without the normalised ``[n d]`` copy (what a planner scoring thousands of imagined latents pays for).

        ``weight [k d]``, ``bias [k]``. Folding the mean into the bias cancels two terms of size ``|w_j mean_j| / std_j``;
        where some dimension's ``|mean| / std`` exceeds :data:`FOLD_LIMIT` (a saturated unit: float32 would lose the
        logit's leading digits) the mean is subtracted from ``x`` instead (``shift``).
        """
        w = weight / self.std
        if bool(((self.mean.abs() / self.std) > FOLD_LIMIT).any()):
            return w, bias, self.mean
        return w, bias - w @ self.mean, None

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "Normalizer":
        return Normalizer(self.mean.to(device=device, dtype=dtype), self.std.to(device=device, dtype=dtype))

    @classmethod
    def fit(cls, x: Tensor) -> "Normalizer":
        """Statistics of ``x [n d]`` (population std, as scikit-learn's ``StandardScaler``)."""
        return NormalizerFitter(x.shape[1], device=x.device, dtype=x.dtype).update(x).finish()


class NormalizerFitter:
    """Streaming mean/std over batches ``[b d]``; sums are kept in float64 (Chan et al. merge)."""

    def __init__(self, dim: int, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        self.dim, self.dtype = dim, dtype
        self.n = 0
        self.mean = torch.zeros(dim, device=device, dtype=torch.float64)
        self.m2 = torch.zeros(dim, device=device, dtype=torch.float64)

    def update(self, x: Tensor) -> "NormalizerFitter":
        """Fold a batch ``x [b d]`` into the running statistics."""
        xb = x.to(device=self.mean.device, dtype=torch.float64)
        b = xb.shape[0]
        if b == 0:
            return self
        bmean = xb.mean(0)
        bm2 = ((xb - bmean) ** 2).sum(0)
        total = self.n + b
        delta = bmean - self.mean
        self.mean = self.mean + delta * (b / total)
        self.m2 = self.m2 + bm2 + delta**2 * (self.n * b / total)
        self.n = total
        return self

    def finish(self) -> Normalizer:
        if self.n == 0:
            raise ValueError("NormalizerFitter.finish() called before any update(x)")
        std = (self.m2 / self.n).sqrt()
        std = torch.where(std < EPS, torch.ones_like(std), std)
        return Normalizer(self.mean.to(self.dtype), std.to(self.dtype))
