"""Bad input is refused: exit code 2, exactly one stderr line naming the problem, no traceback, nothing touched.

``CASES`` is the table: one row per distinct bad input, through the real command line
(``experiments.cli.main`` in-process, for speed; ``test_no_traceback_through_the_console_script``
runs a sample through the installed ``ontolab`` script in a subprocess). Every row runs in a folder
that already holds outputs (a run folder, a dataset, a file); the whole folder is hashed before and
after, so "nothing touched" covers files created as well as files changed. The stages that do work
are replaced by tripwires: a row that got past validation fails loudly instead of training.

Adding a case is one line: ``Case(id, args, needle)``, where ``args`` may use ``{out}`` (a fresh
output path), ``{run}`` (an existing run folder), ``{file}`` (an existing file), ``{data}`` (a valid
dataset), ``{tmp}`` (the test folder) and the prepared inputs of ``PREPARE`` (damaged datasets,
malformed config files, ...).

``LIBRARY`` holds the inputs that only the library takes (probe fits, checkpoints, reward specs):
each must raise an :class:`~worlds.errors.OntolabError` (a ``ValueError``) of one line naming it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from experiments import cli
from worlds.errors import OntolabError

ONTOLAB = shutil.which("ontolab") or str(Path(sys.executable).parent / "ontolab")


@dataclass(frozen=True)
class Case:
    id: str
    args: tuple[str, ...]
    needle: str
    """A piece of the one stderr line that names the problem."""
    known_bug: str = ""
    """Why this row fails today (a strict xfail: it turns red once fixed, so the mark gets removed)."""


def C(id: str, args: str, needle: str, known_bug: str = "") -> Case:  # noqa: N802 -- short: a row stays one line
    """``args`` is split like a shell command line (quote an argument holding spaces)."""
    return Case(id, tuple(shlex.split(args)), needle, known_bug)


TINY = ("dynamics.hparams.deter=16 dynamics.hparams.hidden=16 dynamics.hparams.embed=16 dynamics.hparams.stoch=4 "
        "dynamics.hparams.classes=4")
"""The tiny RSSM of the prepared run folders (a resume must name the same model)."""

# fmt: off
CASES = [
    # -- the command line --------------------------------------------------------------------------------
    C("unknown_command",         "nosuchcommand",                                  "invalid choice: 'nosuchcommand'"),
    C("override_without_equals", "collect seed=1 episodes out={out}",              "override 'episodes' must look like key=value"),
    C("empty_key",               "collect =3 out={out}",                           "override '=3' must look like key=value"),
    C("missing_config_file",     "collect {tmp}/missing.yaml out={out}",           "missing.yaml' does not exist"),
    C("quickstart_with_a_file",  "quickstart myconfig.yaml out={out}",             "takes only key=value overrides"),
    C("sweep_without_a_grid",    "sweep out={out}",                                "`ontolab sweep` needs a grid"),
    C("sweep_bad_axis_value",    "sweep seeds=[0,1] dynamics.lr=[0.001,fast] out={out}", "dynamics.lr"),
    C("compare_without_runs",    "compare out={out}",                              "needs at least one run folder"),
    C("compare_not_a_run",       "compare {tmp} out={out}",                        "summary.json"),
    C("worlds_with_arguments",   "worlds extra",                                   "`ontolab worlds` takes no arguments"),
    C("train_without_dataset",   "train out={out}",                                "needs a dataset: data=PATH"),
    # -- config files and keys ----------------------------------------------------------------------------
    C("malformed_yaml",          "collect {bad_yaml} out={out}",                   "is not valid YAML at line"),
    C("yaml_holds_a_list",       "collect {list_yaml} out={out}",                  "must hold a mapping of keys, got list"),
    C("yaml_unknown_key",        "collect {unknown_key_yaml} out={out}",           "unknown config key 'data.episodez'"),
    C("yaml_wrong_type",         "collect {wrong_type_yaml} out={out}",            "'data.episodes' must be an integer"),
    C("yaml_python_tag",         "collect {python_tag_yaml} out={out}",            "is not valid YAML"),
    C("unknown_key",             "collect data.nosuchkey=1 out={out}",             "unknown config key 'data.nosuchkey'"),
    C("unknown_top_level_key",   "run nosuchkey=1 out={out}",                      "unknown config key 'nosuchkey'"),
    C("unknown_world_param",     "collect world.nosuchparam=1 out={out}",          "unknown config key 'world.nosuchparam'"),
    C("wrong_type_int",          "collect episodes=many out={out}",                "'data.episodes' must be an integer"),
    C("wrong_type_float",        "run dynamics.lr=fast out={out}",                 "'dynamics.lr' must be a number"),
    C("wrong_type_bool",         "run probes.control=3 out={out}",                 "'probes.control' must be true or false"),
    C("section_not_a_mapping",   "run plan=3 out={out}",                           "'plan' must be a mapping"),
    C("world_param_wrong_type",  "collect world.size=big out={out}",               "'world.size' must be an integer"),
    # -- names a registry defines -------------------------------------------------------------------------
    C("unknown_world",           "collect world=nosuchworld out={out}",            "unknown world 'nosuchworld'; known worlds: "),
    C("unknown_model",           "run dynamics=nosuchmodel out={out}",             "unknown dynamics model 'nosuchmodel'"),
    C("unknown_hparam",          "run dynamics.hparams.nosuch=1 out={out}",        "unknown hparam(s) ['nosuch']"),
    C("unknown_policy",          "collect data.policy=bogus out={out}",            "unknown policy 'bogus'; known: "),
    C("unknown_accelerator",     "run dynamics.accelerator=tpu out={out}",         "dynamics.accelerator must be one of"),
    C("unknown_wandb_mode",      "run wandb.mode=loud out={out}",                  "wandb.mode must be offline, online or disabled"),
    C("held_out_family",         "collect world.families=[scatter,moat] out={out}", "includes the held-out family ['moat']"),
    # -- sizes <= 0 and out-of-range numbers ----------------------------------------------------------------
    C("negative_episodes",       "collect episodes=-3 out={out}",                  "data.episodes must be a positive integer, got -3"),
    C("zero_episodes",           "collect episodes=0 out={out}",                   "data.episodes must be a positive integer, got 0"),
    C("zero_num_envs",           "collect data.num_envs=0 out={out}",              "data.num_envs must be a positive integer"),
    C("zero_batch_size",         "run dynamics.batch_size=0 out={out}",            "dynamics.batch_size must be a positive integer"),
    C("negative_max_steps",      "run dynamics.max_steps=-1 out={out}",            "dynamics.max_steps must be a positive integer"),
    C("zero_lr",                 "run dynamics.lr=0 out={out}",                    "dynamics.lr must be positive"),
    C("nan_lr",                  "run dynamics.lr=nan out={out}",                  "dynamics.lr must be positive and finite, got nan"),
    C("infinite_grad_clip",      "run dynamics.grad_clip=.inf out={out}",          "dynamics.grad_clip must be a positive number, got inf"),
    # -- model hyperparameters of the wrong type (each once raised a TypeError deep inside torch, or was accepted) ---
    C("hparam_float_for_int",    "run dynamics.hparams.deter=1.5 out={out}",       "dynamics.hparams: deter must be an integer, got 1.5 (float)"),
    C("hparam_bool_for_int",     "run dynamics.hparams.deter=true out={out}",      "dynamics.hparams: deter must be an integer, got True (bool)"),
    C("hparam_list_for_int",     "run dynamics.hparams.deter=[1,2] out={out}",     "dynamics.hparams: deter must be an integer, got [1, 2] (list)"),
    C("hparam_nan_float",        "run dynamics.hparams.free_bits=.nan out={out}",  "dynamics.hparams: free_bits must be a finite number"),
    C("gru_hparam_float_for_int", "run dynamics=gru dynamics.hparams.hidden=2.5 out={out}", "hidden must be an integer, got 2.5 (float)"),
    C("spr_hparam_bool_for_int", "run dynamics=spr dynamics.hparams.embed=true out={out}", "embed must be an integer, got True (bool)"),
    C("spr_hparam_str_for_float", "run dynamics=spr dynamics.hparams.ema=high out={out}", "ema must be a finite number, got 'high' (str)"),
    C("zero_threads",            "run threads=0 out={out}",                        "threads must be a positive integer"),
    C("zero_probe_bootstrap",    "run probes.n_boot=0 out={out}",                  "probes.n_boot must be a positive integer"),
    C("zero_horizon",            "run plan.horizon=0 out={out}",                   "plan.horizon must be a positive integer"),
    C("zero_discount",           "run plan.discount=0 out={out}",                  "plan.discount must lie in (0, 1]"),
    C("epsilon_above_one",       "collect data.epsilon=2 out={out}",               "data.epsilon must lie in [0, 1]"),
    C("split_fractions_sum",     "collect data.split_fractions=[0.5,0.2] out={out}", "data.split_fractions must be three"),
    C("world_params_not_mapping", "collect world.params=5 out={out}",             "'world.params' must be a mapping"),
    C("negative_seed",           "collect seed=-1 out={out}",                      "seed must be an integer in [0, 4294967295]"),
    C("seed_too_large",          "run seed=4294967296 out={out}",                  "seed must be an integer in [0, 4294967295]"),
    C("nan_min_base_rate",       "collect data.min_base_rate=.nan out={out}",      "data.min_base_rate must lie in [0, 0.5)"),
    C("nan_cost_limit",          "run plan.cost_limit=.nan out={out}",             "plan.cost_limit must be a number >= 0"),
    C("empty_out",               "collect episodes=2 out=",                        "out must name a folder"),
    # -- output paths ---------------------------------------------------------------------------------------
    C("collect_out_is_a_file",   "collect episodes=2 out={file}",                  "is a file; give a folder"),
    C("train_out_is_a_file",     "train data={data} out={file}",                   "is a file; give a folder"),
    C("run_out_is_a_file",       "run out={file}",                                 "is a file; give a folder"),
    C("run_folder_other_config", "run seed=7 out={run}",                           "holds a run with a different config"),
    # -- datasets ---------------------------------------------------------------------------------------------
    C("dataset_does_not_exist",  "train data={tmp}/nonexistent out={out}",         "the path does not exist"),
    C("dataset_no_manifest",     "train data={no_manifest} out={out}",             "manifest.json is missing"),
    C("dataset_flipped_byte",    "train data={flipped_byte} out={out}",            "sha256 checksum mismatch"),
    C("dataset_truncated_shard", "train data={truncated} out={out}",               "is truncated"),
    C("dataset_wrong_shape",     "train data={wrong_shape} out={out}",             "the manifest says"),
    C("dataset_wrong_dtype",     "train data={wrong_dtype} out={out}",             "the manifest says"),
    C("dataset_pickled_shard",   "train data={object_shard} out={out}",            "only plain C-ordered arrays are allowed"),
    C("dataset_nan_observations", "train data={nan_obs} out={out}",                "non-finite observation values"),
    C("run_on_damaged_dataset",  "run data={flipped_byte} out={out}",              "sha256 checksum mismatch"),
    # -- checkpoints ------------------------------------------------------------------------------------------
    C("resume_from_other_model", "train data={data} out={other_model_run} dynamics=gru dynamics.resume=true "
                                 "dynamics.hparams.deter=8 dynamics.hparams.hidden=8 dynamics.hparams.embed=8", "holds a 'rssm' model"),
    C("resume_from_corrupt",     "train data={data} out={corrupt_run} dynamics.resume=true",  "no valid checkpoint to resume from"),
    # a finished run folder (made by `ontolab train`): a refused train leaves its config.yaml and run.json as they were
    C("train_into_finished_run", "train data={data} out={finished_run} seed=77 dynamics.lr=0.5",
                                 "already holds checkpoints of a run; continue that run with resume=True (command line: resume=true)"),
    C("resume_other_batch_size", "train data={data} out={finished_run} resume=true dynamics.batch_size=5 dynamics.window=4 " + TINY,
                                 "the data settings changed (batch_size: checkpoint 2, now 5)"),
    C("resume_on_a_missing_gpu", "train data={data} out={finished_run} resume=true dynamics.accelerator=gpu "
                                 "dynamics.batch_size=2 dynamics.window=4 " + TINY, "Lightning cannot train with accelerator='gpu'"),
    C("unknown_strategy",        "train data={data} out={out} dynamics.strategy=bogus", "strategy='bogus'"),
    # -- reward expressions -------------------------------------------------------------------------------------
    C("reward_unknown_concept",  "run plan.reward=-in_lava-nosuchconcept out={out}", "nosuchconcept"),
    C("reward_syntax_error",     "run plan.reward=-in_lava+*2 out={out}",          "plan: "),
    C("reward_python_code",      """run "plan.reward=__import__('os').system('x')" out={out}""", "plan: "),
    C("constraint_syntax_error", "run plan.reward=-in_lava plan.constraints=[never(] out={out}", "plan: "),
    C("constraint_unknown_concept", "run plan.reward=-in_lava plan.constraints=[never_x] out={out}", "never_x"),
    # -- probes and planners -------------------------------------------------------------------------------------
    C("probe_site_model_lacks",  "run probes.sites=[nosuch] out={out}",            "has no site(s) ['nosuch']; its sites are: "),
    C("probe_unknown_concept",   "run probes.concepts=[nokey] out={out}",          "unknown concept(s) ['nokey']"),
    C("probe_unknown_method",    "run probes.methods=[magic] out={out}",           "unknown method(s) ['magic']"),
    C("probe_no_method",         "run probes.methods=[] out={out}",                "unknown method(s) (none)"),
    C("unknown_planner",         "run plan.planners=[magic] out={out}",            "unknown planner(s) ['magic']"),
    C("no_planner",              "run plan.planners=[] out={out}",                 "unknown planner(s) (none)"),
    # -- model-checking properties (the `verify` section) ----------------------------------------------------------
    C("property_syntax_error",   """run "verify.properties=['P=? [F<=15']" out={out}""", "verify: properties must look like"),
    C("property_not_pctl",       """run "verify.properties=['Q=? [F \\"lava\\"]']" out={out}""", "verify: properties must look like"),
    C("property_unknown_label",  """run "verify.properties=['P=? [F \\"nosuch\\"]']" "verify.labels={in_lava: lava}" out={out}""", "unknown label(s) ['nosuch']"),
    C("property_unknown_concept", """run "verify.properties=['P=? [F \\"lava\\"]']" "verify.labels={nosuch: lava}" out={out}""", "verify.concepts: unknown concept(s) ['nosuch']"),
    C("verify_zero_horizon",     "run verify.horizon=0 out={out}",                 "verify.horizon must be a positive integer"),
    C("verify_unknown_policy",   "run verify.policies=[bogus] out={out}",          "verify.policies: unknown policy ['bogus']"),
    C("verify_confidence_above_one", "run verify.confidence=1.5 out={out}",        "verify.confidence must lie in (0, 1)"),
]
# fmt: on


# -- prepared inputs --------------------------------------------------------------------------------------
TINY_RSSM = TINY.split()


def _ok(argv: list[str]) -> None:
    assert cli.main(argv) == 0, argv


def _shard(root: Path, field: str) -> Path:
    return root / "shard_00000" / f"{field}.npy"


def _damaged(base: Path, dst: Path, damage: Callable[[Path], None]) -> Path:
    shutil.copytree(base, dst)
    damage(dst)
    return dst


def _flip(p: Path) -> None:
    data = bytearray(p.read_bytes())
    data[-3] ^= 0x01
    p.write_bytes(bytes(data))


def _save_keeping_manifest_hash(root: Path, field: str, arr: np.ndarray) -> None:
    """Replace a shard file and record its new sha256, as a dataset written by a buggy tool would be."""
    np.save(_shard(root, field), arr, allow_pickle=True)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["shards"][0]["files"][field]["sha256"] = hashlib.sha256(_shard(root, field).read_bytes()).hexdigest()
    (root / "manifest.json").write_text(json.dumps(manifest))


def _nan_obs(root: Path) -> None:
    obs = np.load(_shard(root, "obs"), allow_pickle=False).copy()
    obs[1, 0] = np.nan
    _save_keeping_manifest_hash(root, "obs", obs)


def _object_shard(root: Path) -> None:
    reward = np.load(_shard(root, "reward"), allow_pickle=False)
    _save_keeping_manifest_hash(root, "reward", np.array([object()] * len(reward), dtype=object))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """Valid and damaged datasets, run folders and config files, built once (rows copy nothing they change)."""
    from dynamics.training import fit_dynamics
    from worlds.dataset import TrajectoryDataset

    root = tmp_path_factory.mktemp("inputs")
    grid = root / "grid"  # lavakeydoor: uint8 observations
    _ok(["collect", "episodes=30", "data.ood_episodes=0", "data.num_envs=2", "data.shard_steps=40", f"out={grid}"])
    point = root / "point"  # pointmass: float32 observations
    _ok(["collect", "world=pointmass", "episodes=4", "data.ood_episodes=0", "data.num_envs=2", f"out={point}"])
    got = {"data": grid}
    for name, base, damage in [
        ("no_manifest", grid, lambda r: (r / "manifest.json").unlink()),
        ("flipped_byte", grid, lambda r: _flip(_shard(r, "obs"))),
        ("truncated", grid, lambda r: _shard(r, "reward").write_bytes(_shard(r, "reward").read_bytes()[:-7])),
        ("wrong_shape", grid, lambda r: np.save(_shard(r, "reward"), np.zeros(3, np.float32))),
        ("wrong_dtype", grid, lambda r: np.save(_shard(r, "is_first"), np.zeros(len(np.load(_shard(r, "is_first"))), np.int64))),
        ("object_shard", grid, _object_shard),
        ("nan_obs", point, _nan_obs),
    ]:
        got[name] = _damaged(base, root / name, damage)
    # a run folder trained with another model (rssm), and one whose checkpoints are all corrupt
    from experiments.schema import resolve
    from experiments.stages.train import build_for_dataset

    cfg = resolve(["dynamics.max_steps=2", *TINY_RSSM])
    with TrajectoryDataset.open(grid) as ds:
        torch.manual_seed(0)
        fit_dynamics(build_for_dataset(cfg, ds), ds, root / "other_model_run", max_steps=2, val_every=2, batch_size=2,
                     window=4, logger="none", progress_bar=False)
    got["other_model_run"] = root / "other_model_run"
    got["finished_run"] = root / "finished_run"  # through the command line: it holds config.yaml and run.json
    _ok(["train", f"data={grid}", f"out={got['finished_run']}", "dynamics.max_steps=2", "dynamics.val_every=2",
         "dynamics.batch_size=2", "dynamics.window=4", "dynamics.snapshots=[]", "wandb.mode=disabled", *TINY_RSSM])
    assert {"config.yaml", "run.json"} <= {p.name for p in got["finished_run"].iterdir()}
    lib = root / "lib"  # checkpoints for the library rows: no sidecar, a sidecar that is valid JSON but no object
    for name, sidecar in (("no_sidecar", None), ("list_sidecar", "[1, 2]\n")):
        (lib / name / "checkpoints").mkdir(parents=True)
        shutil.copy(got["other_model_run"] / "checkpoints" / "last.ckpt", lib / name / "checkpoints" / "last.ckpt")
        if sidecar is not None:
            (lib / name / "checkpoints" / "last.ckpt.sha256.json").write_text(sidecar)
        got[name] = lib / name
    got["corrupt_run"] = _damaged(got["other_model_run"], root / "corrupt_run", lambda r: [
        p.write_bytes(p.read_bytes()[:50]) for p in (r / "checkpoints").glob("*.ckpt")])
    for name, text in [("bad_yaml", "data: {episodes: [1\n"), ("list_yaml", "- 1\n- 2\n"),
                       ("unknown_key_yaml", "data:\n  episodez: 3\n"), ("wrong_type_yaml", "data:\n  episodes: lots\n"),
                       ("python_tag_yaml", f"seed: !!python/object/apply:os.system ['touch {root}/pwned']\n")]:
        got[name] = root / f"{name}.yaml"
        got[name].write_text(text)
    return got


@pytest.fixture
def place(tmp_path, inputs) -> dict[str, str]:
    """Per row: a folder with existing outputs to keep (a run folder, a file) and where the inputs are."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("seed: 0\n")
    (run / "summary.json").write_text('{"kept": true}\n')
    file = tmp_path / "a_file"
    file.write_text("keep me")
    return {"tmp": str(tmp_path), "out": str(tmp_path / "out"), "run": str(run), "file": str(file),
            **{k: str(v) for k, v in inputs.items()}}


def tree_hash(*roots: Path) -> str:
    """sha256 over every path, file content and symlink target under ``roots`` (what "untouched" means)."""
    h = hashlib.sha256()
    for root in roots:
        for p in sorted([root, *root.rglob("*")]) if root.exists() else []:
            h.update(str(p).encode())
            if p.is_symlink():
                h.update(os.readlink(p).encode())
            elif p.is_file():
                h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture
def tripwires(monkeypatch):
    """Work that must never start for a refused input fails the row instead of running."""
    import pytorch_lightning

    import experiments.pipeline
    import experiments.stages.collect

    def started(*args, **kwargs):
        raise AssertionError("the input was accepted and work started")

    monkeypatch.setattr(experiments.stages.collect, "collect", started)
    # fit_dynamics itself runs: its checks (checkpoint folder, data settings, Trainer settings) are what a train
    # row tests; training is the tripwire, and anything written before it shows in the tree hash
    monkeypatch.setattr(pytorch_lightning.Trainer, "fit", started)
    monkeypatch.setattr(experiments.pipeline, "run_stage", started)
    monkeypatch.setenv("ONTOLAB_DEBUG", "")


def _argv(case: Case, place: dict[str, str]) -> list[str]:
    """The row's arguments with ``{name}`` replaced by the prepared paths (other braces are left alone)."""
    return [re.sub(r"\{(\w+)\}", lambda m: place.get(m.group(1), m.group(0)), a) for a in case.args]


def assert_one_line(err: str, needle: str) -> None:
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("ontolab: error: ") and needle in lines[0], lines[0]


def _marks(case: Case) -> list:
    marks = [pytest.mark.xfail(strict=True, reason=case.known_bug)] if case.known_bug else []
    if "dynamics.accelerator=gpu" in case.args and torch.cuda.is_available():
        marks.append(pytest.mark.skip(reason="this machine has a GPU: the row needs one without"))
    return marks


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=_marks(c)) for c in CASES])
def test_bad_input_is_refused_in_one_line_and_touches_nothing(case, place, inputs, tripwires, capsys):
    before = tree_hash(Path(place["tmp"]), inputs["data"].parent)
    code = cli.main(_argv(case, place))
    out, err = capsys.readouterr()
    assert code == 2, (code, out, err)
    assert_one_line(err, case.needle)
    assert tree_hash(Path(place["tmp"]), inputs["data"].parent) == before, "an output was touched"
    assert not (inputs["data"].parent / "pwned").exists()


def test_the_table_has_at_least_35_distinct_cases():
    assert len({c.id for c in CASES}) == len(CASES) >= 35
    assert len({c.args for c in CASES}) == len(CASES)


SUBPROCESS_SAMPLE = ["unknown_command", "malformed_yaml", "dataset_flipped_byte", "reward_syntax_error",
                     "resume_other_batch_size"]
"""One row of each kind of failure path (argparse, config file, dataset check, reward parser, a train refused
inside fit_dynamics -- where Lightning's own log lines, which bypass pytest's capture, would break the one
line): each process pays the imports (~5 s here), so the console script runs a sample; ``cli.main`` runs every row."""


@pytest.mark.parametrize("case_id", SUBPROCESS_SAMPLE)
def test_no_traceback_through_the_console_script(case_id, place, inputs):
    case = next(c for c in CASES if c.id == case_id)
    before = tree_hash(Path(place["tmp"]), inputs["data"].parent)
    env = dict(os.environ, WANDB_MODE="offline", ONTOLAB_DEBUG="")
    r = subprocess.run([ONTOLAB, *_argv(case, place)], cwd=place["tmp"], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert_one_line(r.stderr, case.needle)
    assert tree_hash(Path(place["tmp"]), inputs["data"].parent) == before


# -- inputs only the library takes -------------------------------------------------------------------------
def _probe_fit(x: torch.Tensor, y: torch.Tensor) -> None:
    from probes.linear import LinearFitter
    from worlds.concepts import Concept

    LinearFitter(Concept("c", "binary", "c")).fit(x, y)


def _reward_check(expr: str) -> None:
    from rewards import RewardSpec
    from worlds.concepts import Concept, ConceptSchema

    RewardSpec(expr).check(ConceptSchema((Concept("has_key", "binary", "k"),)))


def _load_model(run: Path, expected: str) -> None:
    from dynamics.training import load_model

    load_model(run / "checkpoints" / "last.ckpt", expected_model=expected)


def _load_rebuilt(run: Path, **changed) -> None:
    """Load ``run``'s last checkpoint into the model its hparams describe, with ``changed`` hparams."""
    from dynamics.registry import build_model
    from dynamics.training import load_model

    load_model(run / "checkpoints" / "last.ckpt",
               build=lambda name, obs, act, hp: build_model(name, obs, act, **{**hp, **changed}))


def _probe_load(path: Path) -> None:
    from probes.base import Probe

    Probe.load(path)


LIBRARY = {  # id: (inputs -> call, a piece of the one-line message)
    "labels_and_latents_of_different_lengths": (lambda i: _probe_fit(torch.randn(10, 3), torch.arange(9) % 2), "labels"),
    "nan_latents": (lambda i: _probe_fit(torch.full((4, 3), float("nan")), torch.tensor([0, 1, 0, 1])), "finite"),
    "reward_unknown_concept": (lambda i: _reward_check("has_key + nosuch"), "nosuch"),
    "reward_syntax_error": (lambda i: _reward_check("has_key +"), "has_key +"),
    "checkpoint_from_another_model": (lambda i: _load_model(i["other_model_run"], "gru"), "holds a 'rssm' model, expected 'gru'"),
    "corrupt_checkpoint": (lambda i: _load_model(i["corrupt_run"], "rssm"), "is corrupt"),
    "checkpoint_without_sidecar": (lambda i: _load_model(i["no_sidecar"], "rssm"),
                                   "has no sidecar last.ckpt.sha256.json, so it cannot be verified"),
    "checkpoint_without_sidecar_names_the_fix": (lambda i: _load_model(i["no_sidecar"], "rssm"),
                                                 "copy last.ckpt.sha256.json with it"),
    "checkpoint_sidecar_not_an_object": (lambda i: _load_model(i["list_sidecar"], "rssm"), "holds a JSON list, expected an object"),
    "checkpoint_of_another_configuration": (lambda i: _load_rebuilt(i["other_model_run"], recon_balance=0.0),
                                            "unexpected keys: balance.counts"),
    "checkpoint_of_another_configuration_says_retrain": (lambda i: _load_rebuilt(i["other_model_run"], deter=8),
                                                         "written by a different model version or configuration: retrain"),
    "probe_file_that_is_a_dataset_shard": (lambda i: _probe_load(_shard(i["data"], "obs")), "not an ontolab probe file"),
}


@pytest.mark.parametrize("case_id", sorted(LIBRARY))
def test_library_refuses_bad_input_in_one_line(case_id, inputs):
    call, needle = LIBRARY[case_id]
    with pytest.raises(OntolabError) as e:
        call(inputs)
    assert "\n" not in str(e.value) and needle in str(e.value), str(e.value)
