"""Fixed-length training windows cut from a trajectory dataset, in a resumable order.

Windows (Dreamer-style): the episodes of a split, in ``episode_ids(split)`` order, are treated as
one concatenated stream of ``N`` steps and cut into windows of ``window`` steps. A window may span
an episode boundary; ``is_first`` marks the reset there, and models reset their state to
``initial`` at ``is_first`` (see :mod:`dynamics.base`). Every window starts from the model's
``initial`` state; a window that starts mid-episode keeps the stored ``is_first`` (false) and the
stored action that led into its first step. No episode is skipped or padded.

Training order: sampler epoch ``e`` uses ``rng = default_rng([seed, e])`` to draw a phase
``o_e`` in ``[0, N - n*window]`` and a permutation of the ``n = max(1, (N - window + 1) // window)``
non-overlapping windows starting at ``o_e + k * window`` (so over epochs every alignment is seen).
The stream of sample *positions* ``p = 0, 1, 2, ...`` maps to epoch ``p // n``, slot ``p % n``.
The train loader is infinite (one Lightning epoch; ``max_steps`` ends training); global batch ``g``
holds positions ``[g*B*W, (g+1)*B*W)`` and rank ``r`` of ``W`` takes its ``B`` of them.

Resume: the order is a pure function of ``(seed, position)``, so the only state is how many batches
were trained: ``trainer.global_step`` (one batch per optimizer step; Lightning restores it before it
builds the dataloaders). The loader starts at batch ``global_step``; prefetched-but-untrained
batches therefore never shift the order. :meth:`WindowDataModule.state_dict` records the settings
the order depends on and :meth:`~WindowDataModule.load_state_dict` refuses to resume with others.
(Lightning's own stateful-dataloader support was not used: its state is taken from the iterator,
which Lightning's prefetching runs one batch ahead of the trained step.)

Validation: the first ``max_val_windows`` non-overlapping windows of the ``"val"`` stream (evenly
spaced if there are more), in a fixed order, sharded over ranks.
"""

from __future__ import annotations

import hashlib
from typing import Any, Iterator, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from worlds.errors import OntolabError
from worlds.trajectory import Episode

KEYS: tuple[str, ...] = ("obs", "actions", "is_first")
"""The per-step fields a dynamics model reads (everything else in a dataset is for probes/evaluation)."""


@runtime_checkable
class WindowSource(Protocol):
    """What the data module needs from a trajectory dataset (``worlds.dataset.TrajectoryDataset`` has it)."""

    @property
    def fingerprint(self) -> str: ...

    @property
    def obs_spec(self) -> Any: ...

    @property
    def action_spec(self) -> Any: ...

    def episode_ids(self, split: str) -> Sequence[int]: ...

    def episode_lengths(self, ids: Sequence[int]) -> Sequence[int]: ...

    def window(self, i: int, start: int, length: int, fields: Sequence[str] | None = None) -> Mapping[str, np.ndarray]:
        """Steps ``start .. start+length-1`` of episode id ``i``: ``{field: [length ...]}`` (``None``: every field)."""


class InMemoryWindowSource:
    """A :class:`WindowSource` over :class:`~worlds.trajectory.Episode` lists held in memory (tests, small runs).

    Episode ids are ``0, 1, ...`` in split order (``episodes["train"]`` first, then the others).
    """

    def __init__(self, episodes: Mapping[str, Sequence[Episode]], obs_spec: Mapping[str, Any], action_spec: Mapping[str, Any]):
        self._episodes: list[Episode] = []
        self._splits: dict[str, list[int]] = {}
        for split, eps in episodes.items():
            self._splits[split] = list(range(len(self._episodes), len(self._episodes) + len(eps)))
            self._episodes.extend(eps)
        self._obs_spec, self._action_spec = dict(obs_spec), dict(action_spec)
        digest = hashlib.sha256()
        for ep in self._episodes:
            for key in KEYS:
                arr = np.ascontiguousarray(getattr(ep, key))
                digest.update(f"{key}:{arr.dtype.str}:{arr.shape}".encode())
                digest.update(arr.tobytes())
        self._fingerprint = digest.hexdigest()

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    @property
    def obs_spec(self) -> dict[str, Any]:
        return self._obs_spec

    @property
    def action_spec(self) -> dict[str, Any]:
        return self._action_spec

    def episode_ids(self, split: str) -> list[int]:
        return list(self._splits.get(split, []))

    def episode_lengths(self, ids: Sequence[int]) -> np.ndarray:
        return np.array([len(self._episodes[int(i)]) for i in ids], np.int64)

    def window(self, i: int, start: int, length: int, fields: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        ep = self._episodes[int(i)]
        if start < 0 or length < 1 or start + length > len(ep):
            raise IndexError(f"window [{start}, {start + length}) is outside episode {i} of length {len(ep)}")
        return {k: v[start:start + length] for k, v in ep.step_fields().items() if fields is None or k in fields}


class SplitStream:
    """The episodes of one split as one stream of ``total`` steps; :meth:`read` cuts a window from it."""

    def __init__(self, source: WindowSource, split: str, window: int):
        self.source, self.split, self.window = source, split, int(window)
        self.ids = np.asarray(source.episode_ids(split), np.int64)
        lengths = np.asarray(source.episode_lengths(self.ids), np.int64)
        self.starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self.total = int(self.starts[-1])
        if self.total < self.window:
            raise OntolabError(
                f"split {split!r} holds {self.total} steps in {len(self.ids)} episodes, fewer than one window of "
                f"{self.window}; lower window or add episodes to the split"
            )

    def read(self, offset: int) -> dict[str, np.ndarray]:
        """Steps ``[offset, offset + window)`` of the stream: ``obs[t *obs]``, ``actions[t ...]``, ``is_first[t]``."""
        end = offset + self.window
        if offset < 0 or end > self.total:
            raise IndexError(f"window [{offset}, {end}) is outside the {self.split!r} stream of {self.total} steps")
        pieces: list[Mapping[str, np.ndarray]] = []
        e, pos = int(np.searchsorted(self.starts, offset, side="right")) - 1, offset
        while pos < end:
            n = min(end, int(self.starts[e + 1])) - pos
            if n > 0:
                pieces.append(self.source.window(int(self.ids[e]), pos - int(self.starts[e]), n, fields=KEYS))
                pos += n
            e += 1
        out = {k: np.concatenate([np.asarray(p[k]) for p in pieces]) for k in KEYS}
        out["is_first"] = out["is_first"].astype(bool)
        return out


class TrainWindows(Dataset):
    """Map-style dataset over sample *positions* ``0, 1, 2, ...`` (unbounded); see the module docstring."""

    def __init__(self, stream: SplitStream, seed: int):
        self.stream, self.seed = stream, int(seed)
        w = stream.window
        self.windows_per_epoch = max(1, (stream.total - w + 1) // w)
        self.slack = stream.total - self.windows_per_epoch * w
        self._plans: dict[int, tuple[int, np.ndarray]] = {}

    def plan(self, epoch: int) -> tuple[int, np.ndarray]:
        """``(phase, permutation of window slots)`` of sampler epoch ``epoch``."""
        if epoch not in self._plans:
            rng = np.random.default_rng([self.seed, epoch])
            phase = int(rng.integers(0, self.slack + 1))
            self._plans = {epoch: (phase, rng.permutation(self.windows_per_epoch))}  # keep one: positions arrive in order
        return self._plans[epoch]

    def start_of(self, position: int) -> int:
        """Stream offset of the window at sample position ``position``."""
        epoch, slot = divmod(int(position), self.windows_per_epoch)
        phase, perm = self.plan(epoch)
        return phase + int(perm[slot]) * self.stream.window

    def __getitem__(self, position: int) -> dict[str, np.ndarray]:
        return self.stream.read(self.start_of(position))


class ValWindows(Dataset):
    """Fixed validation windows at offsets ``k * window`` (at most ``max_windows``, evenly spaced)."""

    def __init__(self, stream: SplitStream, max_windows: int):
        n = stream.total // stream.window
        slots = np.arange(n) if n <= max_windows else np.unique(np.linspace(0, n - 1, max_windows).round().astype(np.int64))
        self.stream, self.offsets = stream, slots * stream.window

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, k: int) -> dict[str, np.ndarray]:
        return self.stream.read(int(self.offsets[k]))


class InfiniteBatchSampler(Sampler[list[int]]):
    """Yields the positions of global batch ``start_batch, start_batch + 1, ...`` belonging to ``rank``, forever."""

    def __init__(self, batch_size: int, start_batch: int = 0, rank: int = 0, world_size: int = 1):
        self.batch_size, self.start_batch, self.rank, self.world_size = batch_size, start_batch, rank, world_size

    def __iter__(self) -> Iterator[list[int]]:
        g = self.start_batch
        while True:
            base = (g * self.world_size + self.rank) * self.batch_size
            yield list(range(base, base + self.batch_size))
            g += 1


class WindowDataModule(pl.LightningDataModule):
    """Training windows from split ``train_split`` and validation windows from ``val_split`` of ``source``."""

    def __init__(self, source: WindowSource, *, window: int = 32, batch_size: int = 16, seed: int = 0,
                 num_workers: int = 0, max_val_windows: int = 256, train_split: str = "train", val_split: str = "val"):
        super().__init__()
        for name, value, low in (("window", window, 1), ("batch_size", batch_size, 1), ("max_val_windows", max_val_windows, 1),
                                 ("num_workers", num_workers, 0)):
            if not isinstance(value, int) or value < low:
                raise OntolabError(f"{name} must be an integer >= {low}, got {value!r}")
        self.source, self.window, self.batch_size, self.seed = source, window, batch_size, int(seed)
        self.num_workers, self.max_val_windows = num_workers, max_val_windows
        self.train_split, self.val_split = train_split, val_split
        self._train: TrainWindows | None = None
        self._val: ValWindows | None = None

    def setup(self, stage: str | None = None) -> None:
        if self._train is None and stage in (None, "fit"):
            self._train = TrainWindows(SplitStream(self.source, self.train_split, self.window), self.seed)
        if self._val is None and stage in (None, "fit", "validate"):
            self._val = ValWindows(SplitStream(self.source, self.val_split, self.window), self.max_val_windows)

    @property
    def train_windows(self) -> TrainWindows:
        self.setup("fit")
        assert self._train is not None
        return self._train

    @property
    def val_windows(self) -> ValWindows:
        self.setup("validate")
        assert self._val is not None
        return self._val

    def _rank_world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _generator(self) -> torch.Generator:
        # A private generator: the DataLoader iterator draws its base seed from it, not from the global
        # torch RNG -- otherwise building the loader after a resume would shift the training RNG stream.
        return torch.Generator().manual_seed(self.seed)

    def train_dataloader(self) -> DataLoader:
        trainer = getattr(self, "trainer", None)
        start = trainer.global_step if trainer is not None else 0
        rank, world = self._rank_world()
        sampler = InfiniteBatchSampler(self.batch_size, start, rank, world)
        return DataLoader(self.train_windows, batch_sampler=sampler, num_workers=self.num_workers,
                          generator=self._generator(), persistent_workers=self.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        rank, world = self._rank_world()
        indices = list(range(rank, len(self.val_windows), world))
        return DataLoader(self.val_windows, batch_size=self.batch_size, sampler=indices, num_workers=self.num_workers,
                          generator=self._generator(), persistent_workers=self.num_workers > 0)

    def settings(self, world_size: int | None = None) -> dict[str, Any]:
        """What the training order depends on (checked on resume); ``world_size`` defaults to the trainer's
        (1 without one)."""
        world = self._rank_world()[1] if world_size is None else int(world_size)
        return {"seed": self.seed, "window": self.window, "batch_size": self.batch_size, "world_size": world,
                "train_split": self.train_split, "fingerprint": str(self.source.fingerprint)}

    def state_dict(self) -> dict[str, Any]:
        trainer = getattr(self, "trainer", None)
        return {**self.settings(), "batches_trained": trainer.global_step if trainer is not None else 0}

    def check_resume(self, state_dict: Any, world_size: int | None = None, *, skip: Sequence[str] = ()) -> None:
        """Refuse (one line) to resume from a checkpoint whose data-module state was saved with other settings
        (``skip``: settings not compared, e.g. ``("world_size",)`` before the Trainer exists).

        ``fit_dynamics`` calls this before it writes anything, with the checkpoint's stored state;
        :meth:`load_state_dict` calls it again when Lightning restores the state."""
        if not isinstance(state_dict, dict):
            raise OntolabError(f"cannot resume: the checkpoint's data-module state is a {type(state_dict).__name__}, "
                               "expected a dict; the checkpoint was not written by fit_dynamics: choose another out_dir")
        now = {k: v for k, v in self.settings(world_size).items() if k not in skip}
        diff = {k: (state_dict.get(k), v) for k, v in now.items() if state_dict.get(k) != v}
        if diff:
            shown = "; ".join(f"{k}: checkpoint {old!r}, now {new!r}" for k, (old, new) in diff.items())
            raise OntolabError(f"cannot resume: the data settings changed ({shown}); resume with the original settings")

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.check_resume(state_dict)
