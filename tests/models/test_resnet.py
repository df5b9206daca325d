"""ResNet backbones (``gspdml.models.resnet``): torchvision ResNet-50 trunk and CIFAR ResNet-20."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from gspdml.errors import CheckpointError
from gspdml.models import build_backbone
from gspdml.models.resnet import CifarResNet


def test_resnet50_trunk_loads_torchvision_state_dict(tmp_path):
    tv = torchvision.models.resnet50(weights=None).eval()
    with torch.no_grad():  # non-trivial BN statistics so the comparison means something
        for m in tv.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    torch.save(tv.state_dict(), tmp_path / "resnet50.pth")
    trunk = build_backbone("resnet50", pretrained=str(tmp_path / "resnet50.pth")).eval()
    assert trunk.out_channels == 2048 and trunk.input_kind == "image"
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = tv.layer4(tv.layer3(tv.layer2(tv.layer1(tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))))))
        out = trunk(x)
    assert out.shape == (1, 2048, 2, 2)
    assert torch.allclose(out, ref, atol=1e-5)
    assert torch.allclose(out.mean(dim=(2, 3)), torch.flatten(tv.avgpool(ref), 1))


def test_resnet20_cifar_architecture_and_loading(tmp_path):
    model = build_backbone("resnet20").eval()
    assert isinstance(model, CifarResNet) and model.out_channels == 64
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 64, 8, 8)
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 64, 16, 16)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 19  # + the classifier = 20 weighted layers; option A has no projections
    assert sum(p.numel() for p in model.parameters()) == 269_722 - 650  # He et al.: 0.27M incl. a 10-way fc
    # an option-B checkpoint (downsample projections, 'fc' classifier) is detected and loaded
    b = CifarResNet(20, shortcut="B")
    state = dict(b.state_dict())
    state["fc.weight"], state["fc.bias"] = torch.zeros(100, 64), torch.zeros(100)
    torch.save(state, tmp_path / "r20.pt")
    loaded = build_backbone("resnet20", pretrained=str(tmp_path / "r20.pt")).eval()
    assert loaded.layer2[0].downsample is not None
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded(x), b.eval()(x))
    del state["layer3.2.conv2.weight"]
    torch.save(state, tmp_path / "broken.pt")
    with pytest.raises(CheckpointError, match="layer3.2.conv2.weight"):
        build_backbone("resnet20", pretrained=str(tmp_path / "broken.pt"))


def test_resnet20_identity_shortcut_by_hand():
    torch.manual_seed(0)
    model = CifarResNet(20, shortcut="A").eval()
    block = model.layer2[0]
    x = torch.randn(1, 16, 8, 8)
    with torch.no_grad():
        out = block(x)
        main = block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(x)))))
        shortcut = torch.zeros(1, 32, 4, 4)
        shortcut[:, 8:24] = x[:, :, ::2, ::2]
    assert torch.allclose(out, torch.relu(main + shortcut))

