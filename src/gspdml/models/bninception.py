"""BN-Inception (Inception v2 of Ioffe & Szegedy 2015), the standard DML backbone.

Written for gspdml; the layer names follow the widely used Caffe-converted ImageNet weights so
that file loads without renaming:

* file name: ``bn_inception-52deb4733.pth`` (from the ``pretrainedmodels`` package of R. Cadene,
  published at ``http://data.lip6.fr/cadene/pretrainedmodels/bn_inception-52deb4733.pth``). By the
  torch.hub naming convention ``52deb4733`` is a prefix of the file's SHA-256; the full digest is not
  published in the code we could find, so gspdml computes the SHA-256 of the file you load and logs
  it (logger ``gspdml.models.bninception``; also returned by :func:`load_bninception_weights`) so
  runs record exactly which weights they used. gspdml never downloads it: place it locally and
  pass its path as ``pretrained``.
* keys: flat names such as ``conv1_7x7_s2.weight``, ``conv1_7x7_s2_bn.running_mean``,
  ``inception_3a_1x1.weight``, ``inception_3a_double_3x3_reduce_bn.bias``, ...,
  ``inception_5b_pool_proj_bn.running_var``, ``last_linear.weight``/``last_linear.bias``:
  69 convolutions (with bias) each followed by a BatchNorm, i.e. 69 x 6 + 2 = 416 tensors
  (``num_batches_tracked`` buffers are not in the file and are not required; BatchNorm vectors
  stored as (1, C), as in that file, are reshaped to (C,)).
* input convention of those weights: **BGR** channel order, values in **[0, 255]**, mean
  ``[104, 117, 128]`` subtracted, std 1 (``gspdml.data.build_transform(..., normalization=
  "bninception")`` produces this).

The model returns the feature map before global pooling: 1024 channels at stride 32
(7 x 7 for 224 px and also for 227 px inputs, because of the ceil-mode max pools).
"""
from __future__ import annotations

import hashlib
import logging
import os
from typing import Optional, Union

import torch
from torch import Tensor, nn

from gspdml.errors import ConfigError
from gspdml.models._weights import load_checked, read_state_dict
from gspdml.models.backbones import BACKBONES

__all__ = ["BNInception", "bninception", "load_bninception_weights", "WEIGHTS_FILE_NAME", "KEY_COUNT"]

log = logging.getLogger(__name__)

WEIGHTS_FILE_NAME = "bn_inception-52deb4733.pth"
#: Number of tensors in the converted ImageNet state dict (69 conv+BN units x 6, plus last_linear).
KEY_COUNT = 416
#: Input convention of the converted weights.
INPUT_SPACE = "BGR"
INPUT_RANGE = (0, 255)
MEAN = (104.0, 117.0, 128.0)
STD = (1.0, 1.0, 1.0)

# Inception modules: name -> (in_channels, 1x1, 3x3 reduce, 3x3, double 3x3 reduce, double 3x3,
#                              pool kind, pool projection, stride)
# A stride-2 module ("3c", "4e") has no 1x1 branch and no pool projection (max pool passthrough).
_MODULES = [
    ("3a", 192, 64, 64, 64, 64, 96, "avg", 32, 1),
    ("3b", 256, 64, 64, 96, 64, 96, "avg", 64, 1),
    ("3c", 320, 0, 128, 160, 64, 96, "max", 0, 2),
    ("4a", 576, 224, 64, 96, 96, 128, "avg", 128, 1),
    ("4b", 576, 192, 96, 128, 96, 128, "avg", 128, 1),
    ("4c", 576, 160, 128, 160, 128, 160, "avg", 128, 1),
    ("4d", 608, 96, 128, 192, 160, 192, "avg", 128, 1),
    ("4e", 608, 0, 128, 192, 192, 256, "max", 0, 2),
    ("5a", 1056, 352, 192, 320, 160, 224, "avg", 128, 1),
    ("5b", 1024, 352, 192, 320, 192, 224, "max", 128, 1),
]


class BNInception(nn.Module):
    """BN-Inception trunk returning the ``(B, 1024, H/32, W/32)`` map before global pooling.

    Args:
        num_classes: size of ``last_linear`` (kept so the ImageNet file loads strictly; it is not
            used by :meth:`forward`, which stops before global pooling).
        bn_momentum: PyTorch BatchNorm momentum (the converted file's model used 0.9 in Caffe
            semantics; PyTorch's 0.1 is the equivalent).
    """

    out_channels = 1024
    input_kind = "image"
    input_space = INPUT_SPACE
    mean = MEAN
    std = STD

    def __init__(self, num_classes: int = 1000, bn_momentum: float = 0.1) -> None:
        super().__init__()
        self._bn_momentum = bn_momentum
        self._units: list[str] = []
        self._unit("conv1_7x7_s2", 3, 64, 7, stride=2, padding=3)
        self.pool1_3x3_s2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self._unit("conv2_3x3_reduce", 64, 64, 1)
        self._unit("conv2_3x3", 64, 192, 3, padding=1)
        self.pool2_3x3_s2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self._blocks = []
        for name, cin, c1, c3r, c3, cdr, cd, pool, proj, stride in _MODULES:
            p = f"inception_{name}"
            if c1:
                self._unit(f"{p}_1x1", cin, c1, 1)
            self._unit(f"{p}_3x3_reduce", cin, c3r, 1)
            self._unit(f"{p}_3x3", c3r, c3, 3, stride=stride, padding=1)
            self._unit(f"{p}_double_3x3_reduce", cin, cdr, 1)
            self._unit(f"{p}_double_3x3_1", cdr, cd, 3, padding=1)
            self._unit(f"{p}_double_3x3_2", cd, cd, 3, stride=stride, padding=1)
            if stride == 2:
                setattr(self, f"{p}_pool", nn.MaxPool2d(3, stride=2, ceil_mode=True))
            elif pool == "avg":
                setattr(self, f"{p}_pool", nn.AvgPool2d(3, stride=1, padding=1, ceil_mode=True, count_include_pad=True))
            else:
                setattr(self, f"{p}_pool", nn.MaxPool2d(3, stride=1, padding=1, ceil_mode=True))
            if proj:
                self._unit(f"{p}_pool_proj", cin, proj, 1)
            self._blocks.append((p, bool(c1), bool(proj)))
        self.last_linear = nn.Linear(1024, num_classes)
        self.relu = nn.ReLU(inplace=True)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Random init (He-normal convs, zero biases, unit BN): keeps activations O(1) through the
        depth (PyTorch's default conv init shrinks them into float denormals, which is very slow)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _unit(self, name: str, cin: int, cout: int, k: int, stride: int = 1, padding: int = 0) -> None:
        setattr(self, name, nn.Conv2d(cin, cout, k, stride=stride, padding=padding))
        setattr(self, f"{name}_bn", nn.BatchNorm2d(cout, eps=1e-5, momentum=self._bn_momentum))
        self._units.append(name)

    def _cbr(self, name: str, x: Tensor) -> Tensor:
        return self.relu(getattr(self, f"{name}_bn")(getattr(self, name)(x)))

    def forward(self, x: Tensor) -> Tensor:
        """Feature map ``(B, 1024, h, w)`` before global pooling."""
        x = self.pool1_3x3_s2(self._cbr("conv1_7x7_s2", x))
        x = self._cbr("conv2_3x3", self._cbr("conv2_3x3_reduce", x))
        x = self.pool2_3x3_s2(x)
        for p, has_1x1, has_proj in self._blocks:
            branches = []
            if has_1x1:
                branches.append(self._cbr(f"{p}_1x1", x))
            branches.append(self._cbr(f"{p}_3x3", self._cbr(f"{p}_3x3_reduce", x)))
            d = self._cbr(f"{p}_double_3x3_reduce", x)
            branches.append(self._cbr(f"{p}_double_3x3_2", self._cbr(f"{p}_double_3x3_1", d)))
            pooled = getattr(self, f"{p}_pool")(x)
            branches.append(self._cbr(f"{p}_pool_proj", pooled) if has_proj else pooled)
            x = torch.cat(branches, dim=1)
        return x

    def logits(self, features: Tensor) -> Tensor:
        """ImageNet logits from a feature map (global average pooling + ``last_linear``)."""
        return self.last_linear(features.mean(dim=(2, 3)))


def sha256_of(path: Union[str, os.PathLike], chunk: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def load_bninception_weights(model: BNInception, path: Union[str, os.PathLike]) -> str:
    """Load a local BN-Inception state dict into ``model`` after checking its keys and shapes.

    ``last_linear`` may be absent or have another number of classes (it is not used for
    features). Returns the file's SHA-256 (also logged). Raises :class:`CheckpointError` listing
    missing/unexpected keys or mismatched shapes.
    """
    state = read_state_dict(path, "bninception")
    digest = sha256_of(path)
    log.info("loading BN-Inception weights %s (sha256 %s)", os.fspath(path), digest)
    # the published file stores BatchNorm vectors as (1, C) (old PyTorch broadcast them on copy)
    own_shapes = {k: v.shape for k, v in model.state_dict().items()}
    state = {
        k: v.reshape(own_shapes[k]) if k in own_shapes and v.dim() == len(own_shapes[k]) + 1
        and v.shape[0] == 1 and v.shape[1:] == own_shapes[k] else v
        for k, v in state.items()
    }
    load_checked(model, state, f"bninception (layout of {WEIGHTS_FILE_NAME})", path, optional_prefixes=("last_linear.",))
    return digest


@BACKBONES.register("bninception")
def bninception(pretrained: Optional[Union[str, os.PathLike]] = None, num_classes: int = 1000,
                bn_momentum: float = 0.1) -> BNInception:
    """Build BN-Inception; ``pretrained`` is a local weights file path (or ``None`` for random init);
    ``num_classes``, ``bn_momentum``: see :class:`BNInception`."""
    if pretrained is True:
        raise ConfigError(
            f"bninception: pretrained=True would need a download; pass the local path of {WEIGHTS_FILE_NAME} instead"
        )
    model = BNInception(num_classes=num_classes, bn_momentum=bn_momentum)
    if pretrained:
        load_bninception_weights(model, pretrained)
    return model
