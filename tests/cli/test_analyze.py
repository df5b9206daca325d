"""``gspdml analyze zeroshot`` on a saved checkpoint (gspdml.cli.analyze)."""
from __future__ import annotations

import json

import numpy as np

from gspdml.cli import main


def _token_checkpoint(tmp_path, make):
    """A small GSP token model (16 classes, 5 samples each, L_ZS on) saved as a run folder."""
    return make(tmp_path / "run", dataset="tokens", options={"samples_per_class": 5, "seed": 0},
                backbone="token_embedding", backbone_kwargs={"num_tokens": 68, "dim": 16},
                pooling_kwargs={"num_prototypes": 4, "mu": 0.3, "eps": 5.0}, num_classes=16, zero_shot=True)


def test_cli_analyze_zeroshot_writes_json_and_plot(tmp_path, capsys, untrained_checkpoint):
    run = _token_checkpoint(tmp_path, untrained_checkpoint)
    assert main(["analyze", "zeroshot", "--checkpoint", str(run), "--repeats", "25", "--no-progress", "--device", "cpu"]) == 0
    report = json.loads((run / "analysis" / "zeroshot_test.json").read_text())
    assert report["dataset"] == "tokens" and report["split"] == "test" and report["num_classes"] == 16
    assert report["num_samples"] == 80 and report["repeats"] == 25 and len(report["map_l2_per_repeat"]) == 25
    for key in ("map_l2_mean", "map_cosine_mean"):
        assert 0.0 < report[key] <= 1.0
    assert np.allclose(np.asarray(report["z_per_class"]).sum(1), 1.0, atol=1e-5)
    assert (run / "analysis" / "prototypes_test.png").is_file()
    printed = capsys.readouterr().out
    assert "L2 distance" in printed and "cosine similarity" in printed
    # another split, explicit output folder, no plot
    out = tmp_path / "elsewhere"
    assert main(["analyze", "zeroshot", "--checkpoint", str(run / "checkpoints" / "best.pt"), "--split", "train",
                 "--repeats", "5", "--out", str(out), "--no-plot", "--no-progress", "--device", "cpu"]) == 0
    assert (out / "zeroshot_train.json").is_file() and not (out / "prototypes_train.png").exists()


def test_cli_analyze_zeroshot_errors(tmp_path, capsys, untrained_checkpoint):
    assert main(["analyze", "zeroshot", "--checkpoint", str(tmp_path / "missing"), "--device", "cpu"]) == 2
    assert "does not exist" in capsys.readouterr().err
    run = _token_checkpoint(tmp_path, untrained_checkpoint)
    assert main(["analyze", "zeroshot", "--checkpoint", str(run), "--repeats", "0", "--device", "cpu"]) == 2
    assert "--repeats must be >= 1" in capsys.readouterr().err
    assert main(["analyze", "zeroshot", "--checkpoint", str(run), "--dataset", "nope", "--device", "cpu"]) == 2
    assert "unknown dataset 'nope'" in capsys.readouterr().err
