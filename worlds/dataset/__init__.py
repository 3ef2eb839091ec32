"""On-disk trajectory datasets: atomic streaming writer, checked memory-mapped reader, split rule."""

from worlds.dataset.manifest import FORMAT_VERSION, DatasetError, action_spec_of, obs_spec_of
from worlds.dataset.reader import TrajectoryDataset
from worlds.dataset.splits import ALL_SPLITS, OOD_SPLIT, SPLITS, split_of
from worlds.dataset.stats import ConceptStats, rare_concepts
from worlds.dataset.writer import DatasetWriter

__all__ = [
    "ALL_SPLITS",
    "ConceptStats",
    "DatasetError",
    "DatasetWriter",
    "FORMAT_VERSION",
    "OOD_SPLIT",
    "SPLITS",
    "TrajectoryDataset",
    "action_spec_of",
    "obs_spec_of",
    "rare_concepts",
    "split_of",
]
