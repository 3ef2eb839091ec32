"""``fit_dynamics``: train a plain dynamics model on a trajectory dataset with Lightning; resumable, bitwise.

Layout of ``out_dir``::

    run.json                        what produced the run: settings, model, dataset fingerprint, code, wandb id
    checkpoints/best.ckpt           lowest val/loss (+ best.ckpt.sha256.json)
    checkpoints/last.ckpt           every ``checkpoint_every`` steps and at the end (+ sidecar)
    checkpoints/snapshot-step=N.ckpt  weights only, at each of ``snapshot_steps`` reached (+ sidecar)
    metrics.json                    val loss, open-loop errors, train seconds, transitions/s (written atomically)
    wandb/                          the offline wandb run (``wandb sync`` it later), if logging to wandb

Reproducibility: ``seed_everything(seed, workers=True)`` and deterministic algorithms (strict on CPU,
``warn_only`` elsewhere; the previous global setting is restored afterwards). With ``resume=True`` a
killed run continues from its newest valid checkpoint and ends with bitwise the same weights as an
uninterrupted one on the same hardware (data order from :mod:`dynamics.training.data`, RNG states
from :class:`~dynamics.training.callbacks.RngState`, validation on its own RNG stream).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import secrets
import signal
import string
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.exceptions import MisconfigurationException
from pytorch_lightning.callbacks import Timer

from dynamics.base import DynamicsModel
from dynamics.training.callbacks import RngState, SnapshotCheckpoint, checkpoint_callbacks, list_snapshots
from dynamics.training.checkpoint import (BEST_NAME, LAST_NAME, AtomicCheckpointIO, CheckpointError, atomic_write_json,
                                          check_weights_fit, find_resume_checkpoint, read_checkpoint)
from dynamics.training.data import WindowDataModule, WindowSource
from dynamics.training.guards import NonFiniteGuard
from dynamics.training.module import DynamicsModule
from worlds.atomic import json_safe
from worlds.dataset.manifest import code_version
from worlds.errors import OntolabError

LOGGERS = ("wandb-offline", "wandb-online", "none")


@dataclass(frozen=True)
class TrainResult:
    """What one ``fit_dynamics`` call produced (also written to ``out_dir/metrics.json``)."""

    out_dir: Path
    best_checkpoint: Path | None
    """``checkpoints/best.ckpt`` (lowest ``val/loss``), if a validation ran during training."""
    last_checkpoint: Path | None
    """``checkpoints/last.ckpt``: the final weights."""
    val_loss: float
    """``val/loss`` of the final weights."""
    open_loop: Mapping[int, float]
    """``{k: error}`` of k-step open-loop prediction with the final weights (empty if the model cannot decode)."""
    train_seconds: float
    """Wall-clock seconds in the training loop (validation included), summed over resumed runs."""
    transitions_per_s: float
    """Training transitions (batch x window steps, all devices) per training second."""
    steps: int
    """Optimizer steps done (global step)."""
    wandb_run_id: str | None
    snapshots: Mapping[int, Path] = dataclasses.field(default_factory=dict)
    """``{step: checkpoints/snapshot-step=<step>.ckpt}`` of the requested snapshot steps that were reached."""
    is_global_zero: bool = True
    """False in the other processes of a multi-process (DDP) run: they write nothing, and the caller's own
    follow-up work (evaluation, reports) belongs to the global-zero process only."""


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise OntolabError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


def _check_specs(model: DynamicsModel, data: WindowSource) -> None:
    """Fail before training if the dataset's specs (manifest-style dicts) disagree with the model's."""
    obs, act = data.obs_spec, data.action_spec
    if isinstance(obs, Mapping) and "shape" in obs:
        theirs = (tuple(int(s) for s in obs["shape"]), obs.get("obs_kind", model.obs_spec.kind))
        if theirs != (tuple(model.obs_spec.shape), model.obs_spec.kind):
            raise OntolabError(f"the dataset holds {theirs[1]} observations of shape {theirs[0]}, the model expects "
                               f"{model.obs_spec.kind} {tuple(model.obs_spec.shape)}; build the model from the dataset's specs")
    if isinstance(act, Mapping) and act.get("kind") in ("discrete", "continuous"):
        discrete = act["kind"] == "discrete"
        size = int(act["n"]) if discrete else math.prod(int(s) for s in act["shape"])
        mine = model.action_spec.n if model.action_spec.discrete else model.action_spec.dim
        if (discrete, size) != (model.action_spec.discrete, mine):
            raise OntolabError(f"the dataset's actions are {act['kind']} of size {size}, the model's "
                               f"{'discrete' if model.action_spec.discrete else 'continuous'} of size {mine}; "
                               "build the model from the dataset's specs")


def _make_trainer(settings: Mapping[str, Any], **kwargs: Any) -> pl.Trainer:
    """``pl.Trainer(**kwargs)``; Lightning's refusal of the hardware settings becomes one line naming them."""
    try:
        return pl.Trainer(**kwargs)
    except (MisconfigurationException, ValueError, TypeError, RuntimeError, ImportError) as e:
        cause = " ".join(str(e).split())[:240] or type(e).__name__
        shown = ", ".join(f"{k}={settings[k]!r}" for k in ("accelerator", "devices", "strategy", "num_nodes", "precision"))
        raise OntolabError(f"Lightning cannot train with {shown}: {cause}; choose settings this machine supports "
                           "(command line: dynamics.accelerator=cpu|gpu|auto, dynamics.strategy=auto|ddp|..., "
                           "dynamics.devices, dynamics.num_nodes)") from None


def _check_data_state(path: Path, datamodule: WindowDataModule, state: Any, world_size: int | None = None,
                      skip: Sequence[str] = ()) -> None:
    if state is None:  # Lightning restores (and WindowDataModule checks) the state only when it is there
        return
    try:
        datamodule.check_resume(state, world_size, skip=skip)
    except OntolabError as e:
        raise OntolabError(f"{e} (checkpoint {path})") from None


def _check_resume_checkpoint(path: Path, module: DynamicsModule, datamodule: WindowDataModule) -> Any:
    """Refuse, before anything is written, a checkpoint whose data settings (but the world size: the Trainer
    knows it) or weights do not fit this run (Lightning would find out only inside ``trainer.fit``, after
    ``run.json`` was rewritten). Returns the checkpoint's data-module state, for the world-size check."""
    ckpt = read_checkpoint(path)
    state = ckpt.get(type(datamodule).__qualname__)
    _check_data_state(path, datamodule, state, skip=("world_size",))
    stored = ckpt.get("state_dict")
    if not isinstance(stored, dict):
        raise CheckpointError(f"checkpoint {path} holds no state_dict; it was not written by fit_dynamics: "
                              "choose another out_dir")
    prefix = "model."
    check_weights_fit(path, module.model, {k[len(prefix):]: v for k, v in stored.items()
                                           if isinstance(k, str) and k.startswith(prefix)})
    return state


def _make_logger(kind: str, out: Path, project: str, run_id: str | None, name: str | None) -> Any:
    if kind == "none":
        return False
    os.environ.setdefault("WANDB_SILENT", "true")
    import wandb
    from pytorch_lightning.loggers import WandbLogger

    # Our own id (8 lowercase alphanumerics, as wandb makes them; wandb's generator is not public API), chosen
    # before the run starts so that run.json can record it and a resumed run continues the same wandb run.
    run_id = run_id or "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
    return WandbLogger(project=project, name=name, save_dir=str(out), id=run_id,
                       resume="allow", mode="online" if kind == "wandb-online" else "offline",
                       settings=wandb.Settings(silent=True, console="off"))


def fit_dynamics(
    model: DynamicsModel, data: WindowSource, out_dir: str | os.PathLike, *,
    max_steps: int, max_time_s: float | None = None, batch_size: int = 16, window: int = 32,
    lr: float = 3e-4, weight_decay: float = 0.0, grad_clip: float | None = 100.0, seed: int = 0,
    resume: bool = False, val_every: int = 500, checkpoint_every: int | None = None,
    max_val_windows: int = 256, open_loop_ks: Sequence[int] = (1, 5, 15),
    logger: str | None = "wandb-offline", wandb_project: str = "ontolab", run_name: str | None = None,
    accelerator: str = "cpu", devices: int | str = 1, strategy: str | Any = "auto", num_nodes: int = 1,
    precision: str | int = "32-true", num_workers: int = 0, progress_bar: bool = True,
    callbacks: Sequence[pl.Callback] = (), snapshot_steps: Sequence[int] = (),
    on_ready: Callable[[], None] | None = None,
) -> TrainResult:
    """Train ``model`` on windows of ``data`` (train split; validation on the val split) into ``out_dir``.

    ``model`` is built by the caller (seed before building it for reproducible initial weights); on
    ``resume=True`` its weights are replaced by the checkpoint's. ``checkpoint_every`` defaults to
    ``val_every``. ``logger``: ``"wandb-offline"`` (default, never needs network), ``"wandb-online"``
    or ``"none"``. ``accelerator`` / ``devices`` / ``strategy`` / ``num_nodes`` / ``precision`` go to
    Lightning's Trainer unchanged (``strategy="ddp"`` with ``devices=4`` etc.). ``callbacks`` are
    extra Lightning callbacks. ``snapshot_steps``: global steps (0: the initial weights) at which a
    weights-only ``checkpoints/snapshot-step=<N>.ckpt`` is also written (steps not reached are absent;
    ``metrics.json`` lists the ones that exist under ``snapshots``).

    Every check runs before anything is written (the arguments, the checkpoint folder, on resume the
    checkpoint's data settings and weights against this run, the Trainer's hardware settings): a refused
    call leaves ``out_dir`` as it was. ``on_ready()`` is then called (on the global-zero process) before
    ``run.json`` is written, for the caller's own files (the train stage writes ``config.yaml`` there).

    Open-loop ks that a ``window``-step validation window cannot hold (``k >= window``) are dropped with
    a warning; ``metrics.json`` lists every requested k without a value under ``open_loop_missing`` with
    the reason (the ks are an argument here, so a short window is not refused).
    """
    _check_int("max_steps", max_steps, 1)
    _check_int("val_every", val_every, 1)
    checkpoint_every = _check_int("checkpoint_every", val_every if checkpoint_every is None else checkpoint_every, 1)
    logger = "none" if logger is None else logger
    if logger not in LOGGERS:
        raise OntolabError(f"logger must be one of {LOGGERS}, got {logger!r}")
    if max_time_s is not None and not max_time_s > 0:
        raise OntolabError(f"max_time_s must be a positive number of seconds or None, got {max_time_s!r}")
    if grad_clip is not None and not grad_clip > 0:
        raise OntolabError(f"grad_clip must be positive or None, got {grad_clip!r}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise OntolabError(f"lr must be a finite number > 0, got {lr!r}")
    _check_int("window", window, 1)
    _check_int("batch_size", batch_size, 1)
    _check_specs(model, data)
    out = Path(out_dir)
    ckpt_dir = out / "checkpoints"
    settings = {k: v if isinstance(v, (str, int, float, bool, type(None), list, tuple)) else repr(v)
                for k, v in locals().items() if k in _SETTING_NAMES}

    # -- where to start ------------------------------------------------------------------------------
    previous: dict[str, Any] = {}
    if resume:
        ckpt_path = find_resume_checkpoint(ckpt_dir)
        if ckpt_path is None:
            warnings.warn(f"resume=True but {ckpt_dir} holds no checkpoint; starting from step 0", stacklevel=2)
        if (out / "run.json").is_file():
            try:
                previous = json.loads((out / "run.json").read_text())
            except ValueError:  # unreadable: only the wandb run id is taken from it
                previous = {}
            previous = previous if isinstance(previous, dict) else {}
    else:
        ckpt_path = None
        if ckpt_dir.is_dir() and any(ckpt_dir.glob("*.ckpt")):
            raise OntolabError(f"{ckpt_dir} already holds checkpoints of a run; continue that run with resume=True "
                               "(command line: resume=true) or train into another folder (out_dir; command line: out=)")

    # -- pieces ---------------------------------------------------------------------------------------
    pl.seed_everything(seed, workers=True, verbose=False)
    datamodule = WindowDataModule(data, window=window, batch_size=batch_size, seed=seed, num_workers=num_workers,
                                  max_val_windows=max_val_windows)
    module = DynamicsModule(model, lr=lr, weight_decay=weight_decay, open_loop_ks=open_loop_ks, val_seed=seed)
    timer = Timer(duration=None if max_time_s is None else {"seconds": float(max_time_s)}, interval="step")
    stored_data_state = None if ckpt_path is None else _check_resume_checkpoint(ckpt_path, module, datamodule)
    run_logger = _make_logger(logger, out, wandb_project, previous.get("wandb_run_id"), run_name)
    run_id = getattr(run_logger, "version", None) if run_logger else None
    was_deterministic = (torch.are_deterministic_algorithms_enabled(),
                         torch.is_deterministic_algorithms_warn_only_enabled(), torch.backends.cudnn.benchmark)
    try:  # the Trainer's constructor sets the flags, also when it (or a check after it) refuses
        trainer = _make_trainer(
            settings,
            accelerator=accelerator, devices=devices, strategy=strategy, num_nodes=num_nodes, precision=precision,
            max_steps=max_steps, max_epochs=-1, val_check_interval=val_every, check_val_every_n_epoch=None,
            num_sanity_val_steps=1, gradient_clip_val=grad_clip, gradient_clip_algorithm="norm",
            deterministic=True if accelerator == "cpu" else "warn", benchmark=False,
            plugins=[AtomicCheckpointIO()], logger=run_logger, log_every_n_steps=min(50, val_every),
            callbacks=[NonFiniteGuard(check_grads=str(precision) not in ("16-mixed", "16")), RngState(), timer,
                       _ValidateLastStep(),
                       *checkpoint_callbacks(ckpt_dir, checkpoint_every),
                       *([SnapshotCheckpoint(ckpt_dir, list(snapshot_steps))] if snapshot_steps else []), *callbacks],
            enable_progress_bar=progress_bar, enable_model_summary=progress_bar, default_root_dir=str(out),
            use_distributed_sampler=False,  # WindowDataModule shards by rank itself
        )
        if ckpt_path is not None:
            _check_data_state(ckpt_path, datamodule, stored_data_state, trainer.world_size)

        # -- every check passed: write ---------------------------------------------------------------------
        too_long = sorted({int(k) for k in module.open_loop_ks if k >= window})
        if too_long:
            warnings.warn(f"window={window} holds no {'/'.join(map(str, too_long))}-step open-loop span: metrics.json "
                          f"will have no open_loop {too_long}; use window > {max(too_long)} to get them", stacklevel=2)
        if trainer.is_global_zero:
            out.mkdir(parents=True, exist_ok=True)
            if on_ready is not None:
                on_ready()
            atomic_write_json(out / "run.json", {
                "settings": settings, "model": module.meta, "dataset_fingerprint": str(data.fingerprint),
                "seed": seed, "wandb_run_id": run_id, "resumed_from": None if ckpt_path is None else str(ckpt_path),
                "code": code_version(), "versions": {"python": platform.python_version(), "torch": torch.__version__,
                                                      "pytorch_lightning": pl.__version__},
            })

        # -- train, then validate the final weights if the last validation was at another step ------------
        status = 1
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=r".*Checkpoint directory .* exists and is not empty.*")
                warnings.filterwarnings("ignore", message=r".*does not have many workers.*")  # num_workers=0 is deliberate
                warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated.*")
                try:
                    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
                except SystemExit:
                    # Lightning turns Ctrl-C into SystemExit(1) and leaves SIGINT ignored; give the caller the
                    # KeyboardInterrupt back (the last checkpoint is intact) and restore Ctrl-C.
                    if trainer.interrupted:
                        signal.signal(signal.SIGINT, signal.default_int_handler)
                        raise KeyboardInterrupt from None
                    raise
                if module.last_val_step != trainer.global_step:
                    trainer.validate(module, datamodule=datamodule, verbose=False)
            status = 0
        finally:
            if run_logger:
                import wandb

                wandb.finish(exit_code=status)

        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        open_loop = {k: metrics[f"val/open_loop_{k}"] for k in module.open_loop_ks if f"val/open_loop_{k}" in metrics}
        seconds = float(timer.time_elapsed("train"))
        steps = int(trainer.global_step)
        transitions = steps * batch_size * window * trainer.world_size
        result = TrainResult(
            out_dir=out,
            best_checkpoint=ckpt_dir / BEST_NAME if (ckpt_dir / BEST_NAME).is_file() else None,
            last_checkpoint=ckpt_dir / LAST_NAME if (ckpt_dir / LAST_NAME).is_file() else None,
            val_loss=metrics.get("val/loss", float("nan")), open_loop=open_loop, train_seconds=seconds,
            transitions_per_s=transitions / seconds if seconds > 0 else float("nan"), steps=steps, wandb_run_id=run_id,
            snapshots={k: p for k, p in list_snapshots(ckpt_dir).items() if k in set(snapshot_steps)},
            is_global_zero=bool(trainer.is_global_zero),
        )
        if trainer.is_global_zero:
            record = {f.name: getattr(result, f.name) for f in dataclasses.fields(result)}
            record = {k: str(v) if isinstance(v, Path) else v for k, v in record.items()}
            record["open_loop"] = {str(k): v for k, v in open_loop.items()}
            record["snapshots"] = {"requested": sorted(int(s) for s in snapshot_steps), "steps": sorted(result.snapshots),
                                   "files": {str(k): p.relative_to(out).as_posix() for k, p in result.snapshots.items()}}
            record["open_loop_missing"] = {str(k): _missing_reason(k, window, module, metrics)
                                           for k in module.open_loop_ks if k not in open_loop}
            record["val_metrics"] = metrics
            atomic_write_json(out / "metrics.json", json_safe(record))
        return result
    finally:
        torch.use_deterministic_algorithms(was_deterministic[0], warn_only=was_deterministic[1])
        torch.backends.cudnn.benchmark = was_deterministic[2]


class _ValidateLastStep(pl.Callback):
    """Validate the final weights inside ``trainer.fit`` when ``max_steps`` is not a multiple of ``val_every``.

    Lightning validates off the ``val_check_interval`` grid only when ``should_stop`` is set (as the Timer
    does for ``max_time_s``); a ``trainer.validate`` after ``fit`` runs outside fitting, where ``best.ckpt``'s
    ModelCheckpoint does not save, so the final weights never competed for ``best.ckpt``.
    """

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if 0 < trainer.max_steps <= trainer.global_step:
            trainer.should_stop = True


def _missing_reason(k: int, window: int, module: DynamicsModule, metrics: Mapping[str, float]) -> str:
    """Why ``val/open_loop_<k>`` has no value (``metrics.json``'s ``open_loop_missing``)."""
    if not module.model.can_decode:
        return f"{type(module.model).__name__} does not decode observations"
    if k >= window:
        return f"window={window} holds no {k}-step open-loop span; use window > {k}"
    if "val/loss" not in metrics:
        return "no validation ran"
    return f"every validation window has a reset within {k} steps of its context"


_SETTING_NAMES = frozenset({
    "max_steps", "max_time_s", "batch_size", "window", "lr", "weight_decay", "grad_clip", "seed", "resume",
    "val_every", "checkpoint_every", "max_val_windows", "open_loop_ks", "logger", "wandb_project", "run_name",
    "accelerator", "devices", "strategy", "num_nodes", "precision", "num_workers", "snapshot_steps",
})
