"""CUDA checks of the GSP layer (``@pytest.mark.cuda``: skipped without a CUDA device;
benchmarks/gpu_check.sh runs them): the solver on CUDA equals CPU, the module forward and
backward, torch.compile on CUDA, and no host synchronisation inside the layer."""
from __future__ import annotations

import pytest
import torch

from compile.compile_models import LayerOnAllLayouts, layout_inputs, map_model
from gspdml.pooling.gsp import GSP
from gspdml.pooling.transport import partial_transport, prototype_cost

pytestmark = pytest.mark.cuda


@pytest.mark.parametrize("solver", ["exact", "fixed_point"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_solver_on_cuda_equals_cpu(solver, dtype):
    gen = torch.Generator().manual_seed(0)
    f = torch.randn(3, 20, 16, generator=gen, dtype=dtype)
    w = torch.randn(6, 16, generator=gen, dtype=dtype)
    mask = torch.rand(3, 20, generator=gen) > 0.2
    for eps in (0.5, 5.0, 100.0):
        cpu = partial_transport(prototype_cost(f, w), 0.3, eps, solver=solver, mask=mask)
        gpu = partial_transport(prototype_cost(f.cuda(), w.cuda()), 0.3, eps, solver=solver, mask=mask.cuda())
        tol = 1e-5 if dtype == torch.float32 else 1e-12
        for a, b in zip(cpu, gpu):
            assert torch.allclose(a, b.cpu(), atol=tol, rtol=tol)


@pytest.mark.parametrize("solver", ["exact", "fixed_point"])
def test_module_forward_backward_on_cuda_equals_cpu(solver):
    layer = LayerOnAllLayouts(solver=solver).double()
    inputs = [x.double() for x in layout_inputs()]
    grads = {}
    for device in ("cpu", "cuda"):
        layer.to(device)
        xs = [x.to(device).requires_grad_() for x in inputs]
        outs = layer(*xs)
        loss = sum(o.pow(2).sum() for o in outs)
        g = torch.autograd.grad(loss, xs + [layer.pool.prototypes])
        grads[device] = [o.detach().cpu() for o in outs] + [t.cpu() for t in g]
    for a, b in zip(grads["cpu"], grads["cuda"]):
        assert torch.allclose(a, b, atol=1e-10)


def test_compile_on_cuda_matches_eager():
    model = map_model().cuda().train()
    x = torch.randn(4, 3, 8, 8, device="cuda")
    compiled = torch.compile(model, fullgraph=True)
    for m in (model, compiled):
        for p in model.parameters():
            p.grad = None
        out = m(x)
        out.pow(3).sum().backward()
        if m is model:
            ref = (out.detach(), model.pooling.prototypes.grad.clone())
    assert torch.allclose(out, ref[0], atol=1e-5)
    assert torch.allclose(model.pooling.prototypes.grad, ref[1], atol=1e-5)


@pytest.mark.parametrize("layout", ["nchw", "channels_last", "tokens"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_no_host_sync_inside_the_layer(layout, dtype):
    """The layer's forward and backward never synchronise with the host (the eager input
    checks are host reads by design: ``check_finite=False`` turns them off)."""
    pool = GSP(64, num_prototypes=16, init="random").cuda()
    pool.check_finite = False
    x = torch.randn(8, 64, 7, 7, device="cuda")
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "tokens":
        x = x.flatten(2).transpose(1, 2).contiguous()
    x.requires_grad_()
    pool(x).sum().backward()  # warm-up (allocator, kernels)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
            out, details = pool(x, return_details=True)
            loss = out.float().sum() + details["marginals"].pow(2).sum()
        loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()
    assert torch.isfinite(x.grad).all()
