"""Reward evaluation on held-out real trajectories: is the latent reward the true one, term by term?

A :class:`~rewards.spec.RewardSpec` compiled against a fitted ontology gives the *latent* reward (what a
planner optimises); compiled against the true concept values it gives the *true* reward. On the steps of
held-out episodes (posterior latents of real observations, e.g. the ``test`` split of a
:class:`probes.LatentStore`) :func:`evaluate_reward` reports:

* Pearson and Spearman correlation between latent and true reward per step;
* MAE, RMSE and bias (mean of latent - true) of the total reward and of each top-level additive term, beside
  the MAE of a constant at the true term's median (the best constant under MAE: the reference a reading must beat)
  (``at_goal - 10 * in_lava - 0.01`` -> ``at_goal``, ``- 10 * in_lava``; terms that read no concept are
  constants, exactly equal on both sides, and left out);
* per constraint, the per-step confusion of "the latent cost says violation" vs "the true cost says
  violation": TP/FP/FN/TN, precision, recall, false alarm rate. A step violates when its cost exceeds
  0 -- or 0.5 for a constraint whose cost is an expected violation (``never p(in_lava)``, see
  :meth:`RewardSpec.probability_costs`), i.e. when the probe finds it more likely than not.

Every rate, correlation and error carries a 95% cluster-bootstrap interval over episodes
(:func:`probes.stats.bootstrap`; every metric sees the same resamples for one seed), except a rate at 0 or 1,
where the bootstrap collapses to a point: that one gets an exact interval (:func:`exact_if_unanimous`).
Counts are plain totals. ::

    store = LatentStore.open(run / "probes" / "latents")
    ev = evaluate_on_store(spec, ontology, store, split="test", n_boot=1000, seed=0)
    ev.pearson, ev.total.mae, ev.terms[1].rmse, ev.constraints[0].recall
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Mapping

import numpy as np
import torch
from scipy.stats import rankdata
from torch import Tensor

from dynamics.base import LatentState
from probes.metrics import MAE
from probes.stats import Estimate, SumDecomposable, as_numpy, bootstrap, clopper_pearson
from rewards.ast import Binary, ConceptUse, Node, render, uses
from rewards.compile import ConceptSource, compile_reward, truth_resolver
from rewards.errors import RewardError
from rewards.parser import parse_expression
from rewards.spec import RewardSpec
from worlds.concepts import ConceptSchema

PROBABILITY_THRESHOLD = 0.5
"""A step violates an expected-violation constraint (``never p(x)``) when its cost exceeds this."""


@dataclass(frozen=True)
class RewardTerm:
    """A top-level additive term of a reward expression: the reward is ``sum(sign * value(node))``."""

    label: str
    """Its source text with its sign, e.g. ``"- 10 * in_lava"`` (canonical text if the source cannot be split)."""
    sign: int
    node: Node


def reward_terms(text: str) -> tuple[RewardTerm, ...]:
    """The top-level ``+``/``-`` terms of ``text`` in order (one term if there is no top-level sum)."""
    tree = parse_expression(text)
    chain: list[tuple[int, Node, int]] = []  # (sign, term, column of the operator before it)
    node = tree
    while isinstance(node, Binary) and node.op in ("+", "-"):
        chain.append((1 if node.op == "+" else -1, node.right, node.pos))
        node = node.left
    chain.append((1, node, -1))
    chain.reverse()
    ends = [pos for _, _, pos in chain[1:]] + [len(text)]
    terms = []
    for (sign, term, start), end in zip(chain, ends):
        source = text[start + 1:end].strip()
        try:  # a slice of the source is the nicest label, if it is exactly this term ("(a + b)" is not)
            same = parse_expression(source) == term
        except RewardError:
            same = False
        body = source if same else render(term)
        label = body if start < 0 else f"{'+' if sign > 0 else '-'} {body}"
        terms.append(RewardTerm(label, sign, term))
    return tuple(terms)


# -- metrics, all batched over bootstrap resamples (probes.stats.SumDecomposable) -------------------------------
class Pearson(SumDecomposable):
    """Pearson correlation of ``x`` and ``y``; NaN where either is constant."""

    def __call__(self, x, y) -> float:
        return float(self.finish(self.row_stats(x, y).sum(0), None))

    def row_stats(self, x, y) -> np.ndarray:
        x, y = as_numpy(x).astype(np.float64), as_numpy(y).astype(np.float64)
        xc, yc = x - x.mean(), y - y.mean()  # centring keeps the sums of squares well conditioned
        return np.stack([np.ones_like(xc), xc, yc, xc**2, yc**2, xc * yc], axis=1)

    def finish(self, totals: np.ndarray, full: Any) -> np.ndarray:
        n, sx, sy, sxx, syy, sxy = np.moveaxis(totals, -1, 0)
        vx, vy = sxx - sx**2 / n, syy - sy**2 / n
        ok = (vx > 1e-12 * np.maximum(sxx, 1e-300)) & (vy > 1e-12 * np.maximum(syy, 1e-300))
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(ok, (sxy - sx * sy / n) / np.sqrt(vx * vy), np.nan)


class Spearman:
    """Spearman rank correlation: Pearson of average ranks, ranked anew on every resample (plain callable)."""

    def __call__(self, x, y) -> float:
        return Pearson()(rankdata(as_numpy(x)), rankdata(as_numpy(y)))


class RMSE(SumDecomposable):
    """Root mean squared error."""

    def __call__(self, y_true, y_pred) -> float:
        return float(self.finish(self.row_stats(y_true, y_pred).sum(0), None))

    def row_stats(self, y_true, y_pred) -> np.ndarray:
        e = as_numpy(y_pred).astype(np.float64) - as_numpy(y_true).astype(np.float64)
        return np.stack([np.ones_like(e), e**2], axis=1)

    def finish(self, totals: np.ndarray, full: Any) -> np.ndarray:
        return np.sqrt(totals[..., 1] / totals[..., 0])


class Bias(RMSE):
    """Mean signed error ``mean(y_pred - y_true)``."""

    def row_stats(self, y_true, y_pred) -> np.ndarray:
        e = as_numpy(y_pred).astype(np.float64) - as_numpy(y_true).astype(np.float64)
        return np.stack([np.ones_like(e), e], axis=1)

    def finish(self, totals: np.ndarray, full: Any) -> np.ndarray:
        return totals[..., 1] / totals[..., 0]


class ConfusionRate(SumDecomposable):
    """``numerator / denominator`` of confusion counts (``tp fp fn tn``) of bools ``truth``, ``alarm``; NaN on 0/0."""

    INDEX = {"tp": 0, "fp": 1, "fn": 2, "tn": 3}

    def __init__(self, numerator: str, denominator: tuple[str, ...]):
        self.num, self.den = self.INDEX[numerator], [self.INDEX[k] for k in denominator]

    def __call__(self, truth, alarm) -> float:
        return float(self.finish(self.row_stats(truth, alarm).sum(0), None))

    def row_stats(self, truth, alarm) -> np.ndarray:
        t, a = as_numpy(truth).astype(bool), as_numpy(alarm).astype(bool)
        return np.stack([t & a, ~t & a, t & ~a, ~t & ~a], axis=1).astype(np.float64)

    def finish(self, totals: np.ndarray, full: Any) -> np.ndarray:
        den = totals[..., self.den].sum(-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, totals[..., self.num] / den, np.nan)


def exact_if_unanimous(estimate: Estimate, hits: Any, groups: Any) -> Estimate:
    """``estimate`` of the rate of ``hits[m]`` (bools of the rate's denominator rows, e.g. the decisions, episode ids
    ``groups[m]``), its interval made exact where every row agrees (0/m or m/m).

    There the episode-cluster percentile bootstrap collapses to [0, 0] (or [1, 1]): every resample holds only
    zeros, whatever the rate. Such an interval claims certainty the data do not give. The rows of an episode are
    correlated and nothing in unanimous data says how strongly, so the interval takes the worst case, rows of an
    episode all alike (intra-episode correlation 1): Clopper-Pearson with Kish's effective number of episodes,
    ``n_eff = (sum_e m_e)^2 / sum_e m_e^2`` (the number of episodes when they are equally long) as the trials --
    the effective-sample-size Clopper-Pearson interval of Korn & Graubard (1998) at the largest design effect.
    Zero hits in ``E`` equal episodes then bound the rate by ``1 - (alpha / 2)^(1 / E)`` (about 3.7 / E at 95%),
    which holds however the hits cluster: an episode whose steps each hit with mean probability ``q`` has no hit
    with probability at most ``1 - q``. Rates strictly between 0 and 1 keep the bootstrap interval."""
    h = as_numpy(hits).astype(bool)
    if h.size == 0 or 0 < h.sum() < h.size:
        return estimate
    _, m = np.unique(as_numpy(groups), return_counts=True)
    n_eff = float(m.sum()) ** 2 / float((m.astype(np.float64) ** 2).sum())
    k = n_eff if h.all() else 0.0
    lo, hi = clopper_pearson(k, n_eff, estimate.level)
    return replace(estimate, lower=float(lo), upper=float(hi))


PRECISION = ConfusionRate("tp", ("tp", "fp"))
RECALL = ConfusionRate("tp", ("tp", "fn"))
FALSE_ALARM = ConfusionRate("fp", ("fp", "tn"))


# -- results ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TermError:
    """Error of the latent value of a reward term (or of the total) against its true value, per step."""

    label: str
    mae: Estimate
    rmse: Estimate
    bias: Estimate
    """Mean of latent - true: > 0 when the probes overstate the term."""
    constant_mae: Estimate
    """MAE of a constant at the true term's median over these steps: the reference a reading must beat to say
    anything about where the term is high or low (an MAE above it reads the term worse than not reading it).
    The median, not the mean: the median is the constant with the least MAE, so no constant -- e.g. a probe that
    never fires on a rare term -- beats it; a constant at the mean of a term that is nonzero on a fraction q of
    the steps has MAE 2q(1 - q) |term|, and "never" (MAE q |term|) would beat it for every q < 1/2."""

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "mae": self.mae.as_json(), "rmse": self.rmse.as_json(), "bias": self.bias.as_json(),
                "constant_mae": self.constant_mae.as_json()}


@dataclass(frozen=True)
class ConstraintConfusion:
    """Per-step confusion of one constraint: latent violation (``cost > threshold``) vs true violation."""

    constraint: str
    threshold: float
    tp: int
    fp: int
    fn: int
    tn: int
    precision: Estimate
    """Of the steps the latent cost flags, the fraction that truly violate (NaN if none flagged)."""
    recall: Estimate
    """Of the truly violating steps, the fraction the latent cost flags (NaN if none violate)."""
    false_alarm_rate: Estimate
    """Of the truly safe steps, the fraction the latent cost flags."""

    def to_dict(self) -> dict[str, Any]:
        return {"constraint": self.constraint, "threshold": self.threshold, "tp": self.tp, "fp": self.fp,
                "fn": self.fn, "tn": self.tn, "precision": self.precision.as_json(), "recall": self.recall.as_json(),
                "false_alarm_rate": self.false_alarm_rate.as_json()}


@dataclass(frozen=True)
class RewardEvaluation:
    """Latent vs true reward on held-out steps (see the module docstring)."""

    reward: str
    steps: int
    episodes: int
    pearson: Estimate
    spearman: Estimate
    total: TermError
    terms: tuple[TermError, ...]
    constraints: tuple[ConstraintConfusion, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"reward": self.reward, "steps": self.steps, "episodes": self.episodes,
                "pearson": self.pearson.as_json(), "spearman": self.spearman.as_json(), "total": self.total.to_dict(),
                "terms": [t.to_dict() for t in self.terms], "constraints": [c.to_dict() for c in self.constraints]}

    def rows(self) -> list[dict[str, Any]]:
        """Long format, one number per row: ``{kind, item, metric, estimate, ci_low, ci_high}`` (counts: no CI)."""
        def row(kind: str, item: str, metric: str, e: Estimate | int) -> dict[str, Any]:
            if isinstance(e, Estimate):
                return {"kind": kind, "item": item, "metric": metric, "estimate": e.estimate, "ci_low": e.lower,
                        "ci_high": e.upper}
            return {"kind": kind, "item": item, "metric": metric, "estimate": e, "ci_low": None, "ci_high": None}

        out = [row("correlation", "total", "pearson", self.pearson), row("correlation", "total", "spearman", self.spearman)]
        for kind, t in [("total", self.total), *(("term", t) for t in self.terms)]:
            out += [row(kind, t.label, m, getattr(t, m)) for m in ("mae", "rmse", "bias", "constant_mae")]
        for c in self.constraints:
            out += [row("constraint", c.constraint, m, getattr(c, m))
                    for m in ("tp", "fp", "fn", "tn", "precision", "recall", "false_alarm_rate")]
        return out


# -- evaluation ------------------------------------------------------------------------------------------------
def _gather(source: ConceptSource, use: ConceptUse) -> Tensor:
    if not callable(source) and use not in source:
        raise RewardError(f"latent readings lack {tuple(use)}; it has {sorted(tuple(u) for u in source)}",
                          hint="pass a reading for every (concept, mode) the spec reads, or a resolver")
    return torch.as_tensor(source(use.name, use.mode) if callable(source) else source[use])


def evaluate_reward(spec: RewardSpec, schema: ConceptSchema, latent: ConceptSource,
                    true_values: Mapping[str, Any], episodes: Any, *, n_boot: int = 1000, level: float = 0.95,
                    seed: int = 0) -> RewardEvaluation:
    """Latent vs true reward of ``spec`` on ``n`` held-out steps.

    Args:
        latent: the latent concept readings of the steps: a resolver ``(name, mode) -> [n]`` (``[n k]`` for
            categorical probabilities; e.g. :func:`ontology_source`) or a ``{(name, mode): tensor}`` dict.
        true_values: ``{concept: [n]}`` true values (at least the concepts the spec reads).
        episodes: ``[n]`` episode id of each step (the bootstrap resamples whole episodes).
    """
    eps = as_numpy(episodes)
    if eps.ndim != 1 or eps.size == 0:
        raise RewardError(f"reward evaluation needs held-out steps: episode ids of shape (n,) with n >= 1, got "
                          f"shape {eps.shape}", hint="evaluate on a split that holds episodes (e.g. 'test')")
    n = eps.size
    spec.check(schema)
    needed = sorted(spec.concepts())
    for name in sorted({u.name for u in needed}):
        if name not in true_values:
            raise RewardError(f"true concept values lack {name!r} (the spec reads it); got {sorted(true_values)}")
        if np.shape(true_values[name]) != (n,):
            raise RewardError(f"true values of {name!r} must have shape ({n},) like the episode ids, got "
                              f"{np.shape(true_values[name])}", hint="pass the same steps for every array")
    with torch.inference_mode():
        lat = {u: _gather(latent, u) for u in needed}
        bad = {f"{u.name}/{u.mode}": tuple(t.shape) for u, t in lat.items() if t.ndim == 0 or t.shape[0] != n}
        if bad:
            raise RewardError(f"latent readings must have {n} rows like the episode ids, got shapes {bad}",
                              hint="read the concepts off the same steps' latents")
        truth = truth_resolver(schema, {k: np.array(true_values[k]) for k in {u.name for u in needed}})
        tru = {u: truth(u.name, u.mode) for u in needed}
        compiled = spec.compile(schema)
        out_lat = compiled(lat, dtype=torch.float64, batch_shape=(n,))
        out_tru = compiled(tru, dtype=torch.float64, batch_shape=(n,))
        term_values = []
        for term in reward_terms(spec.reward):
            if not uses(term.node):
                continue  # a constant: identical on both sides
            fn = compile_reward(term.node, (), schema)
            term_values.append((term.label, *(term.sign * fn(src, dtype=torch.float64, batch_shape=(n,)).reward
                                              for src in (lat, tru))))
    boot = {"groups": eps, "n_boot": n_boot, "level": level, "seed": seed}

    def error(label: str, latent_v: Tensor, true_v: Tensor) -> TermError:
        a, b = true_v.cpu().numpy(), latent_v.cpu().numpy()
        return TermError(label, bootstrap(MAE(), a, b, **boot), bootstrap(RMSE(), a, b, **boot),
                         bootstrap(Bias(), a, b, **boot), bootstrap(MAE(), a, np.full_like(a, np.median(a)), **boot))

    r_lat, r_tru = out_lat.reward.cpu().numpy(), out_tru.reward.cpu().numpy()
    probability = set(spec.probability_costs())
    confusions = []
    for text in spec.constraints:
        thr = PROBABILITY_THRESHOLD if text in probability else 0.0
        t, a = out_tru.costs[text].cpu().numpy() > thr, out_lat.costs[text].cpu().numpy() > thr
        tp, fp, fn, tn = (int(c) for c in PRECISION.row_stats(t, a).sum(0))
        rates = [exact_if_unanimous(bootstrap(metric, t, a, **boot), hits[rows], eps[rows])  # 0/m, m/m: exact
                 for metric, hits, rows in ((PRECISION, t, a), (RECALL, a, t), (FALSE_ALARM, a, ~t))]
        confusions.append(ConstraintConfusion(text, thr, tp, fp, fn, tn, *rates))
    return RewardEvaluation(reward=spec.reward, steps=n, episodes=int(np.unique(eps).size),
                            pearson=bootstrap(Pearson(), r_lat, r_tru, **boot),
                            spearman=bootstrap(Spearman(), r_lat, r_tru, **boot),
                            total=error("total", out_lat.reward, out_tru.reward),
                            terms=tuple(error(*tv) for tv in term_values), constraints=tuple(confusions))


def ontology_source(ontology: Any, sites: Mapping[str, Any], *, batch_rows: int = 65536,
                    device: torch.device | str | None = None) -> ConceptSource:
    """A resolver reading concepts of ``n`` steps through ``ontology`` (a :class:`probes.Ontology`).

    ``sites``: ``{site: [n d]}`` latents (numpy, memmap or torch; a site's feature shape may be flattened
    to ``d``, as a :class:`probes.LatentStore` stores it), read ``batch_rows`` rows at a time on ``device``
    (default: the probe's device) in the probe's dtype."""
    def resolve(name: str, mode: str) -> Tensor:
        e = ontology[name]
        if e.site not in sites:
            raise RewardError(f"concept {name!r} is read from site {e.site!r}, but the latents hold: "
                              f"{', '.join(sites) or '(none)'}", hint="extract that site too")
        x = sites[e.site]
        ref = e.probe.norm.mean
        out = []
        for lo in range(0, len(x), batch_rows):
            chunk = torch.as_tensor(np.array(x[lo:lo + batch_rows]), dtype=ref.dtype, device=device or ref.device)
            chunk = chunk.reshape(chunk.shape[0], *e.site_shape)  # stored rows [n d] -> [n *feature]
            out.append(ontology.resolve(LatentState({e.site: chunk}), name, mode))
        if not out:
            raise RewardError(f"site {e.site!r} holds no rows", hint="evaluate on a split that holds episodes")
        return torch.cat(out)

    return resolve


def evaluate_on_store(spec: RewardSpec, ontology: Any, store: Any, *, split: str = "test", n_boot: int = 1000,
                      level: float = 0.95, seed: int = 0, device: torch.device | str | None = None) -> RewardEvaluation:
    """:func:`evaluate_reward` on the posterior latents and true concepts of ``split`` of a :class:`probes.LatentStore`."""
    if split not in store.splits:
        raise RewardError(f"the latent store at {store.root} has no {split!r} split, only {', '.join(store.splits)}",
                          hint="extract latents of the held-out split")
    missing = sorted({u.name for u in spec.concepts()} - set(ontology.concepts))
    if missing:
        raise RewardError(f"the ontology has no probe for {missing}", hint="probe those concepts")
    sites = {s: store.site(split, s) for s in {ontology[u.name].site for u in spec.concepts()} if s in store.site_names}
    return evaluate_reward(spec, store.schema, ontology_source(ontology, sites, device=device), store.concepts(split),
                           np.asarray(store.episodes(split)), n_boot=n_boot, level=level, seed=seed)
