"""Gradient caching (Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under Memory
Limited Setup"): a contrastive step over a batch whose encoder activations do not fit in memory.

The loss couples every row with every other, so the batch cannot simply be split into
micro-batches with accumulated gradients. GradCache splits the encoder's work instead:

1. embed the batch in chunks without building the graph, keeping each chunk's RNG state;
2. run the loss on all embeddings at once (the fused loss needs O(rows x D) memory) and take
   its gradient with respect to the embeddings;
3. embed each chunk again with the graph, replaying its RNG state so dropout draws the same
   masks, and backpropagate that chunk's slice of the cached embedding gradient.

Peak memory is one chunk's activations plus the embeddings, for about one extra encoder forward
of compute. Parameter gradients equal those of one backward through a graph that embedded the
same chunks (exactly so without batch norm; batch norm normalises per chunk, as per-GPU BN
does per device). Under DDP only the last chunk's backward synchronises gradients.

    cache = fastcl.GradCache(model, chunk_size=64)
    z = cache.embed(images)                    # (B, D), no graph held
    loss = criterion(z[:n], z[n:])
    optimizer.zero_grad()
    cache.backward(loss)                       # parameter gradients, chunk by chunk
    optimizer.step()
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn

Inputs = Any  # a Tensor, a mapping of Tensors (tokenizer output) or a list/tuple of Tensors, batched in dim 0


def _rows(inputs: Inputs) -> int:
    if isinstance(inputs, Tensor):
        return inputs.shape[0]
    values = list(inputs.values()) if isinstance(inputs, Mapping) else list(inputs)
    if not values or not all(isinstance(v, Tensor) for v in values):
        raise TypeError("inputs must be a Tensor, or a non-empty mapping / list / tuple of Tensors")
    sizes = {v.shape[0] for v in values}
    if len(sizes) != 1:
        raise ValueError(f"all input tensors must have the same batch size (dim 0), got sizes {sorted(sizes)}")
    return sizes.pop()


def _slice(inputs: Inputs, start: int, stop: int) -> Inputs:
    if isinstance(inputs, Tensor):
        return inputs[start:stop]
    if isinstance(inputs, Mapping):
        return {k: v[start:stop] for k, v in inputs.items()}
    return type(inputs)(v[start:stop] for v in inputs)


def call_forward(forward: Callable, chunk: Inputs) -> Tensor:
    """forward(**chunk) for a mapping (tokenizer output), else forward(chunk)."""
    return forward(**chunk) if isinstance(chunk, Mapping) else forward(chunk)


class _RngState:
    """The CPU and CUDA generators' states at one moment, to replay a chunk's randomness."""

    def __init__(self):
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)


@contextlib.contextmanager
def _running_stats_frozen(model: nn.Module):
    """Batch norm in training mode without updating its running statistics: the graph-free pass
    normalises each chunk as the replay will, and only the replay updates the statistics (once).
    Leaving the buffers untouched also keeps what DDP broadcast into them."""
    frozen = [m for m in model.modules()
              if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats]
    for module in frozen:
        module.track_running_stats = False
    try:
        yield
    finally:
        for module in frozen:
            module.track_running_stats = True


def _chunk_bounds(rows: int, chunk_size: int) -> list[tuple[int, int]]:
    """ceil(rows / chunk_size) chunks of near-equal size (at most chunk_size rows each), so the
    last chunk is never a sliver that batch norm cannot normalise."""
    count = -(-rows // chunk_size)
    base, extra = divmod(rows, count)
    bounds, start = [], 0
    for i in range(count):
        stop = start + base + (i < extra)
        bounds.append((start, stop))
        start = stop
    return bounds


class GradCache:
    """One gradient-cached step: `embed(inputs)`, a loss on what it returned, `backward(loss)`.

    Args:
        model: the encoder (nn.Module, or DDP around one); its parameters get the gradients.
        chunk_size: the most rows of `inputs` per encoder call (>= 1); the rows are cut into
            ceil(rows / chunk_size) near-equal chunks. A chunk_size of at least the batch is the
            one-shot step.
        forward: what embeds a chunk, default `model` (called as forward(**chunk) for mapping inputs,
            e.g. tokenizer output, else forward(chunk)); it must return (rows, D) embeddings.
        autocast: a context-manager factory wrapped around every forward (e.g. the trainer's AMP).
    """

    def __init__(self, model: nn.Module, chunk_size: int, *, forward: Optional[Callable] = None,
                 autocast: Optional[Callable[[], contextlib.AbstractContextManager]] = None):
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}")
        self.model, self.chunk_size = model, chunk_size
        self.forward = forward or model
        self.autocast = autocast or contextlib.nullcontext
        self._chunks: Optional[list] = None
        self._embeddings: Optional[Tensor] = None

    def embed(self, inputs: Inputs) -> Tensor:
        """All rows' embeddings, computed chunk by chunk without a graph; the result is a leaf
        that requires grad, so a loss on it can be differentiated with respect to it."""
        rows = _rows(inputs)
        if rows < 1:
            raise ValueError("inputs hold no rows")
        self._chunks, self._embeddings = None, None
        chunks, parts = [], []
        with torch.no_grad(), _running_stats_frozen(self.model):
            for start, stop in _chunk_bounds(rows, self.chunk_size):
                chunk = _slice(inputs, start, stop)
                state = _RngState()
                with self.autocast():
                    part = call_forward(self.forward, chunk)
                if part.dim() != 2 or part.shape[0] != stop - start:
                    raise ValueError(f"forward must return (rows, D) embeddings for a chunk of {stop - start} rows, "
                                     f"got shape {tuple(part.shape)}")
                chunks.append((chunk, state))
                parts.append(part)
        self._after = _RngState()
        self._chunks = chunks
        self._embeddings = torch.cat(parts).detach().requires_grad_()
        return self._embeddings

    def backward(self, loss: Tensor, scaler: Optional[torch.amp.GradScaler] = None) -> None:
        """Backpropagates `loss` (a function of the last `embed` result) into the model's
        parameters: the loss's gradient with respect to the embeddings, then each chunk again
        with the graph. `scaler`: an AMP GradScaler whose scale the loss takes, as scaler.scale(loss)."""
        if self._chunks is None:
            raise RuntimeError("GradCache.backward needs a preceding embed() of the same batch")
        embeddings = self._embeddings
        (scaler.scale(loss) if scaler is not None else loss).backward()
        if embeddings.grad is None:
            self._chunks, self._embeddings = None, None
            raise RuntimeError("the loss does not depend on the embeddings that embed() returned")
        self.replay(embeddings.grad)

    def replay(self, grad: Tensor) -> None:
        """Runs each chunk of the last `embed` again with the graph and backpropagates its slice of
        `grad`, the gradient with respect to the embeddings (what `backward` does after the loss's
        backward; for callers that take that gradient themselves, e.g. from a hook on the loss)."""
        if self._chunks is None:
            raise RuntimeError("GradCache.replay needs a preceding embed() of the same batch")
        chunks, self._chunks, self._embeddings = self._chunks, None, None
        start = 0
        no_sync = getattr(self.model, "no_sync", None)  # DDP: all-reduce once, after the last chunk
        try:
            for i, (chunk, state) in enumerate(chunks):
                state.restore()
                last = i == len(chunks) - 1
                with (no_sync() if no_sync is not None and not last else contextlib.nullcontext()):
                    with self.autocast():
                        part = call_forward(self.forward, chunk)
                    part.backward(grad[start:start + part.shape[0]].to(part.dtype))
                start += part.shape[0]
        finally:
            self._after.restore()  # randomness continues as after the graph-free pass, even after an error


def grad_cache(model: nn.Module, inputs: Inputs, loss_fn: Callable[[Tensor], Tensor], chunk_size: int, *,
               forward: Optional[Callable] = None, scaler: Optional[torch.amp.GradScaler] = None,
               autocast: Optional[Callable[[], contextlib.AbstractContextManager]] = None) -> Tensor:
    """loss_fn(embeddings of `inputs`), backpropagated into `model` with the encoder run in chunks
    of `chunk_size` rows (see GradCache); returns the loss, detached. Call optimizer.zero_grad()
    before and optimizer.step() after, as around loss.backward()."""
    cache = GradCache(model, chunk_size, forward=forward, autocast=autocast)
    loss = loss_fn(cache.embed(inputs))
    cache.backward(loss, scaler=scaler)
    return loss.detach()
