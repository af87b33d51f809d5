"""`fastcl speed` (and `make bench`): the fused NT-Xent loss next to the loss users write by hand, on random
embeddings: forward+backward time, peak extra memory and the largest difference."""

from __future__ import annotations

import torch

from .. import functional
from .._extension import build_info
from .baselines import nt_xent_naive
from .profiling import peak_memory_bytes, seconds_per_call


def _fmt_mb(n):
    return "n/a" if n is None else f"{n / 2**20:,.0f} MiB"


def run(sizes=(1024, 4096, 8192), dim: int = 128, repeats: int = 3, temperature: float = 0.5) -> int:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    info = build_info()
    print(f"fastcl {info['version']} ({info['source']} kernels: {', '.join(info.get('backends', []))}), "
          f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} CPU threads")
    print(f"NT-Xent forward+backward, D={dim}, fp32, temperature={temperature}\n")
    header = f"{'2N':>7} | {'naive time':>11} | {'fastcl time':>11} | {'speed-up':>8} | " \
             f"{'naive peak':>11} | {'fastcl peak':>11} | {'max |loss diff|':>15} | {'max |grad diff|':>15}"
    print(header)
    print("-" * len(header))
    for rows in sizes:
        g = torch.Generator().manual_seed(rows)
        z1, z2 = (torch.randn(rows // 2, dim, generator=g).to(device).requires_grad_() for _ in range(2))

        def step(loss_fn):
            z1.grad = z2.grad = None
            loss = loss_fn()
            loss.backward()
            return loss.detach(), z1.grad.clone()

        naive = lambda: step(lambda: nt_xent_naive(z1, z2, temperature))  # noqa: E731
        fused = lambda: step(lambda: functional.nt_xent(z1, z2, temperature=temperature))  # noqa: E731
        (loss_a, grad_a), (loss_b, grad_b) = naive(), fused()
        t_naive = seconds_per_call(naive, device, repeats)
        t_fused = seconds_per_call(fused, device, repeats)
        m_naive, m_fused = peak_memory_bytes(naive, device), peak_memory_bytes(fused, device)
        print(f"{rows:>7} | {t_naive * 1e3:>8.1f} ms | {t_fused * 1e3:>8.1f} ms | {t_naive / t_fused:>7.2f}x | "
              f"{_fmt_mb(m_naive):>11} | {_fmt_mb(m_fused):>11} | {float((loss_a - loss_b).abs()):>15.2e} | "
              f"{float((grad_a - grad_b).abs().max()):>15.2e}")
    return 0
