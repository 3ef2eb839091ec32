"""Markdown pieces of the run report: a table, and an estimate with its confidence interval."""

from __future__ import annotations

import math
from typing import Any


def _number(v: Any) -> float | None:
    """``v`` as a finite float, or None (missing, NaN or infinite: shown as ``-``, as ``summary.json``'s null)."""
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def table(header: list[str], rows: list[list[Any]]) -> str:
    """A markdown table; floats with 4 significant digits, ``None`` as an empty cell, NaN as ``-``; a ``|`` inside a
    cell is escaped (``\\|``, also inside a code span) so that it does not split the cell."""
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return "-" if math.isnan(v) else f"{v:.4g}"
        return ("" if v is None else str(v)).replace("|", "\\|")

    lines = ["| " + " | ".join(fmt(v) for v in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def ci(r: dict[str, Any] | None) -> str:
    """``{estimate, ci_low, ci_high}`` as ``0.123 [0.100, 0.150]`` (``-`` when there is no finite estimate; the
    estimate alone when an end of the interval is missing or NaN -- the report is rendered from the in-memory
    summary, whose NaNs ``summary.json`` stores as null)."""
    est = _number((r or {}).get("estimate"))
    if est is None:
        return "-"
    lo, hi = _number(r.get("ci_low")), _number(r.get("ci_high"))
    return f"{est:.3f} [{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else f"{est:.3f}"
