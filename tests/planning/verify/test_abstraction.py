"""The abstraction of a learned model, on a synthetic model whose latent IS a known Markov chain.

The model's latent site ``s`` holds the chain state; an identity "ontology" reads it back exactly
(categorical ``s``, binary ``bad`` / ``goal``, a scalar ``x``). So the abstraction's estimates must
converge to the known transition matrices, and Storm's answer on it must match the exact answer
(numpy, on the true chain) within the Clopper-Pearson interval model's bounds.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from dynamics.base import ActionSpec, DynamicsModel, LatentState, ObsSpec
from planning.verify.abstraction import (UNEXPLORED, AbstractionSpec, FixedPolicy, UniformPolicy,
                                         build_abstraction)
from planning.verify.intervals import robust_check
from planning.verify.reference import bounded_reach
from planning.verify.storm import check
from planning.verify.validate import VerifyError

# 5 states, 2 actions; state 3 is "bad" (absorbing), state 4 is "goal" (absorbing)
P = np.array([
    [[0.5, 0.3, 0.0, 0.1, 0.1], [0.2, 0.2, 0.6, 0.0, 0.0]],
    [[0.3, 0.4, 0.1, 0.2, 0.0], [0.0, 0.1, 0.4, 0.0, 0.5]],
    [[0.1, 0.1, 0.6, 0.2, 0.0], [0.3, 0.0, 0.2, 0.3, 0.2]],
    [[0.0, 0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0, 0.0]],
    [[0.0, 0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0, 1.0]],
])                                                   # [s a s']
BAD, GOAL, H = 3, 4, 6


class ChainLatentModel(DynamicsModel):
    """``imagine(sample=True)`` samples the next state of ``P`` (torch's global RNG); the mode otherwise."""

    obs_spec = ObsSpec((1,), "vector")
    action_spec = ActionSpec(discrete=True, n=2)

    def __init__(self):
        super().__init__()
        self.P = torch.as_tensor(P, dtype=torch.float64)

    @property
    def sites(self):
        return {"s": (), "feat": (1,)}

    @property
    def hparams(self) -> dict[str, Any]:
        return {}

    def initial(self, batch_size):
        return self.state([0] * batch_size)

    def state(self, s) -> LatentState:
        s = torch.as_tensor(s, dtype=torch.long)
        return LatentState({"s": s, "feat": s.double()[:, None]})

    def observe(self, obs, actions, is_first, *, sample=False):
        raise NotImplementedError

    def loss(self, obs, actions, is_first):
        raise NotImplementedError

    def imagine(self, state, actions, *, sample=False):
        s, out = state["s"], []
        for t in range(actions.shape[1]):
            p = self.P[s, actions[:, t]]
            s = torch.multinomial(p, 1)[:, 0] if sample else p.argmax(-1)
            out.append(s)
        s = torch.stack(out, 1)
        return LatentState({"s": s, "feat": s.double()[..., None]})


class IdentityOntology:
    """Reads the chain state back exactly: ``s`` (categorical), ``bad``/``goal`` (binary), ``x = s + 0.3`` (scalar)."""

    kinds = {"s": "categorical", "bad": "binary", "goal": "binary", "x": "scalar"}

    @property
    def concepts(self):
        return tuple(self.kinds)

    def __contains__(self, name):
        return name in self.kinds

    def __getitem__(self, name):
        return SimpleNamespace(concept=SimpleNamespace(kind=self.kinds[name]))

    def resolve(self, state, name, mode="value"):
        s = state["s"]
        return {"s": s, "bad": (s == BAD).long(), "goal": (s == GOAL).long(), "x": s.double() + 0.3}[name]


SPEC = AbstractionSpec(("s",), labels={"bad": "bad", "goal": "goal"}, absorbing=("bad", "goal"))
STARTS = [0, 1, 2]


@pytest.fixture(scope="module")
def uniform():
    torch.set_num_threads(1)
    model = ChainLatentModel()
    return build_abstraction(model, IdentityOntology(), SPEC, model.state(STARTS), UniformPolicy(2),
                             steps=H, rollouts=6000, seed=0)


def exact_bad(policy: np.ndarray | None, horizon: int) -> float:
    """P(F<=horizon bad) from the uniform start distribution over STARTS, on the TRUE chain
    (``policy[A]`` mixed in every state; ``None``: the max over actions)."""
    if policy is None:
        m = P.reshape(5 * 2, 5)
        v = bounded_reach(m, np.arange(0, 11, 2), np.arange(5) == BAD, horizon, "max")
    else:
        v = bounded_reach(np.einsum("a,sat->st", policy, P), np.arange(6), np.arange(5) == BAD, horizon)
    return float(v[STARTS].mean())


def test_estimates_converge_to_the_known_chain(uniform):
    a = uniform
    s_of = {tuple(v): i for i, v in enumerate(a.valuations)}
    assert sorted(int(v[0]) for v in a.valuations) == [0, 1, 2, 3, 4]
    assert a.counts.num_actions == 2 and a.rollouts == 6000 and a.steps == H
    visits = a.counts.visits()
    counts = a.counts.counts.toarray()
    for s in (0, 1, 2):
        for act in (0, 1):
            row = counts[s_of[(s, int(s == BAD), int(s == GOAL))] * 2 + act] / visits[s_of[(s, 0, 0)], act]
            est = np.zeros(5)
            for j, v in enumerate(a.valuations):
                est[int(v[0])] = row[j]
            np.testing.assert_allclose(est, P[s, act], atol=0.03)
    for s in (BAD, GOAL):                                   # absorbing: never expanded
        assert visits[s_of[(s, int(s == BAD), int(s == GOAL))]].sum() == 0
    np.testing.assert_allclose(a.counts.initial[[s_of[(s, 0, 0)] for s in STARTS]], 1 / 3)
    assert not a.unexplored.any()


def test_checked_probability_matches_the_exact_one_within_the_cp_bounds(uniform):
    prop = f'P=? [F<={H} "bad"]'
    exact = exact_bad(np.array([0.5, 0.5]), H)
    res = check(uniform.dtmc(), prop)
    hi = robust_check(uniform.interval_model(confidence=0.95), prop, "max").probability
    lo = robust_check(uniform.interval_model(confidence=0.95), prop, "min").probability
    assert lo <= exact <= hi, (lo, exact, hi)
    assert lo <= res.probability <= hi
    assert res.probability == pytest.approx(exact, abs=0.03)
    assert hi - lo < 0.25                                   # the bound is informative at this many counts


def test_mdp_pmax_matches_the_exact_optimum_within_the_cp_bounds(uniform):
    prop = f'Pmax=? [F<={H} "bad"]'
    exact = exact_bad(None, H)
    res = check(uniform.mdp(), prop)
    hi = robust_check(uniform.interval_model(mdp=True), prop, "max").probability
    assert res.probability == pytest.approx(exact, abs=0.03)
    assert exact <= hi


def test_fixed_policy_and_reproducibility():
    model = ChainLatentModel()
    pol = FixedPolicy([0.9, 0.1])
    a = build_abstraction(model, IdentityOntology(), SPEC, model.state(STARTS), pol, steps=H, rollouts=3000, seed=3)
    b = build_abstraction(model, IdentityOntology(), SPEC, model.state(STARTS), pol, steps=H, rollouts=3000, seed=3)
    c = build_abstraction(model, IdentityOntology(), SPEC, model.state(STARTS), pol, steps=H, rollouts=3000, seed=4)
    assert (a.counts.counts != b.counts.counts).nnz == 0      # same seed, same counts
    assert (a.counts.counts != c.counts.counts).nnz > 0       # (the seed is used)
    exact = exact_bad(np.array([0.9, 0.1]), H)
    prop = f'P=? [F<={H} "bad"]'
    assert check(a.dtmc(), prop).probability == pytest.approx(exact, abs=0.04)
    assert exact <= robust_check(a.interval_model(), prop, "max").probability


def test_scalar_bins_and_unexplored_states():
    model = ChainLatentModel()
    spec = AbstractionSpec(("x",), bins={"x": (1.0, 2.0)}, labels={"bad": "bad"}, absorbing=("bad",))
    a = build_abstraction(model, IdentityOntology(), spec, model.state([0]), UniformPolicy(2), steps=1,
                          rollouts=400, seed=0)
    names = a.state_names()
    assert {n["x"] for n in names} == {"[-inf, 1)", "[1, 2)", "[2, inf)"}    # 0.3 | 1.3 | 2.3, 3.3, 4.3
    # one step from state 0: everything reached is never left, so unexplored unless absorbing
    start = next(i for i, n in enumerate(names) if n["x"] == "[-inf, 1)" and n["bad"] == 0)
    assert not a.unexplored[start] and a.unexplored.sum() >= 1
    assert UNEXPLORED in a.counts.labels
    prop = 'P=? [F "bad"]'
    point = check(a.dtmc(), prop).probability
    worst = robust_check(a.interval_model(unexplored_as=("bad",)), prop, "max").probability
    assert worst > point + 0.5                               # unexplored states counted as bad


def test_bad_input_is_refused():
    model = ChainLatentModel()
    onto = IdentityOntology()
    with pytest.raises(VerifyError, match="no start states"):
        build_abstraction(model, onto, SPEC, model.state([]), UniformPolicy(2), steps=2, rollouts=10)
    with pytest.raises(VerifyError, match="strictly increasing"):
        AbstractionSpec(("x",), bins={"x": (2.0, 1.0)})
    with pytest.raises(VerifyError, match="strictly increasing"):
        AbstractionSpec(("x",), bins={"x": (float("nan"),)})
    with pytest.raises(VerifyError, match="non-empty"):
        AbstractionSpec(("x",), bins={"x": ()})
    with pytest.raises(VerifyError, match="needs bins"):
        build_abstraction(model, onto, AbstractionSpec(("x",)), model.state([0]), UniformPolicy(2), steps=1, rollouts=1)
    with pytest.raises(VerifyError, match="takes no bins"):
        AbstractionSpec(("s",), bins={"s": (1.0,)}).check(onto)
    with pytest.raises(VerifyError, match="no probe"):
        AbstractionSpec(("nope",)).check(onto)
    with pytest.raises(VerifyError, match="not labels"):
        AbstractionSpec(("s",), labels={"bad": "bad"}, absorbing=("lava",))
    with pytest.raises(VerifyError, match="must be binary"):
        AbstractionSpec((), labels={"s": "state"}).check(onto)
    with pytest.raises(VerifyError, match="at least one concept"):
        AbstractionSpec(())
    with pytest.raises(VerifyError, match="an MDP needs"):
        a = build_abstraction(model, onto, SPEC, model.state([0]), UniformPolicy(2), steps=2, rollouts=20)
        type(a)(a.spec, a.valuations, a.collapsed(), a.policy, a.rollouts, a.steps).mdp()


class OracleOntology:
    """The TRUE concepts of an oracle model's states, behind the ontology interface the abstraction reads."""

    def __init__(self, oracle):
        self.oracle = oracle
        self.concepts = tuple(c.name for c in oracle.schema)

    def __contains__(self, name):
        return name in self.concepts

    def __getitem__(self, name):
        return SimpleNamespace(concept=self.oracle.schema[name])

    def resolve(self, state, name, mode="value"):
        return self.oracle.reader(state)(name, mode)


def test_true_gridworld_abstraction_matches_the_real_world():
    """No learning: the abstraction of the true simulator (oracle) over the true concepts (the full state, so
    the abstraction is exact) under a fixed policy; its checked lava probability must agree with the lava
    rate of the REAL world under the same policy (independent code: the numpy world vs the torch oracle)."""
    from planning.oracle import LavaKeyDoorOracle
    from planning.verify.intervals import empirical_rate
    from worlds.lavakeydoor import LavaKeyDoor, LavaKeyDoorParams

    layout = "\n".join(["#######", "#A.#..#", "#..#.G#", "#K.D..#", "#..#L.#", "#.L#..#", "#######"])
    policy, horizon = np.array([0.1, 0.2, 0.3, 0.15, 0.25]), 12
    params = LavaKeyDoorParams(size=7, max_steps=horizon)
    world = LavaKeyDoor.from_layouts([layout], num_envs=1, params=params)
    world.reset(seed=0)
    oracle = LavaKeyDoorOracle(params)
    edges = tuple(np.arange(0.5, 6.0))
    spec = AbstractionSpec(("agent_row", "agent_col", "has_key", "door_open"),
                           bins={"agent_row": edges, "agent_col": edges},
                           labels={"in_lava": "lava", "at_goal": "goal"}, absorbing=("lava", "goal"))
    a = build_abstraction(oracle, OracleOntology(oracle), spec, oracle.state_of(world), FixedPolicy(policy),
                          steps=horizon, rollouts=3000, seed=0)
    prop = f'P=? [F<={horizon} "lava"]'
    point = check(a.dtmc(), prop).probability
    hi = robust_check(a.interval_model(unexplored_as=("lava",)), prop, "max").probability
    lo = robust_check(a.interval_model(), prop, "min").probability
    episodes = 3000
    real = LavaKeyDoor.from_layouts([layout], num_envs=episodes, params=params)
    real.reset(seed=1)
    rng = np.random.default_rng(1)
    done, lava = np.zeros(episodes, bool), np.zeros(episodes, bool)
    for _ in range(horizon):
        step = real.step(rng.choice(5, size=episodes, p=policy))
        lava |= step.violation & ~done
        done |= step.terminated | step.truncated
    emp = empirical_rate(int(lava.sum()), episodes, confidence=0.99)
    assert 0.05 < emp.rate < 0.95
    assert lo <= point <= hi and emp.lower <= hi and lo <= emp.upper, (lo, point, hi, emp)
    assert abs(point - emp.rate) < 0.05
