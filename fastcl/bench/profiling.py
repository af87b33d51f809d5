"""Peak-memory and timing helpers shared by `fastcl demo` and benchmarks/.

CPU peak memory is the rise of the process's resident high-water mark (Linux VmHWM, reset
through /proc/self/clear_refs after returning freed heap to the OS): tracemalloc cannot see
ATen's allocations. CUDA peak memory is torch.cuda.max_memory_allocated above the start."""

from __future__ import annotations

import ctypes
import gc
import time
from typing import Callable, Optional

import torch


def _proc_status(key: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _release_heap() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_memory_bytes(fn: Callable[[], object], device: str | torch.device) -> Optional[int]:
    """Extra bytes at the peak of fn() over what was allocated before it; None where the
    platform gives no honest measurement (a non-Linux CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - start
    _release_heap()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current resident size
    except OSError:
        return None
    before = _proc_status("VmRSS:")
    fn()
    peak = _proc_status("VmHWM:")
    return None if before is None or peak is None else max(0, peak - before)


def seconds_per_call(fn: Callable[[], object], device: str | torch.device, repeats: int = 3,
                     warmup: int = 1) -> float:
    """Median wall time of fn() over `repeats` calls after `warmup` calls."""
    device = torch.device(device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]
