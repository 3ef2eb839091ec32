"""A fingerprint of the code a stage runs: its module and everything of ours it imports, docstrings and
comments excluded.

The stage cache (:mod:`experiments.cache`) keys a stage by its config and by what it consumes. Without the
code in the key, editing a probe method and rerunning ``ontolab run`` would silently reuse the probe results
of the *old* code. With it, a change to ``probes/`` redoes the probe stage and everything downstream, but
reuses the dataset and the trained model (``worlds/`` and ``dynamics/`` do not import ``probes/``: the
layering keeps the keys apart).

``code_fingerprint("experiments.stages.probe")`` walks the module's imports -- module-level and
function-local, statically, without importing anything -- restricted to this project's packages, and
hashes each module's syntax tree with docstrings removed (``ast.dump`` without positions), so a changed
comment, docstring or formatting keeps the cache while any change to what the code does invalidates
it. The versions of the numerical libraries the stages run on are part of the key too. Written by hand:
pip / importlib metadata hash installed files, not the import closure of one module.
"""

from __future__ import annotations

import ast
import hashlib
import json
from functools import lru_cache
from importlib import metadata
from pathlib import Path

PACKAGES = ("worlds", "dynamics", "probes", "rewards", "planning", "experiments")
"""This project's top-level packages: imports of anything else end the walk."""

LIBRARIES = ("numpy", "torch", "scikit-learn", "scipy", "lightning", "stormpy", "concept-erasure")
"""Third-party libraries whose version is part of every stage's key (a new torch may change results)."""


ROOT = Path(__file__).resolve().parents[1]
"""The folder that holds the project's packages (the repository, or site-packages when installed)."""

CONFIG_MODULES = ("experiments.config", "experiments.schema", "experiments.verify_config")
"""Config parsing and validation: what they do to a stage reaches it as the resolved config, which is in the
stage's key already; their validation imports every package, so walking into them would tie every stage to
all the code."""


def module_file(name: str, root: Path = ROOT) -> Path | None:
    """The source file of our module ``name`` under ``root`` (``pkg/__init__.py`` for a package), or None if
    it is not ours or does not exist (found on disk, nothing is imported)."""
    parts = name.split(".")
    if parts[0] not in PACKAGES or not all(p.isidentifier() for p in parts):
        return None
    base = root.joinpath(*parts)
    for path in (base / "__init__.py", base.with_suffix(".py")):
        if path.is_file():
            return path
    return None


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return tree


def _parsed(path: Path) -> tuple[str, tuple[str, ...]]:
    """``(hash of the docstring-free syntax tree, names of the modules it imports)`` of one file."""
    st = path.stat()
    return _parse(path, st.st_mtime_ns, st.st_size)


@lru_cache(maxsize=4096)
def _parse(path: Path, mtime_ns: int, size: int) -> tuple[str, tuple[str, ...]]:
    """:func:`_parsed`, cached while the file's modification time and size stay the same."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = path.parent
    imports: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imports += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against this file's package
                parts = _package_name(package).split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(p for p in [*parts, base] if p)
            imports.append(base)
            imports += [f"{base}.{alias.name}" for alias in node.names]  # `from pkg import module`
    digest = hashlib.sha256(ast.dump(_strip_docstrings(tree), annotate_fields=False).encode()).hexdigest()
    return digest, tuple(sorted(set(imports)))


def _package_name(folder: Path) -> str:
    """Dotted name of the package in ``folder`` (walking up while there is an ``__init__.py``)."""
    parts = []
    while (folder / "__init__.py").is_file():
        parts.append(folder.name)
        folder = folder.parent
    return ".".join(reversed(parts))


def import_closure(module: str, root: Path = ROOT) -> dict[str, Path]:
    """Every module of ours that ``module`` imports, directly or not (itself included): name -> file.
    Importing ``a.b.c`` runs ``a/__init__.py`` and ``a/b/__init__.py`` too, so those are included."""
    seen: dict[str, Path] = {}
    todo = [module]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            prefix = ".".join(parts[:i])
            if prefix in seen or prefix in CONFIG_MODULES:
                continue
            path = module_file(prefix, root)
            if path is None:
                continue
            seen[prefix] = path
            todo += list(_parsed(path)[1])
    if module not in seen:
        raise ValueError(f"{module!r} is not a module of this project ({', '.join(PACKAGES)})")
    return dict(sorted(seen.items()))


@lru_cache(maxsize=None)
def library_versions() -> tuple[tuple[str, str | None], ...]:
    out = []
    for name in LIBRARIES:
        try:
            out.append((name, metadata.version(name)))
        except metadata.PackageNotFoundError:
            out.append((name, None))
    return tuple(out)


@lru_cache(maxsize=None)
def code_fingerprint(module: str, root: Path = ROOT) -> str:
    """sha256 over the docstring-free syntax trees of ``module``'s import closure (see the module
    docstring) and the versions of :data:`LIBRARIES`. Cached per process (the code does not change under a
    running process; a file edited meanwhile is read by the next ``ontolab`` command)."""
    closure = import_closure(module, root)
    payload = {"modules": {name: _parsed(path)[0] for name, path in closure.items()},
               "libraries": dict(library_versions())}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
