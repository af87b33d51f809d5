"""Gradient caching: peak memory and time of one training step, one-shot vs chunked, each run in
a fresh process so that one measurement's allocations cannot hide another's.

    python benchmarks/grad_cache_memory.py simcse --batch 1024 --chunk 0 64     # 0: one-shot
    python benchmarks/grad_cache_memory.py simclr --batch 1024 --chunk 0 128
    python benchmarks/grad_cache_memory.py simcse --batch 16384 --chunk 256      # the largest batch

Memory: the rise of the process's resident high-water mark (VmHWM) over its resident size just
before the step (fastcl.bench.profiling.peak_memory_bytes), and the process's whole peak RSS.
A step is the trainer's: the encoder on every row (SimCSE: each sentence twice, dropout on;
SimCLR: two augmented views), the fused loss, backward, and the optimiser step.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time

import torch


def _simcse_step(batch: int, chunk: int):
    from fastcl import InfoNCELoss
    from fastcl.engine import GradCache
    from fastcl.simcse import SimCSE
    from fastcl.simcse.data import builtin_corpus

    sentences = builtin_corpus().anchors
    sentences = (sentences * (batch // len(sentences) + 1))[:batch]
    model = SimCSE.from_pretrained("minilm", pooler="avg", max_length=32).train()
    tokens = dict(model.tokenize(sentences + sentences))  # unsupervised: every sentence twice
    criterion = InfoNCELoss(temperature=1.0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-5)

    def loss_fn(z):
        return criterion(z[:batch], z[batch:])

    def step():
        optimizer.zero_grad(set_to_none=True)
        if chunk:
            cache = GradCache(model, chunk)
            loss = loss_fn(cache.embed(tokens))
            cache.backward(loss)
        else:
            loss = loss_fn(model(**tokens))
            loss.backward()
        optimizer.step()
        return float(loss)

    return step


def _simclr_step(batch: int, chunk: int):
    from fastcl import NTXentLoss, SimCLRAugment
    from fastcl.engine import GradCache
    from fastcl.simclr import models, optim

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8, generator=g)
    model = models.simclr_model("resnet18", True, 2048, 128).train()
    augment, criterion = SimCLRAugment(32), NTXentLoss(temperature=0.5)
    optimizer = optim.build_optimizer("lars", model, optim.scaled_learning_rate(batch), 1e-6)

    def step():
        v1, v2 = augment(images, views=2, generator=g)
        views = torch.cat([v1, v2])
        optimizer.zero_grad(set_to_none=True)
        if chunk:
            cache = GradCache(model, chunk)
            z = cache.embed(views)
            loss = criterion(z[:batch], z[batch:])
            cache.backward(loss)
        else:
            z = model(views)
            loss = criterion(z[:batch], z[batch:])
            loss.backward()
        optimizer.step()
        return float(loss)

    return step


def measure(job: str, batch: int, chunk: int, warmup: bool) -> dict:
    """One configuration, in this process."""
    from fastcl.bench.profiling import peak_memory_bytes

    step = {"simcse": _simcse_step, "simclr": _simclr_step}[job](batch, chunk)
    if warmup:
        step()
    times, losses = [], []

    def timed():
        start = time.perf_counter()
        losses.append(step())
        times.append(time.perf_counter() - start)

    extra = peak_memory_bytes(timed, "cpu")
    return dict(job=job, batch=batch, chunk=chunk or None, step_s=times[0], loss=losses[0],
                step_peak_mib=None if extra is None else extra / 2**20,
                process_peak_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("job", choices=("simcse", "simclr"))
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--chunk", type=int, nargs="+", default=[0], help="chunk sizes; 0 is the one-shot step")
    parser.add_argument("--no-warmup", dest="warmup", action="store_false", help="time the first step")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.job, args.batch, args.chunk[0], args.warmup)))
        return 0
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    rows = []
    for chunk in args.chunk:
        cmd = [sys.executable, __file__, args.job, "--batch", str(args.batch), "--chunk", str(chunk), "--child"]
        if not args.warmup:
            cmd.append("--no-warmup")
        run = subprocess.run(cmd, capture_output=True, text=True)
        if run.returncode != 0:
            print(f"chunk {chunk}: failed\n{run.stderr[-2000:]}", file=sys.stderr)
            return 1
        rows.append(json.loads(run.stdout.strip().splitlines()[-1]))
    print("| job | batch | chunk | step time | step peak (over RSS before) | process peak RSS | loss |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['job']} | {r['batch']:,} | {r['chunk'] or 'one-shot'} | {r['step_s']:.1f} s | "
              f"{r['step_peak_mib']:,.0f} MiB | {r['process_peak_mib']:,.0f} MiB | {r['loss']:.4f} |")
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
