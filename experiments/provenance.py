"""What produced an output: resolved config, code version, fingerprints -- written beside it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

from experiments.config import to_dict
from worlds.atomic import atomic_write_json, atomic_write_text, json_safe

__all__ = ["fingerprint", "json_safe", "write_config", "write_json"]


def fingerprint(obj: Any) -> str:
    """A short sha256 of a JSON-serialisable object (key order does not matter)."""
    blob = json.dumps(to_dict(obj), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def write_config(cfg: Any, path: str | Path) -> None:
    """The resolved config as YAML (atomically)."""
    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def write_json(obj: Any, path: str | Path) -> None:
    """``obj`` as indented strict JSON (NaN -> null), atomically."""
    atomic_write_json(path, to_dict(obj), sort_keys=False)
