"""`fastcl plot RUN`: the loss and kNN accuracy curves of a training run, from its metrics.jsonl,
as RUN/curves.png."""

from __future__ import annotations

import json
import os


def plot_run(run_dir: str, out: str | None = None) -> str:
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no metrics.jsonl in {run_dir!r}; pass the --out folder of a training run")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError("fastcl plot needs matplotlib (pip install matplotlib)") from exc
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    steps = [r for r in records if r["kind"] == "step"]
    epochs = [r for r in records if r["kind"] == "epoch" and r.get("knn_top1") is not None]
    if not steps:
        raise ValueError(f"{path} holds no step records yet")
    fig, (ax_loss, ax_knn) = plt.subplots(1, 2, figsize=(10, 3.5))
    ax_loss.plot([r["step"] for r in steps], [r["loss"] for r in steps])
    ax_loss.set(xlabel="step", ylabel="NT-Xent loss", title="training loss")
    ax_knn.plot([r["epoch"] + 1 for r in epochs], [100 * r["knn_top1"] for r in epochs], marker="o")
    ax_knn.set(xlabel="epoch", ylabel="kNN top-1 (%)", title="kNN monitor")
    fig.tight_layout()
    out = out or os.path.join(run_dir, "curves.png")
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
