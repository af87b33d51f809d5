"""Devices, seeds, markers and the per-dtype accuracy criterion shared by the tests."""

from __future__ import annotations

import contextlib
import warnings

import pytest
import torch

import fastcl

HAS_CUDA = torch.cuda.is_available() and fastcl.has_cuda_ops()
cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU and fastcl's CUDA kernels")


class SimDevice(str):
    """"cpu" for the tensors, while fastcl's ops run the CUDA kernels' code through the CPU
    simulator of fastcl/csrc/sim (tests/sim_ops.py)."""

    sim = True


# Every test that takes `device` runs on the CPU and, marked `cuda`, twice more: on the GPU, and
# through the simulator (id "sim", marked `sim` too), so the CUDA kernels run on every CI machine.
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, cuda]),
           pytest.param(SimDevice("cpu"), id="sim", marks=[pytest.mark.cuda, pytest.mark.sim])]


def is_sim(device) -> bool:
    return getattr(device, "sim", False)


@pytest.fixture(autouse=True)
def _cuda_kernels_on_cpu(request):
    # Keyed on the device parameter, not on the `sim` marker: tests that are marked `sim` without
    # that parameter (tests/test_cuda_simulated.py) switch the route themselves, so they can
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

# Absolute slack on top of twice plain PyTorch's own error (the apple/ml-cross-entropy criterion).
TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2}
LOW_PRECISION = (torch.float16, torch.bfloat16)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def dtypes_for(device: str):
    return [torch.float64, torch.float32, torch.float16, torch.bfloat16] if device == "cpu" and not is_sim(device) else [
        torch.float32, torch.float16, torch.bfloat16]


def assert_close_to_truth(actual, truth, baseline, dtype, what="value"):
    """|actual - truth| <= 2 |baseline - truth| + tol[dtype], elementwise; truth is fp64 and
    baseline is plain PyTorch run in the test dtype. Reports how many elements fail and where."""
    actual, truth, baseline = (t.detach().double().cpu() for t in (actual, truth, baseline))
    assert actual.shape == truth.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(truth.shape)}"
    assert torch.isfinite(actual).all(), f"{what}: non-finite values"
    err = (actual - truth).abs()
    allowed = 2 * (baseline - truth).abs() + TOL[dtype] * (1 + truth.abs())
    bad = err > allowed
    if bad.any():
        idx = bad.nonzero()[0].tolist()
        raise AssertionError(
            f"{what} ({dtype}): {int(bad.sum())}/{bad.numel()} elements off; worst error {err.max():.3g}; "
            f"first at {idx}: got {actual[tuple(idx)]:.6g}, truth {truth[tuple(idx)]:.6g}, "
            f"plain PyTorch {baseline[tuple(idx)]:.6g}")
