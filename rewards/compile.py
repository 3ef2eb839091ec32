"""Compilation of checked reward trees into batched torch functions.

A tree becomes a tree of closures once, at compile time; calling it evaluates torch ops on whole
batches (any leading shape ``[*b]``, e.g. ``[b h]``), on the device and dtype of the concept tensors,
with no Python loop over the batch. Concepts come from a :data:`Resolver` -- the ontology's probes,
or :func:`truth_resolver` for true concept values -- or a precomputed ``{(name, mode): tensor}`` dict.

Semantics (all exact on 0/1 inputs; smooth where a resolver returns soft values):
``not a = 1 - a``, ``a and b = a * b``, ``a or b = a + b - a * b``, comparisons give 0/1 (no gradient),
``clip(x, lo, hi) = min(max(x, lo), hi)``, ``/`` and ``**`` follow IEEE (``1 / 0 = inf``).
Constraint costs per step: ``never c -> c``; ``always c`` and a bare ``c -> 1 - c``. For a probability
(``never p(in_lava)``) the cost is the expected violation; for a condition it is the violation indicator.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from functools import reduce
from typing import Callable, Mapping, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from rewards.ast import Binary, Call, ClassName, ConceptUse, Constraint, Mode, Name, Node, Number, Prob, Unary, uses
from worlds.concepts import ConceptSchema

Resolver = Callable[[str, Mode], Tensor]
"""``resolve(name, mode) -> Tensor`` for a batch of states ``[*b]``:

* ``"value"``: binary -> 0/1 (bool, int or float; a probe's hard prediction), scalar -> float,
  categorical -> class index (int) ``[*b]``;
* ``"prob"``: binary -> P(true) ``[*b]``; categorical -> class probabilities ``[*b k]`` (k classes).

It is called once per :class:`~rewards.ast.ConceptUse` of the compiled expressions, and for no other.
"""

ConceptSource = Union[Resolver, Mapping[tuple[str, str], Tensor]]
"""A :data:`Resolver`, or its answers precomputed as ``{(name, mode): tensor}``."""

_Fn = Callable[["_Env"], Tensor]
_ARITH = {"+": torch.add, "-": torch.sub, "*": torch.mul, "/": torch.div, "**": torch.pow}
_COMPARE = {"<": torch.lt, "<=": torch.le, ">": torch.gt, ">=": torch.ge, "==": torch.eq, "!=": torch.ne}


@dataclass(frozen=True)
class RewardOutput:
    """Reward and constraint costs of a batch of states ``[*b]``."""

    reward: Tensor
    """``[*b]`` reward."""
    cost: Tensor
    """``[*b]`` sum of the constraint costs (zeros without constraints)."""
    costs: Mapping[str, Tensor]
    """Constraint text -> ``[*b]`` cost >= 0 of that constraint, in the spec's order."""


@dataclass(frozen=True)
class _Env:
    """Concept tensors of one call, converted: binary/scalar values and probabilities to ``dtype``."""

    tensors: Mapping[ConceptUse, Tensor]
    dtype: torch.dtype
    device: torch.device

    def const(self, v: float) -> Tensor:
        return torch.tensor(v, dtype=self.dtype, device=self.device)


def _build(node: Node, schema: ConceptSchema) -> _Fn:
    """A closure evaluating checked ``node`` on an :class:`_Env`."""
    if isinstance(node, Number):
        v = float(node.value)
        return lambda env: env.const(v)
    if isinstance(node, Name):
        use = ConceptUse(node.name, "value")
        return lambda env: env.tensors[use]
    if isinstance(node, Prob):
        use = ConceptUse(node.concept, "prob")
        if node.cls is None:
            return lambda env: env.tensors[use]
        k = schema[node.concept].classes.index(node.cls)
        return lambda env: env.tensors[use][..., k]
    if isinstance(node, Unary):
        f = _build(node.operand, schema)
        return (lambda env: torch.neg(f(env))) if node.op == "-" else (lambda env: 1 - f(env))
    if isinstance(node, Binary):
        return _binary(node, schema)
    if isinstance(node, Call):
        fs = [_build(a, schema) for a in node.args]
        if node.func == "abs":
            return lambda env: torch.abs(fs[0](env))
        if node.func == "clip":
            x, lo, hi = fs
            return lambda env: torch.minimum(torch.maximum(x(env), lo(env)), hi(env))
        op = torch.minimum if node.func == "min" else torch.maximum
        return lambda env: reduce(op, (f(env) for f in fs))
    raise TypeError(f"compile: unexpected node {node!r}; check the expression before compiling it")


def _binary(node: Binary, schema: ConceptSchema) -> _Fn:
    op = node.op
    if op in _COMPARE and (isinstance(node.left, ClassName) or isinstance(node.right, ClassName)):
        name, cls = (node.left, node.right) if isinstance(node.right, ClassName) else (node.right, node.left)
        use = ConceptUse(name.name, "value")  # type: ignore[union-attr]
        k = schema[use.name].classes.index(cls.value)  # type: ignore[union-attr]
        cmp = _COMPARE[op]
        return lambda env: cmp(env.tensors[use], k).to(env.dtype)
    f, g = _build(node.left, schema), _build(node.right, schema)
    if op in _ARITH:
        arith = _ARITH[op]
        return lambda env: arith(f(env), g(env))
    if op in _COMPARE:
        cmp = _COMPARE[op]
        return lambda env: cmp(f(env), g(env)).to(env.dtype)
    if op == "and":
        return lambda env: f(env) * g(env)
    if op == "or":
        return lambda env: _or(f(env), g(env))
    raise TypeError(f"compile: unexpected operator {op!r}")


def _or(a: Tensor, b: Tensor) -> Tensor:
    return a + b - a * b


def _cost(node: Constraint, schema: ConceptSchema) -> _Fn:
    f = _build(node.expr, schema)
    return f if node.kind == "never" else (lambda env: 1 - f(env))


@dataclass(frozen=True)
class CompiledReward:
    """A reward and its constraints as one batched torch function: ``compiled(source) -> RewardOutput``."""

    schema: ConceptSchema
    uses: frozenset[ConceptUse]
    """Every (concept, mode) the reward and constraints read; exactly these are resolved per call."""
    reward_fn: _Fn
    cost_fns: tuple[tuple[str, _Fn], ...]
    resolve: ConceptSource | None = None
    """Source used when the compiled reward is called without one."""

    def __call__(self, source: ConceptSource | None = None, *, dtype: torch.dtype | None = None,
                 batch_shape: Sequence[int] | None = None) -> RewardOutput:
        """Evaluate on a batch ``[*b]``.

        ``dtype`` defaults to the promoted float dtype of the concept tensors (the default dtype if none
        is floating); ``batch_shape`` (optional) is the shape ``[*b]`` the outputs are broadcast to --
        required only when the spec reads no concept at all.
        """
        source = self.resolve if source is None else source
        if source is None:
            raise ValueError("CompiledReward needs a concept source: call it with a resolver or a "
                             "{(name, mode): tensor} dict")
        if not self.uses and batch_shape is None:
            raise ValueError("this reward reads no concept, so its batch shape is unknown; pass batch_shape=")
        raw = {use: self._fetch(source, use) for use in sorted(self.uses)}
        env, shape = self._env(raw, dtype)
        if batch_shape is not None:
            shape = torch.Size(batch_shape)
        reward = torch.broadcast_to(self.reward_fn(env), shape)
        costs = {text: torch.broadcast_to(fn(env), shape) for text, fn in self.cost_fns}
        cost = reduce(operator.add, costs.values()) if costs else torch.zeros(shape, dtype=env.dtype, device=env.device)
        return RewardOutput(reward=reward, cost=cost, costs=costs)

    def _fetch(self, source: ConceptSource, use: ConceptUse) -> Tensor:
        if callable(source):
            t = source(use.name, use.mode)
        else:
            if use not in source:
                needed = sorted(tuple(u) for u in self.uses)
                raise ValueError(f"concept dict lacks {tuple(use)}; it needs keys {needed}")
            t = source[use]
        t = torch.as_tensor(t)
        concept = self.schema[use.name]
        if use.mode == "prob" and concept.kind == "categorical" and (t.ndim == 0 or t.shape[-1] != concept.num_classes):
            raise ValueError(f"p({use.name}) must be class probabilities of shape [*b {concept.num_classes}], "
                             f"got {tuple(t.shape)}")
        return t

    def _env(self, raw: dict[ConceptUse, Tensor], dtype: torch.dtype | None) -> tuple[_Env, torch.Size]:
        def batch_shape(use: ConceptUse, t: Tensor) -> torch.Size:
            categorical_prob = use.mode == "prob" and self.schema[use.name].kind == "categorical"
            return t.shape[:-1] if categorical_prob else t.shape

        shapes = {use: batch_shape(use, t) for use, t in raw.items()}
        try:
            shape = torch.broadcast_shapes(*shapes.values())
        except RuntimeError:
            raise ValueError(f"concept tensors must share a batch shape, got "
                             f"{ {f'{u.name}/{u.mode}': tuple(s) for u, s in shapes.items()} }") from None
        floats = [t.dtype for t in raw.values() if t.is_floating_point()]
        dtype = dtype or (reduce(torch.promote_types, floats) if floats else torch.get_default_dtype())
        device = next(iter(raw.values())).device if raw else torch.device("cpu")
        tensors = {use: t if (use.mode == "value" and self.schema[use.name].kind == "categorical") else t.to(dtype)
                   for use, t in raw.items()}
        return _Env(tensors, dtype, device), shape


def compile_reward(reward: Node, constraints: Sequence[tuple[str, Constraint]], schema: ConceptSchema,
                   resolve: ConceptSource | None = None) -> CompiledReward:
    """Compile a checked reward tree and ``(text, constraint tree)`` pairs (see :meth:`RewardSpec.compile`)."""
    all_uses = uses(reward).union(*(uses(c) for _, c in constraints))
    return CompiledReward(schema=schema, uses=all_uses, reward_fn=_build(reward, schema),
                          cost_fns=tuple((text, _cost(c, schema)) for text, c in constraints), resolve=resolve)


def truth_resolver(schema: ConceptSchema, values: Mapping[str, np.ndarray | Tensor]) -> Resolver:
    """A :data:`Resolver` over true concept values ``{name: [*b]}``: ``p(x)`` of a true value is its indicator."""

    def resolve(name: str, mode: Mode) -> Tensor:
        if name not in values:
            raise ValueError(f"true concept values lack {name!r}; got {sorted(values)}")
        concept = schema[name]
        v = values[name]
        concept.check(v.detach().cpu().numpy() if isinstance(v, Tensor) else np.asarray(v))
        t = torch.as_tensor(v)
        if mode == "value":
            return t
        if concept.kind == "categorical":
            return torch.nn.functional.one_hot(t.long(), concept.num_classes).to(torch.float64)
        return t.to(torch.float64)

    return resolve
