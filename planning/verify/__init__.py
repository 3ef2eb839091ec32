"""Model checking of planners against boundary properties, with Storm (stormpy >= 2.0).

``CountModel`` (counted transitions) -> ``ExplicitModel`` (DTMC under a policy, or MDP) ->
validated (:mod:`~planning.verify.validate`) -> checked by Storm (:mod:`~planning.verify.storm`);
Clopper-Pearson interval models give robust upper bounds (:mod:`~planning.verify.intervals`);
:mod:`~planning.verify.abstraction` builds the counts from a LEARNED model's imagined rollouts over an
identified ontology; :mod:`~planning.verify.boundary` is the counterfactual boundary check;
:mod:`~planning.verify.reference` is an independent numpy implementation used to check the checker.
"""

from planning.verify.abstraction import (UNEXPLORED, Abstraction, AbstractionSpec, FixedPolicy, LatentPolicy,
                                         PlannerPolicy, UniformPolicy, build_abstraction)
from planning.verify.boundary import BoundaryReport, ConceptEffect, constant_actions, counterfactual_boundary
from planning.verify.intervals import (IntervalModel, clopper_pearson, empirical_rate, robust_check,
                                       robust_state_values)
from planning.verify.model import CountModel, ExplicitModel
from planning.verify.result import CheckResult, Empirical, PropertyReport
from planning.verify.storm import StormModel, build, check, scheduler, sound_environment, state_values
from planning.verify.validate import VerifyError, validate_model, validate_property

__all__ = [
    "Abstraction",
    "AbstractionSpec",
    "BoundaryReport",
    "CheckResult",
    "ConceptEffect",
    "CountModel",
    "Empirical",
    "ExplicitModel",
    "FixedPolicy",
    "IntervalModel",
    "LatentPolicy",
    "PlannerPolicy",
    "PropertyReport",
    "StormModel",
    "UNEXPLORED",
    "UniformPolicy",
    "VerifyError",
    "build",
    "build_abstraction",
    "check",
    "clopper_pearson",
    "constant_actions",
    "counterfactual_boundary",
    "empirical_rate",
    "robust_check",
    "robust_state_values",
    "scheduler",
    "sound_environment",
    "state_values",
    "validate_model",
    "validate_property",
]
