"""Collect named latent sites of a dynamics model over a dataset into an in-memory activation cache.

``collect_sites(model, batches, sites, device)`` runs ``model.observe`` (posterior, ``sample=False``) on
every batch and keeps the requested sites, one row per real time step, in the order the batches
arrive (like TransformerLens's ``run_with_cache`` -> ``ActivationCache``). Probes read the rows with
``cache["deter"]`` and align them with labels through ``cache.fields`` (every other per-step array in
the batches, e.g. ``"concept.has_key"``, passes through untouched) or ``cache.seq`` / ``cache.step``.

Site names and feature shapes depend on the model (``model.sites``); the built-in ones are

    ===========  =================  ==========================================================
    site         rows               meaning
    ===========  =================  ==========================================================
    ``embed``    ``[n E]``          encoder output of the observation at that step
    ``deter``    ``[n D]``          deterministic recurrent state after filtering the step
    ``stoch``    ``[n S]``          (RSSM) posterior stochastic state, flattened (mode)
    ``feat``     ``[n F]``          what heads and planners read (RSSM: ``[deter, stoch]``;
                                    GRU, SPR: ``deter``)
    ===========  =================  ==========================================================

(``n`` = number of valid steps collected). The disk-backed, fingerprint-keyed cache is a later issue.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch
from einops import rearrange
from torch import Tensor

from dynamics.base import DynamicsModel
from worlds.trajectory import Episode

_MODEL_INPUTS = ("obs", "actions", "is_first")


@dataclass(frozen=True)
class SiteCache:
    """Latent sites of real steps, one row per step: ``sites[name]`` is ``[n *feature]`` (see the module
    docstring for the names). ``seq[n]`` numbers the sequences in arrival order and ``step[n]`` is the
    position of the row within its sequence; ``fields[name]`` are the pass-through per-step arrays ``[n ...]``."""

    sites: Mapping[str, Tensor]
    seq: Tensor
    step: Tensor
    fields: Mapping[str, Tensor] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Tensor:
        if name in self.sites:
            return self.sites[name]
        if name in self.fields:
            return self.fields[name]
        raise KeyError(f"unknown name {name!r}; sites: {', '.join(self.sites)}; fields: {', '.join(self.fields) or '-'}")

    def __len__(self) -> int:
        return int(self.seq.shape[0])

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """``{site: feature shape}`` of every cached site."""
        return {k: tuple(v.shape[1:]) for k, v in self.sites.items()}

    def to(self, device: torch.device | str) -> "SiteCache":
        move = lambda d: {k: v.to(device) for k, v in d.items()}  # noqa: E731
        return SiteCache(move(self.sites), self.seq.to(device), self.step.to(device), move(self.fields))


def _as_batch(item: Mapping[str, Tensor | np.ndarray] | Episode) -> dict[str, Tensor]:
    """An Episode becomes a batch of one sequence; a mapping of ``[b t ...]`` arrays is taken as is."""
    if isinstance(item, Episode):
        return {k: torch.as_tensor(v).unsqueeze(0) for k, v in item.step_fields().items()}
    missing = [k for k in _MODEL_INPUTS if k not in item]
    if missing:
        raise KeyError(f"batches need keys {_MODEL_INPUTS}, missing {missing}; got {sorted(item)}")
    return {k: torch.as_tensor(v) for k, v in item.items()}


@torch.inference_mode()
def collect_sites(model: DynamicsModel, batches: Iterable[Mapping[str, Tensor | np.ndarray] | Episode],
                  sites: Sequence[str] | None = None, device: torch.device | str = "cpu",
                  keep_fields: bool = True) -> SiteCache:
    """Run ``model.observe`` over ``batches`` and cache ``sites`` (all of ``model.sites`` when ``None``).

    ``batches`` yields Episodes or mappings with ``obs [b t *obs]``, ``actions [b t ...]``, ``is_first [b t]``
    and optionally ``mask [b t]`` (bool, false on padding: those steps are dropped) and any other per-step
    arrays, which are kept in ``fields`` when ``keep_fields``. The model runs on ``device``; the cache
    stays on the CPU. The model is put in eval mode for the run and restored afterwards.
    """
    names = list(model.sites) if sites is None else list(sites)
    unknown = [s for s in names if s not in model.sites]
    if unknown:
        raise ValueError(f"unknown site(s) {unknown}; {type(model).__name__} has: {', '.join(model.sites)}")
    out: dict[str, list[Tensor]] = {s: [] for s in names}
    extra: dict[str, list[Tensor]] = {}
    seqs, steps, offset = [], [], 0
    was_training = model.training
    model.train(False)  # eval mode
    try:
        for item in batches:
            batch = _as_batch(item)
            b, t = batch["is_first"].shape[:2]
            mask = batch.pop("mask", torch.ones(b, t, dtype=torch.bool)).bool().reshape(-1)
            state = model.observe(*(batch[k].to(device) for k in _MODEL_INPUTS))
            for s in names:
                out[s].append(rearrange(state[s], "b t ... -> (b t) ...")[mask.to(device)].cpu())
            grid_seq, grid_step = torch.meshgrid(torch.arange(b) + offset, torch.arange(t), indexing="ij")
            seqs.append(grid_seq.reshape(-1)[mask]), steps.append(grid_step.reshape(-1)[mask])
            offset += b
            if keep_fields:
                for k, v in batch.items():
                    if k not in _MODEL_INPUTS and v.shape[:2] == (b, t):
                        extra.setdefault(k, []).append(rearrange(v, "b t ... -> (b t) ...")[mask])
    finally:
        model.train(was_training)
    if not seqs:
        raise ValueError("collect_sites got no batches")
    bad = [k for k, v in extra.items() if len(v) != len(seqs)]
    if bad:
        raise ValueError(f"fields {bad} are missing from some batches; every batch must carry the same keys")
    return SiteCache({s: torch.cat(v) for s, v in out.items()}, torch.cat(seqs), torch.cat(steps),
                     {k: torch.cat(v) for k, v in extra.items()})
