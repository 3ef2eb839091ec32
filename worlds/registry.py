"""Named worlds: the public way to add a world.

A world registers its class and the frozen dataclass of its parameters::

    @dataclass(frozen=True)
    class MyParams:
        size: int = 8
        \"\"\"Side length of the arena.\"\"\"

    class MyWorld(VectorWorld):
        name = "myworld"
        ...
        def __init__(self, num_envs: int, params: MyParams = MyParams(), seed: int | None = None): ...

    register_world(MyWorld, MyParams)

after which ``make_world("myworld", num_envs=16, seed=0, size=10)`` builds it, the config system
validates ``world.size=10`` against ``MyParams``, and ``ontolab collect world=myworld`` works.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from worlds.base import VectorWorld


@dataclass(frozen=True)
class WorldEntry:
    """A registered world: its class and the dataclass of its parameters."""

    cls: type[VectorWorld]
    params_cls: type

    def make_params(self, **overrides: Any) -> Any:
        """Build the params dataclass, refusing unknown names (the allowed ones are listed)."""
        allowed = [f.name for f in dataclasses.fields(self.params_cls)]
        unknown = sorted(set(overrides) - set(allowed))
        if unknown:
            raise ValueError(f"unknown parameter(s) {unknown} for world {self.cls.name!r}; allowed: {', '.join(allowed)}")
        return self.params_cls(**overrides)


_REGISTRY: dict[str, WorldEntry] = {}


def register_world(cls: type[VectorWorld], params_cls: type) -> type[VectorWorld]:
    """Register ``cls`` under ``cls.name`` with its params dataclass. Re-registering a name replaces it."""
    if not dataclasses.is_dataclass(params_cls):
        raise TypeError(f"params_cls must be a dataclass, got {params_cls!r}")
    if not getattr(cls, "name", None):
        raise TypeError(f"{cls.__name__} must set a class attribute `name`")
    _REGISTRY[cls.name] = WorldEntry(cls, params_cls)
    return cls


def world_names() -> tuple[str, ...]:
    """Sorted names of every registered world."""
    _load_builtin()
    return tuple(sorted(_REGISTRY))


def get_world(name: str) -> WorldEntry:
    """The registry entry for ``name``; a ``ValueError`` lists the known names otherwise."""
    _load_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown world {name!r}; known worlds: {', '.join(sorted(_REGISTRY))}") from None


def make_world(name: str, num_envs: int = 1, seed: int | None = None, **params: Any) -> VectorWorld:
    """Build a registered world with ``num_envs`` parallel envs and the given parameters."""
    if not isinstance(num_envs, int) or num_envs < 1:
        raise ValueError(f"num_envs must be a positive integer, got {num_envs!r}")
    entry = get_world(name)
    return entry.cls(num_envs=num_envs, params=entry.make_params(**params), seed=seed)


def _load_builtin() -> None:
    """Import the built-in worlds so that they register (kept lazy to avoid import cycles)."""
    import worlds.lavakeydoor  # noqa: F401
    import worlds.pointmass  # noqa: F401
    import worlds.minigrid_adapter  # noqa: F401  (imports minigrid only when such a world is built)
