"""The sigmoid loss (SigLIP) across processes without quadratic memory: the keys travel around the
ranks in a ring.

Rank r holds rows a_r and keys b_r (and their sample ids). In W steps the keys of every rank pass
through r: step k computes a_r against the keys of rank (r - k) mod W with the fused op (the
positives on the diagonal shifted by the two ranks' row offsets, so only the own chunk has them,
plus the pairs sharing a sample id), while the keys of the next step are already on the way
(isend/irecv posted before the compute). The forward keeps no logits; the backward sends the keys
round again, recomputes each chunk, and passes each chunk's key gradient on with the keys: the
gradient of rank s's keys starts at s, collects the contribution of every rank it visits and
arrives back at s after W hops, while the next chunk is computed. Per rank, memory is O(b x D)
(two key buffers, two gradient buffers) whatever the world size, and the result is exact: rank
r's value is (1 / M_r) sum over its rows of the losses against every rank's keys, as open_clip's
SigLipLoss computes it, and its gradients are those of the sum of all ranks' values (a key's
gradient comes from every rank), which is what one process computes on the global batch.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
from torch import Tensor

from . import ops

_KEYS, _IDS, _GRAD = 1, 2, 3  # message tags (gloo matches them; NCCL keeps each pair's order)


class Ring:
    """This rank's place in the ring and every rank's row count (checked to agree on ids and D)."""

    def __init__(self, rows: int, features: int, has_ids: bool, device: torch.device):
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        mine = torch.tensor([rows, features, int(has_ids)], dtype=torch.int64, device=device)
        everyone = [torch.empty_like(mine) for _ in range(self.world)]
        dist.all_gather(everyone, mine)
        info = [[int(v) for v in t] for t in everyone]
        if len({(d, h) for _, d, h in info}) != 1:
            raise ValueError("fastcl: every rank must pass features of one size and sample ids on all ranks or none; "
                             f"got (rows, features, has ids) per rank: {info}")
        self.counts = [n for n, _, _ in info]
        self.starts = [sum(self.counts[:r]) for r in range(self.world)]
        self.next, self.prev = (self.rank + 1) % self.world, (self.rank - 1) % self.world

    def source(self, step: int) -> int:
        """The rank whose keys this rank holds at a step."""
        return (self.rank - step) % self.world

    def offset(self, step: int) -> int:
        """Where the global diagonal lies in the chunk of a step: row i's positive is column i + offset."""
        return self.starts[self.rank] - self.starts[self.source(step)]

    def shift(self, sends: list, into: list, tag: int) -> "_Pending":
        """Sends each tensor to the next rank and receives one into each buffer of `into` from the
        previous rank, in one batch; returns at once."""
        sends = [t.contiguous() for t in sends]
        p2p = [dist.P2POp(dist.isend, t, self.next, tag=tag + 8 * i) for i, t in enumerate(sends)]
        p2p += [dist.P2POp(dist.irecv, t, self.prev, tag=tag + 8 * i) for i, t in enumerate(into)]
        return _Pending(dist.batch_isend_irecv(p2p), sends, into)


class _Pending:
    """Exchanges under way; the tensors being sent stay referenced until wait()."""

    def __init__(self, works: list, sent: list, received: list):
        self.works, self.sent, self.received = works, sent, received

    def wait(self) -> list:
        for work in self.works:
            work.wait()
        return self.received


class _PingPong:
    """Two receive buffers per tensor, each of the largest rank's rows, used in turn: a step receives
    into one while the other, received the step before, is computed on and sent on. The exchange
    that sent from a buffer has been waited for before the buffer receives again, and nothing else is
    allocated per step, so a rank's memory does not grow with the world size."""

    def __init__(self, like: list, ring: "Ring", dtype: Optional[torch.dtype] = None):
        rows = max(ring.counts)
        self.buffers = [[t.new_empty((rows,) + tuple(t.shape[1:]), dtype=dtype or t.dtype) for t in like]
                        for _ in range(2)]

    def into(self, step: int, rows: int) -> list:
        return [t[:rows] for t in self.buffers[step % 2]]


def _keys_of(b: Tensor, ids: Optional[Tensor]) -> list:
    return [b] if ids is None else [b, ids]


def _forward(ring: Ring, a: Tensor, b: Tensor, ids: Optional[Tensor], scale: Tensor, bias: Tensor, normalize: bool,
             forward) -> Tensor:
    keys, total = _keys_of(b, ids), None
    spare = _PingPong(keys, ring) if ring.world > 1 else None
    for step in range(ring.world):
        pending = None
        if step + 1 < ring.world:
            pending = ring.shift(keys, spare.into(step, ring.counts[ring.source(step + 1)]), _KEYS)
        key_ids = keys[1] if ids is not None else None
        loss = forward(a, keys[0], scale, bias, normalize, ids, key_ids, ring.offset(step))
        total = loss if total is None else total + loss
        if pending is not None:
            keys = pending.wait()
    return total


def _backward(ring: Ring, grad: Tensor, a: Tensor, b: Tensor, ids: Optional[Tensor], scale: Tensor, bias: Tensor,
              normalize: bool, backward) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    keys = _keys_of(b, ids)
    acc = scale.dtype  # key gradients travel in the loss dtype, so that bf16/fp16 keys lose nothing on the way
    grad_a, grad_scale, grad_bias = None, None, None
    spare = _PingPong(keys, ring) if ring.world > 1 else None
    grads = _PingPong([b], ring, acc) if ring.world > 1 else None
    inbound = None  # the pending receive of the gradient accumulated so far for the keys now held
    for step in range(ring.world):
        pending = None
        if step + 1 < ring.world:
            pending = ring.shift(keys, spare.into(step, ring.counts[ring.source(step + 1)]), _KEYS)
        key_ids = keys[1] if ids is not None else None
        ga, gb, gs, gt = backward(grad, a, keys[0], scale, bias, normalize, ids, key_ids, ring.offset(step))
        grad_a = ga.to(acc) if grad_a is None else grad_a.add_(ga)
        grad_scale = gs if grad_scale is None else grad_scale + gs
        grad_bias = gt if grad_bias is None else grad_bias + gt
        gb = gb.to(acc) if inbound is None else inbound.wait()[0].add_(gb)
        if ring.world == 1:
            return grad_a.to(a.dtype), gb.to(b.dtype), grad_scale, grad_bias
        # On to the next rank, which holds these keys at the next step; the last hop takes it home.
        inbound = ring.shift([gb], grads.into(step, ring.counts[ring.source(step + 1)]), _GRAD)
        if pending is not None:
            keys = pending.wait()
    grad_b = inbound.wait()[0]
    return grad_a.to(a.dtype), grad_b.to(b.dtype), grad_scale, grad_bias


class _SigLIPRing(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, scale, bias, ids, normalize, impl, global_mean):
        ring = Ring(a.shape[0], a.shape[1], ids is not None, a.device)
        # Each chunk's op divides by M_r; global_mean turns the sum into (W / B) * (sum of the row losses).
        ctx.factor = a.shape[0] * ring.world / sum(ring.counts) if global_mean else 1.0
        ctx.ring, ctx.kernels, ctx.normalize = ring, ops.siglip_kernels(a, impl), normalize
        ctx.save_for_backward(a, b, scale, bias, ids)
        loss = _forward(ring, a.detach(), b.detach().contiguous(), ids, scale.detach(), bias.detach(), normalize,
                        ctx.kernels[0])
        return loss * ctx.factor

    @staticmethod
    def backward(ctx, grad):
        a, b, scale, bias, ids = ctx.saved_tensors
        grad = (grad * ctx.factor).detach().contiguous()
        grads = _backward(ctx.ring, grad, a.detach(), b.detach().contiguous(), ids, scale.detach(), bias.detach(),
                          ctx.normalize, ctx.kernels[1])
        return (*(g if need else None for g, need in zip(grads, ctx.needs_input_grad)), None, None, None, None)


def siglip_ring(a: Tensor, b: Tensor, logit_scale: Tensor, logit_bias: Tensor, normalize: bool,
                sample_ids: Optional[Tensor] = None, *, impl: str = "auto", global_mean: bool = False) -> Tensor:
    """This rank's sigmoid loss against every rank's keys: (1 / M_r) sum over its rows a_r (M_r, D) and
    all ranks' keys b of softplus(-y z), as open_clip's SigLipLoss gives each rank; global_mean: (W / B)
    times that sum instead (B the global row count), so that the mean over ranks is the global batch's
    loss for uneven batches too. Positives are each row's own key (the global diagonal) and the keys
    sharing its sample id (ids (M_r,) on every rank or on none). Keys and their gradients travel around
    the ring (module docstring); every rank must call it. Gradients reach a, b, logit_scale and
    logit_bias; b's gradient sums every rank's contribution. logit_scale, logit_bias: 0-dim tensors of
    the loss dtype (fastcl.functional.siglip checks every argument)."""
    ids = None if sample_ids is None else sample_ids.contiguous()
    return _SigLIPRing.apply(a, b, logit_scale, logit_bias, ids, normalize, impl, global_mean)
