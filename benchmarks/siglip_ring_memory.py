"""Per-process peak memory of the distributed sigmoid loss (SigLIP) as the world grows: fastcl's ring
(fastcl.siglip_ring: keys and key gradients passed around the ranks, chunks recomputed in the
backward) against open_clip's SigLipLoss (bidir exchange, every chunk's logits kept for the
backward). gloo processes on the CPU, each with one thread and the same per-rank batch; one forward
and backward per process.

The number is the growth of the process's resident set over the loss's forward and backward: the
kernel's peak-RSS counter (VmHWM) is reset after the inputs are built (/proc/self/clear_refs), and the
resident set then (VmRSS) is subtracted from the peak reached during the step, so the interpreter,
torch and the inputs are not counted. Linux only.

    .venv/bin/python benchmarks/siglip_ring_memory.py              # worlds 1..4, b=2048, D=256, fp32
    .venv/bin/python benchmarks/siglip_ring_memory.py --batch 1024 --worlds 1 2 3 4 8
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _status(field: str) -> int:
    """A /proc/self/status field in bytes (VmRSS, VmHWM)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _loss(method: str, rank: int, world: int, image, text, scale, bias):
    if method == "fastcl":
        from fastcl import siglip_ring
        return siglip_ring.siglip_ring(image, text, scale, bias, normalize=False)
    from open_clip.loss import SigLipLoss
    return SigLipLoss(rank=rank, world_size=world)(image, text, scale, bias)


def _worker(rank, world, method, batch, dim, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=600))
    g = torch.Generator().manual_seed(rank)
    image, text = (torch.nn.functional.normalize(torch.randn(batch, dim, generator=g), dim=1).requires_grad_()
                   for _ in range(2))
    scale, bias = torch.tensor(10.0, requires_grad=True), torch.tensor(-10.0, requires_grad=True)
    # Imports, lazy inits and gloo's connections (every rank calls, so the exchanges pair up).
    _loss(method, rank, world, image[:2], text[:2], scale, bias).backward()
    dist.barrier()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident set
    before = _status("VmRSS")
    start = time.perf_counter()
    loss = _loss(method, rank, world, image, text, scale, bias)
    loss.backward()
    seconds = time.perf_counter() - start
    peak = _status("VmHWM") - before
    torch.save({"peak": peak, "seconds": seconds, "loss": loss.item()}, os.path.join(out_dir, f"{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


def measure(method: str, world: int, batch: int, dim: int) -> dict:
    """The largest per-process peak (bytes) and the slowest step (s) over the world's processes."""
    with tempfile.TemporaryDirectory() as tmp:
        mp.start_processes(_worker, args=(world, method, batch, dim, os.path.join(tmp, "init"), tmp), nprocs=world,
                           join=True, start_method="spawn")
        ranks = [torch.load(os.path.join(tmp, f"{r}.pt")) for r in range(world)]
    return {"peak": max(r["peak"] for r in ranks), "seconds": max(r["seconds"] for r in ranks)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=2048, help="rows per rank")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--worlds", type=int, nargs="+", default=[1, 2, 3, 4])
    args = parser.parse_args()
    import fastcl
    print(f"SigLIP forward+backward, per-process peak memory over the step; per-rank batch {args.batch}, "
          f"D={args.dim}, fp32, gloo on CPU, 1 thread per process")
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"fastcl {fastcl.__version__}, {time.strftime('%Y-%m-%d')}")
    print()
    print("| world | global batch | fastcl ring peak (MiB) | open_clip SigLipLoss peak (MiB) | ratio | "
          "fastcl step (s) | open_clip step (s) |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for world in args.worlds:
        ring = measure("fastcl", world, args.batch, args.dim)
        base = measure("open_clip", world, args.batch, args.dim)
        mib = 1 << 20
        print(f"| {world} | {world * args.batch} | {ring['peak'] / mib:.1f} | {base['peak'] / mib:.1f} | "
              f"{base['peak'] / max(ring['peak'], 1):.1f}x | {ring['seconds']:.2f} | {base['seconds']:.2f} |",
              flush=True)


if __name__ == "__main__":
    main()
