"""`fastcl label-efficiency`: what self-supervised pre-training buys when labels are scarce. For
each label budget (labels per class) and several random draws of the labelled subset, the
held-out accuracy of (a) the same encoder architecture trained from scratch on the labels alone,
(b) a linear probe on the frozen SimCLR encoder, (c) the SimCLR encoder fine-tuned.

(a) and (c) train with the run's augmentation (one view per step), AdamW and a cosine schedule of
at least `steps` steps and at least MIN_EPOCHS passes over the labelled images, and keep the
weights that score best on a held-out part of the labelled subset (a fifth, at least one image
per class; with one label per class there is none to hold out, and the last weights count). The
schedule is long on purpose and early stopping picks the point, so that the baseline is not
undertrained; the test split is only ever used for the reported accuracy."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..augment import SimCLRAugment
from ..engine import progress as heartbeat
from ..engine import runtime
from ..engine.export import check_folder
from . import data, evaluate, restore, retrieval
from .labelled import draw_generator, draw_subset
from .config import augmentation

METHODS = ("supervised", "linear_probe", "fine_tune")
MIN_EPOCHS = 30
BATCH = 64


def parse_budgets(text: str) -> list:
    """"1,5,10,all" -> [1, 5, 10, "all"]."""
    budgets = []
    for item in str(text).split(","):
        item = item.strip()
        if item == "all":
            budgets.append("all")
        elif item.isdigit() and int(item) >= 1:
            budgets.append(int(item))
        else:
            raise ValueError(f"labels per class must be integers >= 1 or 'all', got {item!r}")
    return budgets


def split_holdout(idx: Tensor, labels: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """(fit, held-out) parts of a labelled subset: a fifth of each class held out (at least one
    image), none when a class has a single image."""
    fit, held = [], []
    for c in labels[idx].unique():
        members = idx[labels[idx] == c]
        members = members[torch.randperm(members.shape[0], generator=generator)]
        k = 0 if members.shape[0] < 2 else max(1, members.shape[0] // 5)
        held.append(members[:k])
        fit.append(members[k:])
    return torch.cat(fit), torch.cat(held)


class Classifier(nn.Module):
    def __init__(self, encoder: nn.Module, num_classes: int):
        super().__init__()
        self.encoder, self.head = encoder, nn.Linear(encoder.out_dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(x))


@torch.no_grad()
def accuracy(model: nn.Module, images: Tensor, labels: Tensor, device: torch.device, batch: int = 512) -> float:
    model.eval()
    hits = sum(int((model(images[i:i + batch].to(device).float().div_(255)).argmax(1).cpu()
                    == labels[i:i + batch]).sum()) for i in range(0, images.shape[0], batch))
    return hits / max(1, images.shape[0])


def train_classifier(model: Classifier, images: Tensor, labels: Tensor, fit: Tensor, held: Tensor,
                     augment: SimCLRAugment, device: torch.device, steps: int, lr: float, seed: int) -> Classifier:
    """AdamW with cosine decay for `steps` steps of augmented batches from `fit`, keeping the
    weights best on `held` (checked every steps/10)."""
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    g = torch.Generator().manual_seed(seed)
    g_aug = torch.Generator(device=device).manual_seed(seed)
    batch = min(BATCH, fit.shape[0])
    best, best_state = -1.0, None
    for step in range(steps):
        model.train()
        pick = fit[torch.randint(fit.shape[0], (batch,), generator=g)]
        views = augment(images[pick].to(device), views=1, generator=g_aug)
        loss = F.cross_entropy(model(views), labels[pick].to(device))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        heartbeat.count(step + 1, steps, "steps")
        if held.numel() and ((step + 1) % max(1, steps // 10) == 0 or step + 1 == steps):
            score = accuracy(model, images[held], labels[held], device)
            if score > best:
                best, best_state = score, {k: v.detach().clone() for k, v in model.state_dict().items()}
    if best_state is not None:
        model.load_state_dict(best_state)
    return model


def evaluate_budget(state: dict, train: data.ImageData, test: data.ImageData, per_class, draw: int,
                    device: torch.device, steps: int) -> dict:
    """The three accuracies for one label budget and one draw of the labelled subset."""
    config = state["config"]
    g = draw_generator(draw)
    subset = draw_subset(train.labels, per_class, g)
    fit, held = split_holdout(subset, train.labels, g)
    steps = max(steps, math.ceil(MIN_EPOCHS * fit.shape[0] / BATCH))
    augment = augmentation(config)
    channels, classes = train.images.shape[1], train.num_classes
    out = {}
    where = f"{per_class} labels/class, draw {draw + 1}"
    heartbeat.note(f"{where}: training a supervised model from scratch")
    scratch = Classifier(restore.build_model({**config, "seed": config["seed"] + draw + 1}, None, channels).encoder,
                         classes)
    out["supervised"] = accuracy(train_classifier(scratch, train.images, train.labels, fit, held, augment, device,
                                                  steps, 3e-3, draw), test.images, test.labels, device)
    encoder = restore.build_model(config, state, channels).encoder.to(device)
    f_train = evaluate.encode(encoder, train.images[subset], device, what=f"the labelled images ({where})")
    f_test = evaluate.encode(encoder, test.images, device, what=f"the held-out images ({where})")
    heartbeat.note(f"{where}: fitting the linear probe")
    out["linear_probe"] = evaluate.linear_probe(f_train, train.labels[subset], f_test, test.labels)
    heartbeat.note(f"{where}: fine-tuning the SimCLR encoder")
    tuned = Classifier(encoder, classes)  # encoding left the weights as loaded: fine-tuning starts from them
    out["fine_tune"] = accuracy(train_classifier(tuned, train.images, train.labels, fit, held, augment, device, steps,
                                                 1e-3, draw), test.images, test.labels, device)
    return out


def semi_supervised(checkpoint: str, state: dict, train: data.ImageData, test: data.ImageData, per_class,
                    draw: int, spec: str | None, device: str) -> float | None:
    """The semi-supervised column: the checkpoint's run trained again from scratch, its settings
    unchanged but for the `per_class` labels of draw `draw` in its loss (labelled_per_class; the
    very images the other columns are given), into RUN/semi-<K>-draw<d>, then a linear probe on
    its frozen encoder with those labels. None for "all" (every image labelled is SupCon, not
    semi-supervised)."""
    if per_class == "all":
        return None
    from .config import SimCLRConfig
    from .trainer import SimCLRTrainer

    names = {f.name for f in dataclasses.fields(SimCLRConfig)}
    settings = {k: v for k, v in state["config"].items() if k in names}
    where = os.path.join(os.path.dirname(os.path.abspath(checkpoint)), f"semi-{per_class}-draw{draw + 1}")
    settings.update(data=spec or settings["data"], labelled_per_class=per_class, labelled_draw=draw, out=where,
                    resume="no", overwrite=True, progress=False, device=device)
    heartbeat.note(f"{per_class} labels/class, draw {draw + 1}: semi-supervised pre-training into {where}")
    trainer = SimCLRTrainer(SimCLRConfig(**settings))
    trainer.train()
    subset = draw_subset(train.labels, per_class, draw_generator(draw))
    encoder = trainer.model.encoder
    f_train = evaluate.encode(encoder, train.images[subset], trainer.device, what="the labelled images")
    f_test = evaluate.encode(encoder, test.images, trainer.device, what="the held-out images")
    return evaluate.linear_probe(f_train, train.labels[subset], f_test, test.labels)


def run(checkpoint: str, budgets: Sequence = (1, 5, 10, "all"), draws: int = 3, steps: int = 1000,
        spec: str | None = None, device: str = "auto", out: str | None = None, echo=print,
        semi: bool = False) -> dict:
    """Every budget x draw; prints the table (mean and spread over draws) and writes it as JSON
    (default: label_efficiency.json next to the checkpoint; for another dataset
    label_efficiency-<data name>.json). semi: also the semi-supervised column (a pre-training run
    per budget and draw: `semi_supervised`)."""
    if draws < 1 or steps < 1:
        raise ValueError(f"draws and steps must be >= 1, got {draws} and {steps}")
    heartbeat.note("loading the checkpoint and its data")
    state, train, test = restore.load_run_data(checkpoint, spec)
    for b in budgets:  # refuse a budget before any training
        if b != "all":
            draw_subset(train.labels, b, torch.Generator().manual_seed(0))
    out = out or retrieval.derived_output(checkpoint, "label_efficiency.json", state["config"]["data"], spec)
    check_folder(out)
    dev = runtime.device(device)
    rows, methods = [], methods_of(semi)
    for b in budgets:
        runs = [evaluate_budget(state, train, test, b, d, dev, steps) for d in range(draws)]
        if semi:
            for d, r in enumerate(runs):
                r["semi_supervised"] = semi_supervised(checkpoint, state, train, test, b, d, spec, device)
        row = {"labels_per_class": b, "draws": runs}
        for m in methods:
            row[m] = _spread([r[m] for r in runs])
        rows.append(row)
        echo(format_row(row, methods))
    result = {"checkpoint": checkpoint, "data": spec or state["config"]["data"], "steps": steps, "rows": rows}
    with open(out, "w") as f:
        json.dump(result, f, indent=2)
    result["path"] = out
    return result


def methods_of(semi: bool) -> tuple:
    return METHODS + ("semi_supervised",) if semi else METHODS


def _spread(values: list) -> dict | None:
    """Mean and standard deviation over draws (None where the method does not apply)."""
    if any(v is None for v in values):
        return None
    t = torch.tensor(values, dtype=torch.float64)
    return {"mean": float(t.mean()), "std": float(t.std()) if len(values) > 1 else 0.0}


def header(methods: Sequence = METHODS) -> str:
    return f"{'labels/class':>12}  " + "  ".join(f"{m.replace('_', ' '):>18}" for m in methods)


def format_row(row: dict, methods: Sequence = METHODS) -> str:
    cells = "  ".join(f"{'-':>18}" if row[m] is None else f"{100 * row[m]['mean']:9.2f} ± {100 * row[m]['std']:5.2f}%"
                      for m in methods)
    return f"{str(row['labels_per_class']):>12}  {cells}"
