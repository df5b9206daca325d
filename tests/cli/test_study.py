"""`gspdml study poolings`: end to end on the quick budget, and its argument errors."""
import json

import pytest

from gspdml.cli import main


@pytest.mark.slow
def test_study_poolings_quick_end_to_end(tmp_path, capsys):
    out = tmp_path / "zoo"
    assert main(["study", "poolings", "--quick", "--seeds", "1", "--poolings", "gap", "gsp", "gmp",
                 "--out", str(out), "--no-progress"]) == 0
    assert "Pooling zoo" in capsys.readouterr().out
    for name in ("metrics.json", "settings.json", "runs.csv", "summary.csv", "table.md", "poolings.png"):
        assert (out / name).stat().st_size > 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["failures"] == {} and len(metrics["runs"]) == 3
    means = {p: e["mean"]["map_at_r"] for p, e in metrics["summary"].items()}
    assert set(means) == {"gap", "gsp", "gmp"}
    # the ranking is the summary sorted by MAP@R, also in the table's row order
    assert metrics["ranking"] == sorted(means, key=lambda p: (-means[p], p))
    rows = [line.split(" | ")[1] for line in (out / "table.md").read_text().splitlines()
            if line.startswith("| ") and "rank" not in line]
    assert rows == metrics["ranking"]
    assert "Single seed" in metrics["verdict"][0]
    assert (out / "poolings.png").stat().st_size > 1000
    # GAP's weights are exactly uniform
    assert metrics["summary"]["gap"]["mean"]["target_rel"] == pytest.approx(1.0)


def test_study_unknown_pooling_is_one_line(tmp_path, capsys):
    assert main(["study", "poolings", "--quick", "--poolings", "gap", "bogus", "--out", str(tmp_path / "z")]) == 2
    err = capsys.readouterr().err
    assert "unknown pooling 'bogus'; valid choices are: attention" in err and "gsp" in err
    assert not (tmp_path / "z").exists()


def test_study_bad_seeds(tmp_path, capsys):
    assert main(["study", "poolings", "--seeds", "0", "--out", str(tmp_path / "z")]) == 2
    assert "--seeds must be >= 1" in capsys.readouterr().err
