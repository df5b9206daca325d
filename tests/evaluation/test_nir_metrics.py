"""The NIR paper's NMI and mAP@K against hand-computed cases and brute-force recomputations."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gspdml.errors import InputError
from gspdml.evaluation import map_at_k, nmi_score
from gspdml.evaluation.metrics import compute_retrieval_metrics, kmeans_assign


def _brute_map_at_k(q, ql, ref=None, rl=None, k=1000):
    """mAP@K by loops: sort all distances (float64), drop self, AP@K = sum_{hits} precision@i / n_c."""
    q = np.asarray(q, dtype=np.float64)
    ql = np.asarray(ql)
    self_mode = ref is None
    ref = q if self_mode else np.asarray(ref, dtype=np.float64)
    rl = ql if self_mode else np.asarray(rl)
    aps = []
    for i in range(len(q)):
        d = ((ref - q[i]) ** 2).sum(1)
        order = [j for j in np.argsort(d, kind="stable") if not (self_mode and j == i)][:k]
        n_c = int((rl == ql[i]).sum())  # self included in self-retrieval (the authors' freq)
        if n_c == 0:
            continue
        hits, ap = 0, 0.0
        for rank, j in enumerate(order, 1):
            if rl[j] == ql[i]:
                hits += 1
                ap += hits / rank
        aps.append(ap / n_c)
    return float(np.mean(aps))


def _entropy(counts):
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def _brute_nmi(labels, clusters):
    """I(Y; K) / mean(H(Y), H(K)) from the contingency table."""
    labels, clusters = np.asarray(labels), np.asarray(clusters)
    ys, ks = np.unique(labels), np.unique(clusters)
    table = np.array([[np.sum((labels == y) & (clusters == c)) for c in ks] for y in ys], dtype=np.float64)
    n = table.sum()
    mi = 0.0
    for a in range(len(ys)):
        for b in range(len(ks)):
            if table[a, b] > 0:
                mi += table[a, b] / n * math.log(n * table[a, b] / (table[a].sum() * table[:, b].sum()))
    hy, hk = _entropy(table.sum(1)), _entropy(table.sum(0))
    return mi / ((hy + hk) / 2) if hy + hk > 0 else 1.0


def test_map_at_k_hand_computed():
    #   A: 0, 1, 4.2        B: 2.3, 5.0, 9.5       (n_c = 3 for every query: the query counts)
    # neighbour classes (self excluded) and AP@2 = (sum of precision@i at hits within 2) / 3:
    #   0   : A B ...  -> (1/1) / 3          1   : A B -> 1/3      4.2 : B B -> 0
    #   2.3 : A A -> 0                        5.0 : A B -> (1/2)/3  9.5 : B A -> 1/3
    x = torch.tensor([0.0, 1.0, 4.2, 2.3, 5.0, 9.5])[:, None]
    y = torch.tensor([0, 0, 0, 1, 1, 1])
    assert map_at_k(x, y, k=2) == pytest.approx((1 / 3 + 1 / 3 + 0 + 0 + 1 / 6 + 1 / 3) / 6)
    # K beyond the set: all 5 neighbours; q=0: A B A B B -> (1 + 2/3) / 3
    full = map_at_k(x, y, k=1000)
    assert full == pytest.approx(_brute_map_at_k(x, y, k=5))
    # a perfect ranking scores (n_c - 1) / n_c, as the authors' code does
    perfect = torch.tensor([0.0, 0.1, 0.2, 10.0, 10.1, 10.2])[:, None]
    assert map_at_k(perfect, y) == pytest.approx(2 / 3)


@pytest.mark.parametrize("k", [1, 3, 17, 1000])
def test_map_at_k_equals_brute_force_on_random_data(k):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(120, 6, generator=g)
    y = torch.randint(0, 9, (120,), generator=g)
    y[0] = 50  # a query alone in its class: AP 0, counted
    assert map_at_k(x, y, k=k) == pytest.approx(_brute_map_at_k(x.numpy(), y.numpy(), k=k), abs=1e-9)
    # chunked search gives the same
    assert map_at_k(x, y, k=k, chunk_size=7) == pytest.approx(map_at_k(x, y, k=k), abs=1e-12)
    # query / gallery: n_c = gallery items of the class; queries without any are left out
    gal, gl = torch.randn(80, 6, generator=g), torch.randint(0, 8, (80,), generator=g)
    ref = _brute_map_at_k(x.numpy(), y.numpy(), gal.numpy(), gl.numpy(), k=k)
    assert map_at_k(x, y, gal, gl, k=k) == pytest.approx(ref, abs=1e-9)


def test_nmi_equals_the_contingency_formula_of_its_clustering():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(300, 5, generator=g)
    y = torch.randint(0, 6, (300,), generator=g)
    x[:, 0] += y.float()  # some structure
    clusters = kmeans_assign(x, 6)
    assert np.array_equal(clusters, kmeans_assign(x, 6))  # seeded: deterministic
    assert set(clusters.tolist()) <= set(range(6))
    assert nmi_score(x, y) == pytest.approx(_brute_nmi(y.numpy(), clusters), abs=1e-12)
    assert nmi_score(x, y, num_clusters=3) == pytest.approx(_brute_nmi(y.numpy(), kmeans_assign(x, 3)), abs=1e-12)


def test_nmi_hand_cases():
    # the formula itself: identical partitions -> 1, independent -> 0
    assert _brute_nmi([0, 0, 1, 1], [5, 5, 7, 7]) == pytest.approx(1.0)
    assert _brute_nmi([0, 0, 1, 1], [0, 1, 0, 1]) == pytest.approx(0.0)
    # the clustering is a k-means fixed point: every point is nearest to the mean of its own cluster
    # (the authors' faiss k-means starts from random points, no k-means++: well separated blobs are
    # not always all found, so NMI 1 is not asserted for them)
    centers = torch.tensor([[0.0, 0.0], [50.0, 0.0], [0.0, 50.0], [50.0, 50.0]])
    y = torch.arange(4).repeat_interleave(20)
    x = centers[y] + 0.5 * torch.randn(80, 2, generator=torch.Generator().manual_seed(0))
    clusters = torch.as_tensor(kmeans_assign(x, 4))
    means = torch.stack([x[clusters == c].mean(0) for c in clusters.unique()])
    nearest = torch.cdist(x, means).argmin(1)
    assert torch.equal(clusters.unique()[nearest], clusters)
    # k = N: every point is its own cluster; distinct labels give NMI 1
    assert nmi_score(x[:6], torch.arange(6), num_clusters=6) == pytest.approx(1.0)
    # one blob, two labels at random: close to 0
    yr = torch.randint(0, 2, (400,), generator=torch.Generator().manual_seed(1))
    assert nmi_score(torch.randn(400, 3, generator=torch.Generator().manual_seed(3)), yr) < 0.05


def test_extra_metrics_in_compute_retrieval_metrics():
    g = torch.Generator().manual_seed(7)
    x, y = torch.randn(90, 4, generator=g), torch.randint(0, 5, (90,), generator=g)
    m = compute_retrieval_metrics(x, y, recall_ks=(1,), extra_metrics=("nmi", "map_at_1000", "MAP_AT_5"))
    assert m["nmi"] == pytest.approx(nmi_score(x, y))
    assert m["map_at_1000"] == pytest.approx(_brute_map_at_k(x.numpy(), y.numpy(), k=1000), abs=1e-9)
    assert m["map_at_5"] == pytest.approx(_brute_map_at_k(x.numpy(), y.numpy(), k=5), abs=1e-9)
    assert set(m) == {"map_at_r", "r_precision", "precision_at_1", "recall_at_1", "nmi", "map_at_1000", "map_at_5"}
    plain = compute_retrieval_metrics(x, y, recall_ks=(1,))
    assert "nmi" not in plain and all(plain[k] == m[k] for k in plain)
    # with a gallery, NMI clusters query and gallery together
    mg = compute_retrieval_metrics(x[:50], y[:50], x[50:], y[50:], recall_ks=(1,), extra_metrics=("nmi",))
    assert mg["nmi"] == pytest.approx(nmi_score(x, y))


def test_nir_metric_errors():
    x, y = torch.randn(10, 3), torch.randint(0, 3, (10,))
    with pytest.raises(InputError, match="unknown extra metric 'ndcg'; valid: nmi, map_at_<K>"):
        compute_retrieval_metrics(x, y, extra_metrics=("ndcg",))
    with pytest.raises(InputError, match="unknown extra metric 'map_at_0'"):
        compute_retrieval_metrics(x, y, extra_metrics=("map_at_0",))
    with pytest.raises(InputError, match="k must be a positive int"):
        map_at_k(x, y, k=0)
    with pytest.raises(InputError, match="num_clusters must lie in 1..10"):
        nmi_score(x, y, num_clusters=11)
    with pytest.raises(InputError, match="labels has 9 entries"):
        nmi_score(x, y[:9])
    with pytest.raises(InputError, match="give both reference and reference_labels"):
        map_at_k(x, y, x)
