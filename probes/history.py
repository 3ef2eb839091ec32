"""The supervised history baseline: a small GRU trained ON THE CONCEPT LABELS over observation+action histories.

It answers "how well can this concept be read from the history (every observation and action so far)
by a network trained on the labels directly, with the same training episodes?". That is an empirical
upper reference for any purely predictive latent (a dynamics model sees the same inputs but never the
labels): a concept this baseline cannot read is not knowable from the history with this much data (the
goal behind a locked door before it is seen), while a concept it reads and the dynamics latent does not
is one the latent fails to keep. It is not a probe of a dynamics model and reads no latent.

Per step ``t`` the GRU reads ``[obs_t flattened and standardised (train statistics), the action that led
into step t (one-hot for discrete actions, zero at the first step), is_first]`` through one ReLU layer,
and one linear head per concept reads its state: binary -> logit (BCE), categorical -> logits (CE),
scalar -> value (MSE on train-standardised targets). All concepts train jointly (loss = sum of the
per-concept masked means), with Adam on minibatches of whole episodes (padded, masked), early stopping
on the validation split's loss. Every episode is filtered from its first step, so a prediction at step
``t`` uses steps ``0..t`` only. Deterministic on CPU given ``seed``; torch threads are the caller's.

Episodes are batched by similar length (a bucket iterator): on lavakeydoor, where lengths run from 2 to
163 steps, random batches padded to ~4.7x the real steps, bucketed ones to ~1.3x. Measured on the
lavakeydoor quickstart data (485 train / 63 val episodes, 19k steps; one shared CPU thread): 33 epochs,
~25 s (``HistoryBaseline.train_seconds``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import einops
import numpy as np
import torch
from torch import Tensor, nn

from probes.base import ProbeError, as_labels, as_latents
from probes.normalize import Normalizer
from worlds.concepts import Concept

METHOD = "history"
"""Method (and site) name of the history baseline's rows in ``results.csv``."""


@dataclass(frozen=True)
class HistorySplit:
    """The rows of one split, in episode order (each episode's rows contiguous and in time order).

    ``obs [n *obs]``; ``actions [n]`` int (discrete) or ``[n a]`` float, or ``None`` (no action input);
    ``episodes [n]`` episode id of each row; ``steps [n]`` (optional) step index, checked to run 0, 1, ...
    within each episode; ``labels`` ``{concept: [n]}`` (needed to fit or validate, not to predict).
    """

    obs: Any
    actions: Any
    episodes: Any
    steps: Any = None
    labels: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _Rows:
    """A validated split: inputs ``x [n d]`` float, episode ``starts [e]`` and ``lengths [e]``."""

    x: Tensor
    starts: np.ndarray
    lengths: np.ndarray

    def batches(self, order: np.ndarray, size: int) -> list[tuple[Tensor, Tensor]]:
        """``(index [b t], mask [b t])`` per batch of episodes; padding points at row ``n`` (a zero row)."""
        out, n = [], self.x.shape[0]
        for i in range(0, len(order), size):
            eps = order[i: i + size]
            t = int(self.lengths[eps].max())
            ar = np.arange(t)[None, :]
            idx = self.starts[eps][:, None] + ar
            mask = ar < self.lengths[eps][:, None]
            out.append((torch.from_numpy(np.where(mask, idx, n)), torch.from_numpy(mask)))
        return out


def _encode(split: HistorySplit, num_actions: int | None, action_dim: int) -> tuple[Tensor, np.ndarray, np.ndarray]:
    """``([n d_obs + a + 1] float64 raw inputs, starts, lengths)`` after checking shapes and episode order."""
    obs = np.asarray(split.obs)
    if obs.ndim < 1 or obs.shape[0] == 0:
        raise ProbeError(f"history baseline needs at least one step, got observations of shape {obs.shape}")
    n = obs.shape[0]
    x_obs = as_latents(einops.rearrange(obs.astype(np.float64, copy=False), "n ... -> n (...)"), "observations")
    eps = np.asarray(split.episodes)
    if eps.shape != (n,):
        raise ProbeError(f"episodes must have shape ({n},) like the observations, got {eps.shape}")
    new = np.flatnonzero(np.r_[True, eps[1:] != eps[:-1]])
    if np.unique(eps[new]).size != new.size:
        raise ProbeError("each episode's rows must be contiguous (rows in episode order); sort the rows by (episode, step)")
    lengths = np.diff(np.r_[new, n])
    if split.steps is not None:
        steps = np.asarray(split.steps)
        if steps.shape != (n,) or not np.array_equal(steps, np.arange(n) - np.repeat(new, lengths)):
            raise ProbeError(f"steps must have shape ({n},) and run 0, 1, ... within each episode (episodes filtered from their start), "
                             f"got shape {steps.shape}")
    first = np.zeros(n)
    first[new] = 1.0
    act = np.zeros((n, action_dim))
    if split.actions is not None:
        a = np.asarray(split.actions)
        if a.shape[:1] != (n,):
            raise ProbeError(f"actions must have {n} rows like the observations, got shape {a.shape}")
        if num_actions is not None:
            if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer) or (a.size and (a.min() < 0 or a.max() >= num_actions)):
                raise ProbeError(f"discrete actions must be integers in [0, {num_actions}) of shape ({n},), got {a.dtype} {a.shape}")
            act[np.arange(n), a] = 1.0
        else:
            a = a.reshape(n, -1).astype(np.float64)
            if a.shape[1] != action_dim or not np.isfinite(a).all():
                raise ProbeError(f"continuous actions must be finite with {action_dim} dims, got shape {a.shape}")
            act = a
        act[new] = 0.0  # no action leads into an episode's first step
    elif action_dim:
        raise ProbeError(f"this history baseline was fitted with {action_dim}-dim actions; pass the actions")
    x = torch.cat([x_obs.to(torch.float64), torch.from_numpy(act), torch.from_numpy(first)[:, None]], 1)
    return x, new, lengths


class _Net(nn.Module):
    """``x [b t d] -> ReLU(Linear) -> GRU -> Linear -> [b t out]`` (all heads side by side)."""

    def __init__(self, d_in: int, hidden: int, d_out: int):
        super().__init__()
        self.enc, self.gru, self.head = nn.Linear(d_in, hidden), nn.GRU(hidden, hidden, batch_first=True), nn.Linear(hidden, d_out)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.gru(torch.relu(self.enc(x)))[0])


def _widths(concepts: Sequence[Concept]) -> list[int]:
    return [c.num_classes if c.kind == "categorical" else 1 for c in concepts]


@dataclass(frozen=True, eq=False)
class HistoryBaseline:
    """A fitted history baseline: the GRU's ``params`` (state dict), the input normaliser, scalar targets' train mean/std."""

    concepts: tuple[Concept, ...]
    norm: Normalizer
    params: dict[str, Tensor]
    y_mean: Tensor
    """``[c]`` train mean of each concept's target (0 for binary/categorical)."""
    y_std: Tensor
    num_actions: int | None
    action_dim: int
    hparams: dict[str, Any]
    epochs: int
    """Epochs run (the parameters are those of the best validation epoch)."""
    best_val_loss: float
    train_seconds: float

    def _net(self) -> _Net:
        hidden = int(self.hparams["hidden"])
        net = _Net(self.norm.dim, hidden, sum(_widths(self.concepts)))
        net.load_state_dict(self.params)
        return net.to(self.norm.mean.device, self.norm.mean.dtype).train(False)

    def scores(self, data: HistorySplit, batch_episodes: int = 256) -> dict[str, Tensor]:
        """``{concept: binary [n] logit | categorical [n k] logits | scalar [n] value}`` for every row of ``data``."""
        x, starts, lengths = _encode(data, self.num_actions, self.action_dim)
        rows = _Rows(self.norm.apply(x.to(self.norm.mean.device)), starts, lengths)
        out = _forward_rows(self._net(), rows, np.argsort(-lengths, kind="stable"), batch_episodes)
        res, j = {}, 0
        for i, (c, w) in enumerate(zip(self.concepts, _widths(self.concepts))):
            s = out[:, j: j + w]
            res[c.name] = s if c.kind == "categorical" else (s[:, 0] * self.y_std[i] + self.y_mean[i] if c.kind == "scalar" else s[:, 0])
            j += w
        return res

    def predictions(self, data: HistorySplit) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
        """``{concept: (prediction [n], class probabilities [n k] or None for scalars)}`` as numpy (the harness's inputs)."""
        out, scores = {}, self.scores(data)
        for c in self.concepts:
            s = scores[c.name]
            if c.kind == "scalar":
                out[c.name] = (s.double().cpu().numpy(), None)
            elif c.kind == "binary":
                p = torch.sigmoid(s.double())
                out[c.name] = ((s > 0).long().cpu().numpy(), torch.stack([1 - p, p], -1).cpu().numpy())
            else:
                out[c.name] = (s.argmax(-1).cpu().numpy(), torch.softmax(s.double(), -1).cpu().numpy())
        return out

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "HistoryBaseline":
        """A copy on ``device`` with floating tensors cast to ``dtype``."""
        mv = lambda t: t.to(device=device, dtype=dtype if dtype is not None and t.is_floating_point() else None)  # noqa: E731
        return HistoryBaseline(self.concepts, self.norm.to(device, dtype), {k: mv(v) for k, v in self.params.items()},
                               mv(self.y_mean), mv(self.y_std), self.num_actions, self.action_dim, self.hparams,
                               self.epochs, self.best_val_loss, self.train_seconds)


def _forward_rows(net: _Net, rows: _Rows, order: np.ndarray, size: int) -> Tensor:
    """Outputs ``[n out]`` of ``net`` on every row (episodes filtered from their start), in row order."""
    n = rows.x.shape[0]
    xz = torch.cat([rows.x, rows.x.new_zeros(1, rows.x.shape[1])])
    out = rows.x.new_empty(n + 1, net.head.out_features)
    with torch.no_grad():
        for idx, mask in rows.batches(order, size):
            o = net(xz[idx.to(xz.device)])
            out[idx[mask].to(out.device)] = o[mask.to(o.device)]
    return out[:n]


def _bucketed(lengths: np.ndarray, size: int, rng: np.random.Generator, chunk: int = 8) -> np.ndarray:
    """A random episode order whose consecutive ``size``-blocks hold similar lengths (a bucket iterator).

    Episodes are shuffled, sorted by length within chunks of ``chunk`` batches, cut into batches, and the
    batches shuffled: padding on lavakeydoor drops from ~4.7x the real steps (random batches) to ~1.2x.
    """
    order = rng.permutation(len(lengths))
    step = size * chunk
    order = np.concatenate([c[np.argsort(-lengths[c], kind="stable")] for c in np.split(order, range(step, len(order), step))])
    blocks = np.split(order, range(size, len(order), size))
    return np.concatenate([blocks[i] for i in rng.permutation(len(blocks))])


class HistoryFitter:
    """Fits a :class:`HistoryBaseline` for several concepts at once (module docstring); deterministic given ``seed``."""

    def __init__(self, concepts: Sequence[Concept], *, hidden: int = 128, lr: float = 3e-3, batch_episodes: int = 32,
                 max_epochs: int = 60, patience: int = 6, grad_clip: float = 1.0, num_actions: int | None = None,
                 seed: int = 0, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        concepts = tuple(concepts)
        if not concepts or not all(isinstance(c, Concept) for c in concepts):
            raise ProbeError(f"concepts must be a non-empty sequence of worlds.concepts.Concept, got {concepts!r:.80}")
        for k, v in (("hidden", hidden), ("batch_episodes", batch_episodes), ("max_epochs", max_epochs), ("patience", patience)):
            if int(v) < 1:
                raise ProbeError(f"{k} must be a positive integer, got {v}")
        if lr <= 0 or grad_clip <= 0:
            raise ProbeError(f"lr and grad_clip must be positive, got lr={lr}, grad_clip={grad_clip}")
        self.concepts, self.device, self.dtype = concepts, torch.device(device), dtype
        self.hidden, self.lr, self.batch_episodes = int(hidden), float(lr), int(batch_episodes)
        self.max_epochs, self.patience, self.grad_clip, self.seed = int(max_epochs), int(patience), float(grad_clip), int(seed)
        self.num_actions = None if num_actions is None else int(num_actions)

    def hparams(self) -> dict[str, Any]:
        return {"hidden": self.hidden, "lr": self.lr, "batch_episodes": self.batch_episodes, "max_epochs": self.max_epochs,
                "patience": self.patience, "grad_clip": self.grad_clip, "seed": self.seed}

    def _targets(self, data: HistorySplit, n: int, fitting: bool) -> list[Tensor]:
        missing = [c.name for c in self.concepts if c.name not in data.labels]
        if missing:
            raise ProbeError(f"labels missing for concept(s) {missing}; pass labels={{name: [n]}} for every fitted concept")
        return [as_labels(c, data.labels[c.name], n, f"{'training' if fitting else 'validation'} labels", fitting=fitting)
                for c in self.concepts]

    def fit(self, train: HistorySplit, val: HistorySplit | None = None) -> HistoryBaseline:
        """Train on ``train``; with ``val``, keep the epoch of lowest validation loss and stop after ``patience`` worse epochs."""
        t0 = time.perf_counter()
        a = None if train.actions is None else np.asarray(train.actions)
        num_actions = self.num_actions
        if a is not None and num_actions is None and a.ndim == 1:
            if not np.issubdtype(a.dtype, np.integer):
                raise ProbeError(f"1-d actions must be integer (discrete), got {a.dtype}; pass continuous actions as [n a]")
            num_actions = int(a.max()) + 1 if a.size else 1
        action_dim = 0 if a is None else (num_actions if num_actions is not None else int(np.prod(a.shape[1:])))
        x, starts, lengths = _encode(train, num_actions, action_dim)
        ys = self._targets(train, x.shape[0], fitting=True)
        norm = Normalizer.fit(x).to(self.device, self.dtype)
        rows = _Rows(norm.apply(x.to(self.device)), starts, lengths)
        kinds = [c.kind for c in self.concepts]
        y_mean = torch.tensor([float(y.mean()) if k == "scalar" else 0.0 for y, k in zip(ys, kinds)], dtype=torch.float64)
        y_std = torch.tensor([max(float(y.std(unbiased=False)), 1e-12) if k == "scalar" else 1.0 for y, k in zip(ys, kinds)],
                             dtype=torch.float64)

        def stacked(targets: list[Tensor]) -> Tensor:  # [n+1 c] float targets (scalars standardised), padding row last
            cols = [((y - y_mean[i]) / y_std[i]) if k == "scalar" else y.double() for i, (y, k) in enumerate(zip(targets, kinds))]
            t = torch.stack(cols, 1)
            return torch.cat([t, t.new_zeros(1, t.shape[1])]).to(self.device, self.dtype)

        yt = stacked(ys)
        vrows = vy = None
        if val is not None:
            xv, vs, vl = _encode(val, num_actions, action_dim)
            vrows, vy = _Rows(norm.apply(xv.to(self.device)), vs, vl), stacked(self._targets(val, xv.shape[0], fitting=False))
        widths = _widths(self.concepts)
        with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's global RNG state
            torch.manual_seed(self.seed)
            net = _Net(x.shape[1], self.hidden, sum(widths)).to(self.device, self.dtype)
        opt = torch.optim.Adam(net.parameters(), lr=self.lr)
        rng = np.random.default_rng(self.seed)

        def loss_of(rows_: _Rows, targets: Tensor, idx: Tensor, mask: Tensor) -> Tensor:
            xz = torch.cat([rows_.x, rows_.x.new_zeros(1, rows_.x.shape[1])])
            m = mask.to(self.device)
            o = einops.rearrange(net(xz[idx.to(self.device)]), "b t k -> (b t) k")[m.reshape(-1)]
            t = targets[idx.to(self.device)].reshape(-1, targets.shape[1])[m.reshape(-1)]
            total, j = o.new_zeros(()), 0
            for i, (k, w) in enumerate(zip(kinds, widths)):
                if k == "binary":
                    total = total + nn.functional.binary_cross_entropy_with_logits(o[:, j], t[:, i])
                elif k == "categorical":
                    total = total + nn.functional.cross_entropy(o[:, j: j + w], t[:, i].long())
                else:
                    total = total + nn.functional.mse_loss(o[:, j], t[:, i])
                j += w
            return total

        def val_loss() -> float:
            assert vrows is not None and vy is not None
            with torch.no_grad():
                parts = [(loss_of(vrows, vy, i, m) * float(m.sum()), float(m.sum()))
                         for i, m in vrows.batches(np.argsort(-vrows.lengths, kind="stable"), 256)]
            return float(sum(p for p, _ in parts)) / sum(w for _, w in parts)

        best, best_state, bad, epochs = float("inf"), {k: v.clone() for k, v in net.state_dict().items()}, 0, 0
        for epoch in range(self.max_epochs):
            epochs = epoch + 1
            net.train()
            for idx, mask in rows.batches(_bucketed(lengths, self.batch_episodes, rng), self.batch_episodes):
                opt.zero_grad()
                loss_of(rows, yt, idx, mask).backward()
                nn.utils.clip_grad_norm_(net.parameters(), self.grad_clip)
                opt.step()
            if vrows is None:
                best_state = {k: v.clone() for k, v in net.state_dict().items()}
                continue
            net.train(False)
            v = val_loss()
            if v < best - 1e-6:
                best, best_state, bad = v, {k: t.clone() for k, t in net.state_dict().items()}, 0
            else:
                bad += 1
                if bad >= self.patience:
                    break
        return HistoryBaseline(self.concepts, norm, best_state, y_mean.to(self.device, self.dtype),
                               y_std.to(self.device, self.dtype), num_actions, action_dim, self.hparams(), epochs,
                               best, time.perf_counter() - t0)


def store_split(store: Any, split: str, names: Sequence[str] | None = None) -> HistorySplit:
    """A :class:`~probes.extract.LatentStore` split as a :class:`HistorySplit`: observations and labels from the store,
    actions from the attached dataset (``None`` when the store has no dataset: observations only)."""
    actions = None
    if getattr(store, "dataset", None) is not None:
        got = store.dataset.concat(split, ["actions", "episode_id"])
        if not np.array_equal(got["episode_id"], store.episodes(split)):
            raise ProbeError(f"the dataset's {split!r} rows do not line up with the latent store's; extract again")
        actions = got["actions"]
    labels = {k: np.array(v) for k, v in store.concepts(split).items() if names is None or k in names}  # writable copies
    return HistorySplit(np.asarray(store.obs(split)), actions, np.asarray(store.episodes(split)),
                        np.asarray(store.steps(split)), labels)


def store_num_actions(store: Any) -> int | None:
    """Number of discrete actions of the store's dataset (``None``: continuous actions or no dataset attached)."""
    ds = getattr(store, "dataset", None)
    spec = ds.action_spec if ds is not None else {}
    return int(spec["n"]) if spec.get("kind") == "discrete" else None
