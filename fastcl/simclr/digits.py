"""The built-in ``digits`` dataset: scikit-learn's 1,797 UCI handwritten digits (8x8, shipped
inside the scikit-learn wheel) rendered into noisy 32x32 scenes, so that `make demo` trains on
real images without a download.

Raw digits are too easy (kNN on raw pixels scores about 98%), so each scene places one digit at
a random position and scale, in a random polarity (light on dark or dark on light), under
heavy pixel noise. Those nuisances dominate raw pixels and the features of an untrained network
(kNN well below 25% on both), while what two augmented views of a scene share is the digit.
The things that would let SimCLR tell scenes apart without looking at the digit are kept out:
every scene uses the same two grey levels (a per-scene colour pair is a shortcut SimCLR learns
first) and there is no clutter (strokes shared by both views are one too).

The test split holds different digits (different writers' samples), not only other renders.
Everything derives from a fixed seed, so the dataset is identical on every machine.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

TEST_FRACTION = 0.3
TRAIN_RENDERS = 4  # scenes per training digit
TEST_RENDERS = 1
LEVELS = (64.0, 192.0)  # the two grey levels; polarity picks which is the digit
NOISE_STD = 48.0  # pixel noise, in uint8 levels
SCALE = (0.375, 0.75)  # digit side as a fraction of the scene side (12-24 px at 32)
SEED = 20_26
VERSION = "1"  # of the scenes: bump whenever a change here renders other images (resume checks it)


def _sklearn_digits() -> tuple[Tensor, Tensor]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise ImportError("the digits dataset renders scikit-learn's load_digits: pip install scikit-learn "
                          "(or fastcl[demo])") from exc
    d = load_digits()
    return torch.tensor(d.images, dtype=torch.float32) / 16.0, torch.tensor(d.target, dtype=torch.int64)


def render(strokes: Tensor, renders: int, size: int, generator: torch.Generator) -> Tensor:
    """Scenes (renders * n, 3, size, size) uint8 from stroke masks (n, 8, 8) in [0, 1]: each
    render draws its own position, scale, polarity and noise."""
    masks = strokes.repeat(renders, 1, 1)[:, None]
    n = masks.shape[0]
    side = torch.empty(n).uniform_(*SCALE, generator=generator)  # digit side / scene side
    # The digit is padded by one zero pixel to 10x10 (so its edge fades out) and spans
    # [-0.8, 0.8] of the padded image's [-1, 1] coordinates; scene pixel u in [-1, 1] samples it at
    # (u - centre) * 0.8 / side, so the digit covers [centre - side, centre + side].
    centre = (torch.rand(n, 2, generator=generator) * 2 - 1) * (1 - side)[:, None]
    inv = 0.8 / side
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = inv
    theta[:, :, 2] = -centre * inv[:, None]
    grid = F.affine_grid(theta, (n, 1, size, size), align_corners=False)
    mask = F.grid_sample(F.pad(masks, (1, 1, 1, 1)), grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False)
    dark_digit = torch.rand(n, generator=generator) < 0.5
    low, high = LEVELS
    fg = torch.where(dark_digit, low, high)[:, None, None, None]
    bg = torch.where(dark_digit, high, low)[:, None, None, None]
    scene = bg + (fg - bg) * mask
    scene = scene + NOISE_STD * torch.randn((n, 3, size, size), generator=generator)
    return scene.round_().clamp_(0, 255).to(torch.uint8)


def split_indices(count: int) -> tuple[Tensor, Tensor]:
    """Indices of load_digits' samples in the train and test splits (disjoint)."""
    order = torch.randperm(count, generator=torch.Generator().manual_seed(SEED))
    n_test = int(count * TEST_FRACTION)
    return order[n_test:], order[:n_test]


def load(train: bool, size: int = 32) -> tuple[Tensor, Tensor]:
    """The train or test split: uint8 scenes (N, 3, size, size) and their digit labels (N,)."""
    if size < 8:
        raise ValueError(f"digits scenes need size >= 8, got {size}")
    strokes, labels = _sklearn_digits()
    pick = split_indices(len(labels))[0 if train else 1]
    renders = TRAIN_RENDERS if train else TEST_RENDERS
    generator = torch.Generator().manual_seed(SEED + (1 if train else 2))
    images = render(strokes[pick], renders, size, generator)
    return images, labels[pick].repeat(renders)
