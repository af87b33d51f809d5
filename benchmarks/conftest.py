"""Benchmark fixtures: a row of provenance for every result (the shared helpers are in common.py)."""

from __future__ import annotations

import datetime

import pytest
import torch

import fastcl

from common import device_name


@pytest.fixture
def provenance(benchmark):
    def record(device: str, **extra):
        benchmark.extra_info.update(
            device=device, hardware=device_name(device), torch=torch.__version__, fastcl=fastcl.__version__,
            date=datetime.date.today().isoformat(), **extra)
    return record
