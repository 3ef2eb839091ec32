"""The ``verify`` section of the run config (model checking the learned model over the ontology with Storm), and
each world's default verify recipe."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from experiments.config import ConfigError, field

VERIFY_DEFAULTS: dict[str, dict[str, Any]] = {
    "lavakeydoor": {
        "properties": ('P=? [F<=15 "lava"]', 'P=? [F "goal"]', 'Pmax=? [F<=15 "lava"]'),
        "concepts": ("dist_to_lava", "steps_to_goal", "has_key"),
        "bins": {"dist_to_lava": [0.5, 1.5, 2.5, 3.5], "steps_to_goal": [0.5, 1.5, 2.5, 4.5, 8.5, 16.5]},
        "labels": {"in_lava": "lava", "at_goal": "goal"},
        "absorbing": ("lava", "goal"),
        "protected": ("door_open",),
    },
}
"""Per world: the verify recipe used for every ``verify`` field left empty (other worlds: give them)."""


@dataclass(frozen=True)
class VerifySection:
    enabled: bool = field(True, help="model-check the learned model + probes with Storm and measure the real-world transfer")
    properties: tuple[str, ...] = field((), help="PCTL properties over the labels, e.g. ['P=? [F<=15 \"lava\"]', "
                                        "'Pmax=? [F<=15 \"lava\"]'] (P=?: under each policy; Pmax/Pmin: the all-actions MDP); "
                                        "empty: the world's default (lavakeydoor: lava within 15, goal, max lava)")
    concepts: tuple[str, ...] = field((), help="probed concepts whose values make an abstract state (label concepts are added); "
                                      "empty: the world's default")
    bins: dict = field(default_factory=dict, help="bin edges of scalar concepts in concepts, e.g. "
                       "verify.bins={dist_to_lava: [0.5, 1.5, 2.5]} (the world's default bins fill in the others)")
    labels: dict = field(default_factory=dict, help="binary concept -> label name, e.g. {in_lava: lava, at_goal: goal}")
    absorbing: tuple[str, ...] = field((), help="labels whose states end an episode (absorbing in the abstraction)")
    policies: tuple[str, ...] = field(("uniform", "planner"), help="policies to check: uniform (random actions) and/or "
                                      "planner (the first configured plan.planners that fits, on plan.reward)")
    horizon: int = field(20, help="imagined steps per rollout of the abstraction")
    rollouts: int = field(2000, help="imagined rollouts under the uniform policy")
    planner_rollouts: int = field(16, help="imagined rollouts under the planner (one optimisation per step: expensive)")
    sample: bool = field(True, help="sample the model's stochastic latents in imagination")
    starts: int = field(256, help="start latents: the first posterior of up to this many dataset episodes")
    split: str = field("test", help="dataset split the start latents come from")
    confidence: float = field(0.95, help="joint confidence of the Clopper-Pearson interval model and of the empirical intervals")
    real_episodes: int = field(500, help="real-world episodes under the uniform policy (empirical frequency)")
    planner_episodes: int = field(10, help="real-world episodes under the planner")
    protected: tuple[str, ...] = field((), help="concepts the counterfactual boundary check protects; empty: the world's default")
    noop_action: float = field(0.0, help="the alternative of the boundary check: this action at every step (lavakeydoor: 0 = noop)")
    tolerance: float = field(0.5, help="allowed change of a scalar protected concept (binary ones: any flip counts)")
    boundary_starts: int = field(16, help="start latents of the boundary check")
    n_boot: int = field(1000, help="bootstrap resamples for the boundary check's mean change")

    def __post_init__(self) -> None:
        for k in ("horizon", "rollouts", "planner_rollouts", "starts", "real_episodes", "planner_episodes",
                  "boundary_starts", "n_boot"):
            if getattr(self, k) < 1:
                raise ConfigError(f"verify.{k} must be a positive integer, got {getattr(self, k)}")
        if not 0.0 < self.confidence < 1.0:
            raise ConfigError(f"verify.confidence must lie in (0, 1), got {self.confidence}")
        bad = [p for p in self.policies if p not in ("uniform", "planner")]
        if bad or not self.policies:
            raise ConfigError(f"verify.policies: unknown policy {bad or '(none)'}; known: uniform, planner")
        if self.tolerance < 0:
            raise ConfigError(f"verify.tolerance must be >= 0, got {self.tolerance}")
        if self.enabled:
            self.spec()  # label names, bins and property syntax (labels too, once given): before any work

    def for_world(self, world: str) -> "VerifySection":
        """This section with every empty recipe field filled from :data:`VERIFY_DEFAULTS` of ``world``."""
        defaults = VERIFY_DEFAULTS.get(world, {})
        fill = {k: v for k, v in defaults.items() if not getattr(self, k) and k not in ("bins", "absorbing")}
        concepts = {*fill.get("concepts", self.concepts), *fill.get("labels", self.labels)}
        labels = set(fill.get("labels", self.labels).values())
        fill["bins"] = {**{k: v for k, v in defaults.get("bins", {}).items() if k in concepts}, **self.bins}
        fill["absorbing"] = self.absorbing or tuple(a for a in defaults.get("absorbing", ()) if a in labels)
        return dataclasses.replace(self, **fill)

    def spec(self):
        """The :class:`~planning.verify.AbstractionSpec` (``None`` while concepts and labels are empty), every
        property checked (syntax by Storm's parser; labels once they are given); each problem a one-line ConfigError."""
        from planning.verify.abstraction import UNEXPLORED, AbstractionSpec
        from planning.verify.storm import parse
        from planning.verify.validate import VerifyError, property_labels

        try:
            spec = AbstractionSpec(tuple(self.concepts), self.bins, self.labels, self.absorbing) \
                if (self.concepts or self.labels) else None
            for text in self.properties:
                known = (*self.labels.values(), UNEXPLORED) if self.labels else property_labels(str(text))
                parse(text, known, nondeterministic=str(text).lstrip().startswith(("Pmax", "Pmin")))
        except VerifyError as e:
            raise ConfigError(f"verify: {e}") from None
        return spec

    def check_world(self, schema) -> None:
        """Concepts, labels and protected concepts against the world's schema (kinds included)."""
        from planning.verify.validate import VerifyError

        if not self.properties:
            return
        kinds = {c.name: c.kind for c in schema}
        spec = self.spec()
        if spec is None:
            raise ConfigError("verify.labels is empty: the properties need labels (e.g. verify.labels={in_lava: lava})")
        for key, names in (("concepts", spec.concepts), ("protected", self.protected)):
            bad = [c for c in names if c not in kinds]
            if bad:
                raise ConfigError(f"verify.{key}: unknown concept(s) {bad}; this world's concepts are: {', '.join(kinds)}")
        try:
            spec.check_kinds(kinds, "this world")
        except VerifyError as e:
            raise ConfigError(f"verify: {e}") from None
