"""The one error a reward or constraint expression raises: :class:`RewardError`.

Its message is a single line that names the problem, the 0-based column and an excerpt of the
text with ``>>`` marking the spot, then the fix::

    reward: unknown concept 'lava' at column 10 in "at_goal - >>lava"; this world's concepts are: ...

In multi-line text (a YAML block scalar) the spot is named by its 1-based line and its 0-based column in
that line, with the character offset ``position`` beside it: ``at line 3, column 2 (offset 14)``.
"""

from __future__ import annotations

from worlds.errors import OntolabError

_WINDOW = 30
"""Characters of context shown on each side of the error position."""


def _one_line(s: str) -> str:
    """Escape control characters (newlines, tabs ...) so a message stays on one line."""
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in s)


def location(text: str, position: int) -> str:
    """``column C`` on one-line text; ``line L, column C (offset P)`` once a newline precedes ``position``
    (the offset alone would call the third line's third character "column 14")."""
    line = text.count("\n", 0, position)
    if line == 0:
        return f"column {position}"
    column = position - (text.rfind("\n", 0, position) + 1)
    return f"line {line + 1}, column {column} (offset {position})"


def excerpt(text: str, position: int) -> str:
    """``text`` around ``position`` with ``>>`` marking it, escaped to one line and quoted."""
    lo, hi = max(0, position - _WINDOW), min(len(text), position + _WINDOW)
    left = ("..." if lo > 0 else "") + _one_line(text[lo:position])
    right = _one_line(text[position:hi]) + ("..." if hi < len(text) else "")
    return f'"{left}>>{right}"'


class RewardError(OntolabError):
    """A reward or constraint expression that does not parse, type-check or fit the world's concepts.

    ``position`` is the 0-based column in ``text`` (``None`` for errors that are not about one spot,
    e.g. a bad key in a spec dict); ``where`` names the expression (``"reward"``, ``"constraint 2"``).
    """

    def __init__(self, message: str, text: str = "", position: int | None = None, hint: str = "",
                 where: str = "") -> None:
        self.problem, self.text, self.position, self.hint, self.where = message, text, position, hint, where
        msg = f"{where}: {message}" if where else message
        if position is not None:
            msg += f" at {location(text, position)} in {excerpt(text, position)}"
        if hint:
            msg += f"; {hint}"
        super().__init__(_one_line(msg))

    def located(self, where: str) -> "RewardError":
        """The same error, its message prefixed by ``where`` (e.g. ``"constraint 2"``)."""
        return RewardError(self.problem, self.text, self.position, self.hint, where)
