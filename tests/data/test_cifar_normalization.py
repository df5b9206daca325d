"""CIFAR normalisation choices of ``build_transform`` against hand-computed values."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from gspdml.data import build_transform
from gspdml.data.transforms import NORMALIZATIONS

# the per-channel training-set statistics, written out here independently of transforms.py
STATS = {"cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
         "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))}


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_normalization_values(name):
    assert NORMALIZATIONS[name]["mean"] == STATS[name][0] and NORMALIZATIONS[name]["std"] == STATS[name][1]
    rgb = (200, 100, 30)
    image = Image.new("RGB", (32, 32), rgb)
    x = build_transform("small", train=False, normalization=name)(image)
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    mean, std = STATS[name]
    expected = [(v / 255 - m) / s for v, m, s in zip(rgb, mean, std)]
    assert np.allclose(x[:, 5, 7].numpy(), expected, atol=1e-5)


def test_cifar_normalization_undone_for_display():
    from gspdml.viz.weights import to_display_image

    image = Image.fromarray(np.arange(32 * 32 * 3, dtype=np.uint8).reshape(32, 32, 3))
    x = build_transform("none", train=False, normalization="cifar100")(image)
    assert np.allclose(to_display_image(x, "cifar100"), np.asarray(image) / 255.0, atol=1e-5)
