"""NIR: invertible conditional flow, exact log-determinant, objective, gradients, combination."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gspdml.errors import ConfigError, InputError
from gspdml.losses import build_loss
from gspdml.losses.nir import ConditionalFlow, NIRLoss
from gspdml.losses.presets import NIR_WEIGHTS


pytestmark = pytest.mark.usefixtures("float64_default")  # tight tolerances against naive references


def _scramble(module, scale=0.6):
    """Larger random weights so the couplings are far from the identity (and the clamp matters)."""
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)


def test_architecture_matches_the_reference_settings():
    flow = NIRLoss(128).flow
    assert len(flow.blocks) == 5
    subnet = flow.blocks[0].subnet2
    linears = [m for m in subnet if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 8  # 7 hidden layers of width 128 + output layer
    assert linears[0].in_features == 64 + 128 and all(l.out_features == 128 for l in linears[:-1])
    assert linears[-1].out_features == 2 * 64
    assert sum(isinstance(m, torch.nn.ReLU) for m in subnet) == 7
    perms = flow.permutations
    assert perms.shape == (5, 128) and all(torch.equal(p.sort().values, torch.arange(128)) for p in perms)


def test_flow_is_invertible():
    flow = ConditionalFlow(7, 5, num_blocks=3, hidden=16, num_hidden_layers=2)
    _scramble(flow)
    x, c = torch.randn(6, 7), torch.randn(6, 5)
    z, logdet = flow(x, c)
    x_back, inv_logdet = flow.inverse(z, c)
    assert torch.allclose(x_back, x, atol=1e-10)
    assert torch.allclose(inv_logdet, -logdet, atol=1e-10)
    assert not torch.allclose(z, x)


def test_logdet_equals_bruteforce_jacobian():
    dim = 5
    flow = ConditionalFlow(dim, dim, num_blocks=5, hidden=12, num_hidden_layers=3)
    _scramble(flow, scale=0.3)
    x, c = torch.randn(4, dim), torch.randn(4, dim)
    _, logdet = flow(x, c)
    for i in range(4):
        jac = torch.autograd.functional.jacobian(lambda v: flow(v[None], c[i:i + 1])[0][0], x[i])
        sign, ref = torch.linalg.slogdet(jac)
        assert sign > 0
        assert logdet[i].item() == pytest.approx(ref.item(), abs=1e-8)
        assert abs(logdet[i].item()) > 0.5  # far from volume preserving
    # soft clamp: every half-coupling log-scale lies in (-2, 2)
    block = flow.blocks[0]
    s = block._log_scale(torch.linspace(-1e6, 1e6, 101))
    assert s.abs().max() < 2.0 and s.abs().max() > 1.99


def test_objectives_and_gradients_reach_proxies_inputs_and_flow():
    torch.manual_seed(0)
    nir = NIRLoss(6, num_blocks=2, hidden=8, num_hidden_layers=2)
    emb = torch.randn(5, 6, requires_grad=True)
    proxies = torch.randn(3, 6, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 0, 1])
    z, logdet = nir.latent(emb, proxies, labels)
    # the same by hand: normalise, select the proxy rows, run the flow
    z_ref, ld_ref = nir.flow(F.normalize(emb, dim=1), F.normalize(proxies, dim=1)[labels])
    assert torch.allclose(z, z_ref) and torch.allclose(logdet, ld_ref)
    nll = 0.5 * (z_ref ** 2).sum(1) - ld_ref
    loss = nir(emb, proxies, labels)
    assert loss.item() == pytest.approx(torch.exp(nll).mean().item(), rel=1e-12)
    assert NIRLoss(6, num_blocks=2, hidden=8, num_hidden_layers=2, objective="nll").flow.load_state_dict(nir.flow.state_dict())
    nll_loss = NIRLoss(6, num_blocks=2, hidden=8, num_hidden_layers=2, objective="nll")
    nll_loss.flow.load_state_dict(nir.flow.state_dict())
    assert nll_loss(emb, proxies, labels).item() == pytest.approx(nll.mean().item(), rel=1e-12)
    loss.backward()
    assert emb.grad.abs().sum() > 0
    assert proxies.grad.abs().sum() > 0
    assert all(p.grad is not None for p in nir.parameters())
    # proxies given per sample instead of as a table
    assert nir(emb, proxies[labels], None).item() == pytest.approx(loss.item(), rel=1e-12)


def test_nir_errors():
    nir = NIRLoss(6, num_blocks=1, hidden=4, num_hidden_layers=1)
    with pytest.raises(InputError, match=r"embeddings must be \(B, 6\)"):
        nir(torch.randn(3, 5), torch.randn(3, 5))
    with pytest.raises(InputError, match="labels must lie in"):
        nir(torch.randn(3, 6), torch.randn(2, 6), torch.tensor([0, 1, 2]))
    with pytest.raises(ConfigError, match="objective"):
        NIRLoss(6, objective="kl")


@pytest.mark.parametrize("name", ["PAnchor+NIR", "PNCA+NIR"])
def test_combined_loss_and_param_groups(name):
    loss = build_loss(name, 4, 6, dataset="cars196", num_blocks=2, hidden=8, num_hidden_layers=2)
    emb = F.normalize(torch.randn(8, 6), dim=1).requires_grad_()
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    total = loss(emb, labels)
    ref = loss.nir(emb, loss.proxy_loss.proxies, labels) + NIR_WEIGHTS["cars196"] * loss.proxy_loss(emb, labels)
    assert total.item() == pytest.approx(ref.item(), rel=1e-12)
    assert loss.proxy_weight == 0.01
    groups = {g["name"]: g for g in loss.param_groups()}
    assert groups["proxies"]["lr_mult"] == 4000.0 and groups["nir_flow"]["lr_mult"] == 50.0
    assert groups["proxies"]["params"][0] is loss.proxy_loss.proxies
    assert len(groups["nir_flow"]["params"]) == len(list(loss.nir.parameters()))
    total.backward()
    assert loss.proxy_loss.proxies.grad.abs().sum() > 0 and emb.grad.abs().sum() > 0
    custom = build_loss(name, 4, 6, proxy_weight=0.5, dataset=None, num_blocks=1, hidden=4, num_hidden_layers=1)
    assert custom.proxy_weight == 0.5
    with pytest.raises(ConfigError, match="proxy_weight"):
        build_loss(name, 4, 6, dataset=None)
