"""Pooling heads of EmbeddingModel against independent re-computations of the authors' formulas.

The authors' TF heads (``tensorflow/framework/layers/pooling/``): the baselines pool the raw
backbone map and project afterwards with a bias-free Dense layer (``GlobalPooling``, ``GMeanP``,
``DeLF``); GSP projects first with a bias-free 1x1 conv; GMP+GSP = GSP(P x) + P(GMP(x)); GeM+GSP =
P(GeM(mixing_weights * x)). Each reference below is written out with plain tensor operations on a
fixed map and the model's own parameters; the GSP weights come from the numpy Prop. 4.2 iteration
of the transport tests.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from gspdml.config import config_from_dict, load_config, to_dict, upgrade_stored_config
from gspdml.errors import ConfigError
from gspdml.models import EmbeddingModel, build_model
from gspdml.models.embedding import resolve_projection
from gspdml.pooling import POOLINGS, Pooling
from gspdml.pooling.base import masked_mean
from pooling.transport.references import reference_iteration

pytestmark = pytest.mark.usefixtures("float64_default")

C, D = 5, 3


class Features(nn.Module):
    """Backbone stand-in: its input is the feature map (or token set) it returns."""

    out_channels = C
    input_kind = "image"

    def forward(self, x):
        return x


def fixed_map():
    g = torch.Generator().manual_seed(3)
    return torch.randn(2, C, 3, 4, generator=g, dtype=torch.float64) * 1.5  # signs mixed, as projected maps


def model_for(pooling, **kw):
    torch.manual_seed(0)
    return EmbeddingModel(Features(), local_dim=D, pooling=pooling, **kw).eval()


def P(model, v):
    """The model's projection matrix applied over the last dimension, written as a matmul."""
    return v @ model.local.weight.reshape(D, -1).T


def tokens(x):
    return x.flatten(2).transpose(1, 2)  # (B, n, C)


def unit(v):
    return v / v.norm(dim=-1, keepdim=True)


def gsp_weights(gsp, local_tokens):
    """GSP's pooling weights p_j = (1/n - rho_j) / mu, rho from the numpy Prop. 4.2 iteration."""
    f = local_tokens / local_tokens.norm(dim=-1, keepdim=True).clamp_min(1.0)
    w = gsp.prototypes.detach()
    w = w / w.norm(dim=-1, keepdim=True).clamp_min(1.0)
    cost = (w[None, :, None, :] - f[:, None, :, :]).pow(2).sum(-1).sqrt()
    rho, _ = reference_iteration(cost.detach().numpy(), gsp.mu, gsp.eps)
    return (1.0 / local_tokens.shape[1] - torch.from_numpy(rho)) / gsp.mu


def check(model, x, ref, **kw):
    emb = model(x, **kw)
    assert emb.shape == ref.shape
    assert torch.allclose(emb, unit(ref), atol=1e-6, rtol=0), (emb, unit(ref))


# ------------------------------------------------------------------------------ baselines: pool, then P


def test_gap_head_pools_the_raw_map_then_projects():
    x = fixed_map()
    model = model_for("gap")
    assert model.projection == "after" and isinstance(model.local, nn.Linear) and model.local.bias is None
    assert model.pooling.dim == C
    check(model, x, P(model, x.mean(dim=(2, 3))))


def test_gmp_head():
    x = fixed_map()
    model = model_for("gmp")
    check(model, x, P(model, x.amax(dim=(2, 3))))


def test_gem_head_clamps_the_raw_map():
    x = fixed_map()
    model = model_for("gem")
    pooled = x.clamp(min=1e-6).pow(3).mean(dim=(2, 3)).pow(1 / 3)
    check(model, x, P(model, pooled))
    # projecting first is a different function (the projected map is clamped instead)
    before = model_for("gem", projection="before")
    local = torch.einsum("dc,bchw->bdhw", before.local.weight[:, :, 0, 0], x)
    check(before, x, local.clamp(min=1e-6).pow(3).mean(dim=(2, 3)).pow(1 / 3))
    assert not torch.allclose(model(x), before(x), atol=1e-3)


def test_gap_gmp_head():
    x = fixed_map()
    model = model_for("gap+gmp")
    check(model, x, P(model, x.mean(dim=(2, 3)) + x.amax(dim=(2, 3))))


def test_delf_head():
    x = fixed_map()
    model = model_for("delf", pooling_kwargs={"hidden": 4})
    lin1, lin2 = model.pooling.score[0], model.pooling.score[2]
    f = tokens(x)
    hidden = torch.relu(f @ lin1.weight.T + lin1.bias)
    a = torch.log1p(torch.exp(hidden @ lin2.weight.T + lin2.bias))  # softplus, (B, n, 1)
    check(model, x, P(model, (a * f).mean(dim=1)))


def test_layernorm_on_pooled_features_before_the_projection():
    x = fixed_map()
    model = model_for("gap", feature_norm="layernorm")
    assert model.norm is not None and not list(model.norm.parameters())  # no affine parameters
    v = x.mean(dim=(2, 3))
    normed = (v - v.mean(dim=1, keepdim=True)) / torch.sqrt(v.var(dim=1, unbiased=False, keepdim=True) + 1e-5)
    check(model, x, P(model, normed))


def test_projection_before_is_the_old_head():
    x = fixed_map()
    model = model_for("gmp", projection="before")
    assert isinstance(model.local, nn.Conv2d) and model.local.kernel_size == (1, 1) and model.local.bias is None
    assert model.pooling.dim == D
    local = torch.einsum("dc,bchw->bdhw", model.local.weight[:, :, 0, 0], x)
    check(model, x, local.amax(dim=(2, 3)))


def test_token_set_with_mask_after():
    x = tokens(fixed_map())
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[0, 7:] = False
    model = model_for("gap")
    emb, details = model(x, mask=mask, return_details=True)
    ref = torch.stack([x[0, :7].mean(0), x[1].mean(0)])
    assert torch.allclose(emb, unit(P(model, ref)), atol=1e-6, rtol=0)
    assert details["weights"].shape == (2, 12) and torch.all(details["weights"][0, 7:] == 0)


# ------------------------------------------------------------------------------ GSP family: P first


def test_gsp_head_projects_then_pools():
    x = fixed_map()
    model = model_for("gsp", pooling_kwargs={"num_prototypes": 4, "mu": 0.4, "eps": 4.0, "init": "random"})
    assert model.projection == "before" and model.pooling.dim == D
    local = P(model, tokens(x))
    p = gsp_weights(model.pooling, local)
    check(model, x, torch.einsum("bn,bnd->bd", p, local))


def test_gmp_gsp_head_is_the_authors_augment_max_pool():
    x = fixed_map()
    model = model_for("gmp+gsp", pooling_kwargs={"num_prototypes": 4, "mu": 0.4, "eps": 4.0, "init": "random"})
    assert model.projection == "before"
    local = P(model, tokens(x))
    p = gsp_weights(model.pooling.gsp, local)
    ref = torch.einsum("bn,bnd->bd", p, local) + P(model, x.amax(dim=(2, 3)))
    check(model, x, ref)
    _, details = model(x, return_details=True)
    assert torch.allclose(details["weights"].flatten(1), p, atol=1e-6) and details["marginals"].shape == (2, 4)


def test_gem_gsp_head_is_the_authors_use_gemp():
    x = fixed_map()
    model = model_for("gem+gsp", pooling_kwargs={"num_prototypes": 4, "mu": 0.4, "eps": 4.0, "init": "random"})
    local = P(model, tokens(x))
    mixing = local.shape[1] * gsp_weights(model.pooling.gsp, local)  # (1 - n rho) / mu
    raw = tokens(x) * mixing[..., None]
    gem = raw.clamp(min=1e-6).pow(3).mean(dim=1).pow(1 / 3)
    check(model, x, P(model, gem))
    assert isinstance(model.pooling.p, nn.Parameter) and model.pooling.p.requires_grad


def test_gem_gsp_outputs_gap_while_kcenter_is_pending():
    x = fixed_map()
    model = model_for("gem+gsp", pooling_kwargs={"num_prototypes": 2, "memory_size": 64})
    check(model, x, P(model, tokens(x)).mean(dim=1))  # GAP(P x), as the TF layer's global_pool


def test_gmp_gsp_with_mask_on_token_sets():
    x = tokens(fixed_map())
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[1, 9:] = False
    model = model_for("gmp+gsp", pooling_kwargs={"num_prototypes": 3, "mu": 0.5, "eps": 3.0, "init": "random"})
    emb = model(x, mask=mask)
    for b, n in ((0, 12), (1, 9)):
        f = x[b:b + 1, :n]
        local = P(model, f)
        p = gsp_weights(model.pooling.gsp, local)
        ref = torch.einsum("bn,bnd->bd", p, local) + P(model, f.amax(dim=1))
        assert torch.allclose(emb[b], unit(ref)[0], atol=1e-6, rtol=0)


def test_projected_variants_keep_the_earlier_definitions():
    x = fixed_map()
    kw = {"num_prototypes": 4, "mu": 0.4, "eps": 4.0, "init": "random"}
    model = model_for("gmp+gsp-projected", pooling_kwargs=kw)
    assert model.projection == "before"
    local = P(model, tokens(x))
    p = gsp_weights(model.pooling.gsp, local)
    weighted = local.shape[1] * p[..., None] * local
    check(model, x, torch.einsum("bn,bnd->bd", p, local) + weighted.amax(dim=1))
    gem = model_for("gem+gsp-projected", pooling_kwargs=kw)
    local = P(gem, tokens(x))
    weighted = local.shape[1] * gsp_weights(gem.pooling.gsp, local)[..., None] * local
    check(gem, x, weighted.clamp(min=1e-6).pow(3).mean(dim=1).pow(1 / 3))


# ------------------------------------------------------------------------------ auto, errors, stored configs


def test_auto_follows_the_pooling_class_attribute():
    for name in ("gsp", "gmp+gsp", "gem+gsp", "gmp+gsp-projected", "gem+gsp-projected"):
        assert resolve_projection("auto", name) == "before", name
    for name in ("gap", "gmp", "gem", "gap+gmp", "delf", "attention"):
        assert resolve_projection("auto", name) == "after", name
    assert resolve_projection("Before", "gap") == "before" and resolve_projection("after", "gsp") == "after"

    @POOLINGS.register("test-heads-first")
    class First(Pooling):
        projects_first = True

        def pool(self, feats, mask):
            return feats[:, 0], torch.zeros(feats.shape[:2]), None

    @POOLINGS.register("test-heads-plain")
    class Plain(Pooling):
        def pool(self, feats, mask):
            return masked_mean(feats, mask), torch.zeros(feats.shape[:2]), None

    try:
        assert build_model(backbone=Features(), pooling="test-heads-first", local_dim=D).projection == "before"
        plain = build_model(backbone=Features(), pooling="test-heads-plain", local_dim=D)
        assert plain.projection == "after" and plain.pooling.dim == C
        assert EmbeddingModel(Features(), local_dim=D, pooling=Plain(C)).projection == "after"
        assert EmbeddingModel(Features(), local_dim=D, pooling=First(D)).projection == "before"
    finally:
        POOLINGS.unregister("test-heads-first")
        POOLINGS.unregister("test-heads-plain")


def test_gsp_with_projection_after_pools_the_raw_map():
    model = model_for("gsp", projection="after", pooling_kwargs={"num_prototypes": 2, "init": "random"})
    assert model.pooling.dim == C and model(fixed_map()).shape == (2, D)


@pytest.mark.parametrize("kwargs, match", [
    ({"pooling": "gap", "projection": "sideways"}, "projection must be one of auto, before, after"),
    ({"pooling": "gap", "feature_norm": "batchnorm"}, "feature_norm must be one of none, layernorm"),
    ({"pooling": "gap", "projection": "before", "feature_norm": "layernorm"}, "needs projection 'after'.*'before' with pooling 'gap'"),
    ({"pooling": "gsp", "feature_norm": "layernorm"}, "resolves to 'before' for pooling 'gsp'"),
    ({"pooling": "gmp+gsp", "projection": "after"}, "'gmp\\+gsp' combines the raw backbone map"),
    ({"pooling": "gem+gsp", "projection": "after"}, "needs projection 'before' or 'auto'"),
])
def test_bad_combinations_are_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        EmbeddingModel(Features(), local_dim=D, **kwargs)


def test_a_ready_pooling_of_the_wrong_size_is_a_config_error():
    from gspdml.pooling import build_pooling

    with pytest.raises(ConfigError, match="has dim=3, but with the projection after .* out_channels = 5"):
        EmbeddingModel(Features(), local_dim=D, pooling=build_pooling("gap", D))
    with pytest.raises(ConfigError, match="has dim=5, but with the projection before .* local_dim = 3"):
        EmbeddingModel(Features(), local_dim=D, pooling=build_pooling("gap", C), projection="before")


def test_config_rejects_layernorm_with_projection_before():
    with pytest.raises(ConfigError, match="model.feature_norm"):
        load_config(None, ["model.feature_norm=layernorm", "model.projection=before"])


def test_build_model_reads_projection_and_feature_norm_from_the_config():
    cfg = load_config(None, ["model.pooling=gem", "model.feature_norm=layernorm", f"model.local_dim={D}"])
    model = build_model(cfg.model, backbone=Features(), pretrained=None, backbone_kwargs={})
    assert model.projection == "after" and model.feature_norm == "layernorm"
    assert "projection='after'" in repr(model) and "feature_norm='layernorm'" in repr(model)


def test_stored_config_without_projection_builds_the_old_head():
    cfg = load_config(None, ["model.pooling=gap", f"model.local_dim={D}"])
    stored = to_dict(cfg)
    del stored["model"]["projection"]  # a checkpoint written before the key existed
    old = config_from_dict(upgrade_stored_config(stored))
    assert old.model.projection == "before"
    torch.manual_seed(0)
    old_model = EmbeddingModel(Features(), local_dim=D, pooling="gap", projection="before")
    rebuilt = build_model(old.model, backbone=Features(), pretrained=None, backbone_kwargs={})
    assert isinstance(rebuilt.local, nn.Conv2d) and rebuilt.pooling.dim == D
    rebuilt.load_state_dict(old_model.state_dict())  # the old checkpoint's weights fit
    x = fixed_map()
    assert torch.allclose(rebuilt(x), old_model(x))
    # a new config keeps its own choice; a new-placement state dict does not load into the old head
    assert config_from_dict(upgrade_stored_config(to_dict(cfg))).model.projection == "auto"
    with pytest.raises(RuntimeError, match="size mismatch"):
        rebuilt.load_state_dict(model_for("gap").state_dict())


def test_param_groups_keep_their_rules_with_projection_after():
    model = model_for("delf", feature_norm="layernorm")
    groups = {g["name"]: {id(p) for p in g["params"]} for g in model.param_groups(1e-4)}
    assert id(model.local.weight) in groups["decay"]
    assert id(model.pooling.score[0].weight) in groups["decay"]
    assert id(model.pooling.score[0].bias) in groups["no_decay"]
    model = model_for("gem+gsp", pooling_kwargs={"num_prototypes": 2})
    groups = {g["name"]: {id(p) for p in g["params"]} for g in model.param_groups(1e-4)}
    assert {id(model.pooling.gsp.prototypes), id(model.pooling.p)} <= groups["no_decay"]
    assert id(model.local.weight) in groups["decay"]
    assert np.isclose(sum(len(g) for g in groups.values()), len(list(model.parameters())))


# ------------------------------------------------------------------------------ analysis and export


class ImageBackbone(nn.Module):
    out_channels = C
    input_kind = "image"

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, C, 3, padding=1)

    def forward(self, x):
        return torch.relu(self.conv(x))


@pytest.mark.parametrize("pooling, kw", [("gap", {}), ("attention", {}),
                                         ("gmp+gsp", {"num_prototypes": 2, "init": "random"})])
def test_weight_maps_of_the_analysis_work_for_both_placements(pooling, kw):
    from gspdml.analysis.weights import find_gsp, pooling_weight_maps

    torch.manual_seed(0)
    model = EmbeddingModel(ImageBackbone(), local_dim=D, pooling=pooling, pooling_kwargs=kw or None).eval().float()
    images = torch.rand(3, 3, 6, 5, dtype=torch.float32)
    gsp = find_gsp(model) if "gsp" in pooling else None
    weights, feats = pooling_weight_maps(model, images, batch_size=2, device="cpu", gsp=gsp)
    assert weights.shape == (3, 6, 5) and np.allclose(weights.sum((1, 2)), 1.0, atol=1e-5)
    if gsp is not None:  # GSP's input: the projected map
        assert feats.shape == (3, D, 6, 5)
        with torch.no_grad():
            assert torch.allclose(feats, model.project(model.backbone(images)).float(), atol=1e-5)


@pytest.mark.parametrize("pooling, kw", [("gem", {}), ("gmp+gsp", {"num_prototypes": 2, "init": "random"})])
def test_heads_export(pooling, kw):
    torch.manual_seed(0)
    model = EmbeddingModel(ImageBackbone(), local_dim=D, pooling=pooling, pooling_kwargs=kw or None,
                           feature_norm="layernorm" if pooling == "gem" else "none").eval()
    x = torch.rand(2, 3, 6, 5)
    program = torch.export.export(model, (x,))
    assert torch.allclose(program.module()(x), model(x), atol=1e-6)
