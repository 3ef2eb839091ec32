"""Each package declares its public API: a sorted ``__all__`` of names that exist and are not private."""

from __future__ import annotations

import importlib

import pytest

PACKAGES = ["worlds", "dynamics", "dynamics.training", "probes", "rewards", "planning", "experiments"]


@pytest.mark.parametrize("name", PACKAGES)
def test_all_is_sorted_public_and_importable(name):
    mod = importlib.import_module(name)
    exported = getattr(mod, "__all__", None)
    if name == "experiments":  # the command line is its API
        return
    assert exported, f"{name} declares no __all__"
    assert list(exported) == sorted(exported), f"{name}.__all__ is not sorted"
    assert not [n for n in exported if n.startswith("_")]
    missing = [n for n in exported if not hasattr(mod, n)]
    assert not missing, f"{name}.__all__ names missing attributes: {missing}"


def test_importing_dynamics_does_not_load_lightning():
    import subprocess
    import sys

    code = "import sys, dynamics, probes, rewards; print('pytorch_lightning' in sys.modules or 'lightning' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"
