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
