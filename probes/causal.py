"""Causal checks of a probe on the dynamics model: sufficiency (issue metric 8) and necessity (metric 9).

**Editing a site** (:func:`edit_state`). A latent state's sites are not independent: in the RSSM
``feat = concat(deter, stoch)``; in the GRU and SPR models ``feat`` *is* ``deter``. An edit of one site
is propagated so the state ``imagine`` and ``decode`` read stays consistent: editing ``feat`` of an
RSSM edits both parts, editing ``deter`` or ``stoch`` recomputes ``feat``; aliases move together.
Only sites ``imagine`` consumes can be edited (``embed`` is refused). Editing a *discrete* ``stoch``
(directly or through ``feat``) leaves the one-hot simplex: the next imagined step reads it through a
linear layer and maps the state back to one-hot categoricals, so the edit acts through that layer.

**Causal sufficiency** (Nanda et al. 2023: adding the probe direction steers the model). At anchor
posteriors ``t`` the site latent ``x`` is moved along the probe's readout direction (``edit="direction"``,
:meth:`Probe.direction`; for categorical concepts the difference of the target and current rows) or
along the probe's input gradient at ``x`` (``edit="gradient"``, any differentiable probe), by the
smallest step (bisection, at most ``max_norm``) after which the probe gives the flipped class
probability ``confidence``. The target is the class the probe does *not* read now (binary: the other
class; categorical: the runner-up). The null edit has the same norm in a uniformly random direction.
Success, general criterion ``"probe_k{k}"``: after imagining ``k`` steps with the true actions, the
probe reads the target on the edited rollout, and not on the unedited one (anchors where the unedited
rollout already reads the target show nothing and are dropped). World-specific criterion: a
:class:`Scenario` gives its own anchors, imagined actions and a check of the *decoded* futures, e.g.
:func:`key_door_scenario` (lavakeydoor: set ``has_key`` next to the locked door, move into it: the
decoded view must show the door open where the unedited rollout shows it shut).

**Causal necessity** (LEACE, Belrose et al. 2023). A LEACE eraser fitted on training latents and labels
removes the concept from the site at anchor posteriors; the rise of the model's open-loop prediction
loss (decode the states imagined over ``t+1 .. t+horizon`` with the true actions, against the true
observations; ``horizon=0``: reconstruction of step ``t``) is compared with erasing random subspaces of
the same rank (mean over ``null_draws``); the paired difference of the two rises is the comparison. Loss: per-cell cross-entropy (symbolic), squared error on
[0, 1] (image) or in observation units (vector), averaged over cells and steps. Models that cannot
decode (SPR) need a ``decode`` fitted on frozen latents, else the result is skipped with the reason.

Every rate and loss carries an episode-bootstrap interval; null comparisons are paired (same anchors,
same resamples).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from dynamics.base import DynamicsModel, LatentState
from probes.base import Probe, ProbeError
from probes.consistency import (anchor_steps, as_episodes, check_site, concept_at, flat, future_actions, imagine,
                                posterior_states)
from probes.erasure import Eraser, fit_leace, random_subspace_eraser
from probes.results import ResultRow
from probes.stats import Estimate, SumDecomposable, bootstrap, bootstrap_paired_difference
from worlds.concepts import Concept
from worlds.dataset.reader import TrajectoryDataset
from worlds.trajectory import Episode

Episodes = Sequence[Episode] | TrajectoryDataset


# --------------------------------------------------------------------------------------- editing a site
def edit_state(model: DynamicsModel, state: LatentState, site: str, delta: Tensor) -> LatentState:
    """``state`` with ``delta`` (the site's shape ``[b *feature]``) added to ``site``, dependents kept consistent."""
    check_site(model, site)
    if tuple(delta.shape) != tuple(state[site].shape):
        raise ProbeError(f"delta must have the site's shape {tuple(state[site].shape)}, got {tuple(delta.shape)}")
    s = {k: v for k, v in state.sites.items() if k in model.initial(1).sites}  # drop observation-only sites
    feat = s.get("feat")
    parts = [k for k in ("deter", "stoch") if k in s]
    concat = (feat is not None and len(parts) == 2 and feat.shape[-1] == sum(s[k].shape[-1] for k in parts)
              and torch.equal(feat, torch.cat([s[k] for k in parts], -1)))
    # ``feat`` may be another site under a second name (GRU, SPR: feat is deter); they move together.
    pair = [k for k in s if k != site and "feat" in (k, site)]
    aliases = {k for k in pair if s[k].shape == s[site].shape and torch.equal(s[k], s[site])}
    if concat and site == "feat":
        d, st = delta.split([s["deter"].shape[-1], s["stoch"].shape[-1]], -1)
        s["deter"], s["stoch"] = s["deter"] + d, s["stoch"] + st
    else:
        for k in {site} | aliases:
            s[k] = s[k] + delta
    if concat:
        s["feat"] = torch.cat([s["deter"], s["stoch"]], -1)
    return LatentState(s)


# ----------------------------------------------------------------------------------------- statistics
@dataclass(frozen=True)
class _Mean(SumDecomposable):
    """Mean of ``x[n]`` (batched over bootstrap resamples)."""

    def __call__(self, x: Any) -> float:
        return float(np.mean(x))

    def row_stats(self, x: Any) -> np.ndarray:
        return np.stack([np.ones(len(x)), np.asarray(x, np.float64)], 1)

    def finish(self, totals: np.ndarray, full: np.ndarray) -> np.ndarray:
        return totals[..., 1] / totals[..., 0]


@dataclass(frozen=True)
class _RatioOfMeans(SumDecomposable):
    """``mean(a) / mean(b)`` (batched over bootstrap resamples)."""

    def __call__(self, a: Any, b: Any) -> float:
        return float(np.mean(a) / np.mean(b))

    def row_stats(self, a: Any, b: Any) -> np.ndarray:
        return np.stack([np.asarray(a, np.float64), np.asarray(b, np.float64)], 1)

    def finish(self, totals: np.ndarray, full: np.ndarray) -> np.ndarray:
        return totals[..., 0] / totals[..., 1]


def _nan() -> Estimate:
    return Estimate(float("nan"), float("nan"), float("nan"))


# -------------------------------------------------------------------------------------- sufficiency
@dataclass(frozen=True)
class Scenario:
    """A world-specific sufficiency test: where to edit, what to imagine, what the decoded future must show."""

    name: str
    anchors: np.ndarray
    """``int64[m 2]`` (episode index, t) of the posteriors to edit."""
    actions: np.ndarray
    """``[m h]`` (discrete) or ``[m h a]`` actions imagined from each anchor."""
    target: np.ndarray
    """``int64[m]`` the class the edit sets."""
    check: Callable[[Tensor, Tensor], Tensor]
    """``(decoded_edit [m h *obs], decoded_base [m h *obs]) -> bool[m]``: did the edit change the future as the concept says?"""


def key_door_scenario(episodes: Episodes, *, concept: str = "has_key", split: str = "test") -> Scenario:
    """lavakeydoor: anchors where the agent lacks the key and a locked door is next to it; imagine one
    move into the door. Success: the edited rollout's decoded view has the door open under the agent
    (the centre cell), and the unedited one does not (without the key the move is blocked)."""
    from worlds.lavakeydoor.layout import DOOR_LOCKED, DOOR_OPEN  # world-specific, so imported only here
    from worlds.lavakeydoor.world import MOVES

    eps = as_episodes(episodes, split)
    rows, acts = [], []
    for e, ep in enumerate(eps):
        obs = np.asarray(ep.obs)
        if obs.ndim != 4 or obs.shape[1] <= DOOR_OPEN:
            raise ProbeError(f"key_door_scenario needs symbolic lavakeydoor views [t c h w], got {obs.shape}")
        c = obs.shape[2] // 2
        lacks = concept_at([ep], concept, np.c_[np.zeros(len(ep), np.int64), np.arange(len(ep))]) == 0
        for a in range(1, len(MOVES)):
            r, q = c + MOVES[a, 0], c + MOVES[a, 1]
            for t in np.flatnonzero(lacks & (obs[:, DOOR_LOCKED, r, q] == 1)):
                rows.append((e, int(t))), acts.append(a)

    def check(edit: Tensor, base: Tensor) -> Tensor:
        c = edit.shape[-1] // 2
        def open_(x: Tensor) -> Tensor:
            return x[:, 0, :, c, c].argmax(1) == DOOR_OPEN
        return open_(edit) & ~open_(base)

    return Scenario("key_door", np.asarray(rows, np.int64).reshape(-1, 2), np.asarray(acts, np.int64)[:, None],
                    np.ones(len(rows), np.int64), check)


SCENARIOS: dict[tuple[str, str], Callable[..., Scenario]] = {("lavakeydoor", "has_key"): key_door_scenario}
"""``(world name, concept) -> factory(episodes, split=...) -> Scenario``: the decoded-future sufficiency tests
that exist (the probe stage runs one for every ontology concept listed here)."""


@dataclass(frozen=True)
class SufficiencyResult:
    """Success rates of probe-direction edits and of same-norm random edits (see the module docstring)."""

    concept: str
    site: str
    criterion: str
    """``"probe_k{k}"`` or the scenario's name."""
    success: Estimate
    null: Estimate
    difference: Estimate
    """``success - null``, paired over anchors."""
    edit_norm: float
    """Mean L2 norm of the edits (equal for the null edits)."""
    reached: float
    """Fraction of edits that made the probe read the target at ``t`` (the rest stopped at ``max_norm``)."""
    num_anchors: int
    skipped: str = ""
    """Why no number was computed (then every estimate is NaN)."""

    def rows(self, method: str, split: str = "test") -> list[ResultRow]:
        if self.skipped:
            return []
        return [ResultRow.from_estimate(method, self.site, self.concept, split, m, e)
                for m, e in (("causal_sufficiency", self.success), ("causal_sufficiency_null", self.null))]


def _target_margin(probe: Probe, x: Tensor, target: Tensor) -> Tensor:
    """Log-probability of the target class ``[m]`` (differentiable in ``x``)."""
    return probe.predict_proba(x).clamp_min(1e-12).log().gather(1, target[:, None])[:, 0]


def probe_edit(probe: Probe, x: Tensor, target: Tensor, *, edit: Literal["direction", "gradient"] = "direction",
               confidence: float = 0.9, max_norm: float | None = None, iters: int = 30) -> tuple[Tensor, Tensor]:
    """Edits ``delta [m d]`` of latents ``x [m d]`` that make ``probe`` give class ``target [m]`` probability
    ``confidence``, and ``reached bool[m]``. The step along the unit direction is found by bisection on
    ``[0, max_norm]`` (default: twice the mean latent norm), assuming the probability grows along it."""
    if probe.concept.kind == "scalar":
        raise ProbeError(f"causal sufficiency needs a binary or categorical concept; {probe.concept.name!r} is scalar")
    if edit == "direction":
        w = probe.direction().to(x)
        if probe.concept.kind == "binary":
            u = torch.where(target[:, None] == 1, w, -w)
        else:
            u = w[target] - w[probe.predict(x)]
    elif edit == "gradient":
        with torch.enable_grad():
            xg = x.detach().clone().requires_grad_(True)
            u = torch.autograd.grad(_target_margin(probe, xg, target).sum(), xg)[0]
    else:
        raise ProbeError(f"edit must be 'direction' or 'gradient', got {edit!r}")
    u = u / u.norm(dim=1, keepdim=True).clamp_min(1e-12)
    hi_norm = float(max_norm) if max_norm is not None else 2.0 * float(x.norm(dim=1).mean())
    goal = float(np.log(confidence))
    with torch.no_grad():
        lo, hi = torch.zeros(len(x)).to(x), torch.full((len(x),), hi_norm).to(x)
        reached = _target_margin(probe, x + hi[:, None] * u, target) >= goal
        for _ in range(iters):
            mid = (lo + hi) / 2
            ok = _target_margin(probe, x + mid[:, None] * u, target) >= goal
            hi, lo = torch.where(ok, mid, hi), torch.where(ok, lo, mid)
    return hi[:, None] * u, reached


def causal_sufficiency(model: DynamicsModel, episodes: Episodes, probe: Probe, site: str, *, k: int = 5,
                       scenario: Scenario | None = None, edit: Literal["direction", "gradient"] = "direction",
                       confidence: float = 0.9, max_norm: float | None = None, context: int = 1, stride: int = 1,
                       split: str = "test", n_boot: int = 1000, level: float = 0.95, seed: int = 0,
                       device: torch.device | str | None = None) -> SufficiencyResult:
    """Edit ``site`` along ``probe`` (and randomly, same norm), imagine, and score the futures (module docstring)."""
    eps = as_episodes(episodes, split)
    check_site(model, site)
    name = probe.concept.name
    criterion = scenario.name if scenario is not None else f"probe_k{k}"

    def skip(reason: str) -> SufficiencyResult:
        return SufficiencyResult(name, site, criterion, _nan(), _nan(), _nan(), float("nan"), float("nan"), 0, reason)

    if scenario is None:
        anchors = anchor_steps([len(e) for e in eps], context, k, stride)
        actions = future_actions(eps, anchors, k)
    else:
        if not model.can_decode:
            return skip(f"{type(model).__name__} cannot decode, and scenario {scenario.name!r} checks decoded futures")
        if len(scenario.anchors) == 0:
            return skip(f"scenario {scenario.name!r} found no anchors in these episodes")
        anchors, actions = scenario.anchors, torch.as_tensor(scenario.actions)
    was_training = model.training
    model.train(False)  # eval mode
    try:
        base = posterior_states(model, eps, anchors, device=device).map(torch.Tensor.detach)
        x0 = base[site]
        x = flat(x0)
        target = (torch.as_tensor(scenario.target, device=x.device) if scenario is not None else
                  (1 - probe.predict(x)) if probe.concept.kind == "binary" else probe.predict_proba(x).topk(2, 1).indices[:, 1])
        delta, reached = probe_edit(probe, x, target.to(x.device), edit=edit, confidence=confidence, max_norm=max_norm)
        gen = torch.Generator().manual_seed(seed)
        r = torch.randn(delta.shape, generator=gen, dtype=torch.float64).to(delta)
        null = r / r.norm(dim=1, keepdim=True) * delta.norm(dim=1, keepdim=True)
        acts = actions.to(x.device)
        with torch.inference_mode():
            roll = {kind: imagine(model, edit_state(model, base, site, d.reshape(x0.shape)), acts)
                    for kind, d in (("base", torch.zeros_like(delta)), ("edit", delta), ("null", null))}
            if scenario is None:
                read = {kind: probe.predict(flat(s[site][:, -1])) for kind, s in roll.items()}
                keep = (read["base"] != target).cpu().numpy()
                ok = {kind: (read[kind] == target).cpu().numpy()[keep] for kind in ("edit", "null")}
            else:
                dec = {kind: model.decode(s) for kind, s in roll.items()}
                keep = np.ones(len(anchors), bool)
                ok = {kind: scenario.check(dec[kind], dec["base"]).cpu().numpy() for kind in ("edit", "null")}
    finally:
        model.train(was_training)
    if not keep.any():
        return skip(f"at every anchor the unedited rollout already reads the target after {k} steps")
    groups = anchors[keep, 0]
    s, n = (ok[kind].astype(np.float64) for kind in ("edit", "null"))
    kw = dict(groups=groups, n_boot=n_boot, level=level, seed=seed)
    return SufficiencyResult(
        name, site, criterion, bootstrap(_Mean(), s, **kw), bootstrap(_Mean(), n, **kw),
        bootstrap_paired_difference(_Mean(), [s], _Mean(), [n], **kw),
        float(delta.norm(dim=1)[torch.as_tensor(keep, device=delta.device)].mean()),
        float(reached.float().mean()), int(keep.sum()))


# ----------------------------------------------------------------------------------------- necessity
@dataclass(frozen=True)
class NecessityResult:
    """Rise of the model's prediction loss when the concept is erased, vs random subspaces of the same rank."""

    concept: str
    site: str
    rank: int
    loss_clean: Estimate
    rise: Estimate
    """Mean ``loss(LEACE-erased) - loss(clean)`` per anchor."""
    null_rise: Estimate
    """The same for random-subspace erasure (mean over the null draws)."""
    difference: Estimate
    """``rise - null_rise``, paired over anchors."""
    relative_rise: Estimate
    """``mean rise / mean clean loss``. (No ratio to the null rise: that is near zero, of either sign, when
    random erasure is harmless -- the interval of such a ratio is useless; compare with ``difference``.)"""
    num_anchors: int
    skipped: str = ""

    def rows(self, method: str, split: str = "test") -> list[ResultRow]:
        if self.skipped:
            return []
        return [ResultRow.from_estimate(method, self.site, self.concept, split, m, e)
                for m, e in (("causal_necessity", self.rise), ("causal_necessity_null", self.null_rise))]


def prediction_loss(pred: Tensor, obs: Tensor, kind: str) -> Tensor:
    """Per-anchor loss ``[m]`` of predictions ``pred [m h *obs]`` (logits if symbolic) against raw ``obs [m h *obs]``."""
    if kind == "symbolic":
        ce = F.cross_entropy(pred.flatten(0, 1).float(), obs.flatten(0, 1).argmax(1), reduction="none")
        return ce.reshape(pred.shape[0], -1).mean(1)
    target = obs.float() / 255.0 if kind == "image" else obs.float()
    return (pred.float() - target).square().reshape(pred.shape[0], -1).mean(1)


def causal_necessity(model: DynamicsModel, episodes: Episodes, concept: Concept, site: str, *,
                     train_latents: Any = None, train_labels: Any = None, eraser: Eraser | None = None,
                     horizon: int = 5, null_draws: int = 3, decode: Callable[[LatentState], Tensor] | None = None,
                     context: int = 1, stride: int = 1, split: str = "test", n_boot: int = 1000, level: float = 0.95,
                     seed: int = 0, batch_size: int = 256, device: torch.device | str | None = None) -> NecessityResult:
    """LEACE-erase ``concept`` from ``site`` (fitted on ``train_latents [n d]``, ``train_labels [n]``, or a
    given ``eraser``) at anchor posteriors and measure the prediction-loss rise vs random erasure."""
    eps = as_episodes(episodes, split)
    check_site(model, site)
    if eraser is None:
        if train_latents is None or train_labels is None:
            raise ProbeError("causal_necessity needs train_latents and train_labels (to fit LEACE) or an eraser")
        eraser = fit_leace(train_latents, train_labels, num_classes=concept.num_classes or None)
    concept_at(eps, concept.name, np.zeros((0, 2), np.int64))  # unknown concept -> ProbeError
    if decode is None and not model.can_decode:
        nan = _nan()
        return NecessityResult(concept.name, site, eraser.rank, nan, nan, nan, nan, nan, 0,
                               f"{type(model).__name__} cannot decode and its loss takes observations, not a latent; "
                               "pass decode= (a decoder fitted on frozen latents)")
    decode = decode or model.decode
    anchors = anchor_steps([len(e) for e in eps], context, horizon, stride)
    steps = range(1, horizon + 1) if horizon else range(0, 1)
    truth = torch.from_numpy(np.stack([np.asarray(eps[e].obs[[t + j for j in steps]]) for e, t in anchors]))
    actions = future_actions(eps, anchors, horizon)
    nulls = [random_subspace_eraser(eraser.dim, eraser.rank, seed + 1 + i, bias=eraser.bias) for i in range(null_draws)]
    losses: dict[str, list[Tensor]] = {"clean": [], "leace": [], "null": []}
    was_training = model.training
    model.train(False)  # eval mode
    try:
        post = posterior_states(model, eps, anchors, device=device)
        with torch.inference_mode():
            for lo in range(0, len(anchors), batch_size):
                st = post.at(slice(lo, lo + batch_size))
                x0 = st[site]
                x = flat(x0)
                obs, act = truth[lo:lo + batch_size].to(x.device), actions[lo:lo + batch_size].to(x.device)

                def loss_after(erase: Eraser | None) -> Tensor:
                    s = st if erase is None else edit_state(model, st, site, (erase.to(x.device)(x) - x).reshape(x0.shape))
                    pred = decode(imagine(model, s, act)) if horizon else decode(s).unsqueeze(1)
                    return prediction_loss(pred, obs, model.obs_spec.kind)

                losses["clean"].append(loss_after(None))
                losses["leace"].append(loss_after(eraser))
                losses["null"].append(torch.stack([loss_after(n) for n in nulls]).mean(0))
    finally:
        model.train(was_training)
    clean, leace, null = (torch.cat(losses[k]).double().cpu().numpy() for k in ("clean", "leace", "null"))
    rise, null_rise = leace - clean, null - clean
    kw = dict(groups=anchors[:, 0], n_boot=n_boot, level=level, seed=seed)
    return NecessityResult(
        concept.name, site, eraser.rank, bootstrap(_Mean(), clean, **kw), bootstrap(_Mean(), rise, **kw),
        bootstrap(_Mean(), null_rise, **kw), bootstrap_paired_difference(_Mean(), [rise], _Mean(), [null_rise], **kw),
        bootstrap(_RatioOfMeans(), rise, clean, **kw), len(anchors))
