"""What produced an output: resolved config, code version, fingerprints -- written beside it."""

from __future__ import annotations

import hashlib
import math
import json
import os
from pathlib import Path
from typing import Any

import yaml

from experiments.config import to_dict


def fingerprint(obj: Any) -> str:
    """A short sha256 of a JSON-serialisable object (key order does not matter)."""
    blob = json.dumps(to_dict(obj), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temp file in the same folder, fsync and rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


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
