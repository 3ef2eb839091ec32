"""The train stage: a dynamics model fitted to a dataset with Lightning, logged to wandb."""

from __future__ import annotations

from pathlib import Path

import torch

from dynamics.base import ActionSpec, ObsSpec
from dynamics.registry import build_model
from experiments.config import ConfigError
from experiments.provenance import write_config
from experiments.schema import RunConfig
from worlds.dataset import TrajectoryDataset


def build_for_dataset(cfg: RunConfig, ds: TrajectoryDataset):
    """The configured model for the dataset's observation and action specs (seeded initial weights)."""
    torch.manual_seed(cfg.seed)
    try:
        return build_model(cfg.dynamics.model, ObsSpec.from_manifest(ds.obs_spec),
                           ActionSpec.from_manifest(ds.action_spec), **cfg.dynamics.hparams)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"dynamics: {e}") from None


def run_train(cfg: RunConfig, data_path: Path, out: Path, *, progress: bool = True):
    """Train ``cfg.dynamics`` on the dataset at ``data_path`` into ``out``; returns ``TrainResult``."""
    from dynamics.training import fit_dynamics

    ds = TrajectoryDataset.open(data_path)  # verifies checksums before any training
    model = build_for_dataset(cfg, ds)
    d = cfg.dynamics
    if d.resume:  # a corrupt checkpoint or one of another model is refused before anything is written
        check_resumable(out / "checkpoints", model)
    from experiments.tracking import effective_mode

    mode = effective_mode(cfg.wandb.mode)  # WANDB_MODE=disabled turns training's logging off too, whatever the config
    logger = "none" if mode == "disabled" else f"wandb-{mode}"
    # config.yaml is written (atomically) only once fit_dynamics has run every check: a refused train into a
    # finished run folder leaves its config.yaml and run.json as they were
    result = fit_dynamics(
        model, ds, out, max_steps=d.max_steps, max_time_s=d.max_time_s, batch_size=d.batch_size,
        window=d.window, lr=d.lr, grad_clip=d.grad_clip, seed=cfg.seed, resume=d.resume,
        val_every=d.val_every, logger=logger, wandb_project=cfg.wandb.project,
        accelerator=d.accelerator, devices=d.devices, strategy=d.strategy, num_nodes=d.num_nodes,
        progress_bar=progress, snapshot_steps=snapshot_steps(d.snapshots, d.max_steps),
        on_ready=lambda: write_config(cfg, out / "config.yaml"),
    )
    if result.is_global_zero:  # the other DDP processes only helped train
        evaluate_stage(model, data_path, out, seed=cfg.seed)
    return result


def snapshot_steps(fractions: tuple[float, ...], max_steps: int) -> tuple[int, ...]:
    """The global steps of ``dynamics.snapshots``: 0 (the initial weights), then each fraction of ``max_steps``
    rounded half up (at least 1, below ``max_steps``: the final weights are ``last.ckpt``); none without fractions."""
    if not fractions:
        return ()
    steps = {min(max(1, int(f * max_steps + 0.5)), max_steps - 1) for f in fractions}
    return tuple(sorted({0} | {s for s in steps if s > 0}))


def check_resumable(ckpt_dir: Path, model) -> None:
    """Refuse (one line naming the file) to resume ``model`` from a corrupt checkpoint or one of another model."""
    import json

    from dynamics.training.checkpoint import (META_KEY, CheckpointError, find_resume_checkpoint, model_meta,
                                              read_checkpoint)

    path = find_resume_checkpoint(ckpt_dir)  # raises, naming them, if checkpoints exist and none is valid
    if path is None:
        return
    theirs, ours = read_checkpoint(path).get(META_KEY), model_meta(model)
    theirs = theirs if isinstance(theirs, dict) else {}
    if theirs.get("model") != ours["model"]:
        raise CheckpointError(f"checkpoint {path} holds a {theirs.get('model')!r} model, expected {ours['model']!r}; "
                              "choose another out= or drop resume=true")
    differ = [k for k in ("hparams", "obs_spec", "action_spec")
              if json.dumps(theirs.get(k), sort_keys=True) != json.dumps(ours[k], sort_keys=True)]
    if differ:
        raise CheckpointError(f"checkpoint {path} was trained with other {', '.join(differ)}; "
                              "resume with the same dynamics settings or choose another out=")


def _symbolic_world(ds: TrajectoryDataset) -> type | None:
    """The dataset's world class when its observations are symbolic grids; None otherwise, or for a dataset of a
    world this install does not register (no seen/unseen split, recall keyed by channel index, no hidden tests)."""
    from worlds.registry import get_world

    if ds.obs_spec.get("obs_kind") != "symbolic":
        return None
    try:
        return get_world(ds.world_name).cls
    except ValueError:
        return None


def _view_positions(ds: TrajectoryDataset) -> tuple[str, str] | None:
    """The world's (row, column) view-centre concepts when its grid view is translated, not rotated."""
    world = _symbolic_world(ds)
    return (world.view_position_concepts or None) if world else None


def _cell_names(ds: TrajectoryDataset) -> tuple[str, ...] | None:
    """The world's names of the symbolic observation's channels (for recall by class), when it declares one per channel."""
    names = getattr(_symbolic_world(ds), "cell_names", None)
    return tuple(names) if names and len(names) == int(ds.obs_spec["shape"][0]) else None


def _hidden_concept_tests(ds: TrajectoryDataset) -> tuple:
    """The world's hidden-concept tests (:mod:`worlds.hidden`) when its observations are symbolic."""
    return tuple(getattr(_symbolic_world(ds), "hidden_concept_tests", ()))


def evaluate_stage(model, data_path: Path, out: Path, *, split: str = "test", context: int = 10,
                   horizons: tuple[int, ...] = (1, 5, 15), seed: int = 0) -> dict:
    """Open-loop quality on held-out episodes vs copy-the-last-frame, with 95% CIs -> ``open_loop.json``.

    Symbolic observations add recall by cell class and its macro average (balanced per-cell accuracy), all cells
    and seen cells: ``model_balanced``, ``copy_balanced``, ``model_class_recall`` (``{k: {class: estimate with
    count}}``), ``copy_class_recall``, their ``*_seen_*`` versions and ``class_names``. A world with hidden-concept
    tests (:mod:`worlds.hidden`) adds ``hidden_concepts``: per test, whether the model's 1-step prediction follows
    the hidden concept where the world's does (:func:`dynamics.behaviour.evaluate_hidden_concept`)."""
    from dynamics.evaluate import episode_windows, evaluate_open_loop
    from experiments.provenance import write_json

    ds = TrajectoryDataset.open(data_path, verify=False)
    episodes = [ds.episode(int(i)) for i in ds.episode_ids(split)]
    longest = max((len(e) for e in episodes), default=0)
    if not model.can_decode:
        result = {"skipped": f"{type(model).__name__} does not decode observations"}
    elif longest < context + max(horizons):
        result = {"skipped": f"no {split} episode has {context + max(horizons)} steps (longest: {longest}); collect more episodes"}
    else:
        positions = _view_positions(ds)
        w = episode_windows(episodes, context + max(horizons), stride=max(horizons), position_concepts=positions)
        rep = evaluate_open_loop(model, w["obs"], w["actions"], w["is_first"], context, horizons, seed=seed,
                                 groups=w["episode"], positions=w.get("positions"), class_names=_cell_names(ds))

        def est(d):
            return {str(k): e.as_json() for k, e in d.items()}

        def by_class(d):  # with the number of cells of each class: a recall over 12 cells is not one over 12000
            return {str(k): {str(c): {**e.as_json(), "count": e.count} for c, e in per.items()} for k, per in d.items()}

        result = {"split": split, "metric": rep.metric, "context": context, "windows": rep.num_windows,
                  "episodes": int(w["episode"].unique().numel()),
                  "model": est(rep.model), "copy_last_frame": est(rep.copy),
                  "model_changed_cells": est(rep.model_changed), "copy_changed_cells": est(rep.copy_changed),
                  "changed_fraction": {str(k): v for k, v in rep.changed_fraction.items()},
                  "model_unseen_cells": est(rep.model_unseen)}
        if rep.model_seen:  # cells inside an earlier observed view: the ones a model can predict
            result.update({"model_seen_cells": est(rep.model_seen), "copy_seen_cells": est(rep.copy_seen),
                           "model_seen_changed_cells": est(rep.model_seen_changed),
                           "seen_fraction": {str(k): v for k, v in rep.seen_fraction.items()}})
        if rep.model_memory:  # seen cells in the last observed view (state drift) vs seen only before (memory)
            result.update({"model_last_view_cells": est(rep.model_last_view), "model_memory_cells": est(rep.model_memory),
                           "memory_fraction": {str(k): v for k, v in rep.memory_fraction.items()}})
        if rep.model_balanced:  # symbolic: recall by cell class, where per-cell accuracy hides the rare classes
            result.update({"class_names": [str(c) for c in rep.class_names] or None,
                           "model_balanced": est(rep.model_balanced), "copy_balanced": est(rep.copy_balanced),
                           "model_class_recall": by_class(rep.model_class_recall),
                           "copy_class_recall": by_class(rep.copy_class_recall)})
        if rep.model_seen_balanced:
            result.update({"model_seen_balanced": est(rep.model_seen_balanced),
                           "copy_seen_balanced": est(rep.copy_seen_balanced),
                           "model_seen_class_recall": by_class(rep.model_seen_class_recall),
                           "copy_seen_class_recall": by_class(rep.copy_seen_class_recall)})
    tests = _hidden_concept_tests(ds)
    if tests and model.can_decode:  # does the model use what the view hides? (dynamics/behaviour.py)
        from dynamics.behaviour import evaluate_hidden_concept

        result["hidden_concepts"] = [evaluate_hidden_concept(model, episodes, t, seed=seed) for t in tests]
    write_json(result, out / "open_loop.json")
    return result
