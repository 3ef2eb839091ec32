"""Hidden-concept tests: steps where the true next observation depends on a concept the current observation
does not show -- a behavioural check of whether a dynamics model knows that concept.

lavakeydoor's ``has_key`` is never drawn: moving into the locked door opens it (and moves the agent onto it)
exactly when the agent holds the key. A model that knows ``has_key`` predicts the door opening at those steps
when the key is held and not otherwise; a model that does not can only predict the average. Probes ask
whether a concept can be *read* from the latent; this asks whether the model *uses* it where the world does
(the two can disagree in both directions: a readable but unused concept, or one used nonlinearly).

A world lists its tests in ``VectorWorld.hidden_concept_tests``; ``dynamics.evaluate_hidden_concept`` scores a
model on them (1-step prediction from the posterior of the step before), and the train stage reports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from worlds.trajectory import Episode


@dataclass(frozen=True)
class HiddenConceptTest:
    """Where and how a hidden binary concept decides the next observation.

    ``steps(episode) -> int[m]``: the steps ``t >= 1`` where it does (``actions[t]`` leads into ``t``; the
    concept is read at ``t - 1``, before the action). ``happened(obs[m *obs]) -> bool[m]``: whether the
    outcome shows in the true observations at those steps. ``outcome(probs[m c h w]) -> [m]``: the model's
    probability of the outcome from its predicted per-cell channel probabilities (symbolic observations).
    In the world, ``happened`` equals the concept at ``t - 1`` at every such step (tests check this)."""

    name: str
    concept: str
    description: str
    steps: Callable[[Episode], np.ndarray]
    happened: Callable[[np.ndarray], np.ndarray]
    outcome: Callable[[np.ndarray], np.ndarray]
