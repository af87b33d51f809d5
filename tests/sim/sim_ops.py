"""fastcl's CUDA kernels run on the CPU by the simulator of fastcl/csrc/sim, for the tests marked `sim`.

The sources of fastcl/csrc/cuda are compiled as host C++ (tests/sim/sim_build.py) into a module whose
torch.ops.fastcl_sim.* are the CUDA ops with CPU tensors as device memory. Inside
`cuda_kernels_on_cpu()` the CPU kernels of torch.ops.fastcl.* are overridden by them, so every
fastcl entry point (losses, autograd, torch.compile, augmentation) runs the CUDA kernels' code
on CPU tensors; leaving it restores the CPU kernels."""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch

import sim_build

ROOT = Path(__file__).resolve().parents[2]
CSRC = ROOT / "fastcl" / "csrc"
# Every CUDA source, as fastcl/_build.py globs them for nvcc, so a new .cu is simulated too.
SOURCES = [*sorted((CSRC / "cuda").glob("*.cu")), CSRC / "checks.cpp",
           ROOT / "tests" / "sim" / "sim_kernels" / "fastcl_sim_ops.cpp"]
OPS = ("contrastive_forward", "contrastive_backward", "contrastive_pair_forward", "contrastive_pair_backward",
       "augment", "siglip_forward", "siglip_backward")
CALLS = {name: 0 for name in OPS}  # simulated calls so far, so tests can tell the route was taken


@functools.lru_cache(maxsize=None)
def module():
    import fastcl  # noqa: F401  (the fastcl library and its Python registrations come first)

    return sim_build.build("fastcl_sim", SOURCES, extra_include_paths=[CSRC])


def _extents(args) -> list[tuple[int, int]]:
    """(address, bytes) of the memory each tensor argument covers, from its first element to its
    last (a view registers its own extent, not its whole storage, so reading past it is caught)."""
    found = []
    for a in args:
        for t in (a if isinstance(a, (list, tuple)) else [a]):
            if isinstance(t, torch.Tensor) and t.numel() > 0:
                last = sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()))
                found.append((t.data_ptr(), (last + 1) * t.element_size()))
    return found


def _simulated(name):
    op = getattr(torch.ops.fastcl_sim, name)

    def run(*args):
        CALLS[name] += 1
        mod = module()
        mod.begin_call(_extents(args))
        try:
            return op(*args)
        finally:
            mod.end_call()

    return run


@contextlib.contextmanager
def cuda_kernels_on_cpu(schedule_seed: int = 0):
    mod = module()
    mod.set_schedule(schedule_seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the simulator runs on one thread; idle OpenMP workers would spin beside it
    lib = torch.library.Library("fastcl", "IMPL")
    from fastcl import ops

    fused, ops.SIGLIP_FUSED_ON_CPU = ops.SIGLIP_FUSED_ON_CPU, False  # CUDA runs SigLIP's forward and backward
    try:
        for name in OPS:
            lib.impl(name, _simulated(name), "CPU")
        yield
    finally:
        ops.SIGLIP_FUSED_ON_CPU = fused
        lib._destroy()
        torch.set_num_threads(threads)
        mod.set_schedule(0)


@contextlib.contextmanager
def one_sm():
    """The simulated device with one SM: the ops split no block's tiles, so every block streams all of
    them through its cp.async stages (with 132 SMs the small test shapes give each split one tile)."""
    mod = module()
    before = mod.set_multiprocessor_count(1)
    try:
        yield
    finally:
        mod.set_multiprocessor_count(before)
