"""benchmarks/gpu_siglip.py (the GPU check's SigLIP step) runs on the CPU at a tiny size: its eager
loss is open_clip's, fastcl's row names the path it took, a missing peer is a skipped row, and the
JSON holds every row."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[2]


def _module():
    spec = importlib.util.spec_from_file_location("gpu_siglip", REPO / "benchmarks" / "gpu_siglip.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_eager_loss_is_open_clips(tmp_path):
    gs = _module()
    a, b = (F.normalize(torch.randn(9, 5, dtype=torch.float64), dim=1) for _ in range(2))
    scale, bias = torch.tensor(10.0, dtype=torch.float64), torch.tensor(-10.0, dtype=torch.float64)
    from fastcl import functional

    torch.testing.assert_close(gs.eager(a, b, scale, bias), functional.siglip(a, b, scale, bias, normalize=False))
    out = tmp_path / "s.json"
    assert gs.main(["--device", "cpu", "--sizes", "32", "--dims", "8", "--repeats", "1", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["impl"] for r in rows] == list(gs.IMPLS)
    fast, eager = rows[0], rows[1]
    assert fast["path"] == "kernel" and abs(fast["loss"] - eager["loss"]) < 1e-4 * abs(eager["loss"])
    try:
        import siglip_kernel  # noqa: F401
    except ImportError:
        assert "not installed" in rows[2]["skipped"]
