"""What the benchmark suites share (imported as `common`; conftest.py holds the fixtures only):
which devices to run on, and the hardware line every result carries."""

from __future__ import annotations

import platform

import torch

import fastcl

HAS_CUDA = torch.cuda.is_available() and fastcl.has_cuda_ops()


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"{_cpu_model()} ({torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()})"
