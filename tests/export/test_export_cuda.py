"""Export on CUDA (run by `pytest -m cuda`, e.g. from benchmarks/gpu_check.sh; skipped without a GPU)."""
from __future__ import annotations

import pytest
import torch

from gspdml.config import load_config
from gspdml.engine.export import export_model, metadata_path
from gspdml.models import build_model

import onnxruntime  # the export extra: a missing package fails these tests

pytestmark = pytest.mark.cuda
TOL = 1e-4


@pytest.fixture
def no_tf32():
    """Plain float32 references (the exported graphs are float32)."""
    conv, mm = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = conv, mm


@pytest.mark.parametrize("pooling, kw", [("gap", {}), ("gsp", {"num_prototypes": 8, "mu": 0.3, "eps": 5.0})])
def test_export_on_cuda_matches_the_cuda_model(tmp_path, no_tf32, pooling, kw):
    torch.manual_seed(0)
    cfg = load_config(None, ["data.transform=small", "data.image_size=32", "data.normalization=none"])
    model = build_model(backbone="smallcnn", backbone_kwargs={"widths": [8, 8, 16]}, local_dim=16, pooling=pooling,
                        pooling_kwargs=kw or None, freeze_bn=False).cuda().eval()
    images = torch.rand(5, 1, 32, 32, device="cuda")
    with torch.no_grad():
        ref = model(images)

    meta = export_model(model, cfg, tmp_path / "m.pt2")
    assert meta["exported_on"].startswith("cuda") and metadata_path(tmp_path / "m.pt2").is_file()
    program = torch.export.load(str(tmp_path / "m.pt2")).module()
    with torch.no_grad():
        torch.testing.assert_close(program(images), ref, atol=TOL, rtol=TOL)
        torch.testing.assert_close(program(images[:2]), ref[:2], atol=TOL, rtol=TOL)

    export_model(model, cfg, tmp_path / "m.onnx")
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {"images": images.cpu().numpy()})[0])
    torch.testing.assert_close(got, ref.cpu(), atol=TOL, rtol=TOL)


@pytest.mark.parametrize("precision", ["fp16", "bf16", "fp32"])
def test_bench_train_precisions_on_cuda(precision):
    from gspdml.bench.train import bench_train

    rows = bench_train(backbones=("smallcnn",), poolings=("gap", "gsp", "gsp+zs"), image_size=32, batch_size=8,
                       steps=2, warmup=1, device="cuda", precision=precision, progress=False)
    assert [r["pooling"] for r in rows] == ["gap", "gsp", "gsp+zs"]
    assert not any("error" in r for r in rows), [r.get("error") for r in rows]
    assert all(r["precision"] == precision and r["device"].startswith("cuda") and r["step_ms"] > 0 for r in rows)
