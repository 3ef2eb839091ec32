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
They split further: ``model_last_view`` on cells inside the *last* observed view (errors there are drift of
the imagined state) and ``model_memory`` on cells seen only in earlier context frames (layout memory).

Rare classes (symbolic only): per-cell accuracy is dominated by the common classes -- on lavakeydoor, empty
floor and wall are ~96% of the cells, so a model that never predicts a key, a door or the goal still scores
~0.95. ``model_class_recall[k][name]`` is the recall of each class (of the cells whose true class is
``name``, the fraction predicted as ``name``) and ``model_balanced[k]`` their mean over the classes present
in the targets (macro recall, i.e. balanced per-cell accuracy; a class absent from the targets at ``k`` is
left out of both); ``copy_*`` are the same for the copy baseline and ``*_seen_*`` on the seen cells.

Estimates pool cells over windows; their 95% intervals come from a percentile bootstrap over windows (or over
``groups``); the macro recall is recomputed from the per-class sums of each resample.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
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
    class_names: tuple[str, ...] = ()
    """Symbolic only: the name of each observation channel (``class_names=`` of the evaluation; empty when
    none was given, and the ``*_class_recall`` dicts are then keyed by channel index)."""
    model_balanced: Mapping[int, Estimate] = field(default_factory=dict)
    """Symbolic only: macro-averaged recall over the classes present in the targets (balanced accuracy)."""
    copy_balanced: Mapping[int, Estimate] = field(default_factory=dict)
    """The copy baseline's macro recall."""
    model_class_recall: Mapping[int, Mapping[int | str, Estimate]] = field(default_factory=dict)
    """Symbolic only: ``{k: {class: recall}}`` for every class present in the targets at ``k``."""
    copy_class_recall: Mapping[int, Mapping[int | str, Estimate]] = field(default_factory=dict)
    """The copy baseline's recall by class."""
    model_seen_balanced: Mapping[int, Estimate] = field(default_factory=dict)
    """Symbolic with ``positions`` only: macro recall on the seen cells."""
    copy_seen_balanced: Mapping[int, Estimate] = field(default_factory=dict)
    model_seen_class_recall: Mapping[int, Mapping[int | str, Estimate]] = field(default_factory=dict)
    """Symbolic with ``positions`` only: recall by class on the seen cells."""
    copy_seen_class_recall: Mapping[int, Mapping[int | str, Estimate]] = field(default_factory=dict)
    model_last_view: Mapping[int, Estimate] = field(default_factory=dict)
    """Symbolic with ``positions`` only: seen cells that lay inside the *last* observed view (the model
    has to carry the current frame forward: state drift shows here)."""
    model_memory: Mapping[int, Estimate] = field(default_factory=dict)
    """Symbolic with ``positions`` only: seen cells outside the last observed view, seen only in earlier
    context frames (the model has to remember the layout)."""
    memory_fraction: Mapping[int, float] = field(default_factory=dict)

    def summary(self) -> str:
        """Small tables, one row per horizon (then, for symbolic observations, recall by class)."""
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
        if self.model_balanced:
            rows.append("balanced accuracy (macro recall over the classes present)")
            rows.append("k   model    copy     model_seen copy_seen")
            for k in self.horizons:
                rows.append(f"{k:<3d} {fmt(self.model_balanced, k):<8} {fmt(self.copy_balanced, k):<8} "
                            f"{fmt(self.model_seen_balanced, k):<10} {fmt(self.copy_seen_balanced, k)}")
            seen = bool(self.model_seen_class_recall)
            model = self.model_seen_class_recall if seen else self.model_class_recall
            copy = self.copy_seen_class_recall if seen else self.copy_class_recall
            classes = list(dict.fromkeys(c for k in self.horizons for c in model[k]))
            rows.append(f"recall by class, model / copy ({'seen' if seen else 'all'} cells)")
            rows.append(f"{'class':<12} " + " ".join(f"{'k=' + str(k):<17}" for k in self.horizons))
            for c in classes:
                rows.append(f"{str(c):<12} " + " ".join(f"{fmt(model[k], c) + ' / ' + fmt(copy[k], c):<17}"
                                                        if c in model[k] else f"{'-':<17}" for k in self.horizons))
        if self.model_memory:
            rows.append("seen cells: in the last observed view / seen only earlier (memory), model accuracy")
            rows.append("k   last_view memory  memory_frac")
            for k in self.horizons:
                rows.append(f"{k:<3d} {fmt(self.model_last_view, k):<9} {fmt(self.model_memory, k):<7} "
                            f"{fmt(self.memory_fraction, k)}")
        return "\n".join(rows)


def episode_windows(episodes: Sequence[Episode], length: int, stride: int | None = None,
                    position_concepts: tuple[str, str] | None = None) -> dict[str, Tensor]:
    """Cut every episode into windows of ``length`` steps that start at ``0, stride, 2 stride, ...`` and fit
    inside the episode (shorter episodes give none). Returns ``{"obs": [n length *obs], "actions":
    [n length ...], "is_first": [n length], "episode": [n]}``; ``is_first`` is true only at a window
    starting at step 0; ``episode`` indexes ``episodes`` (pass it as ``groups`` to :func:`evaluate_open_loop`).
    ``position_concepts`` (e.g. ``("agent_row", "agent_col")``) adds ``"positions": int64[n length 2]`` from
    those concepts: the world cell at the centre of each egocentric view (``positions=`` of the evaluation)."""
    stride = length if stride is None else stride  # not `or`: stride=0 is refused below, not read as `length`
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
              groups: np.ndarray | None = None,
              statistic: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None) -> Estimate:
    """Pooled ratio ``sum(num) / sum(den)`` with a percentile bootstrap over ``groups`` (episodes; windows
    cut from one episode are correlated, so resampling them one by one would give too narrow an interval)
    or, when no groups are given, over windows.

    ``statistic(num_sums, den_sums)`` replaces the ratio: ``num[n C]``, ``den[n C]`` per window, the statistic
    maps sums over windows ``[... C]`` to ``[...]`` (e.g. :func:`macro_recall`); resamples where it is NaN -- or,
    for the plain ratio, where ``den`` sums to 0 -- are skipped (``n_skipped``)."""
    if groups is not None:
        _, g = np.unique(groups, return_inverse=True)
        num, den = _group_sum(num, g), _group_sum(den, g)
    total = float(den.sum())
    if total == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), count=0)
    idx = rng.integers(0, len(num), size=(resamples, len(num)))
    if statistic is None:
        # A resample that drew no cell at all (e.g. only episodes without a rare class) has no ratio: it is
        # skipped like an undefined statistic below, not counted as 0 (which pulled the lower end to 0).
        boot_den = den[idx].sum(1)
        ok = boot_den > 0
        boot = num[idx].sum(1)[ok] / boot_den[ok]
        lo, hi = np.percentile(boot, [2.5, 97.5]) if ok.any() else (float("nan"), float("nan"))
        return Estimate(float(num.sum() / total), float(lo), float(hi), n_boot=resamples, n_groups=len(num),
                        n_skipped=int((~ok).sum()), count=int(total))
    point = statistic(num.sum(0), den.sum(0))
    boot = statistic(num[idx].sum(1), den[idx].sum(1))
    ok = np.isfinite(boot)
    lo, hi = np.percentile(boot[ok], [2.5, 97.5]) if ok.any() else (float("nan"), float("nan"))
    return Estimate(float(point), float(lo), float(hi), n_boot=resamples, n_groups=len(num),
                    n_skipped=int((~ok).sum()), count=int(total))


def _group_sum(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Sums of ``x[n]`` or ``x[n C]`` over the windows of each group ``g[n]`` (indices ``0..G-1``): ``[G]`` / ``[G C]``."""
    if x.ndim == 1:
        return np.bincount(g, weights=x)
    return np.stack([np.bincount(g, weights=col, minlength=int(g.max()) + 1) for col in x.T], 1)


def macro_recall(hits: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """Mean recall over the classes present: ``hits[... C]`` (cells of class ``c`` predicted as ``c``) and
    ``cells[... C]`` (cells of class ``c``) -> ``[...]``; classes with no cell are left out (NaN if none is present)."""
    present = cells > 0
    recall = np.where(present, hits / np.maximum(cells, 1e-12), 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return recall.sum(-1) / present.sum(-1)


@torch.inference_mode()
def evaluate_open_loop(model: DynamicsModel, obs: Tensor, actions: Tensor, is_first: Tensor, context: int,
                       horizons: Sequence[int] = (1, 5, 15), *, decode: Callable[[LatentState], Tensor] | None = None,
                       sample: bool = False, batch_size: int = 256, seed: int = 0,
                       groups: Tensor | np.ndarray | None = None, positions: Tensor | None = None,
                       class_names: Sequence[str] | None = None) -> OpenLoopReport:
    """Open-loop prediction quality of ``model`` on windows ``obs[b T *obs]``, ``actions[b T ...]``,
    ``is_first[b T]`` (see the module docstring). ``decode`` replaces ``model.decode`` (e.g. a decoder
    fitted on frozen latents of a model without one); ``sample`` is passed to ``imagine``; ``groups[b]``
    (e.g. ``episode_windows(...)["episode"]``) makes the intervals a bootstrap over episodes; ``positions[b T 2]``
    (symbolic views only: the world cell at the centre of each unrotated view) adds the seen-cell split;
    ``class_names`` (symbolic only: one per channel, e.g. ``worlds.lavakeydoor.CELL_NAMES``) keys the recall by
    class (default: channel indices)."""
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
    if class_names is not None:
        if spec.kind != "symbolic":
            raise ValueError(f"class_names name the channels of symbolic observations, got obs kind {spec.kind!r}; "
                             "pass class_names=None")
        if len(class_names) != spec.shape[0]:
            raise ValueError(f"class_names must name each of the {spec.shape[0]} observation channels, "
                             f"got {len(class_names)}: {tuple(class_names)!r}")
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
                targets = p[:, [context - 1 + k for k in horizons]]
                seen = seen_cells(p[:, :context], targets, spec.shape[1:])
                in_last = seen_cells(p[:, context - 1:context], targets, spec.shape[1:])
                batch.update(_seen_stats(pred, truth, o[:, context - 1], seen.to(device), in_last.to(device)))
            for key, value in batch.items():
                stats.setdefault(key, []).append(value)
    finally:
        model.train(was_training)
    s = {k: np.concatenate(v) for k, v in stats.items()}  # each [b K] (by class: [b K C])
    rng = np.random.default_rng(seed)
    col = {k: i for i, k in enumerate(horizons)}
    grp = None if groups is None else np.asarray(groups)
    if grp is not None and grp.shape != (obs.shape[0],):
        raise ValueError(f"groups must have shape ({obs.shape[0]},) -- one per window, got {tuple(grp.shape)}")

    def per_k(num: str, den: str) -> dict[int, Estimate]:
        return {k: _estimate(s[num][:, i], s[den][:, i], rng, groups=grp) for k, i in col.items()}

    report = OpenLoopReport(
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
    if spec.kind != "symbolic":
        return report
    # Drawn after every estimate above, so that those keep the values (and intervals) they had before.
    names = tuple(str(c) for c in class_names) if class_names is not None else tuple(range(spec.shape[0]))

    def balanced(hits: str, cells: str) -> dict[int, Estimate]:
        return {k: _estimate(s[hits][:, i], s[cells][:, i], rng, groups=grp, statistic=macro_recall)
                for k, i in col.items()}

    def by_class(hits: str, cells: str) -> dict[int, dict[int | str, Estimate]]:
        return {k: {names[c]: _estimate(s[hits][:, i, c], s[cells][:, i, c], rng, groups=grp)
                    for c in range(len(names)) if s[cells][:, i, c].sum() > 0} for k, i in col.items()}

    extra = dict(class_names=() if class_names is None else names,
                 model_balanced=balanced("model_class", "class_cells"), copy_balanced=balanced("copy_class", "class_cells"),
                 model_class_recall=by_class("model_class", "class_cells"),
                 copy_class_recall=by_class("copy_class", "class_cells"))
    if positions is not None:
        extra.update(model_seen_balanced=balanced("model_seen_class", "seen_class_cells"),
                     copy_seen_balanced=balanced("copy_seen_class", "seen_class_cells"),
                     model_seen_class_recall=by_class("model_seen_class", "seen_class_cells"),
                     copy_seen_class_recall=by_class("copy_seen_class", "seen_class_cells"),
                     model_last_view=per_k("model_last_view", "last_view"), model_memory=per_k("model_memory", "memory"),
                     memory_fraction={k: float(s["memory"][:, i].sum() / max(s["cells"][:, i].sum(), 1))
                                      for k, i in col.items()})
    return dataclasses.replace(report, **extra)


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
        by_class = _class_stats(hit, copy_hit, y, torch.ones_like(hit), pred.shape[2], "")
        return {**{k: v.flatten(2).sum(2).double().cpu().numpy() for k, v in out.items()}, **by_class}
    else:
        scale = 255.0 if kind == "image" else 1.0
        y, copy = truth.float() / scale, last.float() / scale
        err, copy_err = (pred.float() - y).square(), (copy - y).square()
        changed = (truth != last).float()
        out = {"model": err, "copy": copy_err, "model_changed": err * changed, "copy_changed": copy_err * changed,
               "changed": changed, "cells": torch.ones_like(err)}
    return {k: v.flatten(2).sum(2).double().cpu().numpy() for k, v in out.items()}


def _seen_stats(pred: Tensor, truth: Tensor, last: Tensor, seen: Tensor, in_last: Tensor) -> dict[str, np.ndarray]:
    """Per-window sums ``[b K]`` on the seen cells ``seen[b K h w]`` of symbolic views (see :func:`seen_cells`),
    split by ``in_last[b K h w]`` (inside the last observed view); ``last[b *obs]`` is the last observed frame."""
    p, y, prev = pred.argmax(2), truth.argmax(2), last.argmax(1)[:, None]  # [b K h w], [b 1 h w]
    hit, copy_hit, m = (p == y).float(), (prev == y).float(), seen.float()
    changed, lv = (y != prev).float(), in_last.float()  # the last view lies inside the seen cells
    out = {"model_seen": hit * m, "copy_seen": copy_hit * m, "model_seen_changed": hit * m * changed,
           "seen": m, "seen_changed": m * changed, "model_last_view": hit * lv, "last_view": lv,
           "model_memory": hit * m * (1 - lv), "memory": m * (1 - lv)}
    by_class = _class_stats(hit, copy_hit, y, m, pred.shape[2], "seen_")
    return {**{k: v.flatten(2).sum(2).double().cpu().numpy() for k, v in out.items()}, **by_class}


def _class_stats(hit: Tensor, copy_hit: Tensor, y: Tensor, mask: Tensor, channels: int, prefix: str) -> dict[str, np.ndarray]:
    """Per-window, per-class sums ``[b K C]`` over the cells in ``mask[b K h w]``: cells of each true class
    (``{prefix}class_cells``) and those the model / the copy baseline got right (``model_{prefix}class``,
    ``copy_{prefix}class``); ``hit``, ``copy_hit`` ``[b K h w]`` (1 where right), ``y[b K h w]`` true classes."""
    cls = F.one_hot(y, channels).to(hit.dtype) * mask.unsqueeze(-1)  # [b K h w C]
    out = {f"{prefix}class_cells": cls, f"model_{prefix}class": cls * hit.unsqueeze(-1),
           f"copy_{prefix}class": cls * copy_hit.unsqueeze(-1)}
    return {k: v.sum((2, 3)).double().cpu().numpy() for k, v in out.items()}
