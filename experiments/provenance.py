"""What produced an output: resolved config, code version, fingerprints -- written beside it."""

from __future__ import annotations

import hashlib
import math
import json
from pathlib import Path
from typing import Any

import yaml

from experiments.config import to_dict
from worlds.atomic import atomic_write_text


def fingerprint(obj: Any) -> str:
    """A short sha256 of a JSON-serialisable object (key order does not matter)."""
    blob = json.dumps(to_dict(obj), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def write_config(cfg: Any, path: str | Path) -> None:
    """The resolved config as YAML (atomically)."""
    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def json_safe(obj: Any) -> Any:
    """``obj`` with NaN/inf floats replaced by ``None`` (strict JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def write_json(obj: Any, path: str | Path) -> None:
    """``obj`` as indented strict JSON (NaN -> null), atomically."""
    text = json.dumps(json_safe(to_dict(obj)), indent=2, sort_keys=False, default=str, allow_nan=False)
    atomic_write_text(path, text + "\n")
