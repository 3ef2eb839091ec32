"""Atomic file writes, defined once for every stage: nothing a reader sees is ever half-written.

A file is written to a uniquely named temporary file in the *same* folder, flushed and fsynced, then
``os.replace``-d over its target, and the folder is fsynced so that the rename itself is durable.
(Checkpoints add a hash sidecar on top of this: see ``dynamics.training.checkpoint``.)
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make the entries of ``folder`` (e.g. a rename into it) durable; a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Replace ``path`` with ``data`` atomically (the previous file stays intact if anything fails)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename is None:  # a full disk's write error names no file: name it
            e.filename = str(path)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """``atomic_write_bytes`` of UTF-8 ``text``."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def json_safe(obj: Any) -> Any:
    """``obj`` with NaN/inf floats replaced by ``None``, recursively (strict JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int = 2, sort_keys: bool = True) -> Path:
    """``obj`` as strict JSON (NaN/inf -> null), written atomically."""
    text = json.dumps(json_safe(obj), indent=indent, sort_keys=sort_keys, default=str, allow_nan=False)
    return atomic_write_text(path, text + "\n")


def publish_dir(tmp: str | os.PathLike, final: str | os.PathLike) -> Path:
    """Move the finished folder ``tmp`` to ``final`` (same file system) so a reader sees the old or the new one.

    An existing ``final`` is first renamed aside to a unique hidden folder, the new one renamed in, and
    the old one deleted. Between the two renames (microseconds) ``final`` is briefly absent: a reader
    then sees "nothing there", never a mix of the two folders.
    """
    tmp, final = Path(tmp), Path(final)
    if final.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-{os.getpid()}-", dir=final.parent))
        os.replace(final, old)  # replaces the empty placeholder folder `old`
        os.replace(tmp, final)
        fsync_dir(final.parent)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)
        fsync_dir(final.parent)
    return final
