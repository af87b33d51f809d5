"""The drop-ins of fastcl.integrations against the classes they replace, in the same run:
forward+backward time and peak extra memory at the sizes people train with.

    pytest benchmarks/bench_integrations.py --benchmark-json=integrations.json
    python benchmarks/report.py integrations.json"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fastcl.bench.profiling import peak_memory_bytes

from common import HAS_CUDA

DEVICES = ["cpu"] + (["cuda"] if HAS_CUDA else [])


def _clip(impl, rows, dim, device):
    if impl == "original":
        from open_clip import ClipLoss
    else:
        from fastcl.integrations.open_clip import ClipLoss
    g = torch.Generator().manual_seed(rows)
    image, text = (F.normalize(torch.randn(rows, dim, generator=g), dim=1).to(device).requires_grad_()
                   for _ in range(2))
    scale = torch.tensor(100.0, device=device, requires_grad=True)
    criterion = ClipLoss()
    return lambda: criterion(image, text, scale).backward(), (image, text, scale)


def _siglip(impl, rows, dim, device):
    """open_clip's SigLipLoss (the whole logit matrix) against the fused drop-in; the CPU kernel only
    for now (CUDA inputs run fastcl's chunked PyTorch path until its CUDA kernel lands)."""
    if impl == "original":
        from open_clip.loss import SigLipLoss
    else:
        from fastcl.integrations.open_clip import SigLipLoss
    g = torch.Generator().manual_seed(rows)
    image, text = (F.normalize(torch.randn(rows, dim, generator=g), dim=1).to(device).requires_grad_()
                   for _ in range(2))
    scale = torch.tensor(10.0, device=device, requires_grad=True)
    bias = torch.tensor(-10.0, device=device, requires_grad=True)
    criterion = SigLipLoss()
    return lambda: criterion(image, text, scale, bias).backward(), (image, text, scale, bias)


def _lightly(impl, rows, dim, device):
    if impl == "original":
        from lightly.loss import NTXentLoss
    else:
        from fastcl.integrations.lightly import NTXentLoss
    g = torch.Generator().manual_seed(rows)
    out0, out1 = (torch.randn(rows // 2, dim, generator=g).to(device).requires_grad_() for _ in range(2))
    criterion = NTXentLoss(temperature=0.5)
    return lambda: criterion(out0, out1).backward(), (out0, out1)


def _mnrl(impl, rows, dim, device):
    """MultipleNegativesRankingLoss on (anchor, positive, negative) embeddings: `rows` anchors."""
    if impl == "original":
        from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    else:
        from fastcl.integrations.sentence_transformers import MultipleNegativesRankingLoss
    g = torch.Generator().manual_seed(rows)
    columns = [torch.randn(rows, dim, generator=g).to(device).requires_grad_() for _ in range(3)]
    criterion = MultipleNegativesRankingLoss(None)
    return lambda: criterion.compute_loss_from_embeddings(columns, None).backward(), columns


CASES = [("sentence_transformers.MNRL", _mnrl, 4096, 384), ("sentence_transformers.MNRL", _mnrl, 16384, 384),
         ("open_clip.ClipLoss", _clip, 16384, 512), ("open_clip.SigLipLoss", _siglip, 4096, 512),
         ("open_clip.SigLipLoss", _siglip, 16384, 512),
         ("lightly.NTXentLoss", _lightly, 16384, 128)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name,make,rows,dim", CASES, ids=[f"{c[0]}-{c[2]}" for c in CASES])
@pytest.mark.parametrize("impl", ["original", "fastcl"])
def test_integration(benchmark, provenance, impl, name, make, rows, dim, device):
    pytest.importorskip(name.split(".")[0])
    run, leaves = make(impl, rows, dim, device)

    def step():
        for leaf in leaves:
            leaf.grad = None
        run()
        if device == "cuda":
            torch.cuda.synchronize()

    peak = peak_memory_bytes(step, device)
    provenance(device, bench="integrations", case=name, size=f"{rows} x {dim}", impl=impl, peak_bytes=peak)
    benchmark.pedantic(step, rounds=2, iterations=1, warmup_rounds=1)
