"""The split rule: which trajectories are train, val, test or ood.

Splits are made by *whole trajectory*, never by step, so that no episode contributes steps to two
splits (neighbouring steps of one episode are near-duplicates; splitting by step would leak).

* Episodes from held-out layout families go to ``"ood"`` -- the caller says which (``ood=True``).
* Every other episode goes to ``"train"``, ``"val"`` or ``"test"`` by a hash of ``(seed, episode_id)``
  mapped to ``[0, 1)`` and compared with the cumulative split fractions. The assignment of one
  episode depends only on the seed and its id, so it is stable: the same seed always gives the
  same split to episode ``k``, however many episodes the dataset holds.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np

SPLITS: tuple[str, ...] = ("train", "val", "test")
"""In-distribution splits, in the order of ``split_fractions``."""
OOD_SPLIT = "ood"
"""Episodes from held-out (out-of-distribution) layout families."""
ALL_SPLITS: tuple[str, ...] = (*SPLITS, OOD_SPLIT)
SPLIT_RULE = "blake2b-64(f'{seed}:{episode_id}') / 2**64 vs cumulative fractions (train, val, test)"
"""Human-readable statement of the rule, recorded in every manifest."""


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    """Validate ``(train, val, test)`` fractions: three non-negative numbers summing to 1."""
    fr = tuple(float(f) for f in fractions)
    if len(fr) != 3 or any(not np.isfinite(f) or f < 0 for f in fr) or abs(sum(fr) - 1.0) > 1e-6:
        raise ValueError(f"split_fractions must be three non-negative numbers (train, val, test) summing to 1, got {tuple(fractions)}")
    if fr[0] == 0:
        raise ValueError(f"split_fractions must give train a positive share, got {fr}")
    return fr  # type: ignore[return-value]


def unit_hash(seed: int, episode_id: int) -> float:
    """A uniform number in ``[0, 1)`` determined by ``(seed, episode_id)`` alone."""
    digest = hashlib.blake2b(f"{int(seed)}:{int(episode_id)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0**64


def split_of(episode_id: int, *, seed: int, fractions: Sequence[float] = (0.8, 0.1, 0.1), ood: bool = False) -> str:
    """The split of one episode: ``"ood"`` if ``ood`` else train/val/test by the hash rule."""
    if ood:
        return OOD_SPLIT
    train, val, _ = check_fractions(fractions)
    u = unit_hash(seed, episode_id)
    if u < train:
        return "train"
    if u < train + val:
        return "val"
    return "test"
