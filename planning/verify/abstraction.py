"""The finite abstraction of a LEARNED dynamics model over an identified ontology, estimated by counting.

Abstract states are valuations of probed concepts: for every latent ``z`` the tuple
``(probe_1(z), ..., probe_k(z))`` of the ontology's hard readings (``Ontology.resolve(..., "value")``),
each scalar concept discretised into stated bins. :func:`build_abstraction` runs many imagined
rollouts of the model (``model.imagine`` one step at a time, ``sample=True`` where the model is
stochastic) from start latents filtered from real data, under a :class:`LatentPolicy` (uniformly
random actions, a fixed stochastic policy, or a planner deciding from each imagined latent), maps
every imagined latent to its abstract state and counts the transitions ``n(s, a, s')``. The result
(:class:`Abstraction`) keeps the counts, so every estimated probability carries a Clopper-Pearson
interval (:class:`~planning.verify.intervals.IntervalModel`):

* :meth:`Abstraction.mdp` -- over all counted actions (discrete actions only),
* :meth:`Abstraction.dtmc` -- under the policy the rollouts ran (counts summed over actions:
  ``P(s'|s) = n(s, s') / n(s)``; the right estimator for a policy that reads the latent, e.g. a planner).

Labels come from the probes: ``labels = {"in_lava": "lava", "at_goal": "goal"}`` puts the label
``lava`` on every abstract state whose ``in_lava`` reading is 1 (label concepts must be binary and
are added to the abstraction's concepts).

**Terminal states.** Labels named in ``absorbing`` (e.g. ``lava``, ``goal``: they end a lavakeydoor
episode) are absorbing: once an imagined rollout enters such a state it stops being counted (the
real episode would have ended), and the state gets an exact self-loop. A rollout that *starts* in
one contributes only to the initial distribution.

**Unexplored states.** A non-absorbing state that was reached but never left within the rollouts
(e.g. first seen at the last imagined step) has no estimate; it gets the reserved label
:data:`UNEXPLORED` and is made absorbing. A point estimate then treats it as satisfying no other
label; :meth:`Abstraction.interval_model` can count it as a target instead (the worst case for an
upper bound of a reachability property). Their initial-distribution-weighted reach probability is
worth reporting (``P=? [F "unexplored"]``).

**What the abstraction assumes** (and a check cannot see): that the abstract process is Markov --
that the next valuation depends only on the current valuation (and action), not on the rest of the
latent. This holds when the probed concepts are a sufficient statistic of the dynamics they
describe; it is exactly what the comparison with the real world (:mod:`experiments.stages.verify`)
tests. Reproducible on CPU for a fixed ``seed`` (actions from a seeded generator, imagination noise
from a forked, seeded torch RNG).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Protocol, Sequence

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from dynamics.base import DynamicsModel, LatentState
from planning.verify.intervals import IntervalModel
from planning.verify.model import CountModel, ExplicitModel
from planning.verify.validate import LABEL_PATTERN, VerifyError

UNEXPLORED = "unexplored"
"""Reserved label of states that were reached but never left within the rollouts."""


@dataclass(frozen=True)
class AbstractionSpec:
    """Which probed concepts make an abstract state, how scalars are binned, and the labels.

    ``bins[c]`` are strictly increasing finite edges ``e_1 < ... < e_m`` of a scalar concept ``c``:
    bin ``j`` (``0 .. m``) holds the readings in ``[e_j, e_{j+1})`` with ``e_0 = -inf``, ``e_{m+1} = inf``.
    ``labels`` maps a binary concept to a label name; ``absorbing`` names the labels whose states end
    an episode.
    """

    concepts: tuple[str, ...]
    bins: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    """Binary concept -> label name (the label holds where the probe reads 1)."""
    absorbing: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        concepts = tuple(self.concepts) + tuple(c for c in self.labels if c not in self.concepts)
        object.__setattr__(self, "concepts", concepts)
        object.__setattr__(self, "absorbing", tuple(self.absorbing))
        object.__setattr__(self, "bins", {k: tuple(float(e) for e in v) for k, v in dict(self.bins).items()})
        object.__setattr__(self, "labels", dict(self.labels))
        if not concepts:
            raise VerifyError("an abstraction needs at least one concept (or label); give concepts=('in_lava', ...)")
        if len(set(concepts)) != len(concepts):
            raise VerifyError(f"abstraction concepts must be distinct, got {list(concepts)}")
        for name, edges in self.bins.items():
            if name not in concepts:
                raise VerifyError(f"bins given for {name!r}, which is not an abstraction concept {list(concepts)}")
            e = np.asarray(edges, dtype=np.float64)
            if e.size == 0 or not np.all(np.isfinite(e)) or np.any(np.diff(e) <= 0):
                raise VerifyError(f"bins of {name!r} must be a non-empty list of finite, strictly increasing edges, "
                                  f"got {list(edges)}")
        names = list(self.labels.values())
        for name in names:
            if not isinstance(name, str) or not LABEL_PATTERN.fullmatch(name) or name in ("init", UNEXPLORED):
                raise VerifyError(f"label names must match {LABEL_PATTERN.pattern} and not be 'init' or "
                                  f"{UNEXPLORED!r}, got {name!r}")
        if len(set(names)) != len(names):
            raise VerifyError(f"each label must come from one concept, got {self.labels}")
        unknown = [a for a in self.absorbing if a not in names]
        if unknown:
            raise VerifyError(f"absorbing label(s) {unknown} are not labels; the labels are {names}")

    @property
    def label_names(self) -> tuple[str, ...]:
        """Every label of the abstraction's models (``UNEXPLORED`` included)."""
        return (*self.labels.values(), UNEXPLORED)

    def check(self, ontology) -> None:
        """Every concept probed by ``ontology``; scalars binned, nothing else binned; label concepts binary."""
        missing = [c for c in self.concepts if c not in ontology]
        if missing:
            raise VerifyError(f"the ontology has no probe for {missing}; it probes {list(ontology.concepts)}")
        self.check_kinds({c: ontology[c].concept.kind for c in self.concepts})

    def check_kinds(self, kinds: Mapping[str, str], where: str = "the ontology") -> None:
        """The same checks against ``{concept: kind}`` (e.g. a world's schema before any probe exists)."""
        missing = [c for c in self.concepts if c not in kinds]
        if missing:
            raise VerifyError(f"{where} has no concept(s) {missing}; it has {list(kinds)}")
        for c in self.concepts:
            kind = kinds[c]
            if kind == "scalar" and c not in self.bins:
                raise VerifyError(f"scalar concept {c!r} needs bins (e.g. bins.{c}=[0.5, 1.5, 2.5])")
            if kind != "scalar" and c in self.bins:
                raise VerifyError(f"{kind} concept {c!r} takes no bins; bins are for scalar concepts")
        bad = [c for c in self.labels if kinds[c] != "binary"]
        if bad:
            raise VerifyError(f"label concepts must be binary, got {[(c, kinds[c]) for c in bad]}")

    def valuate(self, ontology, state: LatentState) -> np.ndarray:
        """``int64[b k]`` the abstract valuation of every state in ``state[b ...]`` (``k = len(concepts)``):
        class index for binary/categorical concepts, bin index for scalars."""
        cols = []
        for c in self.concepts:
            v = ontology.resolve(state, c, "value").detach().to("cpu")
            if c in self.bins:
                x = v.double().numpy()
                if not np.all(np.isfinite(x)):
                    raise VerifyError(f"the probe of {c!r} read a non-finite value on an imagined latent; "
                                      f"the model or the probe diverged")
                cols.append(np.searchsorted(np.asarray(self.bins[c]), x, side="right"))
            else:
                cols.append(v.long().numpy())
        return np.stack(cols, axis=-1).astype(np.int64)

    def label_masks(self, valuations: np.ndarray) -> dict[str, np.ndarray]:
        """``{label: bool[s]}`` of valuations ``int64[s k]`` (``UNEXPLORED`` not included)."""
        return {name: valuations[:, self.concepts.index(c)] == 1 for c, name in self.labels.items()}

    def describe(self, valuation: Sequence[int]) -> dict[str, str | int]:
        """``{concept: value}`` of one valuation, scalar bins written as intervals (``"[0.5, 1.5)"``)."""
        out: dict[str, str | int] = {}
        for c, v in zip(self.concepts, valuation):
            if c in self.bins:
                e = (-math.inf, *self.bins[c], math.inf)
                out[c] = f"[{e[v]:g}, {e[v + 1]:g})"
            else:
                out[c] = int(v)
        return out


class LatentPolicy(Protocol):
    """A policy over latent states: ``policy(state[n ...], active bool[n], generator) -> actions[n *act]``
    (actions of inactive rows are ignored); ``reset(n)`` is called before each batch of rollouts."""

    name: str

    def reset(self, n: int) -> None: ...

    def __call__(self, state: LatentState, active: Tensor, generator: torch.Generator) -> Tensor: ...


class UniformPolicy:
    """Uniformly random actions: indices in ``range(n)`` (discrete), or values in ``[low, high]^dim``."""

    def __init__(self, num_actions: int = 0, *, dim: int = 0, low: float = -1.0, high: float = 1.0):
        if (num_actions < 1) == (dim < 1):
            raise VerifyError(f"give num_actions (discrete) or dim (continuous), got num_actions={num_actions}, dim={dim}")
        self.num_actions, self.dim, self.low, self.high = int(num_actions), int(dim), float(low), float(high)
        self.name = "uniform"

    def reset(self, n: int) -> None:
        pass

    def __call__(self, state: LatentState, active: Tensor, generator: torch.Generator) -> Tensor:
        n, device = active.shape[0], active.device
        if self.num_actions:
            return torch.randint(0, self.num_actions, (n,), generator=generator, device=device)
        u = torch.rand((n, self.dim), generator=generator, device=device)
        return self.low + (self.high - self.low) * u


class FixedPolicy:
    """A fixed stochastic policy over discrete actions, the same distribution ``probs[A]`` in every state."""

    def __init__(self, probs: Sequence[float], name: str = "fixed"):
        p = torch.as_tensor(np.asarray(probs, dtype=np.float64))
        if p.ndim != 1 or not torch.all(torch.isfinite(p)) or p.min() < 0 or abs(float(p.sum()) - 1) > 1e-9:
            raise VerifyError(f"probs must be a distribution over actions (shape (A,), >= 0, summing to 1), "
                              f"got {np.asarray(probs).tolist()}")
        self.probs, self.name = p, name

    def reset(self, n: int) -> None:
        pass

    def __call__(self, state: LatentState, active: Tensor, generator: torch.Generator) -> Tensor:
        p = self.probs.to(active.device)
        return torch.multinomial(p.expand(active.shape[0], -1), 1, replacement=True, generator=generator)[:, 0]


class PlannerPolicy:
    """A planner (:class:`~planning.planner.Planner`) deciding from every imagined latent: receding horizon,
    one warm start per rollout (as :class:`~planning.closed_loop.ModelPlannerPolicy` keeps one per env).
    Expensive: one full optimisation per active rollout and step."""

    def __init__(self, planner, name: str = "planner"):
        self.planner, self.name = planner, name
        self._warm: list[dict[str, Tensor | None] | None] = []   # per rollout (Planner.warm_state); None: fresh

    def reset(self, n: int) -> None:
        self._warm = [None] * n

    def __call__(self, state: LatentState, active: Tensor, generator: torch.Generator) -> Tensor:
        out = None
        for i in torch.nonzero(active).flatten().tolist():
            self.planner.load_warm_state(self._warm[i])
            a, _ = self.planner.plan(state.at(slice(i, i + 1)))
            self._warm[i] = self.planner.warm_state()
            if out is None:
                out = a.new_zeros((active.shape[0], *a.shape))
            out[i] = a
        if out is None:                                          # nothing active: any action is ignored
            spec = self.planner.model.action_spec
            out = torch.zeros((active.shape[0], *(() if spec.discrete else (spec.dim,))),
                              dtype=torch.long if spec.discrete else torch.float32, device=active.device)
        return out


@dataclass(frozen=True)
class Abstraction:
    """Counted transitions between abstract states of a learned model, under one policy.

    ``counts`` is per action (``num_actions`` = the model's discrete actions, 1 for continuous ones);
    its labels are the probes' labels plus :data:`UNEXPLORED`; its initial distribution is the
    distribution of the rollouts' start valuations.
    """

    spec: AbstractionSpec
    valuations: np.ndarray
    """``int64[states k]`` the concept values / bin indices of each abstract state (sorted rows)."""
    counts: CountModel
    policy: str
    """Name of the policy the rollouts ran."""
    rollouts: int
    steps: int
    """Imagined steps per rollout."""

    @property
    def num_states(self) -> int:
        return int(self.valuations.shape[0])

    @property
    def absorbing(self) -> tuple[str, ...]:
        return (*self.spec.absorbing, UNEXPLORED)

    @property
    def transitions(self) -> int:
        """Number of counted (imagined) transitions."""
        return int(round(float(self.counts.counts.sum())))

    @property
    def unexplored(self) -> np.ndarray:
        """``bool[states]`` states reached but never left (see the module docstring)."""
        return np.asarray(self.counts.labels[UNEXPLORED], dtype=bool)

    def state_names(self) -> list[dict[str, str | int]]:
        return [self.spec.describe(v) for v in self.valuations]

    def collapsed(self) -> CountModel:
        """The counts summed over actions (one action): the transitions under the rollout policy."""
        c = self.counts
        # [S (S A)] with a one at (s, s * A + a): sums the rows of every action of a state
        gather = sp.csr_array(sp.kron(sp.identity(self.num_states), np.ones((1, c.num_actions))))
        return CountModel(sp.csr_array(gather @ sp.csr_array(c.counts)), 1, c.labels, c.initial)

    def dtmc(self) -> ExplicitModel:
        """The DTMC of the rollout policy (maximum-likelihood estimate, absorbing states as self-loops)."""
        return self.collapsed().to_dtmc(np.ones((self.num_states, 1)), self.absorbing)

    def mdp(self) -> ExplicitModel:
        """The MDP over the counted actions of each state (discrete actions only)."""
        if self.counts.num_actions < 2:
            raise VerifyError("an MDP needs discrete actions counted separately; this abstraction has one action "
                              "(continuous actions): use dtmc()")
        return self.counts.to_mdp(self.absorbing)

    def interval_model(self, *, mdp: bool = False, confidence: float = 0.95, unexplored_as: Sequence[str] = (),
                       unseen: str | None = None) -> IntervalModel:
        """Clopper-Pearson interval DTMC (rollout policy) or MDP at joint ``confidence``.

        ``unexplored_as``: labels that the :data:`UNEXPLORED` states also carry here (an upper bound of
        the reachability of those labels then covers whatever the unexplored states would do).
        ``unseen``: see :meth:`IntervalModel.from_counts`.
        """
        base = self.counts if mdp else self.collapsed()
        if mdp and base.num_actions < 2:
            raise VerifyError("an interval MDP needs discrete actions; use mdp=False")
        labels = dict(base.labels)
        for name in unexplored_as:
            if name not in labels:
                raise VerifyError(f"unexplored_as: unknown label {name!r}; the labels are {sorted(labels)}")
            labels[name] = labels[name] | labels[UNEXPLORED]
        relabelled = CountModel(base.counts, base.num_actions, labels, base.initial)
        policy = None if mdp else np.ones((self.num_states, 1))
        return IntervalModel.from_counts(relabelled, confidence, policy=policy, absorbing=self.absorbing,
                                         unseen=unseen)


def _action_index(actions: Tensor, discrete: bool) -> np.ndarray:
    return actions.detach().to("cpu").long().numpy().reshape(-1) if discrete else np.zeros(actions.shape[0], np.int64)


def build_abstraction(model: DynamicsModel, ontology, spec: AbstractionSpec, starts: LatentState,
                      policy: LatentPolicy, *, steps: int, rollouts: int, sample: bool = True, seed: int = 0,
                      batch_size: int = 1024) -> Abstraction:
    """Count abstract transitions of ``rollouts`` imagined rollouts of ``steps`` steps each.

    ``starts``: latents ``[n ...]`` filtered from real data; rollout ``r`` starts from ``starts[r % n]``.
    ``policy`` picks the actions (see :class:`LatentPolicy`). ``sample``: draw the model's stochastic
    parts (``imagine(sample=True)``). Rollouts are imagined ``batch_size`` at a time, one step per
    ``imagine`` call. Every concept of ``spec`` must be probed by ``ontology`` on a site ``imagine`` produces.
    """
    spec.check(ontology)
    n = _batch(starts)
    if n < 1:
        raise VerifyError("no start states: give at least one latent filtered from real data")
    if steps < 1 or rollouts < 1 or batch_size < 1:
        raise VerifyError(f"steps, rollouts and batch_size must be >= 1, got {steps}, {rollouts}, {batch_size}")
    discrete = model.action_spec.discrete
    num_actions = model.action_spec.n if discrete else 1
    device = next(iter(starts.sites.values())).device
    absorbing_cols = [spec.concepts.index(c) for c, name in spec.labels.items() if name in spec.absorbing]
    src, act, dst, init = [], [], [], []
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.inference_mode(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for lo in range(0, rollouts, batch_size):
            idx = torch.arange(lo, min(lo + batch_size, rollouts), device=device) % n
            state = starts.at(idx)
            v0 = spec.valuate(ontology, state)
            init.append(v0)
            alive = ~_any(v0, absorbing_cols)
            policy.reset(len(idx))
            for _ in range(steps):
                if not alive.any():
                    break
                a = policy(state, torch.as_tensor(alive, device=device), generator)
                nxt = model.imagine(state, a[:, None], sample=sample).at((slice(None), 0))
                v1 = spec.valuate(ontology, nxt)
                src.append(v0[alive]), act.append(_action_index(a, discrete)[alive]), dst.append(v1[alive])
                alive = alive & ~_any(v1, absorbing_cols)
                state, v0 = nxt, v1
    k = len(spec.concepts)
    cat = lambda parts: np.concatenate(parts) if parts else np.zeros((0, k), np.int64)  # noqa: E731
    s, t, v_init = cat(src), cat(dst), cat(init)
    a = np.concatenate(act) if act else np.zeros(0, np.int64)
    valuations, inverse = np.unique(np.concatenate([s, t, v_init]), axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    si, ti, ii = inverse[: len(s)], inverse[len(s): len(s) + len(t)], inverse[len(s) + len(t):]
    S = len(valuations)
    labels = spec.label_masks(valuations)
    stop = np.zeros(S, dtype=bool)
    for name in spec.absorbing:
        stop |= labels[name]
    left = np.bincount(si, minlength=S) > 0
    labels[UNEXPLORED] = ~left & ~stop
    initial = np.bincount(ii, minlength=S) / len(ii)
    counts = CountModel.from_transitions(si, a, ti, S, num_actions, labels, initial)
    return Abstraction(spec, valuations, counts, getattr(policy, "name", type(policy).__name__), int(rollouts),
                       int(steps))


def _batch(state: LatentState) -> int:
    sizes = {int(v.shape[0]) for v in state.sites.values()}
    if len(sizes) != 1:
        raise VerifyError(f"start states need one shared batch dim across sites, got sizes {sorted(sizes)}")
    return sizes.pop()


def _any(valuations: np.ndarray, cols: list[int]) -> np.ndarray:
    """``bool[b]``: some column of ``cols`` reads 1 (an absorbing label holds)."""
    if not cols:
        return np.zeros(valuations.shape[0], dtype=bool)
    return (valuations[:, cols] == 1).any(axis=1)
