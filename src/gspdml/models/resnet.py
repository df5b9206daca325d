"""ResNet backbones: torchvision ResNet-50 trunk and the CIFAR ResNet-20 of He et al. (2016).

Both return the feature map before global pooling and load weights only from local files.
"""
from __future__ import annotations

import os
from typing import Optional, Union

import torch.nn.functional as F
from torch import Tensor, nn

from gspdml.errors import ConfigError
from gspdml.models._weights import load_checked, load_weights_file, read_state_dict
from gspdml.models.backbones import BACKBONES

__all__ = ["ResNet50Trunk", "CifarResNet", "resnet50", "resnet20"]

PathLike = Union[str, os.PathLike]


class ResNet50Trunk(nn.Module):
    """torchvision ResNet-50 without its global pool and classifier: ``(B, 2048, H/32, W/32)``.

    Parameter names are torchvision's (``conv1.weight``, ``layer1.0.conv1.weight``, ...), so a
    torchvision ImageNet state dict (e.g. ``resnet50-11ad3fa6.pth`` = ``IMAGENET1K_V2`` or
    ``resnet50-0676ba61.pth`` = ``IMAGENET1K_V1``) loads directly (its ``fc.*`` is ignored).
    Expects RGB inputs normalised with the ImageNet mean/std.
    """

    out_channels = 2048
    input_kind = "image"

    def __init__(self) -> None:
        import torchvision  # heavy (about 1 s): imported only when a ResNet-50 is built

        super().__init__()
        tv = torchvision.models.resnet50(weights=None)
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            setattr(self, name, getattr(tv, name))

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


@BACKBONES.register("resnet50")
def resnet50(pretrained: Optional[PathLike] = None) -> ResNet50Trunk:
    """ResNet-50 trunk; ``pretrained``: local torchvision state dict file (or ``None``)."""
    model = ResNet50Trunk()
    if pretrained:
        load_weights_file(model, pretrained, "resnet50", ignore_prefixes=("fc.",))
    return model


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, shortcut: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut_kind = shortcut
        self.pad = 0
        self.downsample: Optional[nn.Module] = None
        if stride != 1 or cin != cout:
            if shortcut == "A":  # parameter-free: subsample + zero-pad channels (the paper's option A)
                self.pad = cout - cin
            else:  # option B: 1x1 projection + BN
                self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        elif self.stride != 1 or self.pad:
            identity = x[:, :, :: self.stride, :: self.stride]
            identity = F.pad(identity, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        else:
            identity = x
        return F.relu(out + identity)


class CifarResNet(nn.Module):
    """CIFAR ResNet (He et al. 2016, Sec. 4.2): 3x3 conv (16) then 3 stages of ``n`` basic blocks
    with 16/32/64 channels (strides 1/2/2). ``n = 3`` is ResNet-20. Output ``(B, 64, H/4, W/4)``.

    ``shortcut="A"``: parameter-free identity shortcuts with zero padding (the paper's CIFAR
    option); ``"B"``: 1x1 convolution + BN projections (used by many released CIFAR-100
    checkpoints, e.g. ``cifar100_resnet20`` of chenyaofo/pytorch-cifar-models). Parameter names
    are ``conv1``, ``bn1``, ``layer{1,2,3}.{i}.{conv1,bn1,conv2,bn2,downsample.0,downsample.1}``.
    """

    out_channels = 64
    input_kind = "image"

    def __init__(self, depth: int = 20, shortcut: str = "A") -> None:
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ConfigError(f"CIFAR ResNet depth must be 6n + 2 (20, 32, 44, 56, 110), got {depth}")
        if shortcut not in ("A", "B"):
            raise ConfigError(f"CIFAR ResNet shortcut must be 'A' or 'B', got {shortcut!r}")
        n = (depth - 2) // 6
        self.depth = depth
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        cin = 16
        for stage, (cout, stride) in enumerate([(16, 1), (32, 2), (64, 2)], start=1):
            blocks = []
            for i in range(n):
                blocks.append(_BasicBlock(cin, cout, stride if i == 0 else 1, shortcut))
                cin = cout
            setattr(self, f"layer{stage}", nn.Sequential(*blocks))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))


@BACKBONES.register("resnet20")
def resnet20(pretrained: Optional[PathLike] = None, shortcut: Optional[str] = None) -> CifarResNet:
    """CIFAR ResNet-20; ``pretrained``: optional local state dict (classifier ``fc.*``/``linear.*``
    ignored). ``shortcut=None`` picks ``"B"`` if the file has ``downsample`` weights, else ``"A"``."""
    state = read_state_dict(pretrained, "resnet20") if pretrained else None
    if shortcut is None:
        shortcut = "B" if state is not None and any(".downsample." in k for k in state) else "A"
    model = CifarResNet(20, shortcut=shortcut)
    if state is not None:
        load_checked(model, state, "resnet20", pretrained, ignore_prefixes=("fc.", "linear."))
    return model
