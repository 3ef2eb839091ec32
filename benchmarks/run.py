"""Run one benchmark against its named peer and write ``DIR/NAME.json``.

    python benchmarks/run.py NAME [--quick] [--out DIR]

Each benchmark is a module ``benchmarks/NAME.py`` with ``run(quick: bool) -> dict`` returning at
least ``name, ours, peer, ratio, unit, higher_is_better, config``; this harness pins torch threads to
the cores available, adds ``machine`` and the date, and writes the JSON atomically. Quote ratios,
not absolute numbers: the machines are noisy.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REQUIRED = ("name", "ours", "peer", "ratio", "unit", "higher_is_better", "config")


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


# Pin BLAS/OpenMP threads too (before numpy is imported), so that peers using numpy/scikit-learn are
# not slowed by oversubscription while ours is pinned -- that would inflate every ratio.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, str(_cores()))


def available() -> list[str]:
    return sorted(p.stem for p in HERE.glob("*.py") if p.stem not in ("run", "__init__") and not p.stem.startswith("_"))


def machine() -> dict:
    import torch

    return {
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(), "torch": torch.__version__,
        "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", help=f"one of: {', '.join(available())}")
    p.add_argument("--quick", action="store_true", help="a reduced run that stays under a minute")
    p.add_argument("--out", default=str(HERE / "results"), help="folder for NAME.json")
    a = p.parse_args(argv)
    if a.name not in available():
        print(f"run.py: error: unknown benchmark {a.name!r}; available: {', '.join(available())}", file=sys.stderr)
        return 2
    import torch

    # Oversubscribed threads made small models 7-44x slower here: one thread per core we may use.
    torch.set_num_threads(_cores())
    sys.path.insert(0, str(HERE.parent))
    spec = importlib.util.spec_from_file_location(f"benchmarks.{a.name}", HERE / f"{a.name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    t0 = time.perf_counter()
    result = mod.run(quick=a.quick)
    missing = [k for k in REQUIRED if k not in result]
    if missing:
        raise RuntimeError(f"benchmark {a.name} did not return {missing}")
    result.update(machine=machine(), quick=a.quick, seconds=round(time.perf_counter() - t0, 2),
                  date=time.strftime("%Y-%m-%dT%H:%M:%S"))
    out = Path(a.out)
    from worlds.atomic import atomic_write_text, json_safe

    # temp file in the same folder, fsync, os.replace, fsync the folder; strict JSON (NaN/inf -> null)
    atomic_write_text(out / f"{a.name}.json", json.dumps(json_safe(result), indent=2, default=str, allow_nan=False) + "\n")
    ratio = result["ratio"]
    print(f"{a.name}: ours={result['ours']:.4g} peer={result['peer']:.4g} {result['unit']} "
          f"ratio={ratio:.3g} ({'higher' if result['higher_is_better'] else 'lower'} is better) -> {out / (a.name + '.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
