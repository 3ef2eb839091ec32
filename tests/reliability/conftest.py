"""Fixtures of the reliability suite: the dynamics kit (``TinyModel``, random-walk sources) and the corridor worlds.

They are defined once, in ``tests/dynamics/conftest.py`` and ``tests/worlds/conftest.py``; this file
loads those two modules by path (``import conftest`` would be ambiguous) and re-exports their
fixtures, so the moved tests keep working without a second copy of the fixtures. The SIGKILL child
processes of ``test_resume.py`` import ``tests/dynamics/conftest.py`` through ``kit.tests_dir``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import torch

TESTS = Path(__file__).resolve().parents[1]
torch.set_num_threads(1)


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


_dynamics = _load("_ontolab_reliability_dynamics_kit", TESTS / "dynamics" / "conftest.py")
_worlds = _load("_ontolab_reliability_worlds_kit", TESTS / "worlds" / "conftest.py")

kit = _dynamics.kit
grid_source = _dynamics.grid_source
vector_source = _dynamics.vector_source
corridor = _worlds.corridor
point_corridor = _worlds.point_corridor
CorridorWorld = _worlds.CorridorWorld
