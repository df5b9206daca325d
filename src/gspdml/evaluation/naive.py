"""Plain-torch brute-force retrieval metrics (no faiss, no PML): the benchmark baseline.

Same definitions as :func:`gspdml.evaluation.metrics.compute_retrieval_metrics` (squared L2
ranking, self-match excluded in self-retrieval, queries without a same-class reference left out),
computed by exhaustive similarity in query chunks and ``torch.topk``.
"""
from __future__ import annotations

import torch

from gspdml.errors import InputError

__all__ = ["naive_retrieval_metrics"]


@torch.no_grad()
def naive_retrieval_metrics(
    query: torch.Tensor,
    query_labels: torch.Tensor,
    reference: torch.Tensor | None = None,
    reference_labels: torch.Tensor | None = None,
    recall_ks=(1, 2, 4, 8),
    chunk_size: int = 2048,
) -> dict[str, float]:
    """MAP@R, R-Precision, P@1 and Recall@K by brute force (see the module docstring)."""
    query = torch.as_tensor(query, dtype=torch.float32)
    query_labels = torch.as_tensor(query_labels).long()
    self_mode = reference is None
    ref = query if self_mode else torch.as_tensor(reference, dtype=torch.float32)
    ref_labels = query_labels if self_mode else torch.as_tensor(reference_labels).long()
    if query.ndim != 2 or ref.ndim != 2 or query.shape[1] != ref.shape[1]:
        raise InputError(f"embeddings must be (N, D) with equal D, got {tuple(query.shape)} and {tuple(ref.shape)}")
    classes, ref_counts = torch.unique(ref_labels, return_counts=True)
    count_of = torch.zeros(int(max(query_labels.max(), ref_labels.max())) + 1, dtype=torch.long)
    count_of[classes] = ref_counts
    r_all = count_of[query_labels] - (1 if self_mode else 0)
    ks = tuple(int(k) for k in recall_ks)
    kmax = min(max(int(r_all.max()), max(ks, default=1), 1), len(ref) - (1 if self_mode else 0))
    ref_sq = (ref * ref).sum(1)
    sums = {"map_at_r": 0.0, "r_precision": 0.0, "precision_at_1": 0.0, **{f"recall_at_{k}": 0.0 for k in ks}}
    n_valid = 0
    for start in range(0, len(query), chunk_size):
        q = query[start:start + chunk_size]
        score = 2 * q @ ref.T - ref_sq[None, :]  # larger = closer (= -squared L2 + const per row)
        if self_mode:
            rows = torch.arange(len(q))
            score[rows, rows + start] = -float("inf")
        idx = score.topk(kmax, dim=1).indices
        hit = (ref_labels[idx] == query_labels[start:start + chunk_size, None]).double()
        r = r_all[start:start + chunk_size]
        valid = r > 0
        if not valid.any():
            continue
        hit, r = hit[valid], r[valid].double()
        pos = torch.arange(1, kmax + 1, dtype=torch.float64)
        within_r = pos[None, :] <= r[:, None]
        prec_at_i = hit.cumsum(1) / pos
        sums["map_at_r"] += ((prec_at_i * hit * within_r).sum(1) / r).sum().item()
        sums["r_precision"] += ((hit * within_r).sum(1) / r).sum().item()
        sums["precision_at_1"] += hit[:, 0].sum().item()
        for k in ks:
            sums[f"recall_at_{k}"] += (hit[:, :k].sum(1) > 0).double().sum().item()
        n_valid += int(valid.sum())
    if n_valid == 0:
        return {k: float("nan") for k in sums}
    return {k: v / n_valid for k, v in sums.items()}
