"""rewards: rewards and safety constraints written over concept names, compiled into torch functions.

The language (grammar in :mod:`rewards.parser`) is parsed by our own parser, never evaluated as
Python. A :class:`RewardSpec` compiles against any resolver of concept values -- a fitted ontology
reading latent states (what planners optimise) or the true concept values (evaluation only).
"""

from rewards.ast import ConceptUse, render
from rewards.compile import CompiledReward, ConceptSource, Resolver, RewardOutput, truth_resolver
from rewards.errors import RewardError
from rewards.evaluation import (ConstraintConfusion, RewardEvaluation, RewardTerm, TermError, evaluate_on_store,
                                evaluate_reward, exact_if_unanimous, ontology_source, reward_terms)
from rewards.parser import parse_constraint, parse_expression
from rewards.spec import RewardSpec

__all__ = [
    "CompiledReward",
    "ConceptSource",
    "ConceptUse",
    "ConstraintConfusion",
    "Resolver",
    "RewardError",
    "RewardEvaluation",
    "RewardOutput",
    "RewardSpec",
    "RewardTerm",
    "TermError",
    "evaluate_on_store",
    "evaluate_reward",
    "exact_if_unanimous",
    "ontology_source",
    "parse_constraint",
    "parse_expression",
    "render",
    "reward_terms",
    "truth_resolver",
]
