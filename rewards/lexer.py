"""Tokens of the reward language (see :mod:`rewards.parser` for the grammar).

A hand-written scanner: the token set is a dozen fixed operators, numbers, names and quoted class
names, so a regex-free loop is shorter than a library and reports exact columns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from rewards.errors import RewardError

TokenKind = Literal["num", "str", "name", "kw", "op", "end"]

KEYWORDS: frozenset[str] = frozenset({"and", "or", "not", "never", "always"})
"""Reserved words: a concept with one of these names cannot be referred to."""

OPERATORS: tuple[str, ...] = ("**", "<=", ">=", "==", "!=", "+", "-", "*", "/", "<", ">", "(", ")", ",")
"""Longest first, so ``**`` wins over ``*`` and ``<=`` over ``<``."""

MAX_LENGTH = 10_000
"""Longest expression accepted, in characters."""

_HINTS = {
    "=": "use '==' to compare", "!": "use 'not' (or '!=' to compare)", "&": "use 'and'", "|": "use 'or'",
    "^": "use '**' for powers", "%": "there is no modulo operator", "[": "use ( ) to group",
    "]": "use ( ) to group", "{": "use ( ) to group", "}": "use ( ) to group",
}


@dataclass(frozen=True)
class Token:
    """One token: ``kind``, its ``text`` (a class name without quotes for ``str``), 0-based ``pos``."""

    kind: TokenKind
    text: str
    pos: int
    value: float = 0.0
    """The number, for ``num`` tokens."""


def _is_name_start(ch: str) -> bool:
    return ch.isidentifier()


def _is_name_char(ch: str) -> bool:
    return ("a" + ch).isidentifier()


def tokenize(text: str) -> list[Token]:
    """Split ``text`` into tokens ending with an ``end`` token; raise :class:`RewardError` on bad input."""
    if not isinstance(text, str):
        raise RewardError(f"an expression must be a string, got {type(text).__name__}")
    if len(text) > MAX_LENGTH:
        raise RewardError(f"expression is {len(text)} characters long, at most {MAX_LENGTH} are accepted")
    tokens: list[Token] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch in " \t\r\n":
            i += 1
        elif ch.isdigit() and ch.isascii() or (ch == "." and i + 1 < n and text[i + 1].isdigit()):
            tok, i = _number(text, i)
            tokens.append(tok)
        elif _is_name_start(ch):
            j = i + 1
            while j < n and _is_name_char(text[j]):
                j += 1
            word = text[i:j]
            tokens.append(Token("kw" if word in KEYWORDS else "name", word, i))
            i = j
        elif ch in "\"'":
            j = text.find(ch, i + 1)
            if j < 0:
                raise RewardError(f"unterminated class name (missing closing {ch})", text, i)
            tokens.append(Token("str", text[i + 1:j], i))
            i = j + 1
        else:
            op = next((o for o in OPERATORS if text.startswith(o, i)), None)
            if op is None:
                raise RewardError(f"unexpected character {ch!r}", text, i, _HINTS.get(ch, ""))
            tokens.append(Token("op", op, i))
            i += len(op)
    tokens.append(Token("end", "", n))
    return tokens


def _number(text: str, i: int) -> tuple[Token, int]:
    """Scan ``digits [. digits] [(e|E) [+-] digits]`` (or ``.digits ...``) starting at ``i``."""
    n, start = len(text), i

    def digits(j: int) -> int:
        while j < n and text[j].isascii() and text[j].isdigit():
            j += 1
        return j

    i = digits(i)
    if i < n and text[i] == ".":
        i = digits(i + 1)
    if i < n and text[i] in "eE":
        j = i + 1
        if j < n and text[j] in "+-":
            j += 1
        k = digits(j)
        if k == j:
            raise RewardError("malformed number: exponent needs digits", text, start, "write e.g. 1e-3")
        i = k
    if i < n and (_is_name_char(text[i]) or text[i] == "."):
        raise RewardError(f"malformed number {text[start:i + 1]!r}", text, start,
                          "put an operator between a number and a name, e.g. 2 * x")
    value = float(text[start:i])
    if not math.isfinite(value):
        raise RewardError(f"number {text[start:i]!r} is too large", text, start)
    return Token("num", text[start:i], start, value), i
