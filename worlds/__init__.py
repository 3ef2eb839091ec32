"""worlds: environments whose true state carries human concepts, their labelers, and trajectory datasets.

Built-in worlds (``world_names()``): ``lavakeydoor`` (default), ``pointmass``, and with the
``minigrid`` extra ``minigrid_lavacrossing`` and ``minigrid_doorkey``. Add your own with
``register_world`` (see the README's "Adding a world").
"""

from worlds.base import StepResult, VectorWorld
from worlds.collect import CollectReport, collect
from worlds.concepts import Concept, ConceptSchema
from worlds.dataset import DatasetError, DatasetWriter, TrajectoryDataset
from worlds.errors import OntolabError
from worlds.hidden import HiddenConceptTest
from worlds.policies import EpsilonOraclePolicy, MixturePolicy, Policy, RandomPolicy, make_policy
from worlds.registry import WorldEntry, get_world, make_world, register_world, world_names
from worlds.trajectory import Episode

__all__ = [
    "CollectReport",
    "Concept",
    "ConceptSchema",
    "DatasetError",
    "DatasetWriter",
    "Episode",
    "EpsilonOraclePolicy",
    "HiddenConceptTest",
    "MixturePolicy",
    "OntolabError",
    "Policy",
    "RandomPolicy",
    "StepResult",
    "TrajectoryDataset",
    "VectorWorld",
    "WorldEntry",
    "collect",
    "get_world",
    "make_policy",
    "make_world",
    "register_world",
    "world_names",
]
