"""GPU-side (and CPU) batch augmentation: the SimCLR recipe with per-sample random parameters.

    aug = fastcl.augment.SimCLRAugment(size=32)               # CIFAR recipe
    v1, v2 = aug(images, views=2, generator=g)                 # uint8 or float (B, C, H, W)
    params = aug.sample(batch_size=B, image_size=(H, W), generator=g)
    out = fastcl.augment.apply(images, params)                 # same params -> same output

Each output sample equals what torchvision.transforms.v2.functional gives for its parameters:
resized_crop (bilinear, antialiased) -> horizontal_flip -> rotate (bilinear, no expansion, fill)
-> colour jitter in the sampled order
(adjust_brightness / contrast / saturation / hue) -> rgb_to_grayscale(3 channels) ->
gaussian_blur -> solarize -> to_dtype(float, scale=True) -> normalize. The kernels fuse these
steps per sample (csrc/cpu/augment.cpp, csrc/common/augment_math.h)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
from torch import Tensor, nn

from . import _extension
from ._augment_options import check_degrees, check_fill, check_mean_std, check_probability, check_range

# Columns of a parameter row; the same layout as csrc/common/augment_math.h (ParamColumn).
TOP, LEFT, HEIGHT, WIDTH, FLIP, JITTER, BRIGHTNESS, CONTRAST, SATURATION, HUE = range(10)
ORDER = slice(10, 14)
GRAY, BLUR_SIGMA, SOLARIZE, ANGLE = 14, 15, 16, 17
FILL = slice(18, 21)
NUM_PARAMS = 21
JITTER_OPS = ("brightness", "contrast", "saturation", "hue")  # the values stored in ORDER

Images = Union[Tensor, Sequence[Tensor]]


@dataclass
class AugmentParams:
    """Per-sample parameters: output sample p is images[source_index[p]] transformed by table[p].

    table columns: top, left, height, width (crop box), flip, jitter, brightness, contrast,
    saturation, hue factors, the jitter order (4 op indices into JITTER_OPS), grayscale, blur
    sigma (0 = no blur), solarize, rotation angle (degrees counter-clockwise, 0 = none) and its
    fill per channel (in [0, 1] of full scale: 1.0 is 255 for uint8 images). Hand-craft, log or
    replay them freely."""

    table: Tensor  # (P, NUM_PARAMS) float32
    source_index: Tensor  # (P,) int64
    size: int
    blur_kernel: int = 3
    views: int = 1

    def to(self, device) -> "AugmentParams":
        return AugmentParams(self.table.to(device), self.source_index.to(device), self.size, self.blur_kernel,
                             self.views)

    def __len__(self) -> int:
        return self.table.shape[0]

    def shard(self, first: int, count: int) -> "AugmentParams":
        """The parameters of images [first, first + count) in every view, renumbered from 0: what
        one process of a data-parallel job applies to its share of the global batch (for
        parameters from `sample`, whose rows are view-major)."""
        batch = len(self) // self.views
        if not 0 <= first <= first + count <= batch:
            raise ValueError(f"shard [{first}, {first + count}) is outside the batch of {batch}")
        mine = torch.arange(first, first + count, device=self.table.device)
        rows = torch.cat([mine + v * batch for v in range(self.views)])
        return AugmentParams(self.table[rows], self.source_index[rows] - first, self.size, self.blur_kernel,
                             self.views)


class SimCLRAugment(nn.Module):
    """The SimCLR augmentation recipe with per-sample random parameters, on whole batches.

    Defaults are the CIFAR recipe (colour strength 0.5, no blur); ``SimCLRAugment.imagenet()``
    and ``SimCLRAugment.byol()`` give the ImageNet and BYOL recipes. Probabilities may be one
    value or one per view (BYOL's asymmetric views). Each output equals torchvision's v2
    functional ops applied to that sample with its parameters (AugmentParams).

    Args:
        size: output side in pixels. scale, ratio: random-resized-crop area fraction and aspect range.
        flip_p, jitter_p, grayscale_p, blur_p, solarize_p, rotate_p: per-view probabilities.
        strength: colour-jitter strength s (brightness, contrast, saturation 0.8 s, hue 0.2 s),
            unless brightness / contrast / saturation / hue are given.
        blur_sigma, blur_kernel: Gaussian blur sigma range and odd kernel size (default ~10% of size).
        degrees: rotation angle range, (min, max) within [-180, 180] or d for (-d, d), drawn
            uniformly like RandomRotation; the rotation follows the crop and flip, about the centre,
            bilinear, without expansion. fill: the value of the corners the rotation uncovers, in
            [0, 1] of full scale (0: black), one value or one per channel.
        mean, std: per-channel normalisation after scaling to [0, 1] (both or neither).
        dtype: float32, bfloat16 or float16 output; channels_last: output memory format.

    Call: ``aug(images, views=2, generator=g)`` with uint8 or float images (B, C, H, W) or a
    list of (C, H_i, W_i), on the CPU or a GPU; returns ``views`` tensors (B, C, size, size).

    Example::

        aug = fastcl.SimCLRAugment(size=32)
        g = torch.Generator(device="cuda").manual_seed(0)
        v1, v2 = aug(images.cuda(), views=2, generator=g)     # images: uint8 (B, 3, 32, 32)
    """

    def __init__(self, size: int = 32, *, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), flip_p=0.5, jitter_p=0.8,
                 strength: float = 0.5, brightness: Optional[float] = None, contrast: Optional[float] = None,
                 saturation: Optional[float] = None, hue: Optional[float] = None, grayscale_p=0.2, blur_p=0.0,
                 blur_sigma=(0.1, 2.0), blur_kernel: Optional[int] = None, solarize_p=0.0, rotate_p=0.0,
                 degrees=(-30.0, 30.0), fill=0.0, mean: Optional[Sequence[float]] = None,
                 std: Optional[Sequence[float]] = None, dtype: torch.dtype = torch.float32, channels_last: bool = False):
        super().__init__()
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
            raise ValueError(f"size must be a positive int, got {size!r}")
        self.size = size
        self.scale = check_range("scale", scale, 1e-6, 1.0)
        self.ratio = check_range("ratio", ratio, 1e-3, 1e3)
        self.flip_p = check_probability("flip_p", flip_p)
        self.jitter_p = check_probability("jitter_p", jitter_p)
        if not isinstance(strength, (int, float)) or not 0 <= strength <= 1.25:
            raise ValueError(f"strength must be in [0, 1.25] (hue = 0.2 * strength stays <= 0.25), got {strength!r}")
        self.brightness = 0.8 * strength if brightness is None else float(brightness)
        self.contrast = 0.8 * strength if contrast is None else float(contrast)
        self.saturation = 0.8 * strength if saturation is None else float(saturation)
        self.hue = 0.2 * strength if hue is None else float(hue)
        for name in ("brightness", "contrast", "saturation"):
            if not 0 <= getattr(self, name) < 1e3:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.hue <= 0.5:
            raise ValueError(f"hue must be in [0, 0.5], got {self.hue}")
        self.grayscale_p = check_probability("grayscale_p", grayscale_p)
        self.blur_p = check_probability("blur_p", blur_p)
        self.blur_sigma = check_range("blur_sigma", blur_sigma, 1e-6, 1e3)
        if blur_kernel is None:
            blur_kernel = max(3, int(0.1 * size) // 2 * 2 + 1)  # about 10% of the output, odd
        if not isinstance(blur_kernel, int) or blur_kernel < 1 or blur_kernel % 2 == 0:
            raise ValueError(f"blur_kernel must be a positive odd int, got {blur_kernel!r}")
        if blur_kernel // 2 >= size and max(self.blur_p) > 0:
            raise ValueError(f"blur_kernel {blur_kernel} is too large for output size {size} (reflect padding)")
        self.blur_kernel = blur_kernel
        self.solarize_p = check_probability("solarize_p", solarize_p)
        self.rotate_p = check_probability("rotate_p", rotate_p)
        self.degrees = check_degrees(degrees)
        self.fill = check_fill(fill)
        self.mean, self.std = check_mean_std(mean, std)
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise TypeError(f"dtype must be float32, float16 or bfloat16, got {dtype}")
        self.dtype = dtype
        self.channels_last = channels_last

    @classmethod
    def cifar(cls, size: int = 32, **kwargs) -> "SimCLRAugment":
        return cls(size, **kwargs)

    @classmethod
    def imagenet(cls, size: int = 224, **kwargs) -> "SimCLRAugment":
        kwargs = {"strength": 1.0, "blur_p": 0.5, **kwargs}
        return cls(size, **kwargs)

    @classmethod
    def byol(cls, size: int = 224, **kwargs) -> "SimCLRAugment":
        """BYOL's asymmetric views: blur 1.0 / 0.1 and solarize 0.0 / 0.2 for views 1 / 2."""
        kwargs = {"strength": 1.0, "blur_p": (1.0, 0.1), "solarize_p": (0.0, 0.2), **kwargs}
        return cls(size, **kwargs)

    def _per_view(self, probs: tuple[float, ...], views: int, batch: int) -> Tensor:
        if len(probs) not in (1, views):
            raise ValueError(f"got {len(probs)} per-view probabilities for {views} views")
        return torch.tensor(probs * views if len(probs) == 1 else probs, dtype=torch.float32).repeat_interleave(batch)

    def sample(self, batch_size: int, image_size, generator: Optional[torch.Generator] = None,
               views: int = 1) -> AugmentParams:
        """Parameters for `views` views of `batch_size` images of size image_size = (H, W), or a
        list of (H, W), one per image. Rows are view-major: view v of image i is row v * B + i."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if not isinstance(views, int) or views < 1:
            raise ValueError(f"views must be a positive int, got {views!r}")
        sizes = torch.tensor([image_size] * batch_size if len(image_size) == 2 and isinstance(image_size[0], int)
                             else list(image_size), dtype=torch.float64)
        if sizes.shape != (batch_size, 2) or bool((sizes < 1).any()):
            raise ValueError(f"image_size must be (H, W) or {batch_size} such pairs with H, W >= 1")
        device = generator.device if generator is not None else torch.device("cpu")
        P = batch_size * views
        H, W = sizes[:, 0].repeat(views).to(device), sizes[:, 1].repeat(views).to(device)

        def uniform(lo, hi, n=P):
            return torch.rand(n, generator=generator, device=device, dtype=torch.float64) * (hi - lo) + lo

        table = torch.zeros(P, NUM_PARAMS, dtype=torch.float64, device=device)
        top, left, h, w = self._sample_crops(H, W, uniform, generator, device)
        table[:, TOP], table[:, LEFT], table[:, HEIGHT], table[:, WIDTH] = top, left, h, w
        coin = lambda probs: (uniform(0, 1) < self._per_view(probs, views, batch_size).to(device)).double()  # noqa: E731
        table[:, FLIP] = coin(self.flip_p)
        table[:, JITTER] = coin(self.jitter_p)
        table[:, BRIGHTNESS] = uniform(max(0.0, 1 - self.brightness), 1 + self.brightness)
        table[:, CONTRAST] = uniform(max(0.0, 1 - self.contrast), 1 + self.contrast)
        table[:, SATURATION] = uniform(max(0.0, 1 - self.saturation), 1 + self.saturation)
        table[:, HUE] = uniform(-self.hue, self.hue)
        table[:, ORDER] = torch.rand(P, 4, generator=generator, device=device).argsort(dim=1).double()
        table[:, GRAY] = coin(self.grayscale_p)
        table[:, BLUR_SIGMA] = coin(self.blur_p) * uniform(*self.blur_sigma)
        table[:, SOLARIZE] = coin(self.solarize_p)
        if max(self.rotate_p) > 0:  # recipes without rotation keep their random stream
            table[:, ANGLE] = coin(self.rotate_p) * uniform(*self.degrees)
            table[:, FILL] = torch.tensor(self.fill, dtype=torch.float64, device=device)
        source = torch.arange(batch_size, device=device).repeat(views)
        return AugmentParams(table.float(), source, self.size, self.blur_kernel, views)

    def _sample_crops(self, H, W, uniform, generator, device):
        """RandomResizedCrop.get_params, vectorised: ten tries, then a centre crop."""
        P = H.shape[0]
        area = H * W
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        top, left = torch.zeros(P, dtype=torch.float64, device=device), torch.zeros_like(H)
        h, w = torch.zeros_like(H), torch.zeros_like(H)
        done = torch.zeros(P, dtype=torch.bool, device=device)
        for _ in range(10):
            target = area * uniform(*self.scale)
            aspect = torch.exp(uniform(log_lo, log_hi))
            cw, ch = torch.round(torch.sqrt(target * aspect)), torch.round(torch.sqrt(target / aspect))
            ok = ~done & (cw > 0) & (cw <= W) & (ch > 0) & (ch <= H)
            ct = torch.floor(uniform(0, 1) * (H - ch + 1))
            cl = torch.floor(uniform(0, 1) * (W - cw + 1))
            top, left = torch.where(ok, ct, top), torch.where(ok, cl, left)
            h, w = torch.where(ok, ch, h), torch.where(ok, cw, w)
            done |= ok
        in_ratio = W / H
        fw = torch.where(in_ratio < self.ratio[0], W, torch.where(in_ratio > self.ratio[1], torch.round(H * self.ratio[1]), W))
        fh = torch.where(in_ratio < self.ratio[0], torch.round(W / self.ratio[0]), H)
        fh = torch.where(in_ratio > self.ratio[1], H, fh)
        top = torch.where(done, top, torch.div(H - fh, 2, rounding_mode="floor"))
        left = torch.where(done, left, torch.div(W - fw, 2, rounding_mode="floor"))
        return top, left, torch.where(done, h, fh), torch.where(done, w, fw)

    def forward(self, images: Images, views: int = 2, generator: Optional[torch.Generator] = None,
                shard: Optional[tuple[int, int]] = None):
        """`views` augmented views of the batch, each (B, C, size, size), in one kernel launch.

        shard=(first, global_batch): `images` (a batch tensor) are images [first, first + B) of a
        global batch; the parameters of the whole global batch are drawn and these images get
        theirs, so each image is augmented as in a one-process run with the same generator."""
        listed = _check_images(images)
        if listed[0].dim() == 4:
            batch, sizes = listed[0].shape[0], (int(listed[0].shape[2]), int(listed[0].shape[3]))
        elif shard is not None:
            raise ValueError("shard needs a batch tensor (B, C, H, W), not a list of images")
        else:
            batch, sizes = len(listed), [(int(img.shape[1]), int(img.shape[2])) for img in listed]
        if shard is None:
            params = self.sample(batch, sizes, generator=generator, views=views)
        else:
            first, global_batch = shard
            params = self.sample(global_batch, sizes, generator=generator, views=views).shard(first, batch)
        out = apply(listed, params, mean=self.mean, std=self.std, dtype=self.dtype, channels_last=self.channels_last)
        return tuple(out.chunk(views)) if views > 1 else out

    def extra_repr(self) -> str:
        return (f"size={self.size}, scale={self.scale}, ratio={self.ratio}, jitter=({self.brightness:.2f}, "
                f"{self.contrast:.2f}, {self.saturation:.2f}, {self.hue:.2f}) p={self.jitter_p}, "
                f"grayscale_p={self.grayscale_p}, blur_p={self.blur_p}, solarize_p={self.solarize_p}, "
                f"rotate_p={self.rotate_p}, degrees={self.degrees}, fill={self.fill}")


def _check_images(images: Images) -> list[Tensor]:
    """The kernel's image list: one (B, C, H, W) tensor, or (C, H, W) tensors on one device."""
    if isinstance(images, (list, tuple)) and len(images) == 1 and isinstance(images[0], Tensor) \
            and images[0].dim() == 4:
        images = images[0]  # the kernel's own form of a batch
    if isinstance(images, Tensor):
        if images.dim() != 4:
            raise ValueError(f"images must be (B, C, H, W) or a list of (C, H, W), got shape {tuple(images.shape)}")
        if images.shape[0] == 0:
            raise ValueError("images is an empty batch")
        listed = [images]
    else:
        listed = list(images)
        if not listed:
            raise ValueError("images is an empty list")
        for i, img in enumerate(listed):
            if not isinstance(img, Tensor) or img.dim() != 3:
                raise ValueError(f"images[{i}] must be a (C, H, W) tensor")
            if img.device != listed[0].device:
                raise ValueError(f"images[{i}] is on {img.device} but images[0] is on {listed[0].device}")
            if img.shape[0] != listed[0].shape[0]:
                raise ValueError(f"images[{i}] has {img.shape[0]} channels but images[0] has {listed[0].shape[0]}")
    channels = listed[0].shape[-3]
    if channels not in (1, 3):
        raise ValueError(f"images must have 1 or 3 channels, got {channels}")
    for img in listed:
        if img.shape[-1] < 1 or img.shape[-2] < 1:
            raise ValueError(f"images must be at least 1x1, got {tuple(img.shape)}")
    dtype = listed[0].dtype
    if any(img.dtype != dtype for img in listed):
        raise TypeError("images must all have one dtype")
    if dtype != torch.uint8 and not dtype.is_floating_point:
        raise TypeError(f"images must be uint8 or floating point, got {dtype}")
    if dtype.is_floating_point and dtype != torch.float32:
        listed = [img.float() for img in listed]
    return listed


def _check_rows(rows: Tensor, heights: Tensor, widths: Tensor) -> None:
    """Hand-made or edited parameter rows get the ranges torchvision's functions accept."""
    def first_bad(ok: Tensor, what: str) -> None:
        if not bool(ok.all()):
            raise ValueError(f"params row {int((~ok).nonzero()[0])}: {what}")

    first_bad(torch.isfinite(rows).all(dim=1), "non-finite values")
    first_bad((rows[:, TOP] >= 0) & (rows[:, LEFT] >= 0) & (rows[:, HEIGHT] >= 1) & (rows[:, WIDTH] >= 1)
              & (rows[:, TOP] + rows[:, HEIGHT] <= heights) & (rows[:, LEFT] + rows[:, WIDTH] <= widths),
              "the crop box lies outside its image; params do not match these images")
    first_bad((rows[:, [BRIGHTNESS, CONTRAST, SATURATION]] >= 0).all(dim=1), "jitter factors must be >= 0")
    first_bad(rows[:, HUE].abs() <= 0.5, "the hue factor must lie in [-0.5, 0.5]")
    first_bad(((rows[:, ORDER] >= 0) & (rows[:, ORDER] <= 3)).all(dim=1), "the jitter order holds op indices 0..3")
    first_bad(rows[:, BLUR_SIGMA] >= 0, "the blur sigma must be >= 0 (0: no blur)")
    first_bad(((rows[:, FILL] >= 0) & (rows[:, FILL] <= 1)).all(dim=1), "the rotation fill must lie in [0, 1]")


def apply(images: Images, params: AugmentParams, *, mean: Optional[Sequence[float]] = None,
          std: Optional[Sequence[float]] = None, dtype: torch.dtype = torch.float32,
          channels_last: bool = False) -> Tensor:
    """Applies the given parameters: returns (P, C, size, size) with sample p made from
    images[params.source_index[p]]. Float images are taken to be in [0, 1]."""
    listed = _check_images(images)
    device = listed[0].device
    count = listed[0].shape[0] if len(listed) == 1 and listed[0].dim() == 4 else len(listed)
    table, source = params.table, params.source_index
    if table.dim() != 2 or table.shape[1] != NUM_PARAMS or not table.dtype.is_floating_point:
        raise ValueError(f"params.table must be a float tensor of shape (P, {NUM_PARAMS}), got "
                         f"{table.dtype} {tuple(table.shape)}")
    if source.shape != (table.shape[0],) or source.dtype.is_floating_point:
        raise ValueError(f"params.source_index must be integers of shape ({table.shape[0]},), got "
                         f"{source.dtype} {tuple(source.shape)}")
    if not isinstance(params.size, int) or params.size <= 0:
        raise ValueError(f"params.size must be a positive int, got {params.size!r}")
    if not isinstance(params.blur_kernel, int) or params.blur_kernel < 1 or params.blur_kernel % 2 == 0:
        raise ValueError(f"params.blur_kernel must be a positive odd int, got {params.blur_kernel!r}")
    # One copy to the host for all checks (a single sync on CUDA).
    rows, src = table.detach().float().cpu(), source.cpu()
    if bool(((src < 0) | (src >= count)).any()):
        raise ValueError(f"params were sampled for another batch: source_index must lie in [0, {count}) "
                         f"for these {count} images")
    if listed[0].dim() == 4:
        heights = torch.full((count,), float(listed[0].shape[2]))
        widths = torch.full((count,), float(listed[0].shape[3]))
    else:
        heights = torch.tensor([float(img.shape[1]) for img in listed])
        widths = torch.tensor([float(img.shape[2]) for img in listed])
    _check_rows(rows, heights[src], widths[src])
    mean, std = check_mean_std(mean, std)
    channels = listed[0].shape[-3]
    mean_t = std_t = None
    if mean is not None:
        mean_t = torch.tensor(mean, dtype=torch.float32, device=device).reshape(-1)
        std_t = torch.tensor(std, dtype=torch.float32, device=device).reshape(-1)
        if mean_t.numel() == 1:
            mean_t, std_t = mean_t.expand(channels).contiguous(), std_t.expand(channels).contiguous()
        if mean_t.numel() != channels or std_t.numel() != channels:
            raise ValueError(f"mean and std need one value per channel ({channels})")
    _extension.assert_has_ops()
    return torch.ops.fastcl.augment(listed, source.to(device=device, dtype=torch.int64),
                                    table.to(device=device, dtype=torch.float32), params.size, params.blur_kernel,
                                    mean_t, std_t, dtype, channels_last)
