"""A labels file: which of a folder's images carry a label, and their class, for semi-supervised
SimCLR on your own images (`fastcl simclr --data folder:DIR --labels FILE`) and for its evaluation
(`fastcl label-efficiency --data folder:DIR --labels FILE`).

The file is a CSV with the header `path,label` (other columns are ignored) and one line per
labelled image: its path relative to the split's folder (DIR/train, or DIR for a flat
ImageFolder), as in the ImageFolder (`cat/001.jpg`), and its class: the name of one of the
folder's class subfolders, or, where no class folder has a numeric name, the class's index in
their sorted order. Every image the file does not name is unlabelled. Each refusal names the file,
the line and what was expected: a labels file that is silently half-read trains something else."""

from __future__ import annotations

import csv
import hashlib
import io
import os
from dataclasses import dataclass

import torch
from torch import Tensor

from ..engine.files import read_error
from . import image_cache, labelled
from .data import ImageData

OPTION = "--labels"
HEADER = ("path", "label")


@dataclass(frozen=True)
class LabelsFile:
    """The labelled images a file names: their positions in the dataset and their classes."""

    path: str
    sha256: str  # of the file's bytes: a resumed run checks it trains on the same labels
    indices: Tensor  # int64 (L,)
    classes: Tensor  # int64 (L,)

    def fingerprint(self) -> dict:
        return dict(labels_file=self.path, labels_sha256=self.sha256)

    def loss_labels(self, data: ImageData) -> Tensor:
        """The semi-supervised labels vector of `data` (fastcl.simclr.labelled.with_own_labels)."""
        return labelled.with_own_labels(len(data), self.indices, self.classes, data.num_classes)

    def dataset_labels(self, data: ImageData) -> Tensor:
        """`data`'s labels with the file's classes at the images it names (where they may differ
        from the folder an image sits in, the file is what the user labelled)."""
        out = data.labels.clone()
        out[self.indices] = self.classes
        return out


def read(path: str, data: ImageData) -> LabelsFile:
    """The labels file at `path` for the training split `data` (a folder:DIR dataset)."""
    if data.folder is None:
        raise ValueError(f"{OPTION} {path!r} names images of a folder by their paths: it needs --data folder:DIR")
    try:
        with open(path, "rb") as f:
            raw = f.read()
        text = raw.decode("utf-8-sig")  # a spreadsheet's CSV often starts with a byte-order mark
    except (OSError, UnicodeDecodeError) as exc:
        raise read_error(OPTION, path, exc) from None
    rows = parse(text, path)
    source = data.folder["source"]
    if not rows:
        raise ValueError(f"{OPTION} {path!r} labels no image (only its header): the semi-supervised mode needs "
                         "labelled images of at least two classes; for unlabelled data train without --labels "
                         "(self-supervised)")
    indices = locate(rows, image_cache.read_paths(data.folder["cache"], data.folder["meta"]), source, path)
    classes = torch.tensor([class_index(label, data.classes, line, path) for line, _, label in rows],
                           dtype=torch.int64)
    named = sorted({data.classes[c] for c in classes.tolist()})
    if len(named) < 2:
        raise ValueError(f"{OPTION} {path!r} labels images of one class only ({named[0]!r}): the semi-supervised "
                         "mode needs labelled images of at least two classes (any number of each)")
    return LabelsFile(path, hashlib.sha256(raw).hexdigest(), indices, classes)


def parse(text: str, path: str) -> list[tuple[int, str, str]]:
    """(line number, path, label) of each labelled image; blank lines are skipped."""
    reader = csv.reader(io.StringIO(text))
    rows, columns = [], None
    try:
        for cells in reader:
            if not any(cell.strip() for cell in cells):
                continue
            if columns is None:
                columns = _columns(cells, reader.line_num, path)
                continue
            rows.append(_row(cells, columns, reader.line_num, path))
    except csv.Error as exc:
        raise ValueError(f"{OPTION} {path!r}, line {reader.line_num}: not CSV ({exc})") from None
    if columns is None:
        raise ValueError(f"{OPTION} {path!r} is empty: expected a CSV with the header 'path,label' and one line "
                         "per labelled image")
    return rows


def _columns(cells: list, line: int, path: str) -> tuple[int, int]:
    """Where the path and label columns are, from the header line."""
    names = [cell.strip().lower() for cell in cells]
    missing = [name for name in HEADER if name not in names]
    if missing:
        raise ValueError(f"{OPTION} {path!r}, line {line}: expected the header 'path,label' (a CSV whose first "
                         f"line names its columns), found {','.join(cells)!r}, without {' and '.join(missing)}")
    return names.index("path"), names.index("label")


def _row(cells: list, columns: tuple[int, int], line: int, path: str) -> tuple[int, str, str]:
    at_path, at_label = columns
    if len(cells) <= max(columns):
        raise ValueError(f"{OPTION} {path!r}, line {line}: expected {max(columns) + 1} columns (path and label), "
                         f"found {len(cells)}: {','.join(cells)!r}")
    image, label = cells[at_path].strip(), cells[at_label].strip()
    if not image or not label:
        raise ValueError(f"{OPTION} {path!r}, line {line}: empty {'path' if not image else 'label'} (a line per "
                         "labelled image, with its path and class; leave unlabelled images out)")
    return line, image, label


def locate(rows: list, paths: list[str], source: str, path: str) -> Tensor:
    """int64 (L,): the position in the dataset of each row's image; every path must be one of
    the folder's images, and named once."""
    position = {os.path.normpath(p): i for i, p in enumerate(paths)}
    seen, missing, found = {}, [], []
    for line, image, _ in rows:
        key = os.path.normpath(image)
        if os.path.isabs(key) and os.path.abspath(key).startswith(os.path.abspath(source) + os.sep):
            key = os.path.relpath(key, source)  # an absolute path inside the folder names the same image
        if key in seen:
            raise ValueError(f"{OPTION} {path!r}, line {line}: {image!r} is labelled twice (line {seen[key]} "
                             "too); each image takes one line")
        seen[key] = line
        if key not in position:
            missing.append(f"line {line}: {image!r}")
        else:
            found.append(position[key])
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        example = f" (such as {paths[0]!r})" if paths else ""
        raise ValueError(f"{OPTION} {path!r} names images that are not in the folder {source!r}: "
                         f"{'; '.join(missing[:3])}{more}. Paths are relative to that folder, as in an "
                         f"ImageFolder{example}")
    return torch.tensor(found, dtype=torch.int64)


def class_index(label: str, classes: tuple, line: int, path: str) -> int:
    """The class a label names: a class folder's name, or its index where no class folder has a
    numeric name (elsewhere "3" could mean the folder 3 or the fourth class)."""
    if label in classes:
        return classes.index(label)
    numeric_names = any(name.isdigit() for name in classes)
    if label.isdigit() and not numeric_names and int(label) < len(classes):
        return int(label)
    shown = ", ".join(repr(c) for c in classes[:10]) + (f" and {len(classes) - 10} more" if len(classes) > 10 else "")
    indices = "" if numeric_names else f", or an index 0 to {len(classes) - 1}"
    raise ValueError(f"{OPTION} {path!r}, line {line}: label {label!r} names no class of the folder; expected one "
                     f"of its class folders: {shown}{indices}")
