"""Open-loop evaluation: how well does a model predict observations from actions alone?

For every window ``obs[b T ...]`` (one episode segment, ``T >= context + max(horizons)``): filter the
first ``context`` steps with ``observe``, take the last posterior state, ``imagine`` the next
``max(horizons)`` steps with the *true* actions, ``decode`` them, and compare the prediction ``k`` steps
ahead with the true observation at step ``context - 1 + k``.

Metrics (``metric``): symbolic observations -> per-cell accuracy (argmax over channels equals the true
channel); image and vector observations -> mean squared error (images on [0, 1]). Every metric is also
computed for the "copy the last observed frame" baseline, and restricted to the cells (pixels,
components) that *changed* since the last observed frame -- there copying is always wrong, so this is
where a model shows that it learned dynamics. For symbolic observations, ``model_unseen`` is the
accuracy on cells whose true value never appeared at that position in any context frame.

Egocentric views: when ``positions[b T 2]`` (the world cell at the centre of each unrotated view, e.g. the
agent's row and column) is given, every cell of a symbolic ``[c h w]`` view has a world position, and a
predicted cell is *seen* when that world position lay inside the view of at least one observed (context)
frame of the window. Cells never seen cannot be predicted from the observations, only guessed from priors
over layouts, so ``model_seen`` (and ``copy_seen``, ``model_seen_changed``) report the seen cells apart.

Estimates pool cells over windows; their 95% intervals come from a percentile bootstrap over windows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from dynamics.base import DynamicsModel, LatentState
from worlds.estimate import Estimate
from worlds.trajectory import Episode


@dataclass(frozen=True)
class OpenLoopReport:
    """Open-loop prediction quality by horizon ``k`` (steps after the last observed frame)."""

    metric: str
    """``"accuracy"`` (symbolic: higher is better) or ``"mse"`` (image, vector: lower is better)."""
    context: int
    horizons: tuple[int, ...]
    num_windows: int
    model: Mapping[int, Estimate]
    copy: Mapping[int, Estimate]
    """The "copy the last observed frame" baseline."""
    model_changed: Mapping[int, Estimate]
    """The model on cells that differ from the last observed frame."""
    copy_changed: Mapping[int, Estimate]
    """The copy baseline on those cells (accuracy 0 by construction for symbolic observations)."""
    changed_fraction: Mapping[int, float]
    model_unseen: Mapping[int, Estimate] = field(default_factory=dict)
    """Symbolic only: cells whose true value appeared at that position in no context frame."""
    model_seen: Mapping[int, Estimate] = field(default_factory=dict)
    """Symbolic with ``positions`` only: cells whose world position lay inside some context frame's view."""
    copy_seen: Mapping[int, Estimate] = field(default_factory=dict)
    """The copy baseline on the seen cells."""
    model_seen_changed: Mapping[int, Estimate] = field(default_factory=dict)
    """The model on seen cells that differ from the last observed frame."""
    seen_fraction: Mapping[int, float] = field(default_factory=dict)

    def summary(self) -> str:
        """A small table, one row per horizon."""
        rows = [f"{self.metric} (context {self.context}, {self.num_windows} windows)",
                "k   model    copy     model_changed copy_changed changed_frac model_unseen "
                "model_seen copy_seen seen_changed seen_frac"]

        def fmt(d: Mapping, k: int) -> str:
            v = d.get(k)
            return "-" if v is None else f"{v if isinstance(v, float) else v.estimate:.4f}"

        for k in self.horizons:
            rows.append(f"{k:<3d} {self.model[k].estimate:.4f}   {self.copy[k].estimate:.4f}   "
                        f"{self.model_changed[k].estimate:.4f}        {self.copy_changed[k].estimate:.4f}       "
                        f"{self.changed_fraction[k]:.4f}       {fmt(self.model_unseen, k):<12} "
                        f"{fmt(self.model_seen, k):<10} {fmt(self.copy_seen, k):<9} "
                        f"{fmt(self.model_seen_changed, k):<12} {fmt(self.seen_fraction, k)}")
        return "\n".join(rows)


def episode_windows(episodes: Sequence[Episode], length: int, stride: int | None = None,
                    position_concepts: tuple[str, str] | None = None) -> dict[str, Tensor]:
    """Cut every episode into windows of ``length`` steps that start at ``0, stride, 2 stride, ...`` and fit
    inside the episode (shorter episodes give none). Returns ``{"obs": [n length *obs], "actions":
    [n length ...], "is_first": [n length], "episode": [n]}``; ``is_first`` is true only at a window
    starting at step 0; ``episode`` indexes ``episodes`` (pass it as ``groups`` to :func:`evaluate_open_loop`).
    ``position_concepts`` (e.g. ``("agent_row", "agent_col")``) adds ``"positions": int64[n length 2]`` from
    those concepts: the world cell at the centre of each egocentric view (``positions=`` of the evaluation)."""
    stride = stride or length
    if position_concepts is not None and len(position_concepts) != 2:
        raise ValueError(f"position_concepts must name two concepts (row, column), got {position_concepts!r}")
    if length < 1 or stride < 1:
        raise ValueError(f"length and stride must be positive, got length={length}, stride={stride}")
    cut = {"obs": [], "actions": [], "is_first": []}
    if position_concepts is not None:
        cut["positions"] = []
    episode = []
    for i, ep in enumerate(episodes):
        if position_concepts is not None:
            missing = [c for c in position_concepts if c not in ep.concepts]
            if missing:
                raise ValueError(f"episode {i} has no concept {missing[0]!r} (it has: {', '.join(ep.concepts) or 'none'}); "
                                 "pass position_concepts=None or the names of the view centre's row and column")
            pos = np.stack([np.rint(ep.concepts[c]).astype(np.int64) for c in position_concepts], -1)  # [t 2]
        for start in range(0, len(ep) - length + 1, stride):
            for k in ("obs", "actions", "is_first"):
                cut[k].append(getattr(ep, k)[start:start + length])
            if position_concepts is not None:
                cut["positions"].append(pos[start:start + length])
            episode.append(i)
    if not cut["obs"]:
        raise ValueError(f"no episode has {length} steps (longest: {max((len(e) for e in episodes), default=0)}); "
                         "use shorter windows or longer episodes")
    out = {k: torch.from_numpy(np.stack(v)) for k, v in cut.items()}
    out["episode"] = torch.tensor(episode, dtype=torch.int64)  # [n]: which episode each window came from
    return out


def _estimate(num: np.ndarray, den: np.ndarray, rng: np.random.Generator, resamples: int = 200,
              groups: np.ndarray | None = None) -> Estimate:
    """Pooled ratio ``sum(num) / sum(den)`` with a percentile bootstrap over ``groups`` (episodes; windows
    cut from one episode are correlated, so resampling them one by one would give too narrow an interval)
    or, when no groups are given, over windows."""
    if groups is not None:
        _, g = np.unique(groups, return_inverse=True)
        num, den = np.bincount(g, weights=num), np.bincount(g, weights=den)
    total = float(den.sum())
    if total == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), count=0)
    idx = rng.integers(0, len(num), size=(resamples, len(num)))
    boot = num[idx].sum(1) / np.maximum(den[idx].sum(1), 1e-12)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return Estimate(float(num.sum() / total), float(lo), float(hi), n_boot=resamples, n_groups=len(num), count=int(total))


@torch.inference_mode()
def evaluate_open_loop(model: DynamicsModel, obs: Tensor, actions: Tensor, is_first: Tensor, context: int,
                       horizons: Sequence[int] = (1, 5, 15), *, decode: Callable[[LatentState], Tensor] | None = None,
                       sample: bool = False, batch_size: int = 256, seed: int = 0,
                       groups: Tensor | np.ndarray | None = None, positions: Tensor | None = None) -> OpenLoopReport:
    """Open-loop prediction quality of ``model`` on windows ``obs[b T *obs]``, ``actions[b T ...]``,
    ``is_first[b T]`` (see the module docstring). ``decode`` replaces ``model.decode`` (e.g. a decoder
    fitted on frozen latents of a model without one); ``sample`` is passed to ``imagine``; ``groups[b]``
    (e.g. ``episode_windows(...)["episode"]``) makes the intervals a bootstrap over episodes; ``positions[b T 2]``
    (symbolic views only: the world cell at the centre of each unrotated view) adds the seen-cell split."""
    horizons = tuple(sorted(set(int(k) for k in horizons)))
    if not horizons or horizons[0] < 1 or context < 1:
        raise ValueError(f"need context >= 1 and horizons >= 1, got context={context}, horizons={horizons}")
    h = horizons[-1]
    if obs.shape[1] < context + h:
        raise ValueError(f"windows must have at least context + max(horizon) = {context + h} steps, got {obs.shape[1]}")
    if is_first[:, 1:context + h].any():
        raise ValueError("windows must lie inside one episode: is_first is set after step 0; cut them with episode_windows")
    decode = decode or model.decode
    spec = model.obs_spec
    if positions is not None:
        if spec.kind != "symbolic":
            raise ValueError(f"positions (the seen-cell split) need symbolic [c h w] views, got obs kind {spec.kind!r}")
        if tuple(positions.shape) != (*obs.shape[:2], 2):
            raise ValueError(f"positions must have shape {(*obs.shape[:2], 2)} -- (row, col) per step, "
                             f"got {tuple(positions.shape)}")
    device = next(model.parameters()).device
    was_training = model.training
    model.train(False)  # eval mode
    stats: dict[str, list[np.ndarray]] = {}
    try:
        for start in range(0, obs.shape[0], batch_size):
            sl = slice(start, start + batch_size)
            o, a, f = (x[sl].to(device) for x in (obs, actions, is_first))
            post = model.observe(o[:, :context], a[:, :context], f[:, :context])
            kw = {"sample": True} if sample else {}  # models without a stochastic state need not accept it
            imagined = model.imagine(post.at((slice(None), -1)), a[:, context:context + h], **kw)
            pred = decode(imagined)[:, [k - 1 for k in horizons]]  # [b K *obs]
            truth = o[:, [context - 1 + k for k in horizons]]
            batch = _batch_stats(pred, truth, o[:, :context], spec.kind)
            if positions is not None:
                p = positions[sl].long()
                seen = seen_cells(p[:, :context], p[:, [context - 1 + k for k in horizons]], spec.shape[1:])
                batch.update(_seen_stats(pred, truth, o[:, context - 1], seen.to(device)))
            for key, value in batch.items():
                stats.setdefault(key, []).append(value)
    finally:
        model.train(was_training)
    s = {k: np.concatenate(v) for k, v in stats.items()}  # each [b K]
    rng = np.random.default_rng(seed)
    col = {k: i for i, k in enumerate(horizons)}
    grp = None if groups is None else np.asarray(groups)
    if grp is not None and grp.shape != (obs.shape[0],):
        raise ValueError(f"groups must have shape ({obs.shape[0]},) -- one per window, got {tuple(grp.shape)}")

    def per_k(num: str, den: str) -> dict[int, Estimate]:
        return {k: _estimate(s[num][:, i], s[den][:, i], rng, groups=grp) for k, i in col.items()}

    return OpenLoopReport(
        metric="accuracy" if spec.kind == "symbolic" else "mse", context=context, horizons=horizons,
        num_windows=int(obs.shape[0]), model=per_k("model", "cells"), copy=per_k("copy", "cells"),
        model_changed=per_k("model_changed", "changed"), copy_changed=per_k("copy_changed", "changed"),
        changed_fraction={k: float(s["changed"][:, i].sum() / max(s["cells"][:, i].sum(), 1)) for k, i in col.items()},
        model_unseen=per_k("model_unseen", "unseen") if spec.kind == "symbolic" else {},
        **({} if positions is None else dict(
            model_seen=per_k("model_seen", "seen"), copy_seen=per_k("copy_seen", "seen"),
            model_seen_changed=per_k("model_seen_changed", "seen_changed"),
            seen_fraction={k: float(s["seen"][:, i].sum() / max(s["cells"][:, i].sum(), 1)) for k, i in col.items()})),
    )


def seen_cells(context_pos: Tensor, target_pos: Tensor, view: Sequence[int]) -> Tensor:
    """``bool[b K h w]``: whether each cell of the views centred at ``target_pos[b K 2]`` lies inside some view
    centred at ``context_pos[b c 2]`` (views are unrotated ``h x w`` windows, ``h`` and ``w`` odd)."""
    h, w = int(view[0]), int(view[1])
    if h % 2 == 0 or w % 2 == 0:
        raise ValueError(f"seen cells need views of odd size centred on the position, got {h}x{w}")
    dr = torch.arange(h, device=target_pos.device) - h // 2
    dc = torch.arange(w, device=target_pos.device) - w // 2
    row = target_pos[..., 0, None, None] + dr[:, None]  # [b K h 1]: world row of each cell
    col = target_pos[..., 1, None, None] + dc[None, :]  # [b K 1 w]
    r = (row[:, :, None] - context_pos[:, None, :, 0, None, None]).abs() <= h // 2  # [b K c h 1]
    c = (col[:, :, None] - context_pos[:, None, :, 1, None, None]).abs() <= w // 2  # [b K c 1 w]
    return (r & c).any(2)


def _batch_stats(pred: Tensor, truth: Tensor, ctx: Tensor, kind: str) -> dict[str, np.ndarray]:
    """Per-window sums ``[b K]`` of correct cells / squared errors, and the cell counts they divide by.

    ``pred[b K *obs]`` (logits for symbolic), ``truth[b K *obs]`` raw, ``ctx[b c *obs]`` raw context frames.
    """
    last = ctx[:, -1:]  # [b 1 *obs]
    if kind == "symbolic":
        p, y, cls_ctx = pred.argmax(2), truth.argmax(2), ctx.argmax(2)  # [b K h w], [b c h w]
        hit, copy_hit = (p == y).float(), (cls_ctx[:, -1:] == y).float()
        changed = (y != cls_ctx[:, -1:]).float()
        unseen = (y.unsqueeze(2) != cls_ctx.unsqueeze(1)).all(2).float()  # [b K h w]
        out = {"model": hit, "copy": copy_hit, "model_changed": hit * changed, "copy_changed": copy_hit * changed,
               "changed": changed, "cells": torch.ones_like(hit), "model_unseen": hit * unseen, "unseen": unseen}
    else:
        scale = 255.0 if kind == "image" else 1.0
        y, copy = truth.float() / scale, last.float() / scale
        err, copy_err = (pred.float() - y).square(), (copy - y).square()
        changed = (truth != last).float()
        out = {"model": err, "copy": copy_err, "model_changed": err * changed, "copy_changed": copy_err * changed,
               "changed": changed, "cells": torch.ones_like(err)}
    return {k: v.flatten(2).sum(2).double().cpu().numpy() for k, v in out.items()}


def _seen_stats(pred: Tensor, truth: Tensor, last: Tensor, seen: Tensor) -> dict[str, np.ndarray]:
    """Per-window sums ``[b K]`` on the seen cells ``seen[b K h w]`` of symbolic views (see :func:`seen_cells`);
    ``last[b *obs]`` is the last observed frame."""
    p, y, prev = pred.argmax(2), truth.argmax(2), last.argmax(1)[:, None]  # [b K h w], [b 1 h w]
    hit, copy_hit, m = (p == y).float(), (prev == y).float(), seen.float()
    changed = (y != prev).float()
    out = {"model_seen": hit * m, "copy_seen": copy_hit * m, "model_seen_changed": hit * m * changed,
           "seen": m, "seen_changed": m * changed}
    return {k: v.flatten(2).sum(2).double().cpu().numpy() for k, v in out.items()}
