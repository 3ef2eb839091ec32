"""Over-optimisation curves on toy problems with a known answer, and the best-of-n KL formula."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from dynamics import build_model
from planning import oracle_model
from planning.overoptimisation import best_of_n_kl, overoptimisation_curve, save_curves
from rewards import RewardSpec
from worlds import make_world
from worlds.lavakeydoor.world import LavaKeyDoor, LavaKeyDoorParams

# Lava two steps right of the start; the goal behind it.
LAYOUT = """
#######
#.....#
#A.L.G#
#..L..#
#.....#
#.....#
#######
"""
TRUTH = RewardSpec("-0.1 * steps_to_goal - 10 * in_lava")
# The proxy's known exploitable error: it reads the lava region as a bonus instead of a disaster.
WRONG = RewardSpec("-0.1 * steps_to_goal + 20 * in_lava")


def tiny_world(num_envs: int = 8) -> LavaKeyDoor:
    return LavaKeyDoor.from_layouts([LAYOUT], num_envs=num_envs, params=LavaKeyDoorParams(max_steps=30))


def test_best_of_n_kl_matches_the_exact_kl_of_the_order_statistic():
    """Independent reference: the best of n draws from a uniform prior over M distinct scores has
    pmf ``(i/M)^n - ((i-1)/M)^n``; its exact KL from the prior tends to the formula as M grows and
    stays below it (ties only lower it)."""
    for n in (1, 2, 4, 16, 64, 1024):
        for M, tol in ((10**6, 2e-3), (50, None)):
            i = np.arange(1, M + 1, dtype=np.float64)
            p = (i / M) ** n - ((i - 1) / M) ** n
            kl = float(np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p * M, 1.0)), 0.0)))
            if tol is None:
                assert kl <= best_of_n_kl(n) + 1e-12
            else:
                assert kl == pytest.approx(best_of_n_kl(n), abs=tol)
    assert best_of_n_kl(1) == 0.0 and best_of_n_kl(4) == pytest.approx(math.log(4) - 0.75)
    with pytest.raises(ValueError, match="n >= 1"):
        best_of_n_kl(0)


@pytest.fixture(scope="module")
def wrong_curve():
    world = tiny_world()
    oracle = oracle_model(world)
    return overoptimisation_curve(world, oracle, oracle.true_reward(WRONG), TRUTH, horizon=8, episodes=16,
                                  best_of=(1, 4, 16, 64), cem_samples=(8, 32), cem_iterations=(1, 3), n_boot=100)


def test_an_exploitable_proxy_rises_while_the_true_return_falls(wrong_curve):
    bon = wrong_curve.family("best_of_n")
    proxy = np.array([p.proxy_return.estimate for p in bon])
    true = np.array([p.true_return.estimate for p in bon])
    assert np.all(np.diff(proxy) > 0) and np.all(np.diff(true) < 0)        # the over-optimisation signature
    assert np.all(np.diff([p.gap.estimate for p in bon]) > 0)
    assert [p.kl for p in bon] == [best_of_n_kl(n) for n in (1, 4, 16, 64)]
    assert bon[-1].true_return.upper < bon[0].true_return.lower           # the fall is beyond the CIs
    cem = wrong_curve.family("cem")
    assert [p.sequences for p in cem] == [8, 96] and all(p.kl is None for p in cem)
    assert cem[1].proxy_return.estimate > cem[0].proxy_return.estimate
    assert cem[1].true_return.estimate < cem[0].true_return.estimate
    assert all(p.true_cost.estimate == 0 for p in wrong_curve.points)     # the spec has no constraints


def test_with_the_true_reward_on_the_true_simulator_proxy_equals_truth():
    """Open-loop execution in the real world reproduces the oracle's imagination exactly: no gap at any pressure."""
    world = tiny_world(num_envs=4)
    oracle = oracle_model(world)
    curve = overoptimisation_curve(world, oracle, oracle.true_reward(TRUTH), TRUTH, horizon=6, episodes=6,
                                   best_of=(1, 16), cem_samples=(16,), cem_iterations=(2,), n_boot=50, seed=3)
    for p in curve.points:
        assert p.gap.estimate == pytest.approx(0.0, abs=1e-6) and p.gap.lower == pytest.approx(0.0, abs=1e-6)  # float32 oracle
        assert p.proxy_return.estimate == pytest.approx(p.true_return.estimate, abs=1e-5)
    again = overoptimisation_curve(world, oracle, oracle.true_reward(TRUTH), TRUTH, horizon=6, episodes=6,
                                   best_of=(1, 16), cem_samples=(16,), cem_iterations=(2,), n_boot=50, seed=3)
    assert again == curve                                                 # seeded: reproducible


def test_learned_model_path_and_saved_outputs(tmp_path, wrong_curve):
    """A (random) learned GRU plans from filtered posteriors; a continuous world runs CEM; files are written."""
    torch.set_num_threads(1)
    world = tiny_world(num_envs=3)
    torch.manual_seed(0)
    model = build_model("gru", {"shape": list(world.single_observation_space.shape), "kind": "symbolic"},
                        {"discrete": True, "n": 5}, deter=8, hidden=8, embed=8).eval()

    def reward_fn(states, actions):  # any RewardFn: here the first latent unit
        from rewards import RewardOutput
        r = states["deter"][..., 0]
        return RewardOutput(r, torch.zeros_like(r), {})

    learned = overoptimisation_curve(world, model, reward_fn, TRUTH, horizon=4, episodes=5, best_of=(1, 8),
                                     cem_samples=(8,), cem_iterations=(2,), n_boot=20)
    assert learned.episodes == 5 and len(learned.points) == 3
    assert learned.points[1].proxy_return.estimate >= learned.points[0].proxy_return.estimate - 1e-6
    pm = make_world("pointmass", num_envs=2, seed=0, max_steps=20)
    oracle = oracle_model(pm)
    spec = RewardSpec("-dist_to_goal - 10 * in_hazard")
    cont = overoptimisation_curve(pm, oracle, oracle.true_reward(spec), spec, horizon=4, episodes=2, best_of=(1, 4),
                                  cem_samples=(8,), cem_iterations=(2,), n_boot=20, label="pointmass")
    assert all(p.gap.estimate == pytest.approx(0.0, abs=1e-6) for p in cont.points)
    js, png = save_curves([wrong_curve, learned], tmp_path, extra={"note": "x"})
    doc = json.loads(js.read_text())
    assert doc["note"] == "x" and [c["label"] for c in doc["curves"]] == ["learned", "learned"]
    p0 = doc["curves"][0]["points"][0]
    assert p0["optimiser"] == "best_of_n" and set(p0["true_return"]) == {"estimate", "ci_low", "ci_high"}
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left behind
