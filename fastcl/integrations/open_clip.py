"""open_clip's ClipLoss on fastcl's fused kernels: the same arguments, call and numbers (and
gradients, logit scale included), without the (N x N) logit matrices, for every combination of
local_loss and gather_with_grad that open_clip trains with; and its SigLipLoss, whose distributed
form passes the text features (and their gradients) around the ranks in a ring instead of keeping
every exchanged chunk's logits (fastcl.siglip_ring).

    # from open_clip import ClipLoss; from open_clip.loss import SigLipLoss
    from fastcl.integrations.open_clip import ClipLoss, SigLipLoss
    criterion = ClipLoss(local_loss=True, gather_with_grad=True, rank=rank, world_size=world_size)
    criterion = SigLipLoss()    # forward(image_features, text_features, logit_scale, logit_bias)
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from .. import _validate, distributed, functional, ops, translate
from ..problem import PairProblem


def _mean_ce(rows: Tensor, cols: Tensor, first_row: int, logit_scale: Tensor) -> Tensor:
    """Mean over rows i of cross-entropy(logit_scale * rows_i . cols, target first_row + i): the
    features are used as given, normalised by the model as open_clip expects."""
    loss, _ = ops.contrastive(translate.cross_entropy_rows(rows, cols, first_row, logit_scale))
    return loss.mean()


def _both_directions(image: Tensor, text: Tensor, logit_scale: Tensor) -> Tensor:
    """(image -> text + text -> image) / 2 over paired rows, in one pass over the logit tiles."""
    loss_i, loss_t = ops.contrastive_pair(PairProblem(image, text, logit_scale, normalize=False))
    return (loss_i.mean() + loss_t.mean()) / 2


class ClipLoss(nn.Module):
    """open_clip.ClipLoss (open_clip 3.x), fused.

    Args:
        local_loss: each rank's rows against every rank's columns (else every rank computes the
            whole global loss).
        gather_with_grad: gradients flow through the gathered features to every rank.
        cache_labels: accepted for compatibility (fastcl builds no label tensor to cache).
        rank, world_size: this process in the torch.distributed group (checked against it).
        use_horovod: not supported (a clear error).

    Call: ``criterion(image_features, text_features, logit_scale, logit_bias=None,
    output_dict=False)`` with features (N, D) normalised by the model and logit_scale the exp()
    of the model's parameter; returns the loss, or {"contrastive_loss": loss}.
    """

    def __init__(self, local_loss: bool = False, gather_with_grad: bool = False, cache_labels: bool = False,
                 rank: int = 0, world_size: int = 1, use_horovod: bool = False):
        super().__init__()
        if use_horovod:
            raise ValueError("fastcl's ClipLoss does not support use_horovod=True: run under torch.distributed "
                             "(torchrun), or use open_clip.ClipLoss for horovod")
        self.local_loss, self.gather_with_grad, self.cache_labels = local_loss, gather_with_grad, cache_labels
        self.rank, self.world_size, self.use_horovod = rank, world_size, use_horovod

    def _gathered(self, x: Tensor, counts: list) -> Tensor:
        if self.gather_with_grad:
            return distributed.gather(x, counts)
        everyone = distributed.gather(x.detach(), counts)
        if self.local_loss:
            return everyone  # open_clip gathers without grad and keeps no local copy here
        start = distributed.offset(counts)  # the local slice keeps its gradient
        return torch.cat([everyone[:start], x, everyone[start + x.shape[0]:]])

    def forward(self, image_features: Tensor, text_features: Tensor, logit_scale: Tensor,
                logit_bias: Optional[Tensor] = None, output_dict: bool = False):
        image = _validate.embeddings("image_features", image_features)
        text = _validate.embeddings("text_features", text_features)
        _validate.same_kind("text_features", text, "image_features", image)
        if text.shape[0] != image.shape[0]:
            raise ValueError(f"image_features and text_features must have the same batch size, got {image.shape[0]} "
                             f"and {text.shape[0]}")
        scale = torch.as_tensor(logit_scale, device=image.device).to(ops.loss_dtype(image.dtype)).reshape(())
        if self.world_size > 1:
            rank, world = distributed.rank_world()
            if (rank, world) != (self.rank, self.world_size):
                raise ValueError(f"ClipLoss(rank={self.rank}, world_size={self.world_size}) does not match the "
                                 f"torch.distributed group (rank {rank} of {world})")
            counts = [image.shape[0]] * world
            all_image, all_text = self._gathered(image, counts), self._gathered(text, counts)
            if self.local_loss:
                first = rank * image.shape[0]
                loss = (_mean_ce(image, all_text, first, scale) + _mean_ce(text, all_image, first, scale)) / 2
            else:
                loss = _both_directions(all_image, all_text, scale)
        else:
            loss = _both_directions(image, text, scale)
        if logit_bias is not None:  # a constant added to every logit leaves the softmax unchanged
            loss = loss + 0 * logit_bias.sum()
        return {"contrastive_loss": loss} if output_dict else loss


class SigLipLoss(nn.Module):
    """open_clip.loss.SigLipLoss (open_clip 3.x), fused: the same constructor, call, value and gradients
    (features, logit_scale and logit_bias), without the (N x N) logit matrix on the CPU.

    Args:
        cache_labels: accepted for compatibility (fastcl builds no label matrix to cache).
        rank, world_size: this process in the torch.distributed group (checked against it). With
            world_size > 1 each rank's loss is its image rows against every rank's text rows, as
            open_clip's, and the text gradients reach their owners: the same values and gradients.
        dist_impl: "bidir" (default), "shift", "reduce" or "gather", as open_clip; all four give the
            same result there, and here all run the ring (memory O(N x D) per rank whatever the world
            size, where open_clip's keep every exchanged chunk's N x N logits for the backward).

    Call: ``criterion(image_features, text_features, logit_scale, logit_bias, output_dict=False)``
    with features (N, D) normalised by the model, logit_scale the exp() of the model's parameter and
    logit_bias the model's bias (None: no bias); returns the loss, or {"contrastive_loss": loss}.
    """

    def __init__(self, cache_labels: bool = False, rank: int = 0, world_size: int = 1,
                 dist_impl: Optional[str] = None):
        super().__init__()
        self.cache_labels, self.rank, self.world_size = cache_labels, rank, world_size
        self.dist_impl = dist_impl or "bidir"
        if self.dist_impl not in ("bidir", "shift", "reduce", "gather"):
            raise ValueError(f"dist_impl must be 'bidir', 'shift', 'reduce' or 'gather', got {dist_impl!r}")

    def forward(self, image_features: Tensor, text_features: Tensor, logit_scale: Tensor,
                logit_bias: Optional[Tensor] = None, output_dict: bool = False):
        if self.world_size > 1:
            rank, world = distributed.rank_world()
            if (rank, world) != (self.rank, self.world_size):
                raise ValueError(f"SigLipLoss(rank={self.rank}, world_size={self.world_size}) does not match the "
                                 f"torch.distributed group (rank {rank} of {world})")
        # Equal batches on every rank (as open_clip's exchanges need): the global-mean share of a rank is
        # then exactly its own rows' mean, open_clip's value.
        loss = functional.siglip(image_features, text_features, logit_scale, logit_bias, normalize=False,
                                 gather_distributed=self.world_size > 1)
        return {"contrastive_loss": loss} if output_dict else loss
