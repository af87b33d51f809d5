"""Typed wrappers over torch.ops.fastcl.*, with their fake (shape) and autograd registrations.

`contrastive` is the one entry point the losses use; it runs the compiled kernel when it is
available and the pure-PyTorch reference otherwise (or when asked with impl="torch")."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import _extension, _torch_impl


# A column id that makes the column never a negative (csrc/common/contrastive_math.h).
POSITIVE_ONLY = _torch_impl.POSITIVE_ONLY


def loss_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _register() -> None:
    @torch.library.register_fake("fastcl::contrastive_forward")
    def _forward_fake(q, k, row_labels, col_labels, col_bias, col_bias_owner, row_ids, col_ids, logit_scale,
                      row_offset, exclude_self, normalize, constant_cols=0, hardness=0.0, hardness_mode=0):
        rows = q.new_empty((q.shape[0],), dtype=loss_dtype(q.dtype))
        return rows, torch.empty_like(rows), torch.empty_like(rows)

    @torch.library.register_fake("fastcl::contrastive_backward")
    def _backward_fake(grad_loss, q, k, row_labels, col_labels, col_bias, col_bias_owner, row_ids, col_ids,
                       logit_scale, lse, num_pos, row_offset, exclude_self, normalize, constant_cols=0, hardness=0.0,
                       hardness_mode=0):
        return torch.empty_like(q), torch.empty_like(k), logit_scale.new_empty(())

    def _setup_context(ctx, inputs, output):
        q, k, row_labels, col_labels, col_bias, col_bias_owner, row_ids, col_ids, logit_scale, row_offset, \
            exclude_self, normalize, constant_cols, hardness, hardness_mode = inputs
        _, lse, num_pos = output
        ctx.save_for_backward(q, k, row_labels, col_labels, col_bias, col_bias_owner, row_ids, col_ids,
                              logit_scale, lse, num_pos)
        ctx.args = (row_offset, exclude_self, normalize)
        ctx.constant_cols, ctx.hardness = constant_cols, (hardness, hardness_mode)
        ctx.mark_non_differentiable(lse, num_pos)

    def _backward(ctx, grad_loss, _grad_lse, _grad_num_pos):
        q, k, row_labels, col_labels, col_bias, col_bias_owner, row_ids, col_ids, logit_scale, lse, num_pos = \
            ctx.saved_tensors
        need = ctx.needs_input_grad
        # Columns without a gradient cost no work: all of k when it needs none, else the constants.
        constant = k.shape[0] if not need[1] else ctx.constant_cols
        grad_q, grad_k, grad_scale = torch.ops.fastcl.contrastive_backward(
            grad_loss.contiguous(), q, k, row_labels, col_labels, col_bias, col_bias_owner, row_ids, col_ids,
            logit_scale, lse, num_pos, *ctx.args, constant, *ctx.hardness)
        return (grad_q if need[0] else None, grad_k if need[1] else None, None, None, None, None, None, None,
                grad_scale if need[8] else None, None, None, None, None, None, None)

    torch.library.register_autograd("fastcl::contrastive_forward", _backward, setup_context=_setup_context)

    @torch.library.register_fake("fastcl::contrastive_pair_forward")
    def _pair_forward_fake(a, b, logit_scale, normalize):
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

    @torch.library.register_fake("fastcl::augment")
    def _augment_fake(images, source_index, params, size, blur_kernel, mean, std, out_dtype, channels_last):
        channels = images[0].shape[1] if images[0].dim() == 4 else images[0].shape[0]
        out = images[0].new_empty((params.shape[0], channels, size, size), dtype=out_dtype)
        return out.contiguous(memory_format=torch.channels_last) if channels_last else out


if _extension.has_ops():
    _register()


def contrastive(
    q: Tensor,
    k: Tensor,
    row_labels: Tensor,
    col_labels: Tensor,
    logit_scale: Tensor,
    *,
    col_bias: Optional[Tensor] = None,
    col_bias_owner: Optional[Tensor] = None,
    row_ids: Optional[Tensor] = None,
    col_ids: Optional[Tensor] = None,
    row_offset: int = 0,
    exclude_self: bool = False,
    normalize: bool = True,
    constant_cols: int = 0,
    hardness: float = 0.0,
    hardness_mode: int = 0,
    impl: str = "auto",
) -> tuple[Tensor, Tensor]:
    """Per-row contrastive loss and positive count (semantics: csrc/README.md).

    row_ids (M,) / col_ids (L,) int64, both or neither: a pair that is not a positive leaves the
    denominator when the column id is POSITIVE_ONLY or equals the row's id >= 0.
    constant_cols: the last columns of k are constants (a queue): no gradient flows to them and
    the backward spends no work on theirs.
    hardness, hardness_mode: sentence-transformers' hardness penalty, hardness * dot (a constant in
    the backward) on the pairs the mode selects: 1 other rows' columns, 2 a row's own non-positive
    columns, 3 both; a column's row is col_bias_owner (-1: none), which then needs no col_bias.

    impl: "auto" (compiled kernel when available), "fastcl" (compiled kernel, error if
    missing) or "torch" (the pure-PyTorch reference, which materialises the logits)."""
    if impl not in ("auto", "fastcl", "torch"):
        raise ValueError(f"impl must be 'auto', 'fastcl' or 'torch', got {impl!r}")
    if impl == "fastcl":
        _extension.assert_has_ops()
    if impl == "auto" and q.is_cuda and not _extension.has_cuda_ops():
        _extension.warn_once("fastcl was built without CUDA kernels; CUDA inputs use the pure-PyTorch path")
        impl = "torch"
    if impl == "torch" or not _extension.has_ops():
        return _torch_impl.contrastive(q, k, row_labels, col_labels, logit_scale, col_bias=col_bias,
                                     col_bias_owner=col_bias_owner, row_ids=row_ids, col_ids=col_ids,
                                     row_offset=row_offset, constant_cols=constant_cols, hardness=hardness,
                                     hardness_mode=hardness_mode,
                                     exclude_self=exclude_self, normalize=normalize)
    loss, _lse, num_pos = torch.ops.fastcl.contrastive_forward(
        q, k, row_labels, col_labels, col_bias, col_bias_owner, row_ids, col_ids, logit_scale, row_offset,
        exclude_self, normalize, constant_cols, hardness, hardness_mode)
    return loss, num_pos


def contrastive_pair(a: Tensor, b: Tensor, logit_scale: Tensor, *, normalize: bool = True,
                     impl: str = "auto") -> tuple[Tensor, Tensor]:
    """Per-row losses of both directions of paired data (CLIP's symmetric loss): a_i against every
    b_j and b_j against every a_i, the positive on the diagonal; a and b (M, D). One fused pass
    forms each logit tile once for both directions (csrc/README.md, contrastive_pair)."""
    if impl not in ("auto", "fastcl", "torch"):
        raise ValueError(f"impl must be 'auto', 'fastcl' or 'torch', got {impl!r}")
    if impl == "fastcl":
        _extension.assert_has_ops()
    if impl == "auto" and a.is_cuda and not _extension.has_cuda_ops():
        impl = "torch"
    if impl == "torch" or not _extension.has_ops():
        return _torch_impl.contrastive_pair(a, b, logit_scale, normalize=normalize)
    loss_a, _, loss_b, _ = torch.ops.fastcl.contrastive_pair_forward(a, b, logit_scale, normalize)
    return loss_a, loss_b
