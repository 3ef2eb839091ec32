"""Property-based tests: arbitrary text never crashes the pipeline; random trees round-trip through
text and compile to the same numbers as an independent numpy reference evaluator."""

from __future__ import annotations

import sys
import time

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rewards.ast import Binary, Call, ClassName, Name, Node, Number, Prob, Unary, render
from rewards.errors import RewardError
from rewards.lexer import KEYWORDS
from rewards.parser import parse_constraint, parse_expression
from rewards.spec import RewardSpec
from worlds.concepts import Concept, ConceptSchema

CLASSES = ("x", "y", "z")
SCHEMA = ConceptSchema((
    Concept("b0", "binary", "b0"), Concept("b1", "binary", "b1"),
    Concept("s0", "scalar", "s0", low=-3, high=3), Concept("s1", "scalar", "s1", low=-3, high=3),
    Concept("c0", "categorical", "c0", classes=CLASSES), Concept("c1", "categorical", "c1", classes=CLASSES),
))
SHAPE = (2, 3)
FAST = dict(deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])


def random_values(seed: int) -> dict[tuple[str, str], np.ndarray]:
    """Concept tensors ``[2 3]`` (categorical probabilities ``[2 3 3]``) from a small exact value set."""
    rng = np.random.default_rng(seed)
    v: dict[tuple[str, str], np.ndarray] = {}
    for c in ("b0", "b1"):
        v[(c, "value")] = rng.integers(0, 2, SHAPE).astype(np.float64)
        v[(c, "prob")] = rng.choice([0.0, 0.25, 0.5, 0.75, 1.0], SHAPE)
    for c in ("s0", "s1"):
        v[(c, "value")] = rng.choice([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0], SHAPE)
    for c in ("c0", "c1"):
        v[(c, "value")] = rng.integers(0, 3, SHAPE)
        v[(c, "prob")] = rng.dirichlet(np.ones(3), SHAPE)
    return v


def resolver(values: dict[tuple[str, str], np.ndarray]):
    return lambda name, mode: torch.as_tensor(values[(name, mode)])


VALUES = random_values(0)
RewardSpec("s0 + p(c0 == 'x')").compile(SCHEMA)(resolver(VALUES))  # warm torch up before timing anything


# -- (1) arbitrary text -------------------------------------------------------------------------
TOKENS = ["b0", "b1", "s0", "s1", "c0", "c1", "nope", "x", "p", "min", "max", "clip", "abs", "foo", *KEYWORDS,
          "0", "1", "2.5", "1e-3", "1e", ".5", "3.", "'x'", '"y"', "'q'", "'", '"', "+", "-", "*", "/", "**",
          "<", "<=", ">", ">=", "==", "!=", "=", "!", "(", ")", ",", "&", " ", "\n", "@", "é", "\x00"]


def run_everything(text: str) -> None:
    """Parse, check, compile and evaluate ``text`` as reward and constraint; only RewardError may escape.

    Parsing and checking must take < 0.5 s of CPU time (CPU, not wall, time: the test machine is shared).
    """
    start = time.process_time()
    for parse in (parse_expression, parse_constraint):
        try:
            parse(text)
        except RewardError as e:
            assert e.position is None or 0 <= e.position <= len(text)
            assert "\n" not in str(e)
    specs = []
    for spec_args in ((text,), ("s0", (text,))):
        try:
            spec = RewardSpec(*spec_args)
            spec.check(SCHEMA)
            specs.append(spec)
        except RewardError:
            pass
    assert time.process_time() - start < 0.5, f"parsing {text!r} took too long"
    for spec in specs:
        out = spec.compile(SCHEMA)(resolver(VALUES), batch_shape=SHAPE)
        assert out.reward.shape == out.cost.shape == SHAPE


@settings(max_examples=1500, **FAST)
@given(st.text(max_size=60))
def test_arbitrary_text_raises_only_reward_error(text):
    run_everything(text)


@settings(max_examples=2500, **FAST)
@given(st.lists(st.sampled_from(TOKENS), max_size=25), st.sampled_from(["", " "]))
def test_token_soup_raises_only_reward_error(tokens, sep):
    run_everything(sep.join(tokens))


@settings(max_examples=30, **FAST)
@given(st.sampled_from(["(", "-", "not ", "abs(", "2 ** ", "min(1, "]), st.integers(50, 3000))
def test_deep_nesting_is_an_error_not_a_crash(prefix, n):
    run_everything(prefix * n + "s0" + ")" * n * (prefix.endswith("(") or prefix.endswith(", ")))


# -- (2) random trees ---------------------------------------------------------------------------
NUMBERS = st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.0, 3.0, 10.0, 1e-3])
IDENT = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,6}", fullmatch=True).filter(lambda s: s not in KEYWORDS)
CLASS_TEXT = st.text(max_size=6).filter(lambda s: not ('"' in s and "'" in s))


def any_tree(depth: int) -> st.SearchStrategy[Node]:
    """Syntactically valid trees of any operator mix (not necessarily well-typed), for round trips."""
    leaves = st.one_of(st.builds(Number, st.floats(0, 1e300) | NUMBERS), st.builds(Name, IDENT),
                       st.builds(ClassName, CLASS_TEXT), st.builds(Prob, IDENT, st.none() | CLASS_TEXT))
    if depth == 0:
        return leaves
    sub = any_tree(depth - 1)
    ops = ["+", "-", "*", "/", "**", "<", "<=", ">", ">=", "==", "!=", "and", "or"]
    return st.one_of(
        leaves, st.builds(Unary, st.sampled_from(["-", "not"]), sub),
        st.builds(Binary, st.sampled_from(ops), sub, sub),
        st.builds(Call, st.just("abs"), st.tuples(sub)), st.builds(Call, st.just("clip"), st.tuples(sub, sub, sub)),
        st.builds(Call, st.sampled_from(["min", "max"]), st.lists(sub, min_size=2, max_size=3).map(tuple)),
    )


def num_tree(depth: int) -> st.SearchStrategy[Node]:
    """Well-typed numeric trees over SCHEMA."""
    leaves = st.one_of(st.builds(Number, NUMBERS), st.sampled_from([Name("s0"), Name("s1"), Name("b0"), Name("b1")]),
                       st.sampled_from([Prob("b0"), Prob("b1")]), st.builds(Prob, st.sampled_from(["c0", "c1"]),
                                                                            st.sampled_from(CLASSES)))
    if depth == 0:
        return leaves
    sub = num_tree(depth - 1)
    return st.one_of(
        leaves, st.builds(Unary, st.just("-"), sub),
        st.builds(Binary, st.sampled_from(["+", "-", "*", "/"]), sub, sub),
        st.builds(Binary, st.just("**"), sub, st.builds(Number, st.sampled_from([0.0, 1.0, 2.0, 3.0]))),
        st.builds(Call, st.just("abs"), st.tuples(sub)), st.builds(Call, st.just("clip"), st.tuples(sub, sub, sub)),
        st.builds(Call, st.sampled_from(["min", "max"]), st.lists(sub, min_size=2, max_size=3).map(tuple)),
        bool_tree(depth - 1),
    )


def bool_tree(depth: int) -> st.SearchStrategy[Node]:
    """Well-typed 0/1 conditions over SCHEMA."""
    cats = st.sampled_from([Name("c0"), Name("c1")])
    leaves = st.one_of(st.sampled_from([Name("b0"), Name("b1")]),
                       st.builds(Binary, st.sampled_from(["==", "!="]), cats,
                                 st.builds(ClassName, st.sampled_from(CLASSES))),
                       st.builds(Binary, st.sampled_from(["==", "!="]), cats, cats))
    if depth == 0:
        return leaves
    sub = bool_tree(depth - 1)
    return st.one_of(leaves, st.builds(Unary, st.just("not"), sub),
                     st.builds(Binary, st.sampled_from(["and", "or"]), sub, sub),
                     st.builds(Binary, st.sampled_from(["<", "<=", ">", ">=", "==", "!="]), num_tree(depth - 1),
                               num_tree(depth - 1)))


def reference(node: Node, v: dict[tuple[str, str], np.ndarray]) -> np.ndarray:
    """Independent evaluator: numpy float64, Python-style logic on 0/1 values."""
    if isinstance(node, Number):
        return np.full(SHAPE, node.value)
    if isinstance(node, Name):
        return v[(node.name, "value")].astype(np.float64)
    if isinstance(node, Prob):
        p = v[(node.concept, "prob")]
        return p if node.cls is None else p[..., CLASSES.index(node.cls)]
    if isinstance(node, Unary):
        x = reference(node.operand, v)
        return -x if node.op == "-" else np.logical_not(x.astype(bool)).astype(np.float64)
    if isinstance(node, Call):
        xs = [reference(a, v) for a in node.args]
        if node.func == "abs":
            return np.abs(xs[0])
        if node.func == "clip":
            return np.minimum(np.maximum(xs[0], xs[1]), xs[2])
        return (np.minimum if node.func == "min" else np.maximum).reduce(xs)
    assert isinstance(node, Binary)
    if isinstance(node.right, ClassName):
        x, k = v[(node.left.name, "value")], CLASSES.index(node.right.value)  # type: ignore[union-attr]
        return ((x == k) if node.op == "==" else (x != k)).astype(np.float64)
    a, b = reference(node.left, v), reference(node.right, v)
    fn = {"+": np.add, "-": np.subtract, "*": np.multiply, "/": np.divide, "**": np.power,
          "<": np.less, "<=": np.less_equal, ">": np.greater, ">=": np.greater_equal, "==": np.equal,
          "!=": np.not_equal, "and": lambda x, y: np.logical_and(x > 0, y > 0),
          "or": lambda x, y: np.logical_or(x > 0, y > 0)}[node.op]
    return np.asarray(fn(a, b), dtype=np.float64)


@settings(max_examples=600, **FAST)
@given(any_tree(4))
def test_render_parse_round_trip(tree):
    text = render(tree)
    assert parse_expression(text) == tree
    assert render(parse_expression(text)) == text


@settings(max_examples=400, **FAST)
@given(num_tree(3), st.integers(0, 2**32 - 1))
def test_compiled_matches_reference_evaluator(tree, seed):
    values = random_values(seed)
    text = render(tree)
    spec = RewardSpec(text)
    with np.errstate(all="ignore"):
        want = reference(tree, values)
    got = spec.compile(SCHEMA)(resolver(values), dtype=torch.float64, batch_shape=SHAPE).reward.numpy()
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12, equal_nan=True, err_msg=text)


@settings(max_examples=200, **FAST)
@given(bool_tree(2), st.integers(0, 2**32 - 1))
def test_constraint_costs_match_reference(cond, seed):
    values = random_values(seed)
    text = render(cond)
    spec = RewardSpec("0", (f"never {text}", f"always {text}", text))
    out = spec.compile(SCHEMA)(resolver(values), dtype=torch.float64, batch_shape=SHAPE)
    with np.errstate(all="ignore"):
        violated = reference(cond, values)
    np.testing.assert_array_equal(out.costs[f"never {text}"].numpy(), violated)
    np.testing.assert_array_equal(out.costs[f"always {text}"].numpy(), 1 - violated)
    np.testing.assert_array_equal(out.costs[text].numpy(), 1 - violated)
    np.testing.assert_array_equal(out.cost.numpy(), 2 - violated)


# -- (3) Python code in a reward is text, never run ---------------------------------------------------
_AUDIT = {"on": False, "events": []}


def _audit(event: str, args: tuple) -> None:
    if _AUDIT["on"] and event in ("exec", "compile", "os.system", "subprocess.Popen", "open", "import"):
        _AUDIT["events"].append(event)


sys.addaudithook(_audit)  # hooks cannot be removed; this one records only while a test switches it on

INJECTIONS = ["__import__('os').system('touch PWNED')", "eval('1')", "exec('x=1')", "open('PWNED', 'w')",
              "(lambda: 1)()", "s0.__class__.__mro__", "[c for c in ().__class__.__bases__]", "s0; import os",
              "compile('1', 'x', 'eval')", "getattr(s0, '__globals__')", "s0 if True else b0", "f'{s0}'"]


@settings(max_examples=300, **FAST)
@given(st.sampled_from(INJECTIONS), st.sampled_from(["", "s0 + ", "never ", "p("]))
def test_python_in_a_reward_never_compiles_imports_or_opens_anything(code, prefix):
    text = prefix + code
    _AUDIT["on"], _AUDIT["events"] = True, []
    try:
        for parse in (parse_expression, parse_constraint):
            try:
                parse(text)
            except RewardError:
                pass
    finally:
        _AUDIT["on"] = False
    assert _AUDIT["events"] == [], f"parsing {text!r} triggered {_AUDIT['events']}"
