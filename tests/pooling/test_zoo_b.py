"""The supplement's poolings cbam, nap, otp, soap, meta_global against naive re-computations."""
from __future__ import annotations

import math

import pytest
import torch

from gspdml.errors import InputError
from gspdml.pooling import build_pooling
from pooling.feature_maps import feature_map

pytestmark = pytest.mark.usefixtures("float64_default")  # tight tolerances against naive references

ZOO = {
    "cbam": {"channel_reduction": 2},
    "nap": {},
    "otp": {"num_references": 2, "gamma": 2.0, "iterations": 50},
    "soap": {},
    "meta_global": {"num_prototypes": 3},
}


def build(name, dim=6):
    torch.manual_seed(1)
    return build_pooling(name, dim, **ZOO[name])


@pytest.mark.parametrize("name", list(ZOO))
def test_shape_gradient_and_weights(name):
    pool = build(name)
    x = feature_map(c=6, positive=(name == "soap")).requires_grad_(True)
    out, d = pool(x, return_details=True)
    assert out.shape == (2, 6) and torch.isfinite(out).all()
    assert d["weights"].shape == (2, 3, 4)
    assert torch.allclose(d["weights"].flatten(1).sum(1), torch.ones(2))
    loss = out.square().sum()
    if d["marginals"] is not None:  # meta_global's attribute map trains through the marginals (L_ZS)
        loss = loss + d["marginals"].square().sum()
    loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    trained = [p for p in pool.parameters() if p.requires_grad]
    assert trained and any(p.grad is not None and p.grad.abs().sum() > 0 for p in trained)


@pytest.mark.parametrize("name", list(ZOO))
def test_mask_equals_dropping_tokens(name):
    pool = build(name).eval()  # eval: soap's batch norm uses running statistics
    g = torch.Generator().manual_seed(3)
    tokens = torch.randn(2, 6, 6, generator=g).abs() + 0.1
    mask = torch.tensor([[True, True, False, True, False, True], [True] * 6])
    out, d = pool(tokens, mask=mask, return_details=True)
    assert torch.allclose(out[0:1], pool(tokens[0:1, mask[0]]))
    assert torch.all(d["weights"][0, ~mask[0]] == 0)
    poisoned = tokens.clone()
    poisoned[0, ~mask[0]] = 1e6
    assert torch.allclose(pool(poisoned, mask=mask), out)


def test_mask_on_maps_ignores_padding_values():
    x = feature_map(c=6)
    mask = torch.ones(2, 3, 4, dtype=torch.bool)
    mask[0, :, 3] = False
    for name in ("cbam", "nap"):
        pool = build(name)
        poisoned = x.clone()
        poisoned[0, :, :, 3] = 1e6
        assert torch.allclose(pool(poisoned, mask=mask), pool(x, mask=mask))


def test_bad_arguments():
    with pytest.raises(InputError, match="multiple of num_references"):
        build_pooling("otp", 6, num_references=4)
    with pytest.raises(InputError, match="odd"):
        build_pooling("cbam", 6, conv_size=2)
    with pytest.raises(InputError, match="odd"):
        build_pooling("nap", 6, pool_size=4)
    with pytest.raises(InputError, match="num_prototypes"):
        build_pooling("meta_global", 6, num_prototypes=0)


def _sigmoid(v):
    return 1.0 / (1.0 + math.exp(-v))


def test_cbam_attention_against_naive_loops():
    pool = build("cbam")
    x = feature_map(c=6)
    B, C, H, W = x.shape
    channel, spatial = pool.attention_maps(x)
    W1, W2 = pool.channel_mlp[0].weight, pool.channel_mlp[2].weight
    kernel = pool.spatial_conv.weight[0]

    def mlp(vec):
        hid = [max(0.0, sum(W1[h, c].item() * vec[c] for c in range(C))) for h in range(W1.shape[0])]
        return [sum(W2[c, h].item() * hid[h] for h in range(len(hid))) for c in range(C)]

    for b in range(B):
        vals = [[x[b, c, r, s].item() for r in range(H) for s in range(W)] for c in range(C)]
        avg, mx = mlp([sum(v) / len(v) for v in vals]), mlp([max(v) for v in vals])
        ch = [_sigmoid(avg[c] + mx[c]) for c in range(C)]
        assert channel[b].tolist() == pytest.approx(ch)
        g = [[[x[b, c, r, s].item() * ch[c] for c in range(C)] for s in range(W)] for r in range(H)]
        desc = [[[max(g[r][s]) for s in range(W)] for r in range(H)], [[sum(g[r][s]) / C for s in range(W)] for r in range(H)]]
        sp = [[0.0] * W for _ in range(H)]
        for r in range(H):
            for s in range(W):
                acc = 0.0
                for k in range(2):
                    for dr in (-1, 0, 1):
                        for ds in (-1, 0, 1):
                            if 0 <= r + dr < H and 0 <= s + ds < W:
                                acc += kernel[k, dr + 1, ds + 1].item() * desc[k][r + dr][s + ds]
                sp[r][s] = _sigmoid(acc)
                assert spatial[b, r, s].item() == pytest.approx(sp[r][s])
        pooled = [sum(g[r][s][c] * sp[r][s] for r in range(H) for s in range(W)) / (H * W) for c in range(C)]
        expected = [sum(pool.transform.weight[o, c].item() * pooled[c] for c in range(C)) for o in range(C)]
        assert pool(x)[b].tolist() == pytest.approx(expected)
        total = sum(sum(row) for row in sp)
        _, d = pool(x, return_details=True)
        assert d["weights"][b].flatten().tolist() == pytest.approx([sp[r][s] / total for r in range(H) for s in range(W)])


def test_nap_against_naive_loops():
    pool = build("nap")
    x = feature_map(c=6)
    B, C, H, W = x.shape
    out = pool(x)
    Wt, bias = pool.transform.weight, pool.transform.bias
    for b in range(B):
        acc = [0.0] * C
        for r in range(H):
            for s in range(W):
                nb = [(r + i, s + j) for i in (-1, 0, 1) for j in (-1, 0, 1) if 0 <= r + i < H and 0 <= s + j < W]
                sm = [sum(x[b, c, i, j].item() for i, j in nb) / len(nb) for c in range(C)]
                a = math.sqrt(sum(x[b, c, r, s].item() ** 2 for c in range(C)))
                for o in range(C):
                    acc[o] += a * (sum(Wt[o, c].item() * sm[c] for c in range(C)) + bias[o].item())
        assert out[b].tolist() == pytest.approx([v / (H * W) for v in acc])
    # the attention carries no gradient: the input gradient flows through the transform only
    x1 = x.clone().requires_grad_(True)
    pool(x1).sum().backward()
    ref = torch.zeros_like(x)
    norms = x.norm(dim=1)  # (B, H, W)
    for b in range(B):
        # d/ds_j of sum_j a_j (W s_j): a_j W^T 1, then the smoothing's adjoint spreads it
        for r in range(H):
            for s in range(W):
                nb = [(r + i, s + j) for i in (-1, 0, 1) for j in (-1, 0, 1) if 0 <= r + i < H and 0 <= s + j < W]
                for i, j in nb:
                    ref[b, :, i, j] += norms[b, r, s] * Wt.sum(0) / len(nb) / (H * W)
    assert torch.allclose(x1.grad, ref)


def _naive_sinkhorn(cost, gamma, iterations):
    m, n = len(cost), len(cost[0])
    K = [[math.exp(-gamma * cost[k][j]) for j in range(n)] for k in range(m)]
    u = [1.0] * m
    for _ in range(iterations):
        v = [(1.0 / n) / sum(u[k] * K[k][j] for k in range(m)) for j in range(n)]
        u = [(1.0 / m) / sum(K[k][j] * v[j] for j in range(n)) for k in range(m)]
    v = [(1.0 / n) / sum(u[k] * K[k][j] for k in range(m)) for j in range(n)]
    return [[u[k] * K[k][j] * v[j] for j in range(n)] for k in range(m)]


def test_otp_embedding_against_naive_loop_and_plan_marginals():
    pool = build("otp")
    x = feature_map(c=6)
    tokens = x.flatten(2).transpose(1, 2)
    out = pool(x)
    m, e = pool.references.shape
    for b in range(2):
        proj = [[sum(pool.project.weight[o, c].item() * tokens[b, j, c].item() for c in range(6)) for o in range(e)] for j in range(12)]
        refs = [[v.item() for v in row] for row in pool.references]

        def unit(v):
            nrm = math.sqrt(sum(t * t for t in v))
            return [t / nrm for t in v]

        cost = [[math.dist(unit(refs[k]), unit(proj[j])) for j in range(12)] for k in range(m)]
        P = _naive_sinkhorn(cost, 2.0, 50)
        expected = [math.sqrt(m) * sum(P[k][j] * proj[j][o] for j in range(12)) for k in range(m) for o in range(e)]
        assert out[b].tolist() == pytest.approx(expected)
    # the plan's marginals equal their targets (columns exactly, rows after convergence)
    converged = build_pooling("otp", 6, num_references=3, iterations=300)
    mask = torch.tensor([[True] * 9 + [False] * 3, [True] * 12])
    P = converged.plan(converged.project(tokens), mask)
    q = mask.double() / mask.sum(1, keepdim=True)
    assert torch.allclose(P.sum(1), q, atol=1e-12)
    assert torch.allclose(P.sum(2), torch.full((2, 3), 1.0 / 3), atol=1e-8)
    assert torch.all(P[0, :, 9:] == 0)


def test_soap_enhancement_against_naive_formula():
    pool = build("soap").eval()
    with torch.no_grad():  # non-trivial running statistics
        pool.query_norm.running_mean.uniform_(-0.5, 0.5)
        pool.key_norm.running_var.uniform_(0.5, 2.0)
    x = feature_map(c=6, positive=True)
    f = x.flatten(2).transpose(1, 2).detach()  # (B, n, C)

    @torch.no_grad()
    def head(lin, bn, v):
        y = lin(v)
        y = (y - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
        return y.clamp_min(0)

    with torch.no_grad():
        out = pool(x)
    for b in range(2):
        q, k, v = head(pool.query, pool.query_norm, f[b]), head(pool.key, pool.key_norm, f[b]), pool.value(f[b]).detach()
        rows = []
        for i in range(12):
            s = [math.exp(float(q[i] @ k[j]) / math.sqrt(6)) for j in range(12)]
            z = sum(s[j] / sum(s) * v[j] for j in range(12))
            rows.append(f[b, i] + pool.out(z).detach())
        enh = torch.stack(rows)
        p = float(pool.p.detach())
        gem = enh.clamp_min(1e-6).pow(p).mean(0).pow(1 / p)
        assert torch.allclose(out[b], gem)


def test_meta_global_is_gap_with_marginals():
    pool = build("meta_global")
    x = feature_map(c=6)
    out, d = pool(x, return_details=True)
    assert torch.equal(out, build_pooling("gap", 6)(x))
    marg = d["marginals"]
    assert marg.shape == (2, 3)
    assert torch.allclose(marg.sum(1), torch.ones(2))
    tokens = x.flatten(2).transpose(1, 2)
    A = pool.attributes.weight.detach()
    for b in range(2):
        acc = [0.0] * 3
        for j in range(12):
            f = tokens[b, j]
            logits = [10.0 * float(A[k] @ f) / float(f.norm()) for k in range(3)]
            z = sum(math.exp(t) for t in logits)
            for k in range(3):
                acc[k] += math.exp(logits[k]) / z / 12
        assert marg[b].tolist() == pytest.approx(acc)
    marg.sum().backward()  # the marginals train the attribute map
    assert pool.attributes.weight.grad.abs().sum() > 0
