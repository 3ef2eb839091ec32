"""lavakeydoor's hidden-concept test (worlds/lavakeydoor/hidden.py): its steps are exactly the moves into a locked
door (found here from the world's own state, not from the view), and the outcome it reads equals has_key before
the move at every such step -- the world's rule that makes the test meaningful."""

from __future__ import annotations

import numpy as np

from worlds.lavakeydoor import layout as L
from worlds.lavakeydoor.world import MOVES
from worlds.policies import make_policy
from worlds.registry import make_world
from worlds.trajectory import Episode


def _episodes(num_envs=32, steps=600, seed=0):
    """Episodes of the default mixture policy, plus per episode the steps whose action targets a locked door
    according to the world's state (the independent reference)."""
    world = make_world("lavakeydoor", num_envs=num_envs, seed=seed)
    test, = type(world).hidden_concept_tests
    policy, rng = make_policy("mixture"), np.random.default_rng(seed)
    obs = world.reset(seed=seed)
    policy.reset(world, rng)
    cur = [{"obs": [obs[i]], "act": [0], "key": [False], "door": []} for i in range(num_envs)]
    done_eps = []
    for _ in range(steps):
        a = np.asarray(policy(world, rng))
        target = world._pos + MOVES[a]
        code = world._cells[np.arange(num_envs), target[:, 0] + world._pad, target[:, 1] + world._pad]
        r = world.step(a)
        key = world.concepts()["has_key"]
        for i in range(num_envs):
            c = cur[i]
            if code[i] == L.DOOR_LOCKED and a[i] > 0:
                c["door"].append(len(c["obs"]))
            c["obs"].append(r.obs[i]), c["act"].append(int(a[i])), c["key"].append(bool(key[i]))
        done = np.asarray(r.terminated) | np.asarray(r.truncated)
        if done.any():
            for i in np.flatnonzero(done):
                done_eps.append(cur[i])
            obs = world.reset(mask=done)
            policy.reset(world, rng, done)
            for i in np.flatnonzero(done):
                cur[i] = {"obs": [obs[i]], "act": [0], "key": [False], "door": []}
    out = []
    for c in done_eps:
        n = len(c["obs"])
        first = np.zeros(n, bool)
        first[0] = True
        ep = Episode(obs=np.stack(c["obs"]), actions=np.array(c["act"]), is_first=first, is_terminal=np.zeros(n, bool),
                     reward=np.zeros(n, np.float32), success=np.zeros(n, bool), violation=np.zeros(n, bool),
                     concepts={"has_key": np.array(c["key"])})
        out.append((ep, np.array(c["door"], dtype=np.int64)))
    return test, out


def test_door_steps_are_the_moves_into_a_locked_door_and_open_it_iff_the_key_is_held():
    test, episodes = _episodes()
    assert test.concept == "has_key"
    with_key = without = 0
    for ep, reference in episodes:
        steps = test.steps(ep)
        assert steps.tolist() == reference.tolist()
        if len(steps):
            held = ep.concepts["has_key"][steps - 1]
            assert (test.happened(ep.obs[steps]) == held).all()
            with_key, without = with_key + int(held.sum()), without + int((~held).sum())
    assert with_key > 5 and without > 5  # both outcomes occur in the data the default policy collects


def test_the_outcome_probability_reads_the_centre_cells_open_door_channel():
    test, _ = _episodes(num_envs=2, steps=5)
    probs = np.zeros((2, len(L.CELL_NAMES), 5, 5))
    probs[0, L.DOOR_OPEN, 2, 2] = 0.8
    probs[1, L.DOOR_OPEN, 2, 1] = 0.9  # beside the centre: not the agent's cell
    assert test.outcome(probs).tolist() == [0.8, 0.0]
