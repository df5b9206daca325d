"""EmbeddingModel: projection, pooling, normalisation, frozen BN, parameter groups, build_model."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gspdml.errors import ConfigError
from gspdml.models import BACKBONES, EmbeddingModel, build_model
from gspdml.pooling import Pooling


class MapBackbone(nn.Module):
    out_channels = 6
    input_kind = "image"

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))


class TokenBackbone(nn.Module):
    out_channels = 5
    input_kind = "tokens"

    def __init__(self):
        super().__init__()
        self.table = nn.Embedding(10, 5)

    def forward(self, ids):
        return self.table(ids)


class ProtoPooling(Pooling):
    """A test pooling with a 'prototypes' parameter (like GSP's)."""

    name = "proto"

    def __init__(self, dim):
        super().__init__(dim)
        self.prototypes = nn.Parameter(torch.randn(3, dim))

    def pool(self, feats, mask):
        w = torch.softmax(feats @ self.prototypes[0], dim=1)
        return torch.einsum("bn,bnc->bc", w, feats), w, None


def test_map_model_matches_manual_pipeline():
    model = EmbeddingModel(MapBackbone(), local_dim=4, pooling="gap", projection="before").eval()
    assert model.local.bias is None and model.local.kernel_size == (1, 1)
    x = torch.randn(2, 3, 5, 5)
    emb, details = model(x, return_details=True)
    feats = model.backbone(x)
    local = torch.einsum("dc,bchw->bdhw", model.local.weight[:, :, 0, 0], feats)
    ref = F.normalize(local.mean(dim=(2, 3)), dim=1)
    assert torch.allclose(emb, ref, atol=1e-6)
    assert torch.allclose(emb.norm(dim=1), torch.ones(2))
    assert details["weights"].shape == (2, 5, 5) and details["marginals"] is None
    assert torch.allclose(model(x), emb)


def test_token_model_uses_same_projection_and_mask():
    model = EmbeddingModel(TokenBackbone(), local_dim=3, pooling="gmp", projection="before")
    ids = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    emb = model(ids, mask=mask)
    proj = model.backbone.table(ids) @ model.local.weight[:, :, 0, 0].T
    ref0 = F.normalize(proj[0, :2].max(dim=0).values, dim=0)
    ref1 = F.normalize(proj[1].max(dim=0).values, dim=0)
    assert torch.allclose(emb[0], ref0, atol=1e-6) and torch.allclose(emb[1], ref1, atol=1e-6)
    assert model.input_kind == "tokens"


def test_freeze_bn_applies_to_backbone():
    model = EmbeddingModel(MapBackbone(), local_dim=4, pooling="gap", freeze_bn=True)
    model.train()
    assert model.training and not model.backbone.bn.training
    before = model.backbone.bn.running_mean.clone()
    model(torch.randn(4, 3, 5, 5) + 3).sum().backward()
    assert torch.equal(model.backbone.bn.running_mean, before)
    assert model.backbone.bn.weight.grad is not None


def test_param_groups_split():
    model = EmbeddingModel(MapBackbone(), local_dim=4, pooling=ProtoPooling(4), projection="before")
    groups = {g["name"]: g for g in model.param_groups(weight_decay=1e-4)}
    decay = {id(p) for p in groups["decay"]["params"]}
    no_decay = {id(p) for p in groups["no_decay"]["params"]}
    assert groups["decay"]["weight_decay"] == 1e-4 and groups["no_decay"]["weight_decay"] == 0.0
    assert decay == {id(model.backbone.conv.weight), id(model.local.weight)}
    assert no_decay == {
        id(model.backbone.conv.bias),
        id(model.backbone.bn.weight),
        id(model.backbone.bn.bias),
        id(model.pooling.prototypes),
    }
    assert decay.isdisjoint(no_decay)
    assert decay | no_decay == {id(p) for p in model.parameters()}
    # frozen (requires_grad=False) parameters are left out
    gem_model = EmbeddingModel(MapBackbone(), local_dim=4, pooling="gem", pooling_kwargs={"learn_p": False})
    all_ids = {id(p) for g in gem_model.param_groups(0.1) for p in g["params"]}
    assert id(gem_model.pooling.p) not in all_ids


def test_build_model_from_config_object_and_keywords():
    BACKBONES.register("test-map", lambda pretrained=None: MapBackbone())
    try:
        cfg = SimpleNamespace(
            backbone="test-map", pretrained=None, backbone_kwargs={}, local_dim=8,
            pooling="gem", pooling_kwargs={"p": 2.0}, freeze_bn=True,
        )
        model = build_model(cfg)
        assert model.local_dim == 8 and model.pooling.p.item() == 2.0 and model.freeze_bn
        assert model(torch.randn(1, 3, 4, 4)).shape == (1, 8)
        model2 = build_model(cfg, pooling="gap", pooling_kwargs={}, local_dim=16)
        assert model2.pooling_name == "gap" and model2.local_dim == 16
        model3 = build_model(backbone="test-map", pooling="attention", local_dim=4)
        assert model3.pooling_name == "attention"
        model4 = build_model({"backbone": "test-map", "pooling": "gap", "local_dim": 4})
        assert model4.local_dim == 4
        with pytest.raises(ConfigError, match="unknown argument.*poolng"):
            build_model(backbone="test-map", poolng="gap")
        with pytest.raises(ConfigError, match="unknown model config key.*dim"):
            build_model({"backbone": "test-map", "dim": 3})
        with pytest.raises(ConfigError, match="unknown pooling"):
            build_model(backbone="test-map", pooling="average")
        with pytest.raises(ConfigError, match="does not accept"):
            build_model(backbone="test-map", pooling="gap", pooling_kwargs={"mu": 0.3})
    finally:
        BACKBONES.unregister("test-map")


def test_bninception_embedding_model_small_input():
    model = build_model(backbone="bninception", pooling="gap+gmp", local_dim=16, freeze_bn=True).eval()
    with torch.no_grad():
        emb = model(torch.randn(1, 3, 64, 64))
    assert emb.shape == (1, 16) and torch.allclose(emb.norm(dim=1), torch.ones(1))


def test_gsp_embedding_model_on_vit_tokens():
    model = build_model(
        backbone="timm:vit_tiny_patch16_224", backbone_kwargs={"img_size": 32}, pooling="gsp",
        local_dim=8, pooling_kwargs={"num_prototypes": 4},
    ).eval()
    with torch.no_grad():
        emb, details = model(torch.randn(2, 3, 32, 32), return_details=True)
    assert emb.shape == (2, 8)
    assert details["weights"].shape == (2, 4)
    assert torch.allclose(details["weights"].sum(1), torch.ones(2), atol=1e-5)


def test_gsp_prototypes_get_no_weight_decay():
    model = EmbeddingModel(MapBackbone(), local_dim=4, pooling="gsp", pooling_kwargs={"num_prototypes": 3})
    groups = {g["name"]: {id(p) for p in g["params"]} for g in model.param_groups(1e-4)}
    assert id(model.pooling.prototypes) in groups["no_decay"]
    assert id(model.local.weight) in groups["decay"]
