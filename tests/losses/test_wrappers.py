"""The loss wrappers: the batch check, proxy learning-rate multipliers and NIR over a proxy loss."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses as pml_losses

from gspdml.errors import InputError
from gspdml.losses import LOSSES, NIRLoss, build_loss
from gspdml.losses.wrappers import NIRProxyLoss, ProxyLoss, check_batch


def test_batch_check():
    with pytest.raises(InputError, match="built for 4"):
        build_loss("C1", 3, 4)(torch.randn(4, 5), torch.zeros(4, dtype=torch.long))
    with pytest.raises(InputError, match="labels must be a"):
        build_loss("C1", 3, 4)(torch.randn(4, 4), torch.zeros(3, dtype=torch.long))
    with pytest.raises(InputError, match=r"^mine: embeddings must be a \(B, D\) tensor"):
        check_batch(torch.randn(4), torch.zeros(4, dtype=torch.long), "mine")
    check_batch(torch.randn(4, 3), torch.zeros(4, dtype=torch.long), "mine", embedding_dim=3)


def test_every_proxy_loss_exposes_proxy_lr_mult_in_its_param_groups():
    proxy_losses = []
    for name in LOSSES:
        loss = build_loss(name, 3, 4)
        groups = {g["name"]: g for g in loss.param_groups()}
        if "proxies" not in groups:
            assert not hasattr(loss, "proxy_lr_mult"), name
            continue
        proxy_losses.append(name)
        assert groups["proxies"]["lr_mult"] == loss.proxy_lr_mult, name
        assert groups["proxies"]["params"][0] is loss.proxies, name
        custom = build_loss(name, 3, 4, proxy_lr_mult=7.0)
        assert custom.proxy_lr_mult == 7.0 and custom.param_groups()[0]["lr_mult"] == 7.0, name
    assert sorted(proxy_losses) == ["PAnchor", "PAnchor+NIR", "PNCA", "PNCA++", "PNCA+NIR"]


def test_nir_wraps_any_proxy_loss():
    torch.manual_seed(0)
    proxy = ProxyLoss("Anchor", pml_losses.ProxyAnchorLoss(num_classes=3, embedding_size=4), 4, proxy_lr_mult=5.0)
    loss = NIRProxyLoss(proxy, NIRLoss(4, num_blocks=1, hidden=4, num_hidden_layers=1), proxy_weight=0.5)
    emb, labels = F.normalize(torch.randn(6, 4), dim=1), torch.arange(3).repeat(2)
    ref = loss.nir(emb, proxy.proxies, labels) + 0.5 * proxy(emb, labels)
    assert loss.name == "Anchor+NIR" and loss(emb, labels).item() == pytest.approx(ref.item(), rel=1e-6)
    assert [(g["name"], g["lr_mult"]) for g in loss.param_groups()] == [("proxies", 5.0), ("nir_flow", 50.0)]
    assert loss.proxies is proxy.proxies and loss.proxy_lr_mult == 5.0
