"""Type checking of reward trees against a world's :class:`~worlds.concepts.ConceptSchema`.

Types form a small lattice of value ranges, ``bool`` (0/1) < ``prob`` ([0, 1]) < ``num`` (reals),
plus ``cat`` (a categorical concept's class index) and ``class`` (a quoted class name):

* binary concept -> bool; scalar concept -> num; categorical concept -> cat (usable only in
  ``== / !=`` against one of its class names, or another categorical concept with the same classes);
* ``p(binary)`` and ``p(categorical == "cls")`` -> prob;
* arithmetic (``+ - * / **``, unary ``-``) takes bool/prob/num and gives num;
* comparisons give bool; ``<``-style comparisons take bool/prob/num only;
* ``and`` / ``or`` / ``not`` take bool only (compare a probability first: ``p(x) > 0.5``);
* ``min`` / ``max`` / ``abs`` keep the widest argument type; ``clip`` gives num;
* a reward is bool/prob/num; ``never`` / ``always`` take bool or prob (prob: an expected cost);
  a bare constraint must be a bool condition.
"""

from __future__ import annotations

from typing import Literal

from rewards.ast import (ARITHMETIC, COMPARISONS, LOGICAL, Binary, Call, ClassName, Constraint, Name, Node, Number,
                         Prob, Unary)
from rewards.errors import RewardError
from worlds.concepts import Concept, ConceptSchema

Type = Literal["bool", "prob", "num", "cat", "class"]
_NUMERIC = ("bool", "prob", "num")
_ORDER = {"bool": 0, "prob": 1, "num": 2}


def _join(types: list[Type]) -> Type:
    """The widest of numeric types (``bool`` < ``prob`` < ``num``)."""
    return max(types, key=_ORDER.__getitem__)


class _Checker:
    def __init__(self, schema: ConceptSchema, text: str) -> None:
        self.schema, self.text = schema, text

    def error(self, message: str, node: Node | Constraint, hint: str = "") -> RewardError:
        return RewardError(message, self.text, node.pos, hint)

    def describe(self, node: Node, ty: Type) -> str:
        """How to name ``node`` in a message: 'scalar concept 'dist'', 'a probability p(...)' ..."""
        if isinstance(node, Name) and node.name in self.schema:
            return f"{self.schema[node.name].kind} concept {node.name!r}"
        if isinstance(node, ClassName):
            return f"class name {node.value!r}"
        return {"bool": "a condition (0/1)", "prob": "a probability", "num": "a number",
                "cat": "a categorical value", "class": "a class name"}[ty]

    def concept(self, name: str, node: Node) -> Concept:
        if name in self.schema:
            return self.schema[name]
        owners = [c.name for c in self.schema if c.kind == "categorical" and name in c.classes]
        hint = (f'class names are quoted and compared to their concept: {owners[0]} == "{name}"' if owners
                else f"this world's concepts are: {', '.join(self.schema.names)}")
        raise self.error(f"unknown concept {name!r}", node, hint)

    def numeric(self, node: Node, what: str) -> Type:
        """Check ``node`` and require a bool/prob/num value as operand of ``what``."""
        ty = self.check(node)
        if ty == "cat":
            raise self.error(f"{what} needs a number, got {self.describe(node, ty)}", node,
                             f'compare it to a class name, e.g. {getattr(node, "name", "x")} == '
                             f'"{self.first_class(node)}"')
        if ty == "class":
            raise self.error(f"{what} needs a number, got class name {node.value!r}", node,  # type: ignore[union-attr]
                             "a class name can only be compared to its categorical concept with == or !=")
        return ty

    def first_class(self, node: Node) -> str:
        return self.schema[node.name].classes[0] if isinstance(node, Name) else "cls"

    def check(self, node: Node) -> Type:
        if isinstance(node, Number):
            return "num"
        if isinstance(node, ClassName):
            return "class"
        if isinstance(node, Name):
            kind = self.concept(node.name, node).kind
            return {"binary": "bool", "scalar": "num", "categorical": "cat"}[kind]  # type: ignore[return-value]
        if isinstance(node, Prob):
            return self.prob(node)
        if isinstance(node, Unary):
            if node.op == "-":
                self.numeric(node.operand, "unary '-'")
                return "num"
            return self.logical(node.operand, "not")
        if isinstance(node, Binary):
            if node.op in ARITHMETIC:
                self.numeric(node.left, f"{node.op!r}")
                self.numeric(node.right, f"{node.op!r}")
                return "num"
            if node.op in LOGICAL:
                self.logical(node.left, node.op)
                return self.logical(node.right, node.op)
            if node.op in COMPARISONS:
                return self.compare(node)
        if isinstance(node, Call):
            types = [self.numeric(a, f"{node.func}()") for a in node.args]
            return "num" if node.func == "clip" else _join(types)
        raise TypeError(f"check: not a reward-language node: {node!r}")

    def prob(self, node: Prob) -> Type:
        c = self.concept(node.concept, node)
        if c.kind == "scalar":
            raise self.error(f"p() needs a binary or categorical concept, got scalar concept {c.name!r}", node,
                             f"compare the value instead, e.g. {c.name} > {c.low:g}")
        if c.kind == "binary" and node.cls is not None:
            raise self.error(f"binary concept {c.name!r} has no classes", node, f"write p({c.name})")
        if c.kind == "categorical":
            if node.cls is None:
                raise self.error(f"p() of categorical concept {c.name!r} needs a class", node,
                                 f'write p({c.name} == "{c.classes[0]}"); classes are: {", ".join(c.classes)}')
            if node.cls not in c.classes:
                raise self.error(f"categorical concept {c.name!r} has no class {node.cls!r}", node,
                                 f"classes are: {', '.join(c.classes)}")
        return "prob"

    def logical(self, node: Node, op: str) -> Type:
        ty = self.check(node)
        if ty != "bool":
            hint = ("compare it first, e.g. p(x) > 0.5" if ty == "prob"
                    else f"compare it first, e.g. {getattr(node, 'name', 'x')} > 0" if ty == "num"
                    else "compare it to a class name first")
            raise self.error(f"{op!r} needs a binary condition, got {self.describe(node, ty)}", node, hint)
        return "bool"

    def compare(self, node: Binary) -> Type:
        lt, rt = self.check(node.left), self.check(node.right)
        if lt in _NUMERIC and rt in _NUMERIC:
            return "bool"
        if "class" in (lt, rt) and "cat" in (lt, rt) and node.op in ("==", "!="):
            name, cls = (node.left, node.right) if lt == "cat" else (node.right, node.left)
            assert isinstance(name, Name) and isinstance(cls, ClassName)
            concept = self.schema[name.name]
            if cls.value not in concept.classes:
                raise self.error(f"categorical concept {concept.name!r} has no class {cls.value!r}", cls,
                                 f"classes are: {', '.join(concept.classes)}")
            return "bool"
        if lt == rt == "cat" and node.op in ("==", "!="):
            a, b = self.schema[node.left.name], self.schema[node.right.name]  # type: ignore[union-attr]
            if a.classes != b.classes:
                raise self.error(f"categorical concepts {a.name!r} and {b.name!r} have different classes", node)
            return "bool"
        bad = node.left if lt in ("cat", "class") else node.right
        bad_ty = lt if lt in ("cat", "class") else rt
        if node.op not in ("==", "!="):
            raise self.error(f"{node.op!r} needs numbers, got {self.describe(bad, bad_ty)}", bad,
                             "categories have no order; compare with == or != to a class name")
        raise self.error(f"cannot compare {self.describe(node.left, lt)} with {self.describe(node.right, rt)}", bad,
                         'compare a categorical concept to one of its quoted class names, e.g. room == "left"')


def check_expression(node: Node, schema: ConceptSchema, text: str = "") -> Type:
    """Type of reward expression ``node`` (bool/prob/num); raise :class:`RewardError` if it is ill-typed."""
    checker = _Checker(schema, text)
    ty = checker.numeric(node, "a reward")
    return ty


def check_constraint(node: Constraint, schema: ConceptSchema, text: str = "") -> Type:
    """Type of the condition of constraint ``node``; raise :class:`RewardError` if it is ill-typed."""
    checker = _Checker(schema, text)
    ty = checker.numeric(node.expr, f"{'a constraint' if node.kind == 'holds' else repr(node.kind)}")
    if node.kind == "holds" and ty != "bool":
        raise checker.error(f"a constraint must be a condition, got {checker.describe(node.expr, ty)}", node.expr,
                            "write never/always before it, or compare it, e.g. p(in_lava) < 0.05")
    if ty == "num":
        raise checker.error(f"{node.kind!r} needs a condition or a probability, got "
                            f"{checker.describe(node.expr, ty)}", node.expr, f"compare it, e.g. {node.kind} x > 0.1")
    return ty
