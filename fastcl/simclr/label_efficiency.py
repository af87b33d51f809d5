"""`fastcl label-efficiency`: what self-supervised pre-training buys when labels are scarce. For
each label budget (labels per class) and several random draws of the labelled subset, the
held-out accuracy of (a) the same encoder architecture trained from scratch on the labels alone,
(b) a linear probe on the frozen SimCLR encoder, (c) the SimCLR encoder fine-tuned.

(a) and (c) train with the run's augmentation (one view per step), AdamW and a cosine schedule of
at least `steps` steps and at least MIN_EPOCHS passes over the labelled images, and keep the
weights that score best on a held-out part of the labelled subset (a fifth, at least one image
per class; with one label per class there is none to hold out, and the last weights count). The
schedule is long on purpose and early stopping picks the point, so that the baseline is not
undertrained; the test split is only ever used for the reported accuracy.

With a labels file (`--data folder:DIR --labels FILE`, fastcl.simclr.labels_file) the labelled
subset is the file's images with the file's classes, in place of the drawn budgets."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..augment import SimCLRAugment
from ..engine import progress as heartbeat
from ..engine import runtime
from ..engine.export import check_folder
from . import data, evaluate, labels_file, restore, retrieval
from .labelled import draw_generator, draw_subset
from .labels_file import LabelsFile
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
                    device: torch.device, steps: int, subset: Tensor | None = None) -> dict:
    """The three accuracies for one label budget and one draw of the labelled subset (`subset`:
    the images a labels file names, whose classes `train.labels` holds; draws then differ in the
    held-out part and the seeds)."""
    config = state["config"]
    g = draw_generator(draw)
    subset = draw_subset(train.labels, per_class, g) if subset is None else subset
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
                    draw: int, spec: str | None, device: str, named: LabelsFile | None = None) -> float | None:
    """The semi-supervised column: the checkpoint's run trained again from scratch, its settings
    unchanged but for the `per_class` labels of draw `draw` in its loss (labelled_per_class; the
    very images the other columns are given), into RUN/semi-<K>-draw<d>, then a linear probe on
    its frozen encoder with those labels; with a labels file (`named`), its labels, into
    RUN/semi-file. None for "all" (every image labelled is SupCon, not semi-supervised)."""
    if per_class == "all":
        return None
    from .config import SimCLRConfig
    from .trainer import SimCLRTrainer

    names = {f.name for f in dataclasses.fields(SimCLRConfig)}
    settings = {k: v for k, v in state["config"].items() if k in names}
    name = "semi-file" if named is not None else f"semi-{per_class}-draw{draw + 1}"
    where = os.path.join(os.path.dirname(os.path.abspath(checkpoint)), name)
    pick = (dict(labels=named.path, labelled_per_class=0, labelled_draw=0) if named is not None else
            dict(labels=None, labelled_per_class=per_class, labelled_draw=draw))
    settings.update(data=spec or settings["data"], out=where, resume="no", overwrite=True, progress=False,
                    device=device, **pick)
    heartbeat.note(f"{per_class} labels/class, draw {draw + 1}: semi-supervised pre-training into {where}")
    trainer = SimCLRTrainer(SimCLRConfig(**settings))
    trainer.train()
    subset = draw_subset(train.labels, per_class, draw_generator(draw)) if named is None else named.indices
    encoder = trainer.model.encoder
    f_train = evaluate.encode(encoder, train.images[subset], trainer.device, what="the labelled images")
    f_test = evaluate.encode(encoder, test.images, trainer.device, what="the held-out images")
    return evaluate.linear_probe(f_train, train.labels[subset], f_test, test.labels)


def run(checkpoint: str, budgets: Sequence | None = None, draws: int = 3, steps: int = 1000,
        spec: str | None = None, device: str = "auto", out: str | None = None, echo=print,
        semi: bool = False, labels: str | None = None) -> dict:
    """Every budget x draw (budgets default: 1, 5, 10 and all labels per class); prints the table
    (mean and spread over draws) and writes it as JSON (default: label_efficiency.json next to the
    checkpoint; for another dataset label_efficiency-<data name>.json). semi: also the
    semi-supervised column (a pre-training run per budget and draw: `semi_supervised`). labels: a
    labels file (fastcl.simclr.labels_file) gives the labelled images instead of budgets: one row,
    "file", its draws differing in the held-out part and the seeds only."""
    if draws < 1 or steps < 1:
        raise ValueError(f"draws and steps must be >= 1, got {draws} and {steps}")
    if labels is not None and budgets is not None:
        raise ValueError(f"--labels {labels} names the labelled images and --labels-per-class draws them: give one")
    heartbeat.note("loading the checkpoint and its data")
    state, train, test = restore.load_run_data(checkpoint, _labels_spec(checkpoint, spec, labels))
    named = None
    if labels is not None:
        train, named, budgets = _with_labels_file(labels, train, test)
    budgets = (1, 5, 10, "all") if budgets is None else budgets
    for b in budgets:  # refuse a budget before any training
        if b not in ("all", "file"):
            draw_subset(train.labels, b, torch.Generator().manual_seed(0))
    out = out or retrieval.derived_output(checkpoint, _table_name(labels), state["config"]["data"], spec)
    check_folder(out)
    dev = runtime.device(device)
    rows, methods = [], methods_of(semi)
    for b in budgets:
        rows.append(_row(checkpoint, state, train, test, b, draws, steps, spec, device, dev, semi, named))
        echo(format_row(rows[-1], methods))
    result = {"checkpoint": checkpoint, "data": spec or state["config"]["data"], "steps": steps, "rows": rows}
    if labels is not None:
        result.update(labels_file=labels, labels_sha256=named.sha256)
    with open(out, "w") as f:
        json.dump(result, f, indent=2)
    result["path"] = out
    return result


def _row(checkpoint: str, state: dict, train, test, budget, draws: int, steps: int, spec, device: str,
         dev: torch.device, semi: bool, named: LabelsFile | None) -> dict:
    """One budget's row: every draw's accuracies, and their mean and spread per method."""
    subset = named.indices if named is not None else None
    runs = [evaluate_budget(state, train, test, budget, d, dev, steps, subset) for d in range(draws)]
    if semi:
        for d, r in enumerate(runs):
            # a labels file's run is the same for every draw: trained once
            r["semi_supervised"] = (runs[0]["semi_supervised"] if named is not None and d else
                                    semi_supervised(checkpoint, state, train, test, budget, d, spec, device, named))
    row = {"labels_per_class": budget, "draws": runs}
    if named is not None:
        row["labelled_images"] = int(named.indices.numel())
    for m in methods_of(semi):
        row[m] = _spread([r[m] for r in runs])
    return row


def _labels_spec(checkpoint: str, spec: str | None, labels: str | None) -> str | None:
    """`spec`, checked to be a folder where a labels file is given (it names a folder's images)."""
    if labels is None:
        return spec
    data_spec = spec or restore.load_run(checkpoint)["config"]["data"]
    if not data_spec.startswith("folder:"):
        raise ValueError(f"--labels {labels} names images of a folder by their paths: it needs --data folder:DIR "
                         f"(the data here is {data_spec!r})")
    return spec


def _with_labels_file(labels: str, train: data.ImageData, test: data.ImageData) -> tuple:
    """(the training split with the file's classes, the file, the one budget "file")."""
    if test.classes != train.classes:
        raise ValueError(f"--labels {labels}: the folder's training and held-out splits have other class folders "
                         f"({len(train.classes)} and {len(test.classes)}, not the same names); a label's class must "
                         "mean the same in both")
    named = labels_file.read(labels, train)
    return dataclasses.replace(train, labels=named.dataset_labels(train)), named, ["file"]


def _table_name(labels: str | None) -> str:
    if labels is None:
        return "label_efficiency.json"
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", os.path.splitext(os.path.basename(labels))[0]).strip("._") or "labels"
    return f"label_efficiency-labels_{stem}.json"


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
