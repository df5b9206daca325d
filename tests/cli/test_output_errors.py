"""Output paths of `eval`, `analyze` and `viz` that cannot be written are one-line errors before
any work, and a corrupt image read by a DataLoader worker during `eval` is one line (issue 11)."""
from __future__ import annotations

import pytest

from fixtures_data import make_csv, write_corrupt
from gspdml.cli import main


def _digits_run(tmp_path, make):
    return make(tmp_path / "run", dataset="digits_collage", options={"samples_per_class": 3, "seed": 0},
                backbone="smallcnn", backbone_kwargs={"widths": [8, 8, 16]}, pooling_kwargs={"num_prototypes": 5},
                num_classes=8)


def _error_line(capsys, command: str) -> tuple[str, str]:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    assert lines[0].startswith(f"gspdml {command}: error: ")
    return lines[0], captured.out


def test_eval_json_to_a_bad_path_fails_before_evaluating(tmp_path, capsys, untrained_checkpoint):
    run = _digits_run(tmp_path, untrained_checkpoint)
    base = ["eval", "--checkpoint", str(run), "--device", "cpu", "--no-progress", "--num-workers", "0"]
    assert main(base + ["--json", str(tmp_path)]) == 2
    line, out = _error_line(capsys, "eval")
    assert f"cannot write {str(tmp_path)!r} (--json): it is a folder, not a file" in line
    assert out == ""  # refused before the metrics were computed and printed
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    assert main(base + ["--json", str(blocker / "eval.json")]) == 2
    line, out = _error_line(capsys, "eval")
    assert f"{str(blocker)!r} is a file, not a folder" in line and out == ""


@pytest.mark.parametrize("command", [["analyze", "zeroshot", "--repeats", "2", "--no-plot", "--no-progress"],
                                     ["viz", "weights", "--num", "2"], ["viz", "prototypes", "--no-progress"]])
def test_analysis_output_folder_that_is_a_file(command, tmp_path, capsys, untrained_checkpoint):
    run = _digits_run(tmp_path, untrained_checkpoint)
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    name = " ".join(command[:2])
    argv = command + ["--checkpoint", str(run), "--device", "cpu", "--split", "test"]
    assert main(argv + ["--out", str(blocker)]) == 2
    line, _ = _error_line(capsys, name)
    assert f"cannot write {str(blocker)!r} (--out): it is a file, not a folder" in line
    (run / "analysis").write_text("x")  # the default output folder <run>/analysis is a file
    assert main(argv) == 2
    line, _ = _error_line(capsys, name)
    assert f"cannot write {str(run / 'analysis')!r} (the default <run folder>/analysis; choose one with --out)" in line


def test_corrupt_image_in_an_eval_worker_is_one_line(tmp_path, capsys, untrained_checkpoint):
    info = make_csv(tmp_path / "data")
    bad = tmp_path / "data" / info["rows"][4][0]  # the first test row
    write_corrupt(bad)
    run = untrained_checkpoint(tmp_path / "run", dataset="csv", options={}, backbone="smallcnn",
                               backbone_kwargs={"widths": [4, 4, 8]}, pooling_kwargs={"num_prototypes": 3},
                               num_classes=2, transform="small", image_size=12)
    code = main(["eval", "--checkpoint", str(run), "--dataset", "csv", "--root", info["csv"], "--split", "test",
                 "--option", "verify=false", "--num-workers", "1", "--device", "cpu", "--no-progress"])
    assert code == 2
    line, _ = _error_line(capsys, "eval")
    assert line.startswith(f"gspdml eval: error: cannot read image {str(bad)!r}: UnidentifiedImageError")
