"""Encoders and the projection head of SimCLR: torchvision ResNets (with the CIFAR stem for
small images), a small CNN for CPU-sized runs, and Linear-BN-ReLU-Linear heads."""

from __future__ import annotations

from torch import Tensor, nn

ARCHS = ("resnet18", "resnet50", "small_cnn")


class SmallCNN(nn.Module):
    """Four conv-BN-ReLU stages and global pooling: a CPU-sized encoder for 32x32 images."""

    def __init__(self, in_channels: int = 3, width: int = 32):
        super().__init__()
        layers, channels = [], in_channels
        for i, out in enumerate((width, 2 * width, 4 * width, 8 * width)):
            layers += [nn.Conv2d(channels, out, 3, stride=1 if i == 0 else 2, padding=1, bias=False),
                       nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            channels = out
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.out_dim = channels

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x)


def encoder(arch: str = "resnet18", *, cifar_stem: bool = True, in_channels: int = 3) -> nn.Module:
    """An encoder with ``out_dim``: the backbone up to global pooling, no classifier. The CIFAR
    stem (3x3 conv, stride 1, no max-pool) keeps 32x32 inputs from shrinking to 1x1 too early."""
    if arch == "small_cnn":
        return SmallCNN(in_channels)
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
    import torchvision

    net = getattr(torchvision.models, arch)(weights=None)
    if cifar_stem or in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3 if cifar_stem else 7, stride=1 if cifar_stem else 2,
                              padding=1 if cifar_stem else 3, bias=False)
    if cifar_stem:
        net.maxpool = nn.Identity()
    net.out_dim = net.fc.in_features
    net.fc = nn.Identity()
    return net


class ProjectionHead(nn.Module):
    """SimCLR's MLP head: (Linear-BN-ReLU) x (layers - 1), then Linear."""

    def __init__(self, in_dim: int, hidden_dim: int = 2048, out_dim: int = 128, layers: int = 2):
        super().__init__()
        if layers < 1:
            raise ValueError(f"layers must be >= 1, got {layers}")
        blocks, dim = [], in_dim
        for _ in range(layers - 1):
            blocks += [nn.Linear(dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True)]
            dim = hidden_dim
        blocks.append(nn.Linear(dim, out_dim))
        self.net = nn.Sequential(*blocks)
        self.out_dim = out_dim

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class SimCLRModel(nn.Module):
    """encoder -> projector; `encoder` alone is what evaluation and downstream tasks use."""

    def __init__(self, encoder: nn.Module, projector: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.projector = projector

    def forward(self, x: Tensor) -> Tensor:
        return self.projector(self.encoder(x))


def simclr_model(arch: str, cifar_stem: bool, proj_hidden: int, proj_dim: int, in_channels: int = 3) -> SimCLRModel:
    """The encoder `arch` under a Linear-BN-ReLU-Linear projection head."""
    enc = encoder(arch, cifar_stem=cifar_stem, in_channels=in_channels)
    return SimCLRModel(enc, ProjectionHead(enc.out_dim, proj_hidden, proj_dim))
