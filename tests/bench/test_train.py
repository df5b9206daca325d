"""`bench train`: the setups it times side by side (poolings, eager vs compiled, precision) and the
bookkeeping of its rows (no timing asserted)."""
from __future__ import annotations

import json

import pytest
import torch

from gspdml.bench.train import bench_train, report
from gspdml.cli import main
from gspdml.errors import ConfigError, InputError

TINY = dict(backbones=("smallcnn",), image_size=16, batch_size=8, steps=2, warmup=1, device="cpu", progress=False)


def test_poolings_eager_and_compiled_side_by_side(monkeypatch):
    from gspdml.losses import ZeroShotLoss

    zs_calls = []
    forward = ZeroShotLoss.forward
    monkeypatch.setattr(ZeroShotLoss, "forward", lambda self, *a, **k: zs_calls.append(1) or forward(self, *a, **k))
    compiled = []
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kw: compiled.append(kw) or real_compile(model, **kw))

    rows = bench_train(poolings=("gap", "gsp", "gsp+zs"), precision="fp32", compile=True,
                       compile_backend="eager", **TINY)
    assert [(r["pooling"], r["mode"]) for r in rows] == [
        ("gap", "eager"), ("gap", "compiled"), ("gsp", "eager"), ("gsp", "compiled"),
        ("gsp+zs", "eager"), ("gsp+zs", "compiled")]
    assert not any("error" in r for r in rows), [r.get("error") for r in rows]
    # one torch.compile per pooling, with the asked backend
    assert [kw["backend"] for kw in compiled] == ["eager"] * 3
    # L_ZS runs in exactly the two gsp+zs setups: (warmup + steps) calls each
    assert len(zs_calls) == 2 * (1 + 2)
    by = {(r["pooling"], r["mode"]): r for r in rows}
    for mode in ("eager", "compiled"):
        assert by[("gap", mode)]["ratio_to_gap"] == 1.0
        for p in ("gsp", "gsp+zs"):
            r = by[(p, mode)]
            assert r["ratio_to_gap"] == pytest.approx(r["step_ms"] / by[("gap", mode)]["step_ms"])
    for p in ("gap", "gsp", "gsp+zs"):
        r = by[(p, "compiled")]
        assert r["speedup_vs_eager"] == pytest.approx(by[(p, "eager")]["step_ms"] / r["step_ms"])
        assert r["images_per_s"] == pytest.approx(8 / (r["step_ms"] / 1000))
    assert all(r["precision"] == "fp32" and r["amp"] is False and r["first_step_s"] > 0 for r in rows)
    text = report(rows)
    assert "vs eager" in text and "gsp+zs" in text and "compiled" in text


def test_default_output_unchanged_without_compile():
    rows = bench_train(poolings=("gap", "gsp"), **TINY)
    assert [(r["pooling"], r["mode"]) for r in rows] == [("gap", "eager"), ("gsp", "eager")]
    assert rows[0]["precision"] == "fp32" and rows[0]["amp"] is False  # auto on CPU = fp32
    header = report(rows).splitlines()[1].split()
    assert header == ["backbone", "pooling", "step", "ms", "images/s", "vs", "gap"]


def test_bf16_autocast_on_cpu(monkeypatch):
    seen = []
    real = torch.autocast

    def spy(device_type, dtype=None, enabled=True, **kw):
        seen.append((device_type, dtype, enabled))
        return real(device_type, dtype=dtype, enabled=enabled, **kw)

    monkeypatch.setattr(torch, "autocast", spy)
    rows = bench_train(poolings=("gap",), precision="bf16", **TINY)
    assert rows[0]["precision"] == "bf16" and rows[0]["amp"] is True
    assert ("cpu", torch.bfloat16, True) in seen


def test_a_failing_setup_is_reported_and_the_others_still_timed(monkeypatch):
    class Broken(torch.nn.Module):  # stands for a model that torch.compile cannot compile
        def __init__(self, model, **kw):
            super().__init__()
            self.inner = model

        def forward(self, *args, **kwargs):
            raise RuntimeError("cannot compile this\nsecond line")

    monkeypatch.setattr(torch, "compile", Broken)
    rows = bench_train(poolings=("gap", "gsp"), compile=True, compile_backend="eager", **TINY)
    failed = [r for r in rows if "error" in r]
    assert [(r["pooling"], r["mode"]) for r in failed] == [("gap", "compiled"), ("gsp", "compiled")]
    assert failed[0]["error"] == "RuntimeError: cannot compile this"
    assert all(r["step_ms"] > 0 for r in rows if "error" not in r)
    assert "gap compiled failed: RuntimeError: cannot compile this" in report(rows)


def test_bad_arguments():
    with pytest.raises(InputError, match="benchmark pooling"):
        bench_train(poolings=("gap", "gsp+nir"), **TINY)
    with pytest.raises(InputError, match="warmup >= 1"):
        bench_train(poolings=("gap",), compile=True, **{**TINY, "warmup": 0})
    with pytest.raises(ConfigError, match="fp16"):
        bench_train(poolings=("gap",), precision="fp16", **TINY)


def test_cli_options(tmp_path, capsys):
    out = tmp_path / "train.json"
    assert main(["bench", "train", "--backbones", "smallcnn", "--poolings", "gap", "gsp+zs", "--image-size", "16",
                 "--batch-size", "8", "--steps", "1", "--warmup", "1", "--device", "cpu", "--precision", "bf16",
                 "--compile", "--compile-backend", "eager", "--no-progress", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert {(r["pooling"], r["mode"], r["precision"]) for r in rows} == {
        ("gap", "eager", "bf16"), ("gap", "compiled", "bf16"), ("gsp+zs", "eager", "bf16"),
        ("gsp+zs", "compiled", "bf16")}
    assert "(AMP bf16)" in capsys.readouterr().out
    assert main(["bench", "train", "--backbones", "smallcnn", "--device", "cpu", "--precision", "fp16",
                 "--quick", "--no-progress"]) == 2
    assert "--precision" in capsys.readouterr().err
