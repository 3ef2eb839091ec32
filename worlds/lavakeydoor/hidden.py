"""lavakeydoor's hidden-concept test (:mod:`worlds.hidden`): moving into the locked door opens it exactly when
the agent holds the key (``has_key`` is never drawn in the view)."""

from __future__ import annotations

import numpy as np

from worlds.hidden import HiddenConceptTest
from worlds.lavakeydoor.layout import DOOR_LOCKED, DOOR_OPEN
from worlds.trajectory import Episode

_MOVES = np.array([[0, 0], [-1, 0], [1, 0], [0, -1], [0, 1]], dtype=np.int64)  # as world.MOVES (noop, up, down, left, right)


def door_moves(episode: Episode) -> np.ndarray:
    """Steps ``t >= 1`` whose action moves the agent (the view's centre) into a locked door seen at ``t - 1``."""
    obs = np.asarray(episode.obs)
    if obs.ndim != 4 or len(obs) < 2:
        return np.zeros(0, dtype=np.int64)
    actions = np.asarray(episode.actions)[1:].astype(np.int64)
    cr, cc = obs.shape[2] // 2, obs.shape[3] // 2
    target = np.array([cr, cc]) + _MOVES[np.clip(actions, 0, 4)]  # [t-1 2]
    locked = obs[np.arange(len(actions)), DOOR_LOCKED, target[:, 0], target[:, 1]].astype(bool)
    return np.flatnonzero(locked & (actions > 0)) + 1


def _opened(obs: np.ndarray) -> np.ndarray:
    """The agent stands on an open door: the centre cell of the view is ``door_open``."""
    return np.asarray(obs)[:, DOOR_OPEN, obs.shape[2] // 2, obs.shape[3] // 2].astype(bool)


def _p_opened(probs: np.ndarray) -> np.ndarray:
    return np.asarray(probs)[:, DOOR_OPEN, probs.shape[2] // 2, probs.shape[3] // 2]


DOOR_TEST = HiddenConceptTest(
    name="door_opens", concept="has_key",
    description="moving into the locked door opens it and moves the agent onto it, iff the agent holds the key",
    steps=door_moves, happened=_opened, outcome=_p_opened,
)
