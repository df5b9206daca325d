"""`gspdml demo`: end to end on the quick budget, plus its scoring helpers and small backbones."""
import json
import math

import numpy as np
import pytest
import torch

from gspdml.cli import main
from gspdml.demo.report import verdict
from gspdml.demo.studies import weight_scores
from gspdml.errors import InputError
from gspdml.models import build_backbone
from gspdml.viz.geometry import class_hulls, hull_overlap, plot_embedding_geometry


def test_small_backbones_from_registry():
    cnn = build_backbone("smallcnn")
    assert cnn.input_kind == "image" and cnn.out_channels == 128
    assert cnn(torch.rand(2, 1, 48, 48)).shape == (2, 128, 12, 12)  # 4x4 map cells per digit cell
    tok = build_backbone("token_embedding", num_tokens=10, dim=6)
    assert tok.input_kind == "tokens" and tok.out_channels == 6
    ids = torch.tensor([[0, 3, 3]])
    out = tok(ids)
    assert torch.equal(out[0, 1], tok.embedding.weight[3]) and torch.equal(out[0, 1], out[0, 2])
    with pytest.raises(InputError):
        tok(torch.tensor([[10]]))
    with pytest.raises(InputError):
        cnn(torch.rand(2, 3, 48, 48))


def test_small_backbone_local_weights(tmp_path):
    a = build_backbone("smallcnn")
    path = tmp_path / "w.pt"
    torch.save(a.state_dict(), path)
    b = build_backbone("smallcnn", pretrained=str(path))
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_weight_scores_hand_computed():
    # 4 locations, targets at 0 and 1; weights 0.4, 0.3, 0.2, 0.1 -> target mass 0.7
    w = np.array([[[0.4, 0.3], [0.2, 0.1]]])
    m = np.array([[[True, True], [False, False]]])
    s = weight_scores(w, m)
    assert s["target_mass"] == pytest.approx(0.7)
    assert s["target_mass_uniform"] == pytest.approx(0.5)
    assert s["target_rel"] == pytest.approx(0.35 * 4)  # mean target weight / (1/4)
    assert s["background_rel"] == pytest.approx(0.15 * 4)
    uniform = weight_scores(np.full((2, 3, 3), 1 / 9), np.eye(3, dtype=bool)[None].repeat(2, 0))
    assert uniform["target_rel"] == pytest.approx(1.0) and uniform["background_rel"] == pytest.approx(1.0)


def test_verdict_uses_seed_spread():
    def entry(mean, std):
        return {"mean": {"map_at_r": mean}, "std": {"map_at_r": std}, "seeds": [0, 1, 2]}

    assert "beats" in verdict({"GAP": entry(0.4, 0.03), "GSP": entry(0.6, 0.04)}, "GSP")
    assert "within the seed spread" in verdict({"GAP": entry(0.4, 0.03), "GSP": entry(0.42, 0.04)}, "GSP")
    assert "does not beat" in verdict({"GAP": entry(0.4, 0.03), "GSP": entry(0.35, 0.04)}, "GSP")


def test_hull_overlap_and_plot(tmp_path):
    square = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], dtype=float)
    # class 1: a thin triangle below the square whose tip (0.5, 0.5) lies inside class 0's square
    pts = np.vstack([square, [[0.4, -3.0], [0.6, -3.0], [0.5, 0.5]]])
    labels = np.array([0, 0, 0, 0, 1, 1, 1])
    assert hull_overlap(pts, labels) == pytest.approx(1 / 7)
    assert len(class_hulls(pts, labels)[0]) == 5  # closed square
    path = plot_embedding_geometry({"A": (np.random.rand(30, 5), np.arange(30) % 3)}, tmp_path / "g.png")
    assert path.stat().st_size > 1000


def _numbers(tree):
    if isinstance(tree, dict):
        for v in tree.values():
            yield from _numbers(v)
    elif isinstance(tree, list):
        for v in tree:
            yield from _numbers(v)
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        yield tree


@pytest.mark.slow
def test_demo_quick_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "Digits Collage" in printed and "GSP+L_ZS" in printed
    report = (out / "report.md").read_text()
    metrics = json.loads((out / "metrics.json").read_text())
    for name in metrics["figures"].values():
        assert (out / name).stat().st_size > 1000
        assert f"]({name})" in report
    assert {"tokens_geometry", "digits_weights_gsp", "digits_prototypes_gsp_zs"} <= set(metrics["figures"])
    for study, methods in (("tokens", {"GAP", "GSP"}), ("digits", {"GAP", "GSP", "GSP+L_ZS"})):
        summary = metrics[study]["summary"]
        assert set(summary) == methods
        for entry in summary.values():
            for key in ("map_at_r", "r_precision", "precision_at_1"):
                values = entry["values"][key]
                assert len(values) == 1 and all(0.0 <= v <= 1.0 for v in values)
    assert all(math.isfinite(v) for v in _numbers(metrics))
    # GAP weights are exactly uniform
    assert metrics["digits"]["summary"]["GAP"]["mean"]["target_rel"] == pytest.approx(1.0)


def test_demo_refuses_non_empty_out(tmp_path, capsys):
    (tmp_path / "x.txt").write_text("keep me")
    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (tmp_path / "x.txt").read_text() == "keep me"


def test_digits_weight_figures_side_by_side(tmp_path):
    from gspdml.data import build_dataset
    from gspdml.demo.report import digits_weight_figures, write_report
    from gspdml.demo.studies import RunOutput

    test_ds = build_dataset("digits_collage", None, "test", grid=3, upsample=2, samples_per_class=2, seed=0)
    n = len(test_ds)
    rng = np.random.default_rng(0)

    def run(method, seed=0, marginals=False):
        details = {"weights": torch.as_tensor(rng.random((n, 12, 12)))}
        if marginals:
            details["marginals"] = torch.softmax(torch.as_tensor(rng.random((n, 8))), 1)
        return RunOutput("digits", method, seed, {}, 0.0, torch.zeros(n, 2),
                         torch.as_tensor(test_ds.labels), details)

    runs = [run("GAP"), run("GSP", marginals=True), run("GSP+L_ZS", marginals=True), run("GSP", seed=1)]
    names = [f"{a}+{b}" for a, b in test_ds.pairs]
    figures = digits_weight_figures(runs, 0, test_ds, names, tmp_path)
    assert figures == {"digits_weights_compare": "digits_weights_compare.png",
                       "digits_weights_gsp": "digits_weights_gsp.png",
                       "digits_weights_gsp_zs": "digits_weights_gsp_zs.png",
                       "digits_prototypes_gsp": "digits_prototypes_gsp.png",
                       "digits_prototypes_gsp_zs": "digits_prototypes_gsp_zs.png"}
    for name in figures.values():
        assert (tmp_path / name).stat().st_size > 1000
    from PIL import Image

    from gspdml.viz.weights import comparison_figsize

    w, h = comparison_figsize(3, test_ds.num_classes, title=True)  # 3 methods x one image per test class
    with Image.open(tmp_path / "digits_weights_compare.png") as im:
        assert im.size == (round(w * 120), round(h * 120))
    summary = {"GAP": {"mean": {"map_at_r": 0.1}, "std": {"map_at_r": 0.0}, "values": {"map_at_r": [0.1]},
                       "seeds": [0], "seconds": [1.0]}}
    report = write_report(tmp_path / "report.md", {"digits": {"summary": summary, "train_size": 1, "test_size": n,
                                                              "train_classes": 8, "test_classes": 7, "epochs": 1}},
                          figures, {"budget": "quick", "seeds": 1, "seed_list": [0], "device": "cpu",
                                    "wall_seconds": 1.0, "version": "x", "torch": "y"}).read_text()
    assert "](digits_weights_compare.png)" in report and "outlined" in report
