"""Tests of the weight-map and prototype-histogram plots (gspdml.viz.weights / gspdml.viz.prototypes)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from gspdml.analysis.zeroshot import class_means
from gspdml.errors import InputError
from gspdml.viz.prototypes import plot_prototype_histograms, prototype_colors
from gspdml.viz.weights import (
    dominant_prototypes,
    plot_weight_maps,
    relative_weights,
    to_display_image,
    upsample_maps,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(8) == PNG_MAGIC


def test_relative_weights_uniform_is_one_and_scale_free():
    w = np.full((2, 3, 4), 1.0 / 12)
    np.testing.assert_allclose(relative_weights(w), 1.0)
    w = np.zeros((1, 2, 2))
    w[0, 0, 0] = 3.0  # all mass on one of 4 locations -> 4 there, 0 elsewhere (any input scale)
    np.testing.assert_allclose(relative_weights(w)[0], [[4.0, 0.0], [0.0, 0.0]])
    with pytest.raises(InputError, match=r"\(N, h, w\) maps"):
        relative_weights(np.ones((2, 5)))
    with pytest.raises(InputError, match="non-negative"):
        relative_weights(-np.ones((1, 2, 2)))
    with pytest.raises(InputError, match="sum to zero"):
        relative_weights(np.zeros((1, 2, 2)))


def test_upsample_nearest_repeats_cells_and_bilinear_keeps_constants():
    m = np.arange(4.0).reshape(1, 2, 2)
    up = upsample_maps(m, (4, 4), "nearest")
    np.testing.assert_array_equal(up[0], np.repeat(np.repeat(m[0], 2, 0), 2, 1))
    np.testing.assert_allclose(upsample_maps(np.full((1, 3, 3), 2.5), (7, 9)), 2.5)


def test_dominant_prototypes_is_argmax_over_prototypes():
    plan = np.zeros((1, 3, 4))
    plan[0, 2, 0] = plan[0, 0, 1] = plan[0, 1, 2] = plan[0, 2, 3] = 1.0
    plan[0, 1, 0] = 0.5
    assert dominant_prototypes(plan).tolist() == [[2, 0, 1, 2]]
    assert dominant_prototypes(plan, (2, 2)).tolist() == [[[2, 0], [1, 2]]]
    with pytest.raises(InputError, match="does not hold"):
        dominant_prototypes(plan, (3, 3))


@pytest.mark.parametrize("mu,eps", [(0.3, 5.0), (0.7, 0.5), (1.0, 20.0)])
def test_nearest_prototypes_is_argmax_of_the_solved_plan(mu, eps):
    from gspdml.pooling import partial_transport, prototype_cost
    from gspdml.viz.weights import nearest_prototypes

    g = torch.Generator().manual_seed(0)
    feats = torch.randn(3, 6, 4, 5, generator=g, dtype=torch.float64)  # (N, C, h, w)
    protos = torch.randn(7, 6, generator=g, dtype=torch.float64)
    tokens = feats.flatten(2).transpose(1, 2)
    plan = partial_transport(prototype_cost(tokens, protos).contiguous(), mu, eps).plan  # (N, m, n)
    expected = dominant_prototypes(plan, (4, 5))
    np.testing.assert_array_equal(nearest_prototypes(feats, protos), expected)
    np.testing.assert_array_equal(nearest_prototypes(tokens, protos), expected.reshape(3, 20))


def test_to_display_image_undoes_normalisations():
    rgb = torch.rand(3, 5, 6)
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    np.testing.assert_allclose(to_display_image((rgb - mean) / std, "imagenet"), rgb.permute(1, 2, 0).numpy(), atol=1e-6)
    bgr = rgb.flip(0) * 255 - torch.tensor([104.0, 117.0, 128.0])[:, None, None]
    np.testing.assert_allclose(to_display_image(bgr, "bninception"), rgb.permute(1, 2, 0).numpy(), atol=1e-5)
    grey = torch.rand(1, 4, 4)
    np.testing.assert_allclose(to_display_image(grey, "none"), grey[0].numpy())


def test_plot_weight_maps_writes_png(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.random((5, 48, 48))
    weights = rng.random((5, 12, 12))
    path = plot_weight_maps(images, weights, tmp_path / "sub" / "weights.png", titles=list("abcde"))
    assert path.exists() and _is_png(path)
    with Image.open(path) as im:
        assert im.size[0] > 300 and im.size[1] > 100
    # RGB uint8 images, dominant-prototype colouring
    rgb = (rng.random((3, 32, 32, 3)) * 255).astype(np.uint8)
    dom = rng.integers(0, 6, size=(3, 4, 4))
    path2 = plot_weight_maps(rgb, rng.random((3, 4, 4)), tmp_path / "dominant.png", dominant=dom, num_prototypes=6)
    assert _is_png(path2)


def test_plot_weight_maps_errors(tmp_path):
    images, weights = np.random.rand(2, 8, 8), np.random.rand(2, 2, 2)
    with pytest.raises(InputError, match="2 images but 3 weight maps"):
        plot_weight_maps(images, np.random.rand(3, 2, 2), tmp_path / "x.png")
    with pytest.raises(InputError, match="ending in .png"):
        plot_weight_maps(images, weights, tmp_path / "x.jpg")
    with pytest.raises(InputError, match=r"\(N, H, W\) or \(N, H, W, 3\)"):
        plot_weight_maps(np.random.rand(2, 8), weights, tmp_path / "x.png")
    with pytest.raises(InputError, match="titles has 1 entries"):
        plot_weight_maps(images, weights, tmp_path / "x.png", titles=["a"])
    with pytest.raises(InputError, match="dominant must be"):
        plot_weight_maps(images, weights, tmp_path / "x.png", dominant=np.zeros((2, 3, 3), dtype=int))


def test_prototype_histograms_write_png_and_class_means(tmp_path):
    rng = np.random.default_rng(1)
    z = rng.dirichlet(np.ones(8), size=40)
    labels = np.repeat(np.arange(10), 4)
    classes, z_per_class = class_means(z, labels)
    assert classes.tolist() == list(range(10))
    np.testing.assert_allclose(z_per_class[3], z[12:16].mean(0))
    path = plot_prototype_histograms(z_per_class, tmp_path / "protos.png", class_names=[f"c{i}" for i in range(10)])
    assert _is_png(path)
    # many prototypes (colour map beyond tab20) and a single class
    assert _is_png(plot_prototype_histograms(rng.dirichlet(np.ones(64), size=1), tmp_path / "one.png"))
    with pytest.raises(InputError, match=r"\(classes, prototypes\)"):
        plot_prototype_histograms(np.ones(5), tmp_path / "bad.png")
    with pytest.raises(InputError, match="class_names has 2 entries for 10 classes"):
        plot_prototype_histograms(z_per_class, tmp_path / "bad.png", class_names=["a", "b"])


def test_prototype_colors_are_distinct_and_stable():
    for m in (3, 10, 16, 64):
        colors = prototype_colors(m)
        assert colors.shape == (m, 4)
        assert len({tuple(np.round(c, 6)) for c in colors}) == m
    np.testing.assert_array_equal(prototype_colors(8), prototype_colors(8))
    np.testing.assert_array_equal(prototype_colors(8), prototype_colors(9)[:8])
    for m in (9, 18):  # no grey (equal r, g, b) in the qualitative palettes
        rgb = prototype_colors(m)[:, :3]
        assert (rgb.max(1) - rgb.min(1) > 0.05).all()
