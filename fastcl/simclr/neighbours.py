"""`fastcl neighbours`: what training changed, in one picture. For held-out query images (one per
class where it can), their nearest training images under the random-init encoder and under the
trained one; a green frame marks a neighbour of the query's class, red one of another."""

from __future__ import annotations


import torch

from ..engine import progress as heartbeat
from ..engine import runtime
from ..engine.export import check_folder
from . import evaluate, restore, retrieval


def _queries(labels: torch.Tensor, count: int, seed: int) -> list:
    """`count` held-out indices, cycling through the classes so the picture shows as many as it can."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(labels.shape[0], generator=g)
    picked, seen = [], set()
    for rounds in range(2):
        for i in order.tolist():
            if len(picked) == count:
                return picked
            if i not in picked and (rounds == 1 or int(labels[i]) not in seen):
                picked.append(i)
                seen.add(int(labels[i]))
    return picked


def write_neighbours(path: str, out: str | None = None, queries: int = 8, k: int = 5, spec: str | None = None,
                     device: str = "auto", seed: int = 0) -> str:
    """Writes the picture for a SimCLR checkpoint (default OUT: next to it, neighbours.png, or for
    another dataset neighbours-<data name>.png) and returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    heartbeat.note("loading the checkpoint and its data")
    state, train, test = restore.load_run_data(path, spec)
    out = out or retrieval.derived_output(path, "neighbours.png", state["config"]["data"], spec)
    check_folder(out)
    config = state["config"]
    if k > len(train):
        raise ValueError(f"k={k} is larger than the {len(train)} training images")
    dev = runtime.device(device)
    chosen = _queries(test.labels, min(queries, len(test)), seed)
    rows = {}
    channels = train.images.shape[1]
    for name, model in (("random-init", restore.build_model(config, in_channels=channels)),
                        ("trained", restore.build_model(config, state, channels))):
        encoder = model.encoder.to(dev)
        bank = torch.nn.functional.normalize(
            evaluate.encode(encoder, train.images, dev, what=f"the training images ({name} encoder)"), dim=1)
        query = torch.nn.functional.normalize(evaluate.encode(encoder, test.images[chosen], dev), dim=1)
        rows[name] = (query @ bank.T).topk(k, dim=1).indices
    heartbeat.note("drawing the picture")
    cols = 1 + 2 * k + 1
    fig, axes = plt.subplots(len(chosen), cols, figsize=(cols * 0.9, len(chosen) * 0.95), squeeze=False)

    def show(ax, image, colour=None):
        img = image.permute(1, 2, 0).numpy()
        ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None)
        ax.set_xticks([]), ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(colour is not None)
            if colour is not None:
                spine.set_edgecolor(colour), spine.set_linewidth(2.5)

    for r, q in enumerate(chosen):
        show(axes[r][0], test.images[q], "black")
        axes[r][k + 1].axis("off")
        for c in range(k):
            for offset, name in ((1, "random-init"), (k + 2, "trained")):
                j = int(rows[name][r, c])
                show(axes[r][offset + c], train.images[j], "tab:green" if train.labels[j] == test.labels[q] else "tab:red")
    axes[0][0].set_title("query", fontsize=8)
    axes[0][1 + k // 2].set_title(f"{k} nearest, random-init encoder", fontsize=8)
    axes[0][k + 2 + k // 2].set_title(f"{k} nearest, SimCLR-trained", fontsize=8)
    fig.tight_layout(pad=0.2)
    fig.savefig(out, dpi=60)
    plt.close(fig)
    return out
