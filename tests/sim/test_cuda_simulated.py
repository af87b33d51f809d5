"""The CUDA kernels' own code on the CPU simulator (tests/sim/sim_ops.py), beyond the [sim] twins of
the device tests: the augmentation equals the CPU op, and a seeded shuffle of the thread order
between barriers changes no bit of any result (CUDA promises no order)."""

from __future__ import annotations

import warnings

import pytest
import torch

from fastcl import augment as A
from fastcl import ops
from fastcl.problem import ContrastiveProblem

import sim_ops
from helpers import make_case

pytestmark = [pytest.mark.cuda, pytest.mark.sim]


def _simulated(fn, seed=0):
    before = sum(sim_ops.CALLS.values())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with sim_ops.cuda_kernels_on_cpu(schedule_seed=seed):
            out = fn()
    assert sum(sim_ops.CALLS.values()) > before, "the simulated kernels were not called"
    return out


def _images(sizes, channels=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (channels, h, w), dtype=torch.uint8, generator=g) for h, w in sizes]


def _augment_cases():
    border = A.SimCLRAugment(24).sample(6, (40, 40), generator=torch.Generator().manual_seed(3))
    table = border.table.clone()  # crops touching every border, one of them 1 x 1
    table[:, A.TOP] = torch.tensor([0, 39, 0, 20, 39, 0], dtype=torch.float32)
    table[:, A.LEFT] = torch.tensor([0, 0, 39, 20, 39, 10], dtype=torch.float32)
    table[:, A.HEIGHT] = torch.tensor([40, 1, 40, 20, 1, 30], dtype=torch.float32)
    table[:, A.WIDTH] = torch.tensor([40, 40, 1, 20, 1, 30], dtype=torch.float32)
    border = A.AugmentParams(table, border.source_index, 24, border.blur_kernel)
    batch = torch.stack(_images([(40, 40)] * 6, seed=1))
    listed = _images([(20, 31), (64, 48), (7, 90), (33, 33)], seed=2)
    gray = [img[:1] for img in listed]
    for name, aug in (("cifar", A.SimCLRAugment.cifar(32)), ("imagenet", A.SimCLRAugment.imagenet(56)),
                      ("byol", A.SimCLRAugment.byol(40, blur_kernel=5))):
        yield name, batch, aug.sample(6, (40, 40), generator=torch.Generator().manual_seed(4), views=2)
        sizes = [tuple(img.shape[1:]) for img in listed]
        yield f"{name}-list", listed, aug.sample(len(sizes), sizes, generator=torch.Generator().manual_seed(5), views=2)
        yield f"{name}-gray-list", gray, aug.sample(len(sizes), sizes, generator=torch.Generator().manual_seed(6), views=2)
    yield "border-crops", batch, border
    # Rotation: any angle, fill per channel; at 72 px the work image leaves shared memory for the
    # block's global slot (and its turn plane), at 32 px both stay in shared memory.
    turn = A.SimCLRAugment(32, rotate_p=0.8, degrees=180, fill=(0.1, 0.5, 0.9))
    yield "rotate", batch, turn.sample(6, (40, 40), generator=torch.Generator().manual_seed(7), views=2)
    sizes = [tuple(img.shape[1:]) for img in listed]
    yield "rotate-gray-list", gray, turn.sample(len(sizes), sizes, generator=torch.Generator().manual_seed(8))
    quarters = turn.sample(6, (40, 40), generator=torch.Generator().manual_seed(9))
    quarters.table[:, A.ANGLE] = torch.tensor([90.0, 180.0, 270.0, -90.0, 1e-3, 89.999])
    yield "rotate-quarters", batch, quarters
    wide = A.SimCLRAugment(72, rotate_p=1.0, degrees=(-45, 45), blur_p=0.5, blur_kernel=5)
    yield "rotate-global-work", batch[:3], wide.sample(3, (40, 40), generator=torch.Generator().manual_seed(10))


@pytest.mark.parametrize("name,images,params", list(_augment_cases()), ids=lambda v: v if isinstance(v, str) else "")
def test_augmentation_equals_the_cpu_op(name, images, params):
    """uint8 in: the CUDA kernel computes every step as the CPU op does (fixed-point resampling,
    the same rounded float products), so the outputs are bit-identical."""
    calls = sum(sim_ops.CALLS.values())
    want = A.apply(images, params)
    assert sum(sim_ops.CALLS.values()) == calls, "the reference ran through the simulator"
    got = _simulated(lambda: A.apply(images, params))
    assert torch.equal(got, want), f"{name}: {int((got != want).sum())} values differ, by up to {(got - want).abs().max():.3g}"


def _loss_and_grads(mode, dtype):
    q, k, lr, lc, scale, kw = make_case(mode, 150, 40, dtype, "cpu")
    loss, _ = ops.contrastive(ContrastiveProblem(q, k, lr, lc, scale, **kw), impl="fastcl")
    leaves = [q] if q is k else [q, k]
    return (loss, *torch.autograd.grad(loss.sum(), leaves))


@pytest.mark.parametrize("mode", ["supcon", "hard_negative"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_shuffled_thread_order_changes_no_bit_of_the_loss(mode, dtype):
    fixed = _simulated(lambda: _loss_and_grads(mode, dtype))
    shuffled = _simulated(lambda: _loss_and_grads(mode, dtype), seed=1234)
    for a, b in zip(fixed, shuffled):
        assert torch.equal(a, b)


def test_shuffled_thread_order_changes_no_bit_of_the_augmentation():
    name, images, params = next(c for c in _augment_cases() if c[0] == "byol-list")
    fixed = _simulated(lambda: A.apply(images, params))
    assert torch.equal(_simulated(lambda: A.apply(images, params), seed=99), fixed)
