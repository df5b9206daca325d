"""Transforms: output shapes, crop geometry and normalisation values."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from gspdml.data import build_transform
from gspdml.errors import ConfigError


def _image(w=300, h=260, rgb=(10, 20, 30)):
    return Image.fromarray(np.full((h, w, 3), rgb, dtype=np.uint8))


def test_mlrc_eval_bninception_values():
    x = build_transform("mlrc", train=False, normalization="bninception")(_image())
    assert x.shape == (3, 227, 227) and x.dtype == torch.float32
    # BGR order, x255, minus [104, 117, 128]
    assert torch.allclose(x[:, 0, 0], torch.tensor([30 - 104.0, 20 - 117.0, 10 - 128.0]), atol=1e-4)


def test_mlrc_eval_imagenet_values_and_center_crop():
    arr = np.zeros((256, 256, 3), dtype=np.uint8)
    arr[:, :, 0] = 255
    arr[14:242, 14:242] = (51, 102, 153)  # the 227 center crop sees only this
    x = build_transform("mlrc", train=False, normalization="imagenet")(Image.fromarray(arr))
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    expected = (np.array([51, 102, 153]) / 255 - mean) / std
    assert torch.allclose(x.mean(dim=(1, 2)), torch.tensor(expected, dtype=torch.float32), atol=1e-4)
    assert float(x.std(dim=(1, 2)).max()) < 1e-4


def test_mlrc_train_random_crop():
    t = build_transform("mlrc", train=True, normalization="none")
    arr = np.random.default_rng(0).integers(0, 255, (200, 320, 3), dtype=np.uint8)
    torch.manual_seed(0)
    a, b = t(Image.fromarray(arr)), t(Image.fromarray(arr))
    assert a.shape == b.shape == (3, 227, 227) and not torch.equal(a, b)
    assert 0.0 <= float(a.min()) and float(a.max()) <= 1.0
    assert build_transform("mlrc", True, "none", image_size=112)(_image()).shape == (3, 112, 112)
    assert build_transform("mlrc", False, "none", image_size=112)(_image()).shape == (3, 112, 112)


def test_small_and_none():
    img = _image(64, 64, (255, 0, 0))
    x = build_transform("small", train=False, normalization="none")(img)
    assert x.shape == (3, 64, 64) and torch.allclose(x[:, 3, 3], torch.tensor([1.0, 0.0, 0.0]))
    torch.manual_seed(1)
    assert build_transform("small", train=True, normalization="imagenet")(img).shape == (3, 64, 64)
    assert build_transform("small", train=False, normalization="none", image_size=48)(img).shape == (3, 48, 48)
    y = build_transform("none", train=True, normalization="none")(np.zeros((5, 7, 3), dtype=np.uint8))
    assert y.shape == (3, 5, 7)


def test_unknown_choices():
    with pytest.raises(ConfigError, match="mlrc, none, small"):
        build_transform("big", True, "none")
    with pytest.raises(ConfigError, match="bninception, cifar10, cifar100, imagenet, none"):
        build_transform("mlrc", True, "caffe")


def test_imagenet_kind_is_torchvisions_recipe():
    """kind=imagenet: eval Resize(round(224 * 256 / 224) = 256) + CenterCrop(224); train crop scale (0.08, 1)."""
    from torchvision.transforms import v2

    from gspdml.data.transforms import build_transform, eval_resize_size

    ev = build_transform("imagenet", train=False, normalization="none", image_size=224)
    resize = [t for t in ev.transforms if isinstance(t, v2.Resize)][0]
    assert resize.size == [256] and eval_resize_size("imagenet", 224) == 256 and eval_resize_size("mlrc", 227) == 256
    img = torch.rand(3, 300, 400)
    assert tuple(ev(img).shape) == (3, 224, 224)
    tr = build_transform("imagenet", train=True, normalization="none", image_size=224)
    crop = [t for t in tr.transforms if isinstance(t, v2.RandomResizedCrop)][0]
    assert tuple(crop.scale) == (0.08, 1.0) and any(isinstance(t, v2.RandomHorizontalFlip) for t in tr.transforms)
