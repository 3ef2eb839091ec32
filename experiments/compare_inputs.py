"""What ``ontolab compare`` reads from each folder it is given, checked before anything is drawn.

A **run folder** (``ontolab run``) holds ``summary.json``. A **probe folder** (``ontolab probe``, or the
``probes/`` folder of a run) holds ``results.csv`` and names the chosen probe per concept in
``harness.json`` (key ``"ontology"``) or, failing that, in ``ontology/ontology.json``; its
``by_checkpoint.csv`` and ``config.yaml`` (world, seed, model) are read where present. Either way
:func:`load_summary` returns the keys of ``summary.json`` that the comparison uses (``probes``,
``ontology``, ``probes_by_checkpoint``, ``planning``, ``dynamics``, ``world``, ``seed``); a probe folder
has no planning rows and no open-loop numbers.

A file that cannot be read as expected (not JSON, a list where an object belongs, an ontology entry
without a ``site``, a row without a number, ...) is refused with one :class:`ConfigError` line that
names the file and the problem.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Mapping

from experiments.config import ConfigError

PROBE_KEYS = ("method", "site", "concept", "split", "metric")
"""String fields of every probe row (``results.csv`` columns)."""
NUMBERS = ("estimate", "ci_low", "ci_high")
"""Fields that hold a number or null."""
RATES = ("success_rate", "violation_rate", "mean_true_return")
"""Planning row fields that compare prints: ``{estimate, ci_low, ci_high}`` objects or null."""


def _short(v: Any, n: int = 60) -> str:
    s = " ".join(repr(v).split())
    return s if len(s) <= n else s[: n - 3] + "..."


def _kind(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(v), "a number" if isinstance(v, (int, float)) else type(v).__name__)


def _number(v: Any) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))


def read_json(path: Path, fix: str) -> Any:
    """``path`` parsed as JSON; a file that is not JSON is a one-line :class:`ConfigError` ending in ``fix``."""
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON ({e.msg} at line {e.lineno} column {e.colno}); {fix}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not valid JSON (not UTF-8 text); {fix}") from None


def check_summary(s: Any, path: Path, fix: str = "rerun `ontolab run` to rewrite it") -> dict[str, Any]:
    """``s`` if it has the shapes compare reads, else a one-line :class:`ConfigError` naming ``path``."""
    def bad(what: str) -> ConfigError:
        return ConfigError(f"{path}: {what}; {fix}")

    if not isinstance(s, dict):
        raise bad(f"expected a JSON object, got {_kind(s)}")
    for key, kind in (("probes", list), ("ontology", dict), ("planning", list), ("dynamics", dict),
                      ("probes_by_checkpoint", list)):
        if s.get(key) is not None and not isinstance(s[key], kind):
            raise bad(f"{key!r} must be {_kind(kind())}, got {_kind(s[key])}")
    for concept, v in (s.get("ontology") or {}).items():
        if not isinstance(v, dict):
            raise bad(f"ontology entry {concept!r} must be an object with 'method' and 'site', got {_kind(v)}")
        for k in ("method", "site"):
            if not isinstance(v.get(k), str):
                raise bad(f"ontology entry {concept!r} has no {k!r}" if k not in v else
                          f"ontology entry {concept!r} needs a string {k!r}, got {_short(v[k])}")
    for i, r in enumerate(s.get("probes") or []):
        missing = [k for k in PROBE_KEYS if not isinstance(r, dict) or not isinstance(r.get(k), str)]
        if missing:
            raise bad(f"probes[{i}] needs string {', '.join(missing)}, got {_short(r)}")
        _check_numbers(r, f"probes[{i}]", bad)
    for i, r in enumerate(s.get("planning") or []):
        if not isinstance(r, dict):
            raise bad(f"planning[{i}] must be an object, got {_kind(r)}")
        for k in RATES:
            if r.get(k) is not None:
                if not isinstance(r[k], dict):
                    raise bad(f"planning[{i}].{k} must be an object with estimate, ci_low, ci_high, got {_short(r[k])}")
                _check_numbers(r[k], f"planning[{i}].{k}", bad)
    open_loop = (s.get("dynamics") or {}).get("open_loop")
    if open_loop is not None:
        if not isinstance(open_loop, dict):
            raise bad(f"dynamics.open_loop must be an object, got {_kind(open_loop)}")
        for series, points in open_loop.items():
            if series == "skipped" or not isinstance(points, dict):
                continue
            for k, e in points.items():
                if not str(k).lstrip("-").isdigit() or not isinstance(e, dict):
                    raise bad(f"dynamics.open_loop.{series} must map horizons k to estimates, got {_short(k)}: {_short(e)}")
                _check_numbers(e, f"dynamics.open_loop.{series}.{k}", bad)
    for i, r in enumerate(s.get("probes_by_checkpoint") or []):
        if not isinstance(r, dict) or not isinstance(r.get("step"), int) or not all(
                isinstance(r.get(k), str) for k in ("site", "concept", "metric")):
            raise bad(f"probes_by_checkpoint[{i}] needs an integer step and string site, concept, metric, got {_short(r)}")
        _check_numbers(r, f"probes_by_checkpoint[{i}]", bad)
    return s


def _check_numbers(r: Mapping[str, Any], where: str, bad) -> None:
    for k in NUMBERS:
        if not _number(r.get(k)):
            raise bad(f"{where}.{k} must be a number or null, got {_short(r[k])}")


def load_summary(run_dir: str | Path) -> dict[str, Any]:
    """The comparison's inputs from a run folder or a probe folder (see the module docstring), checked."""
    run_dir = Path(run_dir)
    if run_dir.is_file():
        raise ConfigError(f"{str(run_dir)!r} is a file; give a finished run folder (`ontolab run`) or probe folder (`ontolab probe`)")
    path = run_dir / "summary.json"
    if path.is_file():
        return check_summary(read_json(path, "rerun `ontolab run` to rewrite it"), path)
    for folder in (run_dir, run_dir / "probes"):
        if (folder / "results.csv").is_file():
            return probe_summary(folder)
    raise ConfigError(f"{str(run_dir)!r} holds no summary.json (made by `ontolab run`) and no results.csv (made by "
                      f"`ontolab probe`); give a finished run or probe folder")


def probe_summary(folder: Path) -> dict[str, Any]:
    """``summary.json``'s keys from a probe folder: ``results.csv``, the chosen probes, ``by_checkpoint.csv``, ``config.yaml``."""
    from experiments.stages.by_checkpoint import FILE, read_by_checkpoint_csv
    from probes.results import read_results_csv

    fix = "rerun `ontolab probe` to rewrite it"
    results = folder / "results.csv"
    try:
        probes = [r.to_dict() for r in read_results_csv(results)]
    except (ValueError, TypeError, csv.Error) as e:  # wrong columns, a bad row, not text
        raise ConfigError(f"{results} is not a probe results table ({' '.join(str(e).split())[:200]}); {fix}") from None
    ontology, source = _chosen(folder, fix)
    try:
        by_checkpoint = read_by_checkpoint_csv(folder / FILE)
    except (ValueError, TypeError, csv.Error) as e:
        raise ConfigError(f"{folder / FILE} is not a by-checkpoint table ({' '.join(str(e).split())[:200]}); {fix}") from None
    world, seed, model = _header(folder / "config.yaml")
    summary = {"world": world, "seed": seed, "probes": probes, "ontology": ontology, "probes_by_checkpoint": by_checkpoint,
               "planning": [], "dynamics": {"model": model, "open_loop": {"skipped": "a probe folder has no open-loop numbers"}}}
    return check_summary(summary, source, fix)


def _chosen(folder: Path, fix: str) -> tuple[dict[str, Any], Path]:
    """``({concept: {"method", "site"}}, the file it came from)``: ``harness.json``'s ontology, else ``ontology/ontology.json``."""
    harness, index = folder / "harness.json", folder / "ontology" / "ontology.json"
    if harness.is_file():
        h = read_json(harness, fix)
        if not isinstance(h, dict):
            raise ConfigError(f"{harness}: expected a JSON object, got {_kind(h)}; {fix}")
        if h.get("ontology") is not None:
            return h["ontology"], harness
    if index.is_file():
        d = read_json(index, fix)
        entries = d.get("entries") if isinstance(d, dict) else None
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise ConfigError(f"{index}: expected an object whose 'entries' is a list of objects, got {_short(d)}; {fix}")
        out = {}
        for i, e in enumerate(entries):
            if not isinstance(e.get("concept"), str):
                raise ConfigError(f"{index}: entries[{i}] has no string 'concept', got {_short(e)}; {fix}")
            out[e["concept"]] = {k: e[k] for k in ("method", "site") if k in e}
        return out, index
    raise ConfigError(f"{folder} holds results.csv but neither harness.json nor ontology/ontology.json names the chosen "
                      f"probes; {fix}")


def _header(path: Path) -> tuple[Any, Any, Any]:
    """World name, seed and dynamics model from the folder's resolved ``config.yaml`` (for the report's header
    only: ``None`` where the file or the key is missing or unreadable)."""
    import yaml

    try:
        d = yaml.safe_load(path.read_text()) if path.is_file() else None
    except (yaml.YAMLError, UnicodeDecodeError):
        d = None
    d = d if isinstance(d, dict) else {}
    get = lambda section, key: d[section].get(key) if isinstance(d.get(section), dict) else None  # noqa: E731
    return get("world", "name"), d.get("seed"), get("dynamics", "model")
