"""torch.export and ONNX (dynamo exporter, run by onnxruntime) of EmbeddingModels with GSP and
GAP heads on maps and token sets, with a dynamic batch size."""
from __future__ import annotations

import pytest
import torch

from compile.compile_models import LayerOnAllLayouts, layout_inputs, map_model, token_model



def _model_and_inputs(kind, pooling):
    if kind == "maps":
        return map_model(pooling).eval(), torch.randn(2, 3, 4, 5), torch.randn(5, 3, 4, 5)
    return token_model(pooling).eval(), torch.randn(2, 7, 5), torch.randn(3, 7, 5)


@pytest.mark.parametrize("kind", ["maps", "tokens"])
@pytest.mark.parametrize("pooling", ["gsp", "gap"])
def test_torch_export_of_the_embedding_model(kind, pooling, tmp_path):
    model, x, other = _model_and_inputs(kind, pooling)
    batch = torch.export.Dim("batch", min=1, max=4096)
    ep = torch.export.export(model, (x,), dynamic_shapes=({0: batch},))
    assert torch.allclose(ep.module()(other), model(other), atol=1e-6)
    path = tmp_path / "model.pt2"
    torch.export.save(ep, path)
    loaded = torch.export.load(path)
    assert torch.allclose(loaded.module()(other), model(other), atol=1e-6)


def test_torch_export_of_the_layer_on_every_layout():
    layer = LayerOnAllLayouts().eval()
    inputs = layout_inputs()
    ep = torch.export.export(layer, inputs)
    for a, b in zip(ep.module()(*inputs), layer(*inputs)):
        assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("kind", ["maps", "tokens"])
@pytest.mark.parametrize("pooling", ["gsp", "gap"])
def test_onnx_export_runs_in_onnxruntime(kind, pooling, tmp_path):
    import onnxruntime as ort

    model, x, other = _model_and_inputs(kind, pooling)
    path = tmp_path / "model.onnx"
    batch = torch.export.Dim("batch", min=1, max=4096)
    torch.onnx.export(model, (x,), str(path), dynamo=True, dynamic_shapes=({0: batch},),
                      input_names=["x"], output_names=["embedding"], verbose=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for inp in (x, other):  # the traced batch size and another one
        (out,) = session.run(None, {"x": inp.numpy()})
        assert out.shape == (inp.shape[0], 8)
        assert abs(out - model(inp).detach().numpy()).max() <= 1e-4


@pytest.mark.parametrize("solver", ["exact", "fixed_point"])
def test_forward_only_path_equals_the_autograd_functions(solver):
    """Without a gradient the custom autograd Functions run their forward as plain torch ops:
    the same values, bit for bit, on every layout."""
    layer = LayerOnAllLayouts(solver=solver)
    inputs = layout_inputs()
    with torch.no_grad():
        plain = layer(*inputs)
    with_grad = layer(*[x.clone().requires_grad_() for x in inputs])
    assert all(o.grad_fn is not None for o in with_grad[:2])
    for a, b in zip(plain, with_grad):
        assert torch.equal(a, b.detach())


def test_jit_trace_save_and_load(tmp_path):
    """torch.jit.trace (under no_grad: the plain-ops path) can be saved and loaded."""
    model = map_model().eval()
    x = torch.randn(2, 3, 4, 5)
    with torch.no_grad():
        traced = torch.jit.trace(model, (x,), check_trace=False)
    traced.save(str(tmp_path / "model.pt"))
    loaded = torch.jit.load(str(tmp_path / "model.pt"))
    assert torch.allclose(loaded(x), model(x), atol=1e-6)
