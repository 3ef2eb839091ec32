"""A counterfactual boundary check in the world model: does the plan move protected concepts?

"Never enter lava" is a trace property that Storm checks on the abstraction. Critch's *boundaries*
are about influence across a boundary -- an information-flow property that PCTL cannot state. As
a first, measurable step this module compares two imagined futures from the SAME latent state:
the planned action sequence and an alternative (by default a no-op sequence), and reads the
"protected" concepts along both through the probes::

    change[i, c] = max_t |c(plan_i, t) - c(alt_i, t)|        t = 1 .. h    (scalar concepts)
    change[i, c] = [exists t: c(plan_i, t) != c(alt_i, t)]                    (binary / categorical)

per start state ``i``. A stochastic model is rolled out with common random numbers (both futures see
the same noise draws: the same seed and the same batch shape), so the difference comes from the
actions alone. Reported per concept: the mean change over starts (bootstrap interval), the largest
change seen, and the fraction of starts whose change exceeds the concept's tolerance, with an exact
(Clopper-Pearson) interval.

What it DOES guarantee: with the stated confidence, the fraction of start states -- drawn as the
given starts were drawn (e.g. from real data) -- on which the plan changes a protected concept, *as
the probes read it in the learned model's imagination*, by more than the tolerance relative to the
alternative, lies below ``exceed_rate.upper``.

What it does NOT guarantee: anything about the real world (the model may be wrong, the probes may
misread imagined latents -- compare with the real-world transfer measured by the verify stage);
anything about concepts that are not probed, or about influence that flows through latent
directions no probe reads; that the no-op is the right counterfactual (it is one baseline; a plan
that changes a protected concept *less* than doing nothing passes); influence beyond the horizon;
or, for a stochastic model, more than one noise draw per start state.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from dynamics.base import DynamicsModel, LatentState
from planning.evaluation import mean_estimate, rate
from planning.verify.validate import VerifyError
from worlds.estimate import Estimate


@dataclass(frozen=True)
class ConceptEffect:
    """How much the plan changes one protected concept relative to the alternative (see the module docstring)."""

    concept: str
    kind: str
    tolerance: float
    """Changes up to this are allowed (0 for binary / categorical concepts: any flip counts)."""
    mean_change: Estimate
    """Mean over starts of the per-start change (a flip rate for binary / categorical concepts)."""
    max_change: float
    """The largest per-start change over the starts tried."""
    exceed_rate: Estimate
    """Fraction of starts whose change exceeds ``tolerance`` (Clopper-Pearson interval)."""


@dataclass(frozen=True)
class BoundaryReport:
    """The counterfactual check of one policy's plans against one alternative."""

    horizon: int
    starts: int
    alternative: str
    """What the plans were compared with, e.g. ``"noop (action 0)"``."""
    sample: bool
    """Whether the model's stochastic parts were sampled (with common random numbers)."""
    confidence: float
    effects: tuple[ConceptEffect, ...]

    @property
    def holds(self) -> bool:
        """No start state changed any protected concept beyond its tolerance."""
        return all(e.exceed_rate.estimate == 0 for e in self.effects)

    def to_dict(self) -> dict:
        return {"horizon": self.horizon, "starts": self.starts, "alternative": self.alternative,
                "sample": self.sample, "confidence": self.confidence, "holds": self.holds,
                "effects": [asdict(e) for e in self.effects]}


def constant_actions(model: DynamicsModel, n: int, horizon: int, action: float | int = 0,
                     device: torch.device | str = "cpu") -> Tensor:
    """``[n h *act]`` the same action at every step: index ``action`` (discrete) or ``action`` in every
    component (continuous; 0 is the usual no-op)."""
    spec = model.action_spec
    if spec.discrete:
        if not 0 <= int(action) < spec.n:
            raise VerifyError(f"the alternative action must be an index in [0, {spec.n}), got {action}")
        return torch.full((n, horizon), int(action), dtype=torch.long, device=device)
    return torch.full((n, horizon, spec.dim), float(action), device=device)


def _imagine(model: DynamicsModel, starts: LatentState, actions: Tensor, sample: bool, seed: int) -> LatentState:
    device = actions.device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        return model.imagine(starts, actions, sample=sample)


def counterfactual_boundary(model: DynamicsModel, ontology, starts: LatentState, plans: Tensor, alternative: Tensor,
                            protected: Sequence[str], *, tolerance: float | Mapping[str, float] = 0.0,
                            alternative_name: str = "noop", sample: bool = False, seed: int = 0,
                            n_boot: int = 1000, confidence: float = 0.95) -> BoundaryReport:
    """Compare imagined futures of ``plans[n h *act]`` and ``alternative[n h *act]`` from ``starts[n ...]``
    on the ``protected`` concepts of ``ontology`` (see the module docstring). ``tolerance``: one number for
    every scalar concept, or ``{concept: tolerance}`` (binary / categorical concepts always use 0)."""
    if not protected:
        raise VerifyError("give at least one protected concept (e.g. protected=('door_open',))")
    missing = [c for c in protected if c not in ontology]
    if missing:
        raise VerifyError(f"protected concept(s) {missing} are not probed; the ontology has {list(ontology.concepts)}")
    if plans.shape != alternative.shape:
        raise VerifyError(f"plans and alternative must have one shape [n h *act], got {tuple(plans.shape)} and "
                          f"{tuple(alternative.shape)}")
    n = int(plans.shape[0])
    sizes = {int(v.shape[0]) for v in starts.sites.values()}
    if n < 1 or plans.ndim < 2 or plans.shape[1] < 1 or sizes != {n}:
        raise VerifyError(f"need n >= 1 start states and plans [n h *act] with h >= 1 for the same n, got plans "
                          f"{tuple(plans.shape)} and start batch sizes {sorted(sizes)}")
    with torch.inference_mode():
        fut_plan = _imagine(model, starts, plans, sample, seed)
        fut_alt = _imagine(model, starts, alternative, sample, seed)
        effects = []
        for c in protected:
            kind = ontology[c].concept.kind
            a = ontology.resolve(fut_plan, c, "value").detach().double().cpu().numpy()     # [n h]
            b = ontology.resolve(fut_alt, c, "value").detach().double().cpu().numpy()
            if kind == "scalar":
                tol = float(tolerance.get(c, 0.0) if isinstance(tolerance, Mapping) else tolerance)
                change = np.abs(a - b).max(axis=1)
            else:
                tol, change = 0.0, (a != b).any(axis=1).astype(np.float64)
            if tol < 0 or not np.isfinite(tol):
                raise VerifyError(f"tolerance of {c!r} must be a finite number >= 0, got {tol}")
            exceed = int((change > tol).sum())
            effects.append(ConceptEffect(c, kind, tol, mean_estimate(change, n_boot=n_boot, seed=seed, level=confidence),
                                         float(change.max()), rate(exceed, n, confidence)))
    return BoundaryReport(int(plans.shape[1]), n, alternative_name, bool(sample), float(confidence), tuple(effects))
