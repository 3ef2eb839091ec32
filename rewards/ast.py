"""Syntax tree of the reward language: small frozen dataclasses, plus :func:`render` and :func:`uses`.

Every node carries ``pos``, the 0-based column where it starts (for a :class:`Binary` node, the
column of its operator). ``pos`` is excluded from equality, so ``parse(render(tree)) == tree``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, NamedTuple, Union

Mode = Literal["value", "prob"]

ARITHMETIC: tuple[str, ...] = ("+", "-", "*", "/", "**")
COMPARISONS: tuple[str, ...] = ("<", "<=", ">", ">=", "==", "!=")
LOGICAL: tuple[str, ...] = ("and", "or")
FUNCTIONS: tuple[str, ...] = ("abs", "clip", "max", "min", "p")


class ConceptUse(NamedTuple):
    """A concept an expression reads and how: ``"value"`` (``in_lava``) or ``"prob"`` (``p(in_lava)``)."""

    name: str
    mode: Mode


@dataclass(frozen=True)
class Number:
    """A non-negative literal (``-2`` is ``Unary("-", Number(2))``)."""

    value: float
    pos: int = field(default=0, compare=False)


@dataclass(frozen=True)
class ClassName:
    """A quoted class name of a categorical concept: ``"left"``."""

    value: str
    pos: int = field(default=0, compare=False)


@dataclass(frozen=True)
class Name:
    """A reference to a concept's value: binary 0/1, scalar real, or categorical class index."""

    name: str
    pos: int = field(default=0, compare=False)


@dataclass(frozen=True)
class Prob:
    """``p(concept)`` (binary) or ``p(concept == "cls")`` (categorical): a probe's probability."""

    concept: str
    cls: str | None = None
    pos: int = field(default=0, compare=False)


@dataclass(frozen=True)
class Unary:
    """``-x`` or ``not x``."""

    op: Literal["-", "not"]
    operand: "Node"
    pos: int = field(default=0, compare=False)


@dataclass(frozen=True)
class Binary:
    """``left op right`` for arithmetic, comparison and logical operators."""

    op: str
    left: "Node"
    right: "Node"
    pos: int = field(default=0, compare=False)


@dataclass(frozen=True)
class Call:
    """``min(...)``, ``max(...)``, ``clip(x, lo, hi)`` or ``abs(x)``."""

    func: str
    args: tuple["Node", ...]
    pos: int = field(default=0, compare=False)


@dataclass(frozen=True)
class Constraint:
    """``never cond``, ``always cond``, or a bare condition (``kind="holds"``, the same as ``always``)."""

    kind: Literal["never", "always", "holds"]
    expr: "Node"
    pos: int = field(default=0, compare=False)


Node = Union[Number, ClassName, Name, Prob, Unary, Binary, Call]

# Binding powers (higher binds tighter), shared by the parser and the renderer.
PRECEDENCE: dict[str, int] = {
    "or": 10, "and": 20, "not": 30, **{c: 40 for c in COMPARISONS},
    "+": 50, "-": 50, "*": 60, "/": 60, "neg": 65, "**": 70,
}


def children(node: Node) -> tuple[Node, ...]:
    """The direct sub-expressions of ``node``."""
    if isinstance(node, Unary):
        return (node.operand,)
    if isinstance(node, Binary):
        return (node.left, node.right)
    if isinstance(node, Call):
        return node.args
    return ()


def uses(node: Node | Constraint) -> frozenset[ConceptUse]:
    """The concepts (with modes) that evaluating ``node`` reads."""
    if isinstance(node, Constraint):
        return uses(node.expr)
    if isinstance(node, Name):
        return frozenset({ConceptUse(node.name, "value")})
    if isinstance(node, Prob):
        return frozenset({ConceptUse(node.concept, "prob")})
    return frozenset().union(*(uses(c) for c in children(node)))


def _level(node: Node) -> int:
    """How tightly ``node``'s top operator binds (atoms bind tightest)."""
    if isinstance(node, Binary):
        return PRECEDENCE[node.op]
    if isinstance(node, Unary):
        return PRECEDENCE["neg" if node.op == "-" else "not"]
    return 100


def render(node: Node | Constraint) -> str:
    """Canonical text of ``node`` with only the parentheses the grammar needs."""
    if isinstance(node, Constraint):
        body = render(node.expr)
        return body if node.kind == "holds" else f"{node.kind} {body}"
    if isinstance(node, Number):
        v = float(node.value)
        return str(int(v)) if v.is_integer() and abs(v) < 1e15 else repr(v)
    if isinstance(node, ClassName):
        q = "'" if '"' in node.value else '"'
        return f"{q}{node.value}{q}"
    if isinstance(node, Name):
        return node.name
    if isinstance(node, Prob):
        return f"p({node.concept})" if node.cls is None else f"p({node.concept} == {render(ClassName(node.cls))})"
    if isinstance(node, Call):
        return f"{node.func}({', '.join(render(a) for a in node.args)})"
    if isinstance(node, Unary):
        level = _level(node)
        inner = render(node.operand)
        # `-` binds below `**` only: -(x) needs parentheses unless x is `**` or tighter.
        if _level(node.operand) < level:
            inner = f"({inner})"
        return f"-{inner}" if node.op == "-" else f"not {inner}"
    if isinstance(node, Binary):
        level = PRECEDENCE[node.op]
        left, right = render(node.left), render(node.right)
        ll, rl = _level(node.left), _level(node.right)
        if node.op == "**":  # right-associative; a unary minus may stand on the right (2 ** -1)
            negated = isinstance(node.right, Unary) and node.right.op == "-"
            wrap_left, wrap_right = ll <= level, rl < level and not negated
        elif node.op in COMPARISONS:  # comparisons do not chain
            wrap_left, wrap_right = ll <= level, rl <= level
        else:  # left-associative
            wrap_left, wrap_right = ll < level, rl <= level
        if wrap_left:
            left = f"({left})"
        if wrap_right:
            right = f"({right})"
        return f"{left} {node.op} {right}"
    raise TypeError(f"render: not a reward-language node: {node!r}")
