"""Streaming, atomic writing of trajectory datasets (the format is described in :mod:`.manifest`).

Everything is written into a temporary sibling folder ``.NAME.tmp-<pid>-<random>``; shard files
are fsync'ed as they are flushed, the manifest is written last, and the folder is renamed to
``PATH`` only on :meth:`DatasetWriter.close`. So a crash at any moment never leaves a folder at
``PATH`` that looks complete. Stale temporary folders of dead processes are removed by the next
writer of the same ``PATH``.

With ``overwrite=True`` an existing dataset stays readable until the new one is complete; then the
old folder is renamed aside, the new one renamed in, and the old one deleted. (Between the two
renames -- microseconds -- ``PATH`` is briefly absent; a reader then sees "no dataset", never a mix.
POSIX has no portable atomic exchange of two directories.)

Memory stays bounded: a shard is flushed to disk once it holds ``shard_steps`` steps (episodes
are never split across shards, so a shard holds at most ``shard_steps`` + one episode).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from worlds.atomic import fsync_dir, publish_dir
from worlds.base import VectorWorld
from worlds.concepts import ConceptSchema
from worlds.dataset.manifest import (
    FORMAT_NAME, FORMAT_VERSION, INDEX_COLUMNS, INDEX_DTYPES, MANIFEST_NAME, action_spec_of, check_action_spec,
    check_obs_spec, code_version, dumps, field_specs, obs_spec_of, utc_now,
)
from worlds.dataset.splits import ALL_SPLITS, SPLIT_RULE, SPLITS, check_fractions, split_of
from worlds.dataset.stats import ConceptStats
from worlds.trajectory import Episode


class DatasetWriter:
    """Write episodes to a dataset folder at ``path``; use as a context manager or call :meth:`close`.

    ``add(episode, ood=False)`` returns the new episode id (0, 1, 2, ... in order of adding). Leaving
    the ``with`` block by an exception discards everything written (:meth:`abort`).
    """

    def __init__(
        self, path: str | os.PathLike, *, world_name: str, schema: ConceptSchema, obs_spec: Mapping[str, Any],
        action_spec: Mapping[str, Any], families: Sequence[str], ood_families: Sequence[str] = (),
        shard_steps: int = 65536, config: Mapping[str, Any] | None = None, seed: int = 0,
        split_fractions: Sequence[float] = (0.8, 0.1, 0.1), overwrite: bool = False,
    ):
        if not isinstance(shard_steps, int) or shard_steps < 1:
            raise ValueError(f"shard_steps must be a positive integer, got {shard_steps!r}")
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        self.families, self.ood_families = tuple(families), tuple(ood_families)
        if not self.families or set(self.ood_families) - set(self.families):
            raise ValueError(f"ood_families must be a subset of a non-empty families list, got families={self.families}, ood_families={self.ood_families}")
        self.config = dict(config or {})
        try:
            json.dumps(self.config, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise ValueError(f"config must be a JSON-serialisable dict (plain numbers, strings, lists, dicts), got an error: {e}") from None
        self.world_name, self.schema, self.seed = str(world_name), schema, int(seed)
        self.obs_spec, self.action_spec = check_obs_spec(obs_spec), check_action_spec(action_spec)
        self.split_fractions = check_fractions(split_fractions)
        self.shard_steps, self.overwrite = shard_steps, overwrite
        self._specs = field_specs(schema, self.obs_spec, self.action_spec)

        self.path = Path(path).absolute()
        self._check_target()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale(self.path)
        self._tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.tmp-{os.getpid()}-", dir=self.path.parent))
        self._buffer: list[dict[str, np.ndarray]] = []
        self._buffered_steps = 0
        self._shards: list[dict[str, Any]] = []
        self._index: dict[str, list[int]] = {c: [] for c in INDEX_COLUMNS}
        self._stats = {s: ConceptStats(schema) for s in ALL_SPLITS}
        self._closed = False
        self.fingerprint: str | None = None
        """sha256 of the manifest bytes once closed (equals ``TrajectoryDataset.fingerprint``)."""

    @classmethod
    def for_world(cls, path: str | os.PathLike, world: VectorWorld, **kwargs: Any) -> "DatasetWriter":
        """A writer whose name, schema, specs and families are taken from ``world``."""
        return cls(path, world_name=world.name, schema=world.schema, obs_spec=obs_spec_of(world),
                   action_spec=action_spec_of(world), families=world.families, ood_families=world.ood_families, **kwargs)

    # -- adding episodes ---------------------------------------------------------------------------------

    @property
    def num_episodes(self) -> int:
        return len(self._index["episode_id"])

    def add(self, episode: Episode, ood: bool = False) -> int:
        """Validate ``episode``, buffer it (flushing a full shard) and return its episode id."""
        if self._closed:
            raise ValueError(f"cannot add to the writer of {self.path}: it is already closed or aborted")
        arrays = self._checked_fields(episode, ood)
        eid = self.num_episodes
        split = split_of(eid, seed=self.seed, fractions=self.split_fractions, ood=ood)
        for col, v in zip(INDEX_COLUMNS, (eid, len(self._shards), self._buffered_steps, len(episode), episode.family, ALL_SPLITS.index(split))):
            self._index[col].append(int(v))
        self._buffer.append(arrays)
        self._buffered_steps += len(episode)
        if self._buffered_steps >= self.shard_steps:
            self._flush()
        return eid

    def _checked_fields(self, episode: Episode, ood: bool) -> dict[str, np.ndarray]:
        """The episode's per-step arrays cast to the stored dtypes, or a ``ValueError`` naming the problem."""
        episode.validate()
        if set(episode.concepts) != set(self.schema.names):
            raise ValueError(f"episode concepts must be exactly the schema's {self.schema.names}, got {tuple(episode.concepts)}")
        if not 0 <= episode.family < len(self.families):
            raise ValueError(f"episode family must index into {self.families}, got {episode.family}")
        fam = self.families[episode.family]
        if ood != (fam in self.ood_families):
            want = "one of the held-out" if ood else "none of the held-out"
            raise ValueError(f"{'ood' if ood else 'in-distribution'} episodes must come from {want} families {self.ood_families}, got family {fam!r}; build the training world without held-out families")
        out = {}
        for name, arr in episode.step_fields().items():
            shape, dtype = self._specs[name]
            arr = np.asarray(arr)
            if arr.shape[1:] != shape:
                raise ValueError(f"episode field {name!r} must have per-step shape {shape}, got {arr.shape[1:]}")
            if name == "obs" and arr.dtype != np.dtype(dtype):  # observations are never silently converted
                raise ValueError(f"episode obs must have dtype {dtype} (the obs_spec), got {arr.dtype}")
            if name == "obs" and arr.dtype.kind == "f" and not np.isfinite(arr).all():
                t = int(np.flatnonzero(~np.isfinite(arr.reshape(len(arr), -1)).all(axis=1))[0])
                raise ValueError(f"episode obs holds {int((~np.isfinite(arr)).sum())} non-finite values (NaN or inf), "
                                 f"the first at step {t}; fix the world's observations before collecting")
            if name == "actions" and not np.can_cast(arr.dtype, dtype, casting="same_kind"):
                raise ValueError(f"episode actions must have dtype {dtype}, got {arr.dtype}")
            out[name] = np.ascontiguousarray(arr, dtype=dtype)
            if name.startswith("concept.") and arr.dtype != out[name].dtype and dtype != "float32" \
                    and not np.array_equal(out[name], arr):
                raise ValueError(f"concept {name[8:]!r}: values must be integers in [0, {self.schema[name[8:]].num_classes}), got {np.unique(arr)[:8]}")
        return out

    def _flush(self) -> None:
        """Write the buffered episodes as the next shard (fsync'ed) and empty the buffer."""
        if not self._buffer:
            return
        for split, stats in self._buffer_stats(check=True).items():
            self._stats[split] = self._stats[split].merge(stats)
        name = f"shard_{len(self._shards):05d}"
        (self._tmp / name).mkdir()
        files = {}
        for field, (shape, dtype) in self._specs.items():
            rel = f"{name}/{field}.npy"
            full_shape = (self._buffered_steps, *shape)
            digest = _write_npy(self._tmp / rel, [ep[field] for ep in self._buffer], full_shape, np.dtype(dtype))
            files[field] = {"path": rel, "shape": list(full_shape), "dtype": dtype, "sha256": digest}
        fsync_dir(self._tmp / name)
        self._shards.append({"name": name, "steps": self._buffered_steps, "files": files})
        self._buffer, self._buffered_steps = [], 0

    def _buffer_stats(self, check: bool) -> dict[str, ConceptStats]:
        """Concept statistics of the buffered episodes per split; ``check`` validates the values first.

        Done once per shard rather than per episode: concatenated checks cost far less per step.
        """
        k = len(self._buffer)
        if k == 0:
            return {}
        concepts = {c: np.concatenate([ep[f"concept.{c}"] for ep in self._buffer]) for c in self.schema.names}
        if check:
            try:
                self.schema.check(concepts)
            except ValueError as e:
                ids = self._index["episode_id"][-k:]
                raise ValueError(f"{e} (in one of episodes {ids[0]}..{ids[-1]})") from None
        rows = np.repeat(np.asarray(self._index["split"][-k:]), [len(ep["is_first"]) for ep in self._buffer])
        return {s: ConceptStats(self.schema).update({c: v[rows == code] for c, v in concepts.items()})
                for code, s in enumerate(ALL_SPLITS) if (rows == code).any()}

    # -- finishing ---------------------------------------------------------------------------------------

    def base_rates(self, splits: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
        """Base rates (see :mod:`.stats`) over the episodes added so far to ``splits`` (default: all)."""
        pending = self._buffer_stats(check=False)
        total = ConceptStats(self.schema)
        for s in ALL_SPLITS if splits is None else splits:
            total = total.merge(self._stats[s])
            if s in pending:
                total = total.merge(pending[s])
        return total.summary()

    def close(self) -> Path:
        """Flush, write the index and the manifest, and move the dataset into place; returns ``path``."""
        if self._closed:
            raise ValueError(f"the writer of {self.path} is already closed or aborted")
        try:
            self._flush()
            index_files = {}
            (self._tmp / "index").mkdir()
            for col in INDEX_COLUMNS:
                arr = np.asarray(self._index[col], dtype=INDEX_DTYPES[col])
                rel = f"index/{col}.npy"
                index_files[col] = {"path": rel, "shape": list(arr.shape), "dtype": INDEX_DTYPES[col],
                                    "sha256": _write_npy(self._tmp / rel, [arr], arr.shape, arr.dtype)}
            fsync_dir(self._tmp / "index")
            raw = dumps(self._manifest(index_files))
            with open(self._tmp / MANIFEST_NAME, "xb") as f:
                f.write(raw)
                f.flush()
                os.fsync(f.fileno())
            fsync_dir(self._tmp)
            self._move_into_place()
        except BaseException:
            self.abort()
            raise
        self._closed = True
        self.fingerprint = hashlib.sha256(raw).hexdigest()
        return self.path

    def split_counts(self) -> dict[str, dict[str, int]]:
        """``{split: {"episodes", "steps", "transitions"}}`` of the episodes added so far."""
        split_codes = np.asarray(self._index["split"], np.int64)
        lengths = np.asarray(self._index["length"], np.int64)
        out = {}
        for code, s in enumerate(ALL_SPLITS):
            sel = split_codes == code
            out[s] = {"episodes": int(sel.sum()), "steps": int(lengths[sel].sum()), "transitions": int((lengths[sel] - 1).sum())}
        return out

    def _manifest(self, index_files: dict[str, Any]) -> dict[str, Any]:
        lengths = np.asarray(self._index["length"], np.int64)
        base_rates = {s: self._stats[s].summary() for s in ALL_SPLITS}
        base_rates["all"] = self.base_rates()
        base_rates["in_distribution"] = self.base_rates(SPLITS)
        return {
            "format": FORMAT_NAME, "format_version": FORMAT_VERSION, "world": self.world_name,
            "schema": self.schema.to_dict(), "obs_spec": self.obs_spec, "action_spec": self.action_spec,
            "families": list(self.families), "ood_families": list(self.ood_families),
            "fields": {k: {"shape": list(s), "dtype": d} for k, (s, d) in self._specs.items()},
            "counts": {"episodes": self.num_episodes, "steps": int(lengths.sum()),
                       "transitions": int((lengths - 1).sum()), "splits": self.split_counts()},
            "shards": self._shards,
            "index": {"split_names": list(ALL_SPLITS), "files": index_files},
            "base_rates": base_rates,
            "split_rule": {"rule": SPLIT_RULE, "fractions": list(self.split_fractions), "seed": self.seed},
            "config": self.config, "seed": self.seed, "code_version": code_version(), "created": utc_now(),
        }

    def _check_target(self) -> None:
        if not self.path.exists():
            return
        if not self.overwrite:
            raise FileExistsError(f"dataset folder {self.path} already exists; pass overwrite=True to replace it or choose another path")
        if not self.path.is_dir() or (any(self.path.iterdir()) and not (self.path / MANIFEST_NAME).is_file()):
            raise FileExistsError(f"{self.path} exists and is not an ontolab dataset (no {MANIFEST_NAME}); refusing to replace it, remove it by hand or choose another path")

    def _move_into_place(self) -> None:
        self._check_target()
        publish_dir(self._tmp, self.path)

    def abort(self) -> None:
        """Discard everything written so far; ``path`` is left untouched."""
        self._closed = True
        self._buffer = []
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> "DatasetWriter":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            self.abort()
        elif not self._closed:
            self.close()


class _HashingFile:
    """Write-through file wrapper that hashes what it writes (so the checksum costs no re-read)."""

    def __init__(self, f: Any):
        self.f, self.sha = f, hashlib.sha256()

    def write(self, data: Any) -> int:
        self.sha.update(data)
        return self.f.write(data)


def _write_npy(path: Path, chunks: Sequence[np.ndarray], shape: tuple[int, ...], dtype: np.dtype) -> str:
    """Write chunks (concatenated along axis 0) as one ``.npy`` file without concatenating in memory; fsync; sha256."""
    with open(path, "xb") as f:
        out = _HashingFile(f)
        np.lib.format.write_array_header_1_0(out, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(shape)})
        for c in chunks:
            out.write(memoryview(np.ascontiguousarray(c, dtype=dtype)).cast("B"))
        f.flush()
        os.fsync(f.fileno())
    return out.sha.hexdigest()


def _remove_stale(path: Path) -> None:
    """Delete ``.NAME.tmp-<pid>-*`` / ``.NAME.old-<pid>-*`` siblings left by processes that no longer run."""
    if os.name != "posix" or not path.parent.is_dir():
        return  # liveness of a pid cannot be tested safely elsewhere (os.kill(pid, 0) kills on Windows)
    for kind in ("tmp", "old"):
        for stale in path.parent.glob(f".{glob.escape(path.name)}.{kind}-*-*"):
            pid = stale.name[len(f".{path.name}.{kind}-"):].split("-", 1)[0]
            if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
                shutil.rmtree(stale, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True
