"""Gradient caching (fastcl.engine.grad_cache): parameter gradients equal one backward through a
graph that embedded the same chunks, dropout replayed, batch-norm statistics updated once."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fastcl
from fastcl.engine.grad_cache import GradCache, _chunk_bounds, grad_cache


def _mlp(dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Dropout(dropout), nn.Linear(16, 5)).double()


def _loss(z: torch.Tensor) -> torch.Tensor:
    n = z.shape[0] // 2
    return fastcl.nt_xent(z[:n], z[n:], temperature=0.3)


def _grads(model):
    return [p.grad.clone() for p in model.parameters()]


def _reference(model, x, chunk_size, seed):
    """One backward through a graph that embedded the same chunks in the same order."""
    model.zero_grad()
    torch.manual_seed(seed)
    z = torch.cat([model(x[a:b]) for a, b in _chunk_bounds(x.shape[0], chunk_size)])
    loss = _loss(z)
    loss.backward()
    return loss.detach(), _grads(model)


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 10, 64])
def test_equals_the_one_shot_step_without_randomness(chunk_size):
    model, x = _mlp(), torch.randn(20, 6, dtype=torch.float64)
    loss_one, grads_one = _reference(model, x, 20, seed=0)
    model.zero_grad()
    loss = grad_cache(model, x, _loss, chunk_size)
    torch.testing.assert_close(loss, loss_one, rtol=1e-12, atol=0)
    for g, ref in zip(_grads(model), grads_one):
        torch.testing.assert_close(g, ref, rtol=1e-9, atol=1e-12)


def test_dropout_masks_replay():
    model, x = _mlp(dropout=0.3), torch.randn(20, 6, dtype=torch.float64)
    model.train()
    loss_ref, grads_ref = _reference(model, x, 6, seed=5)
    after_ref = torch.rand(3)
    model.zero_grad()
    torch.manual_seed(5)
    loss = grad_cache(model, x, _loss, 6)
    torch.testing.assert_close(loss, loss_ref, rtol=1e-12, atol=0)
    for g, ref in zip(_grads(model), grads_ref):
        torch.testing.assert_close(g, ref, rtol=1e-9, atol=1e-12)
    assert torch.equal(torch.rand(3), after_ref)  # the RNG continues as after one pass


def test_a_learnable_temperature_gets_its_gradient():
    model, x = _mlp(), torch.randn(12, 6, dtype=torch.float64)
    t_ref = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    z = model(x)
    fastcl.nt_xent(z[:6], z[6:], temperature=t_ref).backward()
    t = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    grad_cache(model, x, lambda z: fastcl.nt_xent(z[:6], z[6:], temperature=t), 5)
    torch.testing.assert_close(t.grad, t_ref.grad, rtol=1e-9, atol=0)


def test_batch_norm_statistics_are_updated_once_per_chunk():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8)).double()
    twin = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8)).double()
    twin.load_state_dict(model.state_dict())
    x = torch.randn(12, 6, dtype=torch.float64)
    grad_cache(model, x, _loss, 4)
    for s in range(0, 12, 4):
        twin(x[s:s + 4])
    for name, buffer in model.named_buffers():
        torch.testing.assert_close(buffer, dict(twin.named_buffers())[name], rtol=1e-12, atol=0)


def test_dict_inputs_and_a_forward_function():
    """Tokenizer-style inputs: each chunk is a dict of row slices, passed as keyword arguments."""
    model = _mlp()
    x = torch.randn(10, 6, dtype=torch.float64)
    forward = lambda features, scale: model(features * scale)  # noqa: E731
    inputs = {"features": x, "scale": torch.full((10, 1), 2.0, dtype=torch.float64)}
    loss_one = _loss(model(2 * x))
    loss_one.backward()
    grads_one = _grads(model)
    model.zero_grad()
    grad_cache(model, inputs, _loss, 3, forward=forward)
    for g, ref in zip(_grads(model), grads_one):
        torch.testing.assert_close(g, ref, rtol=1e-9, atol=1e-12)


def test_the_gradient_scaler_scales_the_cached_gradient():
    model, x = _mlp(), torch.randn(8, 6, dtype=torch.float64)
    loss_one = _loss(model(x))
    loss_one.backward()
    grads_one = _grads(model)
    model.zero_grad()
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    grad_cache(model, x, _loss, 3, scaler=scaler)
    for g, ref in zip(_grads(model), grads_one):
        torch.testing.assert_close(g, 1024.0 * ref, rtol=1e-9, atol=1e-9)


def test_bad_use_is_a_clear_error():
    model, x = _mlp(), torch.randn(8, 6, dtype=torch.float64)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="chunk_size must be an int >= 1"):
            GradCache(model, bad)
    cache = GradCache(model, 3)
    with pytest.raises(RuntimeError, match="preceding embed"):
        cache.backward(torch.zeros((), requires_grad=True))
    cache.embed(x)
    with pytest.raises(RuntimeError, match="does not depend on the embeddings"):
        cache.backward(model(x).sum())
    with pytest.raises(ValueError, match="same batch size"):
        GradCache(model, 3).embed({"a": x, "b": x[:4]})
    with pytest.raises(ValueError, match=r"\(rows, D\) embeddings"):
        GradCache(nn.Flatten(0), 3).embed(x)


def test_chunks_are_near_equal_so_batch_norm_never_sees_one_row():
    assert _chunk_bounds(9, 4) == [(0, 3), (3, 6), (6, 9)]
    assert _chunk_bounds(10, 10) == [(0, 10)] and _chunk_bounds(7, 1) == [(i, i + 1) for i in range(7)]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8)).double()
    grad_cache(model, torch.randn(9, 6, dtype=torch.float64), _loss_odd, 4)  # 4 + 4 + 1 would fail in BN


def _loss_odd(z):
    return fastcl.nt_xent(z, labels=torch.arange(z.shape[0]) % 3, temperature=0.3)


def test_an_error_mid_step_leaves_consistent_state():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8)).double()
    calls = {"n": 0}

    def flaky(rows):
        calls["n"] += 1
        if calls["n"] == 5:  # the second chunk of the replay
            raise MemoryError("out of memory")
        return model(rows)

    cache = GradCache(model, 4, forward=flaky)
    z = cache.embed(torch.randn(12, 6, dtype=torch.float64))
    assert all(m.track_running_stats for m in model.modules() if isinstance(m, nn.BatchNorm1d))
    after = torch.get_rng_state()
    with pytest.raises(MemoryError):
        cache.backward(_loss(z))
    assert torch.equal(torch.get_rng_state(), after)  # not left at a replayed chunk's state
    with pytest.raises(RuntimeError, match="preceding embed"):
        cache.backward(_loss(z))  # the failed step cannot be half-replayed again
