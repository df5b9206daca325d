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


# ------------------------------------------------------------------ side-by-side overlays (item 8)
def _digits_sample():
    from gspdml.data import build_dataset

    return build_dataset("digits_collage", None, "test", grid=3, upsample=2, samples_per_class=1, seed=0)


def test_cell_rectangles_hand_computed():
    from gspdml.viz.weights import cell_rectangles

    mask = np.array([[False, True, False], [False, False, False], [True, False, False]])
    # 48x48 image, 16-pixel cells; pixel centres at integers, so cell edges at -0.5
    assert cell_rectangles(mask, (48, 48)) == [(15.5, -0.5, 16.0, 16.0), (-0.5, 31.5, 16.0, 16.0)]
    assert cell_rectangles(np.zeros((2, 2), bool), (8, 8)) == []
    with pytest.raises(InputError, match="not a multiple"):
        cell_rectangles(mask, (47, 48))
    with pytest.raises(InputError, match="bool"):
        cell_rectangles(mask.astype(int), (48, 48))


def test_weight_comparison_outlines_are_the_datasets_target_cells():
    from matplotlib.patches import Rectangle

    from gspdml.data.digits_collage import TARGET_DIGITS, load_digit_images
    from gspdml.viz.weights import weight_comparison_figure

    ds = _digits_sample()
    n = len(ds)
    rng = np.random.default_rng(1)
    maps = {"GAP": np.full((n, 12, 12), 1 / 144), "GSP": rng.random((n, 12, 12)), "GSP+L_ZS": rng.random((n, 12, 12))}
    fig = weight_comparison_figure(ds.images, maps, target_cells=ds.target_masks)
    axes = fig.axes[: 3 * n]  # the last axes is the colour bar
    digit_images, _ = load_digit_images()
    for row in range(3):
        for j in range(n):
            rects = [p for p in axes[row * n + j].patches if isinstance(p, Rectangle)]
            got = sorted((p.get_x(), p.get_y(), p.get_width(), p.get_height()) for p in rects)
            expected = sorted((c * 16 - 0.5, r * 16 - 0.5, 16.0, 16.0)
                              for r in range(3) for c in range(3) if ds.target_masks[j, r, c])
            assert len(got) == 2 and got == expected
            for x, y, w, h in got:  # the outlined pixels are a target digit's image, upsampled x2
                r, c = int(y + 0.5) // 16, int(x + 0.5) // 16
                assert ds.cell_digits[j, r, c] in TARGET_DIGITS
                tile = np.repeat(np.repeat(digit_images[ds.cell_image_ids[j, r, c]], 2, 0), 2, 1)
                np.testing.assert_array_equal(ds.images[j, int(y + 0.5):int(y + 0.5 + h), int(x + 0.5):int(x + 0.5 + w)],
                                              tile)
    # rows labelled by method, one shared colour bar
    assert [axes[i * n].get_ylabel() for i in range(3)] == ["GAP", "GSP", "GSP+L_ZS"]
    assert len(fig.axes) == 3 * n + 1


def test_plot_weight_comparison_writes_the_expected_size(tmp_path):
    from gspdml.viz.weights import plot_weight_comparison

    ds = _digits_sample()
    n = len(ds)
    rng = np.random.default_rng(2)
    maps = {m: rng.random((n, 12, 12)) for m in ("GAP", "GSP", "GSP+L_ZS")}
    path = plot_weight_comparison(ds.images, maps, tmp_path / "cmp.png", titles=[str(p) for p in ds.pairs],
                                  target_cells=ds.target_masks, panel_size=1.5, dpi=100)
    assert _is_png(path)
    with Image.open(path) as im:  # 1.5 in per panel + 1.4 in (labels, colour bar) x 0.3 in (margin)
        assert im.size == (round((1.5 * n + 1.4) * 100), round((1.5 * 3 + 0.3) * 100))
    path = plot_weight_comparison(ds.images, maps, tmp_path / "cmp_t.png", title="t", panel_size=1.5, dpi=100)
    with Image.open(path) as im:
        assert im.size == (round((1.5 * n + 1.4) * 100), round((1.5 * 3 + 0.6) * 100))


def test_weight_comparison_errors(tmp_path):
    from gspdml.viz.weights import plot_weight_comparison

    images = np.random.rand(2, 12, 12)
    with pytest.raises(InputError, match="non-empty mapping"):
        plot_weight_comparison(images, {}, tmp_path / "x.png")
    with pytest.raises(InputError, match="3 maps for 2 images"):
        plot_weight_comparison(images, {"A": np.random.rand(3, 3, 3)}, tmp_path / "x.png")
    with pytest.raises(InputError, match="target_cells"):
        plot_weight_comparison(images, {"A": np.random.rand(2, 3, 3)}, tmp_path / "x.png",
                               target_cells=np.zeros((3, 3, 3), bool))


def test_plot_weight_maps_outlines_target_cells(tmp_path):
    ds = _digits_sample()
    path = plot_weight_maps(ds.images, np.random.rand(len(ds), 12, 12), tmp_path / "w.png",
                            target_cells=ds.target_masks)
    assert _is_png(path)
