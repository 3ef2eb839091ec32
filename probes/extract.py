"""Latent extraction: a dynamics model's sites over dataset splits, cached on disk as a :class:`LatentStore`.

``extract_latents(model, dataset, splits, sites, out_dir)`` filters every episode of each split
with ``model.observe(..., sample=False)`` (through :func:`dynamics.cache.collect_sites`, under
``torch.inference_mode``), in batches of whole episodes padded to the batch's longest one (the
padding rows are dropped; episodes are batched in length order so little is padded). The store
folder holds::

    manifest.json                 the cache key, site shapes, schema, row counts, dataset path
    <split>/<site>.npy            float32 [n d]  (a site's feature shape flattened to d)
    <split>/episode_id.npy        int64 [n]      episode of each row
    <split>/t.npy                 int64 [n]      step index of each row within its episode
    <split>/concept.<name>.npy    [n]            true concept values (copied from the dataset)

Rows of a split follow the dataset's order (episode id, then step), i.e. the order of
``dataset.concat(split, ...)``. The cache key is ``(model fingerprint, dataset fingerprint, sites,
splits)``; the model fingerprint is the sha256 of its class, hparams and every ``state_dict``
tensor (:func:`model_fingerprint`). A folder that already holds a store with the same key is
reused without running the model; otherwise the store is built in a temporary folder next to
``out_dir`` and renamed into place (a killed run never leaves a store that looks complete).

Arrays are opened with ``np.load(mmap_mode="r", allow_pickle=False)``; observations are not copied
but read from the dataset (:meth:`LatentStore.obs`). Measured on lavakeydoor (80 train episodes, 3300
steps, default RSSM, CPU, one thread): batches of 32 padded episodes took 0.18 s, one episode at a
time 0.71 s (the filter loops over time, so batching amortises the per-step Python overhead).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from dynamics.base import DynamicsModel
from dynamics.cache import collect_sites
from probes.base import ProbeError
from worlds.atomic import fsync_dir, json_safe, publish_dir
from worlds.concepts import ConceptSchema
from worlds.dataset.reader import TrajectoryDataset

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def model_fingerprint(model: DynamicsModel) -> str:
    """sha256 of the model's class name, hparams (JSON) and every ``state_dict`` tensor (name, dtype, shape, bytes)."""
    h = hashlib.sha256()
    h.update(f"{type(model).__module__}.{type(model).__qualname__}".encode())
    h.update(json.dumps(model.hparams, sort_keys=True, default=str).encode())
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _key_hash(key: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


class LatentStore:
    """Cached latents of one model over dataset splits (see the module docstring for the layout).

    ``site(split, name) -> [n d]`` float32 memmap; ``concepts(split) -> {name: [n]}``;
    ``episodes(split) -> int64[n]``; ``steps(split) -> int64[n]``; ``obs(split) -> [n *obs]``.
    """

    def __init__(self, root: Path, manifest: dict[str, Any], dataset: TrajectoryDataset | None = None):
        self.root, self.manifest, self.dataset = Path(root), manifest, dataset
        self.schema = ConceptSchema.from_dict(manifest["schema"])

    # -- opening ----------------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike, dataset: TrajectoryDataset | None = None) -> "LatentStore":
        """Open the store at ``path``; pass the dataset it was extracted from to read observations."""
        root = Path(path)
        try:
            manifest = json.loads((root / MANIFEST).read_text())
        except FileNotFoundError:
            raise ProbeError(f"no latent store at {root} ({MANIFEST} missing); build one with extract_latents") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ProbeError(f"{root / MANIFEST} is not valid JSON ({e}); delete {root} and extract again") from None
        if manifest.get("format") != FORMAT_VERSION:
            raise ProbeError(f"{root}: latent store format {manifest.get('format')!r}, this ontolab reads {FORMAT_VERSION}; extract again")
        store = cls(root, manifest, None)
        if dataset is not None:
            store.attach(dataset)
        for split in store.splits:  # headers and lengths, cheap: memmaps read no data
            for name in store.site_names:
                store.site(split, name)
        return store

    def attach(self, dataset: TrajectoryDataset) -> "LatentStore":
        """Use ``dataset`` (which must be the one extracted from) as the source of observations."""
        want = self.manifest["key"]["dataset"]
        if dataset.fingerprint != want:
            raise ProbeError(f"dataset fingerprint {dataset.fingerprint[:12]} is not the store's ({want[:12]}); "
                             f"open the dataset at {self.manifest.get('dataset_path')}")
        self.dataset = dataset
        return self

    @classmethod
    def from_arrays(cls, out_dir: str | os.PathLike, *, schema: ConceptSchema,
                    sites: Mapping[str, Mapping[str, Any]], concepts: Mapping[str, Mapping[str, Any]],
                    episodes: Mapping[str, Any], steps: Mapping[str, Any] | None = None,
                    obs: Mapping[str, Any] | None = None, key: Mapping[str, Any] | None = None) -> "LatentStore":
        """Write a store from in-memory arrays ``{split: {site: [n d]}}`` etc. (synthetic latents, tests).

        ``obs`` (``{split: [n *obs]}``), if given, is stored as ``<split>/obs.npy`` and served by :meth:`obs`.
        """
        out_dir = Path(out_dir)
        tmp = temp_dir_for(out_dir)
        try:
            split_info: dict[str, Any] = {}
            shapes: dict[str, list[int]] = {}
            for split, by_site in sites.items():
                (tmp / split).mkdir()
                eps = np.asarray(episodes[split], np.int64)
                n = eps.shape[0]
                t = np.asarray(steps[split], np.int64) if steps is not None else _steps_of(eps)
                _check_len(f"steps of split {split!r}", t, n)
                np.save(tmp / split / "episode_id.npy", eps)
                np.save(tmp / split / "t.npy", t)
                for name, arr in by_site.items():
                    a = np.asarray(arr, np.float32)
                    _check_len(f"site {name!r} of split {split!r}", a, n)
                    shapes.setdefault(name, list(a.shape[1:]))
                    np.save(tmp / split / f"{name}.npy", a.reshape(n, -1))
                values = {c: np.asarray(concepts[split][c]) for c in schema.names}
                try:
                    schema.check(values)
                except ValueError as e:
                    raise ProbeError(f"concept values of split {split!r}: {e}") from None
                for c in schema:
                    _check_len(f"concept {c.name!r} of split {split!r}", values[c.name], n)
                    np.save(tmp / split / f"concept.{c.name}.npy", values[c.name].astype(c.dtype))
                if obs is not None:
                    o = np.asarray(obs[split])
                    _check_len(f"obs of split {split!r}", o, n)
                    np.save(tmp / split / "obs.npy", o)
                split_info[split] = {"rows": n, "episodes": int(np.unique(eps).size)}
            _check_disjoint({s: np.asarray(episodes[s]) for s in sites})
            fsync_tree(tmp)
            key = dict(key or {"model": "arrays", "dataset": "arrays", "sites": sorted(shapes), "splits": list(sites)})
            manifest = _manifest(key, schema, split_info, shapes, model={"name": "arrays", "sites": shapes}, dataset_path=None)
            write_json(tmp / MANIFEST, manifest)
            publish_dir(tmp, out_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return cls.open(out_dir)

    # -- metadata ---------------------------------------------------------------------------------------
    @property
    def key(self) -> dict[str, Any]:
        return dict(self.manifest["key"])

    @property
    def key_hash(self) -> str:
        return self.manifest["key_hash"]

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(self.manifest["splits"])

    @property
    def site_names(self) -> tuple[str, ...]:
        return tuple(self.manifest["sites"])

    @property
    def site_shapes(self) -> dict[str, tuple[int, ...]]:
        """``{site: feature shape}`` as the model produces it (rows are stored flattened to ``d``)."""
        return {k: tuple(v) for k, v in self.manifest["sites"].items()}

    def n(self, split: str) -> int:
        return int(self.manifest["splits"][self._split(split)]["rows"])

    def _split(self, split: str) -> str:
        if split not in self.manifest["splits"]:
            raise ProbeError(f"unknown split {split!r}; this latent store holds: {', '.join(self.splits)}")
        return split

    def _load(self, split: str, name: str) -> np.ndarray:
        path = self.root / self._split(split) / f"{name}.npy"
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (FileNotFoundError, ValueError) as e:
            raise ProbeError(f"{path} is missing or unreadable ({type(e).__name__}); delete {self.root} and extract again") from None
        if arr.shape[:1] != (self.n(split),):
            raise ProbeError(f"{path} has {arr.shape[0]} rows, the manifest says {self.n(split)}; delete {self.root} and extract again")
        return arr

    # -- rows -------------------------------------------------------------------------------------------
    def site(self, split: str, name: str) -> np.ndarray:
        """``float32[n d]`` memmap of site ``name`` on ``split``."""
        if name not in self.manifest["sites"]:
            others = [s for s in self.manifest["model"].get("sites", {}) if s not in self.manifest["sites"]]
            more = f"; the model also has {', '.join(others)} (extract them)" if others else ""
            raise ProbeError(f"unknown site {name!r}; this latent store holds: {', '.join(self.site_names)}{more}")
        return self._load(split, name)

    def concepts(self, split: str) -> dict[str, np.ndarray]:
        """``{concept: [n]}`` true values (memmaps)."""
        return {c: self._load(split, f"concept.{c}") for c in self.schema.names}

    def episodes(self, split: str) -> np.ndarray:
        """``int64[n]`` episode id of each row."""
        return self._load(split, "episode_id")

    def steps(self, split: str) -> np.ndarray:
        """``int64[n]`` step index of each row within its episode."""
        return self._load(split, "t")

    def obs(self, split: str) -> np.ndarray:
        """``[n *obs]`` the observation of each row (from the attached dataset, or stored with the arrays)."""
        stored = self.root / self._split(split) / "obs.npy"
        if stored.is_file():
            return self._load(split, "obs")
        if self.dataset is None:
            raise ProbeError(f"latent store {self.root} has no observations of its own; "
                             f"open it with the dataset: LatentStore.open(path, dataset=TrajectoryDataset.open(...))")
        got = self.dataset.concat(split, ["obs", "episode_id"])
        if not np.array_equal(got["episode_id"], self.episodes(split)):
            raise ProbeError(f"the dataset's {split!r} rows do not line up with the store's; extract again")
        return got["obs"]


def extract_latents(model: DynamicsModel, dataset: TrajectoryDataset, splits: Sequence[str], sites: Sequence[str],
                    out_dir: str | os.PathLike, *, batch_episodes: int = 32, device: torch.device | str | None = None,
                    progress: bool = True) -> LatentStore:
    """Run ``model.observe`` over ``splits`` of ``dataset`` and cache ``sites`` in ``out_dir`` (reused if the key matches).

    ``device``: where the model runs (default: where its parameters are; the model is not moved).
    """
    unknown = [s for s in sites if s not in model.sites]
    if unknown or not sites:
        raise ProbeError(f"unknown site(s) {unknown or '(none given)'}; {type(model).__name__} has: {', '.join(model.sites)}")
    missing = [s for s in splits if s not in dataset.splits]
    if missing or not splits:
        raise ProbeError(f"split(s) {missing or '(none given)'} hold no episodes; this dataset's splits are: {', '.join(dataset.splits)}")
    if batch_episodes < 1:
        raise ProbeError(f"batch_episodes must be >= 1, got {batch_episodes}")
    out_dir = Path(out_dir)
    key = {"model": model_fingerprint(model), "dataset": dataset.fingerprint, "sites": sorted(sites), "splits": list(splits)}
    if (out_dir / MANIFEST).is_file():
        try:
            old = json.loads((out_dir / MANIFEST).read_text())
        except json.JSONDecodeError:
            old = {}
        if old.get("key_hash") == _key_hash(key) and old.get("format") == FORMAT_VERSION:
            return LatentStore.open(out_dir, dataset)
    if device is None:
        device = next(iter(model.parameters()), torch.empty(0)).device
    shapes = {s: list(model.sites[s]) for s in sites}
    dims = {s: int(np.prod(model.sites[s])) for s in sites}
    fields = [f"concept.{c}" for c in dataset.schema.names]
    total = sum(len(dataset.episode_ids(s)) for s in splits)
    tmp = temp_dir_for(out_dir)
    start = time.perf_counter()
    try:
        split_info = {}
        with tqdm(total=total, disable=not progress, unit="ep", desc="extract latents") as bar:
            for split in splits:
                (tmp / split).mkdir()
                meta = dataset.concat(split, [*fields, "episode_id", "t"])
                n = meta["t"].shape[0]
                for f, v in meta.items():
                    np.save(tmp / split / f"{f}.npy", v)
                outs = {s: np.lib.format.open_memmap(tmp / split / f"{s}.npy", "w+", np.float32, (n, dims[s])) for s in sites}
                _fill(model, dataset, split, list(sites), outs, batch_episodes, device, bar)
                for a in outs.values():
                    a.flush()
                del outs
                ids = dataset.episode_ids(split)
                split_info[split] = {"rows": int(n), "episodes": int(len(ids))}
        manifest = _manifest(key, dataset.schema, split_info, shapes,
                             model={"name": getattr(model, "name", type(model).__name__), "hparams": model.hparams,
                                    "sites": {k: list(v) for k, v in model.sites.items()}},
                             dataset_path=str(dataset.root))
        manifest["seconds"] = time.perf_counter() - start
        fsync_tree(tmp)  # the arrays are durable before the manifest that declares the store complete
        write_json(tmp / MANIFEST, manifest)
        publish_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return LatentStore.open(out_dir, dataset)


def _fill(model: DynamicsModel, dataset: TrajectoryDataset, split: str, sites: list[str], outs: dict[str, np.ndarray],
          batch_episodes: int, device: torch.device | str, bar: Any) -> None:
    """Observe the split's episodes in length-sorted padded batches; write rows at each episode's offset."""
    ids = dataset.episode_ids(split)
    lengths = dataset.episode_lengths(ids)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])  # rows in id order, as dataset.concat
    order = np.argsort(lengths, kind="stable")
    for chunk in np.array_split(order, max(1, -(-len(order) // batch_episodes))):
        t_max = int(lengths[chunk].max())
        eps = [dataset.window(int(ids[j]), 0, int(lengths[j]), ["obs", "actions", "is_first"]) for j in chunk]
        batch = {}
        for f in ("obs", "actions", "is_first"):
            first = eps[0][f]
            arr = np.zeros((len(chunk), t_max, *first.shape[1:]), first.dtype)
            for b, e in enumerate(eps):
                arr[b, : e[f].shape[0]] = e[f]
            batch[f] = arr
        batch["mask"] = np.arange(t_max)[None, :] < lengths[chunk][:, None]
        cache = collect_sites(model, [batch], sites, device, keep_fields=False)
        pos = 0  # collect_sites keeps rows in (episode of the batch, step) order
        for j in chunk:
            n, off = int(lengths[j]), int(offsets[j])
            for s in sites:
                outs[s][off: off + n] = cache[s][pos: pos + n].reshape(n, -1).float().numpy()
            pos += n
        bar.update(len(chunk))


def _manifest(key: Mapping[str, Any], schema: ConceptSchema, splits: Mapping[str, Any], shapes: Mapping[str, Any],
              *, model: Mapping[str, Any], dataset_path: str | None) -> dict[str, Any]:
    return {"format": FORMAT_VERSION, "key": dict(key), "key_hash": _key_hash(key), "splits": dict(splits),
            "sites": {k: list(v) for k, v in shapes.items()}, "schema": schema.to_dict(), "model": dict(model),
            "dataset_path": dataset_path}


def _steps_of(eps: np.ndarray) -> np.ndarray:
    """Step index within each run of equal episode ids (rows of one episode must be contiguous)."""
    idx = np.arange(len(eps))
    starts = np.r_[True, eps[1:] != eps[:-1]] if len(eps) else np.zeros(0, bool)
    return idx - np.maximum.accumulate(np.where(starts, idx, 0)) if len(eps) else idx


def _check_len(what: str, a: np.ndarray, n: int) -> None:
    if a.ndim < 1 or a.shape[0] != n:
        raise ProbeError(f"{what} must have {n} rows like the episode ids, got shape {a.shape}")


def _check_disjoint(episodes: Mapping[str, np.ndarray]) -> None:
    names = list(episodes)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            both = np.intersect1d(episodes[a], episodes[b])
            if both.size:
                raise ProbeError(f"episode(s) {both[:8].tolist()} appear in splits {a!r} and {b!r}; splits must be disjoint by episode")


def temp_dir_for(out_dir: Path) -> Path:
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def fsync_tree(folder: Path) -> None:
    """fsync every file and folder under ``folder`` (np.save and memmaps only flush to the page cache): a store
    published after a crash must not hold a fsynced manifest beside arrays that never reached the disk."""
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    for sub in [folder, *(p for p in folder.rglob("*") if p.is_dir())]:
        fsync_dir(sub)


def write_json(path: Path, obj: Any) -> None:
    """Strict JSON (NaN -> null), fsynced; callers write into a folder that is published atomically."""
    with open(path, "w") as f:
        json.dump(json_safe(obj), f, indent=1, sort_keys=True, allow_nan=False)
        f.flush()
        os.fsync(f.fileno())
