"""Shared command arguments and their resolution (gspdml.cli.common)."""
import pytest
import torch

from gspdml.cli import common, main
from gspdml.errors import ConfigError, InputError


def _no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


def test_device_resolution(monkeypatch):
    _no_cuda(monkeypatch)
    assert common.resolve_device("cpu") == torch.device("cpu")
    assert common.resolve_device("auto") == torch.device("cpu")
    for spec in ("cuda", "cuda:1"):
        with pytest.raises(ConfigError, match="--device: .*no CUDA device"):
            common.resolve_device(spec)
    with pytest.raises(ConfigError, match="--device: .*'tpu'"):
        common.resolve_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert common.resolve_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(ConfigError, match="cuda:1"):
        common.resolve_device("cuda:1")


def test_unavailable_device_is_a_one_line_error(monkeypatch, tmp_path, capsys):
    _no_cuda(monkeypatch)
    assert main(["eval", "--checkpoint", str(tmp_path / "run"), "--device", "cuda:1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gspdml eval: error: --device: ") and "cuda:1" in err and "\n" not in err
    assert main(["analyze", "zeroshot", "--checkpoint", str(tmp_path / "run"), "--device", "cuda"]) == 2
    assert capsys.readouterr().err.startswith("gspdml analyze zeroshot: error: --device: ")


def test_options_and_eval_config():
    from gspdml.config import TrainConfig

    assert common.parse_options(["grid=2", "names=[a, b]", "x="]) == {"grid": 2, "names": ["a", "b"], "x": None}
    with pytest.raises(InputError, match="--option expects KEY=VALUE"):
        common.parse_options(["grid"])
    cfg = TrainConfig()
    cfg.data.dataset, cfg.data.options = "digits_collage", {"grid": 3, "upsample": 2}
    same = common.eval_config(cfg, "Digits_Collage", "elsewhere", ["grid=2"])
    assert same.data.dataset == "digits_collage" and same.data.root == "elsewhere"
    assert same.data.options == {"grid": 2, "upsample": 2}
    other = common.eval_config(cfg, "tokens", None, ["seed=1"])
    assert other.data.dataset == "tokens" and other.data.options == {"seed": 1} and other.data.root == cfg.data.root


def test_default_output_dir(tmp_path):
    assert common.default_output_dir(tmp_path / "run" / "checkpoints" / "best.pt", None) == tmp_path / "run" / "analysis"
    assert common.default_output_dir(tmp_path / "x.pt", None) == tmp_path / "analysis"
    assert str(common.default_output_dir(tmp_path / "x.pt", "out")) == "out"
