"""`fastcl plot RUN`: the loss and kNN accuracy curves of a training run, from its metrics.jsonl,
as RUN/curves.png."""

from __future__ import annotations

import os

from . import files
from .metrics import read_records


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
    records = read_records(path)
    if not any(r["kind"] == "step" for r in records):
        raise ValueError(f"{path} holds no step records yet")
    out = out or os.path.join(run_dir, "curves.png")
    plt.close(curves_figure(records, out))
    table = os.path.join(run_dir, "label_efficiency.json")
    if os.path.exists(table):
        plot_label_efficiency(table, os.path.join(os.path.dirname(out), "label_efficiency.png"))
    return out


def curves_figure(records: list, out: str):
    """The loss panel and the evaluation panel (SimCLR: kNN top-1 per epoch; SimCSE: dev Spearman),
    saved to `out`; a panel with no data says why in its middle. Returns the figure."""
    import matplotlib.pyplot as plt

    steps = [r for r in records if r["kind"] == "step"]
    simcse = any("sentences_per_s" in r or r["kind"] == "eval" for r in records)
    fig, (ax_loss, ax_eval) = plt.subplots(1, 2, figsize=(10, 3.5))
    ax_loss.plot([r["step"] for r in steps], [r["loss"] for r in steps])
    ax_loss.set(xlabel="step", ylabel="contrastive loss" if simcse else "NT-Xent loss", title="training loss")
    if simcse:
        evals = [r for r in records if r["kind"] == "eval" and r.get("dev_spearman") is not None]
        ax_eval.plot([r["step"] for r in evals], [r["dev_spearman"] for r in evals], marker="o")
        ax_eval.set(xlabel="step", ylabel="dev Spearman x 100", title="dev evaluation")
        empty = "no dev evaluation yet:\nnone of its --eval-steps reached"
    else:
        evals = [r for r in records if r["kind"] == "epoch" and r.get("knn_top1") is not None]
        ax_eval.plot([r["epoch"] + 1 for r in evals], [100 * r["knn_top1"] for r in evals], marker="o")
        ax_eval.set(xlabel="epoch", ylabel="kNN top-1 (%)", title="kNN monitor")
        empty = "no kNN evaluation yet:\nno epoch finished"
    for ax, has_data, note in ((ax_loss, bool(steps), "no step logged yet"), (ax_eval, bool(evals), empty)):
        if not has_data:
            ax.text(0.5, 0.5, note, transform=ax.transAxes, ha="center", va="center", color="0.4")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    return fig


def plot_label_efficiency(path: str, out: str) -> str:
    """Accuracy against labels per class (log scale), one line per method, spread over draws shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = files.read_json(path, "label-efficiency table")
    if not isinstance(table, dict) or not isinstance(table.get("rows"), list):
        raise ValueError(f"label-efficiency table {path!r} has no list of rows (not written by fastcl "
                         "label-efficiency?)")
    rows = table["rows"]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    xs = list(range(len(rows)))
    for method in ("supervised", "linear_probe", "fine_tune", "semi_supervised"):
        # a method the table lacks (no --semi-supervised) or a budget it does not apply to ("all") is left out
        points = [(x, r[method]) for x, r in zip(xs, rows) if r.get(method) is not None]
        if not points:
            continue
        at = [x for x, _ in points]
        mean = [100 * cell["mean"] for _, cell in points]
        std = [100 * cell["std"] for _, cell in points]
        ax.plot(at, mean, marker="o", label=method.replace("_", " "))
        ax.fill_between(at, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], alpha=0.2)
    ax.set_xticks(xs, [str(r["labels_per_class"]) for r in rows])
    ax.set(xlabel="labels per class", ylabel="held-out accuracy (%)", title="learning from scarce labels")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
