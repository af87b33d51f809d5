"""fastcl.augment against torchvision.transforms.v2.functional applied one sample at a time."""

from __future__ import annotations

import pytest
import torch

from fastcl import augment as A

import reference
from helpers import DEVICES, FLOAT_TOL, U8_TOL, random_images

pytest.importorskip("torchvision")

_images = random_images


def _check(images, params, **kw):
    got = A.apply(images, params, **kw)
    cpu_images = images.cpu() if isinstance(images, torch.Tensor) else [img.cpu() for img in images]
    want = reference.augment(cpu_images, params.to("cpu"), **{k: v for k, v in kw.items() if k != "channels_last"})
    u8 = (images if isinstance(images, torch.Tensor) else images[0]).dtype == torch.uint8
    tol = U8_TOL if u8 else FLOAT_TOL
    if kw.get("mean") is not None:
        tol = tol / min(kw["std"])
    diff = (got.float().cpu() - want.float()).abs()
    worst = diff.flatten(1).max(1).values
    assert got.shape == want.shape
    assert bool((worst <= tol).all()), f"samples {(worst > tol).nonzero().flatten().tolist()} off by up to {worst.max():.3g}"
    return got


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("recipe", ["cifar", "imagenet", "byol"])
def test_matches_torchvision(device, dtype, channels, recipe):
    size = 32 if recipe == "cifar" else 40
    aug = getattr(A.SimCLRAugment, recipe)(size, **({} if recipe == "cifar" else {"blur_kernel": 5}))
    images = _images(dtype, 24, channels, 45, 37, device)
    g = torch.Generator().manual_seed(1)
    params = aug.sample(24, (45, 37), generator=g, views=2)
    _check(images, params)


def _row(h, w, **cols):
    row = torch.zeros(A.NUM_PARAMS)
    row[A.HEIGHT], row[A.WIDTH] = h, w
    row[A.ORDER] = torch.arange(4.0)
    row[A.BRIGHTNESS] = row[A.CONTRAST] = row[A.SATURATION] = 1.0
    for name, value in cols.items():
        row[getattr(A, name)] = value
    return row


EDGE_ROWS = [
    _row(1, 1),                                     # a single pixel blown up
    _row(1, 37, TOP=10),                            # a one-pixel-high sliver, full width
    _row(45, 1, LEFT=36),                           # a one-pixel-wide sliver at the right border
    _row(45, 37),                                   # the whole image
    _row(32, 32, TOP=13, LEFT=5),                   # no resize at all
    _row(32, 20, TOP=13, LEFT=17),                  # one axis unchanged, touching two borders
    _row(20, 30, JITTER=1, BRIGHTNESS=0.0, CONTRAST=2.0, SATURATION=2.0, HUE=0.5),
    _row(20, 30, JITTER=1, BRIGHTNESS=2.0, CONTRAST=0.0, SATURATION=0.0, HUE=-0.5, FLIP=1),
    _row(30, 20, JITTER=1, BRIGHTNESS=1.3, CONTRAST=0.6, SATURATION=1.4, HUE=0.1, GRAY=1, SOLARIZE=1),
    _row(30, 30, BLUR_SIGMA=2.0, FLIP=1),
    _row(30, 30, BLUR_SIGMA=0.1, SOLARIZE=1),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize("channels", [3, 1])
def test_edge_cases(device, dtype, channels):
    table = torch.stack(EDGE_ROWS)
    order = torch.tensor([[3, 1, 0, 2], [2, 0, 3, 1], [1, 3, 2, 0]], dtype=torch.float32)
    table[6:9, A.ORDER] = order
    params = A.AugmentParams(table, torch.zeros(len(EDGE_ROWS), dtype=torch.int64), size=32, blur_kernel=5)
    images = _images(dtype, 1, channels, 45, 37, device)
    _check(images, params)
    constant = torch.full_like(images, 200 if dtype == torch.uint8 else 0.8)
    _check(constant, params)


@pytest.mark.parametrize("device", DEVICES)
def test_list_of_sizes_equals_one_by_one(device):
    sizes = [(40, 52), (33, 33), (64, 21), (8, 9)]
    images = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8).to(device) for h, w in sizes]
    aug = A.SimCLRAugment(32)
    params = aug.sample(len(images), sizes, generator=torch.Generator().manual_seed(3), views=2)
    got = _check(images, params)
    for p in range(len(params)):
        one = A.AugmentParams(params.table[p:p + 1], torch.zeros(1, dtype=torch.int64), 32)
        src = int(params.source_index[p])
        torch.testing.assert_close(A.apply(images[src][None], one)[0], got[p], rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_output_dtypes_layouts_and_normalisation(device):
    images = _images(torch.uint8, 8, 3, 36, 36, device)
    params = A.SimCLRAugment(32).sample(8, (36, 36), generator=torch.Generator().manual_seed(4))
    mean, std = (0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)
    base = _check(images, params, mean=mean, std=std)
    for dtype in (torch.bfloat16, torch.float16):
        low = A.apply(images, params, mean=mean, std=std, dtype=dtype)
        assert low.dtype == dtype
        torch.testing.assert_close(low, base.to(dtype), rtol=0, atol=0)
    last = A.apply(images, params, mean=mean, std=std, channels_last=True)
    assert last.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(last, base, rtol=0, atol=0)


def _op(images, params, mean=None, std=None):
    """torch.ops.fastcl.augment called directly, below the Python wrapper's checks."""
    device = images.device
    as_tensor = (lambda v: None if v is None else torch.tensor(v, dtype=torch.float32, device=device))
    return torch.ops.fastcl.augment([images], params.source_index.to(device), params.table.to(device),
                                    params.size, params.blur_kernel, as_tensor(mean), as_tensor(std),
                                    torch.float32, False)


@pytest.mark.parametrize("device", DEVICES)
def test_op_takes_mean_and_std_each_on_its_own(device):
    """The op's contract does not depend on the wrapper pairing them: mean alone is std 1, std
    alone is mean 0 (the CUDA op used to dereference a missing std and drop a lone std)."""
    images = _images(torch.uint8, 4, 3, 20, 20, device)
    params = A.SimCLRAugment(16).sample(4, (20, 20), generator=torch.Generator().manual_seed(8))
    mean, std = (0.25, 0.5, 0.75), (0.5, 2.0, 4.0)
    plain = _op(images, params)
    torch.testing.assert_close(_op(images, params, mean=mean),
                               _op(images, params, mean=mean, std=(1.0, 1.0, 1.0)), rtol=0, atol=0)
    torch.testing.assert_close(_op(images, params, std=std),
                               _op(images, params, mean=(0.0, 0.0, 0.0), std=std), rtol=0, atol=0)
    assert not torch.equal(_op(images, params, std=std), plain)
    assert not torch.equal(_op(images, params, mean=mean), plain)


@pytest.mark.parametrize("device", DEVICES)
def test_op_rejects_mean_or_std_of_the_wrong_length(device):
    images = _images(torch.uint8, 2, 3, 12, 12, device)
    params = A.SimCLRAugment(8).sample(2, (12, 12), generator=torch.Generator().manual_seed(1))
    for kw in (dict(mean=(0.5,)), dict(std=(0.5, 0.5))):
        with pytest.raises(ValueError, match="one value per channel"):
            _op(images, params, **kw)


@pytest.mark.parametrize("device", DEVICES)
def test_uint8_contrast_mean_is_exact_on_large_images(device):
    """Contrast factor 0 replaces every pixel by the mean gray level, truncated to uint8. Here the
    mean is exactly 128 (the top half 255, the bottom half 1); here sixteen float partial sums of
    the levels pass 2^24 on the 255s, then drop the 1s and give 127 (the CPU op did, while the CUDA op
    summed exactly), so the mean must be accumulated exactly."""
    side = 1500
    images = torch.full((1, 1, side, side), 255, dtype=torch.uint8, device=device)
    images[:, :, side // 2:] = 1
    table = torch.zeros(1, A.NUM_PARAMS)
    table[0, A.HEIGHT] = table[0, A.WIDTH] = side
    table[0, A.JITTER] = 1
    table[0, A.ORDER] = torch.tensor([1.0, 0.0, 2.0, 3.0])  # contrast first; the others at factor 1 / hue 0
    table[0, A.BRIGHTNESS] = table[0, A.SATURATION] = 1
    table[0, A.CONTRAST] = 0.0
    one = A.AugmentParams(table.to(device), torch.zeros(1, dtype=torch.int64, device=device), side)
    out = _op(images, one)
    assert torch.equal(out, torch.full_like(out, 128 / 255)), f"levels: {sorted(set((out * 255).round().flatten().tolist()))[:5]}"


@pytest.mark.parametrize("device", DEVICES)
def test_views_and_reproducibility(device):
    images = _images(torch.uint8, 16, 3, 32, 32, device)
    aug = A.SimCLRAugment(32)
    v1, v2 = aug(images, views=2, generator=torch.Generator().manual_seed(5))
    w1, w2 = aug(images, views=2, generator=torch.Generator().manual_seed(5))
    assert v1.shape == v2.shape == (16, 3, 32, 32) and v1.dtype == torch.float32
    assert torch.equal(v1, w1) and torch.equal(v2, w2)
    assert not torch.equal(v1, v2)
    params = aug.sample(16, (32, 32), generator=torch.Generator().manual_seed(6))
    assert torch.equal(A.apply(images, params), A.apply(images, params))


@pytest.mark.parametrize("device", DEVICES)
def test_a_shard_gets_the_views_of_the_whole_batch(device):
    """Data-parallel ranks: images [first, first + B) of a global batch get the views they get
    when the whole batch is augmented at once with the same generator."""
    images = _images(torch.uint8, 12, 3, 32, 32, device)
    aug = A.SimCLRAugment(32)
    whole = aug(images, views=2, generator=torch.Generator().manual_seed(5))
    for first, count in ((0, 4), (4, 4), (8, 4), (3, 7)):
        part = aug(images[first:first + count], views=2, generator=torch.Generator().manual_seed(5),
                   shard=(first, 12))
        for view, full in zip(part, whole):
            assert torch.equal(view, full[first:first + count])


def test_sampled_parameters_follow_the_recipe():
    aug = A.SimCLRAugment.imagenet(224)
    n = 20000
    t = aug.sample(n, (300, 400), generator=torch.Generator().manual_seed(7)).table
    for col, p in ((A.FLIP, 0.5), (A.JITTER, 0.8), (A.GRAY, 0.2)):
        assert abs(float(t[:, col].mean()) - p) < 0.02
    assert abs(float((t[:, A.BLUR_SIGMA] > 0).float().mean()) - 0.5) < 0.02
    sigma = t[t[:, A.BLUR_SIGMA] > 0, A.BLUR_SIGMA]
    assert float(sigma.min()) >= 0.1 and float(sigma.max()) <= 2.0
    assert float(t[:, A.SOLARIZE].sum()) == 0
    area = t[:, A.HEIGHT] * t[:, A.WIDTH] / (300 * 400)
    assert float(area.min()) >= 0.07 and float(area.max()) <= 1.0
    assert bool((t[:, A.TOP] + t[:, A.HEIGHT] <= 300).all() and (t[:, A.LEFT] + t[:, A.WIDTH] <= 400).all())
    for col, lo, hi in ((A.BRIGHTNESS, 0.2, 1.8), (A.CONTRAST, 0.2, 1.8), (A.SATURATION, 0.2, 1.8), (A.HUE, -0.2, 0.2)):
        assert float(t[:, col].min()) >= lo and float(t[:, col].max()) <= hi
    assert torch.equal(t[:, A.ORDER].sort(dim=1).values, torch.arange(4.0).expand(n, 4))
    assert aug.blur_kernel == 23
    byol = A.SimCLRAugment.byol(224).sample(n, (256, 256), generator=torch.Generator().manual_seed(8), views=2).table
    assert abs(float((byol[:n, A.BLUR_SIGMA] > 0).float().mean()) - 1.0) < 0.001
    assert abs(float((byol[n:, A.BLUR_SIGMA] > 0).float().mean()) - 0.1) < 0.02
    assert abs(float(byol[n:, A.SOLARIZE].mean()) - 0.2) < 0.02 and float(byol[:n, A.SOLARIZE].sum()) == 0


def _edited(**cols):
    row = _row(8, 8, **cols)
    return A.AugmentParams(row[None], torch.zeros(1, dtype=torch.int64), size=8)


@pytest.mark.parametrize("call,exc,match", [
    (lambda: A.SimCLRAugment(0), ValueError, "size"),
    (lambda: A.SimCLRAugment(32, scale=(0.5, 0.1)), ValueError, "scale"),
    (lambda: A.SimCLRAugment(32, ratio=(0.0, 1.0)), ValueError, "ratio"),
    (lambda: A.SimCLRAugment(32, flip_p=1.5), ValueError, "flip_p"),
    (lambda: A.SimCLRAugment(32, grayscale_p=-0.1), ValueError, "grayscale_p"),
    (lambda: A.SimCLRAugment(32, hue=0.7), ValueError, "hue"),
    (lambda: A.SimCLRAugment(32, blur_kernel=4), ValueError, "blur_kernel"),
    (lambda: A.SimCLRAugment(32, mean=(0.5,)), ValueError, "mean and std"),
    (lambda: A.SimCLRAugment(32, mean=(0.5, 0.5), std=(0.2, 0.2)), ValueError, "one per channel"),  # at construction
    (lambda: A.SimCLRAugment(32, mean=(0.5, 0.5, 0.5), std=(0.2,)), ValueError, "same length"),
    (lambda: A.SimCLRAugment(32, mean=(0.5,) * 4, std=(0.2,) * 4), ValueError, "one per channel"),
    (lambda: A.SimCLRAugment(32, mean=(float("nan"),), std=(0.2,)), ValueError, "finite"),
    (lambda: A.SimCLRAugment(32, dtype=torch.int32), TypeError, "dtype"),
    (lambda: A.SimCLRAugment(32)(torch.zeros(3, 32, 32, dtype=torch.uint8)), ValueError, r"\(B, C, H, W\)"),
    (lambda: A.SimCLRAugment(32)(torch.zeros(2, 4, 32, 32, dtype=torch.uint8)), ValueError, "1 or 3 channels"),
    (lambda: A.SimCLRAugment(32)(torch.zeros(0, 3, 32, 32, dtype=torch.uint8)), ValueError, "batch_size|empty"),
    (lambda: A.SimCLRAugment(32)(torch.zeros(2, 3, 32, 32, dtype=torch.int32)), TypeError, "uint8 or floating"),
    (lambda: A.SimCLRAugment(32)([torch.zeros(3, 8, 8), torch.zeros(1, 8, 8)]), ValueError, "channels"),
    (lambda: A.SimCLRAugment(32)([]), ValueError, "empty|batch_size"),
    (lambda: A.SimCLRAugment(32)(torch.zeros(4, 3, 32, 32), shard=(6, 8)), ValueError, "outside the batch"),
    (lambda: A.SimCLRAugment(32)([torch.zeros(3, 8, 8)], shard=(0, 2)), ValueError, "batch tensor"),
    (lambda: A.apply(torch.zeros(2, 3, 32, 32), A.SimCLRAugment(32).sample(4, (32, 32))), ValueError,
     "another batch"),
    (lambda: A.apply(torch.zeros(2, 3, 16, 16), A.SimCLRAugment(32).sample(2, (32, 32))), ValueError, "crop box"),
    (lambda: A.apply(torch.zeros(1, 3, 8, 8), _edited(HUE=0.7)), ValueError, "hue"),
    (lambda: A.apply(torch.zeros(1, 3, 8, 8), _edited(BRIGHTNESS=-1.0)), ValueError, "jitter factors"),
    (lambda: A.apply(torch.zeros(1, 3, 8, 8), _edited(BLUR_SIGMA=float("nan"))), ValueError, "non-finite"),
    (lambda: A.apply(torch.zeros(1, 3, 8, 8), _edited(), mean=(0.5,), std=(0.0,)), ValueError, "std"),
])
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_and_compile(device):
    images = _images(torch.uint8, 4, 3, 20, 24, device)
    params = A.SimCLRAugment(16, blur_p=0.5, blur_kernel=3).sample(4, (20, 24), generator=torch.Generator().manual_seed(9),
                                                                   views=2)
    table, source = params.table.to(device), params.source_index.to(device)
    mean = torch.tensor([0.5, 0.4, 0.3], device=device)
    std = torch.tensor([0.2, 0.25, 0.3], device=device)
    for channels_last in (False, True):
        args = ([images], source, table, 16, 3, mean, std, torch.bfloat16, channels_last)
        torch.library.opcheck(torch.ops.fastcl.augment.default, args)
    torch._dynamo.reset()
    compiled = torch.compile(lambda imgs, src, tab: torch.ops.fastcl.augment(
        [imgs], src, tab, 16, 3, None, None, torch.float32, False) * 2, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(images, source, table), A.apply(images, params) * 2, rtol=0, atol=0)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_list_mixing_devices_is_rejected():
    images = [torch.zeros(3, 8, 8, dtype=torch.uint8), torch.zeros(3, 8, 8, dtype=torch.uint8, device="cuda")]
    with pytest.raises(ValueError, match="is on"):
        A.SimCLRAugment(8)(images)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: measures device memory")
def test_large_outputs_keep_scratch_bounded():
    """Outputs too large for shared memory work in a global scratch slot per block; the grid is
    capped so that those slots stay within 256 MiB (a full grid at 1024 pixels a side would take
    over a GiB, at 4096 many GB)."""
    images = torch.randint(0, 256, (300, 3, 8, 8), dtype=torch.uint8, device="cuda")
    params = A.SimCLRAugment(1024, blur_kernel=3).sample(300, (8, 8), generator=torch.Generator().manual_seed(2))
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    out = A.apply(images, params, dtype=torch.float16)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - before - out.numel() * out.element_size()
    assert extra <= 300 * 2**20, f"{extra / 2**20:.0f} MiB beside the output"
    assert bool(torch.isfinite(out).all())
