"""Model-based consistency of a probe: in imagination (issue metric 6) and across histories (metric 7).

**Imagination consistency.** A planner only ever sees *imagined* latents, so a probe must also read
them. For every anchor step ``t`` of a held-out episode: filter the episode with ``observe`` (the
posterior at ``t`` has seen steps ``0..t``, exactly what an agent acting at ``t`` has), ``imagine``
``k`` steps with the *true* actions ``actions[t+1 .. t+k]`` (step convention of
:mod:`worlds.trajectory`), apply the probe to the imagined site at ``t+k`` and score it against the
true concept at ``t+k``. Anchors are ``t = context-1, context-1+stride, ...``; horizon ``k`` uses every
anchor with ``t + k <= last step`` (no window crosses an episode end). The anchor sets of different
``k`` differ only in an episode's last ``max(ks)`` steps, and they must: a terminal event (``in_lava``,
``at_goal``: the episode's last step) is the target of horizon ``k`` only from ``t = last - k``, so one
anchor set shared by every ``k`` (``t + max(ks) <= last``) would never score a lava entry one step
ahead -- its k = 1 column would be one class and say nothing about the event a planner must foresee.
One rollout of ``max(ks)`` steps per anchor serves every ``k`` (actions past the end are padded and
the steps they produce dropped). Rows use the splits ``imagined_k1 / _k5 / _k15``.

**State consistency** (after Vafa et al. 2024, "Evaluating the world model implicit in a generative
model"). Different histories that reach the same true state should get the same probe output.
Steps are grouped by a caller-supplied true-state key (:func:`state_keys` builds one from the concept
values); only pairs of steps from *different* episodes count, and only groups with such a pair.
Per group: the fraction of cross-episode pairs whose predictions agree (binary / categorical), or
``1 - (mean half squared difference over pairs) / Var(predictions)`` (scalar: 1 = identical outputs,
0 = as variable within a state as across states). The metric is the mean over groups (each true state
counts once). Procedurally generated worlds (lavakeydoor draws a new layout per episode) rarely
revisit an exact world state in another episode, so the default key is the tuple of concept values:
an *abstract* state. Add ``observation_types(obs)`` as an extra key column for a stricter one.

Intervals: cluster bootstrap over episodes (:mod:`probes.stats`). For state consistency an episode
drawn twice stays *one* history: pairs between its copies are not counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from einops import rearrange
from scipy import sparse
from torch import Tensor

from dynamics.base import DynamicsModel, LatentState
from probes.base import Probe, ProbeError
from probes.metrics import concept_estimates
from probes.results import SPLITS, ResultRow
from probes.stats import Estimate, as_numpy, bootstrap, group_codes
from worlds.dataset.reader import TrajectoryDataset
from worlds.trajectory import Episode


# ------------------------------------------------------------------------------------ shared helpers
def as_episodes(data: Sequence[Episode] | TrajectoryDataset, split: str = "test") -> list[Episode]:
    """The episodes of ``split`` of a dataset, or a sequence of episodes as a list."""
    if isinstance(data, TrajectoryDataset):
        return [data.episode(int(i)) for i in data.episode_ids(split)]
    eps = list(data)
    if not eps or not all(isinstance(e, Episode) for e in eps):
        raise ProbeError(f"need a TrajectoryDataset or a non-empty sequence of Episode, got {type(data).__name__}")
    return eps


def check_site(model: DynamicsModel, site: str, *, imagined: bool = True) -> None:
    """Raise :class:`ProbeError` unless ``site`` is one of the model's sites (and, if ``imagined``, one
    that ``imagine`` produces: sites such as ``embed`` read an observation and exist only in ``observe``)."""
    if site not in model.sites:
        raise ProbeError(f"unknown site {site!r} for {type(model).__name__}; its sites are {', '.join(model.sites)}")
    if imagined:
        have = list(model.initial(1).sites)
        if site not in have:
            raise ProbeError(f"site {site!r} reads an observation, so imagine() does not produce it; use one of {', '.join(have)}")


def model_device(model: DynamicsModel) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def anchor_steps(lengths: Sequence[int], context: int, horizon: int, stride: int = 1) -> np.ndarray:
    """``int64[m 2]`` (episode index, step t) with ``t >= context-1`` and ``t + horizon <= length-1``."""
    if context < 1 or horizon < 0 or stride < 1:
        raise ProbeError(f"need context >= 1, horizon >= 0, stride >= 1; got context={context}, horizon={horizon}, stride={stride}")
    rows = [(e, t) for e, n in enumerate(lengths) for t in range(context - 1, int(n) - horizon, stride)]
    if not rows:
        raise ProbeError(f"no episode has context + horizon = {context}+{horizon} steps (longest has "
                         f"{max(lengths, default=0)}); use a smaller horizon/k or context, or longer episodes")
    return np.asarray(rows, np.int64)


def _pad(arrays: Sequence[np.ndarray], length: int) -> np.ndarray:
    out = np.zeros((len(arrays), length, *arrays[0].shape[1:]), arrays[0].dtype)
    for i, a in enumerate(arrays):
        out[i, : len(a)] = a
    return out


@torch.inference_mode()
def posterior_states(model: DynamicsModel, episodes: Sequence[Episode], anchors: np.ndarray, *,
                     batch_size: int = 64, device: torch.device | str | None = None) -> LatentState:
    """Posterior latents at ``anchors[m 2]`` (episode index, t), each filtered over its episode's steps
    ``0..t``: every site ``[m *feature]``. Episodes are observed whole, ``batch_size`` at a time
    (end-padded: padding after ``t`` cannot change a causal filter's state at ``t``)."""
    device = torch.device(device) if device is not None else model_device(model)
    used = np.unique(anchors[:, 0])
    parts: list[LatentState] = []
    order: list[np.ndarray] = []
    for start in range(0, len(used), batch_size):
        chunk = used[start:start + batch_size]
        eps = [episodes[int(e)] for e in chunk]
        length = max(len(e) for e in eps)
        obs, act, first = (torch.from_numpy(_pad([np.asarray(getattr(e, f)) for e in eps], length)).to(device)
                           for f in ("obs", "actions", "is_first"))
        post = model.observe(obs, act, first)
        rows = np.flatnonzero(np.isin(anchors[:, 0], chunk))
        b = torch.as_tensor(np.searchsorted(chunk, anchors[rows, 0]), device=device)
        t = torch.as_tensor(anchors[rows, 1], device=device)
        parts.append(post.at((b, t)))
        order.append(rows)
    inv = torch.as_tensor(np.argsort(np.concatenate(order)), device=device)
    return LatentState({k: torch.cat([p[k] for p in parts])[inv] for k in parts[0].sites})


def future_actions(episodes: Sequence[Episode], anchors: np.ndarray, horizon: int) -> Tensor:
    """True actions ``actions[t+1 .. t+horizon]`` after each anchor: ``[m horizon ...]``."""
    return torch.from_numpy(np.stack([np.asarray(episodes[e].actions[t + 1:t + 1 + horizon]) for e, t in anchors]))


def imagine(model: DynamicsModel, state: LatentState, actions: Tensor, sample: bool = False) -> LatentState:
    """``model.imagine`` (``sample`` passed only when set: deterministic models need not accept it)."""
    return model.imagine(state, actions, **({"sample": True} if sample else {}))


def flat(x: Tensor) -> Tensor:
    """Site tensor ``[m *feature] -> [m d]`` (what a probe reads)."""
    return rearrange(x, "m ... -> m (...)")


def concept_at(episodes: Sequence[Episode], name: str, anchors: np.ndarray, offset: int = 0) -> np.ndarray:
    """True values of concept ``name`` at ``t + offset`` for each anchor: ``[m]``."""
    if name not in episodes[0].concepts:
        raise ProbeError(f"unknown concept {name!r}; the episodes label {', '.join(episodes[0].concepts) or 'no concepts'}")
    return np.asarray([episodes[e].concepts[name][t + offset] for e, t in anchors])


def _predictions(probe: Probe, x: Tensor) -> tuple[np.ndarray, np.ndarray | None]:
    """``(y_pred [m], proba [m k] | None)`` as numpy."""
    pred = probe.predict(x).detach().cpu().numpy()
    proba = None if probe.concept.kind == "scalar" else probe.predict_proba(x).detach().cpu().numpy()
    return pred, proba


# ------------------------------------------------------------------------------ imagination consistency
@dataclass(frozen=True)
class ImaginedLatents:
    """Site latents imagined ``k`` steps ahead of posterior anchors (see the module docstring)."""

    site: str
    ks: tuple[int, ...]
    latents: Mapping[int, Tensor]
    """``k -> [m_k d]`` the site (flattened) imagined at ``t + k``."""
    anchors: Mapping[int, np.ndarray]
    """``k -> int64[m_k 2]`` (episode index, t) of each row; column 0 is the bootstrap group."""


@torch.inference_mode()
def imagine_latents(model: DynamicsModel, episodes: Sequence[Episode] | TrajectoryDataset, site: str, *,
                    ks: Sequence[int] = (1, 5, 15), context: int = 1, stride: int = 1, split: str = "test",
                    sample: bool = False, batch_size: int = 256, device: torch.device | str | None = None) -> ImaginedLatents:
    """Imagine from every anchor with the true actions and keep ``site`` at each ``t + k <= last step``
    (one rollout of ``max(ks)`` steps per anchor for all ``k``)."""
    eps = as_episodes(episodes, split)
    ks = tuple(sorted({int(k) for k in ks}))
    if not ks or ks[0] < 1:
        raise ProbeError(f"ks must be positive horizons, got {ks}")
    check_site(model, site)
    lengths = np.asarray([len(e) for e in eps])
    anchor_steps(lengths, context, ks[-1], stride)  # every k needs an anchor: raise if the longest does not
    anchors = anchor_steps(lengths, context, ks[0], stride)
    H = ks[-1]
    first = np.asarray(eps[0].actions)
    acts = np.zeros((len(anchors), H, *first.shape[1:]), first.dtype)
    for i, (e, t) in enumerate(anchors):  # actions[t+1 .. t+H]; the padding's steps are dropped below
        a = np.asarray(eps[e].actions[t + 1:t + 1 + H])
        acts[i, :len(a)] = a
    last = lengths[anchors[:, 0]] - 1
    keep = {k: np.flatnonzero(anchors[:, 1] + k <= last) for k in ks}
    was_training = model.training
    model.train(False)  # eval mode
    try:
        post = posterior_states(model, eps, anchors, device=device)
        out: dict[int, list[Tensor]] = {k: [] for k in ks}
        for s in range(0, len(anchors), batch_size):
            sl = slice(s, s + batch_size)
            st = post.at(sl)
            imagined = imagine(model, st, torch.from_numpy(acts[sl]).to(st["feat"].device), sample)[site]  # [b H *feature]
            for k in ks:
                rows = keep[k][(keep[k] >= s) & (keep[k] < s + batch_size)] - s
                out[k].append(flat(imagined[torch.as_tensor(rows, device=imagined.device), k - 1]))
    finally:
        model.train(was_training)
    return ImaginedLatents(site, ks, {k: torch.cat(v) for k, v in out.items()}, {k: anchors[keep[k]] for k in ks})


def imagination_consistency(model: DynamicsModel, episodes: Sequence[Episode] | TrajectoryDataset,
                            probes: Mapping[str, Probe], site: str, *, method: str, ks: Sequence[int] = (1, 5, 15),
                            context: int = 1, stride: int = 1, split: str = "test", sample: bool = False,
                            n_boot: int = 1000, level: float = 0.95, seed: int = 0, batch_size: int = 256,
                            device: torch.device | str | None = None) -> list[ResultRow]:
    """Probe metrics on imagined latents vs the true concept ``k`` steps ahead: rows ``(method, site,
    concept, "imagined_k{k}", metric)`` for every metric of :func:`probes.metrics.concept_estimates`."""
    bad = [k for k in ks if f"imagined_k{k}" not in SPLITS]
    if bad:
        raise ProbeError(f"horizons {bad} have no results split; allowed: {[s for s in SPLITS if s.startswith('imagined_')]}"
                         " (imagine_latents takes any k)")
    eps = as_episodes(episodes, split)
    for name in probes:
        concept_at(eps, name, np.zeros((0, 2), np.int64))  # unknown concept -> ProbeError before any work
    im = imagine_latents(model, eps, site, ks=ks, context=context, stride=stride, sample=sample,
                         batch_size=batch_size, device=device)
    rows = []
    for name, probe in probes.items():
        c = probe.concept
        for k in im.ks:
            pred, proba = _predictions(probe, im.latents[k])
            y = concept_at(eps, name, im.anchors[k], k)
            est = concept_estimates(c.kind, y, pred, proba, groups=im.anchors[k][:, 0], num_classes=c.num_classes or None,
                                    n_boot=n_boot, level=level, seed=seed)
            rows += [ResultRow.from_estimate(method, site, name, f"imagined_k{k}", m, e) for m, e in est.items()]
    return rows


# ------------------------------------------------------------------------------------ state consistency
def state_keys(concepts: Mapping[str, Any], *, names: Sequence[str] | None = None, decimals: int = 3,
               extra: Sequence[Any] = ()) -> np.ndarray:
    """``int64[n]`` true-state id per row: equal values of every concept in ``names`` (all by default;
    floats rounded to ``decimals``) and of every ``extra`` column ``[n]`` <=> equal id."""
    names = list(concepts) if names is None else list(names)
    missing = [n for n in names if n not in concepts]
    if missing or not names and not extra:
        raise ProbeError(f"state keys need known concepts; unknown {missing}, available {list(concepts)}")
    cols = [np.round(as_numpy(concepts[n]).astype(np.float64), decimals) for n in names]
    cols += [as_numpy(x).astype(np.float64) for x in extra]
    n = len(cols[0])
    if any(c.shape != (n,) for c in cols):
        raise ProbeError(f"every key column must have shape ({n},), got {[c.shape for c in cols]}")
    _, ids = np.unique(np.stack(cols, 1) + 0.0, axis=0, return_inverse=True)  # + 0.0: -0.0 == 0.0
    return ids.astype(np.int64).ravel()


@dataclass(frozen=True)
class StateAgreement:
    """Cross-episode agreement of predictions within true states (see the module docstring).

    ``metric(pred[n], keys[n], episodes[n])``; ``batched`` evaluates bootstrap resamples: with episode
    multiplicities ``c``, cross-episode pair totals are ``((c @ X)^2 - c^2 @ X^2) / 2`` for per-episode
    sums ``X`` (copies of one episode never pair with each other)."""

    kind: str

    def __call__(self, pred: Any, keys: Any, episodes: Any) -> float:
        codes, g = group_codes(episodes, len(as_numpy(pred)))
        return float(self.batched(np.ones((1, g)), codes, pred, keys, episodes)[0])

    def batched(self, counts: np.ndarray, group_index: np.ndarray, pred: Any, keys: Any, episodes: Any = None) -> np.ndarray:
        p = as_numpy(pred)
        s, n_states = group_codes(keys, len(p))
        e, g = group_index, counts.shape[1]
        # Keep the states seen in >= 2 episodes of the full sample: no resample can pair any other.
        eps_per_state = np.bincount(np.unique(s * g + e) // g, minlength=n_states)
        keep = eps_per_state[s] >= 2
        p, e = p[keep], e[keep]
        s, n_states = group_codes(s[keep], int(keep.sum()))

        def per_episode(values: np.ndarray, rows: np.ndarray, n_rows: int) -> sparse.csr_matrix:
            return sparse.csr_matrix((values, (rows, e)), shape=(n_rows, g))  # duplicates are summed

        ones = np.ones(len(p))
        if self.kind == "scalar":
            pf = p.astype(np.float64)
            n, s1, s2 = (per_episode(v, s, n_states) for v in (ones, pf, pf**2))   # [S g] each
            lin_m = [n, s1, s2]                                  # N, S1, S2 of copies: c @ X
            sq_m = [n.multiply(n), n.multiply(s2), s1.multiply(s1)]  # c^2 @ (n^2, n S2, S1^2)
        else:
            y, k = group_codes(p, len(p))
            n = per_episode(ones, s, n_states)
            ny = per_episode(ones, s * k + y, n_states * k)      # [(S k) g] per state, class, episode
            lin_m, sq_m = [n, ny], [n.multiply(n), ny.multiply(ny)]
        out = np.empty(len(counts))
        for lo in range(0, len(counts), 64):  # chunks keep the dense [b S k] totals small
            c = counts[lo:lo + 64].astype(np.float64)
            lin = [np.asarray((m @ c.T).T) for m in lin_m]
            sq = [np.asarray((m @ (c**2).T).T) for m in sq_m]
            pairs = (lin[0] ** 2 - sq[0]) / 2                    # [b S] cross-episode pairs per state
            ok = pairs > 0
            with np.errstate(invalid="ignore", divide="ignore"):
                if self.kind == "scalar":
                    n1, t1, t2 = lin
                    cross = n1 * t2 - t1**2 - (sq[1] - sq[2])    # sum of squared differences over those pairs
                    half_msd = np.where(ok, cross / (2 * pairs), np.nan)
                    m = np.where(ok, n1, 0).sum(1)
                    var = np.where(ok, t2, 0).sum(1) / m - (np.where(ok, t1, 0).sum(1) / m) ** 2
                    out[lo:lo + 64] = 1 - _nanmean(half_msd) / np.where(var > 1e-12, var, np.nan)
                else:
                    agree = ((lin[1] ** 2 - sq[1]) / 2).reshape(len(c), n_states, -1).sum(2)
                    out[lo:lo + 64] = _nanmean(np.where(ok, agree / pairs, np.nan))
        return out


def _nanmean(a: np.ndarray) -> np.ndarray:
    """Row means ``[b]`` of the finite entries of ``a[b S]`` (NaN for a row with none, without a warning)."""
    ok = np.isfinite(a)
    cnt = ok.sum(1)
    return np.where(cnt > 0, np.where(ok, a, 0).sum(1) / np.maximum(cnt, 1), np.nan)


def state_agreement(pred: Any, keys: Any, episodes: Any, *, kind: str, n_boot: int = 1000, level: float = 0.95,
                    seed: int = 0) -> Estimate:
    """:class:`StateAgreement` of ``pred[n]`` over true states ``keys[n]`` with an episode bootstrap."""
    if kind not in ("binary", "categorical", "scalar"):
        raise ProbeError(f"kind must be 'binary', 'categorical' or 'scalar', got {kind!r}")
    p, k, e = as_numpy(pred), as_numpy(keys), as_numpy(episodes)
    if not p.shape == k.shape == e.shape or p.ndim != 1:
        raise ProbeError(f"pred, keys and episodes must share shape (n,), got {p.shape}, {k.shape}, {e.shape}")
    _, first = np.unique(np.stack([k, e], 1), axis=0, return_index=True)
    shared = np.bincount(np.unique(k[first], return_inverse=True)[1].ravel())
    if not (shared >= 2).any():
        raise ProbeError(f"none of the {len(shared)} true states is reached in two different episodes; use coarser "
                         "state keys (key_concepts=[fewer concepts], more rounding) or more episodes")
    est = bootstrap(StateAgreement(kind), p, k, e, groups=e, n_boot=n_boot, level=level, seed=seed)
    return Estimate(est.estimate, est.lower, est.upper, est.level, est.n_boot, est.n_groups, est.n_skipped,
                    count=int((shared >= 2).sum()))


def state_consistency(model: DynamicsModel, episodes: Sequence[Episode] | TrajectoryDataset,
                      probes: Mapping[str, Probe], site: str, *, method: str, keys: Any = None,
                      key_concepts: Sequence[str] | None = None, split: str = "test", n_boot: int = 1000, level: float = 0.95, seed: int = 0,
                      device: torch.device | str | None = None) -> list[ResultRow]:
    """Rows ``(method, site, concept, split, "state_consistency")`` over every step of the episodes.

    ``keys[n]`` (n = total steps, episodes in order) defaults to :func:`state_keys` of ``key_concepts``
    (all concepts if ``None``)."""
    if split not in SPLITS or split.startswith("imagined_"):
        raise ProbeError(f"split names the held-out episodes and the rows' split: 'test' or 'ood', got {split!r}")
    eps = as_episodes(episodes, split)
    check_site(model, site, imagined=False)
    anchors = anchor_steps([len(e) for e in eps], 1, 0)
    if keys is None:
        names = list(eps[0].concepts) if key_concepts is None else list(key_concepts)
        keys = state_keys({c: concept_at(eps, c, anchors) for c in names})
    keys = as_numpy(keys)
    if keys.shape != (len(anchors),):
        raise ProbeError(f"keys must have shape ({len(anchors)},) (one per step of the episodes), got {keys.shape}")
    was_training = model.training
    model.train(False)  # eval mode
    try:
        x = flat(posterior_states(model, eps, anchors, device=device)[site])
    finally:
        model.train(was_training)
    rows = []
    for name, probe in probes.items():
        pred = probe.predict(x).detach().cpu().numpy()
        est = state_agreement(pred, keys, anchors[:, 0], kind=probe.concept.kind, n_boot=n_boot, level=level, seed=seed)
        rows.append(ResultRow.from_estimate(method, site, name, split, "state_consistency", est))
    return rows
