"""lavakeydoor: the default ontolab world -- a procedurally generated gridworld with walls, lava, a key,
a locked door and a goal, seen through an egocentric partial view (see :mod:`worlds.lavakeydoor.world`).

Importing this package registers the world as ``"lavakeydoor"`` and the gymnasium id
``"ontolab/LavaKeyDoor-v0"``.
"""

from worlds.gym_env import register_gym_id
from worlds.lavakeydoor.layout import CELL_NAMES, FAMILIES, OOD_FAMILIES, TRAIN_FAMILIES, Layouts
from worlds.lavakeydoor.world import LavaKeyDoor, LavaKeyDoorParams, LavaKeyDoorState, make_schema
from worlds.registry import register_world

register_world(LavaKeyDoor, LavaKeyDoorParams)
register_gym_id("lavakeydoor", "ontolab/LavaKeyDoor-v0")

__all__ = [
    "CELL_NAMES",
    "FAMILIES",
    "LavaKeyDoor",
    "LavaKeyDoorParams",
    "LavaKeyDoorState",
    "Layouts",
    "OOD_FAMILIES",
    "TRAIN_FAMILIES",
    "make_schema",
]
