"""Tests of the zero-shot prediction loss L_ZS (gspdml.losses.zeroshot) against independent references."""
from __future__ import annotations

import math

import pytest
import torch

from gspdml.errors import InputError
from gspdml.losses.zeroshot import ZeroShotLoss, ridge_fit, split_classes
from gspdml.pooling import GSP


def _marginals(b: int, m: int, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(b, m, generator=g, dtype=dtype) * 2.0, dim=1)


def _batch_labels() -> torch.Tensor:
    # 5 classes, class-balanced-ish, in a scrambled order
    return torch.tensor([4, 1, 4, 7, 1, 2, 7, 2, 0, 4, 0, 1])


# --------------------------------------------------------------------------------------------- ridge
@pytest.mark.parametrize("n,m", [(12, 5), (4, 9), (6, 6)])  # primal (m < n), dual (n < m), square
def test_ridge_fit_equals_lstsq_on_augmented_system(n, m):
    g = torch.Generator().manual_seed(n * 10 + m)
    z = torch.randn(n, m, generator=g, dtype=torch.float64)
    v = torch.randn(n, 3, generator=g, dtype=torch.float64)
    eps = 0.05
    # independent reference: min ||Z W - V||² + eps ||W||² == least squares on [Z; sqrt(eps) I] W = [V; 0]
    z_aug = torch.cat([z, math.sqrt(eps) * torch.eye(m, dtype=torch.float64)])
    v_aug = torch.cat([v, torch.zeros(m, 3, dtype=torch.float64)])
    expected = torch.linalg.lstsq(z_aug, v_aug).solution
    torch.testing.assert_close(ridge_fit(z, v, eps), expected, rtol=1e-9, atol=1e-10)


def test_ridge_fit_rejects_bad_input():
    with pytest.raises(InputError, match="same n"):
        ridge_fit(torch.randn(4, 3), torch.randn(5, 2), 0.1)
    with pytest.raises(InputError, match="ridge must be > 0"):
        ridge_fit(torch.randn(4, 3), torch.randn(4, 2), 0.0)


# --------------------------------------------------------------------------------------------- split
def test_alternate_split_follows_first_appearance():
    labels = _batch_labels()  # first appearance: 4, 1, 7, 2, 0 -> halves {4, 7, 0} and {1, 2}
    first, second = split_classes(labels)
    assert sorted(set(labels[first].tolist())) == [0, 4, 7]
    assert sorted(set(labels[second].tolist())) == [1, 2]
    assert first.tolist() == [0, 2, 3, 6, 8, 9, 10]
    assert second.tolist() == [1, 4, 5, 7, 11]


def test_random_split_is_class_disjoint_reproducible_and_varies():
    labels = torch.arange(8).repeat_interleave(3)
    seen = set()
    for seed in range(20):
        a1, a2 = split_classes(labels, "random", torch.Generator().manual_seed(seed))
        b1, b2 = split_classes(labels, "random", torch.Generator().manual_seed(seed))
        assert torch.equal(a1, b1) and torch.equal(a2, b2)
        c1, c2 = set(labels[a1].tolist()), set(labels[a2].tolist())
        assert not c1 & c2 and len(c1) == len(c2) == 4
        assert a1.numel() + a2.numel() == labels.numel()
        seen.add(frozenset(c1))
    assert len(seen) > 3


# ------------------------------------------------------------------------------------- naive eq. 4.4
def _naive_eq44(z, labels, table, first, second, eps, scale):
    """Eq. (4.4) with loops and the paper's closed form A_b = Υ_b (Z_bᵀ Z_b + εI)⁻¹ Z_bᵀ (columns)."""

    def fit(idx):
        zb = torch.stack([z[i] for i in idx], dim=1)  # m x n (columns z_i)
        ub = torch.stack([table[labels[i]] for i in idx], dim=1)  # D x n
        return ub @ torch.inverse(zb.T @ zb + eps * torch.eye(len(idx), dtype=z.dtype)) @ zb.T  # D x m

    def half_loss(a, idx):
        total = 0.0
        for i in idx:
            pred = a @ z[i]
            y = int(labels[i])
            s = 1.0
            for j in range(table.shape[0]):
                if j != y:
                    s += math.exp(scale * float((table[j] - table[y]) @ pred))
            total += math.log(s)
        return total / len(idx)

    a1, a2 = fit(first.tolist()), fit(second.tolist())
    return 0.5 * (half_loss(a1, second.tolist()) + half_loss(a2, first.tolist()))


@pytest.mark.parametrize("m", [3, 8, 20])  # m < |half|, m ~ |half|, m > |half| (dual form)
def test_loss_equals_naive_loop_of_eq_4_4(m):
    labels = _batch_labels()
    z = _marginals(labels.numel(), m, seed=m)
    loss_fn = ZeroShotLoss(num_classes=9, embed_dim=6, ridge=0.05, scale=2.5).double()
    first, second = split_classes(labels)
    expected = _naive_eq44(z, labels, loss_fn.class_embeddings.detach(), first, second, 0.05, 2.5)
    assert loss_fn(z, labels).item() == pytest.approx(expected, rel=1e-9)


def test_loss_is_invariant_to_sample_order_within_halves_and_to_swapping_halves():
    labels = _batch_labels()
    z = _marginals(labels.numel(), 6, seed=3)
    loss_fn = ZeroShotLoss(num_classes=9, embed_dim=5).double()
    first, second = split_classes(labels)
    base = loss_fn(z, labels)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        p1 = first[torch.randperm(first.numel(), generator=g)]
        p2 = second[torch.randperm(second.numel(), generator=g)]
        torch.testing.assert_close(loss_fn(z, labels, halves=(p1, p2)), base, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(loss_fn(z, labels, halves=(p2, p1)), base, rtol=1e-10, atol=1e-12)
    # reordering the whole batch so that the classes' first appearances keep their order keeps the split
    # (first appearances at 0, 1, 3, 5, 8 stay first and in order; the other samples are reversed)
    perm = torch.tensor([0, 1, 3, 5, 8, 11, 10, 9, 7, 6, 4, 2])
    torch.testing.assert_close(loss_fn(z[perm], labels[perm]), base, rtol=1e-10, atol=1e-12)


def test_loss_changes_with_the_split():
    labels = _batch_labels()
    z = _marginals(labels.numel(), 6, seed=4)
    loss_fn = ZeroShotLoss(num_classes=9, embed_dim=5).double()
    other = (torch.nonzero(torch.isin(labels, torch.tensor([4, 1]))).flatten(),
             torch.nonzero(~torch.isin(labels, torch.tensor([4, 1]))).flatten())
    assert abs(loss_fn(z, labels).item() - loss_fn(z, labels, halves=other).item()) > 1e-6


# ------------------------------------------------------------------------------------------ gradients
def test_gradients_reach_features_and_class_table_without_gsp():
    torch.manual_seed(0)
    labels = _batch_labels()
    feats = torch.randn(labels.numel(), 7, dtype=torch.float64, requires_grad=True)
    proj = torch.nn.Linear(7, 5).double()
    z = torch.softmax(proj(feats), dim=1)
    loss_fn = ZeroShotLoss(num_classes=9, embed_dim=4).double()
    loss_fn(z, labels).backward()
    assert feats.grad is not None and feats.grad.abs().sum() > 0
    assert proj.weight.grad.abs().sum() > 0
    grad = loss_fn.class_embeddings.grad
    assert grad is not None and grad.abs().sum() > 0
    # classes absent from the batch still get gradient: they are negatives of the softmax over all classes
    assert grad[3].abs().sum() > 0


@pytest.mark.parametrize("mu", [0.3, 1.0])  # GSP and the paper's "GAP + attributes" (mu = 1)
def test_gradients_reach_gsp_prototypes_class_table_and_features(mu):
    torch.manual_seed(0)
    labels = torch.arange(4).repeat_interleave(3)
    pool = GSP(dim=8, num_prototypes=5, mu=mu, eps=5.0, init="random").double()
    x = torch.randn(labels.numel(), 8, 3, 3, dtype=torch.float64, requires_grad=True)
    _, details = pool(x, return_details=True)
    z = details["marginals"]
    assert z.shape == (labels.numel(), 5)
    torch.testing.assert_close(z.sum(1), torch.ones(labels.numel(), dtype=torch.float64))
    loss_fn = ZeroShotLoss(num_classes=4, embed_dim=6).double()
    loss = loss_fn(z, labels)
    assert torch.isfinite(loss)
    loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    params = dict(pool.named_parameters())
    assert params, "GSP should have learnable prototypes"
    for name, p in params.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reached GSP parameter {name}"
    assert loss_fn.class_embeddings.grad.abs().sum() > 0


def test_a_few_gradient_steps_reduce_the_loss():
    torch.manual_seed(0)
    labels = torch.arange(6).repeat_interleave(4)
    logits = torch.randn(labels.numel(), 8, requires_grad=True)
    loss_fn = ZeroShotLoss(num_classes=6, embed_dim=8)
    params = [logits, loss_fn.class_embeddings]
    start = loss_fn(torch.softmax(logits, 1), labels).item()
    for _ in range(60):  # plain gradient descent on the marginals' logits and the class table
        loss = loss_fn(torch.softmax(logits, 1), labels)
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g in zip(params, grads):
                p -= 0.01 * g
    assert loss.item() < 0.5 * start


def test_param_groups_and_init():
    loss_fn = ZeroShotLoss(num_classes=50, embed_dim=128, lr_mult=2.0)
    (group,) = loss_fn.param_groups()
    assert group["params"][0] is loss_fn.class_embeddings and group["lr_mult"] == 2.0
    assert loss_fn.class_embeddings.shape == (50, 128)
    # He-normal with fan_out = num_classes (as the authors' code): std sqrt(2 / 50) = 0.2
    assert loss_fn.class_embeddings.std().item() == pytest.approx(0.2, rel=0.05)


# --------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "z,labels,match",
    [
        (torch.rand(6, 4), torch.zeros(6, dtype=torch.long), "at least 2 distinct classes"),
        (torch.rand(6, 4), torch.tensor([0, 0, 1, 1, 2, 9]), r"labels must lie in \[0, 5\)"),
        (torch.rand(6, 4), torch.tensor([0, 0, 1, 1, -1, 2]), r"labels must lie in \[0, 5\)"),
        (torch.rand(6), torch.tensor([0, 0, 1, 1, 2, 2]), r"shape \(B, m\)"),
        (torch.rand(6, 4, 2), torch.tensor([0, 0, 1, 1, 2, 2]), r"shape \(B, m\)"),
        (torch.rand(6, 4), torch.tensor([0, 0, 1, 1, 2]), "batch size 6"),
        (torch.rand(6, 4), torch.tensor([0.0, 0, 1, 1, 2, 2]), "integer class labels"),
        (None, torch.tensor([0, 0, 1, 1, 2, 2]), "no prototype marginals"),
    ],
)
def test_errors_for_impossible_input(z, labels, match):
    with pytest.raises(InputError, match=match):
        ZeroShotLoss(num_classes=5, embed_dim=3)(z, labels)


def test_errors_for_bad_halves_and_options():
    loss_fn = ZeroShotLoss(num_classes=5, embed_dim=3)
    z, labels = torch.rand(4, 3), torch.tensor([0, 1, 0, 2])
    with pytest.raises(InputError, match="disjoint classes"):
        loss_fn(z, labels, halves=(torch.tensor([0, 1]), torch.tensor([2, 3])))
    with pytest.raises(InputError, match="non-empty"):
        loss_fn(z, labels, halves=(torch.tensor([], dtype=torch.long), torch.tensor([0, 1, 2, 3])))
    with pytest.raises(InputError, match="unknown zero-shot split"):
        ZeroShotLoss(num_classes=5, embed_dim=3, split="halves")
    with pytest.raises(InputError, match="ridge must be > 0"):
        ZeroShotLoss(num_classes=5, embed_dim=3, ridge=0)


# --------------------------------------------------------------------------- with every engine loss
def test_zero_shot_trains_with_every_engine_loss():
    """(1 - λ) L_DML + λ L_ZS through the engine's TrainModule: finite, and gradients reach the
    prototypes, the class table and the backbone for every DML loss of LOSSES."""
    from gspdml.engine.state import TrainModule
    from gspdml.losses import LOSSES, build_loss
    from gspdml.models import build_model

    labels = torch.arange(4).repeat_interleave(3)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 20, (labels.numel(), 10), generator=g)
    for name in LOSSES:
        torch.manual_seed(0)
        model = build_model(backbone="token_embedding", backbone_kwargs={"num_tokens": 20, "dim": 8}, local_dim=8,
                            pooling="gsp", pooling_kwargs={"num_prototypes": 3, "init": "random"})
        module = TrainModule(model, build_loss(name, num_classes=4, embedding_dim=8),
                             ZeroShotLoss(num_classes=4, embed_dim=8), zs_weight=0.1)
        total, parts = module(tokens, None, labels)
        assert torch.isfinite(total) and torch.isfinite(parts["loss_zs"]), name
        torch.testing.assert_close(total.detach(), 0.9 * parts["loss_dml"] + 0.1 * parts["loss_zs"])
        total.backward()
        assert module.zero_shot.class_embeddings.grad.abs().sum() > 0, name
        assert model.pooling.prototypes.grad.abs().sum() > 0, name
        assert model.backbone.embedding.weight.grad.abs().sum() > 0, name


def test_matched_scale_keeps_the_initial_loss_at_the_authors_size_with_few_classes():
    from gspdml.losses.zeroshot import matched_scale

    assert matched_scale(100) == pytest.approx(9.5)
    assert matched_scale(8) == pytest.approx(0.76)
    labels = torch.arange(8).repeat_interleave(4)
    z = torch.softmax(torch.randn(32, 16) * 3, dim=1)

    def initial_loss(num_classes, scale):
        torch.manual_seed(1)  # same class-table draw for every variant
        return ZeroShotLoss(num_classes, 128, scale=scale)(z, labels).item()

    reference = initial_loss(100, 9.5)  # the authors' setting: ~100 training classes
    few_authors = initial_loss(8, 9.5)
    few_matched = initial_loss(8, matched_scale(8))
    assert few_authors > 5 * reference  # the unmatched scale blows the loss up
    assert few_matched == pytest.approx(reference, rel=0.1)
    with pytest.raises(InputError):
        matched_scale(0)
