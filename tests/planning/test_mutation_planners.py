"""Mutation-audit tests of the continuous planners' bookkeeping: what each optimiser iteration imagines.

A mutation audit (session 8) found that every continuous-planner test only looked at the quality of the final plan,
so these plausible bugs survived: CEM not letting the current mean compete, iCEM keeping its WORST elites, not
shifting the kept elites at the next decision, an off-by-one in the shrinking population, and the mean added at
the first instead of the last iteration. Each test below records the action batches the planner hands to
``imagine`` (a spy around the linear toy model) and checks them against the algorithm as documented.
"""

from __future__ import annotations

import torch

from planning import CEM, ICEM


class Spy:
    """Wraps a toy model; records the ``actions [n h a]`` of every ``imagine`` call (clones)."""

    def __init__(self, model):
        self.model, self.batches = model, []

    def __getattr__(self, name):
        return getattr(self.model, name)

    def imagine(self, state, actions, *, sample=False):
        self.batches.append(actions.clone())
        return self.model.imagine(state, actions, sample=sample)


def _icem(toys, **kw):
    spy = Spy(toys.linear())
    args = dict(num_samples=20, num_elites=10, iterations=3, decay=2.0, keep_elites=0.3, beta=0.0, seed=0)
    args.update(kw)
    return spy, ICEM(spy, toys.lq_reward, 4, **args)


def test_cem_current_mean_is_the_first_sample_of_every_iteration(toys):
    spy = Spy(toys.linear())
    planner = CEM(spy, toys.lq_reward, 4, num_samples=16, num_elites=4, iterations=2, seed=0)
    planner.plan(toys.linear_state())
    first = spy.batches[0]                       # iteration 0 of the first decision: the mean is the centre (0)
    torch.testing.assert_close(first[0], torch.zeros_like(first[0]), rtol=0, atol=0)
    assert first[1:].abs().sum() > 0             # the other rows are noisy samples
    plan = planner.last_plan
    spy.batches.clear()
    planner.plan(toys.linear_state())            # a warm start: the shifted previous plan competes as sample 0
    expected = torch.cat([plan[1:], torch.zeros_like(plan[-1:])]).clamp(-1, 1)
    torch.testing.assert_close(spy.batches[0][0], expected, rtol=0, atol=0)


def test_icem_population_shrinks_by_decay_from_num_samples():
    # hand-computed: max(int(20 * 2**-i), min(2 * 4, 20)) for i = 0, 1, 2, 3
    planner = ICEM.__new__(ICEM)
    planner.num_samples, planner.num_elites, planner.decay = 20, 4, 2.0
    assert [planner.population(i) for i in range(4)] == [20, 10, 8, 8]


def test_icem_batch_sizes_follow_the_schedule_with_kept_elites_and_the_mean_last(toys):
    spy, planner = _icem(toys)
    planner.plan(toys.linear_state())
    n_keep = round(0.3 * 10)
    pops = [planner.population(i) for i in range(3)]
    assert pops == [20, 20, 20]                  # max(., 2 * num_elites) = 20 floors the schedule here
    # first decision: no kept elites at i = 0; kept elites of the previous iteration at i >= 1; the mean at the end
    # only; then Planner.plan's batch-1 scoring of the returned plan
    assert [b.shape[0] for b in spy.batches] == [pops[0], pops[1] + n_keep, pops[2] + n_keep + 1, 1]

    spy2, planner2 = _icem(toys, num_samples=64, num_elites=4, keep_elites=0.5)
    planner2.plan(toys.linear_state())
    assert [b.shape[0] for b in spy2.batches] == [64, 32 + 2, 16 + 2 + 1, 1]


def test_icem_keeps_its_best_elites_and_shifts_them_into_the_next_decision(toys):
    spy, planner = _icem(toys)
    state = toys.linear_state()
    planner.plan(state)
    n_keep = 3
    elites, kept = planner.last_elites, planner._kept
    assert kept.shape == (n_keep, 4, 2)
    # the kept elites are the best-ranked of the final elites (independently re-scored)
    returns = planner.score(state, elites).returns
    kept_returns = planner.score(state, kept).returns
    assert torch.equal(kept, elites[:n_keep])
    assert kept_returns.min() >= returns[n_keep:].max()
    # next decision, iteration 0: the population is followed by the kept elites moved one step forward, the new
    # last step at the centre of the bounds (0)
    spy.batches.clear()
    planner.plan(state)
    pop0 = planner.population(0)
    shifted = torch.cat([kept[:, 1:], torch.zeros_like(kept[:, -1:])], dim=1)
    torch.testing.assert_close(spy.batches[0][pop0:pop0 + n_keep], shifted, rtol=0, atol=0)
    assert spy.batches[0].shape[0] == pop0 + n_keep


def test_exhaustive_sequences_are_lexicographic_with_step_0_most_significant(toys):
    from planning import make_planner

    planner = make_planner("exhaustive", toys.ChainModel(), toys.chain_reward, 3)
    seqs = planner.sequences(torch.device("cpu"))
    expected = torch.tensor([[a, b, c] for a in range(4) for b in range(4) for c in range(4)])   # itertools.product order
    assert torch.equal(seqs, expected)
    # hence among equally good sequences the stable feasible-first ranking returns the lexicographically first


def test_random_shooting_keeps_the_shifted_previous_plan_in_the_running(toys):
    from planning import RandomShooting

    spy = Spy(toys.linear())
    planner = RandomShooting(spy, toys.lq_reward, 4, num_samples=8, num_elites=2, seed=0)
    planner.plan(toys.linear_state())
    plan = planner.last_plan
    spy.batches.clear()
    planner.plan(toys.linear_state())
    expected = torch.cat([plan[1:], torch.zeros_like(plan[-1:])])
    torch.testing.assert_close(spy.batches[0][0], expected, rtol=0, atol=0)
