"""worlds: environments whose true state carries human concepts, their labelers, and trajectory datasets."""

from worlds.base import StepResult, VectorWorld
from worlds.concepts import Concept, ConceptSchema
from worlds.registry import WorldEntry, get_world, make_world, register_world, world_names
from worlds.trajectory import Episode

__all__ = [
    "Concept",
    "ConceptSchema",
    "Episode",
    "StepResult",
    "VectorWorld",
    "WorldEntry",
    "get_world",
    "make_world",
    "register_world",
    "world_names",
]
