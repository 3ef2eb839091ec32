"""Does the model *use* a hidden concept where the world does? (:mod:`worlds.hidden`)

At every step ``t`` where a world's :class:`~worlds.hidden.HiddenConceptTest` applies, the model filters the
real episode up to ``t - 1`` (posterior mode), imagines one step with the true action ``actions[t]`` and decodes
it; the test reads the probability of the outcome (e.g. "the door opened") off the decoded observation. A model
that knows the concept predicts the outcome when the concept holds and not otherwise:

* ``rate_when_true`` / ``rate_when_false``: fraction of those steps where the model gives the outcome
  probability > 0.5, with and without the concept (ideal: 1 and 0);
* ``auroc``: how well the outcome probability separates the two (0.5: the model does not use the concept);
* ``truth_agreement``: how often the true outcome equals the concept (1 by the world's rules: a check).

Estimates carry 95% percentile intervals from a bootstrap over episodes (resamples that lose a class are
skipped and counted). Evaluation only: labels are read here, never in training.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from dynamics.base import DynamicsModel
from worlds.estimate import Estimate
from worlds.hidden import HiddenConceptTest
from worlds.trajectory import Episode


def hidden_concept_events(model: DynamicsModel, episodes: Sequence[Episode], test: HiddenConceptTest,
                          device: str | torch.device = "cpu") -> dict[str, np.ndarray]:
    """Per event: ``p`` (the model's outcome probability), ``concept`` (at ``t - 1``), ``happened`` (the true
    outcome) and ``episode`` (index into ``episodes``); arrays ``[m]``."""
    p, concept, happened, episode = [], [], [], []
    for i, e in enumerate(episodes):
        steps = np.asarray(test.steps(e), dtype=np.int64)
        steps = steps[(steps >= 1) & (steps < len(e))]
        if not len(steps):
            continue
        obs = torch.as_tensor(np.array(e.obs), device=device)[None]  # a copy: dataset episodes are read-only maps
        actions = torch.as_tensor(np.array(e.actions), device=device)[None]
        first = torch.as_tensor(np.array(e.is_first), device=device)[None]
        idx = torch.as_tensor(steps, device=device)
        with torch.inference_mode():
            post = model.observe(obs, actions, first)
            before = post.map(lambda x: x[0, idx - 1])  # [m ...]: the posterior before each decisive action
            imagined = model.imagine(before, actions[0, idx][:, None])  # [m 1 ...]
            probs = model.decode(imagined)[:, 0].float().softmax(1)  # [m c h w]: channel probabilities per cell
        p.append(np.asarray(test.outcome(probs.cpu().numpy()), dtype=np.float64))
        concept.append(np.asarray(e.concepts[test.concept])[steps - 1].astype(bool))
        happened.append(np.asarray(test.happened(np.asarray(e.obs)[steps])).astype(bool))
        episode.append(np.full(len(steps), i))
    cat = (lambda xs, dt: np.concatenate(xs) if xs else np.zeros(0, dt))
    return {"p": cat(p, np.float64), "concept": cat(concept, bool), "happened": cat(happened, bool),
            "episode": cat(episode, np.int64)}


def _stats(p: np.ndarray, c: np.ndarray, h: np.ndarray) -> np.ndarray:
    """``[rate_when_true, rate_when_false, auroc, truth_agreement]`` (NaN where undefined)."""
    nan = float("nan")
    pos, neg = c, ~c
    return np.array([
        float((p[pos] > 0.5).mean()) if pos.any() else nan,
        float((p[neg] > 0.5).mean()) if neg.any() else nan,
        float(roc_auc_score(c, p)) if pos.any() and neg.any() else nan,
        float((h == c).mean()) if len(c) else nan,
    ])


STATS = ("rate_when_true", "rate_when_false", "auroc", "truth_agreement")


def evaluate_hidden_concept(model: DynamicsModel, episodes: Sequence[Episode], test: HiddenConceptTest, *,
                            n_boot: int = 1000, seed: int = 0, device: str | torch.device = "cpu") -> dict[str, Any]:
    """The test's statistics (module docstring) as :class:`~worlds.estimate.Estimate` JSON, with the event
    counts; ``{"skipped": reason}`` when no episode has an event of both kinds to compare."""
    ev = hidden_concept_events(model, episodes, test, device)
    c = ev["concept"]
    out: dict[str, Any] = {"test": test.name, "concept": test.concept, "description": test.description,
                           "events": int(len(c)), "events_true": int(c.sum()), "events_false": int((~c).sum())}
    if not len(c):
        return {**out, "skipped": f"no step where {test.description}"}
    point = _stats(ev["p"], c, ev["happened"])
    groups = np.unique(ev["episode"])
    rows = [np.flatnonzero(ev["episode"] == g) for g in groups]
    rng = np.random.default_rng(seed)
    boot = np.full((n_boot, len(STATS)), np.nan)
    for b in range(n_boot if len(groups) > 1 else 0):  # one episode: no between-episode interval
        take = np.concatenate([rows[j] for j in rng.integers(0, len(groups), len(groups))])
        boot[b] = _stats(ev["p"][take], c[take], ev["happened"][take])
    for k, name in enumerate(STATS):
        ok = np.isfinite(boot[:, k])
        lo, hi = np.percentile(boot[ok, k], [2.5, 97.5]) if ok.sum() >= max(1, n_boot // 2) else (np.nan, np.nan)
        out[name] = Estimate(float(point[k]), float(lo), float(hi), n_boot=n_boot, n_groups=len(groups),
                             n_skipped=int((~ok).sum())).as_json()
    return out
