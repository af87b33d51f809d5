"""Typed wrappers over torch.ops.fastcl.*, with their fake (shape) and autograd registrations.

`solve` is the one entry point the losses use: it runs the problem a loss was translated into
(fastcl.problem) with the compiled kernels when they are available and the pure-PyTorch path
otherwise (or when asked with impl="torch")."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import _extension, _torch_impl
from .problem import (POSITIVE_ONLY, ContrastiveProblem, LossProblem, PairProblem, check_meta, check_pair_meta,
                      check_siglip_meta, loss_dtype)

__all__ = ["POSITIVE_ONLY", "ContrastiveProblem", "LossProblem", "PairProblem", "contrastive", "contrastive_pair",
           "loss_dtype", "siglip", "siglip_kernels", "solve"]


def _register_contrastive() -> None:
    @torch.library.register_fake("fastcl::contrastive_forward")
    def _forward_fake(q, k, row_labels, col_labels, col_bias, col_bias_owner, row_ids, col_ids, logit_scale,
                      row_offset, exclude_self, normalize, constant_cols=0, hardness=0.0, hardness_mode=0):
        check_meta(ContrastiveProblem(q, k, row_labels, col_labels, logit_scale, col_bias, col_bias_owner, row_ids,
                                      col_ids))
        rows = q.new_empty((q.shape[0],), dtype=loss_dtype(q.dtype))
        return rows, torch.empty_like(rows), torch.empty_like(rows)

    @torch.library.register_fake("fastcl::contrastive_backward")
    def _backward_fake(grad_loss, q, k, row_labels, col_labels, col_bias, col_bias_owner, row_ids, col_ids,
                       logit_scale, lse, num_pos, row_offset, exclude_self, normalize, constant_cols=0, hardness=0.0,
                       hardness_mode=0):
        check_meta(ContrastiveProblem(q, k, row_labels, col_labels, logit_scale, col_bias, col_bias_owner, row_ids,
                                      col_ids))
        for t in (grad_loss, lse, num_pos):
            torch._check(t.dim() == 1 and t.shape[0] == q.shape[0],
                         lambda: f"fastcl: backward expects per-row tensors of shape ({q.shape[0]},)")
        return torch.empty_like(q), torch.empty_like(k), logit_scale.new_empty(())

    def _setup_context(ctx, inputs, output):
        problem = ContrastiveProblem.from_op(inputs[:9], inputs[9:])
        _, lse, num_pos = output
        ctx.save_for_backward(*problem.op_tensors(), lse, num_pos)
        ctx.scalars = problem.op_scalars()
        ctx.mark_non_differentiable(lse, num_pos)

    def _backward(ctx, grad_loss, _grad_lse, _grad_num_pos):
        *tensors, lse, num_pos = ctx.saved_tensors
        problem = ContrastiveProblem.from_op(tuple(tensors), ctx.scalars)
        need = ctx.needs_input_grad
        # Columns without a gradient cost no work: all of k when it needs none, else the constants.
        problem = problem._replace(constant_cols=problem.k.shape[0] if not need[1] else problem.constant_cols)
        grad_q, grad_k, grad_scale = torch.ops.fastcl.contrastive_backward(
            grad_loss.contiguous(), *problem.op_tensors(), lse, num_pos, *problem.op_scalars())
        return (grad_q if need[0] else None, grad_k if need[1] else None, None, None, None, None, None, None,
                grad_scale if need[8] else None, None, None, None, None, None, None)

    torch.library.register_autograd("fastcl::contrastive_forward", _backward, setup_context=_setup_context)


def _register_pair() -> None:
    @torch.library.register_fake("fastcl::contrastive_pair_forward")
    def _pair_forward_fake(a, b, logit_scale, normalize):
        check_pair_meta(PairProblem(a, b, logit_scale, normalize))
        rows = a.new_empty((a.shape[0],), dtype=loss_dtype(a.dtype))
        return rows, torch.empty_like(rows), torch.empty_like(rows), torch.empty_like(rows)

    @torch.library.register_fake("fastcl::contrastive_pair_backward")
    def _pair_backward_fake(grad_a, grad_b, a, b, logit_scale, lse_a, lse_b, normalize):
        return torch.empty_like(a), torch.empty_like(b), logit_scale.new_empty(())

    def _pair_setup_context(ctx, inputs, output):
        a, b, logit_scale, normalize = inputs
        _, lse_a, _, lse_b = output
        ctx.save_for_backward(a, b, logit_scale, lse_a, lse_b)
        ctx.normalize = normalize
        ctx.mark_non_differentiable(lse_a, lse_b)

    def _pair_backward(ctx, grad_loss_a, _grad_lse_a, grad_loss_b, _grad_lse_b):
        a, b, logit_scale, lse_a, lse_b = ctx.saved_tensors
        zeros = torch.zeros_like(lse_a)
        grad_a, grad_b, grad_scale = torch.ops.fastcl.contrastive_pair_backward(
            zeros if grad_loss_a is None else grad_loss_a.contiguous(),
            zeros if grad_loss_b is None else grad_loss_b.contiguous(), a, b, logit_scale, lse_a, lse_b, ctx.normalize)
        need = ctx.needs_input_grad
        return grad_a if need[0] else None, grad_b if need[1] else None, grad_scale if need[2] else None, None

    torch.library.register_autograd("fastcl::contrastive_pair_forward", _pair_backward,
                                    setup_context=_pair_setup_context)


def _register_siglip() -> None:
    @torch.library.register_fake("fastcl::siglip_forward")
    def _siglip_forward_fake(a, b, logit_scale, logit_bias, normalize, a_ids=None, b_ids=None, offset=0):
        check_siglip_meta(a, b, logit_scale, logit_bias, a_ids, b_ids)
        return a.new_empty((), dtype=loss_dtype(a.dtype))

    @torch.library.register_fake("fastcl::siglip_backward")
    def _siglip_backward_fake(grad_loss, a, b, logit_scale, logit_bias, normalize, a_ids=None, b_ids=None, offset=0):
        check_siglip_meta(a, b, logit_scale, logit_bias, a_ids, b_ids)
        torch._check(grad_loss.dim() == 0, lambda: "fastcl: siglip_backward's grad_loss must be 0-dim")
        return torch.empty_like(a), torch.empty_like(b), logit_scale.new_empty(()), logit_bias.new_empty(())

    def _siglip_setup_context(ctx, inputs, output):
        a, b, logit_scale, logit_bias, normalize, a_ids, b_ids, offset = inputs
        ctx.save_for_backward(a, b, logit_scale, logit_bias, a_ids, b_ids)
        ctx.normalize, ctx.offset = normalize, offset

    def _siglip_backward(ctx, grad_loss):
        a, b, logit_scale, logit_bias, a_ids, b_ids = ctx.saved_tensors
        grads = torch.ops.fastcl.siglip_backward(grad_loss.contiguous(), a, b, logit_scale, logit_bias, ctx.normalize,
                                                 a_ids, b_ids, ctx.offset)
        return (*(g if need else None for g, need in zip(grads, ctx.needs_input_grad)), None, None, None, None)

    torch.library.register_autograd("fastcl::siglip_forward", _siglip_backward, setup_context=_siglip_setup_context)
    _register_siglip_fused()


def _register_siglip_fused() -> None:
    """siglip_forward_backward: the loss and its gradients for grad_loss = 1 from one pass; its
    backward scales the saved gradients by grad_loss (the gradients' own outputs get none)."""
    @torch.library.register_fake("fastcl::siglip_forward_backward")
    def _fused_fake(a, b, logit_scale, logit_bias, normalize, a_ids=None, b_ids=None, offset=0):
        check_siglip_meta(a, b, logit_scale, logit_bias, a_ids, b_ids)
        acc = loss_dtype(a.dtype)
        return (a.new_empty((), dtype=acc), torch.empty_like(a, dtype=acc), torch.empty_like(b, dtype=acc),
                logit_scale.new_empty(()), logit_bias.new_empty(()))

    def _fused_setup_context(ctx, inputs, output):
        ctx.save_for_backward(*output[1:])
        ctx.dtypes = (inputs[0].dtype, inputs[1].dtype)
        ctx.mark_non_differentiable(*output[1:])

    def _fused_backward(ctx, grad_loss, *_unused):
        grads = [g * grad_loss for g in ctx.saved_tensors]
        grads[0], grads[1] = grads[0].to(ctx.dtypes[0]), grads[1].to(ctx.dtypes[1])
        return (*(g if need else None for g, need in zip(grads, ctx.needs_input_grad)), None, None, None, None)

    torch.library.register_autograd("fastcl::siglip_forward_backward", _fused_backward,
                                    setup_context=_fused_setup_context)


def _register_augment() -> None:
    @torch.library.register_fake("fastcl::augment")
    def _augment_fake(images, source_index, params, size, blur_kernel, mean, std, out_dtype, channels_last):
        channels = images[0].shape[1] if images[0].dim() == 4 else images[0].shape[0]
        out = images[0].new_empty((params.shape[0], channels, size, size), dtype=out_dtype)
        return out.contiguous(memory_format=torch.channels_last) if channels_last else out


if _extension.has_ops():
    _register_contrastive()
    _register_pair()
    _register_siglip()
    _register_augment()


def _use_torch(impl: str, like: Tensor, cuda_ops_warning: bool) -> bool:
    """Whether impl asks for (or falls back to) the pure-PyTorch path."""
    if impl not in ("auto", "fastcl", "torch"):
        raise ValueError(f"impl must be 'auto', 'fastcl' or 'torch', got {impl!r}")
    if impl == "fastcl":
        _extension.assert_has_ops()
    if impl == "auto" and like.is_cuda and not _extension.has_cuda_ops():
        if cuda_ops_warning:
            _extension.warn_once("fastcl was built without CUDA kernels; CUDA inputs use the pure-PyTorch path")
        return True
    return impl == "torch" or not _extension.has_ops()


def contrastive(problem: ContrastiveProblem, impl: str = "auto") -> tuple[Tensor, Tensor]:
    """(per-row loss, positive count) of a problem (semantics: csrc/README.md).

    impl: "auto" (compiled kernel when available), "fastcl" (compiled kernel, error if
    missing) or "torch" (the pure-PyTorch path, which materialises the logits)."""
    if _use_torch(impl, problem.q, cuda_ops_warning=True):
        return _torch_impl.contrastive(problem)
    loss, _lse, num_pos = torch.ops.fastcl.contrastive_forward(*problem.op_tensors(), *problem.op_scalars())
    return loss, num_pos


def contrastive_pair(problem: PairProblem, impl: str = "auto") -> tuple[Tensor, Tensor]:
    """Per-row losses of both directions of paired rows (CLIP's symmetric loss). One fused pass
    forms each logit tile once for both directions (csrc/README.md, contrastive_pair)."""
    if _use_torch(impl, problem.a, cuda_ops_warning=False):
        return _torch_impl.contrastive_pair(problem)
    loss_a, _, loss_b, _ = torch.ops.fastcl.contrastive_pair_forward(*problem)
    return loss_a, loss_b


# Training on the CPU takes siglip_forward_backward. CUDA inputs never do (their kernels are a forward
# and a backward), so the simulator's route (tests/sim/sim_ops.py), which runs the CUDA kernels on CPU
# tensors, turns it off while it stands in.
SIGLIP_FUSED_ON_CPU = True


def siglip(a: Tensor, b: Tensor, logit_scale: Tensor, logit_bias: Tensor, normalize: bool, impl: str = "auto",
           a_ids: Optional[Tensor] = None, b_ids: Optional[Tensor] = None, offset: int = 0) -> Tensor:
    """The sigmoid loss (SigLIP) of rows a (M, D) against columns b (L, D): (1 / M) sum over i, j of
    softplus(-y_ij (logit_scale * <a_i, b_j> + logit_bias)), y_ij = 1 if j == i + offset (none when out
    of range) or a_ids[i] == b_ids[j] >= 0, else -1; logit_scale and logit_bias 0-dim tensors of the loss
    dtype. The CPU kernel streams 256 x 256 tiles (when a gradient is wanted, the loss and the gradients
    in one pass: siglip_forward_backward); fp16/bf16 CUDA inputs with D <= 768 run the CUDA kernels
    (csrc/cuda/siglip_mma.cu), other CUDA inputs the chunked pure-PyTorch path."""
    args = (a, b, logit_scale, logit_bias, normalize, a_ids, b_ids, offset)
    if _siglip_uses_torch(a, impl):
        return _torch_impl.siglip(*args)
    if SIGLIP_FUSED_ON_CPU and not a.is_cuda and torch.is_grad_enabled() and any(t.requires_grad for t in args[:4]):
        # Training on the CPU: the gradients come from the forward's own pass over the tiles (three
        # matrix products, not a forward's one and a backward's three).
        return torch.ops.fastcl.siglip_forward_backward(*args)[0]
    return torch.ops.fastcl.siglip_forward(*args)


def siglip_kernels(like: Tensor, impl: str = "auto") -> tuple:
    """(forward, backward) without autograd, with the ops' signatures (siglip_forward(a, b, logit_scale,
    logit_bias, normalize, a_ids, b_ids, offset) -> loss; siglip_backward(grad_loss, ...) -> the four
    gradients): the compiled ops or the pure-PyTorch path, as ops.siglip picks. The distributed ring
    (fastcl.siglip_ring) calls them chunk by chunk."""
    if _siglip_uses_torch(like, impl):
        return _torch_impl.siglip_forward, _torch_impl.siglip_backward
    return torch.ops.fastcl.siglip_forward.default, torch.ops.fastcl.siglip_backward.default


def _siglip_uses_torch(a: Tensor, impl: str) -> bool:
    """The pure-PyTorch path: asked for, no compiled ops, or CUDA inputs the CUDA kernels do not take
    (no CUDA build; fp32, or D > 256: the chunked path, as impl="fastcl" says)."""
    use_torch = _use_torch(impl, a, cuda_ops_warning=False)
    if not a.is_cuda or use_torch:
        return use_torch
    if not _siglip_cuda_kernel_takes(a):
        if impl == "fastcl":
            raise NotImplementedError(
                f"fastcl: the SigLIP CUDA kernels take float16/bfloat16 rows with D <= {SIGLIP_CUDA_MAX_D} (got "
                f"{a.dtype}, D = {a.shape[-1]}); the others are issue 26's next increment: impl='auto' runs the "
                "chunked pure-PyTorch path on them")
        return True
    return False


SIGLIP_CUDA_MAX_D = 768  # kSiglipMaxD of csrc/cuda/siglip_host.cuh


def _siglip_cuda_kernel_takes(a: Tensor) -> bool:
    """fp16/bf16, D <= 256, and (for D > 128) a GPU whose blocks hold the kernels' 129 KiB of shared memory."""
    if a.dtype not in (torch.float16, torch.bfloat16) or a.dim() != 2 or a.shape[1] > SIGLIP_CUDA_MAX_D:
        return False
    if a.shape[1] <= 128:
        return True
    optin = getattr(torch.cuda.get_device_properties(a.device), "shared_memory_per_block_optin", None)
    return optin is None or optin >= 128 * 256 * 2 + 2 * 64 * 256 * 2 + 2 * 64 * 4 + 1024


def solve(problem: LossProblem, impl: str = "auto") -> tuple[Tensor, Tensor]:
    """(per-row loss, positive count) of a loss's problem: the mean of its parts' per-row losses
    (a pair problem counts its two directions), the positive count of the first part."""
    losses, num_pos = [], None
    for part in problem.parts:
        if isinstance(part, PairProblem):
            losses.extend(contrastive_pair(part, impl))
            num_pos = torch.ones_like(losses[-1]) if num_pos is None else num_pos
        else:
            loss, counts = contrastive(part, impl)
            losses.append(loss)
            num_pos = counts if num_pos is None else num_pos
    loss = losses[0] if len(losses) == 1 else sum(losses[1:], losses[0]) / len(losses)
    return loss, num_pos
