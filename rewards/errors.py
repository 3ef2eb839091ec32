"""The one error a reward or constraint expression raises: :class:`RewardError`.

Its message is a single line that names the problem, the 0-based column and an excerpt of the
text with ``>>`` marking the spot, then the fix::

    reward: unknown concept 'lava' at column 10 in "at_goal - >>lava"; this world's concepts are: ...
"""

from __future__ import annotations

from worlds.errors import OntolabError

_WINDOW = 30
"""Characters of context shown on each side of the error position."""


def _one_line(s: str) -> str:
    """Escape control characters (newlines, tabs ...) so a message stays on one line."""
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in s)


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
            msg += f" at column {position} in {excerpt(text, position)}"
        if hint:
            msg += f"; {hint}"
        super().__init__(_one_line(msg))

    def located(self, where: str) -> "RewardError":
        """The same error, its message prefixed by ``where`` (e.g. ``"constraint 2"``)."""
        return RewardError(self.problem, self.text, self.position, self.hint, where)
