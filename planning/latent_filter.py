"""The latent filter of the closed loop: the batched posterior of ``n`` envs, kept up to date from their real
observations (incrementally, or by an exact re-filter of a finite context window)."""

from __future__ import annotations

import inspect

import numpy as np
import torch

from dynamics.base import DynamicsModel, LatentState


class LatentFilter:
    """The batched posterior ``state[n ...]`` of ``n`` envs, filtered from their real observations.

    Without a context limit (``context=None``, the default) the filter is incremental: each real step
    is ONE batched ``observe`` call of one step over the envs that moved, continuing from their current
    posteriors (``observe(..., start=state)``) -- O(1) work per step, and the same states as filtering
    each episode in one call (``tests/dynamics/test_observe_start.py``).

    ``context=k`` keeps only the last ``k`` steps (how training windows start: mid-episode from the
    initial state). A window that drops its oldest step cannot be updated incrementally -- the state
    after the window ``[s+1, t]`` is not a function of the state after ``[s, t-1]`` -- so with a finite
    context every step re-filters each env's last ``k`` steps exactly (O(k) per step), in one batched
    ``observe`` call over the envs' histories right-padded to one length. The same exact re-filter is
    used for a model whose ``observe`` takes no ``start``, or when ``incremental=False`` (the reference).
    ``sample=False``: the posterior mode, reproducible.
    """

    def __init__(self, model: DynamicsModel, num_envs: int, *, context: int | None = None,
                 device: torch.device | str | None = None, incremental: bool | None = None):
        if context is not None and context < 1:
            raise ValueError(f"context must be >= 1 or None, got {context}")
        self.model, self.num_envs, self.context = model, int(num_envs), context
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        can = context is None and "start" in inspect.signature(model.observe).parameters
        if incremental and not can:
            why = f"context={context} needs the exact re-filter" if context is not None else \
                f"{type(model).__name__}.observe takes no start="
            raise ValueError(f"incremental filtering is not possible: {why}; pass incremental=None")
        self.incremental = can if incremental is None else bool(incremental)
        spec = model.action_spec
        self._zero_action = np.zeros((), np.int64) if spec.discrete else np.zeros((spec.dim,), np.float32)
        self._obs: list[list[np.ndarray]] = [[] for _ in range(num_envs)]
        self._act: list[list[np.ndarray]] = [[] for _ in range(num_envs)]
        self._trimmed = [False] * num_envs
        self.state: LatentState | None = None
        """``[n ...]`` the posterior of every env after its last observation (``None`` before ``start``)."""

    def start(self, obs: np.ndarray, mask: np.ndarray) -> None:
        """New episodes in the envs of ``mask[n]``, whose first observations are ``obs[mask]``."""
        idx = np.flatnonzero(mask)
        if self.incremental:
            self._step(idx, obs, np.stack([self._zero_action] * self.num_envs), first=True)
            return
        for i in idx:
            self._obs[i], self._act[i], self._trimmed[i] = [obs[i]], [self._zero_action], False
        self._refilter(idx)

    def update(self, obs: np.ndarray, actions: np.ndarray, mask: np.ndarray) -> None:
        """The envs of ``mask`` took ``actions[mask]`` and now observe ``obs[mask]``."""
        idx = np.flatnonzero(mask)
        if self.incremental:
            self._step(idx, obs, np.asarray(actions, dtype=self._zero_action.dtype), first=False)
            return
        for i in idx:
            self._obs[i].append(obs[i])
            self._act[i].append(np.asarray(actions[i], dtype=self._zero_action.dtype))
            if self.context is not None and len(self._obs[i]) > self.context:
                del self._obs[i][0], self._act[i][0]
                self._trimmed[i] = True
        self._refilter(idx)

    def _step(self, idx: np.ndarray, obs: np.ndarray, actions: np.ndarray, *, first: bool) -> None:
        """One ``observe`` call of one step ``[k 1 ...]`` for envs ``idx``, from their current posteriors."""
        if len(idx) == 0:
            return
        where = torch.as_tensor(idx, device=self.device)
        with torch.inference_mode():
            o = torch.as_tensor(obs[idx], device=self.device).unsqueeze(1)            # [k 1 *obs]
            a = torch.as_tensor(actions[idx], device=self.device).unsqueeze(1)        # [k 1 *act]
            is_first = torch.full((len(idx), 1), first, dtype=torch.bool, device=self.device)
            start = None if first or self.state is None else self.state.at(where)     # a first step resets anyway
            self._write(idx, self.model.observe(o, a, is_first, start=start).at((slice(None), 0)))

    def _write(self, idx: np.ndarray, rows: LatentState) -> None:
        """``state[idx] = rows`` (``rows[k ...]``), allocating ``state`` on the first call."""
        if self.state is None:
            self.state = LatentState({k: v.new_zeros((self.num_envs, *v.shape[1:])) for k, v in rows.sites.items()})
        where = torch.as_tensor(idx, device=self.device)
        for k, v in rows.sites.items():
            self.state.sites[k][where] = v

    def _refilter(self, idx: np.ndarray) -> None:
        """One ``observe`` call over the histories of envs ``idx``, right-padded to one length ``L``."""
        if len(idx) == 0:
            return
        lengths = np.array([len(self._obs[i]) for i in idx])
        L = int(lengths.max())
        obs = np.stack([np.stack(self._obs[i] + [self._obs[i][-1]] * (L - len(self._obs[i]))) for i in idx])
        act = np.stack([np.stack(self._act[i] + [self._zero_action] * (L - len(self._act[i]))) for i in idx])
        first = np.zeros((len(idx), L), dtype=bool)             # [k L]; pad steps after the end are never read
        first[:, 0] = [not self._trimmed[i] for i in idx]       # a context window cut mid-episode does not reset
        with torch.inference_mode():
            post = self.model.observe(torch.as_tensor(obs, device=self.device),
                                      torch.as_tensor(act, device=self.device),
                                      torch.as_tensor(first, device=self.device))
            rows = torch.arange(len(idx), device=self.device)
            self._write(idx, post.at((rows, torch.as_tensor(lengths - 1, device=self.device))))    # [k ...]
