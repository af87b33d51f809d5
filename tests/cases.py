"""Argument sets of the contrastive core, one per loss it serves, on a chosen shape."""

from __future__ import annotations

import torch


def make_case(mode: str, n: int, d: int, dtype, device, temperature: float = 0.3):
    """Returns (q, k, kwargs) for fastcl.ops.contrastive / reference.contrastive; q and k are
    leaf tensors that require grad (the same tensor where the loss compares a set with itself)."""
    g = torch.Generator().manual_seed(n * 1000 + d)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)

    scale = torch.tensor(1.0 / temperature, dtype=torch.float64 if dtype == torch.float64 else torch.float32,
                         device=device)
    kw = dict(exclude_self=False, row_offset=0, normalize=True, col_bias=None, col_bias_owner=None)
    if mode in ("ntxent", "supcon", "unnormalized"):
        z = rand(2 * n, d).requires_grad_()
        labels = torch.arange(n).repeat(2) if mode != "supcon" else torch.randint(0, 3, (2 * n,), generator=g)
        labels = labels.to(device)
        kw.update(exclude_self=True, normalize=mode != "unnormalized")
        return z, z, labels, labels, scale, kw
    if mode == "row_offset":
        k = rand(3 * n, d).requires_grad_()
        labels = torch.arange(n).repeat(3).to(device)
        q = rand(n, d).requires_grad_()
        kw.update(exclude_self=True, row_offset=n)
        return q, k, labels[n:2 * n], labels, scale, kw
    q = rand(n, d).requires_grad_()
    rows = torch.arange(n, device=device)
    if mode == "infonce":
        return q, rand(n, d).requires_grad_(), rows, rows, scale, kw
    if mode in ("hard_negative", "column_bias"):
        k = rand(2 * n, d).requires_grad_()
        cols = torch.cat([rows, torch.full((n,), -1, device=device)])
        loss_dtype = scale.dtype
        bias = torch.cat([torch.zeros(n), torch.full((n,), 0.7)]).to(device=device, dtype=loss_dtype)
        kw.update(col_bias=bias if mode == "hard_negative" else torch.linspace(-1, 1, 2 * n, dtype=loss_dtype,
                                                                                  device=device))
        if mode == "hard_negative":
            kw.update(col_bias_owner=torch.cat([rows, rows]))
        return q, k, rows, cols, scale, kw
    raise ValueError(mode)


MODES = ["ntxent", "supcon", "unnormalized", "row_offset", "infonce", "hard_negative", "column_bias"]
