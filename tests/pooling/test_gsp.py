"""Tests of the GSP module: pooling against a naive re-computation, GAP limits, k-center
initialisation against a brute-force farthest-first search, state round trips, training, errors."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import gspdml
from gspdml.errors import InputError
from gspdml.pooling import GSP as GSPFromPooling
from gspdml.pooling.gsp import GSP, kcenter_greedy
from gspdml.pooling.transport import partial_transport


def naive_cost(feats: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
    """(B, m, n) cost with explicit differences (no matmul trick)."""
    fb = feats / feats.norm(dim=-1, keepdim=True).clamp_min(1.0)
    wb = protos / protos.norm(dim=-1, keepdim=True).clamp_min(1.0)
    return (wb[None, :, None, :] - fb[:, None, :, :]).pow(2).sum(-1).sqrt()


def brute_force_farthest_first(points: np.ndarray, k: int) -> list[int]:
    """Farthest-first traversal written with python loops over all pairs."""
    chosen = [0]
    while len(chosen) < k:
        best, best_d = None, -1.0
        for i in range(len(points)):
            d = min(float(np.sqrt(((points[i] - points[j]) ** 2).sum())) for j in chosen)
            if d > best_d:
                best, best_d = i, d
        chosen.append(best)
    return chosen


def make(dim=8, m=4, **kw):
    kw.setdefault("init", "random")
    return GSP(dim, num_prototypes=m, **kw)


# ----------------------------------------------------------------------------- pooling


def test_exports():
    assert gspdml.GSP is GSP and GSPFromPooling is GSP


@pytest.mark.parametrize("solver", ["exact", "fixed_point"])
def test_pooling_matches_naive_recomputation(solver):
    torch.manual_seed(0)
    pool = make(dim=6, m=3, mu=0.4, eps=4.0, solver=solver, iters=500).double()
    x = torch.randn(2, 6, 3, 4, dtype=torch.float64) * 2
    pooled, details = pool(x, return_details=True)
    feats = x.flatten(2).transpose(1, 2)  # (B, n, C)
    ref = partial_transport(naive_cost(feats, pool.prototypes.detach()), 0.4, 4.0, solver=solver, iters=500)
    want = torch.einsum("bn,bnc->bc", ref.weights, feats)
    assert torch.allclose(pooled, want, atol=1e-12)
    assert details["weights"].shape == (2, 3, 4) and details["rho"].shape == (2, 3, 4)
    assert torch.allclose(details["weights"].flatten(1), ref.weights, atol=1e-13)
    assert torch.allclose(details["marginals"], ref.marginals, atol=1e-13)
    assert torch.allclose(details["weights"].sum((1, 2)), torch.ones(2, dtype=torch.float64), atol=1e-12)


def test_tokens_and_maps_give_the_same_result():
    pool = make(dim=5, m=3)
    x = torch.randn(3, 5, 2, 3)
    tokens = x.flatten(2).transpose(1, 2).contiguous()
    a, da = pool(x, return_details=True)
    b, db = pool(tokens, return_details=True)
    assert torch.allclose(a, b, atol=1e-6)
    assert db["weights"].shape == (3, 6)
    assert torch.allclose(da["weights"].flatten(1), db["weights"], atol=1e-7)


def test_mu_one_is_exactly_gap():
    pool = make(dim=7, m=5, mu=1.0)
    x = torch.randn(4, 7, 3, 3)
    out, details = pool(x, return_details=True)
    assert torch.equal(out, x.mean((2, 3)))
    assert torch.equal(details["weights"], torch.full((4, 3, 3), 1 / 9))
    assert torch.equal(details["rho"], torch.zeros(4, 3, 3))
    assert torch.allclose(details["marginals"].sum(1), torch.ones(4), atol=1e-6)


@pytest.mark.parametrize("solver", ["exact", "fixed_point"])
def test_gradcheck_module(solver):
    torch.manual_seed(1)
    pool = make(dim=4, m=3, mu=0.3, eps=3.0, solver=solver).double()
    x = torch.randn(2, 5, 4, dtype=torch.float64, requires_grad=True)
    # away from the kink of max(1, |w|) at |w| = 1 (where finite differences are meaningless)
    w = (pool.prototypes.detach() * torch.tensor([[1.7], [0.6], [1.3]], dtype=torch.float64)).requires_grad_()

    def fn(inp, protos):
        out, d = torch.func.functional_call(pool, {"prototypes": protos}, (inp,), {"return_details": True})
        return out, d["weights"], d["marginals"]

    assert torch.autograd.gradcheck(fn, (x, w))


def test_masked_padded_input_equals_unpadded():
    pool = make(dim=6, m=4).double()
    lengths = [5, 9, 2]
    sets = [torch.randn(L, 6, dtype=torch.float64) for L in lengths]
    padded = torch.full((3, 9, 6), float("nan"), dtype=torch.float64)  # padding holds junk
    mask = torch.zeros(3, 9, dtype=torch.bool)
    for b, s in enumerate(sets):
        padded[b, : len(s)] = s
        mask[b, : len(s)] = True
    out, d = pool(padded, mask=mask, return_details=True)
    for b, s in enumerate(sets):
        one, d1 = pool(s.unsqueeze(0), return_details=True)
        assert torch.allclose(out[b], one[0], atol=1e-13)
        assert torch.allclose(d["weights"][b, : len(s)], d1["weights"][0], atol=1e-14)
        assert torch.all(d["weights"][b, len(s):] == 0)
        assert torch.allclose(d["marginals"][b], d1["marginals"][0], atol=1e-14)


def test_mask_for_maps_accepts_spatial_shape():
    pool = make(dim=3, m=2)
    x = torch.randn(2, 3, 2, 2)
    mask = torch.tensor([[[True, True], [False, True]], [[True, True], [True, True]]])
    a = pool(x, mask=mask)
    b = pool(x, mask=mask.flatten(1))
    tokens = x.flatten(2).transpose(1, 2)
    c = pool(tokens[:1, [0, 1, 3]])
    assert torch.equal(a, b)
    assert torch.allclose(a[0], c[0], atol=1e-6)


def test_permutation_equivariance():
    pool = make(dim=5, m=4).double()
    x = torch.randn(2, 10, 5, dtype=torch.float64)
    perm = torch.randperm(10)
    out, d = pool(x, return_details=True)
    out_p, d_p = pool(x[:, perm], return_details=True)
    assert torch.allclose(out, out_p, atol=1e-13)
    assert torch.allclose(d_p["weights"], d["weights"][:, perm], atol=1e-15)


def test_autocast_bfloat16():
    pool = make(dim=8, m=4)
    x = torch.randn(2, 8, 3, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, d = pool(x.bfloat16(), return_details=True)
    assert out.dtype == torch.bfloat16
    assert d["weights"].dtype == torch.float32
    assert torch.isfinite(out.float()).all()
    assert torch.allclose(d["weights"].sum((1, 2)), torch.ones(2), atol=1e-6)


# ----------------------------------------------------------------------------- k-center init


def test_kcenter_greedy_matches_brute_force():
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(40, 3))
    assert kcenter_greedy(torch.from_numpy(pts), 7).tolist() == brute_force_farthest_first(pts, 7)


def test_kcenter_initialisation_from_gap_memory():
    torch.manual_seed(0)
    pool = GSP(4, num_prototypes=3, memory_size=10, init="kcenter")
    assert not pool.is_initialized
    batches = [torch.randn(4, 4, 2, 2) * 3 for _ in range(3)]
    gaps = []
    for i, x in enumerate(batches):
        out, d = pool(x, return_details=True)
        assert torch.equal(out, x.mean((2, 3)))  # GAP while the memory fills
        assert torch.equal(d["weights"], torch.full((4, 2, 2), 0.25))
        assert d["marginals"].shape == (4, 3)
        gaps.append(x.mean((2, 3)))
        assert pool.is_initialized == (i == 2)
    memory = torch.nn.functional.normalize(torch.cat(gaps)[:10], dim=1)
    assert torch.allclose(pool.memory, memory, atol=1e-6)
    idx = brute_force_farthest_first(memory.double().numpy(), 3)
    assert torch.allclose(pool.prototypes.detach(), memory[idx], atol=1e-6)
    # after initialisation the layer really pools with GSP
    out, d = pool(batches[0], return_details=True)
    assert not torch.allclose(out, batches[0].mean((2, 3)))


def test_eval_mode_does_not_fill_memory():
    pool = GSP(4, num_prototypes=2, memory_size=4).eval()
    x = torch.randn(3, 4, 2, 2)
    assert torch.equal(pool(x), x.mean((2, 3)))
    assert int(pool.memory_count) == 0 and not pool.is_initialized


def test_state_dict_round_trip_of_init_state():
    torch.manual_seed(0)
    a = GSP(4, num_prototypes=2, memory_size=6)
    x1, x2 = torch.randn(4, 4, 2, 2), torch.randn(4, 4, 2, 2)
    a(x1)
    state = a.state_dict()
    assert set(state) == {"prototypes", "memory", "memory_count", "initialized"}
    b = GSP(4, num_prototypes=2, memory_size=6)
    b.load_state_dict(state)
    assert int(b.memory_count) == 4 and not b.is_initialized
    a(x2)
    b(x2)
    assert a.is_initialized and b.is_initialized
    assert torch.equal(a.prototypes, b.prototypes)
    c = GSP(4, num_prototypes=2, memory_size=6)
    c.load_state_dict(a.state_dict())
    assert c.is_initialized and "done" in repr(c)
    assert torch.equal(c(x1), a(x1))


def test_optimizer_built_before_first_forward_trains_prototypes_after_init():
    torch.manual_seed(0)
    pool = GSP(4, num_prototypes=2, memory_size=4)
    param = pool.prototypes
    opt = torch.optim.SGD(pool.parameters(), lr=0.5)
    pool(torch.randn(4, 4, 3, 3))  # fills the memory and initialises
    assert pool.is_initialized and pool.prototypes is param
    assert any(p is param for g in opt.param_groups for p in g["params"])
    before = param.detach().clone()
    x = torch.randn(4, 4, 3, 3)
    out, d = pool(x, return_details=True)
    loss = out.pow(2).sum() + d["marginals"][:, 0].sum()
    opt.zero_grad()
    loss.backward()
    assert param.grad is not None and param.grad.abs().sum() > 0
    opt.step()
    assert not torch.equal(param.detach(), before)


# ----------------------------------------------------------------------------- errors and repr


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(mu=0.0), "mu must be a number in \\(0, 1\\]"),
        (dict(mu=1.01), "mu must be"),
        (dict(eps=0.0), "eps must be a finite number > 0"),
        (dict(eps=-1.0), "eps must be"),
        (dict(num_prototypes=0), "num_prototypes must be an integer >= 1"),
        (dict(dim=0), "dim must be a positive integer"),
        (dict(solver="lbfgs"), "solver must be one of"),
        (dict(iters=0), "iters must be"),
        (dict(init="kmeans"), "init must be one of"),
        (dict(init="kcenter", memory_size=3), "memory_size must be an integer >= num_prototypes \\(4\\)"),
    ],
)
def test_constructor_errors(kwargs, match):
    args = dict(dim=8, num_prototypes=4)
    args.update(kwargs)
    with pytest.raises(InputError, match=match):
        GSP(**args)


def test_forward_errors():
    pool = make(dim=8, m=4)
    cases = [
        (torch.randn(3, 8), "with 2 dimensions"),
        (torch.randn(1, 2, 8, 3, 3), "with 5 dimensions"),
        (torch.randn(2, 6, 3, 3), r"expected \(B, 8, H, W\)"),
        (torch.randn(2, 5, 6), r"expected \(B, N, 8\)"),
        (torch.ones(2, 5, 8, dtype=torch.long), "floating-point"),
        (torch.randn(0, 5, 8), "empty input"),
        ("not a tensor", "expects a tensor"),
    ]
    for x, match in cases:
        with pytest.raises(InputError, match=match):
            pool(x)
    bad = torch.randn(2, 5, 8)
    bad[1, 2, 3] = float("inf")
    with pytest.raises(InputError, match="NaN or infinite"):
        pool(bad)
    x = torch.randn(2, 5, 8)
    for mask, match in [
        (torch.ones(2, 4, dtype=torch.bool), r"bool tensor of shape \(2, 5\)"),
        (torch.ones(2, 5), "bool tensor"),
        (torch.tensor([[True] * 5, [False] * 5]), r"no real feature in sample\(s\) \[1\]"),
    ]:
        with pytest.raises(InputError, match=match):
            pool(x, mask=mask)
    assert issubclass(InputError, ValueError)


def test_extra_repr():
    text = repr(GSP(16, num_prototypes=8, mu=0.25, eps=0.5, solver="fixed_point", iters=50, memory_size=32))
    for part in ["dim=16", "num_prototypes=8", "mu=0.25", "eps=0.5", "solver='fixed_point'", "iters=50",
                 "init='kcenter'", "memory_size=32 (pending 0/32)"]:
        assert part in text
    assert "iters" not in repr(make())


def test_all_configurations_run_and_backprop():
    for solver, init, shape in itertools.product(["exact", "fixed_point"], ["random", "kcenter"],
                                                 [(2, 6, 3, 3), (2, 9, 6)]):
        pool = GSP(6, num_prototypes=3, solver=solver, init=init, memory_size=3)
        x = torch.randn(*shape, requires_grad=True)
        for _ in range(3):
            out, d = pool(x, return_details=True)
            (out.sum() + d["marginals"].pow(2).sum()).backward()
        assert pool.is_initialized
        assert torch.isfinite(x.grad).all() and torch.isfinite(pool.prototypes.grad).all()


def test_benchmark_times_what_the_module_computes():
    from gspdml.bench.gsp import EPS, MU, floor_pool, gsp_pool

    pool = make(dim=8, m=4, mu=MU, eps=EPS)
    x = torch.randn(3, 6, 8)
    for solver in ("exact", "fixed_point"):
        pool.solver = solver
        out, d = pool(x, return_details=True)
        pooled, z = gsp_pool(x, pool.prototypes, solver)
        assert torch.allclose(pooled, out, atol=1e-6) and torch.allclose(z, d["marginals"], atol=1e-6)
    # the floor uses the same cost: its weights are the mean cost over prototypes
    want = torch.einsum("bn,bnc->bc", naive_cost(x, pool.prototypes.detach()).mean(1), x)
    assert torch.allclose(floor_pool(x, pool.prototypes), want, atol=1e-5)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_prototypes_raise(bad):
    """NaN/inf prototypes (e.g. after a diverged step) raise the same InputError as NaN features."""
    pool = make(dim=6, m=3)
    x = torch.randn(2, 6, 3, 3)
    with torch.no_grad():
        pool.prototypes[1, 2] = bad
    with pytest.raises(InputError, match="prototypes contain NaN or infinite values"):
        pool(x)
    pool2 = make(dim=6, m=3)
    x_bad = x.clone()
    x_bad[0, 1, 1, 1] = bad
    with pytest.raises(InputError, match="NaN or infinite") as features_error:
        pool2(x_bad)
    assert type(features_error.value) is InputError
    # off in the sync-free mode (check_finite False): no error, the NaN propagates
    pool.check_finite = False
    assert torch.isnan(pool(x)).any()
