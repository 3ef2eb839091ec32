"""Checkpoints that survive a kill at any instant, are verified before use, and load without pickle.

Writing (:class:`AtomicCheckpointIO`, passed to the Trainer as a plugin): the checkpoint is
serialised to memory, written to a temp file in the target's folder (flush + fsync), then a small
sidecar ``<name>.ckpt.sha256.json`` is written atomically recording the new file's sha256 *and the
sha256 of the file it replaces*, then the temp file is ``os.replace``-d onto the target and the
folder is fsynced. A kill at any point leaves a target whose hash the sidecar vouches for (the old
or the new file), never a half-written one. (Lightning's own save goes through fsspec without fsync.)

Reading (:func:`read_checkpoint`, also the plugin's ``load_checkpoint``): the bytes are hashed and
compared with the sidecar, so a truncated, zeroed or overwritten file is named, not half-loaded; then
``torch.load(weights_only=True)`` -- never a fallback to unpickling arbitrary objects.
:func:`find_resume_checkpoint` picks the newest valid checkpoint of a folder, warns about every
invalid one, and fails loudly naming them if none is valid: a run never silently restarts.

Also here: :func:`load_model` (a plain :class:`~dynamics.base.DynamicsModel` from a checkpoint, rebuilt
through ``dynamics.registry.build_model``). The Lightning callbacks that decide what is written when
(``best.ckpt``, ``last.ckpt``, snapshots, RNG states) are in :mod:`dynamics.training.callbacks`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from dynamics.base import ActionSpec, DynamicsModel, ObsSpec
from worlds.atomic import atomic_write_json as _atomic_write_json, fsync_dir
from worlds.errors import OntolabError

META_KEY = "ontolab"
"""Checkpoint entry holding :func:`model_meta` (model name, hparams and specs as plain types)."""
SIDECAR_SUFFIX = ".sha256.json"
LAST_NAME, BEST_NAME = "last.ckpt", "best.ckpt"
SNAPSHOT_PREFIX = "snapshot-step="
"""Weights-only snapshots are ``snapshot-step=<N>.ckpt`` (:class:`SnapshotCheckpoint`)."""


class CheckpointError(OntolabError):
    """A checkpoint is missing, corrupt, unverifiable or holds another model (message names the file)."""


# -- atomic files -----------------------------------------------------------------------------------
def _write_temp(target: Path, data: bytes) -> Path:
    """Write ``data`` durably to a hidden temp file next to ``target``; returns its path."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.filename is None:  # a full disk's write error names no file: name the checkpoint
            e.filename = str(target)
        raise
    return tmp


def atomic_write_bytes(target: str | os.PathLike, data: bytes) -> None:
    """Replace ``target`` with ``data`` atomically: temp file in the same folder, fsync, os.replace, fsync folder."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _write_temp(target, data)
    try:
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)


def atomic_write_json(target: str | os.PathLike, obj: Any) -> None:
    """Strict JSON (NaN/inf -> null), atomically (see :mod:`worlds.atomic`)."""
    _atomic_write_json(target, obj)


def sidecar_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


# -- verified reading -------------------------------------------------------------------------------
def verify_checkpoint(path: str | os.PathLike, data: bytes | None = None) -> dict[str, Any]:
    """Check ``path`` against its sidecar; returns ``{"sha256", "bytes", "global_step"}`` of the file as found.

    Raises :class:`CheckpointError` naming the file if it or its sidecar is missing or the hash differs.
    """
    path = Path(path)
    if data is None:
        if not path.is_file():
            raise CheckpointError(f"checkpoint {path} does not exist")
        data = path.read_bytes()
    side = sidecar_path(path)
    try:
        record = json.loads(side.read_text())
    except FileNotFoundError:  # refused, not loaded unverified: the sidecar is the only integrity check
        raise CheckpointError(f"checkpoint {path} has no sidecar {side.name}, so it cannot be verified (it was not "
                              f"written by AtomicCheckpointIO, or the sidecar was lost); copy {side.name} with it "
                              "from where the checkpoint came from") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint sidecar {side} is unreadable ({e}); copy {side.name} again from where the "
                              "checkpoint came from") from None
    if not isinstance(record, dict):
        raise CheckpointError(f"checkpoint sidecar {side} holds a JSON {type(record).__name__}, expected an object "
                              f"with the checkpoint's sha256; copy {side.name} again from where the checkpoint came from")
    digest = hashlib.sha256(data).hexdigest()
    if digest == record.get("sha256"):
        return {"sha256": digest, "bytes": len(data), "global_step": record.get("global_step")}
    if digest == record.get("previous_sha256"):  # killed between writing the sidecar and the rename
        return {"sha256": digest, "bytes": len(data), "global_step": record.get("previous_global_step")}
    raise CheckpointError(
        f"checkpoint {path} is corrupt: {len(data)} bytes with sha256 {digest[:12]}..., its sidecar records "
        f"{record.get('bytes')} bytes with sha256 {str(record.get('sha256'))[:12]}... (truncated or overwritten)"
    )


def read_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Verify ``path`` (see :func:`verify_checkpoint`) and load it with ``torch.load(weights_only=True)``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    data = path.read_bytes()
    verify_checkpoint(path, data)
    try:
        ckpt = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError, OSError, zipfile.BadZipFile) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {path} cannot be loaded with weights_only=True ({first})") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(ckpt).__name__}, expected a dict")
    return ckpt


def find_resume_checkpoint(folder: str | os.PathLike) -> Path | None:
    """The newest valid ``*.ckpt`` of ``folder`` (highest step; ``last.ckpt`` wins ties), or ``None`` if it has none.

    Every invalid checkpoint is named in a warning; if checkpoints exist but none is valid this raises
    :class:`CheckpointError` naming them (it never silently returns ``None``). Weights-only snapshots
    (``snapshot-step=<N>.ckpt``) hold no optimizer or data state and are never candidates.
    """
    folder = Path(folder)
    candidates = sorted(p for p in folder.glob("*.ckpt") if not p.name.startswith(SNAPSHOT_PREFIX)) \
        if folder.is_dir() else []
    if not candidates:
        return None
    valid: list[tuple[int, bool, float, Path]] = []
    bad: list[str] = []
    for path in candidates:
        try:
            info = verify_checkpoint(path)
        except CheckpointError as e:
            bad.append(str(e))
            continue
        valid.append((int(info["global_step"] or 0), path.name == LAST_NAME, path.stat().st_mtime, path))
    if not valid:
        raise CheckpointError(f"no valid checkpoint to resume from in {folder}: {' | '.join(bad)}; "
                              "move the folder away to start from scratch")
    for message in bad:
        warnings.warn(f"skipping invalid checkpoint: {message}", stacklevel=2)
    return max(valid)[3]


# -- the Trainer plugin -----------------------------------------------------------------------------
def _nonfinite_weights(checkpoint: dict[str, Any]) -> list[str]:
    state = checkpoint.get("state_dict", {})
    return [k for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all())]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Atomic, fsynced, hash-recorded saves; verified ``weights_only=True`` loads (see the module docstring)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        path = Path(path)
        bad = _nonfinite_weights(checkpoint)
        if bad:
            raise CheckpointError(f"refusing to write {path}: weights at step {checkpoint.get('global_step')} are not "
                                  f"finite ({', '.join(bad[:3])}); the previous checkpoint is kept")
        buf = io.BytesIO()
        torch.save(checkpoint, buf)
        data = buf.getvalue()
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a process killed mid-save
            stale.unlink(missing_ok=True)
        # The file being replaced, as it is on disk -- not the sidecar's claim: after a save killed between
        # its sidecar and its rename the sidecar names bytes that never landed, and recording that hash as
        # "previous" would leave the intact file unverifiable if this save is killed at the same point.
        previous: dict[str, Any] = {}
        if path.is_file():
            try:
                previous = verify_checkpoint(path)
            except CheckpointError:  # a damaged file or sidecar vouches for nothing
                previous = {}
        record = {
            "file": path.name, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
            "global_step": checkpoint.get("global_step"),
            "previous_sha256": previous.get("sha256"), "previous_global_step": previous.get("global_step"),
        }
        tmp = _write_temp(path, data)
        try:
            atomic_write_json(sidecar_path(path), record)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_dir(path.parent)

    def load_checkpoint(self, path: Any, map_location: Any = "cpu", weights_only: bool | None = None) -> dict[str, Any]:
        """Verified load (to CPU by default, as Lightning's); ``weights_only`` is ignored: it is always ``True``."""
        return read_checkpoint(path, map_location=map_location)

    def remove_checkpoint(self, path: Any) -> None:
        for p in (Path(path), sidecar_path(path)):
            p.unlink(missing_ok=True)


# -- plain models from checkpoints ------------------------------------------------------------------
def model_meta(model: DynamicsModel) -> dict[str, Any]:
    """What rebuilds ``model``: registry name, ``hparams`` and both specs, as plain types."""
    return {
        "format": 1,
        "model": str(getattr(type(model), "name", type(model).__name__)),
        "hparams": dict(model.hparams),
        "obs_spec": {"shape": [int(s) for s in model.obs_spec.shape], "kind": model.obs_spec.kind},
        "action_spec": {"discrete": bool(model.action_spec.discrete), "n": int(model.action_spec.n),
                        "dim": int(model.action_spec.dim)},
    }


def _registry_build(name: str, obs_spec: ObsSpec, action_spec: ActionSpec, hparams: dict[str, Any]) -> DynamicsModel:
    from dynamics.registry import build_model  # lazy: the registry imports every model

    return build_model(name, obs_spec, action_spec, **hparams)


def load_model(path: str | os.PathLike, expected_model: str | None = None, *, map_location: Any = "cpu",
               build: Callable[..., DynamicsModel] | None = None) -> DynamicsModel:
    """The plain model of a training checkpoint, in eval mode (no Lightning needed afterwards).

    ``expected_model``: registry name the checkpoint must hold. ``build(name, obs_spec, action_spec,
    hparams)`` defaults to ``dynamics.registry.build_model``. Every failure is a one-line
    :class:`CheckpointError` naming the file.
    """
    ckpt = read_checkpoint(path, map_location)
    meta = ckpt.get(META_KEY)
    if not isinstance(meta, dict) or "model" not in meta:
        raise CheckpointError(f"checkpoint {path} is not an ontolab dynamics checkpoint (no {META_KEY!r} entry)")
    name = meta["model"]
    if expected_model is not None and name != expected_model:
        raise CheckpointError(f"checkpoint {path} holds a {name!r} model, expected {expected_model!r}")
    try:
        obs_spec = ObsSpec(tuple(meta["obs_spec"]["shape"]), meta["obs_spec"]["kind"])
        action_spec = ActionSpec(**meta["action_spec"])
        hparams = {k: v for k, v in meta["hparams"].items() if k not in ("obs_spec", "action_spec")}
        model = (build or _registry_build)(name, obs_spec, action_spec, hparams)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"checkpoint {path}: cannot rebuild model {name!r} from its hparams ({e})") from None
    prefix = "model."
    stored = ckpt.get("state_dict", {})
    if not isinstance(stored, dict):
        raise CheckpointError(f"checkpoint {path}: its state_dict is a {type(stored).__name__}, expected a dict; "
                              "the checkpoint was not written by fit_dynamics")
    state = {k[len(prefix):]: v for k, v in stored.items() if isinstance(k, str) and k.startswith(prefix)}
    check_weights_fit(path, model, state)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:  # anything check_weights_fit cannot see: keep the cause, on one line
        cause = " ".join(str(e).split())[:300]
        raise CheckpointError(f"checkpoint {path}: weights do not fit model {name!r} ({cause}); the checkpoint was "
                              "written by a different model version or configuration: retrain") from None
    return model.train(False)  # eval mode


def _first(keys: Sequence[str], n: int = 4) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f" and {len(keys) - n} more" if len(keys) > n else "")


def check_weights_fit(path: str | os.PathLike, model: torch.nn.Module, state: dict[str, Any]) -> None:
    """Raise :class:`CheckpointError` naming the file and the first missing, unexpected or reshaped keys
    unless ``state`` (keys without the Lightning ``model.`` prefix) loads into ``model`` with ``strict=True``.

    (``load_state_dict``'s own error puts the cause on later lines, under "Error(s) in loading state_dict".)"""
    ours = model.state_dict()
    missing = [k for k in ours if k not in state]
    unexpected = [k for k in state if k not in ours]
    reshaped = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in ours.items()
                if k in state and torch.is_tensor(state[k]) and tuple(state[k].shape) != tuple(v.shape)]
    problems = [f"{what}: {_first(keys)}" for what, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                                             ("shapes (checkpoint vs model)", reshaped)) if keys]
    if problems:
        name = getattr(type(model), "name", type(model).__name__)
        raise CheckpointError(f"checkpoint {path}: weights do not fit model {name!r} ({'; '.join(problems)}); the "
                              "checkpoint was written by a different model version or configuration: retrain")
