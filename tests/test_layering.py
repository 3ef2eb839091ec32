"""Data flows one way: worlds <- dynamics <- probes <- rewards <- planning <- experiments.

Two independent checks: an AST scan of every module (catches imports inside functions too) and
import-linter's layers contract from pyproject.toml.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ["worlds", "dynamics", "probes", "rewards", "planning", "experiments"]


def _imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", LAYERS)
def test_no_package_imports_a_later_stage(package):
    later = set(LAYERS[LAYERS.index(package) + 1:])
    offenders = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        bad = _imported_packages(path) & later
        if bad:
            offenders[str(path.relative_to(ROOT))] = sorted(bad)
    assert not offenders, f"{package}/ imports later stages: {offenders}"


def test_scan_would_catch_a_violation(tmp_path):
    bad = tmp_path / "m.py"
    bad.write_text("def f():\n    from probes.linear import X\n")
    assert "probes" in _imported_packages(bad)


def test_import_linter_contract_holds():
    exe = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    if not Path(exe).exists():
        pytest.skip("import-linter is not installed (it is in the `test` extra)")
    r = subprocess.run([exe, "--config", str(ROOT / "pyproject.toml")], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


LIGHTNING = ("lightning", "pytorch_lightning", "lightning_fabric")
_LIGHTNING_PROBE = """
import importlib, json, pathlib, sys
import torch
torch.set_num_threads(1)
for name in sys.argv[1:]:  # every module of the package (pkgutil.walk_packages would import dynamics.training)
    root = pathlib.Path(importlib.import_module(name).__path__[0])
    for path in sorted(root.rglob("*.py")):
        module = ".".join((name, *path.relative_to(root).with_suffix("").parts)).removesuffix(".__init__")
        if name == "dynamics.training" or not module.startswith("dynamics.training"):  # where Lightning belongs
            importlib.import_module(module)
if "probes" in sys.argv[1:]:  # a tiny probe fit and one imagined rollout, as a probe or a planner runs them
    from dynamics.base import ActionSpec, ObsSpec
    from dynamics.registry import build_model
    from probes.linear import LinearFitter
    from worlds.concepts import Concept

    x = torch.randn(64, 3, generator=torch.Generator().manual_seed(0))
    LinearFitter(Concept("c", "binary", "c")).fit(x, (x[:, 0] > 0).long())
    model = build_model("rssm", ObsSpec((4,), "vector"), ActionSpec(True, n=3), deter=8, hidden=8, embed=8, stoch=4)
    with torch.inference_mode():
        model.imagine(model.initial(2), torch.zeros(2, 3, dtype=torch.long))
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in %r)))
""" % (LIGHTNING,)


def _lightning_modules_after(*packages: str) -> list[str]:
    import json

    r = subprocess.run([sys.executable, "-c", _LIGHTNING_PROBE, *packages], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_probes_rewards_and_planning_never_load_lightning():
    """The issue's promise: probes and planners use the plain model; only ``dynamics.training`` loads Lightning."""
    assert _lightning_modules_after("dynamics", "probes", "rewards", "planning") == []


def test_the_lightning_check_can_fail():
    assert "pytorch_lightning" in _lightning_modules_after("dynamics.training")
