"""The sigmoid loss across processes (fastcl.siglip_ring; gloo, CPU, 2 and 3 processes spawned here):
with gather_distributed=True the keys and their gradients travel around the ranks, and the mean of the
ranks' losses and the gradients (features as every rank's losses together give them, the scale and
bias averaged over ranks as DDP does) equal those of one process on the global batch, in fp64 and
fp32, with sample ids shared across ranks, uneven batches, both kernels (compiled and pure PyTorch).
The open_clip drop-in under 2 processes gives open_clip's SigLipLoss values and gradients for every
dist_impl."""

from __future__ import annotations

import os
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from fastcl import functional
from fastcl.integrations.open_clip import SigLipLoss

D = 6
# name: (dtype, normalize, with sample ids, impl)
CASES = {
    "fp64": (torch.float64, True, False, "fastcl"),
    "fp64_raw": (torch.float64, False, False, "fastcl"),
    "fp64_ids": (torch.float64, True, True, "fastcl"),
    "fp64_ids_torch": (torch.float64, True, True, "torch"),
    "fp32_ids": (torch.float32, True, True, "fastcl"),
}
DIST_IMPLS = ("bidir", "shift", "reduce", "gather")


def _data(total, dtype):
    g = torch.Generator().manual_seed(11)
    a, b = (torch.randn(total, D, generator=g, dtype=torch.float64).to(dtype) for _ in range(2))
    ids = torch.randint(-1, 3, (total,), generator=g)  # duplicates within and across ranks, some without an id
    scale, bias = torch.tensor(3.0, dtype=torch.float64), torch.tensor(-1.5, dtype=torch.float64)
    return a, b, ids, scale, bias


def _leaves(a, b, scale, bias, dtype):
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    return [a.clone().requires_grad_(), b.clone().requires_grad_(), scale.to(acc).requires_grad_(),
            bias.to(acc).requires_grad_()]


def _run(case, a, b, ids, scale, bias, gather):
    """(loss, grad_a, grad_b, grad_scale, grad_bias)."""
    dtype, normalize, with_ids, impl = CASES[case]
    leaves = _leaves(a, b, scale, bias, dtype)
    loss = functional.siglip(*leaves, normalize, sample_ids=ids if with_ids else None, gather_distributed=gather,
                             impl=impl)
    return [loss.detach(), *torch.autograd.grad(loss, leaves)]


def _open_clip(rank, world, n):
    """Per dist_impl: fastcl's and open_clip's (loss, grads) on this rank's normalised features."""
    import open_clip

    a, b, _, scale, bias = _data(n * world, torch.float64)
    a, b = F.normalize(a[rank * n:(rank + 1) * n], dim=1), F.normalize(b[rank * n:(rank + 1) * n], dim=1)
    out = {}
    for impl in DIST_IMPLS:
        for name, cls in (("fastcl", SigLipLoss), ("open_clip", open_clip.loss.SigLipLoss)):
            leaves = _leaves(a, b, scale, bias, torch.float64)
            loss = cls(rank=rank, world_size=world, dist_impl=impl)(*leaves, output_dict=True)["contrastive_loss"]
            out[impl, name] = [loss.detach(), *torch.autograd.grad(loss, leaves)]
    return out


def _worker(rank, world, sizes, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=60))
    start, n = sum(sizes[:rank]), sizes[rank]
    results = {}
    for case, (dtype, *_rest) in CASES.items():
        a, b, ids, scale, bias = _data(sum(sizes), dtype)
        results[case] = _run(case, a[start:start + n], b[start:start + n], ids[start:start + n], scale, bias, True)
    # Sample ids on one rank only: every rank refuses (none may wait in the ring).
    a, b, ids, scale, bias = _data(sum(sizes), torch.float64)
    try:
        functional.siglip(a[start:start + n], b[start:start + n], 2.0, sample_ids=ids[:n] if rank == 0 else None,
                          gather_distributed=True)
    except ValueError as exc:
        results["ids_error"] = str(exc)
    if len(set(sizes)) == 1:
        results["open_clip"] = _open_clip(rank, world, sizes[0])
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.parametrize("sizes", [[4, 4], [3, 5, 2]], ids=["2-even", "3-uneven"])
def test_ring_equals_the_global_batch(tmp_path, sizes):
    if len(set(sizes)) == 1:
        pytest.importorskip("open_clip")
    world = len(sizes)
    mp.start_processes(_worker, args=(world, sizes, str(tmp_path / "init"), str(tmp_path)), nprocs=world,
                       join=True, start_method="spawn")
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]
    starts = [sum(sizes[:r]) for r in range(world)]
    for case, (dtype, *_rest) in CASES.items():
        tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-5, atol=1e-6)
        a, b, ids, scale, bias = _data(sum(sizes), dtype)
        loss, grad_a, grad_b, grad_scale, grad_bias = _run(case, a, b, ids, scale, bias, gather=False)
        got = [r[case] for r in ranks]
        torch.testing.assert_close(sum(g[0] for g in got) / world, loss, **tol, msg=f"{case}: loss")
        # DDP averages the replicated scalars' gradients over ranks.
        torch.testing.assert_close(sum(g[3] for g in got) / world, grad_scale, **tol, msg=f"{case}: scale")
        torch.testing.assert_close(sum(g[4] for g in got) / world, grad_bias, **tol, msg=f"{case}: bias")
        for r, (g, s, n) in enumerate(zip(got, starts, sizes)):
            # Rank r's features get the gradient of every rank's loss; DDP divides by the world size.
            torch.testing.assert_close(g[1] / world, grad_a[s:s + n], **tol, msg=f"{case}: grad_a of rank {r}")
            torch.testing.assert_close(g[2] / world, grad_b[s:s + n], **tol, msg=f"{case}: grad_b of rank {r}")
    for r in ranks:
        assert "sample ids on all ranks or none" in r["ids_error"]
    if len(set(sizes)) == 1:
        for r in ranks:
            for impl in DIST_IMPLS:
                for name, x, w in zip(("loss", "image", "text", "scale", "bias"), r["open_clip"][impl, "fastcl"],
                                      r["open_clip"][impl, "open_clip"]):
                    torch.testing.assert_close(x, w, rtol=1e-10, atol=1e-12, msg=f"open_clip {impl}: {name}")
