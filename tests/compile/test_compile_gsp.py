"""torch.compile (inductor, fullgraph) of the GSP layer and of an EmbeddingModel with GSP:
forward and backward equal eager to 1e-5 (float32) on maps, channels_last maps and token sets."""
from __future__ import annotations

import pytest
import torch

from compile.compile_models import LayerOnAllLayouts, layout_inputs, map_model, token_model


def _grads(module, inputs):
    """Outputs, input gradients and parameter gradients of a fixed random loss."""
    inputs = [x.detach().clone().requires_grad_() for x in inputs]
    for p in module.parameters():
        p.grad = None
    outs = module(*inputs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    gen = torch.Generator().manual_seed(7)
    loss = sum((o * torch.randn(o.shape, generator=gen)).sum() for o in outs)
    loss.backward()
    return ([o.detach() for o in outs], [x.grad for x in inputs],
            {n.removeprefix("_orig_mod."): p.grad.clone() for n, p in module.named_parameters() if p.grad is not None})


def _assert_close(eager, compiled, tol=1e-5):
    for a, b in zip(eager[0] + eager[1], compiled[0] + compiled[1]):
        assert torch.allclose(a, b, atol=tol, rtol=tol), (a - b).abs().max()
    assert eager[2].keys() == compiled[2].keys() and eager[2]
    for name in eager[2]:
        assert torch.allclose(eager[2][name], compiled[2][name], atol=tol, rtol=tol), name


@pytest.mark.parametrize("solver", ["exact", "fixed_point"])
def test_layer_compiles_fullgraph_on_maps_and_tokens(solver):
    torch._dynamo.reset()
    layer = LayerOnAllLayouts(solver=solver, iters=20)
    inputs = layout_inputs()
    eager = _grads(layer, inputs)
    compiled = torch.compile(layer, fullgraph=True, backend="inductor" if solver == "exact" else "aot_eager")
    _assert_close(eager, _grads(compiled, inputs))


def test_embedding_model_compiles_fullgraph_maps_and_tokens():
    """The whole model (backbone, projection, GSP, normalisation), inductor, fullgraph, in
    training mode (forward + backward)."""
    torch._dynamo.reset()
    model = map_model().train()
    x = torch.randn(2, 3, 4, 5)
    eager = _grads(model, [x])
    _assert_close(eager, _grads(torch.compile(model, fullgraph=True), [x]))
    tmodel = token_model().train()
    t = torch.randn(2, 7, 5)
    eager = _grads(tmodel, [t])
    _assert_close(eager, _grads(torch.compile(tmodel, fullgraph=True, backend="aot_eager"), [t]))


def test_default_compile_with_kcenter_warm_up_matches_eager():
    """Default mode (graph breaks allowed): the k-center warm-up (GAP while the memory fills,
    then the initialisation) runs as in eager."""
    torch._dynamo.reset()
    eager_model, compiled_model = map_model(init="kcenter", memory_size=4), map_model(init="kcenter", memory_size=4)
    compiled = torch.compile(compiled_model, backend="aot_eager")
    for step in range(3):
        x = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(step))
        a, b = eager_model(x), compiled(x)
        assert torch.allclose(a, b, atol=1e-5)
    assert eager_model.pooling.is_initialized and compiled_model.pooling.is_initialized
    assert torch.allclose(eager_model.pooling.prototypes, compiled_model.pooling.prototypes)
