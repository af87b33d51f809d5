"""Rotation in the fused augmentation against torchvision.transforms.v2.functional.rotate
(bilinear, expand=False, fill) applied to the same resized crop, one sample at a time."""

from __future__ import annotations

import pytest
import torch

from fastcl import augment as A

import reference
from helpers import DEVICES, FLOAT_TOL, U8_TOL, random_images

pytest.importorskip("torchvision")
from torchvision.transforms.v2 import functional as TF  # noqa: E402

_images = random_images


def _check(images, params):
    got = A.apply(images, params)
    cpu = images.cpu() if isinstance(images, torch.Tensor) else [img.cpu() for img in images]
    want = reference.augment(cpu, params.to("cpu"))
    u8 = (images if isinstance(images, torch.Tensor) else images[0]).dtype == torch.uint8
    worst = (got.float().cpu() - want).abs().flatten(1).max(1).values
    tol = U8_TOL if u8 else FLOAT_TOL
    assert bool((worst <= tol).all()), f"samples {(worst > tol).nonzero().flatten().tolist()} off by up to {worst.max():.3g}"
    return got


def _row(h, w, angle, fill=(0.0, 0.0, 0.0), **cols):
    row = torch.zeros(A.NUM_PARAMS)
    row[A.HEIGHT], row[A.WIDTH] = h, w
    row[A.ORDER] = torch.arange(4.0)
    row[A.BRIGHTNESS] = row[A.CONTRAST] = row[A.SATURATION] = 1.0
    row[A.ANGLE] = angle
    row[A.FILL] = torch.tensor(fill)
    for name, value in cols.items():
        row[getattr(A, name)] = value
    return row


EDGE_ROWS = [
    _row(1, 1, 37.0),                                  # a single pixel blown up, then turned
    _row(2, 3, -61.0, fill=(1.0, 1.0, 1.0), TOP=5),    # a tiny crop, white corners
    _row(45, 37, 90.0), _row(45, 37, 180.0), _row(45, 37, 270.0), _row(45, 37, -90.0),  # quarter turns
    _row(45, 37, 360.0), _row(45, 37, 450.0), _row(45, 37, -180.0),                    # ... and their aliases
    _row(30, 30, 1e-3), _row(30, 30, -1e-4), _row(30, 30, 89.999), _row(30, 30, 179.5),  # near the fast paths
    _row(20, 30, 33.3, fill=(0.2, 0.5, 0.9), FLIP=1),   # the flip comes before the rotation
    _row(30, 20, -150.0, fill=(0.5, 0.5, 0.5), JITTER=1, BRIGHTNESS=1.4, CONTRAST=0.5, SATURATION=1.5, HUE=0.2,
         GRAY=1, SOLARIZE=1),                          # the colour ops see the filled corners
    _row(30, 30, 12.0, BLUR_SIGMA=1.5),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("size", [32, 7])
def test_edge_cases_match_torchvision(device, dtype, channels, size):
    table = torch.stack(EDGE_ROWS)
    params = A.AugmentParams(table, torch.zeros(len(EDGE_ROWS), dtype=torch.int64), size=size, blur_kernel=5)
    _check(_images(dtype, 1, channels, 45, 37, device), params)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize("channels", [3, 1])
def test_sampled_recipe_matches_torchvision(device, dtype, channels):
    aug = A.SimCLRAugment.imagenet(40, blur_kernel=5, rotate_p=0.75, degrees=180, fill=(0.1, 0.6, 0.3))
    params = aug.sample(16, (45, 37), generator=torch.Generator().manual_seed(1), views=2)
    assert float((params.table[:, A.ANGLE] != 0).float().mean()) > 0.5
    _check(_images(dtype, 16, channels, 45, 37, device), params)


@pytest.mark.parametrize("device", DEVICES)
def test_list_of_sizes(device):
    sizes = [(40, 52), (33, 33), (64, 21), (8, 9)]
    images = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8).to(device) for h, w in sizes]
    aug = A.SimCLRAugment(32, rotate_p=1.0, degrees=(-45, 45))
    _check(images, aug.sample(len(images), sizes, generator=torch.Generator().manual_seed(3), views=2))


def test_quarter_turns_are_exact_rot90():
    """90-degree multiples are pixel permutations (torch.rot90, counter-clockwise for positive
    angles), bit-exact for float images too."""
    images = _images(torch.float32, 1, 3, 16, 16, "cpu")
    for angle, k in ((90.0, 1), (180.0, 2), (270.0, 3), (-90.0, 3), (-270.0, 1)):
        params = A.AugmentParams(_row(16, 16, angle)[None], torch.zeros(1, dtype=torch.int64), size=16)
        assert torch.equal(A.apply(images, params)[0], torch.rot90(images[0], k, dims=(-2, -1))), angle
        assert torch.equal(A.apply(images, params)[0], TF.rotate(images[0], angle)), angle


def test_rotation_turns_the_content_and_fills_the_corners():
    """A bright square off-centre lands where torchvision puts it; the uncovered corners get the fill."""
    img = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    img[:, :, 4:10, 20:28] = 255
    params = A.AugmentParams(_row(32, 32, 45.0, fill=(1.0, 0.0, 0.0))[None], torch.zeros(1, dtype=torch.int64), 32)
    out = A.apply(img, params)[0]
    corner = out[:, 0, 0]
    assert corner.tolist() == [1.0, 0.0, 0.0]
    want = TF.rotate(img[0], 45.0, interpolation=TF.InterpolationMode.BILINEAR, fill=[255.0, 0.0, 0.0]).float() / 255
    assert (out - want).abs().max() <= U8_TOL


def test_sampling():
    aug = A.SimCLRAugment(32, rotate_p=(1.0, 0.25), degrees=(-10, 30), fill=0.5)
    n = 20000
    t = aug.sample(n, (40, 40), generator=torch.Generator().manual_seed(2), views=2).table
    first, second = t[:n, A.ANGLE], t[n:, A.ANGLE]
    assert float((first != 0).float().mean()) == 1.0
    assert abs(float((second != 0).float().mean()) - 0.25) < 0.02
    assert float(first.min()) >= -10 and float(first.max()) <= 30 and abs(float(first.mean()) - 10) < 0.5
    assert bool((t[:, A.FILL] == 0.5).all())
    assert A.SimCLRAugment(32, degrees=20).degrees == (-20.0, 20.0)


def test_recipes_without_rotation_keep_their_random_stream():
    """rotate_p=0 draws nothing more, so seeds of earlier runs give the same views."""
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    plain = A.SimCLRAugment(32).sample(8, (32, 32), generator=g1)
    A.SimCLRAugment(32, degrees=90).sample(8, (32, 32), generator=g2)
    assert bool((plain.table[:, A.ANGLE] == 0).all())
    assert torch.equal(torch.rand(4, generator=g1), torch.rand(4, generator=g2))


def _edited(**cols):
    return A.AugmentParams(_row(8, 8, 10.0, **cols)[None], torch.zeros(1, dtype=torch.int64), size=8)


@pytest.mark.parametrize("call,match", [
    (lambda: A.SimCLRAugment(32, degrees=200), "degrees"),
    (lambda: A.SimCLRAugment(32, degrees=-5), "degrees"),
    (lambda: A.SimCLRAugment(32, degrees=(30, -30)), "degrees"),
    (lambda: A.SimCLRAugment(32, degrees=(-190, 0)), "degrees"),
    (lambda: A.SimCLRAugment(32, degrees=(0, float("nan"))), "degrees"),
    (lambda: A.SimCLRAugment(32, rotate_p=2.0), "rotate_p"),
    (lambda: A.SimCLRAugment(32, fill=1.5), "fill"),
    (lambda: A.SimCLRAugment(32, fill=(0.0, 0.0)), "fill"),
    (lambda: A.apply(torch.zeros(1, 3, 8, 8), _edited(fill=(0.0, 2.0, 0.0))), "fill"),
    (lambda: A.apply(torch.zeros(1, 3, 8, 8), _edited(ANGLE=float("inf"))), "non-finite"),
])
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_the_op_refuses_a_non_finite_angle_or_a_fill_outside_0_1():
    """Called directly, below the Python checks: a clear error, never a read outside the image."""
    images = _images(torch.uint8, 1, 3, 8, 8, "cpu")
    for col, value, match in ((A.ANGLE, float("nan"), "angle"), (A.ANGLE, float("inf"), "angle"),
                              (A.FILL, 2.0, "fill")):
        row = _row(8, 8, 10.0)
        row[col] = value
        with pytest.raises(ValueError, match=match):
            torch.ops.fastcl.augment([images], torch.zeros(1, dtype=torch.int64), row[None], 8, 3, None, None,
                                     torch.float32, False)
