"""Retrieval metrics: MAP@R, R-Precision, P@1 (MLRC), Recall@K (conventional), and the NIR paper's
NMI and mAP@1000.

Computed with pytorch-metric-learning's :class:`AccuracyCalculator` and the exact chunked kNN
search of :mod:`gspdml.evaluation.knn` (L2 distance, which ranks like cosine similarity on
L2-normalised embeddings; backend chosen automatically: faiss GPU, torch on CUDA, or the faster of
torch and faiss-cpu on the CPU). The number of
neighbours is the largest class size ("max_bin_count", as MLRC prescribes) or the largest K of
Recall@K, whichever is larger, so MAP@R and R-Precision are exact.

Definitions, for a query q whose class has R other members in the reference set and its
neighbours sorted by distance:

- ``precision_at_1``: is the first neighbour of the same class;
- ``r_precision``: fraction of the first R neighbours of the same class;
- ``map_at_r``: (1/R) sum_{i <= R, neighbour i correct} precision@i (MLRC's MAP@R);
- ``recall_at_k``: is any of the first k neighbours of the same class.

Each is averaged over queries. With ``reference=None`` the query set is retrieved against itself
and every query's own entry is excluded. Queries with no other member of their class in the
reference set are left out of the averages (they have no correct answer).

Two more metrics, as the NIR paper reports them (its code: the ``metrics/`` of Roth et al.'s DML
codebase, on which the NIR code is built), computed by :func:`nmi_score` and :func:`map_at_k` or
requested from :func:`compute_retrieval_metrics` with ``extra_metrics=("nmi", "map_at_1000")``:

- ``nmi``: normalised mutual information (arithmetic mean of the entropies) between the labels and
  a k-means clustering of the embeddings, k = the number of classes (faiss k-means as the authors':
  20 iterations, at least one point per centroid, fixed seed; each point assigned to its nearest
  centroid). With a gallery, query and gallery embeddings are clustered together.
- ``map_at_<K>`` (K = 1000 in the paper): for a query q of class c with its first K neighbours (self
  excluded), ``AP@K(q) = (1/n_c) sum_{i <= K, neighbour i of class c} precision@i`` and the mean over
  all queries. ``n_c`` is the size of class c in the evaluated set, *the query itself included*
  (the authors' ``freq``), so a perfect ranking scores ``(n_c - 1) / n_c``, not 1; a query alone in
  its class scores 0 and counts. With a gallery, ``n_c`` is the number of gallery items of class c
  (queries without any are left out). Unlike MAP@R the cut-off is fixed (K) rather than R.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch

from gspdml.errors import InputError

__all__ = [
    "compute_retrieval_metrics",
    "METRIC_NAMES",
    "EXTRA_METRICS",
    "RetrievalCalculator",
    "nmi_score",
    "kmeans_assign",
    "map_at_k",
]

METRIC_NAMES = ("map_at_r", "r_precision", "precision_at_1")
#: The optional metrics of :func:`compute_retrieval_metrics` (``map_at_<K>`` takes any K >= 1).
EXTRA_METRICS = ("nmi", "map_at_<K>")
_PML_NAMES = {
    "mean_average_precision_at_r": "map_at_r",
    "r_precision": "r_precision",
    "precision_at_1": "precision_at_1",
}


def _r_per_query(query_labels: torch.Tensor, label_counts, ref_includes_query: bool) -> torch.Tensor:
    """R of each query: same-class references (minus the query itself in self-retrieval)."""
    uniq, counts = label_counts
    pos = torch.searchsorted(uniq, query_labels).clamp(max=len(uniq) - 1)
    return counts[pos] - int(ref_includes_query)


def _calculator_class():
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    def not_lone(knn_labels, query_labels, not_lone_query_mask):
        if not bool(not_lone_query_mask.any()):
            return None, None
        return knn_labels[not_lone_query_mask], query_labels[not_lone_query_mask]

    class _RetrievalCalculator(AccuracyCalculator):
        """PML's AccuracyCalculator with Recall@K, k = max(max class size, max K), and vectorised
        label bookkeeping.

        PML compares every distinct label with every reference label and builds the MAP@R / R-Precision
        relevance masks one class at a time, which dominates the run time with ~10^4 classes (SOP,
        In-shop). Here the per-query class sizes come from one ``torch.unique`` + ``searchsorted`` and
        the masks from one comparison with ``arange(k)``; the formulas are PML's (tested against PML's
        own calculator and a brute-force reference).
        """

        def __init__(self, recall_ks: Sequence[int] = (1, 2, 4, 8), **kwargs):
            self.recall_ks = tuple(int(k) for k in recall_ks)
            super().__init__(**kwargs)

        def requires_knn(self):
            return super().requires_knn() + ["recall_at_k"]

        # -- metrics ----------------------------------------------------------------------
        def calculate_precision_at_1(self, knn_labels, query_labels, not_lone_query_mask, **kwargs):
            knn_labels, query_labels = not_lone(knn_labels, query_labels, not_lone_query_mask)
            if knn_labels is None:
                return float("nan")
            return (knn_labels[:, 0] == query_labels).double().mean().item()

        def _hits_within_r(self, knn_labels, query_labels, not_lone_query_mask, ref_includes_query, label_counts):
            knn_labels, query_labels = not_lone(knn_labels, query_labels, not_lone_query_mask)
            if knn_labels is None:
                return None, None
            r = _r_per_query(query_labels, label_counts, ref_includes_query)
            k = knn_labels.shape[1]
            within_r = torch.arange(k, device=r.device)[None, :] < r[:, None]
            return (knn_labels == query_labels[:, None]) & within_r, r

        def calculate_mean_average_precision_at_r(self, knn_labels, query_labels, not_lone_query_mask,
                                                  ref_includes_query, label_counts, **kwargs):
            hits, r = self._hits_within_r(knn_labels, query_labels, not_lone_query_mask, ref_includes_query,
                                          label_counts)
            if hits is None:
                return float("nan")
            pos = torch.arange(1, hits.shape[1] + 1, device=hits.device, dtype=torch.float64)
            precision_at_i = hits.cumsum(1).double() / pos
            return ((precision_at_i * hits).sum(1) / r.double()).mean().item()

        def calculate_r_precision(self, knn_labels, query_labels, not_lone_query_mask, ref_includes_query,
                                  label_counts, **kwargs):
            hits, r = self._hits_within_r(knn_labels, query_labels, not_lone_query_mask, ref_includes_query,
                                          label_counts)
            if hits is None:
                return float("nan")
            return (hits.sum(1).double() / r.double()).mean().item()

        def calculate_recall_at_k(self, knn_labels, query_labels, not_lone_query_mask, **kwargs):
            knn_labels, query_labels = not_lone(knn_labels, query_labels, not_lone_query_mask)
            if knn_labels is None:
                return {k: float("nan") for k in self.recall_ks}
            same = knn_labels == query_labels[:, None]
            return {k: same[:, :k].any(dim=1).double().mean().item() for k in self.recall_ks}

        # -- bookkeeping --------------------------------------------------------------------
        def determine_k(self, bin_counts, num_reference_embeddings, ref_includes_query):
            self_count = int(ref_includes_query)
            max_bin = int(torch.max(bin_counts).item()) - self_count
            k = max(max_bin, max(self.recall_ks) if self.recall_ks else 1, 1)
            return min(k, num_reference_embeddings - self_count)

        def get_accuracy(self, query, query_labels, reference=None, reference_labels=None,
                         ref_includes_query=False, include=(), exclude=()):
            # query / reference: tensors or (memory-mapped) arrays; only the kNN search reads them,
            # in chunks (gspdml.evaluation.knn), so they are never copied whole.
            if reference is None:
                reference, reference_labels, ref_includes_query = query, query_labels, True
            query_labels = torch.as_tensor(query_labels).long().to(self.device)
            reference_labels = torch.as_tensor(reference_labels).long().to(self.device)
            self.curr_function_dict = self.get_function_dict(include, exclude)
            ref_uniq, ref_counts = torch.unique(reference_labels, return_counts=True)
            q_uniq = torch.unique(query_labels)
            pos = torch.searchsorted(ref_uniq, q_uniq).clamp(max=len(ref_uniq) - 1)
            match = torch.where(ref_uniq[pos] == q_uniq, ref_counts[pos], torch.zeros_like(ref_counts[pos]))
            label_counts = (q_uniq, match)
            lone = q_uniq[match - int(ref_includes_query) <= 0]
            not_lone_query_mask = ~torch.isin(query_labels, lone)
            num_k = self.determine_k(match, len(reference), ref_includes_query)
            knn_distances, knn_indices = self.knn_func(query, num_k, reference, ref_includes_query)
            knn_distances, knn_indices = knn_distances.to(self.device), knn_indices.to(self.device)
            kwargs = {
                "query": query, "reference": reference, "query_labels": query_labels,
                "reference_labels": reference_labels, "ref_includes_query": ref_includes_query,
                "label_comparison_fn": self.label_comparison_fn, "label_counts": label_counts,
                "knn_labels": reference_labels[knn_indices], "knn_distances": knn_distances,
                "lone_query_labels": lone, "not_lone_query_mask": not_lone_query_mask,
            }
            return self._get_accuracy(self.curr_function_dict, **kwargs)

    return _RetrievalCalculator


def RetrievalCalculator(recall_ks: Sequence[int] = (1, 2, 4, 8), device: str | torch.device = "cpu", *,
                        knn: str = "auto", knn_device: str | torch.device | None = None,
                        query_chunk: int | None = None, gallery_chunk: int | None = None):
    """Build the PML calculator used by :func:`compute_retrieval_metrics`: exact kNN by
    :mod:`gspdml.evaluation.knn` (``knn``: ``auto``, ``torch``, ``faiss``, ``faiss-gpu``; chunk
    sizes as :func:`~gspdml.evaluation.knn.knn_search`), label bookkeeping on ``device``."""
    from gspdml.evaluation.knn import KNNFunc

    cls = _calculator_class()
    include = tuple(_PML_NAMES) + ("recall_at_k",)
    return cls(
        recall_ks=recall_ks,
        include=include,
        k="max_bin_count",
        device=torch.device(device),
        knn_func=KNNFunc(knn, knn_device, query_chunk=query_chunk, gallery_chunk=gallery_chunk),
    )


def _check_array(x, name: str, chunk: int = 65_536) -> np.ndarray:
    """Validate a (memory-mapped) numpy array of embeddings chunk by chunk, without copying it."""
    if x.ndim != 2:
        raise InputError(f"{name} must have shape (N, D), got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise InputError(f"{name} is empty (shape {tuple(x.shape)})")
    if not np.issubdtype(x.dtype, np.floating):
        raise InputError(f"{name} must hold floating-point embeddings, got dtype {x.dtype}")
    for start in range(0, x.shape[0], chunk):
        if not np.isfinite(x[start:start + chunk]).all():
            raise InputError(f"{name} contains NaN or infinite values")
    return x


def _as_embeddings(x, name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x if x.flags.writeable else np.array(x))  # read-only memmaps: a copy
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")
    if x.ndim != 2:
        raise InputError(f"{name} must have shape (N, D), got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise InputError(f"{name} is empty (shape {tuple(x.shape)})")
    x = x.detach().to("cpu", torch.float32)
    if not torch.isfinite(x).all():
        raise InputError(f"{name} contains NaN or infinite values")
    return x.contiguous()


def _as_labels(y, n: int, name: str) -> torch.Tensor:
    if isinstance(y, np.ndarray):
        y = torch.from_numpy(y)
    if not isinstance(y, torch.Tensor):
        y = torch.as_tensor(np.asarray(y))
    if y.ndim != 1:
        raise InputError(f"{name} must be a 1-D vector of class ids, got shape {tuple(y.shape)}")
    if len(y) != n:
        raise InputError(f"{name} has {len(y)} entries but there are {n} embeddings")
    if y.dtype.is_floating_point or y.dtype == torch.bool:
        raise InputError(f"{name} must hold integer class ids, got dtype {y.dtype}")
    return y.detach().to("cpu", torch.int64)


def kmeans_assign(embeddings, num_clusters: int, *, seed: int = 1234, niter: int = 20) -> np.ndarray:
    """Cluster ids (N,) of a faiss k-means of ``embeddings`` (N, D) into ``num_clusters`` clusters.

    The authors' settings: ``niter`` 20, at least 1 and at most 10^9 points per centroid, each
    point assigned to its nearest centroid (L2); ``seed`` 1234 is faiss's default, the one the
    authors' runs used. Deterministic for a given seed.
    """
    import faiss

    x = np.ascontiguousarray(_as_embeddings(embeddings, "embeddings").numpy(), dtype=np.float32)
    k = int(num_clusters)
    if not 1 <= k <= len(x):
        raise InputError(f"kmeans_assign: num_clusters must lie in 1..{len(x)} (the number of embeddings), got {num_clusters}")
    clustering = faiss.Clustering(x.shape[1], k)
    clustering.niter = int(niter)
    clustering.seed = int(seed)
    clustering.min_points_per_centroid = 1
    clustering.max_points_per_centroid = 1_000_000_000
    index = faiss.IndexFlatL2(x.shape[1])
    clustering.train(x, index)
    centroids = faiss.vector_float_to_array(clustering.centroids).reshape(k, x.shape[1])
    search = faiss.IndexFlatL2(x.shape[1])
    search.add(centroids)
    return search.search(x, 1)[1][:, 0].astype(np.int64)


def nmi_score(embeddings, labels, num_clusters: int | None = None, *, seed: int = 1234) -> float:
    """NMI between ``labels`` and a k-means clustering of ``embeddings`` (see the module docstring).

    ``num_clusters`` defaults to the number of distinct labels (the authors' code uses the number
    of *training* classes, which is the same for CUB and Cars196 and 2 more for SOP).
    """
    from sklearn.metrics import normalized_mutual_info_score

    x = _as_embeddings(embeddings, "embeddings")
    y = _as_labels(labels, len(x), "labels").numpy()
    k = len(np.unique(y)) if num_clusters is None else int(num_clusters)
    clusters = kmeans_assign(x, k, seed=seed)
    return float(normalized_mutual_info_score(y, clusters, average_method="arithmetic"))


def map_at_k(query, query_labels, reference=None, reference_labels=None, k: int = 1000, *,
             chunk_size: int = 4096) -> float:
    """The NIR paper's mAP@K (K = 1000 there) by exact faiss L2 search (``chunk_size`` queries at a
    time); see the module docstring."""
    import faiss

    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise InputError(f"map_at_k: k must be a positive int, got {k!r}")
    q = _as_embeddings(query, "query")
    ql = _as_labels(query_labels, len(q), "query_labels").numpy()
    if (reference is None) != (reference_labels is None):
        raise InputError("give both reference and reference_labels, or neither (self-retrieval)")
    self_mode = reference is None
    ref = q if self_mode else _as_embeddings(reference, "reference")
    rl = ql if self_mode else _as_labels(reference_labels, len(ref), "reference_labels").numpy()
    if ref.shape[1] != q.shape[1]:
        raise InputError(f"query and reference embeddings differ in dimension: {q.shape[1]} vs {ref.shape[1]}")
    if self_mode and len(q) < 2:
        raise InputError("self-retrieval needs at least 2 query embeddings")
    kk = min(int(k), len(ref) - int(self_mode))
    uniq, counts = np.unique(rl, return_counts=True)
    pos = np.clip(np.searchsorted(uniq, ql), 0, len(uniq) - 1)
    n_c = np.where(uniq[pos] == ql, counts[pos], 0)  # class size in the reference set (self included)
    if not (n_c > 0).any():
        return float("nan")
    index = faiss.IndexFlatL2(ref.shape[1])
    index.add(np.ascontiguousarray(ref.numpy()))
    queries = np.ascontiguousarray(q.numpy())
    ranks = np.arange(1, kk + 1)
    total, count = 0.0, 0
    for start in range(0, len(q), chunk_size):
        stop = min(start + chunk_size, len(q))
        neighbours = index.search(queries[start:stop], kk + int(self_mode))[1]
        if self_mode:  # drop each query's own entry (or, where ties hid it, the last neighbour)
            keep = neighbours != np.arange(start, stop)[:, None]
            keep[keep.all(axis=1), -1] = False
            neighbours = neighbours[keep].reshape(stop - start, kk)
        hits = rl[neighbours] == ql[start:stop, None]
        valid = n_c[start:stop] > 0
        ap = (np.cumsum(hits, axis=1) / ranks * hits).sum(axis=1)[valid] / n_c[start:stop][valid]
        total, count = total + float(ap.sum()), count + int(valid.sum())
    return total / count


def _parse_extra(names) -> list[tuple[str, int | None]]:
    out = []
    for name in names:
        key = str(name).strip().lower()
        if key == "nmi":
            out.append(("nmi", None))
            continue
        if key.startswith("map_at_") and key[7:].isdigit() and int(key[7:]) >= 1:
            out.append((f"map_at_{int(key[7:])}", int(key[7:])))
            continue
        raise InputError(f"unknown extra metric {name!r}; valid: nmi, map_at_<K> (e.g. map_at_1000)")
    return out


def compute_retrieval_metrics(
    query,
    query_labels,
    reference=None,
    reference_labels=None,
    recall_ks: Iterable[int] = (1, 2, 4, 8),
    extra_metrics: Iterable[str] = (),
    *,
    knn: str = "auto",
    knn_device: str | torch.device | None = None,
    chunk_size: int | None = None,
) -> dict[str, float]:
    """Retrieval metrics of ``query`` against ``reference`` (or against itself, self excluded).

    Args:
        query: (N, D) embeddings (tensor or array; L2-normalised embeddings rank like cosine).
        query_labels: (N,) integer class ids.
        reference, reference_labels: the gallery (e.g. In-shop); ``None`` retrieves the query set
            against itself with each query's own entry excluded (MLRC, CUB/Cars/SOP).
        recall_ks: the K of the ``recall_at_<k>`` entries.
        extra_metrics: any of ``"nmi"`` and ``"map_at_<K>"`` (e.g. ``"map_at_1000"``), the NIR
            paper's metrics (:func:`nmi_score`, :func:`map_at_k`), added under those names.
        knn: the exact kNN backend, ``auto`` (default), ``torch``, ``faiss``, ``faiss-gpu``
            (:mod:`gspdml.evaluation.knn`); ``knn_device``: the torch backend's device.
        chunk_size: rows per query chunk and per gallery chunk of the kNN search (default: blocks
            of ~256 MiB). A memory-mapped numpy array (``numpy.load(path, mmap_mode="r")``) as
            ``query``/``reference`` is then read chunk by chunk, never whole (extra metrics excepted).

    Returns:
        ``{"map_at_r", "r_precision", "precision_at_1", "recall_at_<k>"..., extras...}`` as floats in [0, 1].
    """
    ks = tuple(int(k) for k in recall_ks)
    if any(k < 1 for k in ks):
        raise InputError(f"recall_ks must be positive ints, got {ks}")
    extras = _parse_extra(extra_metrics)
    q = _check_array(query, "query") if isinstance(query, np.memmap) else _as_embeddings(query, "query")
    ql = _as_labels(query_labels, len(q), "query_labels")
    if (reference is None) != (reference_labels is None):
        raise InputError("give both reference and reference_labels, or neither (self-retrieval)")
    if reference is None:
        if len(q) < 2:
            raise InputError("self-retrieval needs at least 2 query embeddings")
        ref, rl = None, None
    else:
        ref = (_check_array(reference, "reference") if isinstance(reference, np.memmap)
               else _as_embeddings(reference, "reference"))
        rl = _as_labels(reference_labels, len(ref), "reference_labels")
        if ref.shape[1] != q.shape[1]:
            raise InputError(
                f"query and reference embeddings differ in dimension: {q.shape[1]} vs {ref.shape[1]}"
            )
    calc = RetrievalCalculator(recall_ks=ks, knn=knn, knn_device=knn_device, query_chunk=chunk_size,
                               gallery_chunk=chunk_size)
    import logging

    pml_logger = logging.getLogger("PML")
    level = pml_logger.level
    pml_logger.setLevel(logging.ERROR)  # PML warns when no query has a match; we return NaN
    try:
        raw = calc.get_accuracy(q, ql, ref, rl, ref_includes_query=False)
    finally:
        pml_logger.setLevel(level)
    out = {ours: float(raw[pml]) for pml, ours in _PML_NAMES.items()}
    for k, v in raw["recall_at_k"].items():
        out[f"recall_at_{k}"] = float(v)
    if extras and isinstance(q, np.memmap):  # the extra metrics need the embeddings in memory
        q = _as_embeddings(q, "query")
    if extras and isinstance(ref, np.memmap):
        ref = _as_embeddings(ref, "reference")
    for name, k in extras:
        if k is not None:
            out[name] = map_at_k(q, ql, ref, rl, k=k)
        elif ref is None:
            out[name] = nmi_score(q, ql)
        else:
            out[name] = nmi_score(torch.cat([q, ref]), torch.cat([ql, rl]))
    return out
