"""fastcl's fused NT-Xent vs the naive PyTorch loss (normalize -> matmul -> masked_fill ->
cross_entropy), forward and forward+backward, with peak extra memory beside the time.

    pytest benchmarks/bench_ntxent.py --benchmark-json=bench.json
    python benchmarks/report.py bench.json        # ratios in the same run, as a markdown table

FASTCL_BENCH_SIZES / FASTCL_BENCH_DIMS (comma-separated) narrow the grid."""

from __future__ import annotations

import os

import pytest
import torch

from fastcl import functional
from fastcl.bench.baselines import nt_xent_naive
from fastcl.bench.profiling import peak_memory_bytes

from common import HAS_CUDA


def _ints(name, default):
    return [int(v) for v in os.environ.get(name, default).split(",")]


SIZES = _ints("FASTCL_BENCH_SIZES", "1024,4096,8192,16384")
DIMS = _ints("FASTCL_BENCH_DIMS", "128,256")
TEMPERATURE = 0.5
CASES = [("cpu", torch.float32)]
if HAS_CUDA:
    CASES += [("cuda", torch.float32), ("cuda", torch.bfloat16)]
IMPLS = {
    "naive": lambda z1, z2: nt_xent_naive(z1, z2, TEMPERATURE),
    "fastcl": lambda z1, z2: functional.nt_xent(z1, z2, temperature=TEMPERATURE),
}


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


@pytest.mark.parametrize("device,dtype", CASES, ids=lambda v: str(v).replace("torch.", ""))
@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("rows", SIZES)
@pytest.mark.parametrize("passes", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("impl", list(IMPLS))
def test_ntxent(benchmark, provenance, impl, passes, rows, dim, device, dtype):
    g = torch.Generator().manual_seed(rows + dim)
    z1, z2 = (torch.randn(rows // 2, dim, generator=g).to(device=device, dtype=dtype).requires_grad_()
              for _ in range(2))
    loss_fn = IMPLS[impl]

    def step():
        z1.grad = z2.grad = None
        if passes == "fwd":
            with torch.no_grad():
                loss_fn(z1, z2)
        else:
            loss_fn(z1, z2).backward()
        _sync(device)

    peak = peak_memory_bytes(step, device)
    provenance(device, impl=impl, passes=passes, rows=rows, dim=dim, dtype=str(dtype).replace("torch.", ""),
               peak_bytes=peak)
    rounds = 3 if rows * dim <= 8192 * 128 else 2
    benchmark.pedantic(step, rounds=rounds, iterations=1, warmup_rounds=1)
