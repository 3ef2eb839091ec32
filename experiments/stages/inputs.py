"""What a stage reads from another stage's folder, named once for every stage and command."""

from __future__ import annotations

from pathlib import Path

import torch


def checkpoint_of(dynamics: Path) -> Path:
    """The checkpoint a dynamics path names: the file itself, or ``checkpoints/last.ckpt`` in a train folder."""
    dynamics = Path(dynamics)
    return dynamics if dynamics.is_file() else dynamics / "checkpoints" / "last.ckpt"


DATA_STAGE_DATASET = "dataset"
"""Where a data stage's folder (``RUN/data`` of ``ontolab run``) holds its dataset."""


def dataset_of(data: Path) -> Path:
    """The dataset a data path names: ``dataset/`` in a data stage's folder (``RUN/data``), or the folder itself."""
    data = Path(data)
    inner = data / DATA_STAGE_DATASET
    return inner if not (data / "manifest.json").exists() and inner.is_dir() else data


def ontology_dir(probes: Path) -> Path:
    """The ontology folder a probes path names: ``ontology/`` in a probe stage's folder, or the folder itself."""
    probes = Path(probes)
    return probes / "ontology" if (probes / "ontology" / "ontology.json").is_file() else probes


def no_actions(model, device: torch.device | str | None = None) -> torch.Tensor:
    """A zero-length action sequence ``[1 0 ...]`` in the model's action format (to list ``imagine``'s sites)."""
    spec = model.action_spec
    shape = (1, 0) if spec.discrete else (1, 0, spec.dim)
    return torch.zeros(shape, dtype=torch.long if spec.discrete else torch.float32, device=device)
