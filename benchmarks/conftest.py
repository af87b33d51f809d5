"""Benchmark fixtures: a row of provenance for every result, appended to the run log when the
benchmark has run (runs.py; the shared helpers are in common.py)."""

from __future__ import annotations

import datetime

import pytest
import torch

import fastcl

import runs
from common import device_name


@pytest.fixture(scope="session")
def checkout_commit() -> str:
    return runs.commit()


@pytest.fixture
def provenance(benchmark, checkout_commit):
    """record(device, **case): the result's provenance and case; once the benchmark has run, its row
    is appended to the run log (benchmarks/runs.py)."""
    def record(device: str, **extra):
        benchmark.extra_info.update(
            device=device, hardware=device_name(device), torch=torch.__version__, fastcl=fastcl.__version__,
            date=datetime.date.today().isoformat(), commit=checkout_commit, **extra)
    yield record
    stats = getattr(benchmark, "stats", None)
    if stats is not None and benchmark.extra_info:
        runs.append(dict(benchmark.extra_info), stats.stats.median)
