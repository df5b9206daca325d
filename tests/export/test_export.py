"""`gspdml export` and :mod:`gspdml.engine.export`: a trained run exported to ONNX and pt2, run in
onnxruntime / torch.export.load on new inputs and compared with the checkpoint's PyTorch model."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
import yaml
from torch import nn

import gspdml
from gspdml.cli import main
from gspdml.config import load_config
from gspdml.engine.checkpoint import load_model_from_checkpoint
from gspdml.engine.datasets import make_split
from gspdml.engine.export import ATOL, RTOL, ExportError, export_model, input_spec, metadata_path
from gspdml.models import EmbeddingModel, build_model

import onnx  # the export extra: a missing package fails these tests (pip install "gspdml[export]")
import onnxruntime

TOL = 1e-4


def _digits_run(tmp_path_factory, pooling: str, pooling_kwargs: dict | None = None):
    """Train the tiny Digits Collage model of tests/cli for 2 steps; returns the run folder."""
    root = tmp_path_factory.mktemp(f"run_{pooling}")
    cfg = {
        "name": f"digits_{pooling}",
        "output_dir": str(root / "runs"),
        "data": {"dataset": "digits_collage", "transform": "none", "normalization": "none",
                 "classes_per_batch": 4, "samples_per_class": 2, "num_workers": 0,
                 "options": {"grid": 2, "upsample": 1, "samples_per_class": 8}},
        "model": {"backbone": "smallcnn", "backbone_kwargs": {"widths": [4, 4, 8]}, "local_dim": 8,
                  "pooling": pooling, "pooling_kwargs": pooling_kwargs or {}, "freeze_bn": False},
        "loss": {"name": "C1"},
        "optim": {"lr": 1.0e-2},
        "train": {"max_steps": 2, "device": "cpu", "plot": False, "log_every": 1},
    }
    path = root / "digits.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", "--config", str(path), "--no-progress"]) == 0
    return root / "runs" / f"digits_{pooling}"


@pytest.fixture(scope="module")
def gap_run(tmp_path_factory):
    return _digits_run(tmp_path_factory, "gap")


@pytest.fixture(scope="module")
def gsp_run(tmp_path_factory):
    return _digits_run(tmp_path_factory, "gsp", {"num_prototypes": 4, "mu": 0.3, "eps": 5.0})


def _real_images(run, n: int) -> torch.Tensor:
    """``n`` images of the run's test split (new inputs, not the export's random samples)."""
    _, cfg, _ = load_model_from_checkpoint(run)
    ds = make_split(cfg, "test", False)
    return torch.stack([ds[i][0] for i in range(n)])


def _dims(value_info) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def _check_run_export(run, tmp_path, capsys):
    """Export ``run`` to both formats through the CLI and compare with the checkpoint model."""
    model, cfg, extra = load_model_from_checkpoint(run)
    images = _real_images(run, 7)
    with torch.no_grad():
        ref = model(images)
    assert torch.allclose(ref.norm(dim=1), torch.ones(7), atol=1e-6)

    onnx_path = tmp_path / "out" / "model.onnx"
    assert main(["export", str(run), "--format", "onnx", "--out", str(onnx_path), "--batch-size", "4"]) == 0
    printed = capsys.readouterr().out
    assert "verified with onnxruntime" in printed and str(onnx_path) in printed
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (inp,), (outp,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, outp.name) == ("images", "embeddings")
    proto = onnx.load(str(onnx_path))
    assert _dims(proto.graph.input[0]) == ["batch", 1, 16, 16]  # batch is a named dynamic dimension
    assert _dims(proto.graph.output[0]) == ["batch", 8]
    for lo, hi in [(0, 7), (0, 1), (2, 5)]:  # three batch sizes, none of them the export's sample size
        got = torch.from_numpy(session.run(None, {"images": images[lo:hi].numpy()})[0])
        torch.testing.assert_close(got, ref[lo:hi], atol=TOL, rtol=TOL)

    pt2_path = tmp_path / "out" / "model.pt2"
    assert main(["export", str(run), "--out", str(pt2_path)]) == 0  # format from the suffix
    program = torch.export.load(str(pt2_path))
    for lo, hi in [(0, 7), (3, 4)]:
        with torch.no_grad():
            got = program.module()(images[lo:hi])
        torch.testing.assert_close(got, ref[lo:hi], atol=TOL, rtol=TOL)

    meta = json.loads(metadata_path(onnx_path).read_text())
    assert meta["format"] == "onnx" and meta["file"] == "model.onnx" and meta["files"] == ["model.onnx"]
    assert meta["gspdml_version"] == gspdml.__version__
    assert meta["embedding_dim"] == 8 and meta["output"]["shape"] == ["batch", 8]
    assert meta["output"]["l2_normalized"] is True
    assert meta["model"]["backbone"] == "smallcnn" and meta["model"]["pooling"] == cfg.model.pooling
    assert meta["model"]["name"] == cfg.name
    inp = meta["input"]
    # the digits collage (grid 2, upsample 1) is 2 * 8 = 16 px square, one channel
    assert inp["kind"] == "image" and inp["names"] == ["images"] and inp["channels"] == 1
    assert inp["size"] == [16, 16] and inp["shape"]["images"] == ["batch", 1, 16, 16]
    pre = inp["preprocessing"]
    assert pre["normalization"] == "none" and pre["mean"] == [0.0] and pre["std"] == [1.0] and pre["scale"] == 1.0
    ver = meta["verification"]
    assert ver["atol"] == ATOL == 1e-4 and ver["rtol"] == RTOL == 1e-4
    assert [s["batch_size"] for s in ver["samples"]] == [4, 1]
    assert all(s["max_abs_diff"] <= TOL for s in ver["samples"])
    assert meta["source"]["checkpoint"] == extra["path"] and meta["source"]["step"] == 2
    meta_pt2 = json.loads(metadata_path(pt2_path).read_text())
    assert meta_pt2["format"] == "pt2" and meta_pt2["input"] == meta["input"]
    assert all(s["max_abs_diff"] <= TOL for s in meta_pt2["verification"]["samples"])


def test_export_gap_run_to_onnx_and_pt2(gap_run, tmp_path, capsys):
    _check_run_export(gap_run, tmp_path, capsys)


@pytest.mark.slow
def test_export_gsp_run_to_onnx_and_pt2(gsp_run, tmp_path, capsys):
    """Needs GSP to be capturable by torch.export (issue 15, item 2)."""
    _check_run_export(gsp_run, tmp_path, capsys)


class _Drift(nn.Module):
    """A backbone whose exported graph differs from eager by ``shift`` (torch.compiler.is_exporting)."""

    input_kind = "image"
    in_channels = 1
    out_channels = 4

    def __init__(self, shift: float) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.shift = shift

    def forward(self, x):
        y = self.conv(x)
        if torch.compiler.is_exporting():
            y = y + self.shift * torch.arange(4.0).view(1, 4, 1, 1)
        return y


def _small_cfg():
    return load_config(None, ["data.transform=small", "data.image_size=8", "data.normalization=none"])


@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
def test_mismatch_raises_and_removes_the_file(tmp_path, fmt):
    torch.manual_seed(0)
    out = tmp_path / f"bad.{fmt}"
    out.write_bytes(b"an older file")
    metadata_path(out).write_text("{}")
    with pytest.raises(ExportError, match=r"does not reproduce the PyTorch model: max \|difference\| \d"):
        export_model(EmbeddingModel(_Drift(0.5), local_dim=4, pooling="gap"), _small_cfg(), out, fmt)
    assert not out.exists() and not metadata_path(out).exists()
    # positive control: the same model without the drift exports and verifies
    meta = export_model(EmbeddingModel(_Drift(0.0), local_dim=4, pooling="gap"), _small_cfg(), out, fmt)
    assert out.is_file() and meta["input"]["size"] == [8, 8]


def test_missing_onnx_packages_name_the_extra(gap_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    out = tmp_path / "model.onnx"
    assert main(["export", str(gap_run), "--format", "onnx", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'pip install "gspdml[export]"' in err and "onnxruntime" in err
    assert not out.exists()


def test_user_errors(gap_run, tmp_path, capsys):
    assert main(["export", str(gap_run), "--out", str(tmp_path / "model.bin")]) == 2
    assert "expected .onnx or .pt2" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nothing"), "--out", str(tmp_path / "m.pt2")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["export", str(gap_run), "--out", str(tmp_path / "m.pt2"), "--batch-size", "0"]) == 2
    assert "--batch-size must be >= 1" in capsys.readouterr().err


def test_mlrc_preprocessing_in_the_json_reproduces_the_eval_transform():
    """Following the JSON's recipe by hand on a PIL image gives the dataset's eval transform."""
    from PIL import Image
    from torchvision.transforms.v2 import functional as TF

    from gspdml.data import build_transform

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (300, 410, 3), dtype=np.uint8))
    cfg = load_config(None, ["model.backbone=smallcnn", "model.backbone_kwargs={in_channels: 3, widths: [4, 4, 8]}",
                             "model.local_dim=8", "model.pooling=gap"])  # data: mlrc, 227 px, bninception
    for norm in ("bninception", "imagenet"):
        cfg.data.normalization = norm
        spec = input_spec(build_model(cfg.model), cfg)
        pre = spec["preprocessing"]
        assert spec["shape"]["images"] == ["batch", 3, 227, 227] and pre["resize_shorter_side"] == 256
        x = TF.resize(TF.pil_to_tensor(image), pre["resize_shorter_side"], antialias=True)
        x = TF.center_crop(x, pre["center_crop"]).float() / 255.0
        if pre["channel_order"] == "BGR":
            x = x[[2, 1, 0]]
        x = (x * pre["scale"] - torch.tensor(pre["mean"]).view(3, 1, 1)) / torch.tensor(pre["std"]).view(3, 1, 1)
        expected = build_transform("mlrc", train=False, normalization=norm, image_size=227)(image)
        torch.testing.assert_close(x, expected, atol=1e-4, rtol=1e-5)
    assert pre["channel_order"] == "RGB" and pre["mean"] == [0.485, 0.456, 0.406]


def _token_model(pooling: str, **kw) -> EmbeddingModel:
    torch.manual_seed(0)
    return build_model(backbone="token_embedding", backbone_kwargs={"num_tokens": 20, "dim": 8}, local_dim=8,
                       pooling=pooling, pooling_kwargs=kw or None, freeze_bn=False).eval()


@pytest.mark.slow
@pytest.mark.parametrize("pooling, kw", [("gap", {}), ("gsp", {"num_prototypes": 4, "mu": 0.3, "eps": 5.0})])
def test_export_token_model_with_mask(tmp_path, pooling, kw):
    """Token ids + padding mask in, both formats, dynamic batch and length (needs the token backbone
    and the pooling mask checks to be capturable by torch.export)."""
    model = _token_model(pooling, **kw)
    cfg = load_config(None, ["model.backbone=token_embedding", "data.transform=none"])
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(0, 20, (6, 9), generator=g)
    mask = torch.ones(6, 9, dtype=torch.bool)
    mask[1, 4:] = False
    mask[4, 7:] = False
    with torch.no_grad():
        ref = model(ids, mask=mask)
        ref_short = model(ids[:2, :5], mask=mask[:2, :5])
    onnx_path, pt2_path = tmp_path / "t.onnx", tmp_path / "t.pt2"
    meta = export_model(model, cfg, onnx_path, batch_size=3)
    assert meta["input"]["kind"] == "tokens" and meta["input"]["names"] == ["tokens", "mask"]
    assert meta["input"]["dtype"] == {"tokens": "int64", "mask": "bool"} and meta["input"]["num_tokens"] == 20
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"tokens": ids.numpy(), "mask": mask.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(got), ref, atol=TOL, rtol=TOL)
    got = session.run(None, {"tokens": ids[:2, :5].numpy(), "mask": mask[:2, :5].numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(got), ref_short, atol=TOL, rtol=TOL)
    export_model(model, cfg, pt2_path)
    program = torch.export.load(str(pt2_path)).module()
    with torch.no_grad():
        torch.testing.assert_close(program(ids, mask), ref, atol=TOL, rtol=TOL)
        torch.testing.assert_close(program(ids[:2, :5], mask[:2, :5]), ref_short, atol=TOL, rtol=TOL)
