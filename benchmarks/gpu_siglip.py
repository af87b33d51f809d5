"""SigLIP forward + backward on a GPU: fastcl's fused loss against the eager loss open_clip's
SigLipLoss computes (the whole B x B logit matrix; also siglip-kernel's reference) and, when its
wheel is carried (scripts/fetch_gpu_wheels.sh), siglip-kernel's fused_siglip_loss, whose README
reports 48.8 ms at B = 65,536, D = 768, bf16 on Hopper (issue 26's GPU target). bf16 L2-normalised
features, scale 10, bias -10, median of `repeats` after a warm-up; peak memory over the step.

    python benchmarks/gpu_siglip.py --json OUT/siglip.json          # B 16384 65536 x D 256 768
    python benchmarks/gpu_siglip.py --device cpu --sizes 64 --dims 8 --impls fastcl eager   # smoke run

fastcl's CUDA kernels take D <= 768 (the wide ones past 256); each row says which path ran."""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import torch
import torch.nn.functional as F

IMPLS = ("fastcl", "eager", "siglip_kernel")


def eager(a, b, scale, bias):
    """open_clip's SigLipLoss math on one process: -logsigmoid(y * z).sum() / B."""
    logits = scale * a @ b.T + bias
    labels = 2 * torch.eye(a.shape[0], device=a.device, dtype=logits.dtype) - 1
    return -F.logsigmoid(labels * logits).sum() / a.shape[0]


def fastcl_loss(a, b, scale, bias):
    from fastcl import functional

    return functional.siglip(a, b, scale, bias, normalize=False)


def kernel_loss(a, b, scale, bias):
    from siglip_kernel import fused_siglip_loss

    return fused_siglip_loss(a, b, scale.log(), bias)


LOSSES = {"fastcl": fastcl_loss, "eager": eager, "siglip_kernel": kernel_loss}


def fastcl_path(a) -> str:
    from fastcl import ops

    return "pytorch-chunked" if ops._siglip_uses_torch(a, "auto") else "kernel"


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def measure(impl: str, rows: int, dim: int, device: str, repeats: int) -> dict:
    g = torch.Generator(device=device).manual_seed(rows + dim)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    a, b = (F.normalize(torch.randn(rows, dim, device=device, generator=g), dim=1).to(dtype).requires_grad_()
            for _ in range(2))
    scale = torch.tensor(10.0, device=device, requires_grad=True)
    bias = torch.tensor(-10.0, device=device, requires_grad=True)
    loss_fn = LOSSES[impl]
    row = dict(impl=impl, B=rows, D=dim, dtype=str(dtype).replace("torch.", ""), device=device)
    if impl == "fastcl":
        row["path"] = fastcl_path(a)

    def step():
        for t in (a, b, scale, bias):
            t.grad = None
        loss = loss_fn(a, b, scale, bias)
        loss.backward()
        return loss

    try:
        loss = step()  # warm-up (compilation, autotuning)
        _sync(device)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            loss = step()
            _sync(device)
            times.append(time.perf_counter() - start)
        row.update(ms=1e3 * statistics.median(times), loss=loss.item())
        if device == "cuda":
            row["peak_mib"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    except ImportError as e:
        row["skipped"] = f"not installed: {e}"
    except torch.OutOfMemoryError:
        row["skipped"] = "out of memory"
    finally:
        if device == "cuda":
            torch.cuda.empty_cache()
    return row


def table(rows: list) -> str:
    lines = ["| impl | B | D | path | ms | peak MiB | loss |", "|---|---:|---:|---|---:|---:|---:|"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['impl']} | {r['B']} | {r['D']} | - | {r['skipped']} | - | - |")
            continue
        peak = f"{r['peak_mib']:,.1f}" if "peak_mib" in r else "-"
        loss = r["loss"] if math.isfinite(r["loss"]) else "nan"
        lines.append(f"| {r['impl']} | {r['B']:,} | {r['D']} | {r.get('path', '-')} | {r['ms']:,.2f} | {peak} | "
                     f"{loss:.4f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[16384, 65536])
    p.add_argument("--dims", type=int, nargs="+", default=[256, 768])
    p.add_argument("--impls", nargs="+", choices=IMPLS, default=list(IMPLS))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json")
    args = p.parse_args(argv)
    rows = [measure(impl, n, d, args.device, args.repeats) for d in args.dims for n in args.sizes for impl in args.impls]
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"SigLIP forward+backward on {name}, torch {torch.__version__}\n\n{table(rows)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=name, torch=torch.__version__, rows=rows), f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
