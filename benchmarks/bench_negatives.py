"""Negatives beyond the batch: fastcl's MoCo queue loss and duplicate-masked NT-Xent against the
losses as MoCo's code and a hand-written masked NT-Xent compute them (the full logit matrix),
forward+backward time and peak extra memory in the same run.

    pytest benchmarks/bench_negatives.py --benchmark-json=negatives.json
    python benchmarks/report.py negatives.json"""

from __future__ import annotations

import pytest
import torch

import fastcl
from fastcl.bench.baselines import moco_loss, nt_xent_deduplicated
from fastcl.bench.profiling import peak_memory_bytes

from common import HAS_CUDA

DEVICES = ["cpu"] + (["cuda"] if HAS_CUDA else [])
DIM = 128


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def _moco(impl, size, device):
    """MoCo v2: queries against their keys and a queue (not differentiated); size = (batch, queue)."""
    batch, queue_size = size
    g = torch.Generator().manual_seed(queue_size)
    q, k = (torch.randn(batch, DIM, generator=g).to(device).requires_grad_() for _ in range(2))
    torch.manual_seed(0)
    queue = fastcl.MemoryQueue(queue_size, DIM, device=device)
    criterion = fastcl.InfoNCELoss(0.2, in_batch_negatives=False, queue=queue)
    keys = queue.keys.clone()
    if impl == "fastcl":
        return lambda: criterion(q, k.detach().requires_grad_()).backward(), (q, k)
    return lambda: moco_loss(q, k, keys, 0.2).backward(), (q, k)


def _dedup(impl, size, device):
    """NT-Xent over 2N rows whose samples repeat (one id in four is shared with another sample)."""
    rows = size[0]
    g = torch.Generator().manual_seed(rows)
    z1, z2 = (torch.randn(rows // 2, DIM, generator=g).to(device).requires_grad_() for _ in range(2))
    ids = torch.randint(0, rows // 2 - rows // 8, (rows // 2,), generator=g).to(device)
    if impl == "fastcl":
        return lambda: fastcl.nt_xent(z1, z2, sample_ids=ids, temperature=0.5).backward(), (z1, z2)
    if impl == "fastcl_no_ids":
        return lambda: fastcl.nt_xent(z1, z2, temperature=0.5).backward(), (z1, z2)
    return lambda: nt_xent_deduplicated(z1, z2, ids, 0.5).backward(), (z1, z2)


CASES = [("moco", (256, 16384)), ("moco", (256, 65536)), ("moco", (4096, 65536)), ("dedup", (8192,))]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case,size", CASES, ids=[f"{c}-{'x'.join(map(str, s))}" for c, s in CASES])
@pytest.mark.parametrize("impl", ["naive", "fastcl", "fastcl_no_ids"])
def test_negatives(benchmark, provenance, impl, case, size, device):
    if impl == "fastcl_no_ids" and case != "dedup":
        pytest.skip("the cost of the ids is measured on NT-Xent only")
    run, leaves = (_moco if case == "moco" else _dedup)(impl, size, device)

    def step():
        for leaf in leaves:
            leaf.grad = None
        run()
        _sync(device)

    peak = peak_memory_bytes(step, device)
    provenance(device, bench="negatives", case=case, size=" x ".join(map(str, size)), impl=impl, peak_bytes=peak)
    benchmark.pedantic(step, rounds=3, iterations=1, warmup_rounds=1)
