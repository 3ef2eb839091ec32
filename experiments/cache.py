"""Stage outputs cached under a fingerprint of their inputs, and the run-folder lock.

A stage's output lives in ``CACHE/<stage>/<fingerprint>/``, where the fingerprint hashes the
stage's config section and the fingerprints of what it consumes. The folder is built under a
temporary name and renamed into place when the stage finishes, and ``stage.json`` inside it is the
completion marker: a killed or interrupted stage leaves no folder that looks finished, the next run
redoes it, and finished stages are reused by every run whose inputs hash the same.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from experiments.provenance import fingerprint, write_json
from worlds.atomic import publish_dir
from worlds.dataset.manifest import code_version
from worlds.errors import OntolabError

MARKER = "stage.json"


class RunLockedError(OntolabError):
    """Another ontolab process holds the run folder."""


@dataclass(frozen=True)
class StageResult:
    """A finished stage: where its output is, its fingerprint, whether it was reused, its seconds."""

    stage: str
    path: Path
    fingerprint: str
    reused: bool
    seconds: float


def stage_fingerprint(stage: str, section: Any, inputs: dict[str, str]) -> str:
    return fingerprint({"stage": stage, "section": section, "inputs": inputs})


def run_stage(cache: Path, stage: str, section: Any, inputs: dict[str, str],
              build: Callable[[Path], Any], *, resumable: bool = False, resume: bool = False) -> StageResult:
    """Reuse ``cache/stage/<fp>`` if finished, else call ``build(partial_folder)`` and publish it atomically.

    The stage is built in ``cache/stage/.<fp>.partial`` under a lock on ``cache/stage/.<fp>.lock`` (another
    process that asks for the same stage meanwhile waits, then reuses it). A
    failed or interrupted build of a ``resumable`` stage keeps that folder, so that a rerun with
    ``resume=True`` continues from it (training checkpoints); otherwise the half-done stage is redone
    from scratch.
    """
    fp = stage_fingerprint(stage, section, inputs)
    final = cache / stage / fp
    if (final / MARKER).is_file():
        return _reused(stage, final, fp)
    final.parent.mkdir(parents=True, exist_ok=True)
    # The run lock covers one run folder, but runs with different out= share the cache (a sweep fanned out over
    # jobs): without this lock a second run building the same stage deleted the first one's partial folder.
    with _stage_lock(final.parent / f".{fp}.lock", stage):
        if (final / MARKER).is_file():  # the other process finished it while this one waited
            return _reused(stage, final, fp)
        return _build(stage, final, fp, inputs, section, build, resumable=resumable, resume=resume)


def _reused(stage: str, final: Path, fp: str) -> StageResult:
    meta = json.loads((final / MARKER).read_text())
    return StageResult(stage, final, fp, True, float(meta.get("seconds", 0.0)))


@contextmanager
def _stage_lock(path: Path, stage: str) -> Iterator[None]:
    """An exclusive lock on one cached stage (``flock``: released when its process dies); waits for a holder."""
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"ontolab: another ontolab process is building the {stage} stage in {path.parent}; waiting for it "
                  "to finish (then it is reused)", file=sys.stderr)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _build(stage: str, final: Path, fp: str, inputs: dict[str, str], section: Any, build: Callable[[Path], Any], *,
           resumable: bool, resume: bool) -> StageResult:
    """Build the stage in ``.<fp>.partial`` and publish it as ``final`` (the caller holds the stage lock)."""
    partial = final.parent / f".{fp}.partial"
    if not (resumable and resume):
        shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    try:
        build(partial)
        seconds = time.perf_counter() - t0
        write_json({"stage": stage, "fingerprint": fp, "inputs": inputs, "section": section,
                    "seconds": seconds, "code": code_version(), "finished": time.strftime("%Y-%m-%dT%H:%M:%S")},
                   partial / MARKER)
        publish_dir(partial, final)  # an unfinished leftover (no marker) is replaced
    except BaseException:
        if not resumable:
            shutil.rmtree(partial, ignore_errors=True)
        raise
    return StageResult(stage, final, fp, False, seconds)


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``run_dir`` for the duration; a second process is refused at once."""
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / ".lock", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLockedError(f"run folder {str(run_dir)!r} is in use by another ontolab process; "
                                 "wait for it to finish or choose another out=") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        os.close(fd)
