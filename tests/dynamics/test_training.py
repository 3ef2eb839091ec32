"""Training: windows and their order, the open-loop metric, determinism, outputs, wandb.

The NaN guard is tested in ``tests/reliability/test_nan_guard.py``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dynamics.training import fit_dynamics
from dynamics.training.checkpoint import read_checkpoint
from dynamics.training.data import (InfiniteBatchSampler, InMemoryWindowSource, SplitStream, TrainWindows,
                                    WindowDataModule, WindowSource)
from dynamics.training.figures import render_rollout
from dynamics.training.module import DynamicsModule, step_error
from worlds.errors import OntolabError


def _weights(path):
    return read_checkpoint(path)["state_dict"]


# -- data ------------------------------------------------------------------------------------------
def test_stream_windows_equal_concatenated_episodes(kit, grid_source):
    eps = kit.walk_episodes(16, 0)[:12]  # the train split of grid_source, rebuilt independently
    ref = {k: np.concatenate([getattr(e, k) for e in eps]) for k in ("obs", "actions", "is_first")}
    stream = SplitStream(grid_source, "train", 16)
    assert stream.total == len(ref["obs"])
    for offset in (0, 5, 17, stream.total - 16):
        w = stream.read(offset)
        for k in ref:
            np.testing.assert_array_equal(w[k], ref[k][offset:offset + 16])
    crossing = [o for o in range(stream.total - 16) if stream.read(o)["is_first"][1:].any()]
    assert crossing, "some windows must span an episode boundary (is_first marks the reset)"


def test_each_sampler_epoch_is_a_permutation_of_disjoint_windows(grid_source):
    data = TrainWindows(SplitStream(grid_source, "train", 16), seed=7)
    n, total = data.windows_per_epoch, data.stream.total
    epochs = []
    for e in range(3):
        starts = np.array([data.start_of(e * n + s) for s in range(n)])
        phase = data.plan(e)[0]
        assert sorted(starts) == [phase + 16 * k for k in range(n)]  # every slot once, non-overlapping
        assert starts.min() >= 0 and starts.max() + 16 <= total
        epochs.append(starts)
    assert not all(np.array_equal(epochs[0], x) for x in epochs[1:]), "epochs must be reshuffled"
    again = TrainWindows(SplitStream(grid_source, "train", 16), seed=7)
    assert [again.start_of(p) for p in range(2 * n)] == [data.start_of(p) for p in range(2 * n)]


def test_batch_sampler_shards_global_batches_over_ranks():
    it0, it1 = iter(InfiniteBatchSampler(4, 3, rank=0, world_size=2)), iter(InfiniteBatchSampler(4, 3, rank=1, world_size=2))
    for g in (3, 4):
        a, b = next(it0), next(it1)
        assert sorted(a + b) == list(range(g * 8, g * 8 + 8))


def test_datamodule_refuses_to_resume_with_other_settings(grid_source):
    state = WindowDataModule(grid_source, window=16, batch_size=4, seed=1).state_dict()
    WindowDataModule(grid_source, window=16, batch_size=4, seed=1).load_state_dict(state)
    with pytest.raises(OntolabError, match="batch_size: checkpoint 4, now 8"):
        WindowDataModule(grid_source, window=16, batch_size=8, seed=1).load_state_dict(state)


def test_split_shorter_than_window_is_refused(grid_source):
    with pytest.raises(OntolabError, match="fewer than one window of 100000"):
        SplitStream(grid_source, "val", 100000)


# -- metrics ---------------------------------------------------------------------------------------
def test_step_error_symbolic_is_one_minus_cell_accuracy():
    true = torch.zeros(1, 1, 2, 3, 3)
    true[..., 0, :, :] = 1  # every cell channel 0
    logits = true.clone() * 5
    logits[0, 0, 1, 0, 0] = logits[0, 0, 1, 2, 1] = 9  # two cells predicted as channel 1
    assert step_error(logits, true, "symbolic").item() == pytest.approx(2 / 9)
    assert step_error(torch.full((1, 1, 3), 0.5), torch.ones(1, 1, 3), "vector").item() == pytest.approx(0.25)
    img = torch.full((1, 1, 3, 2, 2), 255, dtype=torch.uint8)
    assert step_error(torch.ones(1, 1, 3, 2, 2), img, "image").item() == pytest.approx(0.0)


def test_open_loop_error_matches_per_sample_rollouts(kit, grid_source):
    torch.manual_seed(0)
    model = kit.tiny_for(grid_source).eval()
    module = DynamicsModule(model)
    windows = [SplitStream(grid_source, "val", 20).read(o) for o in (0, 7, 20, 33)]
    batch = {k: torch.as_tensor(np.stack([w[k] for w in windows])) for k in windows[0]}
    assert batch["is_first"][:, 5:].any(), "the premise: some imagined span crosses a reset"
    module.on_validation_epoch_start()
    with torch.no_grad():
        module._open_loop(batch["obs"], batch["actions"], batch["is_first"])
    # reference: one rollout per sample and k, skipping spans that contain a reset
    context = 20 - 15
    for i, k in enumerate(module.open_loop_ks):
        errs = []
        for b in range(4):
            if batch["is_first"][b, context:context + k].any():
                continue
            with torch.no_grad():
                post = model.observe(batch["obs"][b:b + 1, :context], batch["actions"][b:b + 1, :context],
                                     batch["is_first"][b:b + 1, :context])
                imag = model.imagine(post.at((slice(None), -1)), batch["actions"][b:b + 1, context:context + k])
                pred = model.decode(imag.at((slice(None), slice(-1, None))))
            true = batch["obs"][b:b + 1, context + k - 1:context + k]
            errs.append(1 - (pred.argmax(2) == true.argmax(2)).float().mean().item())
        assert module._ol_count[i].item() == len(errs)
        assert module._ol_sum[i].item() / max(len(errs), 1) == pytest.approx(np.mean(errs) if errs else 0.0, abs=1e-6)


@pytest.mark.parametrize("kind,shape", [("symbolic", (2, 3, 3)), ("image", (3, 4, 4)), ("vector", (5,))])
def test_render_rollout_gives_an_rgb_image(kind, shape):
    rng = np.random.default_rng(0)
    true = rng.integers(0, 2, (4, *shape)).astype(np.uint8 if kind != "vector" else np.float32)
    image = render_rollout(true, rng.random((4, *shape)).astype(np.float32), kind, "t")
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3 and image.std() > 0


# -- fitting ---------------------------------------------------------------------------------------
def test_fit_learns_and_writes_its_outputs(kit, grid_source, tmp_path):
    model = kit.tiny_for(grid_source)
    val = SplitStream(grid_source, "val", 16)
    batch = {k: torch.as_tensor(np.stack([val.read(o)[k] for o in (0, 16, 32)])) for k in ("obs", "actions", "is_first")}
    torch.manual_seed(0)
    with torch.no_grad():
        before = model.loss(batch["obs"], batch["actions"], batch["is_first"]).loss.item()
    result = fit_dynamics(model, grid_source, tmp_path, max_steps=60, val_every=25, seed=0, **kit.fast)
    assert result.steps == 60 and result.val_loss < 0.7 * before
    assert set(result.open_loop) == {1, 5, 15} and all(0 <= v <= 1 for v in result.open_loop.values())
    assert result.best_checkpoint.is_file() and result.last_checkpoint.is_file()
    assert result.train_seconds > 0 and result.transitions_per_s > 0
    with pytest.raises(AttributeError):
        result.steps = 1  # frozen
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["val_loss"] == pytest.approx(result.val_loss) and metrics["open_loop"]["15"] == result.open_loop[15]
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["dataset_fingerprint"] == grid_source.fingerprint and run["model"]["model"] == "tiny"
    assert _weights(result.last_checkpoint)["model.dec.weight"].equal(model.dec.weight.detach())
    with pytest.raises(OntolabError, match=r"already holds checkpoints of a run; continue that run with resume=True "
                                           r"\(command line: resume=true\)"):
        fit_dynamics(kit.tiny_for(grid_source), grid_source, tmp_path, max_steps=5, val_every=5, **kit.fast)


def test_same_seed_gives_identical_weights_other_seed_does_not(kit, grid_source, tmp_path):
    runs = {}
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        runs[name] = _weights(fit_dynamics(kit.tiny_for(grid_source, seed=0), grid_source, tmp_path / name,
                                           max_steps=20, val_every=10, seed=seed, **kit.fast).last_checkpoint)
    assert all(torch.equal(runs["a"][k], runs["b"][k]) for k in runs["a"])
    assert not all(torch.equal(runs["a"][k], runs["c"][k]) for k in runs["a"])


@pytest.mark.slow
def test_wandb_offline_run_is_written_inside_out_dir(kit, grid_source, tmp_path):
    result = fit_dynamics(kit.tiny_for(grid_source), grid_source, tmp_path, max_steps=10, val_every=5, seed=0,
                          **{**kit.fast, "logger": "wandb-offline"})
    runs = list((tmp_path / "wandb").glob(f"offline-run-*-{result.wandb_run_id}"))
    assert len(runs) == 1 and any(runs[0].rglob("*.png")), "the offline run with its rollout picture"
    assert json.loads((tmp_path / "run.json").read_text())["wandb_run_id"] == result.wandb_run_id


def test_fit_reads_an_on_disk_trajectory_dataset(kit, tmp_path):
    from worlds import dataset
    from worlds.concepts import ConceptSchema

    spec = {"shape": [2, 3, 3], "dtype": "uint8", "obs_kind": "symbolic"}
    with dataset.DatasetWriter(tmp_path / "data", world_name="walk", schema=ConceptSchema(()), obs_spec=spec,
                               action_spec={"kind": "discrete", "n": 5}, families=["grid"],
                               split_fractions=(0.6, 0.4, 0.0)) as writer:
        for episode in kit.walk_episodes(20, 3):
            writer.add(episode)
    with dataset.TrajectoryDataset.open(tmp_path / "data") as data:
        assert isinstance(data, WindowSource)
        memory = InMemoryWindowSource({s: [data.episode(int(i)) for i in data.episode_ids(s)] for s in ("train", "val")},
                                      spec, data.action_spec)
        disk = SplitStream(data, "train", 16)
        assert all(np.array_equal(disk.read(o)["obs"], SplitStream(memory, "train", 16).read(o)["obs"]) for o in (0, 21, 40))
        result = fit_dynamics(kit.tiny_for(memory), data, tmp_path / "run", max_steps=6, val_every=3, seed=0, **kit.fast)
    assert result.steps == 6 and np.isfinite(result.val_loss)
    assert json.loads((tmp_path / "run" / "run.json").read_text())["dataset_fingerprint"] == data.fingerprint


def test_fit_refuses_a_model_built_for_other_specs(kit, grid_source, vector_source, tmp_path):
    with pytest.raises(OntolabError, match=r"the dataset holds vector observations of shape \(2,\), the model expects symbolic"):
        fit_dynamics(kit.tiny_for(grid_source), vector_source, tmp_path, max_steps=2, val_every=1, **kit.fast)


def _bytes(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.filterwarnings("ignore:window=12 holds no 15-step open-loop span")
def test_a_refused_fit_writes_nothing(kit, grid_source, tmp_path):
    """Every refusal comes before run.json (or the caller's on_ready files) is written: the folder stays byte-identical."""
    fit_dynamics(kit.tiny_for(grid_source), grid_source, tmp_path, max_steps=4, val_every=2, seed=0, **kit.fast)
    before = _bytes(tmp_path)
    called = []
    refusals = [
        ({"resume": False}, "already holds checkpoints"),
        ({"resume": True, "batch_size": 5}, r"the data settings changed \(batch_size: checkpoint 4, now 5\)"),
        ({"resume": True, "window": 12}, r"the data settings changed \(window: checkpoint 16, now 12\)"),
        ({"resume": True, "hidden": 8},
         r"weights do not fit model 'tiny' \(shapes .*enc\.0\.weight \(16, 18\) vs \(8, 18\).*retrain"),
        ({"resume": True, "strategy": "bogus"}, r"Lightning cannot train with .*strategy='bogus'.*dynamics\.strategy"),
        ({"resume": True, "lr": float("nan")}, r"lr must be a finite number > 0, got nan"),
    ]
    if not torch.cuda.is_available():
        refusals.append(({"resume": True, "accelerator": "gpu"},
                         r"Lightning cannot train with accelerator='gpu'.*dynamics\.accelerator"))
    for change, message in refusals:
        change = dict(change)
        model = kit.tiny_for(grid_source, **({"hidden": change.pop("hidden")} if "hidden" in change else {}))
        with pytest.raises(OntolabError, match=message):
            fit_dynamics(model, grid_source, tmp_path, max_steps=8, val_every=2, seed=0,
                         on_ready=lambda: called.append(1), **{**kit.fast, **change})
        assert _bytes(tmp_path) == before, change
    assert not called, "on_ready runs only once every check passed"
    fit_dynamics(kit.tiny_for(grid_source), grid_source, tmp_path, max_steps=6, val_every=2, seed=0, resume=True,
                 on_ready=lambda: called.append(1), **kit.fast)
    assert called == [1] and json.loads((tmp_path / "run.json").read_text())["settings"]["max_steps"] == 6


def test_a_short_window_records_the_open_loop_ks_it_cannot_hold(kit, grid_source, tmp_path):
    with pytest.warns(UserWarning, match=r"window=8 holds no 15-step open-loop span"):
        result = fit_dynamics(kit.tiny_for(grid_source), grid_source, tmp_path, max_steps=4, val_every=2, seed=0,
                              **{**kit.fast, "window": 8})
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(result.open_loop) == {1, 5} and set(metrics["open_loop"]) == {"1", "5"}
    assert metrics["open_loop_missing"] == {"15": "window=8 holds no 15-step open-loop span; use window > 15"}


def test_a_save_over_a_sidecar_that_is_no_json_object_still_writes_a_verified_checkpoint(tmp_path):
    from dynamics.training.checkpoint import AtomicCheckpointIO, sidecar_path

    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 1, "state_dict": {"w": torch.zeros(2)}}, path)
    sidecar_path(path).write_text("[1, 2]\n")  # valid JSON, but not the object a sidecar is
    with pytest.raises(OntolabError, match=r"last\.ckpt\.sha256\.json holds a JSON list, expected an object"):
        read_checkpoint(path)
    io.save_checkpoint({"global_step": 2, "state_dict": {"w": torch.ones(2)}}, path)
    assert read_checkpoint(path)["global_step"] == 2
    assert json.loads(sidecar_path(path).read_text())["previous_sha256"] is None  # the damaged record vouched for nothing
