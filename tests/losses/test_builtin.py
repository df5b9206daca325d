"""The built-in losses against naive references written here (explicit loops over pairs/triplets),
the LOSSES registry and its messages, and "+NIR" over any proxy-loss builder."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from gspdml.errors import ConfigError, InputError
from gspdml.losses import LOSSES, build_loss, loss_arguments, with_nir
from gspdml.losses.builtin import proxy_anchor
from gspdml.losses.presets import C2_MARGINS
from gspdml.losses.wrappers import NIRProxyLoss, ProxyLoss


pytestmark = pytest.mark.usefixtures("float64_default")  # tight tolerances against naive references


def _batch(n_classes=3, per_class=3, dim=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    emb = F.normalize(torch.randn(n_classes * per_class, dim, generator=g), dim=1)
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    return emb, labels


def _dist(a, b):
    return math.sqrt(sum((x - y) ** 2 for x, y in zip(a.tolist(), b.tolist())))


def _sim(a, b):
    return sum(x * y for x, y in zip(a.tolist(), b.tolist()))


def _avg_nonzero(values):
    nz = [v for v in values if v > 0]
    return sum(nz) / len(nz) if nz else 0.0


def naive_contrastive(emb, labels, pos_margin, neg_margin):
    pos, neg = [], []
    for i in range(len(emb)):
        for j in range(len(emb)):
            if i == j:
                continue
            d = _dist(emb[i], emb[j])
            if labels[i] == labels[j]:
                pos.append(max(0.0, d - pos_margin))
            else:
                neg.append(max(0.0, neg_margin - d))
    return _avg_nonzero(pos) + _avg_nonzero(neg)


def naive_triplet(emb, labels, margin):
    losses = []
    n = len(emb)
    for a in range(n):
        for p in range(n):
            if p == a or labels[p] != labels[a]:
                continue
            for q in range(n):
                if labels[q] == labels[a]:
                    continue
                losses.append(max(0.0, _dist(emb[a], emb[p]) - _dist(emb[a], emb[q]) + margin))
    return _avg_nonzero(losses)


def naive_ms(emb, labels, alpha, beta, base, eps):
    total = 0.0
    n = len(emb)
    for a in range(n):
        pos = [_sim(emb[a], emb[p]) for p in range(n) if p != a and labels[p] == labels[a]]
        neg = [_sim(emb[a], emb[q]) for q in range(n) if labels[q] != labels[a]]
        kept_pos = [s for s in pos if s - eps < max(neg)]  # MS miner
        kept_neg = [s for s in neg if s + eps > min(pos)]
        lp = math.log(1 + sum(math.exp(-alpha * (s - base)) for s in kept_pos)) / alpha
        ln = math.log(1 + sum(math.exp(beta * (s - base)) for s in kept_neg)) / beta
        total += lp + ln
    return total / n


def naive_proxy_anchor(emb, labels, proxies, alpha, margin):
    c = len(proxies)
    with_pos = [k for k in range(c) if any(int(y) == k for y in labels)]
    pos_sum = 0.0
    for k in with_pos:
        pos_sum += math.log(1 + sum(math.exp(-alpha * (_sim(emb[i], proxies[k]) - margin)) for i in range(len(emb)) if labels[i] == k))
    neg_sum = 0.0
    for k in range(c):
        neg_sum += math.log(1 + sum(math.exp(alpha * (_sim(emb[i], proxies[k]) + margin)) for i in range(len(emb)) if labels[i] != k))
    return pos_sum / len(with_pos) + neg_sum / c


def naive_proxy_nca(emb, labels, proxies, scale):
    total = 0.0
    for i in range(len(emb)):
        logits = [-scale * _dist(emb[i], proxies[k]) ** 2 for k in range(len(proxies))]
        z = sum(math.exp(v) for v in logits)
        total += -math.log(math.exp(logits[int(labels[i])]) / z)
    return total / len(emb)


@pytest.mark.parametrize("name,margins", [("C1", (0.0, 0.5)), ("c2", C2_MARGINS["cub"])])
def test_contrastive_against_loops(name, margins):
    emb, labels = _batch()
    emb = emb * 0.5 + 0.1  # bring pairs inside the margins so both terms are active
    emb = F.normalize(emb, dim=1)
    loss = build_loss(name, 3, 4)
    assert loss(emb, labels).item() == pytest.approx(naive_contrastive(emb, labels, *margins), rel=1e-9)


def test_c2_dataset_margins_and_explicit():
    emb, labels = _batch(seed=3)
    for ds in ("cars196", "sop"):
        loss = build_loss("C2", 3, 4, dataset=ds)
        assert loss(emb, labels).item() == pytest.approx(naive_contrastive(emb, labels, *C2_MARGINS[ds]), rel=1e-9)
    loss = build_loss("C2", 3, 4, dataset=None, pos_margin=0.1, neg_margin=1.2)
    assert loss(emb, labels).item() == pytest.approx(naive_contrastive(emb, labels, 0.1, 1.2), rel=1e-9)
    with pytest.raises(ConfigError, match="give dataset"):
        build_loss("C2", 3, 4, dataset=None)
    with pytest.raises(ConfigError, match="unknown dataset 'imagenet'.*cub, cars196, sop, inshop"):
        build_loss("C2", 3, 4, dataset="imagenet")


def test_triplet_all_triplets_by_loops():
    emb, labels = _batch(seed=1)
    for margin in (0.05, 0.5):
        loss = build_loss("Triplet", 3, 4, margin=margin)
        assert loss(emb, labels).item() == pytest.approx(naive_triplet(emb, labels, margin), rel=1e-9)


def test_multi_similarity_formula():
    emb, labels = _batch(n_classes=3, per_class=3, seed=2)
    loss = build_loss("MS", 3, 4, miner_epsilon=0.1)  # the default is now the authors' no miner (test_recipes.py)
    ref = naive_ms(emb, labels, alpha=2.0, beta=50.0, base=0.5, eps=0.1)
    assert loss(emb, labels).item() == pytest.approx(ref, rel=1e-9)
    loss = build_loss("ms", 3, 4, beta=40.0, miner_epsilon=0.3)
    assert loss(emb, labels).item() == pytest.approx(naive_ms(emb, labels, 2.0, 40.0, 0.5, 0.3), rel=1e-9)


def test_proxy_anchor_formula_and_groups():
    emb, labels = _batch(n_classes=3, per_class=2, seed=4)
    loss = build_loss("PAnchor", 5, 4)  # 5 proxies, 2 without samples in the batch
    proxies = F.normalize(loss.proxies.detach(), dim=1)
    ref = naive_proxy_anchor(emb, labels, proxies, alpha=32.0, margin=0.1)
    assert loss(emb, labels).item() == pytest.approx(ref, rel=1e-8)
    groups = loss.param_groups()
    assert len(groups) == 1 and groups[0]["name"] == "proxies" and groups[0]["lr_mult"] == 100.0
    assert groups[0]["params"][0] is loss.proxies
    loss(emb, labels).backward()
    assert loss.proxies.grad.abs().sum() > 0


def test_proxy_nca_formula():
    emb, labels = _batch(n_classes=3, per_class=2, seed=5)
    loss = build_loss("PNCA", 4, 4, proxy_lr_mult=10.0, similarity="squared_l2")  # default: cosine (test_recipes.py)
    proxies = F.normalize(loss.proxies.detach(), dim=1)
    assert loss(emb, labels).item() == pytest.approx(naive_proxy_nca(emb, labels, proxies, 9.0), rel=1e-8)
    assert loss.param_groups()[0]["lr_mult"] == 10.0
    with pytest.raises(InputError, match=r"labels must lie in \[0, 3\]"):
        loss(emb, labels + 5)


def test_xbm_warmup_memory_and_state_dict():
    emb1, labels1 = _batch(seed=6)
    emb2, labels2 = _batch(seed=7)
    loss = build_loss("XBM", 3, 4, warmup_iters=2, memory_size=12, pair_loss="contrastive")
    loss.train()
    # warm-up: batch loss only, memory untouched
    for emb, labels in ((emb1, labels1), (emb2, labels2)):
        assert loss(emb, labels).item() == pytest.approx(naive_contrastive(emb, labels, 0.0, 0.5), rel=1e-9)
    assert loss.memory_contents()[0].shape[0] == 0 and int(loss.iteration) == 2 and loss.memory_active
    # step 3: memory holds batch 1 only (9 of 12 slots): not full yet, so no memory loss (the authors' start)
    out = loss(emb1, labels1).item()
    mem_emb, mem_labels = loss.memory_contents()
    assert torch.equal(mem_emb, emb1) and torch.equal(mem_labels, labels1)
    assert out == pytest.approx(naive_contrastive(emb1, labels1, 0.0, 0.5), rel=1e-9)
    # step 4: batch 2 wraps around the ring buffer of 12 slots: slots 9, 10, 11, 0, ..., 5 get
    # batch 2, slots 6..8 keep batch 1; memory loss over (batch 2) x (memory) minus self pairs
    out = loss(emb2, labels2).item()
    mem, mem_lab = emb1.clone()[:9].repeat(2, 1)[:12], labels1.repeat(2)[:12]
    mem[6:9], mem_lab[6:9] = emb1[6:9], labels1[6:9]
    for k in range(9):
        mem[(9 + k) % 12], mem_lab[(9 + k) % 12] = emb2[k], labels2[k]
    assert torch.equal(loss.memory_contents()[0], mem)
    pos, neg = [], []
    for i in range(len(emb2)):
        for j in range(12):
            if j == (9 + i) % 12:
                continue
            d = _dist(emb2[i], mem[j])
            if labels2[i] == mem_lab[j]:
                pos.append(d)
            else:
                neg.append(max(0.0, 0.5 - d))
    ref = naive_contrastive(emb2, labels2, 0.0, 0.5) + _avg_nonzero(pos) + _avg_nonzero(neg)
    assert out == pytest.approx(ref, rel=1e-9)
    # eval mode neither counts nor enqueues
    loss.eval()
    loss(emb1, labels1)
    assert int(loss.iteration) == 4 and int(loss.queue_idx) == 6 and bool(loss.memory_filled)
    # the state (counter, memory, pointer) survives a state_dict round trip
    restored = build_loss("XBM", 3, 4, warmup_iters=2, memory_size=12, pair_loss="contrastive")
    restored.load_state_dict(loss.state_dict())
    restored.train()
    loss.train()
    emb3, labels3 = _batch(seed=8)
    assert restored(emb3, labels3).item() == pytest.approx(loss(emb3, labels3).item(), rel=1e-12)
    assert torch.equal(restored.memory.embedding_memory, loss.memory.embedding_memory)
    assert int(restored.queue_idx) == int(loss.queue_idx) == 3


def test_registry_names_and_errors():
    assert set(LOSSES) == {"C1", "C2", "Triplet", "MS", "XBM", "PNCA", "PNCA++", "PAnchor", "PAnchor+NIR", "PNCA+NIR"}
    assert build_loss("panchor+nir", 3, 4).name == "PAnchor+NIR"
    assert build_loss("TRIPLET", 3, 4).name == "Triplet"
    with pytest.raises(ConfigError, match="unknown loss 'ArcFace'; valid choices are: C1, C2, MS, PAnchor"):
        build_loss("ArcFace", 3, 4)
    with pytest.raises(ConfigError, match="'MS' does not accept setting\\(s\\) margin; accepted settings: alpha, beta"):
        build_loss("MS", 3, 4, margin=0.1)
    with pytest.raises(ConfigError, match="num_classes"):
        build_loss("PAnchor", 0, 4)
    assert loss_arguments("PAnchor") == {"alpha": 32.0, "margin": 0.1, "proxy_lr_mult": 100.0, "dataset": None}


def test_nir_variants_are_one_wrapper_over_the_proxy_builders():
    assert list(loss_arguments("PAnchor+NIR")) == [
        "dataset", "proxy_weight", "alpha", "margin", "proxy_lr_mult", "flow_lr_mult",
        "num_blocks", "hidden", "num_hidden_layers", "clamp", "objective", "cond_mode", "noise", "subnet_init",
    ]
    assert list(loss_arguments("PNCA+NIR"))[:5] == ["dataset", "proxy_weight", "softmax_scale", "similarity", "proxy_lr_mult"]
    assert loss_arguments("PNCA+NIR")["proxy_lr_mult"] == 4000.0 and loss_arguments("PNCA+NIR")["dataset"] == "cub"
    # any proxy-loss builder gets NIR: its own settings are passed through, unknown ones rejected
    seen = {}

    def scaled_anchor(num_classes, embedding_dim, scale=2.0, proxy_lr_mult=100.0, dataset=None):
        seen["scale"] = scale
        return proxy_anchor(num_classes, embedding_dim, alpha=16.0 * scale, proxy_lr_mult=proxy_lr_mult)

    builder = with_nir(scaled_anchor, "Scaled+NIR")
    loss = builder(3, 4, scale=3.0, proxy_weight=0.2, num_blocks=1, hidden=4, num_hidden_layers=1)
    assert isinstance(loss, NIRProxyLoss) and isinstance(loss.proxy_loss, ProxyLoss)
    assert seen["scale"] == 3.0 and loss.proxy_weight == 0.2 and loss.proxy_lr_mult == 4000.0
    assert len(loss.nir.flow.blocks) == 1
    with pytest.raises(TypeError):
        builder(3, 4, margin=0.1)
    with pytest.raises(ConfigError, match="'Scaled\\+NIR': give dataset"):
        builder(3, 4, dataset=None)
