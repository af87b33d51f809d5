"""Benchmark settings: which devices to run on, and a row of provenance for every result."""

from __future__ import annotations

import datetime
import platform

import pytest
import torch

import fastcl

HAS_CUDA = torch.cuda.is_available() and fastcl.has_cuda_ops()


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


@pytest.fixture
def provenance(benchmark):
    def record(device: str, **extra):
        benchmark.extra_info.update(
            device=device, hardware=device_name(device), torch=torch.__version__, fastcl=fastcl.__version__,
            date=datetime.date.today().isoformat(), **extra)
    return record
