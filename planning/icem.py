"""iCEM (Pinneri et al. 2020, "Sample-efficient cross-entropy method for real-time planning").

CEM (:mod:`planning.cem`) with the paper's changes, all on by default:

* coloured noise: samples are ``mean + std * eps`` with ``eps`` Gaussian noise whose power spectrum
  along time falls as ``1 / f**beta`` (``beta = 0`` white, ``beta = 2`` smooth, brown-like);
* a shrinking population: iteration ``i`` samples ``max(num_samples * decay**-i, 2 * num_elites)``;
* kept elites: a fraction ``keep_elites`` of the previous iteration's elites rejoins the population,
  and at the first iteration of a decision the previous decision's kept elites, shifted one step;
* the shifted mean is added to the population at the last iteration.

Like :class:`~planning.cem.CEM` it returns the mean of the final elites (mbrl-lib PR #70); the paper
executes the best sample instead, which ``return_best=True`` selects.
"""

from __future__ import annotations

import math

import einops
import torch
from torch import Tensor

from dynamics.base import DynamicsModel, LatentState
from planning.planner import Optimised, Planner
from planning.rollout import Scores, float_dtype
from planning.types import RewardFn


def colored_noise(beta: float, n: int, horizon: int, dim: int, *, generator: torch.Generator,
                  device: torch.device, dtype: torch.dtype) -> Tensor:
    """``[n h a]`` unit-variance Gaussian noise with power spectrum ``~ 1 / f**beta`` along ``h``.

    The Timmer & Koenig (1995) construction used by the ``colorednoise`` package (and iCEM): random
    Fourier coefficients scaled by ``f**(-beta/2)``, inverse real FFT, normalised to unit variance.
    Hand-written because that package is numpy-only and cannot draw from a ``torch.Generator`` on
    the planner's device.

    Normalised to unit variance at EVERY step (over samples), which is what ``mean + std * eps``
    needs for ``std`` to be the per-step standard deviation CEM fits. The package divides by the
    within-series deviation instead, leaving out the DC term and half the Nyquist term: its
    per-step variance is ~1.3 at ``beta = 2`` and 4 at ``horizon = 2``.
    """
    if horizon == 1 or beta == 0:
        return torch.randn((n, horizon, dim), device=device, dtype=dtype, generator=generator)
    f = torch.fft.rfftfreq(horizon, device=device, dtype=dtype).clamp(min=1.0 / horizon)   # [F]
    scale = f ** (-beta / 2.0)
    # Var x[k] = sum_f terms[f] / h**2: a complex bin adds 2 Re(X_f e^{i..}) (4 s_f**2); the real DC bin
    # (and the real Nyquist bin of an even h) adds X_f alone, with variance 2 s_f**2 after the sqrt(2) below
    terms = 4.0 * scale**2
    terms[0] = 2.0 * scale[0] ** 2
    if horizon % 2 == 0:
        terms[-1] = 2.0 * scale[-1] ** 2
    sigma = torch.sqrt(terms.sum()) / horizon
    real = torch.randn((n, dim, f.numel()), device=device, dtype=dtype, generator=generator) * scale
    imag = torch.randn((n, dim, f.numel()), device=device, dtype=dtype, generator=generator) * scale
    if horizon % 2 == 0:                                   # the Nyquist coefficient of a real signal is real
        imag[..., -1] = 0.0
        real[..., -1] *= math.sqrt(2.0)
    imag[..., 0] = 0.0                                     # and so is the DC one
    real[..., 0] *= math.sqrt(2.0)
    signal = torch.fft.irfft(torch.complex(real, imag), n=horizon) / sigma                    # [n a h]
    return einops.rearrange(signal, "n a h -> n h a")


class ICEM(Planner):
    """iCEM for continuous actions (see the module docstring).

    ``last_elites`` (``[k h a]``) holds the final elites of the last decision, for inspection. The kept
    elites (``_kept [m h a]``) are part of the warm start: :meth:`warm_state` returns them with ``last_plan``.
    """

    discrete_only = False
    warm_attributes = ("last_plan", "_kept")

    def __init__(self, model: DynamicsModel, reward_fn: RewardFn, horizon: int, *, num_samples: int = 500,
                 num_elites: int = 50, iterations: int = 4, beta: float = 2.0, decay: float = 1.25,
                 keep_elites: float = 0.3, init_std: float = 0.5, min_std: float = 0.05, momentum: float = 0.1,
                 return_best: bool = False, **kw):
        super().__init__(model, reward_fn, horizon, **kw)
        if not 1 <= num_elites <= num_samples or iterations < 1 or decay < 1 or not 0 <= keep_elites <= 1:
            raise ValueError(f"need 1 <= num_elites <= num_samples, iterations >= 1, decay >= 1, 0 <= keep_elites <= 1, "
                             f"got {num_elites}, {num_samples}, {iterations}, {decay}, {keep_elites}")
        if init_std <= 0 or min_std < 0 or not 0 <= momentum < 1:
            raise ValueError(f"need init_std > 0, min_std >= 0, 0 <= momentum < 1, got {init_std}, {min_std}, {momentum}")
        self.num_samples, self.num_elites, self.iterations = int(num_samples), int(num_elites), int(iterations)
        self.beta, self.decay, self.keep_elites = float(beta), float(decay), float(keep_elites)
        self.init_std, self.min_std, self.momentum = float(init_std), float(min_std), float(momentum)
        self.return_best = bool(return_best)
        self.last_elites: Tensor | None = None
        self._kept: Tensor | None = None                   # [m h a] kept elites of the previous decision

    def reset(self) -> None:
        super().reset()
        self._kept = None

    def population(self, i: int) -> int:
        """Samples drawn at iteration ``i``: ``max(num_samples * decay**-i, 2 * num_elites)``."""
        return max(int(self.num_samples * self.decay ** (-i)), min(2 * self.num_elites, self.num_samples))

    def _optimise(self, state: LatentState, warm: Tensor | None, generator: torch.Generator) -> Optimised:
        device, dtype = state.feat.device, float_dtype(state)
        shape = (self.horizon, self.action_dim)
        centre = 0.5 * (self.low + self.high)
        mean = warm if warm is not None else torch.full(shape, centre, device=device, dtype=dtype)
        std = torch.full(shape, self.init_std, device=device, dtype=dtype)
        n_keep = int(round(self.keep_elites * self.num_elites))
        kept = self._shifted_kept(device, dtype, centre) if warm is not None else None
        best, best_scores, total = None, None, 0
        for i in range(self.iterations):
            # 1. coloured-noise samples around the current distribution, inside the bounds
            eps = colored_noise(self.beta, self.population(i), self.horizon, self.action_dim,
                                generator=generator, device=device, dtype=dtype)
            parts = [self._clip(mean + std * eps)]
            # 2. kept elites (shifted from the last decision at i = 0) and, at the end, the mean itself
            if kept is not None and n_keep:
                parts.append(kept[:n_keep])
            if i == self.iterations - 1:
                parts.append(self._clip(mean)[None])
            actions = torch.cat(parts)
            # 3. one batched imagine + reward call; feasible-first elites
            scores = self.score(state, actions)
            order = self.rank(scores)
            idx = order[: self.num_elites]
            elites = actions[idx]
            total += int(actions.shape[0])
            if best is None or self._better(scores.take(order[:1]), best_scores):
                best, best_scores = actions[order[0]], scores.take(order[:1])
            # 4. refit the distribution; keep the best elites for the next iteration
            elite_mean, elite_std = elites.mean(0), elites.std(0, unbiased=False)
            mean = self.momentum * mean + (1 - self.momentum) * elite_mean
            std = (self.momentum * std + (1 - self.momentum) * elite_std).clamp(min=self.min_std)
            kept = elites
        self.last_elites = elites
        self._kept = elites[:n_keep] if n_keep else None
        return Optimised(best if self.return_best else elite_mean, scores.returns[idx], total)

    def _better(self, a: Scores, b: Scores) -> bool:
        """Whether the single sequence ``a`` ranks above ``b`` (feasible first, then return)."""
        both = Scores.cat([b, a])
        return bool(self.rank(both)[0] == 1)

    def _shifted_kept(self, device: torch.device, dtype: torch.dtype, centre: float) -> Tensor | None:
        if self._kept is None:
            return None
        kept = self._kept.to(device=device, dtype=dtype)
        return torch.cat([kept[:, 1:], torch.full_like(kept[:, -1:], centre)], dim=1)
