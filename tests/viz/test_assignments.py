"""The Fig. 5 assignments figure: dominant prototype per location (against a brute-force
re-computation) and ``gspdml viz assignments`` on a 2-step CIFAR-10 checkpoint."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fixtures_data import make_cifar10
from gspdml.cli import main
from gspdml.config import load_config
from gspdml.errors import InputError
from gspdml.analysis.assignments import dominant_assignments, transport_plans
from gspdml.viz.assignments import figure_size, plot_assignments


def _brute_cost(f, w):
    """c_ij = || w_i / max(1, |w_i|) - f_j / max(1, |f_j|) || by explicit loops."""
    m, n = len(w), len(f)
    c = np.zeros((m, n))
    for i in range(m):
        wi = w[i] / max(1.0, np.linalg.norm(w[i]))
        for j in range(n):
            fj = f[j] / max(1.0, np.linalg.norm(f[j]))
            c[i, j] = np.linalg.norm(wi - fj)
    return c


def test_dominant_equals_brute_force_argmax():
    g = torch.Generator().manual_seed(3)
    feats = torch.randn(2, 5, 3, 4, generator=g, dtype=torch.float64) * 0.8
    protos = torch.randn(6, 5, generator=g, dtype=torch.float64)
    plan, weights = transport_plans(feats, protos, mu=0.3, eps=5.0)
    assert plan.shape == (2, 6, 3, 4) and weights.shape == (2, 3, 4)
    dom = dominant_assignments(plan, weights, min_weight=0.0)
    dom_sel = dominant_assignments(plan, weights, min_weight=1.0)
    for b in range(2):
        f = feats[b].numpy().reshape(5, -1).T  # (n, C), row-major locations
        cost = _brute_cost(f, protos.numpy())
        flat_plan = plan[b].reshape(6, -1)
        for j in range(12):
            r, c = divmod(j, 4)
            best = max(range(6), key=lambda i: flat_plan[i, j])
            assert dom[b, r, c] == best
            # GSP's plan is softmax_i(-eps c_ij) x (transported mass of j): its argmax is the nearest prototype
            assert best == int(np.argmin(cost[:, j]))
            # the pooling weight of j is its transported mass / mu; selected = at least uniform
            p_j = flat_plan[:, j].sum() / 0.3
            assert np.isclose(p_j, weights[b, r, c])
            assert dom_sel[b, r, c] == (best if 12 * p_j >= 1.0 else -1)
    assert (dom_sel == -1).any() and (dom_sel >= 0).any()


def test_plot_assignments_size_and_errors(tmp_path):
    images = np.random.default_rng(0).random((3, 32, 32, 3))
    dom = np.array([[[0, 1], [-1, 2]]] * 3)
    weights = np.ones((3, 2, 2))
    path = plot_assignments(images, dom, weights, tmp_path / "a.png", num_prototypes=3, titles=["a", "b", "c"],
                            ncols=2, title="t")
    assert Image.open(path).size == figure_size(3, 2, True) == (round((2 * 1.6 + 1.5) * 120), round((2 * 1.6 + 0.35) * 120))
    with pytest.raises(InputError, match="outside -1..2"):
        plot_assignments(images, dom + 1, weights, tmp_path / "b.png", num_prototypes=3)
    with pytest.raises(InputError, match="multiple of the map size"):
        plot_assignments(images[:, :31], dom, weights, tmp_path / "b.png", num_prototypes=3)
    with pytest.raises(InputError, match="plan must be"):
        dominant_assignments(np.zeros((3, 2, 2)), weights)


def test_fig5_config():
    cfg = load_config("cifar10_pnca_fig5")
    assert (cfg.data.dataset, cfg.model.backbone, cfg.model.pooling, cfg.loss.name) == ("cifar10", "resnet20", "gsp", "PNCA")
    kw = cfg.model.pooling_kwargs
    assert (kw["num_prototypes"], kw["mu"], kw["eps"]) == (8, 0.3, 0.5)
    assert cfg.model.local_dim == 128 and cfg.data.normalization == "cifar10"
    assert cfg.loss.zero_shot.enabled and cfg.loss.zero_shot.weight == 0.1 and cfg.loss.zero_shot.ridge == 0.05


def test_viz_assignments_on_a_two_step_checkpoint(tmp_path, capsys):
    info = make_cifar10(tmp_path / "data", per_batch=4)
    assert main(["train", "-c", "cifar10_pnca_fig5", f"data.root={info['root']}", f"output_dir={tmp_path / 'runs'}",
                 "train.max_steps=2", "data.classes_per_batch=2", "data.samples_per_class=2", "data.num_workers=0",
                 "train.device=cpu", "model.pooling_kwargs.init=random", "model.local_dim=16", "eval.batch_size=8",
                 "--no-progress"]) == 0
    run = tmp_path / "runs" / "cifar10_pnca_fig5"
    capsys.readouterr()
    assert main(["viz", "assignments", str(run), "--num", "3", "--device", "cpu"]) == 0
    png = run / "analysis" / "assignments_cifar10_test.png"
    assert f"wrote {png}" in capsys.readouterr().out
    assert Image.open(png).size == figure_size(3, None, True)
    assert main(["viz", "assignments", str(run), "--num", "2", "--min-weight", "-1"]) == 2
    assert "--min-weight must be >= 0" in capsys.readouterr().err
