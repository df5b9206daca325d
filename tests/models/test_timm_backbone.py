"""timm models as backbones (``gspdml.models.timm_backbone``): CNN maps, ViT patch tokens, errors."""
from __future__ import annotations

import pytest
import torch

from gspdml.errors import ConfigError
from gspdml.models import build_backbone


def test_timm_cnn_and_vit_tokens(tmp_path):
    vit = build_backbone("timm:vit_tiny_patch16_224", img_size=64).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        tokens = vit(x)
        full = vit.model.forward_features(x)
    assert vit.num_prefix_tokens == 1 and vit.out_channels == 192
    assert tokens.shape == (2, 16, 192)  # 4x4 patches, cls token removed
    assert torch.equal(tokens, full[:, 1:])
    # local weights file with a classifier head (as timm saves them) loads; the head is dropped
    src = __import__("timm").create_model("resnet18", pretrained=False, num_classes=7)
    torch.save(src.state_dict(), tmp_path / "r18.pth")
    loaded = build_backbone("timm:resnet18", pretrained=str(tmp_path / "r18.pth"))
    assert torch.equal(loaded.model.conv1.weight, src.conv1.weight)
    assert loaded.out_channels == 512
    with torch.no_grad():
        assert loaded(torch.randn(1, 3, 64, 64)).shape == (1, 512, 2, 2)


def test_timm_errors():
    with pytest.raises(ConfigError, match="unknown timm model 'resnet1'.*close matches: .*resnet18"):
        build_backbone("timm:resnet1")
    with pytest.raises(ConfigError, match="download"):
        build_backbone("timm:resnet18", pretrained=True)
    with pytest.raises(ConfigError, match="does not exist"):
        build_backbone("timm:resnet18", pretrained="/nonexistent/w.pth")

