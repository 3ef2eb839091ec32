"""The one error type users see.

``OntolabError`` marks a problem with the user's input (a config value, a dataset, a checkpoint,
a reward expression ...), not a bug: its message is one line naming the problem and the fix. The
``ontolab`` command prints it and exits with code 2, without a traceback. Every stage raises a
subclass of it; it derives from ``ValueError`` so library callers may catch either.
"""

from __future__ import annotations


class OntolabError(ValueError):
    """A problem with the user's input, explained in one line."""
