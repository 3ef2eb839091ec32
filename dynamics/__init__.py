"""dynamics: purely predictive models of observations given actions, and what a probe may read from them.

Models never see rewards, values or concept labels. Training (Lightning) lives in
``dynamics.training`` and is not imported here, so probes and planners never load Lightning.
"""

from dynamics.balance import ClassBalance
from dynamics.behaviour import evaluate_hidden_concept, hidden_concept_events
from dynamics.base import ActionSpec, DynamicsModel, LatentState, LossOutput, ObsSpec
from dynamics.cache import SiteCache, collect_sites
from dynamics.evaluate import OpenLoopReport, episode_windows, evaluate_open_loop, macro_recall, seen_cells
from dynamics.gru import GRUConfig, GRUModel
from dynamics.registry import build_model, model_config, model_names
from dynamics.rssm import RSSM, RSSMConfig
from dynamics.spr import SPRConfig, SPRModel, effective_rank

__all__ = [
    "ActionSpec",
    "ClassBalance",
    "DynamicsModel",
    "GRUConfig",
    "GRUModel",
    "LatentState",
    "LossOutput",
    "ObsSpec",
    "OpenLoopReport",
    "RSSM",
    "RSSMConfig",
    "SPRConfig",
    "SPRModel",
    "SiteCache",
    "build_model",
    "collect_sites",
    "effective_rank",
    "episode_windows",
    "evaluate_hidden_concept",
    "evaluate_open_loop",
    "hidden_concept_events",
    "macro_recall",
    "model_config",
    "model_names",
    "seen_cells",
]
