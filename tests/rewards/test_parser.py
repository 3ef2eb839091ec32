"""Grammar, precedence and associativity of the reward language, and every syntax error with its column."""

from __future__ import annotations

import pytest
import torch

from rewards.ast import Binary, Call, ClassName, Constraint, Name, Number, Prob, Unary, render
from rewards.errors import RewardError
from rewards.lexer import tokenize
from rewards.parser import MAX_DEPTH, parse_constraint, parse_expression
from rewards.spec import RewardSpec
from worlds.concepts import ConceptSchema

a, b, c = Name("a"), Name("b"), Name("c")


def value(text: str) -> float:
    """Evaluate a constant expression through the whole pipeline (parse, check, compile)."""
    return RewardSpec(text).compile(ConceptSchema(()))({}, dtype=torch.float64, batch_shape=()).reward.item()


@pytest.mark.parametrize("text, expected", [
    ("1 + 2 * 3 == 7", 1.0), ("(1 + 2) * 3", 9.0), ("1 - 2 - 3", -4.0), ("8 / 4 / 2", 1.0),
    ("2 ** 3 ** 2", 512.0), ("-2 ** 2", -4.0), ("(-2) ** 2", 4.0), ("2 ** -1", 0.5), ("2 ** -1 * 3", 1.5),
    ("--3", 3.0), ("+3", 3.0), ("1e-3 * 1000", 1.0), (".5 + 1.", 1.5), ("2E+2", 200.0),
    ("1 + 1 > 1", 1.0), ("3 - 1 == 1 + 1", 1.0), ("1 != 1", 0.0), ("2 <= 2", 1.0), ("2 < 2", 0.0),
    ("not 1 > 2", 1.0), ("not 1 > 2 and 1 > 2", 0.0), ("1 > 2 and 1 > 2 or 2 > 1", 1.0),
    ("1 > 2 or 2 > 1 and 1 > 2", 0.0), ("not not 2 > 1", 1.0),
    ("min(3, 1, 2) + max(1, 5)", 6.0), ("clip(5, 0, 2) + clip(-5, -1, 2)", 1.0), ("abs(-2.5)", 2.5),
    ("-min(1, 2) * 2", -2.0),
])
def test_constant_expressions_evaluate_like_python_precedence(text, expected):
    assert value(text) == pytest.approx(expected)


def test_tree_shapes():
    assert parse_expression("a - b - c") == Binary("-", Binary("-", a, b), c)
    assert parse_expression("a ** b ** c") == Binary("**", a, Binary("**", b, c))
    assert parse_expression("-a ** b") == Unary("-", Binary("**", a, b))
    assert parse_expression("-a * b") == Binary("*", Unary("-", a), b)
    assert parse_expression("a + b < c * 2") == Binary("<", Binary("+", a, b), Binary("*", c, Number(2)))
    assert parse_expression("not a == b") == Unary("not", Binary("==", a, b))
    assert parse_expression("a or b and not c") == Binary("or", a, Binary("and", b, Unary("not", c)))
    assert parse_expression("room == 'left'") == Binary("==", Name("room"), ClassName("left"))
    assert parse_expression('p(x) + p(room == "left")') == Binary("+", Prob("x"), Prob("room", "left"))
    assert parse_expression("min(a, b, 1)") == Call("min", (a, b, Number(1)))
    assert parse_expression("((a))") == a
    assert parse_expression("  a\n+\tb ") == Binary("+", a, b)


def test_positions_point_at_tokens():
    tree = parse_expression("at_goal - 10 * in_lava")
    assert (tree.pos, tree.left.pos, tree.right.pos, tree.right.right.pos) == (8, 0, 13, 15)
    assert [t.pos for t in tokenize("p(x) <= 0.05")] == [0, 1, 2, 3, 5, 8, 12]


def test_constraints():
    assert parse_constraint("never in_lava") == Constraint("never", Name("in_lava"))
    assert parse_constraint("always not in_lava") == Constraint("always", Unary("not", Name("in_lava")))
    assert parse_constraint("p(in_lava) < 0.05") == Constraint("holds", Binary("<", Prob("in_lava"), Number(0.05)))
    assert render(parse_constraint("always  d>0.1")) == "always d > 0.1"


def test_render_uses_minimal_parentheses():
    for text in ["a - (b - c)", "(a - b) - c", "-(a * b)", "(-a) ** b", "a ** -b", "not (a and b)", "(not a) and b",
                 "(a < b) == c", "a * (b + c)", "-(not a)"]:
        tree = parse_expression(text)
        assert parse_expression(render(tree)) == tree
    assert render(parse_expression("(a - b) - c")) == "a - b - c"
    assert render(parse_expression("a - (b - c)")) == "a - (b - c)"
    assert render(parse_expression("(-a) ** b")) == "(-a) ** b"
    assert render(parse_expression("2.50 * x")) == "2.5 * x"


@pytest.mark.parametrize("text, column, needle", [
    ("", 0, "empty expression"),
    ("   ", 3, "empty expression"),
    ("a +", 3, "expression ended early"),
    ("(a + b", 6, "expected ')' to close the '(' at column 0"),
    ("min(a, b", 8, "expected ')' to close the '(' at column 3"),
    ("a + b)", 5, "unexpected ')' after a complete expression"),
    ("a b", 2, "unexpected 'b' after a complete expression"),
    ("a = b", 2, "unexpected character '='"),
    ("a && b", 2, "use 'and'"),
    ("a @ b", 2, "unexpected character '@'"),
    ("a < b < c", 6, "comparisons do not chain"),
    ("1e", 0, "exponent needs digits"),
    ("2x", 0, "malformed number '2x'"),
    ("1.2.3", 0, "malformed number"),
    ("1e999", 0, "too large"),
    ("room == 'left", 8, "unterminated class name"),
    ("foo(1)", 0, "unknown function 'foo'"),
    ("clip(a, b)", 0, "clip() takes 3 arguments, got 2"),
    ("abs()", 0, "abs() takes 1 argument, got 0"),
    ("abs(a, b)", 0, "abs() takes 1 argument, got 2"),
    ("x + min(a)", 4, "min() takes at least 2 arguments, got 1"),
    ("p(1)", 2, "p() takes a concept name"),
    ("p(a + b)", 4, "not an expression"),
    ("p(a == b)", 7, "takes a quoted class name"),
    ("p()", 2, "p() takes a concept name"),
    ("never a", 0, "keyword 'never'"),
    ("a and", 5, "expression ended early"),
    ("not", 3, "expression ended early"),
    ("(", 1, "expression ended early"),
    (")", 0, "got ')'"),
    (",", 0, "got ','"),
    ("a, b", 1, "unexpected ','"),
    ("(" * (MAX_DEPTH + 5) + "a" + ")" * (MAX_DEPTH + 5), MAX_DEPTH, "nested too deeply"),
    ("-" * 200 + "a", MAX_DEPTH, "nested too deeply"),
    ("+".join(["a"] * 300), 511, "nested too deeply"),
])
def test_syntax_errors_name_the_column(text, column, needle):
    with pytest.raises(RewardError) as info:
        parse_expression(text)
    err = info.value
    assert err.position == column
    assert needle in str(err)
    assert f"at column {column}" in str(err)
    assert "\n" not in str(err)


def test_constraint_syntax_errors():
    with pytest.raises(RewardError, match="at column 5"):
        parse_constraint("never")
    with pytest.raises(RewardError, match="keyword 'always'") as info:
        parse_constraint("never always a")
    assert info.value.position == 6


def test_error_message_is_one_line_with_marker():
    with pytest.raises(RewardError) as info:
        parse_expression("a +\n\n@")
    msg = str(info.value)
    assert "\n" not in msg and info.value.position == 5 and '"a +\\n\\n>>@"' in msg


def test_long_sums_within_the_limit_parse():
    assert parse_expression(" + ".join(["a"] * 200)) is not None
    with pytest.raises(RewardError, match="characters long"):
        parse_expression("a" * 20_000)


def test_never_evaluates_python():
    for text in ["__import__('os')", "().__class__", "lambda: 1", "[1]", "a.b", "a if b else c"]:
        with pytest.raises(RewardError):
            parse_expression(text)
