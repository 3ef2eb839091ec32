"""The dataset manifest: what a trajectory dataset folder holds, and how it is checked.

Folder layout (``FORMAT_VERSION`` 1)::

    PATH/manifest.json                  written last; its sha256 is the dataset fingerprint
    PATH/index/<column>.npy             episode table: episode_id, shard, offset, length, family, split
    PATH/shard_00000/<field>.npy        concatenated steps of whole episodes, one file per per-step field
    ...

Per-step fields are ``obs``, ``actions``, ``is_first``, ``is_terminal``, ``reward``, ``success``,
``violation`` and ``concept.<name>`` for every schema concept (see :class:`worlds.trajectory.Episode`).
The ``split`` column holds codes into ``manifest["index"]["split_names"]``.
"""

from __future__ import annotations

import json
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

import gymnasium as gym
import numpy as np

from worlds.base import VectorWorld
from worlds.concepts import ConceptSchema
from worlds.errors import OntolabError

FORMAT_NAME = "ontolab.trajectories"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
OBS_KINDS: tuple[str, ...] = ("symbolic", "image", "vector")
BASE_FIELDS: tuple[str, ...] = ("obs", "actions", "is_first", "is_terminal", "reward", "success", "violation")
INDEX_COLUMNS: tuple[str, ...] = ("episode_id", "shard", "offset", "length", "family", "split")
INDEX_DTYPES = {"episode_id": "int64", "shard": "int64", "offset": "int64", "length": "int64", "family": "int64", "split": "uint8"}
REQUIRED_KEYS: tuple[str, ...] = (
    "format", "format_version", "world", "schema", "obs_spec", "action_spec", "families", "ood_families",
    "fields", "counts", "shards", "index", "base_rates", "split_rule", "config", "seed", "code_version", "created",
)


class DatasetError(OntolabError):
    """A trajectory dataset on disk is missing, incomplete or damaged (one-line message naming the file)."""


def check_obs_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Normalise ``{"shape": [...], "dtype": "uint8", "obs_kind": "symbolic"}``; ``ValueError`` if malformed."""
    try:
        out = {"shape": [int(s) for s in spec["shape"]], "dtype": np.dtype(spec["dtype"]).name, "obs_kind": str(spec["obs_kind"])}
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"obs_spec must be {{'shape': [ints], 'dtype': str, 'obs_kind': str}}, got {dict(spec)!r} ({e})") from None
    if out["obs_kind"] not in OBS_KINDS:
        raise ValueError(f"obs_spec obs_kind must be one of {OBS_KINDS}, got {out['obs_kind']!r}")
    return out


def check_action_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Normalise ``{"kind": "discrete", "n": 5}`` or ``{"kind": "continuous", "shape", "low", "high"}``."""
    kind = spec.get("kind")
    try:
        if kind == "discrete":
            out: dict[str, Any] = {"kind": "discrete", "n": int(spec["n"])}
            if int(spec.get("start", 0)) != 0:
                out["start"] = int(spec["start"])
            return out
        if kind == "continuous":
            shape = [int(s) for s in spec["shape"]]
            low = np.broadcast_to(np.asarray(spec["low"], np.float64), shape).ravel().tolist()
            high = np.broadcast_to(np.asarray(spec["high"], np.float64), shape).ravel().tolist()
            return {"kind": "continuous", "shape": shape, "low": low, "high": high}
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"malformed action_spec {dict(spec)!r} ({e})") from None
    raise ValueError(f"action_spec kind must be 'discrete' or 'continuous', got {kind!r}")


def obs_spec_of(world: VectorWorld) -> dict[str, Any]:
    """The observation spec of a world's single-env observation space."""
    space = world.single_observation_space
    return check_obs_spec({"shape": list(space.shape), "dtype": np.dtype(space.dtype).name, "obs_kind": world.obs_kind})


def action_spec_of(world: VectorWorld) -> dict[str, Any]:
    """The action spec of a world's single-env action space (``Discrete`` or ``Box``)."""
    space = world.single_action_space
    if isinstance(space, gym.spaces.Discrete):
        return check_action_spec({"kind": "discrete", "n": int(space.n), "start": int(space.start)})
    if isinstance(space, gym.spaces.Box):
        return check_action_spec({"kind": "continuous", "shape": list(space.shape), "low": space.low, "high": space.high})
    raise TypeError(f"datasets support Discrete and Box action spaces, got {type(space).__name__}")


def field_specs(schema: ConceptSchema, obs_spec: Mapping[str, Any], action_spec: Mapping[str, Any]) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{field: (per-step shape, dtype name)}`` of every per-step field a dataset stores."""
    if action_spec["kind"] == "discrete":
        act: tuple[tuple[int, ...], str] = ((), "int64")
    else:
        act = (tuple(action_spec["shape"]), "float32")
    out = {
        "obs": (tuple(obs_spec["shape"]), np.dtype(obs_spec["dtype"]).name), "actions": act,
        "is_first": ((), "bool"), "is_terminal": ((), "bool"), "reward": ((), "float32"),
        "success": ((), "bool"), "violation": ((), "bool"),
    }
    out.update({f"concept.{c.name}": ((), c.dtype.name) for c in schema})
    return out


def code_version() -> dict[str, Any]:
    """``{"ontolab": version, "git_commit": sha or None, "git_dirty": bool or None}`` of the running code."""
    try:
        version = metadata.version("ontolab")
    except metadata.PackageNotFoundError:
        version = None
    repo = Path(__file__).resolve().parents[2]
    commit = dirty = None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=5, check=True).stdout.strip() or None
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo, capture_output=True, text=True, timeout=5, check=True)
        dirty = bool(status.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass  # not a git checkout, or git missing: the package version is all we know
    return {"ontolab": version, "git_commit": commit, "git_dirty": dirty}


def utc_now() -> str:
    """The current time as an ISO-8601 UTC string."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def dumps(manifest: Mapping[str, Any]) -> bytes:
    """Canonical manifest bytes (sorted keys, strict JSON): the fingerprint is their sha256."""
    return (json.dumps(manifest, indent=1, sort_keys=True, allow_nan=False) + "\n").encode()


def check_manifest(m: Any, where: str) -> None:
    """Raise :class:`DatasetError` unless ``m`` is a structurally valid version-1 manifest."""
    fix = "re-collect the dataset"
    if not isinstance(m, dict):
        raise DatasetError(f"{where}: manifest must be a JSON object, got {type(m).__name__}; {fix}")
    missing = [k for k in REQUIRED_KEYS if k not in m]
    if missing:
        raise DatasetError(f"{where}: manifest lacks required key(s) {missing}; the file is damaged or not an ontolab dataset, {fix}")
    if m["format"] != FORMAT_NAME or m["format_version"] != FORMAT_VERSION:
        raise DatasetError(
            f"{where}: format {m['format']!r} version {m['format_version']!r} is not supported "
            f"(this ontolab reads {FORMAT_NAME!r} version {FORMAT_VERSION}); {fix} with this version"
        )
    try:
        schema = ConceptSchema.from_dict(m["schema"])
        specs = field_specs(schema, check_obs_spec(m["obs_spec"]), check_action_spec(m["action_spec"]))
        declared = {k: (tuple(v["shape"]), np.dtype(v["dtype"]).name) for k, v in m["fields"].items()}
        n_episodes = int(m["counts"]["episodes"])
        shard_names = [s["name"] for s in m["shards"]]
        for s in m["shards"]:
            for f in s["files"].values():
                _ = (f["path"], f["shape"], f["dtype"], f["sha256"], s["steps"])
        for f in m["index"]["files"].values():
            _ = (f["path"], f["shape"], f["dtype"], f["sha256"])
        _ = list(m["index"]["split_names"])
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise DatasetError(f"{where}: manifest is malformed ({type(e).__name__}: {e}); {fix}") from None
    if declared != specs:
        raise DatasetError(f"{where}: manifest 'fields' {declared} disagree with its schema and specs {specs}; {fix}")
    if sorted(m["index"]["files"]) != sorted(INDEX_COLUMNS):
        raise DatasetError(f"{where}: manifest index must list columns {INDEX_COLUMNS}, got {sorted(m['index']['files'])}; {fix}")
    for s in m["shards"]:
        if sorted(s["files"]) != sorted(specs):
            raise DatasetError(f"{where}: shard {s['name']} must list files for fields {sorted(specs)}, got {sorted(s['files'])}; {fix}")
        for name, f in s["files"].items():
            if (tuple(f["shape"]), np.dtype(f["dtype"]).name) != ((int(s["steps"]), *specs[name][0]), specs[name][1]):
                raise DatasetError(f"{where}: manifest entry {f['path']} has shape {f['shape']} {f['dtype']}, expected {[s['steps'], *specs[name][0]]} {specs[name][1]}; {fix}")
    if len(set(shard_names)) != len(shard_names) or n_episodes < 0:
        raise DatasetError(f"{where}: manifest shards or counts are inconsistent; {fix}")
