"""The labelled part of a dataset when labels are scarce: which images carry their label (K per
class, drawn as `fastcl label-efficiency` draws them), and the labels vector of semi-supervised
SimCLR, where one fused NT-Xent call covers labelled and unlabelled images alike."""

from __future__ import annotations

import torch
from torch import Tensor


def draw_generator(draw: int) -> torch.Generator:
    """The generator of draw `draw` (0-based) of the labelled subset; `fastcl label-efficiency` uses
    the same, so a semi-supervised run can be evaluated on the very labels it trained with."""
    return torch.Generator().manual_seed(1000 * draw + 17)


def draw_subset(labels: Tensor, per_class, generator: torch.Generator) -> Tensor:
    """Indices of `per_class` random images of every class ("all": every image)."""
    classes = labels.unique()
    counts = torch.stack([(labels == c).sum() for c in classes])
    if per_class == "all":
        return torch.randperm(labels.shape[0], generator=generator)
    if per_class > int(counts.min()):
        raise ValueError(f"{per_class} labels per class is more than the smallest class has ({int(counts.min())} "
                         f"images of class {int(classes[counts.argmin()])})")
    picked = [torch.nonzero(labels == c).flatten()[torch.randperm(int(n), generator=generator)[:per_class]]
              for c, n in zip(classes, counts)]
    return torch.cat(picked)


def semi_supervised_labels(labels: Tensor, per_class: int, draw: int) -> Tensor:
    """int64 (N,): the class of each of the `per_class` x classes labelled images (draw `draw`), and
    for every other image a label of its own (num_classes + its index), so that in NT-Xent with
    labels (SupCon) a labelled image's positives are its other view and every view of its class's
    labelled images, and an unlabelled image's only positive is its other view (plain NT-Xent)."""
    classes = labels.unique()
    if classes.numel() < 2:
        raise ValueError("the semi-supervised mode (labelled_per_class > 0) needs labelled images of at least two "
                         f"classes; this data has {classes.numel()} class (a folder of unlabelled images): train "
                         "without labelled_per_class")
    subset = draw_subset(labels, per_class, draw_generator(draw))
    return with_own_labels(labels.shape[0], subset, labels[subset], int(labels.max()) + 1)


def with_own_labels(count: int, indices: Tensor, classes: Tensor, num_classes: int) -> Tensor:
    """int64 (count,): `classes` at `indices` (the labelled images), and for every other image i the
    label num_classes + i, which no other image has: its only positive in NT-Xent with labels is
    its other view. The one rule of both ways to name the labelled images (K per class, a file)."""
    out = num_classes + torch.arange(count, dtype=torch.int64)
    out[indices] = classes.to(torch.int64)
    return out
