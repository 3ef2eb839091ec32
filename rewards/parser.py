"""Parser of the reward language: text -> :mod:`rewards.ast` tree.

Grammar (EBNF; lowest precedence first; ``{x}`` = zero or more, ``[x]`` = optional)::

    constraint  = [ "never" | "always" ] expr ;          (* a bare expr must hold, like always *)
    expr        = or_expr ;
    or_expr     = and_expr { "or" and_expr } ;
    and_expr    = not_expr { "and" not_expr } ;
    not_expr    = "not" not_expr | comparison ;
    comparison  = additive [ ("<" | "<=" | ">" | ">=" | "==" | "!=") additive ] ;   (* no chains *)
    additive    = term { ("+" | "-") term } ;              (* left-associative *)
    term        = unary { ("*" | "/") unary } ;            (* left-associative *)
    unary       = "-" unary | "+" unary | power ;
    power       = atom [ "**" unary ] ;                    (* right-associative: -2 ** 2 == -4 *)
    atom        = NUMBER | CLASS | "(" expr ")"
                | "p" "(" NAME [ "==" CLASS ] ")"          (* probe probability *)
                | FUNC "(" expr { "," expr } ")"           (* abs/1, clip/3, min/2+, max/2+ *)
                | NAME ;                                   (* a concept's value *)
    NUMBER      = digits [ "." digits ] [ ("e" | "E") [ "+" | "-" ] digits ] | "." digits ... ;
    CLASS       = '"' chars '"' | "'" chars "'" ;          (* a categorical concept's class name *)
    NAME        = identifier, not one of: and or not never always ;

Categorical concepts compare to *quoted* class names (``room == "left"``, ``p(room == "left")``):
a bare ``left`` is always a concept name, so class names can never shadow concepts.
Precedence and associativity follow Python (``not a == b`` is ``not (a == b)``, ``-2 ** 2`` is
``-(2 ** 2)``), except that comparisons do not chain: ``a < b < c`` is an error.

The parser is a hand-written Pratt parser over :func:`rewards.lexer.tokenize`. User text is never
handed to ``eval``/``exec``/``compile``/``ast`` (that would run or accept arbitrary Python), and no
parsing library is a dependency: the grammar is small enough that a direct parser is shorter than
a grammar file and gives exact error columns. Nesting is capped (:data:`MAX_DEPTH`,
:data:`MAX_TREE_DEPTH`) so deep input raises :class:`RewardError` rather than ``RecursionError``.
"""

from __future__ import annotations

from rewards.ast import (ARITHMETIC, COMPARISONS, FUNCTIONS, PRECEDENCE, Binary, Call, ClassName, Constraint,
                         Name, Node, Number, Prob, Unary)
from rewards.errors import RewardError, location
from rewards.lexer import Token, tokenize

MAX_DEPTH = 64
"""Deepest nesting of parentheses, calls and unary or right-hand operands, far above any sensible reward."""

MAX_TREE_DEPTH = 256
"""Deepest syntax tree accepted (a sum of 256 terms), so checking and evaluation never hit Python's
recursion limit."""

_INFIX = {op: PRECEDENCE[op] for op in (*ARITHMETIC, *COMPARISONS, "and", "or")}
_ARITY = {"abs": (1, 1), "clip": (3, 3), "min": (2, None), "max": (2, None)}


def _describe(tok: Token) -> str:
    if tok.kind == "end":
        return "end of input"
    if tok.kind == "str":
        return f"class name {tok.text!r}"
    return f"{tok.text!r}"


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = tokenize(text)
        self.i = 0
        self.depth = 0

    # -- token helpers -------------------------------------------------------------------------
    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def advance(self) -> Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def error(self, message: str, tok: Token | int, hint: str = "") -> RewardError:
        pos = tok if isinstance(tok, int) else tok.pos
        return RewardError(message, self.text, pos, hint)

    def expect(self, op: str, opened: Token | None = None) -> Token:
        if self.tok.kind == "op" and self.tok.text == op:
            return self.advance()
        if opened is not None and op == ")":
            raise self.error(f"expected ')' to close the '(' at {location(self.text, opened.pos)}, "
                             f"got {_describe(self.tok)}", self.tok)
        raise self.error(f"expected {op!r}, got {_describe(self.tok)}", self.tok)

    def finish(self) -> None:
        if self.tok.kind != "end":
            hint = "remove the extra ')'" if self.tok.text == ")" else "join expressions with an operator"
            raise self.error(f"unexpected {_describe(self.tok)} after a complete expression", self.tok, hint)

    # -- expressions ---------------------------------------------------------------------------
    def expr(self, min_bp: int = 0) -> tuple[Node, int]:
        """Parse an expression whose operators bind tighter than ``min_bp``; return (node, tree depth)."""
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.error(f"expression nested too deeply (more than {MAX_DEPTH} levels)", self.tok,
                             "split it into simpler terms")
        try:
            left, depth = self.prefix(min_bp)
            while self.tok.kind in ("op", "kw") and self.tok.text in _INFIX and _INFIX[self.tok.text] > min_bp:
                op_tok = self.advance()
                bp = _INFIX[op_tok.text]
                # `**` is right-associative: its right side may hold another `**` (and a unary minus).
                right, rdepth = self.expr(bp - 1 if op_tok.text == "**" else bp)
                left, depth = Binary(op_tok.text, left, right, op_tok.pos), 1 + max(depth, rdepth)
                if depth > MAX_TREE_DEPTH:
                    raise self.error(f"expression nested too deeply (more than {MAX_TREE_DEPTH} levels)", op_tok,
                                     "split it into simpler terms")
                if op_tok.text in COMPARISONS and self.tok.text in COMPARISONS and self.tok.kind == "op":
                    raise self.error("comparisons do not chain", self.tok, "write (a < b) and (b < c)")
            return left, depth
        finally:
            self.depth -= 1

    def prefix(self, min_bp: int = 0) -> tuple[Node, int]:
        """An operand whose operators bind tighter than ``min_bp`` (the binding power of the operator before it)."""
        tok = self.advance()
        if tok.kind == "num":
            return Number(tok.value, tok.pos), 1
        if tok.kind == "str":
            return ClassName(tok.text, tok.pos), 1
        if tok.kind == "kw" and tok.text == "not":
            # As in the grammar above (and Python): `not` heads a not_expr, which cannot be the operand of an
            # arithmetic operator, a comparison or a unary minus. Accepting it there would bind its operand
            # loosely in the middle of tighter operators: `2 * not a == b` would be `2 * (not (a == b))`.
            if min_bp > PRECEDENCE["not"]:
                raise self.error("'not' cannot stand inside arithmetic or a comparison", tok,
                                 "put the negation in parentheses, e.g. 1 - (not in_lava)")
            operand, d = self.expr(PRECEDENCE["not"])
            return Unary("not", operand, tok.pos), d + 1
        if tok.kind == "op" and tok.text in ("-", "+"):
            operand, d = self.expr(PRECEDENCE["neg"])
            return (Unary("-", operand, tok.pos), d + 1) if tok.text == "-" else (operand, d)
        if tok.kind == "op" and tok.text == "(":
            inner, d = self.expr()
            self.expect(")", opened=tok)
            return inner, d
        if tok.kind == "name":
            if self.tok.kind == "op" and self.tok.text == "(":
                return self.call(tok)
            return Name(tok.text, tok.pos), 1
        if tok.kind == "end":
            what = "empty expression" if tok.pos == 0 or not self.text.strip() else "expression ended early"
            raise self.error(f"{what}: expected a number, concept or '('", tok)
        if tok.kind == "kw":
            hint = "never/always may only start a constraint" if tok.text in ("never", "always") else \
                f"{tok.text!r} is an operator and cannot be a concept name"
            raise self.error(f"expected a number, concept or '(', got keyword {tok.text!r}", tok, hint)
        raise self.error(f"expected a number, concept or '(', got {_describe(tok)}", tok)

    def call(self, name: Token) -> tuple[Node, int]:
        if name.text not in FUNCTIONS:
            raise self.error(f"unknown function {name.text!r}", name, f"functions are: {', '.join(FUNCTIONS)}")
        opened = self.expect("(")
        if name.text == "p":
            return self.prob(name, opened)
        args: list[Node] = []
        depth = 0
        if not (self.tok.kind == "op" and self.tok.text == ")"):
            while True:
                arg, d = self.expr()
                args.append(arg)
                depth = max(depth, d)
                if not (self.tok.kind == "op" and self.tok.text == ","):
                    break
                self.advance()
        self.expect(")", opened=opened)
        lo, hi = _ARITY[name.text]
        if len(args) < lo or (hi is not None and len(args) > hi):
            want = f"{lo}" if lo == hi else f"at least {lo}"
            usage = {"clip": "clip(x, lo, hi)", "abs": "abs(x)"}.get(name.text, f"{name.text}(a, b, ...)")
            raise self.error(f"{name.text}() takes {want} argument{'s' if want != '1' else ''}, got {len(args)}",
                             name, f"write {usage}")
        return Call(name.text, tuple(args), name.pos), depth + 1

    def prob(self, name: Token, opened: Token) -> tuple[Node, int]:
        hint = 'write p(concept) for a binary concept or p(concept == "class") for a categorical one'
        concept = self.advance()
        if concept.kind != "name":
            raise self.error(f"p() takes a concept name, got {_describe(concept)}", concept, hint)
        cls: str | None = None
        if self.tok.kind == "op" and self.tok.text == "==":
            self.advance()
            cls_tok = self.advance()
            if cls_tok.kind != "str":
                raise self.error(f"p({concept.text} == ...) takes a quoted class name, got {_describe(cls_tok)}",
                                 cls_tok, hint)
            cls = cls_tok.text
        elif not (self.tok.kind == "op" and self.tok.text == ")"):
            raise self.error(f"p() takes a concept name, not an expression; got {_describe(self.tok)}", self.tok,
                             hint)
        self.expect(")", opened=opened)
        return Prob(concept.text, cls, name.pos), 1


def parse_expression(text: str) -> Node:
    """Parse a reward expression, e.g. ``"at_goal - 10 * in_lava - 0.01"``; raise :class:`RewardError`."""
    p = _Parser(text)
    node, _ = p.expr()
    p.finish()
    return node


def parse_constraint(text: str) -> Constraint:
    """Parse a constraint: ``never in_lava``, ``always dist_to_hazard > 0.1``, ``p(in_lava) < 0.05``."""
    p = _Parser(text)
    kind = "holds"
    start = p.tok.pos
    if p.tok.kind == "kw" and p.tok.text in ("never", "always"):
        kind = p.advance().text
    node, _ = p.expr()
    p.finish()
    return Constraint(kind, node, start)  # type: ignore[arg-type]
