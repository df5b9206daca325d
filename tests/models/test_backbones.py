"""The backbone registry (``gspdml.models.backbones``): choices, keyword checks, registration."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from gspdml.errors import ConfigError
from gspdml.models import BACKBONES, build_backbone


def test_registry_choices_errors_and_registration():
    with pytest.raises(ConfigError, match=r"unknown backbone 'resnet51'; valid choices are: .*bninception.*resnet50.*timm:<timm model name>"):
        build_backbone("resnet51")
    with pytest.raises(ConfigError, match=r"'resnet20' does not accept argument\(s\) width; accepted arguments: shortcut"):
        build_backbone("resnet20", width=3)
    with pytest.raises(ConfigError, match="download"):
        build_backbone("resnet50", pretrained=True)

    @BACKBONES.register("test-tiny")
    def tiny(pretrained=None, width=4):
        conv = nn.Conv2d(3, width, 3, padding=1)
        conv.input_kind = "image"
        return conv

    BACKBONES.register("test-noattr", lambda pretrained=None: nn.Identity())
    try:
        assert build_backbone("TEST-TINY", width=4)(torch.randn(1, 3, 8, 8)).shape == (1, 4, 8, 8)
        with pytest.raises(ConfigError, match="without the required attribute 'out_channels'"):
            build_backbone("test-noattr")
        assert build_backbone("resnet20").out_channels == 64
    finally:
        for name in ("test-tiny", "test-noattr"):
            BACKBONES.unregister(name)
    assert "test-tiny" not in BACKBONES
    assert set(["bninception", "resnet50", "resnet20", "smallcnn", "token_embedding"]) <= set(BACKBONES)
