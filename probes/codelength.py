"""MDL rows for the harness: online codelength of every concept (and its control task) at one site.

:func:`compression_rows` runs :func:`probes.mdl.online_codelength` on the TEST split's rows (held-out
trajectories; capped at ``max_rows`` rows drawn with the seed), for every concept and its control
labelling, over ``shuffles`` block orders (:func:`codelength_results`); the harness reports the mean code
length (bits) and compression over the orders with an interval from a bootstrap over test episodes and
orders (:func:`probes.mdl.mdl_estimates`).

Scalar concepts are coded as their equal-mass bins (``n_bins`` quantile bins of the coded rows; the
control labels use the same edges; only occupied bins are classes, so ``log2 K`` is an honest uniform
code). Each block is coded by the probe method with the hyperparameters the task probe chose on validation.

For the linear method all targets are coded together: the online code shuffles rows with the same
permutation for every labelling of the same rows (it depends only on the seed and ``n``), so the
probes of every target at a block are fitted in one batched pass (:func:`probes.linear.fit_linear_batch`)
and handed to ``online_codelength`` per target. Each handed-out answer is checked against the rows
``online_codelength`` actually passes; on a mismatch that target is fitted on its own.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from probes.linear import LinearProbe, fit_linear_batch
from probes.mdl import MDLResult, compression_estimate, discretise_scalar, online_codelength
from probes.normalize import Normalizer
from probes.registry import hparam_names, make_fitter
from probes.stats import Estimate
from worlds.concepts import Concept


BLOCK_MAX_ITER = 50
BLOCK_TOL = 1e-4
"""L-BFGS budget of each linear block fit: small early blocks are often separable, and an unbounded
solve there only drives the weights (and the code length of the next block) towards overconfidence."""


def coded_concept(concept: Concept, y: np.ndarray, y_control: np.ndarray | None, n_bins: int
                  ) -> tuple[Concept, np.ndarray, np.ndarray | None]:
    """The classification concept actually coded: scalars become their quantile bins (control binned alike).

    Only the OCCUPIED bins (by the task or the control labels) are classes: with tied values (integer scalars such
    as ``agent_row``) a quantile edge equals a data value and the bin below it stays empty (``side="right"``), and an
    empty bin would add ``log2 K`` bits to the uniform code only -- compression > 1 for a latent that knows nothing.
    Fewer than two occupied bins (a constant): ``concept`` itself is returned (``num_classes`` 0: nothing to code)."""
    if concept.kind != "scalar":
        return concept, y.astype(np.int64), None if y_control is None else y_control.astype(np.int64)
    bins, edges = discretise_scalar(y, n_bins)
    ctrl = None if y_control is None else discretise_scalar(y_control, edges=edges)[0]
    used = np.unique(bins if ctrl is None else np.concatenate([bins, ctrl]))  # sorted: bin order is kept
    bins = np.searchsorted(used, bins)
    ctrl = None if ctrl is None else np.searchsorted(used, ctrl)
    k = len(used)
    if k < 2:  # a constant: nothing to code; the scalar concept (num_classes 0) tells the caller to skip it
        return concept, bins, ctrl
    binned = Concept(concept.name, "categorical", f"{concept.name} in {k} quantile bins", classes=tuple(f"bin{i}" for i in range(k)))
    return binned, bins, ctrl


def _laplace(y: np.ndarray, k: int, m: int) -> np.ndarray:
    return np.tile((np.bincount(y, minlength=k) + 1) / (len(y) + k), (m, 1))


def _fit_proba_generic(method: str, concept: Concept, hparams: Mapping[str, Any], seed: int,
                       device: Any, dtype: torch.dtype) -> Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]:
    hp = dict(hparams)
    if "seed" in hparam_names(method):
        hp["seed"] = seed

    def fpp(xt: np.ndarray, yt: np.ndarray, xe: np.ndarray) -> np.ndarray:
        k = concept.num_classes
        if len(np.unique(yt)) < 2:
            return _laplace(yt, k, len(xe))
        probe = make_fitter(method, concept, **hp, device=device, dtype=dtype).fit(torch.from_numpy(xt), torch.from_numpy(yt))
        return probe.predict_proba(torch.from_numpy(xe)).double().cpu().numpy()

    return fpp


class _LinearBlocks:
    """Probabilities of every target at every block, from one batched linear fit per block."""

    def __init__(self, x: np.ndarray, targets: Sequence[tuple[Concept, np.ndarray, float]], seed: int,
                 device: Any, dtype: torch.dtype):
        self.targets, self.device, self.dtype = targets, device, dtype
        self.order = np.random.default_rng(seed).permutation(len(x))  # the permutation online_codelength draws
        self.x = x[self.order]
        self.ys = [y[self.order] for _, y, _ in targets]
        self.cache: dict[tuple[int, int], list[np.ndarray]] = {}

    def _fit(self, start: int, end: int) -> list[np.ndarray]:
        xt = torch.from_numpy(self.x[:start]).to(self.device, self.dtype)
        xe = torch.from_numpy(self.x[start:end]).to(self.device, self.dtype)
        norm = Normalizer.fit(xt)
        out: list[Any] = [None] * len(self.targets)
        fit_idx = [j for j, y in enumerate(self.ys) if len(np.unique(y[:start])) >= 2]
        for j in set(range(len(self.targets))) - set(fit_idx):
            out[j] = _laplace(self.ys[j][:start], self.targets[j][0].num_classes, end - start)
        lambdas = sorted({self.targets[j][2] for j in fit_idx})
        if fit_idx:
            lam = torch.tensor(lambdas, dtype=self.dtype, device=self.device)
            fits = fit_linear_batch(norm.apply(xt), [self.targets[j][0] for j in fit_idx],
                                    [torch.from_numpy(self.ys[j][:start]).to(self.device) for j in fit_idx], lam,
                                    max_iter=BLOCK_MAX_ITER, tol=BLOCK_TOL)
            for j, per_lam in zip(fit_idx, fits):
                w, b = per_lam[lambdas.index(self.targets[j][2])]
                probe = LinearProbe(self.targets[j][0], norm, {"l2": self.targets[j][2]}, w, b)
                out[j] = probe.predict_proba(xe).double().cpu().numpy()
        return out

    def fpp(self, j: int) -> Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]:
        concept, _, l2 = self.targets[j]

        def fit_predict_proba(xt: np.ndarray, yt: np.ndarray, xe: np.ndarray) -> np.ndarray:
            start, end = len(xt), len(xt) + len(xe)
            if not (np.array_equal(yt, self.ys[j][:start]) and np.array_equal(xe, self.x[start:end])):
                return _fit_proba_generic("linear", concept, {"l2": l2}, 0, self.device, self.dtype)(xt, yt, xe)
            if (start, end) not in self.cache:
                self.cache[(start, end)] = self._fit(start, end)
            return self.cache[(start, end)][j]

        return fit_predict_proba


def compression_rows(method: str, x: np.ndarray, targets: Sequence[tuple[str, Concept, np.ndarray, Mapping[str, Any]]], *,
                     shuffles: int = 3, seed: int = 0, device: Any = "cpu", dtype: torch.dtype = torch.float32
                     ) -> dict[str, Estimate]:
    """``{target id: compression Estimate}`` for labellings ``(id, coded concept, labels [n], hparams)`` of rows ``x [n d]``
    (t-interval over the shuffle orders; the harness uses :func:`codelength_results` + :func:`probes.mdl.mdl_estimates`)."""
    res = codelength_results(method, x, targets, shuffles=shuffles, seed=seed, device=device, dtype=dtype)
    return {tid: compression_estimate(rs) for tid, rs in res.items()}


def codelength_results(method: str, x: np.ndarray, targets: Sequence[tuple[str, Concept, np.ndarray, Mapping[str, Any]]], *,
                       shuffles: int = 3, seed: int = 0, device: Any = "cpu", dtype: torch.dtype = torch.float32
                       ) -> dict[str, list[MDLResult]]:
    """``{target id: one MDLResult per shuffle order (seeds seed, seed + 1, ...)}`` for labellings as in :func:`compression_rows`."""
    results: dict[str, list[Any]] = {t[0]: [] for t in targets}
    for r in range(shuffles):
        s = seed + r
        if method == "linear":
            blocks = _LinearBlocks(x, [(c, y, float(hp["l2"])) for _, c, y, hp in targets], s, device, dtype)
            fpps = [blocks.fpp(j) for j in range(len(targets))]
        else:
            fpps = [_fit_proba_generic(method, c, hp, s, device, dtype) for _, c, _, hp in targets]
        for (tid, c, y, _), fpp in zip(targets, fpps):
            results[tid].append(online_codelength(x, y, fpp, num_classes=c.num_classes, seed=s))
    return results


def mdl_subsample(n: int, max_rows: int | None, seed: int) -> np.ndarray:
    """Sorted row indices: all rows, or ``max_rows`` of them drawn without replacement."""
    if max_rows is None or n <= max_rows:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_rows, replace=False))

