"""Shared builders of a tiny run folder as the earlier stages leave it (no training): a GRU checkpoint and a
synthetic linear ontology, on a 7x7 lavakeydoor."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from dynamics import build_model
from dynamics.training.checkpoint import META_KEY, AtomicCheckpointIO, model_meta
from probes import LinearProbe, Normalizer, Ontology, OntologyEntry
from worlds import make_world

TINY_WORLD = {"size": 7}


def write_gru_checkpoint(root: Path, hidden: int) -> Path:
    """``root/dynamics/checkpoints/last.ckpt``: an untrained GRU (seed 0) on the tiny world; returns ``root/dynamics``."""
    world = make_world("lavakeydoor", 1, **TINY_WORLD)
    torch.manual_seed(0)
    model = build_model("gru", {"shape": list(world.single_observation_space.shape), "kind": "symbolic"},
                        {"discrete": True, "n": 5}, deter=hidden, hidden=hidden, embed=hidden)
    ckpt = {"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, META_KEY: model_meta(model),
            "global_step": 0}
    AtomicCheckpointIO().save_checkpoint(ckpt, root / "dynamics" / "checkpoints" / "last.ckpt")
    return root / "dynamics"


def write_linear_ontology(root: Path, concepts: tuple[str, ...], hidden: int, *, scale: float = 1.0,
                          biases: dict[str, float] | None = None) -> Path:
    """``root/probes/ontology``: seeded random linear probes at site ``deter`` for ``concepts``; returns ``root/probes``."""
    world = make_world("lavakeydoor", 1, **TINY_WORLD)
    biases = biases or {"binary": -1.0, "scalar": 5.0}
    g = torch.Generator().manual_seed(0)
    entries = {}
    for n in concepts:
        c = world.schema[n]
        probe = LinearProbe(c, Normalizer(torch.zeros(hidden), torch.ones(hidden)), {},
                            scale * torch.randn(1, hidden, generator=g), torch.full((1,), biases[c.kind]))
        entries[n] = OntologyEntry(c, "linear", "deter", (hidden,), probe,
                                   "r2" if c.kind == "scalar" else "balanced_accuracy", 0.9)
    Ontology(entries).save(root / "probes" / "ontology")
    return root / "probes"


@pytest.fixture(scope="session")
def tiny_run_files() -> SimpleNamespace:
    """The builders above, for fixtures of any scope: ``tiny_run_files.checkpoint(root, hidden)``, ``.ontology(...)``."""
    return SimpleNamespace(checkpoint=write_gru_checkpoint, ontology=write_linear_ontology)
