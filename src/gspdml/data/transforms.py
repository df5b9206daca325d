"""Image transforms (torchvision.transforms.v2) for the MLRC protocol and small images.

``build_transform(kind, train, normalization)``:

* ``kind="mlrc"`` — train: ``RandomResizedCrop(227, scale=(0.16, 1), ratio=(0.75, 1.33))`` +
  horizontal flip; eval: ``Resize(256)`` + ``CenterCrop(227)`` (``image_size``/``resize_size``
  change 227/256; ``resize_size`` defaults to ``round(image_size * 256 / 227)``).
* ``kind="imagenet"`` — torchvision's ImageNet recipe (the NIR authors' ``base`` augmentation):
  train: ``RandomResizedCrop(224)`` (scale (0.08, 1)) + flip; eval: ``Resize(256)`` +
  ``CenterCrop(224)`` (``resize_size`` defaults to ``round(image_size * 256 / 224)``).
* ``kind="small"`` — for 32-128 px collages and digit images: train: random translation by up to
  1/16 of the size (optionally + flip, off by default since digits are not mirror-symmetric);
  eval: no change (``image_size`` resizes in both).
* ``kind="none"`` — only tensor conversion and normalisation.

``normalization``: ``"bninception"`` (BGR channel order, values x255, minus mean
[104, 117, 128] in B, G, R order, std 1 — Caffe BN-Inception), ``"imagenet"`` (RGB in [0, 1],
ImageNet mean/std), ``"cifar10"`` / ``"cifar100"`` (RGB in [0, 1], the per-channel mean and std of
the dataset's 50,000 training images: CIFAR-10 mean (0.4914, 0.4822, 0.4465), std (0.2470, 0.2435,
0.2616); CIFAR-100 mean (0.5071, 0.4865, 0.4409), std (0.2673, 0.2564, 0.2762), computed from the
archives of Krizhevsky 2009) or ``"none"`` (RGB float in [0, 1]).
Every pipeline returns a float32 (3, H, W) tensor.
"""
from __future__ import annotations

import torch
from torch import nn
from torchvision.transforms import v2

from gspdml.errors import unknown_choice

KINDS = ("mlrc", "imagenet", "small", "none")
#: evaluation resize / crop of the crop-based kinds (the eval resize is ``round(crop * ratio)``)
CROP_KINDS = {"mlrc": {"crop": 227, "ratio": 256 / 227, "scale": (0.16, 1.0), "ratio_range": (0.75, 1.33)},
              "imagenet": {"crop": 224, "ratio": 256 / 224, "scale": (0.08, 1.0), "ratio_range": (3 / 4, 4 / 3)}}
NORMALIZATIONS = {
    "bninception": {"mean": (104.0, 117.0, 128.0), "std": (1.0, 1.0, 1.0), "bgr": True, "scale": 255.0},
    "imagenet": {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "bgr": False, "scale": 1.0},
    "cifar10": {"mean": (0.4914, 0.4822, 0.4465), "std": (0.2470, 0.2435, 0.2616), "bgr": False, "scale": 1.0},
    "cifar100": {"mean": (0.5071, 0.4865, 0.4409), "std": (0.2673, 0.2564, 0.2762), "bgr": False, "scale": 1.0},
    "none": {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0), "bgr": False, "scale": 1.0},
}


class ToBGR255(nn.Module):
    """Reverse the channel order of a (..., 3, H, W) float image in [0, 1] and scale it to [0, 255]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flip(-3) * 255.0


def eval_resize_size(kind: str, image_size: int, resize_size: int | None = None) -> int:
    """The shorter-side resize before the evaluation centre crop of a crop-based ``kind``."""
    return int(resize_size or round(int(image_size) * CROP_KINDS[kind]["ratio"]))


def normalization_transforms(normalization: str) -> list[nn.Module]:
    """Transforms turning a [0, 1] RGB float tensor into the backbone's expected input."""
    if normalization not in NORMALIZATIONS:
        raise unknown_choice("normalization", normalization, NORMALIZATIONS)
    spec = NORMALIZATIONS[normalization]
    out: list[nn.Module] = []
    if spec["bgr"]:
        out.append(ToBGR255())
    if normalization != "none":
        out.append(v2.Normalize(mean=list(spec["mean"]), std=list(spec["std"])))
    return out


def build_transform(kind: str = "mlrc", train: bool = True, normalization: str = "imagenet", *,
                    image_size: int | None = None, resize_size: int | None = None, flip: bool | None = None) -> v2.Compose:
    """Build the image pipeline; see the module docstring for kinds and normalisations.

    Args:
        kind: ``mlrc``, ``small`` or ``none``.
        train: training augmentation (True) or deterministic evaluation pipeline (False).
        normalization: ``bninception``, ``imagenet``, ``cifar10``, ``cifar100`` or ``none``.
        image_size: output size (mlrc: crop size, default 227; small: resize to this size, default keep).
        resize_size: mlrc eval resize before the center crop (default ``round(image_size*256/227)``).
        flip: random horizontal flip in training (default True for mlrc, False for small).
    """
    if kind not in KINDS:
        raise unknown_choice("transform kind", kind, KINDS)
    head: list[nn.Module] = [v2.ToImage()]
    if kind in CROP_KINDS:
        spec = CROP_KINDS[kind]
        size = int(image_size or spec["crop"])
        if train:
            head += [v2.RandomResizedCrop(size, scale=spec["scale"], ratio=spec["ratio_range"], antialias=True)]
            if flip is None or flip:
                head.append(v2.RandomHorizontalFlip())
        else:
            head += [v2.Resize(eval_resize_size(kind, size, resize_size), antialias=True), v2.CenterCrop(size)]
    elif kind == "small":
        if image_size:
            head.append(v2.Resize((int(image_size), int(image_size)), antialias=True))
        if train:
            head.append(v2.RandomAffine(degrees=0.0, translate=(1 / 16, 1 / 16)))
            if flip:
                head.append(v2.RandomHorizontalFlip())
    head.append(v2.ToDtype(torch.float32, scale=True))
    return v2.Compose(head + normalization_transforms(normalization))
