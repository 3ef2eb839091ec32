"""Review of the benchmarks (session 8).

* ``benchmarks/run.py`` writes strict JSON (a NaN ratio became the invalid token ``NaN``) durably
  (the temp file was neither fsynced nor in a unique name) -- failed before the fix;
* ``train_throughput``'s FLOPs per training step agree with an independent count (module hooks:
  ``2 * rows * in * out`` per Linear / GRU cell, per conv output or transposed-conv input).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path

import pytest
import torch
from torch import nn

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_review_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_run_writes_strict_json_through_an_fsynced_temp_file(tmp_path, monkeypatch):
    run = _load("run")
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "fake.py").write_text(
        "def run(quick):\n"
        "    return {'name': 'fake', 'ours': 1.0, 'peer': 0.0, 'ratio': float('nan'), 'unit': 's',\n"
        "            'higher_is_better': True, 'config': {'quick': quick}}\n")
    monkeypatch.setattr(run, "HERE", bench)
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    threads = torch.get_num_threads()
    try:
        assert run.main(["fake", "--quick", "--out", str(tmp_path / "out")]) == 0
    finally:
        torch.set_num_threads(threads)

    def refuse(token):
        raise ValueError(f"not strict JSON: {token}")

    result = json.loads((tmp_path / "out" / "fake.json").read_text(), parse_constant=refuse)
    assert result["ratio"] is None and result["ours"] == 1.0 and result["machine"]["torch"] == torch.__version__
    assert synced  # the file (and its folder) reached the disk before the rename
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["fake.json"]


def _hook_forward_flops(model: nn.Module, batch) -> int:
    total = [0]

    def hook(m, inputs, out):
        x = inputs[0]
        rows = x.numel() // x.shape[-1]
        if isinstance(m, nn.Linear):
            total[0] += 2 * rows * m.in_features * m.out_features
        elif isinstance(m, (nn.GRUCell, nn.GRU)):
            total[0] += 2 * rows * 3 * m.hidden_size * (m.input_size + m.hidden_size)
        elif isinstance(m, nn.Conv2d):
            total[0] += 2 * out.numel() * (m.in_channels // m.groups) * math.prod(m.kernel_size)
        elif isinstance(m, nn.ConvTranspose2d):
            total[0] += 2 * x.numel() * m.out_channels * math.prod(m.kernel_size)

    kinds = (nn.Linear, nn.GRUCell, nn.GRU, nn.Conv2d, nn.ConvTranspose2d)
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, kinds)]
    try:
        with torch.no_grad():
            model.loss(*batch)
    finally:
        for h in handles:
            h.remove()
    return total[0]


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_train_flops_per_step_agree_with_an_independent_count():
    tt = _load("train_throughput")
    torch.set_num_threads(1)
    batch = tt._batch(4, 8)  # FLOPs scale with b * t; a small batch keeps the test fast
    flops = tt.count_train_flops("rssm", batch)
    model, _ = tt.train_step_fn("rssm", batch)
    forward = _hook_forward_flops(model, batch)
    # backward = grad wrt inputs + grad wrt weights = 2x forward, less the first layer's input gradient
    assert 2.8 * forward <= flops <= 3.0 * forward, (flops, forward)
