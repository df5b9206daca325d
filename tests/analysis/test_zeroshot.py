"""Tests of the zero-shot attribute evaluation (gspdml.analysis.zeroshot) on tiny constructed cases."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import rankdata
from sklearn.linear_model import Ridge

from gspdml.analysis.zeroshot import (
    class_means,
    collect_model_outputs,
    evaluate_model_zero_shot,
    evaluate_zero_shot,
    held_out_average_precision,
    random_class_splits,
    ridge_fit_batched,
    zero_shot_map,
)
from gspdml.errors import InputError


def test_class_means_by_hand():
    values = np.array([[1.0, 0.0], [3.0, 2.0], [10.0, 10.0], [0.0, 4.0]])
    labels = np.array([5, 5, 2, 5])
    classes, means = class_means(values, labels)
    assert classes.tolist() == [2, 5]
    np.testing.assert_allclose(means, [[10.0, 10.0], [4.0 / 3.0, 2.0]])


def test_average_precision_by_hand():
    # query 0 is closest to item 1 and then item 0 -> rank 2 -> AP 1/2; query 1 -> rank 1; query 2 -> rank 3
    true = np.array([[0.0, 0.0], [1.0, 0.0], [5.0, 0.0]])
    pred = np.array([[0.8, 0.0], [1.1, 0.0], [0.4, 0.0]])
    np.testing.assert_allclose(held_out_average_precision(pred, true, "l2"), [0.5, 1.0, 1.0 / 3.0])
    # cosine: directions only
    true_c = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.2]])
    pred_c = np.array([[0.1, 1.0], [0.2, 3.0], [-2.0, 0.0]])
    np.testing.assert_allclose(held_out_average_precision(pred_c, true_c, "cosine"), [0.5, 1.0, 1.0])
    # ties count against the query: identical predictions at equal distance to two items
    tied = held_out_average_precision(np.array([[0.5, 0.0], [0.5, 0.0]]), np.array([[0.0, 0.0], [1.0, 0.0]]), "l2")
    np.testing.assert_allclose(tied, [0.5, 0.5])
    with pytest.raises(InputError, match="unknown ranking metric"):
        held_out_average_precision(pred, true, "dot")


def test_batched_ridge_matches_sklearn():
    rng = np.random.default_rng(0)
    for n, m in [(6, 3), (3, 7)]:
        z, v = rng.random((n, m)), rng.normal(size=(n, 4))
        ref = Ridge(alpha=0.05, fit_intercept=False).fit(z, v).coef_.T
        np.testing.assert_allclose(ridge_fit_batched(z[None], v[None], 0.05)[0], ref, rtol=1e-8, atol=1e-10)


def test_separable_attributes_give_map_one():
    # 12 classes share 3 attributes and each class embedding is an exact linear image of its
    # attribute vector: any 6 fitting classes determine A, so every held-out class is predicted
    # exactly and ranks first under both metrics.
    rng = np.random.default_rng(1)
    m, classes = 3, 12
    class_z = rng.dirichlet(np.ones(m), size=classes)
    true_map = rng.normal(size=(m, 5))
    class_emb = class_z @ true_map
    result = zero_shot_map(class_z, class_emb, repeats=200, ridge=1e-9, seed=0)
    assert result.map_l2.shape == (200,) and result.map_cosine.shape == (200,)
    np.testing.assert_allclose(result.map_l2, 1.0)
    np.testing.assert_allclose(result.map_cosine, 1.0)
    assert result.summary()["map_l2_std"] == pytest.approx(0.0)
    assert result.num_held_out == 6 and result.chance == pytest.approx(sum(1 / r for r in range(1, 7)) / 6)


def test_uninformative_attributes_score_near_chance_and_values_in_unit_interval():
    rng = np.random.default_rng(2)
    class_z = np.full((10, 4), 0.25) + 1e-3 * rng.random((10, 4))  # nearly identical attributes
    class_emb = rng.normal(size=(10, 8))
    result = zero_shot_map(class_z, class_emb, repeats=1000, seed=3)
    for values in (result.map_l2, result.map_cosine):
        assert np.all((values > 0) & (values <= 1))
        assert abs(values.mean() - result.chance) < 0.05


def test_zero_shot_map_equals_naive_loop():
    rng = np.random.default_rng(4)
    class_z = rng.dirichlet(np.ones(5), size=9)
    class_emb = class_z @ rng.normal(size=(5, 6)) + 0.3 * rng.normal(size=(9, 6))
    repeats, ridge = 25, 0.05
    result = zero_shot_map(class_z, class_emb, repeats=repeats, ridge=ridge, seed=7)
    splits = random_class_splits(9, repeats, 7)
    for r in range(repeats):
        held, fit = splits[r, :4], splits[r, 4:]
        assert sorted(np.concatenate([held, fit]).tolist()) == list(range(9))
        model = Ridge(alpha=ridge, fit_intercept=False).fit(class_z[fit], class_emb[fit])
        pred = model.predict(class_z[held])
        true = class_emb[held]
        ap_l2, ap_cos = [], []
        for i in range(4):
            dist = np.linalg.norm(true - pred[i], axis=1)
            ap_l2.append(1.0 / rankdata(dist, method="max")[i])
            cos = true @ pred[i] / (np.linalg.norm(true, axis=1) * np.linalg.norm(pred[i]))
            ap_cos.append(1.0 / rankdata(-cos, method="max")[i])
        assert result.map_l2[r] == pytest.approx(np.mean(ap_l2))
        assert result.map_cosine[r] == pytest.approx(np.mean(ap_cos))


def test_repeats_are_seeded_and_vary():
    rng = np.random.default_rng(5)
    z, emb = rng.random((8, 4)), rng.normal(size=(8, 3))
    a = zero_shot_map(z, emb, repeats=50, seed=1)
    b = zero_shot_map(z, emb, repeats=50, seed=1)
    c = zero_shot_map(z, emb, repeats=50, seed=2)
    np.testing.assert_array_equal(a.map_l2, b.map_l2)
    assert not np.array_equal(a.map_l2, c.map_l2)
    assert a.map_l2.std() > 0


def test_sample_level_evaluation_uses_class_means():
    rng = np.random.default_rng(6)
    labels = np.repeat(np.arange(6), 5)
    z = rng.dirichlet(np.ones(4), size=30)
    emb = rng.normal(size=(30, 3))
    result = evaluate_zero_shot(z, emb, labels, repeats=40, seed=0)
    _, cz = class_means(z, labels)
    _, ce = class_means(emb, labels)
    ref = zero_shot_map(cz, ce, repeats=40, seed=0)
    np.testing.assert_allclose(result.map_l2, ref.map_l2)
    np.testing.assert_allclose(result.map_cosine, ref.map_cosine)
    table = result.format_table()
    assert "L2 distance" in table and "cosine similarity" in table and "6 classes" in table


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(class_z=np.random.rand(3, 2), class_embeddings=np.random.rand(3, 2)), "at least 4 classes"),
        (dict(class_z=np.random.rand(5, 2), class_embeddings=np.random.rand(4, 2)), "one row per class"),
        (dict(class_z=np.random.rand(5), class_embeddings=np.random.rand(5, 2)), "2-D array"),
        (dict(class_z=np.full((5, 2), np.nan), class_embeddings=np.random.rand(5, 2)), "NaN"),
        (dict(class_z=np.random.rand(5, 2), class_embeddings=np.random.rand(5, 2), repeats=0), "repeats"),
        (dict(class_z=np.random.rand(5, 2), class_embeddings=np.random.rand(5, 2), ridge=-1.0), "ridge"),
    ],
)
def test_errors(kwargs, match):
    with pytest.raises(InputError, match=match):
        zero_shot_map(**kwargs)


def test_sample_level_errors():
    with pytest.raises(InputError, match="labels must be a 1-D array of length 4"):
        evaluate_zero_shot(np.random.rand(4, 2), np.random.rand(4, 3), np.arange(5))
    with pytest.raises(InputError, match="labels must be integers"):
        evaluate_zero_shot(np.random.rand(4, 2), np.random.rand(4, 3), np.arange(4.0))
    with pytest.raises(InputError, match="same number of samples"):
        evaluate_zero_shot(np.random.rand(4, 2), np.random.rand(5, 3), np.arange(4))


# ----------------------------------------------------------------------------------- with a model
class _ToyPoolingModel(torch.nn.Module):
    """A tiny stand-in with the EmbeddingModel contract: forward(x, mask=None, return_details=False)."""

    def __init__(self, with_marginals: bool = True):
        super().__init__()
        self.proj = torch.nn.Linear(3, 4)
        self.with_marginals = with_marginals

    def forward(self, x, mask=None, return_details=False):
        emb = torch.nn.functional.normalize(self.proj(x), dim=1)
        if not return_details:
            return emb
        z = torch.softmax(self.proj(x), dim=1) if self.with_marginals else None
        return emb, {"weights": torch.ones(x.shape[0], 1), "marginals": z}


def test_model_evaluation_runs_and_returns_outputs():
    torch.manual_seed(0)
    x = torch.randn(40, 3)
    y = torch.arange(8).repeat_interleave(5)
    dataset = torch.utils.data.TensorDataset(x, y)
    model = _ToyPoolingModel()
    result, outputs = evaluate_model_zero_shot(model, dataset, repeats=30, batch_size=16, progress=False)
    assert outputs["marginals"].shape == (40, 4) and outputs["embeddings"].shape == (40, 4)
    np.testing.assert_array_equal(outputs["labels"], y.numpy())
    assert result.num_classes == 8 and result.repeats == 30
    assert np.all((result.map_l2 > 0) & (result.map_l2 <= 1))
    limited = collect_model_outputs(model, dataset, limit=7, progress=False)
    assert limited["marginals"].shape == (7, 4)
    with pytest.raises(InputError, match="no 'marginals'"):
        evaluate_model_zero_shot(_ToyPoolingModel(with_marginals=False), dataset, repeats=5, progress=False)
