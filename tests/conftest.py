"""Fixtures for every test: a fixed seed, and the [sim] route (tests/sim/sim_ops.py) that swaps
fastcl's CPU kernels for the CUDA kernels run by the CPU simulator. Shared helpers live in
helpers.py."""

from __future__ import annotations

import contextlib
import warnings

import pytest
import torch

from helpers import is_sim


@pytest.fixture(autouse=True)
def _cuda_kernels_on_cpu(request):
    # Keyed on the device parameter, not on the `sim` marker: tests that are marked `sim` without
    # that parameter (tests/sim/test_cuda_simulated.py) switch the route themselves, so they can
    # compare it with the CPU kernels.
    callspec = getattr(request.node, "callspec", None)
    if callspec is None or not is_sim(callspec.params.get("device")):
        yield
        return
    import sim_ops

    with contextlib.ExitStack() as stack:
        with warnings.catch_warnings():  # torch says that the override replaces the CPU kernels
            warnings.simplefilter("ignore", UserWarning)
            stack.enter_context(sim_ops.cuda_kernels_on_cpu())
        yield


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
