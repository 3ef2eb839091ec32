"""Reading trajectory datasets: checked on open, then streamed from memory-mapped shards.

Files are opened relative to a descriptor of the dataset folder held for the reader's lifetime,
so a dataset replaced on disk while it is open (``DatasetWriter(..., overwrite=True)``) is never
mixed with the new one. Arrays are memory-mapped exactly as ``np.load(f, mmap_mode="r",
allow_pickle=False)`` would (the header is parsed by ``numpy.lib.format``; object dtypes are refused).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from worlds.concepts import ConceptSchema
from worlds.dataset.manifest import INDEX_COLUMNS, MANIFEST_NAME, DatasetError, check_manifest
from worlds.trajectory import Episode

_FIX = "the dataset is damaged; re-collect it (worlds.collect.collect) or restore it from a copy"
_MAX_OPEN = 256  # memmaps kept open at once (each holds a file descriptor)
EXTRA_FIELDS = ("episode_id", "t")
"""Pseudo-fields :meth:`TrajectoryDataset.concat` can add: each row's episode id and step index."""


class TrajectoryDataset:
    """A read-only trajectory dataset. Build with :meth:`open`; close with :meth:`close` or ``with``.

    Per-step fields (``field_names``): ``obs [t *obs]``, ``actions [t]`` int64 or ``[t a]`` float32,
    ``is_first``, ``is_terminal``, ``success``, ``violation`` ``[t]`` bool, ``reward [t]`` float32,
    ``concept.<name> [t]`` (uint8 binary, int64 categorical, float32 scalar).
    """

    def __init__(self, root: Path, manifest: dict[str, Any], manifest_bytes: bytes, dirfd: int | None):
        self.root, self.manifest, self._dirfd = root, manifest, dirfd
        self.fingerprint = hashlib.sha256(manifest_bytes).hexdigest()
        """sha256 of the manifest bytes; the manifest holds every file's checksum, so this names the content."""
        self.schema = ConceptSchema.from_dict(manifest["schema"])
        self._maps: OrderedDict[str, np.ndarray] = OrderedDict()
        self._files = {f: [s["files"][f] for s in manifest["shards"]] for f in manifest["fields"]}
        self._shard_steps = np.asarray([s["steps"] for s in manifest["shards"]], np.int64)

    # -- opening and checking ----------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike, verify: bool = True) -> "TrajectoryDataset":
        """Open and check the dataset at ``path``; ``verify`` also checks every file's sha256."""
        root = Path(path).absolute()
        if not root.is_dir():
            what = "is not a folder" if root.exists() else "does not exist"
            raise DatasetError(f"no dataset at {root}: the path {what}; check the path or collect one (worlds.collect.collect)")
        dirfd = os.open(root, os.O_RDONLY) if os.open in os.supports_dir_fd else None
        try:
            raw, manifest = cls._read_manifest(root, dirfd)
        except BaseException:
            if dirfd is not None:
                os.close(dirfd)
            raise
        ds = cls(root, manifest, raw, dirfd)  # owns dirfd from here on
        try:
            for f in [*manifest["index"]["files"].values(), *(f for s in manifest["shards"] for f in s["files"].values())]:
                ds._check_file(f, verify)
            ds._load_index()
        except BaseException:
            ds.close()
            raise
        return ds

    @staticmethod
    def _read_manifest(root: Path, dirfd: int | None) -> tuple[bytes, dict[str, Any]]:
        try:
            with _open_rb(root, dirfd, MANIFEST_NAME) as f:
                raw = f.read()
        except FileNotFoundError:
            raise DatasetError(f"{root / MANIFEST_NAME} is missing: {root} is not a complete dataset (interrupted writes never leave one); re-collect it") from None
        try:
            manifest = json.loads(raw.decode())
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DatasetError(f"{root / MANIFEST_NAME} is not valid JSON ({e}); {_FIX}") from None
        check_manifest(manifest, str(root / MANIFEST_NAME))
        return raw, manifest

    def _check_file(self, entry: dict[str, Any], verify: bool) -> None:
        """Header, size and (if ``verify``) sha256 of one file against its manifest entry."""
        rel = entry["path"]
        if not isinstance(rel, str) or os.path.isabs(rel) or ".." in Path(rel).parts:  # never read outside the folder
            raise self._error(str(rel), "is not a path inside the dataset folder")
        with self._open_file(rel) as f:
            shape, dtype, offset = self._header(f, rel)
            if shape != tuple(entry["shape"]) or dtype != np.dtype(entry["dtype"]):
                raise self._error(rel, f"holds {dtype} {shape}, the manifest says {entry['dtype']} {tuple(entry['shape'])}")
            if verify:
                f.seek(0)
                if hashlib.file_digest(f, "sha256").hexdigest() != entry["sha256"]:  # streams in chunks
                    raise self._error(rel, "sha256 checksum mismatch (contents changed or corrupted)")
                if dtype.kind == "f" and rel.endswith("/obs.npy") and shape[0]:  # NaN obs: refused before training
                    arr = np.memmap(f, dtype=dtype, mode="r", offset=offset, shape=shape)
                    bad = sum(int((~np.isfinite(arr[i:i + 65536])).sum()) for i in range(0, shape[0], 65536))
                    del arr
                    if bad:
                        raise self._error(rel, f"holds {bad} non-finite observation values (NaN or inf)")

    def _header(self, f: Any, rel: str) -> tuple[tuple[int, ...], np.dtype, int]:
        """``(shape, dtype, data offset)`` of an open ``.npy`` file, checking that its size matches."""
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f"unsupported .npy version {version}")
        except ValueError as e:
            raise self._error(rel, f"is not a readable .npy file ({e})") from None
        if dtype.hasobject or fortran:
            raise self._error(rel, f"has dtype {dtype} fortran_order={fortran}; only plain C-ordered arrays are allowed")
        offset = f.tell()
        expected, actual = offset + int(np.prod(shape)) * dtype.itemsize, os.fstat(f.fileno()).st_size
        if actual != expected:
            raise self._error(rel, f"is {'truncated' if actual < expected else 'too long'}: {actual} bytes, expected {expected} for {dtype} {shape}")
        return tuple(shape), dtype, offset

    def _error(self, rel: str, problem: str) -> DatasetError:
        return DatasetError(f"{self.root / rel} {problem}; {_FIX}")

    def _open_file(self, rel: str) -> Any:
        try:
            return _open_rb(self.root, self._dirfd, rel)
        except FileNotFoundError:
            raise self._error(rel, "is missing (or the dataset was replaced or deleted while open)") from None

    def _array(self, rel: str) -> np.ndarray:
        """The read-only memmap of a dataset file (an LRU of open maps bounds file descriptors)."""
        arr = self._maps.get(rel)
        if arr is None:
            with self._open_file(rel) as f:
                shape, dtype, offset = self._header(f, rel)
                arr = np.memmap(f, dtype=dtype, mode="r", offset=offset, shape=shape) if np.prod(shape) else np.empty(shape, dtype)
            self._maps[rel] = arr
            if len(self._maps) > _MAX_OPEN:
                self._maps.popitem(last=False)
        else:
            self._maps.move_to_end(rel)
        return arr

    def _load_index(self) -> None:
        files = self.manifest["index"]["files"]
        cols = {c: np.array(self._array(files[c]["path"])) for c in INDEX_COLUMNS}
        n = int(self.manifest["counts"]["episodes"])
        bad = [c for c, v in cols.items() if v.shape != (n,)]
        ends = cols["offset"] + cols["length"]
        shard_ok = (cols["shard"] >= 0) & (cols["shard"] < len(self._shard_steps))
        if bad or not shard_ok.all() or (cols["length"] < 1).any() or (ends > self._shard_steps[np.where(shard_ok, cols["shard"], 0)]).any() \
                or (np.diff(cols["episode_id"]) <= 0).any() or (cols["split"] >= len(self.manifest["index"]["split_names"])).any():
            raise DatasetError(f"{self.root / 'index'}: the episode table is inconsistent with the manifest counts or shards; {_FIX}")
        self._index = cols

    def close(self) -> None:
        """Release the folder descriptor and the open maps (arrays already handed out stay valid)."""
        self._maps.clear()
        if self._dirfd is not None:
            os.close(self._dirfd)
            self._dirfd = None

    def __enter__(self) -> "TrajectoryDataset":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_dirfd", None) is not None:
            self.close()

    # -- metadata ----------------------------------------------------------------------------------------

    @property
    def world_name(self) -> str:
        return self.manifest["world"]

    @property
    def obs_spec(self) -> dict[str, Any]:
        return self.manifest["obs_spec"]

    @property
    def action_spec(self) -> dict[str, Any]:
        return self.manifest["action_spec"]

    @property
    def families(self) -> tuple[str, ...]:
        return tuple(self.manifest["families"])

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(self.manifest["fields"])

    @property
    def num_episodes(self) -> int:
        return int(self.manifest["counts"]["episodes"])

    def __len__(self) -> int:
        return self.num_episodes

    @property
    def num_steps(self) -> int:
        """Stored steps (rows), initial observations included."""
        return int(self.manifest["counts"]["steps"])

    @property
    def num_transitions(self) -> int:
        """Environment transitions ``(obs, action, next obs)``: steps minus episodes."""
        return int(self.manifest["counts"]["transitions"])

    @property
    def splits(self) -> tuple[str, ...]:
        """Names of the splits that hold at least one episode (train, val, test, ood order)."""
        counts = self.manifest["counts"]["splits"]
        return tuple(s for s in self.manifest["index"]["split_names"] if counts.get(s, {}).get("episodes", 0) > 0)

    def base_rates(self, split: str | None = None) -> dict[str, dict[str, Any]]:
        """Per-concept base rates of ``split`` (``None``: every episode; ``"in_distribution"``: train+val+test)."""
        key = "all" if split is None else split
        if key not in self.manifest["base_rates"]:
            raise ValueError(f"unknown split {split!r}; choose one of {sorted(self.manifest['base_rates'])} or None")
        return self.manifest["base_rates"][key]

    # -- episodes ----------------------------------------------------------------------------------------

    def episode_ids(self, split: str) -> np.ndarray:
        """``int64[k]`` ids of the episodes in ``split`` (ascending)."""
        names = self.manifest["index"]["split_names"]
        if split not in names:
            raise ValueError(f"unknown split {split!r}; this dataset's splits are {names}")
        return self._index["episode_id"][self._index["split"] == names.index(split)]

    def _rows(self, ids: Any) -> np.ndarray:
        ids = np.asarray(ids, np.int64)
        rows = np.searchsorted(self._index["episode_id"], ids)
        ok = (rows < self.num_episodes) & (self._index["episode_id"][np.minimum(rows, self.num_episodes - 1)] == ids) if self.num_episodes else np.zeros(ids.shape, bool)
        if not np.all(ok):
            raise ValueError(f"unknown episode id(s) {ids[~ok][:8].tolist()}; ids run over {self.num_episodes} episodes, see episode_ids(split)")
        return rows

    def episode_lengths(self, ids: Any) -> np.ndarray:
        """``int64[k]`` number of steps of each episode in ``ids``."""
        return self._index["length"][self._rows(ids)]

    def _slice(self, i: int, start: int, stop: int, fields: Sequence[str]) -> dict[str, np.ndarray]:
        row = int(self._rows([i])[0])
        shard, off = int(self._index["shard"][row]), int(self._index["offset"][row])
        return {f: self._array(self._files[f][shard]["path"])[off + start: off + stop] for f in fields}

    def _check_fields(self, fields: Sequence[str] | None, extra: Sequence[str] = ()) -> tuple[str, ...]:
        if fields is None:
            return self.field_names
        unknown = [f for f in fields if f not in self.field_names and f not in extra]
        if unknown:
            raise ValueError(f"unknown field(s) {unknown}; available: {', '.join((*self.field_names, *extra))}")
        return tuple(fields)

    def episode(self, i: int) -> Episode:
        """Episode ``i`` as an :class:`Episode` of read-only memory-mapped views."""
        n = int(self.episode_lengths([i])[0])
        v = self._slice(i, 0, n, self.field_names)
        return Episode(
            obs=v["obs"], actions=v["actions"], is_first=v["is_first"], is_terminal=v["is_terminal"],
            reward=v["reward"], success=v["success"], violation=v["violation"],
            concepts={c: v[f"concept.{c}"] for c in self.schema.names},
            family=int(self._index["family"][self._rows([i])[0]]),
        )

    def window(self, i: int, start: int, length: int, fields: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Steps ``start .. start+length-1`` of episode ``i``: ``{field: [length ...]}`` (writable copies)."""
        n = int(self.episode_lengths([i])[0])
        if length < 1 or start < 0 or start + length > n:
            raise ValueError(f"window [{start}, {start + length}) must lie inside episode {i} of length {n} with length >= 1")
        return {k: np.array(v) for k, v in self._slice(i, start, start + length, self._check_fields(fields)).items()}

    def concat(self, split: str, fields: Sequence[str]) -> dict[str, np.ndarray]:
        """Chosen per-step fields over all episodes of ``split``, concatenated in id order: ``{field: [s ...]}``.

        Only the outputs are allocated (filled episode by episode from the maps). ``fields`` may also
        name the pseudo-fields ``episode_id`` and ``t`` (step index within the episode).
        """
        fields = self._check_fields(fields, EXTRA_FIELDS)
        ids = self.episode_ids(split)
        lengths = self.episode_lengths(ids)
        total = int(lengths.sum())
        spec = {**self.manifest["fields"], "episode_id": {"shape": [], "dtype": "int64"}, "t": {"shape": [], "dtype": "int64"}}
        out = {f: np.empty((total, *spec[f]["shape"]), np.dtype(spec[f]["dtype"])) for f in fields}
        stored = [f for f in fields if f not in EXTRA_FIELDS]
        pos = 0
        for i, n in zip(ids.tolist(), lengths.tolist()):
            for f, v in self._slice(i, 0, n, stored).items():
                out[f][pos: pos + n] = v
            if "episode_id" in out:
                out["episode_id"][pos: pos + n] = i
            if "t" in out:
                out["t"][pos: pos + n] = np.arange(n)
            pos += n
        return out


def _open_rb(root: Path, dirfd: int | None, rel: str) -> Any:
    """Open ``rel`` for binary reading, relative to the held folder descriptor when the OS supports it."""
    if dirfd is None:
        return open(root / rel, "rb")
    return os.fdopen(os.open(rel, os.O_RDONLY, dir_fd=dirfd), "rb")
