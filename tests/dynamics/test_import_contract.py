"""dynamics/ imports nothing from the later stages (probes, rewards, planning, experiments).

Two independent checks: an AST scan of every module under dynamics/ (imports inside functions and
relative imports included), and import-linter's layers contract from pyproject.toml.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {"probes", "rewards", "planning", "experiments"}


def imported_top_level(path: Path) -> set[str]:
    """Top-level package of every absolute import in ``path``; relative imports resolve inside dynamics."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            found.add("dynamics" if node.level else (node.module or "").split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) in (
                "import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
            found.add(str(node.args[0].value).split(".")[0])
    return found


def test_dynamics_modules_import_no_later_stage():
    files = sorted((ROOT / "dynamics").rglob("*.py"))
    assert len(files) >= 8, f"expected the dynamics modules under {ROOT / 'dynamics'}, found {files}"
    offenders = {str(p.relative_to(ROOT)): sorted(imported_top_level(p) & FORBIDDEN) for p in files}
    assert not {k: v for k, v in offenders.items() if v}, offenders


def test_scan_catches_hidden_imports(tmp_path):
    bad = tmp_path / "m.py"
    bad.write_text("import os\ndef f():\n    from planning.cem import plan\n"
                   "    import importlib\n    return importlib.import_module('rewards.latent')\n")
    assert imported_top_level(bad) >= {"planning", "rewards"}


def test_import_linter_contract():
    exe = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    if not Path(exe).exists():
        pytest.skip("import-linter is not installed (it is in the `test` extra)")
    result = subprocess.run([exe, "--config", str(ROOT / "pyproject.toml")], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
