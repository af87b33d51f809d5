"""fastcl's batched SimCLR augmentation vs torchvision.transforms.v2 applied per sample (the
DataLoader way) and vs kornia's batched AugmentationSequential with the same recipe.

    pytest benchmarks/bench_augment.py --benchmark-json=aug.json && python benchmarks/report.py aug.json

Throughput is output images (augmented views) per second; every implementation makes two views
of the same uint8 batch and returns float32."""

from __future__ import annotations

import pytest
import torch

from fastcl import augment as A

from common import HAS_CUDA

tv2 = pytest.importorskip("torchvision.transforms.v2")

RECIPES = {
    # name: (input size, output size, batch, fastcl recipe)
    "cifar": (32, 32, 512, lambda: A.SimCLRAugment.cifar(32)),
    "imagenet": (256, 224, 32, lambda: A.SimCLRAugment.imagenet(224)),
    # The same recipes with a random rotation (+-30 degrees) of half the views and of every view:
    # the CPU throughput against the rows above is what rotation costs.
    "cifar+rotate": (32, 32, 512, lambda: A.SimCLRAugment.cifar(32, rotate_p=0.5, degrees=30)),
    "cifar+rotate-all": (32, 32, 512, lambda: A.SimCLRAugment.cifar(32, rotate_p=1.0, degrees=30)),
    "imagenet+rotate": (256, 224, 32, lambda: A.SimCLRAugment.imagenet(224, rotate_p=0.5, degrees=30)),
    "imagenet+rotate-all": (256, 224, 32, lambda: A.SimCLRAugment.imagenet(224, rotate_p=1.0, degrees=30)),
}
VIEWS = 2
DEVICES = ["cpu"] + (["cuda"] if HAS_CUDA else [])


def _torchvision(recipe):
    aug = RECIPES[recipe][3]()
    steps = [tv2.RandomResizedCrop(aug.size, scale=aug.scale, ratio=aug.ratio, antialias=True),
             tv2.RandomHorizontalFlip(aug.flip_p[0])]
    if aug.rotate_p[0] > 0:
        steps.append(tv2.RandomApply([tv2.RandomRotation(aug.degrees, tv2.InterpolationMode.BILINEAR)],
                                     p=aug.rotate_p[0]))
    steps += [tv2.RandomApply([tv2.ColorJitter(aug.brightness, aug.contrast, aug.saturation, aug.hue)],
                              p=aug.jitter_p[0]),
              tv2.RandomGrayscale(aug.grayscale_p[0])]
    if aug.blur_p[0] > 0:
        steps.append(tv2.RandomApply([tv2.GaussianBlur(aug.blur_kernel, aug.blur_sigma)], p=aug.blur_p[0]))
    steps.append(tv2.ToDtype(torch.float32, scale=True))
    per_sample = tv2.Compose(steps)
    return lambda images: [torch.stack([per_sample(img) for img in images]) for _ in range(VIEWS)]


def _kornia(recipe, device):
    kornia = pytest.importorskip("kornia")
    K = kornia.augmentation
    aug = RECIPES[recipe][3]()
    steps = [K.RandomResizedCrop((aug.size, aug.size), scale=aug.scale, ratio=aug.ratio),
             K.RandomHorizontalFlip(p=aug.flip_p[0])]
    if aug.rotate_p[0] > 0:
        steps.append(K.RandomRotation(aug.degrees, p=aug.rotate_p[0]))
    steps += [K.ColorJitter(aug.brightness, aug.contrast, aug.saturation, aug.hue, p=aug.jitter_p[0]),
              K.RandomGrayscale(p=aug.grayscale_p[0])]
    if aug.blur_p[0] > 0:
        steps.append(K.RandomGaussianBlur((aug.blur_kernel, aug.blur_kernel), aug.blur_sigma, p=aug.blur_p[0]))
    pipeline = K.AugmentationSequential(*steps).to(device)
    return lambda images: [pipeline(images.float().div_(255)) for _ in range(VIEWS)]


def _fastcl(recipe):
    aug = RECIPES[recipe][3]()
    return lambda images: aug(images, views=VIEWS)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("recipe", list(RECIPES))
@pytest.mark.parametrize("impl", ["fastcl", "torchvision", "kornia"])
def test_augment(benchmark, provenance, impl, recipe, device):
    in_size, out_size, batch, _ = RECIPES[recipe]
    if device == "cuda":
        batch *= 16
    if impl == "torchvision":
        if device == "cuda":
            pytest.skip("per-sample torchvision is the CPU DataLoader baseline")
        batch = min(batch, 64)
    images = torch.randint(0, 256, (batch, 3, in_size, in_size), dtype=torch.uint8, device=device)
    run = {"fastcl": lambda: _fastcl(recipe), "torchvision": lambda: _torchvision(recipe),
           "kornia": lambda: _kornia(recipe, device)}[impl]()

    def step():
        out = run(images)
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    provenance(device, bench="augment", impl=impl, recipe=recipe, images_per_call=batch * VIEWS,
               in_size=in_size, out_size=out_size)
    benchmark.pedantic(step, rounds=3, iterations=1, warmup_rounds=1)
