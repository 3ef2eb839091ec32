"""Markdown pieces of the run report: a table, and an estimate with its confidence interval."""

from __future__ import annotations

from typing import Any


def table(header: list[str], rows: list[list[Any]]) -> str:
    """A markdown table; floats with 4 significant digits, ``None`` as an empty cell."""
    def fmt(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else ("" if v is None else str(v))

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def ci(r: dict[str, Any] | None) -> str:
    """``{estimate, ci_low, ci_high}`` as ``0.123 [0.100, 0.150]`` (``-`` when there is no estimate)."""
    if not r or r.get("estimate") is None:
        return "-"
    lo, hi = r.get("ci_low"), r.get("ci_high")
    return f"{r['estimate']:.3f} [{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else f"{r['estimate']:.3f}"
