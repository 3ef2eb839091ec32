"""``RewardSpec``: a reward and its safety constraints, written as text over a world's concept names.

::

    spec = RewardSpec("at_goal - 10 * in_lava - 0.01", constraints=("never in_lava", "p(in_lava) < 0.05"))
    spec.check(world.schema)                         # RewardError on unknown names or ill-typed terms
    compiled = spec.compile(world.schema)            # batched torch function
    out = compiled(ontology_resolver)                # RewardOutput(reward [*b], cost [*b], costs)

The language is documented in :mod:`rewards.parser` (grammar), :mod:`rewards.check` (types) and
:mod:`rewards.compile` (semantics and the resolver protocol).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch
from torch import Tensor

from rewards.ast import COMPARISONS, LOGICAL, Binary, ConceptUse, Constraint, Node, Unary, render, uses
from rewards.check import check_constraint, check_expression
from rewards.compile import CompiledReward, ConceptSource, RewardOutput, compile_reward, truth_resolver
from rewards.errors import RewardError
from rewards.parser import parse_constraint, parse_expression
from worlds.concepts import ConceptSchema

_KEYS = ("constraints", "name", "reward")


@dataclass(frozen=True)
class RewardSpec:
    """A reward expression and constraint expressions; syntax is validated on construction."""

    reward: str
    """Reward expression, e.g. ``"at_goal - 10 * in_lava - 0.01"``."""
    constraints: tuple[str, ...] = ()
    """Constraints, e.g. ``("never in_lava", "always dist_to_hazard > 0.1", "p(in_lava) < 0.05")``."""
    name: str = ""
    """Optional label for logs and reports."""
    _reward_tree: Node = field(init=False, repr=False, compare=False)
    _constraint_trees: tuple[Constraint, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.reward, str):
            raise RewardError(f"reward must be a string expression, got {type(self.reward).__name__}")
        given = self.constraints
        items = tuple(given) if isinstance(given, Iterable) and not isinstance(given, (str, bytes, Mapping)) else None
        if items is None or not all(isinstance(c, str) for c in items):
            got = type(given).__name__ if items is None else repr(given)
            raise RewardError(f"constraints must be a list of strings, got {got}",
                              hint='e.g. constraints=("never in_lava",), or () for none')
        if not isinstance(self.name, str):
            raise RewardError(f"name must be a string, got {type(self.name).__name__}")
        object.__setattr__(self, "constraints", items)
        repeated = sorted({c for c in self.constraints if self.constraints.count(c) > 1})
        if repeated:
            raise RewardError(f"constraints must be distinct, repeated: {repeated}")
        try:
            tree = parse_expression(self.reward)
        except RewardError as e:
            raise e.located(self._where()) from None
        object.__setattr__(self, "_reward_tree", tree)
        trees = []
        for i, text in enumerate(self.constraints):
            try:
                trees.append(parse_constraint(text))
            except RewardError as e:
                raise e.located(self._where(i)) from None
        object.__setattr__(self, "_constraint_trees", tuple(trees))

    def _where(self, i: int | None = None) -> str:
        where = "reward" if i is None else f"constraint {i + 1}"
        return f"{self.name} {where}" if self.name else where

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RewardSpec":
        """From a plain dict (a YAML config): ``{"reward": "...", "constraints": [...], "name": "..."}``."""
        if not isinstance(d, Mapping):
            raise RewardError(f"a reward spec must be a mapping with keys {', '.join(_KEYS)}, got {type(d).__name__}")
        unknown = sorted(str(k) for k in d if k not in _KEYS)
        if unknown:
            raise RewardError(f"unknown key(s) {unknown} in reward spec", hint=f"allowed keys: {', '.join(_KEYS)}")
        if "reward" not in d:
            raise RewardError("reward spec lacks the key 'reward'", hint='add e.g. reward: "at_goal - 0.01"')
        constraints = d.get("constraints") or ()
        if not isinstance(constraints, (list, tuple)):
            raise RewardError(f"constraints must be a list of strings, got {type(constraints).__name__}",
                              hint='e.g. constraints: ["never in_lava"]')
        return cls(reward=d["reward"], constraints=tuple(constraints), name=d.get("name") or "")

    def to_dict(self) -> dict[str, Any]:
        """The plain dict :meth:`from_dict` reads."""
        return {"reward": self.reward, "constraints": list(self.constraints), "name": self.name}

    def concepts(self) -> frozenset[ConceptUse]:
        """Every ``(name, mode)`` the reward and constraints read: ``mode`` is ``"value"`` or ``"prob"``."""
        return uses(self._reward_tree).union(*(uses(c) for c in self._constraint_trees))

    def probability_costs(self) -> tuple[str, ...]:
        """The constraints whose per-step cost is an expected violation (a probability, e.g. ``never p(in_lava)``)
        rather than a 0/1 violation indicator (``never in_lava``, ``p(in_lava) < 0.05``): a body that reads
        ``p(...)`` and is not itself a condition (comparison, ``and``/``or``/``not``). Syntax only, no schema."""
        def condition(node: Node) -> bool:
            return ((isinstance(node, Binary) and node.op in COMPARISONS + LOGICAL)
                    or (isinstance(node, Unary) and node.op == "not"))
        return tuple(text for text, tree in zip(self.constraints, self._constraint_trees)
                     if not condition(tree.expr) and any(u.mode == "prob" for u in uses(tree)))

    def canonical(self) -> "RewardSpec":
        """The same spec with every expression rendered canonically (minimal parentheses)."""
        return RewardSpec(render(self._reward_tree), tuple(render(c) for c in self._constraint_trees), self.name)

    def check(self, schema: ConceptSchema) -> None:
        """Raise :class:`RewardError` if an expression names an unknown concept or is ill-typed for ``schema``."""
        try:
            check_expression(self._reward_tree, schema, self.reward)
        except RewardError as e:
            raise e.located(self._where()) from None
        for i, (text, tree) in enumerate(zip(self.constraints, self._constraint_trees)):
            try:
                check_constraint(tree, schema, text)
            except RewardError as e:
                raise e.located(self._where(i)) from None

    def compile(self, schema: ConceptSchema, resolve: ConceptSource | None = None) -> CompiledReward:
        """Check against ``schema`` and compile; ``resolve`` (optional) is the default concept source."""
        self.check(schema)
        return compile_reward(self._reward_tree, tuple(zip(self.constraints, self._constraint_trees)), schema,
                              resolve)

    def true_reward(self, schema: ConceptSchema, values: Mapping[str, np.ndarray | Tensor],
                    dtype: torch.dtype = torch.float64) -> RewardOutput:
        """Reward and costs on TRUE concept values ``{name: [*b]}`` (evaluation only; numpy or torch).

        ``p(x)`` on a true value is its indicator; only the concepts the spec reads must be present. A spec
        that reads no concept (a constant, e.g. ``-0.01``) takes its batch shape from the values given.
        """
        return self.true_reward_fn(schema, dtype)(values)

    def true_reward_fn(self, schema: ConceptSchema, dtype: torch.dtype = torch.float64
                       ) -> Callable[[Mapping[str, np.ndarray | Tensor]], RewardOutput]:
        """:meth:`true_reward` compiled once, for a caller that evaluates it step after step (the closed loop:
        compiling on every call cost ~0.5 ms per step)."""
        compiled = self.compile(schema)

        def reward(values: Mapping[str, np.ndarray | Tensor]) -> RewardOutput:
            batch_shape = None
            if not compiled.uses:
                if not values:
                    raise RewardError("a reward that reads no concept needs at least one true concept value to take "
                                      "its batch shape from", hint="pass e.g. world.concepts()")
                batch_shape = tuple(np.shape(next(iter(values.values()))))
            return compiled(truth_resolver(schema, values), dtype=dtype, batch_shape=batch_shape)

        return reward
