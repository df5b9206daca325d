"""`gspdml train`, `eval` and `protocol` end to end on the shipped Digits Collage (CPU, seconds)."""
from __future__ import annotations

import json

import pytest

from engine_fixtures import digits_cli_spec, write_yaml
from gspdml.cli import main


def _digits_config(tmp_path):
    return write_yaml(tmp_path / "digits.yaml", digits_cli_spec(tmp_path, "digits_cli"))


def test_train_eval_protocol_commands(tmp_path, capsys):
    path = _digits_config(tmp_path)
    assert main(["train", "--config", str(path), "train.max_steps=3", "--no-progress"]) == 0
    run = tmp_path / "runs" / "digits_cli"
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["steps"] == 3 and "run folder:" in capsys.readouterr().out

    out_json = tmp_path / "eval.json"
    assert main(["eval", "--checkpoint", str(run), "--split", "test", "--device", "cpu", "--no-progress",
                 "--json", str(out_json)]) == 0
    evaluated = json.loads(out_json.read_text())
    assert evaluated["metrics"] == pytest.approx(summary["final"])  # same model, same split
    assert "map_at_r" in capsys.readouterr().out

    # resume with the stored config: continue to 5 steps
    assert main(["train", "--resume", str(run), "train.max_steps=5", "--no-progress"]) == 0
    assert json.loads((run / "metrics.json").read_text())["steps"] == 5

    assert main(["protocol", "--config", str(path), "--folds", "0", "1", "--out", str(tmp_path / "p"),
                 "--no-progress", "train.save_checkpoints=false"]) == 0
    assert "| 128D |" in capsys.readouterr().out
    assert json.loads((tmp_path / "p" / "protocol.json").read_text())["folds"] == [0, 1]


def test_commands_report_user_errors(tmp_path, capsys):
    path = _digits_config(tmp_path)
    assert main(["train", "--config", str(path), "optim.learnrate=1"]) == 2
    assert "valid keys of 'optim'" in capsys.readouterr().err
    assert main(["train"]) == 2
    assert "--config" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["train", "--config", str(path), "data.dataset=imagenet"]) == 2
    err = capsys.readouterr().err
    assert "imagenet" in err and "cub" in err  # unknown dataset lists the choices


def test_eval_precision(tmp_path, capsys):
    """--precision bf16 evaluates with bfloat16 autocast on the CPU (close to fp32); fp16 on the CPU is refused."""
    path = _digits_config(tmp_path)
    assert main(["train", "--config", str(path), "--no-progress"]) == 0
    run = tmp_path / "runs" / "digits_cli"
    outs = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / f"{precision}.json"
        assert main(["eval", "--checkpoint", str(run), "--device", "cpu", "--no-progress", "--precision", precision,
                     "--json", str(out)]) == 0
        outs[precision] = json.loads(out.read_text())["metrics"]
    assert outs["bf16"]["map_at_r"] == pytest.approx(outs["fp32"]["map_at_r"], abs=0.05)
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run), "--device", "cpu", "--precision", "fp16", "--no-progress"]) == 2
    assert "fp16 needs CUDA" in capsys.readouterr().err
