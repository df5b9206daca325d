"""Backbone registry, ResNets, timm wrapper and frozen batch norm."""
from __future__ import annotations

import pickle

import pytest
import torch
import torchvision
from torch import nn

from gspdml.errors import CheckpointError, ConfigError
from gspdml.models import backbones as registry
from gspdml.models.backbones import BACKBONES, build_backbone, register_backbone
from gspdml.models.batchnorm import freeze_batchnorm, frozen_batchnorm_layers, is_frozen_batchnorm, unfreeze_batchnorm
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


class _Tiny(nn.Module):
    out_channels = 4
    input_kind = "image"

    def __init__(self, width=4):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))


def test_registry_choices_errors_and_registration():
    with pytest.raises(ConfigError, match=r"unknown backbone 'resnet51'; valid choices are: .*bninception.*resnet50.*timm:<timm model name>"):
        build_backbone("resnet51")
    with pytest.raises(ConfigError, match=r"'resnet20' does not accept argument\(s\) width; accepted arguments: shortcut"):
        build_backbone("resnet20", width=3)
    with pytest.raises(ConfigError, match="download"):
        build_backbone("resnet50", pretrained=True)

    @register_backbone("test-tiny")
    def tiny(pretrained=None, width=4):
        return _Tiny(width)

    BACKBONES["test-broken"] = ("gspdml.models.no_such_module", "factory")
    BACKBONES["test-noattr"] = lambda pretrained=None: nn.Identity()
    try:
        assert build_backbone("TEST-TINY", width=4)(torch.randn(1, 3, 8, 8)).shape == (1, 4, 8, 8)
        with pytest.raises(ConfigError, match="unavailable.*no_such_module"):
            build_backbone("test-broken")
        with pytest.raises(ConfigError, match="without the required attribute 'out_channels'"):
            build_backbone("test-noattr")
        # a broken module does not affect the other names
        assert build_backbone("resnet20").out_channels == 64
    finally:
        for name in ("test-tiny", "test-broken", "test-noattr"):
            BACKBONES.pop(name)
    assert set(["bninception", "resnet50", "resnet20", "smallcnn", "token_embedding"]) <= set(registry.BACKBONES)


def test_frozen_batchnorm_keeps_statistics_and_trains_affine():
    torch.manual_seed(0)
    model = _Tiny()
    with torch.no_grad():
        model.bn.running_mean.fill_(0.3)
        model.bn.running_var.fill_(2.0)
    freeze_batchnorm(model)
    model.train()
    assert model.training and not model.bn.training and is_frozen_batchnorm(model.bn)
    assert frozen_batchnorm_layers(model) == ["bn"]
    stats = (model.bn.running_mean.clone(), model.bn.running_var.clone())
    x = torch.randn(4, 3, 8, 8) * 3 + 1
    out = model(x)
    out.square().mean().backward()
    assert torch.equal(model.bn.running_mean, stats[0]) and torch.equal(model.bn.running_var, stats[1])
    assert model.bn.weight.grad is not None and model.bn.weight.grad.abs().sum() > 0
    assert model.bn.bias.grad.abs().sum() > 0
    # normalisation uses the running statistics (eval behaviour), by hand:
    conv = model.conv(x)
    ref = torch.relu((conv - 0.3) / torch.sqrt(torch.tensor(2.0) + model.bn.eps) * model.bn.weight[None, :, None, None]
                     + model.bn.bias[None, :, None, None])
    assert torch.allclose(out, ref, atol=1e-6)
    # state dict keys unchanged, pickling works, and unfreezing restores train-mode BN
    assert set(model.state_dict()) == set(_Tiny().state_dict())
    clone = pickle.loads(pickle.dumps(model))
    clone.train()
    assert not clone.bn.training
    unfreeze_batchnorm(model)
    model.train()
    assert model.bn.training and type(model.bn) is nn.BatchNorm2d
