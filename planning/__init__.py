"""planning: model-based planners that optimise any reward over a dynamics model's imagination.

Planners (:func:`make_planner`: ``shooting``, ``cem``, ``icem``, ``mppi``, ``discrete_cem``,
``exhaustive``) take a :class:`~dynamics.base.DynamicsModel` and any :data:`RewardFn`; a compiled
:class:`rewards.RewardSpec` becomes one with :func:`concept_reward`. :class:`Shield` vetoes risky
first actions. :func:`oracle_model` puts a world's true simulator behind the model interface.
:func:`overoptimisation_curve` measures imagined (proxy) vs real (true) return as planning pressure grows.
"""

from planning.cem import CEM
from planning.closed_loop import (Decisions, EpisodeLog, LatentFilter, ModelPlannerPolicy, OraclePolicy, PolicyStep,
                                  RandomPolicy, TrueReward, TrueStatePlannerPolicy, Visited, run_closed_loop,
                                  true_step_reward)
from planning.discrete import DiscreteCEM, Exhaustive
from planning.icem import ICEM, colored_noise
from planning.mppi import MPPI
from planning.oracle import LavaKeyDoorOracle, OracleModel, PointMassOracle, oracle_model
from planning.overoptimisation import (OveroptimisationCurve, PressurePoint, best_of_n_kl, overoptimisation_curve,
                                       save_curves)
from planning.planner import PLANNER_NAMES, Optimised, PlanInfo, Planner, make_planner
from planning.rollout import Scores, rank, score_sequences
from planning.shield import Shield
from planning.shooting import RandomShooting
from planning.types import ConceptReader, RewardFn, StepRewards, concept_reward

__all__ = [
    "CEM",
    "ConceptReader",
    "Decisions",
    "DiscreteCEM",
    "EpisodeLog",
    "Exhaustive",
    "ICEM",
    "LatentFilter",
    "LavaKeyDoorOracle",
    "MPPI",
    "ModelPlannerPolicy",
    "Optimised",
    "OracleModel",
    "OraclePolicy",
    "OveroptimisationCurve",
    "PLANNER_NAMES",
    "PlanInfo",
    "Planner",
    "PointMassOracle",
    "PolicyStep",
    "PressurePoint",
    "RandomPolicy",
    "RandomShooting",
    "RewardFn",
    "Scores",
    "Shield",
    "StepRewards",
    "TrueReward",
    "TrueStatePlannerPolicy",
    "Visited",
    "best_of_n_kl",
    "colored_noise",
    "concept_reward",
    "make_planner",
    "oracle_model",
    "overoptimisation_curve",
    "rank",
    "run_closed_loop",
    "save_curves",
    "score_sequences",
    "true_step_reward",
]
