"""No untrusted file is unpickled, no text is evaluated as Python, config files are read safely.

* A static scan (``ast``) of every package: no ``pickle``/``marshal``/``dill``/``joblib`` loads, no
  ``torch.load`` without ``weights_only=True``, no ``allow_pickle=True``, no ``eval``/``exec``, no
  ``yaml.load`` without the safe loader, and no loading call inside an ``except`` block (a fallback
  to unsafe loading on error). A control shows the scanner flags each pattern.
* A malicious pickle -- an object whose ``__reduce__`` would create a marker file -- is fed to every
  load path: checkpoint read / ``load_model`` / resume through ``ontolab train``, probe and ontology
  load, dataset open (as a shard and as the manifest), the latent store. Each refuses with one line
  and the marker never appears.
* Paths read from artifacts that are meant to stay inside their folder (dataset manifest entries,
  ontology index entries) cannot escape it. No *config* path is meant to stay inside the run
  folder: ``out``, ``cache_dir`` and ``data.path`` are the user's own choices of location, and the
  run folder's entries (stage links, ``config.yaml``, ``summary.json``) have fixed names.
* torch is recent enough for ``weights_only=True`` to be a safe loader (CVE-2025-32434).
"""

from __future__ import annotations

import ast
import hashlib
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from experiments import cli
from experiments.config import ConfigError, load_yaml
from worlds.errors import OntolabError

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("worlds", "dynamics", "probes", "rewards", "planning", "experiments")


# -- static scan --------------------------------------------------------------------------------------------
UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "marshal", "joblib", "shelve", "cloudpickle"}
LOADERS = {"load", "loads", "load_all", "unsafe_load", "full_load", "open", "Unpickler"}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return "?"


def _kw(call: ast.Call, name: str) -> ast.AST | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_true(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def unsafe_calls(source: str, filename: str = "<src>") -> list[str]:
    """Every unsafe loading or evaluating call in ``source``, as ``file:line: what``."""
    found: list[str] = []
    tree = ast.parse(source, filename)
    in_except: set[int] = set()
    for handler in ast.walk(tree):
        if isinstance(handler, ast.ExceptHandler):
            in_except |= {id(n) for stmt in handler.body for n in ast.walk(stmt)}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name, where = _dotted(node.func), f"{filename}:{node.lineno}"
        head, _, tail = name.rpartition(".")
        if name in ("eval", "exec", "__import__"):
            found.append(f"{where}: {name}()")
        if head.split(".")[-1] in UNSAFE_MODULES and tail in LOADERS:
            found.append(f"{where}: {name}() unpickles")
        if name.endswith("torch.load") or name == "load" and head == "":
            if not _is_true(_kw(node, "weights_only")):
                found.append(f"{where}: torch.load without weights_only=True")
        if _is_true(_kw(node, "allow_pickle")):
            found.append(f"{where}: allow_pickle=True")
        if name.endswith("yaml.load") or name.endswith("yaml.load_all"):
            loader = _dotted(_kw(node, "Loader")) if _kw(node, "Loader") is not None else ""
            if not loader.endswith("SafeLoader") and not loader.endswith("CSafeLoader"):
                found.append(f"{where}: {name} without SafeLoader")
        if name.endswith(("yaml.unsafe_load", "yaml.full_load", "yaml.unsafe_load_all", "yaml.full_load_all")):
            found.append(f"{where}: {name}")
        if id(node) in in_except and tail in ("load", "loads", "safe_open", "read_checkpoint") and name != "json.loads":
            found.append(f"{where}: {name}() inside an except block (a fallback loader)")
    return found


def test_no_package_unpickles_or_evaluates():
    files = [p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))]
    assert len(files) > 50
    found = [f for p in files for f in unsafe_calls(p.read_text(), str(p.relative_to(REPO)))]
    assert not found, "\n".join(found)


@pytest.mark.parametrize("source", [
    "import pickle\npickle.load(f)", "import pickle\nx = pickle.loads(b)", "import marshal\nmarshal.loads(b)",
    "torch.load(p)", "torch.load(p, weights_only=False)", "np.load(p, allow_pickle=True)", "eval('1')",
    "exec('x = 1')", "yaml.load(s)", "yaml.load(s, Loader=yaml.Loader)", "yaml.unsafe_load(s)",
    "try:\n    x = safe(p)\nexcept ValueError:\n    x = np.load(p)",
])
def test_the_scan_flags_each_unsafe_pattern(source):
    assert unsafe_calls(source), source


def test_the_scan_accepts_the_safe_forms():
    ok = ("torch.load(p, weights_only=True)\nnp.load(p, allow_pickle=False)\nyaml.safe_load(s)\n"
          "yaml.load(s, Loader=yaml.SafeLoader)\ntry:\n    x = json.loads(s)\nexcept ValueError:\n    x = json.loads('{}')")
    assert unsafe_calls(ok) == []


def test_torch_has_the_weights_only_fixes():
    major, minor = (int(v) for v in torch.__version__.split("+")[0].split(".")[:2])
    assert (major, minor) >= (2, 10), f"torch {torch.__version__}: weights_only was bypassable before 2.6 (CVE-2025-32434)"


# -- a malicious pickle fed to every load path ----------------------------------------------------------------
class Evil:
    """Unpickling this creates ``marker`` (it stands in for running any code)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def marker(tmp_path) -> Path:
    m = tmp_path / "PWNED"
    yield m
    assert not m.exists(), "the malicious pickle was executed"


def _evil_torch_file(path: Path, marker: Path, with_sidecar: bool = True) -> Path:
    """A torch-format checkpoint holding the payload, with a sidecar vouching for its hash (the attacker wrote both)."""
    from dynamics.training.checkpoint import sidecar_path

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"global_step": 3, "state_dict": {}, "evil": Evil(marker)}, path)
    if with_sidecar:
        sidecar_path(path).write_text(json.dumps({"sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                                                  "global_step": 3}))
    return path


def test_checkpoint_read_and_load_model_refuse_a_pickle(tmp_path, marker):
    from dynamics.training import CheckpointError, load_model
    from dynamics.training.checkpoint import read_checkpoint

    path = _evil_torch_file(tmp_path / "last.ckpt", marker)
    for load in (read_checkpoint, load_model):
        with pytest.raises(CheckpointError, match="cannot be loaded with weights_only=True") as e:
            load(path)
        assert str(path) in str(e.value) and "\n" not in str(e.value)
    raw = tmp_path / "raw.ckpt"  # a plain pickle file, not a torch zip
    raw.write_bytes(pickle.dumps(Evil(marker)))
    from dynamics.training.checkpoint import sidecar_path
    sidecar_path(raw).write_text(json.dumps({"sha256": hashlib.sha256(raw.read_bytes()).hexdigest()}))
    with pytest.raises(CheckpointError):
        read_checkpoint(raw)


def _collect(out: Path, *extra: str) -> Path:
    assert cli.main(["collect", "episodes=30", "data.ood_episodes=0", "data.num_envs=2", "data.shard_steps=40",
                     f"out={out}", *extra]) == 0
    return out


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return _collect(tmp_path_factory.mktemp("data") / "ds")


def test_resume_through_the_command_line_refuses_a_pickle(tmp_path, dataset, marker, capsys):
    _evil_torch_file(tmp_path / "run" / "checkpoints" / "last.ckpt", marker)
    code = cli.main(["train", f"data={dataset}", f"out={tmp_path / 'run'}", "dynamics.resume=true",
                     "dynamics.max_steps=2", "wandb.mode=disabled"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot be loaded with weights_only=True" in err and len(err.strip().splitlines()) == 1, err


def test_probe_and_ontology_load_refuse_a_pickle(tmp_path, marker):
    from probes.base import Probe, ProbeError
    from probes.ontology import INDEX, Ontology

    raw = tmp_path / "probe.safetensors"
    raw.write_bytes(pickle.dumps(Evil(marker)))
    torch_file = _evil_torch_file(tmp_path / "probe2.safetensors", marker, with_sidecar=False)
    for path in (raw, torch_file):
        with pytest.raises(ProbeError, match="is not an ontolab probe file"):
            Probe.load(path)
    onto = tmp_path / "ontology"
    (onto / "probes").mkdir(parents=True)
    shutil.copy(raw, onto / "probes" / "has_key.safetensors")
    (onto / INDEX).write_text(json.dumps({"format": 1, "entries": [
        {"concept": "has_key", "method": "linear", "site": "deter", "site_shape": [4], "val_metric": "balanced_accuracy",
         "val_score": 1.0, "rule": "x", "probe": "probes/has_key.safetensors"}]}))
    with pytest.raises(ProbeError, match="is not an ontolab probe file"):
        Ontology.load(onto)
    (onto / INDEX).write_bytes(pickle.dumps(Evil(marker)))
    with pytest.raises(ProbeError, match="is not valid JSON"):
        Ontology.load(onto)


def _replace_shard(root: Path, field: str, arr: np.ndarray) -> None:
    """Put ``arr`` (pickled if it holds objects) in shard 0 and re-record its hash, as an attacker would."""
    f = root / "shard_00000" / f"{field}.npy"
    np.save(f, arr, allow_pickle=True)
    m = json.loads((root / "manifest.json").read_text())
    m["shards"][0]["files"][field]["sha256"] = hashlib.sha256(f.read_bytes()).hexdigest()
    (root / "manifest.json").write_text(json.dumps(m))


def test_dataset_open_refuses_a_pickle(tmp_path, dataset, marker):
    from worlds.dataset import DatasetError, TrajectoryDataset

    ds = shutil.copytree(dataset, tmp_path / "ds")
    n = len(np.load(ds / "shard_00000" / "reward.npy"))
    _replace_shard(ds, "reward", np.array([Evil(marker)] * n, dtype=object))
    with pytest.raises(DatasetError, match="only plain C-ordered arrays are allowed"):
        TrajectoryDataset.open(ds)
    (ds / "manifest.json").write_bytes(pickle.dumps(Evil(marker)))
    with pytest.raises(DatasetError, match="is not valid JSON"):
        TrajectoryDataset.open(ds)


def test_latent_store_refuses_a_pickle(tmp_path, marker):
    from probes.base import ProbeError
    from probes.extract import LatentStore
    from worlds.concepts import Concept, ConceptSchema

    schema = ConceptSchema((Concept("has_key", "binary", "k"),))
    n = 6
    store = LatentStore.from_arrays(tmp_path / "store", schema=schema, sites={"test": {"deter": np.zeros((n, 4), np.float32)}},
                                    concepts={"test": {"has_key": np.zeros(n, np.uint8)}},
                                    episodes={"test": np.arange(n)})
    assert store.site("test", "deter").shape == (n, 4)
    np.save(tmp_path / "store" / "test" / "deter.npy", np.array([Evil(marker)] * n, dtype=object), allow_pickle=True)
    with pytest.raises(ProbeError, match="missing or unreadable"):
        LatentStore.open(tmp_path / "store")
    (tmp_path / "store" / "manifest.json").write_bytes(pickle.dumps(Evil(marker)))
    with pytest.raises(ProbeError, match="is not valid JSON"):
        LatentStore.open(tmp_path / "store")


# -- safe YAML and paths that must stay inside their folder ------------------------------------------------
def test_yaml_is_loaded_safely(tmp_path):  # moved from tests/experiments/test_config.py
    evil = tmp_path / "evil.yaml"
    evil.write_text(f"seed: !!python/object/apply:os.system ['touch {tmp_path / 'pwned'}']\n")
    with pytest.raises(ConfigError):
        load_yaml(evil)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("escape", ["../outside.npy", "/etc/hostname"])
def test_dataset_manifest_paths_cannot_leave_the_dataset(tmp_path, dataset, escape):
    from worlds.dataset import DatasetError, TrajectoryDataset

    ds = shutil.copytree(dataset, tmp_path / "ds")
    shutil.copy(ds / "shard_00000" / "reward.npy", tmp_path / "outside.npy")
    m = json.loads((ds / "manifest.json").read_text())
    m["shards"][0]["files"]["reward"]["path"] = escape
    (ds / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DatasetError, match="is not a path inside the dataset folder"):
        TrajectoryDataset.open(ds)


def test_ontology_index_paths_cannot_leave_the_ontology(tmp_path):
    from probes.base import ProbeError
    from probes.ontology import INDEX, Ontology

    (tmp_path / "onto").mkdir()
    (tmp_path / "onto" / INDEX).write_text(json.dumps({"format": 1, "entries": [
        {"concept": "c", "method": "linear", "site": "deter", "site_shape": [4], "val_metric": "r2", "val_score": 1.0,
         "rule": "x", "probe": "../elsewhere.safetensors"}]}))
    with pytest.raises(ProbeError, match="outside"):
        Ontology.load(tmp_path / "onto")


def test_no_config_path_is_confined_to_the_run_folder():
    """Guard for the claim in the module docstring: the only path-valued config keys are user-chosen locations."""
    import dataclasses

    from experiments.schema import RunConfig

    def path_keys(cls, prefix=""):
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(f.type if not isinstance(f.type, str) else None):
                yield from path_keys(f.type, f"{prefix}{f.name}.")
            elif f.name in ("path", "dir", "out", "file") or f.name.endswith(("_path", "_dir", "_file")):
                yield prefix + f.name

    cfg = RunConfig()
    nested = {f.name: type(getattr(cfg, f.name)) for f in dataclasses.fields(RunConfig)
              if dataclasses.is_dataclass(getattr(cfg, f.name))}
    keys = {k for k in path_keys(RunConfig)} | {f"{s}.{k}" for s, cls in nested.items() for k in path_keys(cls)}
    assert keys <= {"out", "cache_dir", "data.path"}, f"new path-valued config keys: check whether they must stay inside the run folder: {keys}"


def test_bad_loads_are_ontolab_errors():
    """Every refusal above is an OntolabError, so `ontolab` prints it as one line (exit 2)."""
    from dynamics.training import CheckpointError
    from probes.base import ProbeError
    from worlds.dataset import DatasetError

    assert all(issubclass(e, OntolabError) for e in (CheckpointError, ProbeError, DatasetError, ConfigError))
