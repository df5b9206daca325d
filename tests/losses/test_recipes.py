"""The GSP authors' loss recipes against naive re-implementations written here (loops over pairs,
float64): XBM's original contrastive and its memory schedule, ProxyNCA (cosine / 0.11), ProxyNCA++,
ProxyAnchor as the authors' TF, MS without miner; the dataset-picked presets and the errors."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from gspdml.config import PROXY_LOSSES
from gspdml.errors import ConfigError
from gspdml.losses import build_loss, loss_arguments
from gspdml.losses import presets

pytestmark = pytest.mark.usefixtures("float64_default")


def _batch(n_classes=3, per_class=3, dim=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(n_classes * per_class, dim, generator=g)
    return emb, torch.arange(n_classes).repeat_interleave(per_class)


def _cos(a, b):
    a, b = a.tolist(), b.tolist()
    dot = sum(x * y for x, y in zip(a, b))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def naive_oc(emb, labels, ref, ref_labels, margin, exclude_self, eps=1e-5):
    """The authors' original_contrastive: hinge terms over (ref row, sample) pairs / number of rows."""
    total = 0.0
    for r in range(len(ref)):
        for i in range(len(emb)):
            if exclude_self and r == i:
                continue
            s = _cos(ref[r], emb[i])
            if ref_labels[r] == labels[i]:
                total += max(0.0, 1.0 - eps - s)
            else:
                total += max(0.0, s - margin)
    return total / len(ref)


def _grad(fn, emb):
    x = emb.clone().requires_grad_()
    fn(x).backward()
    return x.grad


def _num_grad(fn, emb, h=1e-6):
    g = torch.zeros_like(emb)
    for idx in range(emb.numel()):
        e1, e2 = emb.clone().view(-1), emb.clone().view(-1)
        e1[idx] += h
        e2[idx] -= h
        g.view(-1)[idx] = (fn(e1.view_as(emb)) - fn(e2.view_as(emb))) / (2 * h)
    return g


def test_xbm_original_contrastive_batch_value_and_gradient():
    emb, labels = _batch(seed=1)
    loss = build_loss("XBM", 3, 4, memory_size=18, warmup_iters=5).eval()
    ref = lambda e: naive_oc(e, labels, e, labels, 0.5, True)  # noqa: E731
    assert loss(emb, labels).item() == pytest.approx(ref(emb), abs=1e-10)
    assert torch.allclose(_grad(lambda e: loss(e, labels), emb), _num_grad(ref, emb), atol=1e-5)


def test_xbm_schedule_step_by_step():
    """warmup 2, memory 12 = 2 batches of 6 (the authors' start_at 2, batches_in_mem 2): steps 1-2 batch
    loss and no storing; step 3 stores (half full), no memory loss; from step 4 on the memory loss over
    the full memory (current batch included, detached) / 12."""
    loss = build_loss("XBM", 3, 4, memory_size=12, warmup_iters=2).train()
    batches = [_batch(n_classes=3, per_class=2, seed=s) for s in range(10, 16)]
    stored = []
    for step, (emb, labels) in enumerate(batches, start=1):
        x = emb.clone().requires_grad_()
        out = loss(x, labels)
        expected = naive_oc(emb, labels, emb, labels, 0.5, True)
        if step > 2:
            stored = (stored + [(emb, labels)])[-2:]
        if step >= 4:
            mem = torch.cat([e for e, _ in stored])
            mem_labels = torch.cat([lab for _, lab in stored])
            if step % 2 == 1:  # the FIFO ring: slots 0-5 hold the newest batch on odd steps
                mem, mem_labels = mem.roll(6, 0), mem_labels.roll(6, 0)
            assert torch.equal(loss.memory_contents()[0], mem)
            expected += naive_oc(emb, labels, mem, mem_labels, 0.5, False)
            # gradient reaches the batch only (the memory is detached): compare with the naive gradient
            ref = lambda e: (naive_oc(e, labels, e, labels, 0.5, True)  # noqa: E731
                             + naive_oc(e, labels, mem, mem_labels, 0.5, False))
            out.backward()
            assert torch.allclose(x.grad, _num_grad(ref, emb), atol=1e-5)
        assert out.item() == pytest.approx(expected, abs=1e-10), step
        assert loss.memory_active == (step >= 2) and loss.memory_loss_active == (step >= 4), step
    assert int(loss.iteration) == 6


def test_xbm_memory_by_dataset_and_errors():
    for ds, size in (("cub", 800), ("cars196", 800), ("sop", 44800), ("inshop", 12800)):
        assert presets.XBM_MEMORY_SIZES[ds] == size
        assert build_loss("XBM", 3, 4, dataset=ds).memory.memory_size == size
    assert build_loss("XBM", 3, 4, dataset="sop", memory_size=64).memory.memory_size == 64
    assert loss_arguments("XBM")["warmup_iters"] == 1000 and loss_arguments("XBM")["pair_loss"] == "original_contrastive"
    with pytest.raises(ConfigError, match="loss 'XBM': give dataset .* or memory_size"):
        build_loss("XBM", 3, 4, dataset=None)
    with pytest.raises(ConfigError, match="XBM: pair_loss must be one of original_contrastive, contrastive, got 'ms'"):
        build_loss("XBM", 3, 4, pair_loss="ms")
    with pytest.raises(ConfigError, match="XBM: memory_size must be a positive int, got 0"):
        build_loss("XBM", 3, 4, memory_size=0)
    with pytest.raises(ConfigError, match="XBM: warmup_iters must be an int >= 0, got -1"):
        build_loss("XBM", 3, 4, warmup_iters=-1)


def naive_pnca_cos(emb, labels, proxies, temperature):
    total = 0.0
    for i in range(len(emb)):
        logits = [_cos(emb[i], p) / temperature for p in proxies]
        z = sum(math.exp(v) for v in logits)
        total += -math.log(math.exp(logits[int(labels[i])]) / z)
    return total / len(emb)


def naive_pnca_pp(emb, labels, proxies, temperature):
    total = 0.0
    for i in range(len(emb)):
        x = F.normalize(emb[i], dim=0)
        logits = [-float(((x - F.normalize(p, dim=0)) ** 2).sum()) / temperature for p in proxies]
        z = sum(math.exp(v) for v in logits)
        total += -math.log(math.exp(logits[int(labels[i])]) / z)
    return total / len(emb)


@pytest.mark.parametrize("name,naive,temperature", [("PNCA", naive_pnca_cos, 0.11), ("PNCA++", naive_pnca_pp, 1 / 9)])
def test_proxy_nca_variants_value_and_gradient(name, naive, temperature):
    emb, labels = _batch(n_classes=3, per_class=2, seed=5)
    loss = build_loss(name, 4, 4)
    proxies = loss.proxies.detach().clone()
    ref = lambda e: naive(e, labels, proxies, temperature)  # noqa: E731
    assert loss(emb, labels).item() == pytest.approx(ref(emb), rel=1e-10)
    assert torch.allclose(_grad(lambda e: loss(e, labels), emb), _num_grad(ref, emb), atol=1e-5)


def test_proxy_nca_options_and_presets():
    emb, labels = _batch(n_classes=3, per_class=2, seed=6)
    loss = build_loss("PNCA", 4, 4, similarity="squared_l2")
    assert loss(emb, labels).item() == pytest.approx(naive_pnca_pp(emb, labels, loss.proxies.detach(), 1 / 9), rel=1e-10)
    loss = build_loss("PNCA", 4, 4, softmax_scale=5.0)
    assert loss(emb, labels).item() == pytest.approx(naive_pnca_cos(emb, labels, loss.proxies.detach(), 0.2), rel=1e-10)
    assert build_loss("PNCA", 4, 4).proxy_lr_mult == 100.0
    for ds, mult in (("cub", 1e5), ("cars196", 1e5), ("sop", 1e4), ("inshop", 1e5)):
        assert build_loss("PNCA++", 4, 4, dataset=ds).proxy_lr_mult == mult
    assert build_loss("PNCA++", 4, 4, dataset="sop", proxy_lr_mult=3.0).param_groups()[0]["lr_mult"] == 3.0
    assert "pnca++" in PROXY_LOSSES and "PNCA++" in presets.PROXY_LOSSES
    with pytest.raises(ConfigError, match="loss 'PNCA': similarity must be one of cosine, squared_l2, got 'dot'"):
        build_loss("PNCA", 4, 4, similarity="dot")
    with pytest.raises(ConfigError, match="loss 'PNCA': softmax_scale must be a finite number > 0, got -1.0"):
        build_loss("PNCA", 4, 4, softmax_scale=-1.0)
    with pytest.raises(ConfigError, match="loss 'PNCA\\+\\+': temperature must be a finite number > 0, got 0"):
        build_loss("PNCA++", 4, 4, temperature=0)
    with pytest.raises(ConfigError, match="loss 'PNCA\\+\\+': give dataset .* or proxy_lr_mult"):
        build_loss("PNCA++", 4, 4, dataset=None)


def naive_panchor_tf(emb, labels, proxies, alpha, delta):
    """The authors' TF proxy_anchor: per proxy log1p-sums, / proxies with positives, / proxies with negatives."""
    pos, neg, n_pos, n_neg = 0.0, 0.0, 0, 0
    for k, p in enumerate(proxies):
        ps = [math.exp(alpha * (delta - _cos(e, p))) for e, y in zip(emb, labels) if int(y) == k]
        ns = [math.exp(alpha * (delta + _cos(e, p))) for e, y in zip(emb, labels) if int(y) != k]
        pos += math.log1p(sum(ps))
        neg += math.log1p(sum(ns))
        n_pos += bool(ps)
        n_neg += bool(ns)
    return pos / n_pos + neg / n_neg


def test_proxy_anchor_equals_the_authors_tf_formula():
    emb, labels = _batch(n_classes=3, per_class=2, seed=7)
    loss = build_loss("PAnchor", 5, 4)
    proxies = loss.proxies.detach().clone()
    ref = lambda e: naive_panchor_tf(e, labels, proxies, 32.0, 0.1)  # noqa: E731
    assert loss(emb, labels).item() == pytest.approx(ref(emb), rel=1e-9)
    assert torch.allclose(_grad(lambda e: loss(e, labels), emb), _num_grad(ref, emb), atol=1e-5)
    assert loss.proxy_lr_mult == 100.0


def naive_ms_tf(emb, labels, alpha, beta, lam):
    total = 0.0
    for a in range(len(emb)):
        pos = [_cos(emb[a], emb[p]) for p in range(len(emb)) if p != a and labels[p] == labels[a]]
        neg = [_cos(emb[a], emb[q]) for q in range(len(emb)) if labels[q] != labels[a]]
        total += math.log1p(sum(math.exp(alpha * (lam - s)) for s in pos)) / alpha
        total += math.log1p(sum(math.exp(beta * (s - lam)) for s in neg)) / beta
    return total / len(emb)


def test_ms_default_is_the_authors_no_miner():
    emb, labels = _batch(seed=8)
    emb = emb * 0.3 + 1.0  # similar pairs so that the negative terms matter
    loss = build_loss("MS", 3, 4)
    ref = lambda e: naive_ms_tf(e, labels, 2.0, 50.0, 0.5)  # noqa: E731
    assert loss.miner is None
    assert loss(emb, labels).item() == pytest.approx(ref(emb), rel=1e-9)
    assert torch.allclose(_grad(lambda e: loss(e, labels), emb), _num_grad(ref, emb), atol=1e-5)
