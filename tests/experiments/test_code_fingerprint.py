"""The code fingerprint in every stage's cache key: what changes it, what does not, and that the layering keeps
the stages' keys apart."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from experiments.code_fingerprint import code_fingerprint, import_closure
from experiments.pipeline import STAGE_MODULES


def _tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


BASE = {
    "worlds/__init__.py": "",
    "worlds/grid.py": '''
        """Docstring."""
        SIZE = 9  # a comment

        def step(x):
            """Step docstring."""
            return x + 1
        ''',
    "probes/__init__.py": "from probes.linear import fit\n",
    "probes/linear.py": '''
        from worlds.grid import step
        import numpy as np

        def fit(x):
            from . import helpers
            return step(x)
        ''',
    "probes/helpers.py": "K = 1\n",
    "experiments/__init__.py": "",
    "experiments/schema.py": "import probes\n",
    "experiments/stages/__init__.py": "",
    "experiments/stages/probe.py": "from experiments.schema import x\nfrom probes import fit\n",
    "experiments/stages/collect.py": "from experiments.schema import x\nfrom worlds import grid\n",
}


def test_closure_follows_module_level_function_local_and_relative_imports(tmp_path):
    root = _tree(tmp_path, BASE)
    closure = set(import_closure("experiments.stages.probe", root))
    assert closure == {"experiments", "experiments.stages", "experiments.stages.probe", "probes", "probes.linear",
                       "probes.helpers", "worlds", "worlds.grid"}  # numpy is not ours; schema is config parsing
    assert set(import_closure("experiments.stages.collect", root)) == {
        "experiments", "experiments.stages", "experiments.stages.collect", "worlds", "worlds.grid"}
    with pytest.raises(ValueError, match="not a module of this project"):
        import_closure("experiments.stages.nope", root)


def _fingerprints(tmp_path: Path, name: str, **edits: str) -> tuple[str, str]:
    root = _tree(tmp_path / name, {**BASE, **edits})
    return code_fingerprint("experiments.stages.probe", root), code_fingerprint("experiments.stages.collect", root)


def test_comments_docstrings_and_layout_keep_the_key_code_changes_do_not(tmp_path):
    probe, collect = _fingerprints(tmp_path, "base")
    # docstrings, comments and formatting: same keys
    same = '''
        SIZE = (9)   # another comment

        def step(x):
            return x + 1
        '''
    assert _fingerprints(tmp_path, "docs", **{"worlds/grid.py": same}) == (probe, collect)
    # a change in worlds/: both stages redo (both read it)
    changed = _fingerprints(tmp_path, "worlds", **{"worlds/grid.py": "SIZE = 9\ndef step(x):\n    return x + 2\n"})
    assert changed[0] != probe and changed[1] != collect
    # a change in probes/ (reached only through a function-local relative import): the probe stage redoes, the
    # data stage keeps its key
    changed = _fingerprints(tmp_path, "probes", **{"probes/helpers.py": "K = 2\n"})
    assert changed[0] != probe and changed[1] == collect
    # config parsing is not walked into: its effect reaches a stage as the resolved config, already in the key
    assert _fingerprints(tmp_path, "schema", **{"experiments/schema.py": "import probes\nY = 3\n"}) == (probe, collect)


def test_the_real_stages_keys_follow_the_layering():
    """Each stage's key covers exactly the packages at or below it: a change in probes/ cannot invalidate the
    dataset or the trained model, and every package a stage runs is in its key."""
    packages = {stage: {name.split(".")[0] for name in import_closure(module)} for stage, module in STAGE_MODULES.items()}
    assert packages["data"] == {"worlds", "experiments"}
    assert packages["dynamics"] == {"worlds", "dynamics", "experiments"}
    assert packages["probes"] == {"worlds", "dynamics", "probes", "experiments"}
    assert packages["planning"] >= {"worlds", "dynamics", "probes", "rewards", "planning"}
    assert packages["verify"] >= packages["planning"]
    # the training code (Lightning module, checkpoints) is in the dynamics stage's key
    assert "dynamics.training.fit" in import_closure(STAGE_MODULES["dynamics"])
    assert len({code_fingerprint(m) for m in STAGE_MODULES.values()}) == len(STAGE_MODULES)


def test_stage_keys_hold_what_the_stages_read(tmp_path, monkeypatch):
    """The probe stage's key has the imagined fit's horizon (plan.horizon by default); the verify stage's key has
    the world's default recipe filled in (VERIFY_DEFAULTS is config, which the code key does not walk)."""
    import experiments.pipeline as pipeline
    from experiments.cache import StageResult
    from experiments.config import to_dict
    from experiments.schema import resolve

    class Stop(Exception):
        pass

    def keys(*overrides: str) -> dict:
        seen = {}

        def fake(cache, name, section, inputs, build, **kw):
            seen[name] = section
            if name == "verify":
                raise Stop
            return StageResult(name, tmp_path / name, f"{name}-fp", True, 0.0)

        monkeypatch.setattr(pipeline, "run_stage", fake)
        monkeypatch.setattr(pipeline, "_link", lambda *a: None)
        cfg = resolve([f"out={tmp_path / 'run' / '_'.join(overrides)}", "wandb.mode=disabled", *overrides])
        with pytest.raises(Stop):
            pipeline.run_pipeline(cfg, progress=False)
        return seen, cfg

    seen, cfg = keys()
    assert seen["probes"]["imagined_horizon"] == cfg.plan.horizon
    assert seen["verify"]["verify"] == to_dict(cfg.verify.for_world(cfg.world.name)) != to_dict(cfg.verify)
    other, _ = keys("plan.horizon=5")
    assert other["probes"]["imagined_horizon"] == 5 and other["dynamics"] == seen["dynamics"]
    fixed, _ = keys("plan.horizon=5", "probes.imagined_horizon=7")
    assert fixed["probes"]["imagined_horizon"] == 7
