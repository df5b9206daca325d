"""Exact k-nearest-neighbour search for the retrieval metrics, in query chunks x gallery chunks.

Backends (all exact, squared-L2 ranking, which ranks like cosine similarity on L2-normalised
embeddings):

- ``torch``: per block ``2 q.r - |r|^2`` (one matmul) and ``torch.topk``, merged into a running
  top-k per query; on the GPU when ``device`` is CUDA, on the CPU otherwise.
- ``faiss``: faiss-cpu ``IndexFlatL2`` per gallery chunk, merged the same way.
- ``faiss-gpu``: a faiss GPU flat index (a GPU faiss build, ``pip install gspdml[gpu]``;
  ``faiss.get_num_gpus() > 0``), k <= 2048.
- ``auto`` (the default): ``faiss-gpu`` when available, else ``torch`` on CUDA when a GPU is
  there, else :data:`CPU_DEFAULT` -- the faster of chunked torch and faiss-cpu on the CPU, decided
  by measurement (docs/benchmarks.md, "Evaluation"). The choice is logged (logger ``gspdml``).

Query and gallery may be torch tensors or numpy arrays, memory-mapped ones included
(``numpy.memmap`` / ``numpy.load(..., mmap_mode="r")``): only one query chunk and one gallery chunk
are in memory at a time, so a gallery larger than RAM works.

Self-retrieval (``reference=None``): each query's own entry is excluded exactly (by index, before
the top-k), never another row. Ties: candidates of equal distance are ordered by the lower gallery
index when the running top-k is merged, so results do not depend on the chunk sizes except for
exactly tied distances at the k-th place inside one block (deterministic for a given input).
"""
from __future__ import annotations

import logging
import numpy as np
import torch

from gspdml.errors import InputError

__all__ = ["BACKENDS", "CPU_DEFAULT", "knn_search", "resolve_backend", "faiss_gpu_available", "KNNFunc",
           "default_chunks"]

BACKENDS = ("auto", "torch", "faiss", "faiss-gpu")
#: The CPU backend of ``auto``: chunked faiss-cpu (``IndexFlatL2``, 16,384-query chunks, the index
#: built once) measured 2x faster than chunked torch matmul + topk at 60,000 x 128 with 2 threads,
#: with a fraction of the memory (docs/benchmarks.md, "Evaluation").
CPU_DEFAULT = "faiss"
#: Elements of one query-chunk x gallery-chunk score block (64 Mi floats = 256 MiB in float32).
BLOCK_ELEMENTS = 1 << 26
_FAISS_GPU_MAX_K = 2048
_LOG = logging.getLogger("gspdml")
_GPU_RESOURCES = None


def faiss_gpu_available() -> bool:
    """Whether a GPU build of faiss is installed and sees at least one GPU."""
    try:
        import faiss
    except ImportError:
        return False
    get = getattr(faiss, "get_num_gpus", None)
    return bool(get is not None and get() > 0 and hasattr(faiss, "StandardGpuResources"))


def resolve_backend(backend: str = "auto", device: str | torch.device | None = None) -> tuple[str, torch.device]:
    """The concrete backend (``torch``, ``faiss`` or ``faiss-gpu``) and device for ``backend``.

    ``device`` (torch backend): ``None`` = CUDA when available (for ``auto`` and ``torch``), else CPU.
    """
    name = str(backend).strip().lower().replace("_", "-")
    if name not in BACKENDS:
        raise InputError(f"unknown kNN backend {backend!r}; valid: {', '.join(BACKENDS)}")
    dev = None if device is None else torch.device(device)
    if dev is not None and dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"kNN device {dev} requested but CUDA is not available")
    if name == "faiss-gpu":
        if not faiss_gpu_available():
            raise InputError("kNN backend 'faiss-gpu' needs a GPU build of faiss and a GPU "
                             "(pip install 'gspdml[gpu]'); faiss.get_num_gpus() found none")
        return name, dev or torch.device("cuda")
    if name == "faiss":
        return name, torch.device("cpu")
    if name == "auto":
        if (dev is None or dev.type == "cuda") and faiss_gpu_available():
            return "faiss-gpu", dev or torch.device("cuda")
        if dev is None:
            dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if dev.type == "cpu":
            return CPU_DEFAULT, dev
        return "torch", dev
    return "torch", dev or torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_chunks(num_query: int, num_reference: int, query_chunk: int | None = None,
                   gallery_chunk: int | None = None, backend: str = "torch") -> tuple[int, int]:
    """Chunk sizes: the gallery in chunks of at most 65,536 rows; the queries so that one torch
    score block holds about :data:`BLOCK_ELEMENTS` floats, or 16,384 rows for faiss (which blocks
    its distance computations internally and holds no full score block)."""
    for name, val in (("query_chunk", query_chunk), ("gallery_chunk", gallery_chunk)):
        if val is not None and (not isinstance(val, (int, np.integer)) or isinstance(val, bool) or val < 1):
            raise InputError(f"knn_search: {name} must be a positive int, got {val!r}")
    g = int(gallery_chunk) if gallery_chunk is not None else min(num_reference, 65_536)
    if query_chunk is not None:
        q = int(query_chunk)
    elif backend == "torch":
        q = max(64, BLOCK_ELEMENTS // max(min(g, num_reference), 1))
    else:
        q = 16_384
    return min(q, num_query), min(g, num_reference)


def _rows(x, start: int, stop: int, device: torch.device) -> torch.Tensor:
    """Rows ``start:stop`` of a tensor or (memory-mapped) array as a float32 tensor on ``device``."""
    block = x[start:stop]
    if not isinstance(block, torch.Tensor):
        block = torch.from_numpy(np.array(block, dtype=np.float32))  # a copy: memmaps are read-only
    return block.to(device=device, dtype=torch.float32, non_blocking=True).contiguous()


def _shape(x, name: str) -> tuple[int, int]:
    if not isinstance(x, (torch.Tensor, np.ndarray)):
        raise InputError(f"knn_search: {name} must be a torch.Tensor or numpy array, got {type(x).__name__}")
    if x.ndim != 2 or x.shape[0] == 0:
        raise InputError(f"knn_search: {name} must have shape (N, D) with N >= 1, got {tuple(x.shape)}")
    return int(x.shape[0]), int(x.shape[1])


def _merge(best_v, best_i, v, i, k: int):
    """Merge candidates (larger value = closer) into the running top-k; ties -> lower index."""
    if best_v is not None:
        v, i = torch.cat([best_v, v], 1), torch.cat([best_i, i], 1)
    order = i.argsort(dim=1)
    v, i = v.gather(1, order), i.gather(1, order)
    order = v.sort(dim=1, descending=True, stable=True).indices[:, :k]
    return v.gather(1, order), i.gather(1, order)


class _FaissSearcher:
    def __init__(self, dim: int, gpu: bool, device: torch.device):
        import faiss

        self.faiss, self.gpu = faiss, gpu
        if gpu:
            global _GPU_RESOURCES
            if _GPU_RESOURCES is None:
                _GPU_RESOURCES = faiss.StandardGpuResources()
            cfg = faiss.GpuIndexFlatConfig()
            cfg.device = device.index or 0
            self.index = faiss.GpuIndexFlatL2(_GPU_RESOURCES, dim, cfg)
        else:
            self.index = faiss.IndexFlatL2(dim)

    def search(self, gallery: torch.Tensor, queries: torch.Tensor, k: int, reuse: bool = False):
        if not (reuse and self.index.ntotal == len(gallery)):
            self.index.reset()
            self.index.add(np.ascontiguousarray(gallery.cpu().numpy()))
        d, i = self.index.search(np.ascontiguousarray(queries.cpu().numpy()), k)
        return torch.from_numpy(d), torch.from_numpy(i)


@torch.no_grad()
def knn_search(query, k: int, reference=None, *, backend: str = "auto", device: str | torch.device | None = None,
               query_chunk: int | None = None, gallery_chunk: int | None = None,
               log: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` nearest references of every query (squared L2, exact).

    Args:
        query: (Nq, D) tensor or (memory-mapped) numpy array.
        k: neighbours per query (at most the number of references, minus 1 in self-retrieval).
        reference: (Nr, D) gallery; ``None``: the queries against themselves, own entry excluded.
        backend: ``auto``, ``torch``, ``faiss``, ``faiss-gpu`` (module docstring).
        device: the torch backend's device (default: CUDA when available, else CPU).
        query_chunk, gallery_chunk: rows per chunk (default :func:`default_chunks`).
        log: log the backend chosen (logger ``gspdml``, level INFO).

    Returns:
        ``(distances, indices)``: (Nq, k) float32 squared L2 distances, ascending, and int64
        reference indices, on the CPU.
    """
    self_mode = reference is None
    nq, d = _shape(query, "query")
    ref = query if self_mode else reference
    nr, dr = _shape(ref, "reference")
    if dr != d:
        raise InputError(f"knn_search: query and reference dimensions differ: {d} vs {dr}")
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise InputError(f"knn_search: k must be a positive int, got {k!r}")
    limit = nr - int(self_mode)
    if k > limit:
        raise InputError(f"knn_search: k={k} exceeds the {limit} available references"
                         + (" (self-retrieval excludes each query)" if self_mode else ""))
    k = int(k)
    name, dev = resolve_backend(backend, device)
    if name == "faiss-gpu" and k + int(self_mode) > _FAISS_GPU_MAX_K:
        name = "torch"
        if log:
            _LOG.info("kNN: k=%d exceeds faiss GPU's limit of %d; using torch on %s", k, _FAISS_GPU_MAX_K, dev)
    qc, gc = default_chunks(nq, nr, query_chunk, gallery_chunk, name)
    if log:
        _LOG.info("kNN: backend %s%s (requested %s), %d queries x %d references, k=%d, chunks %d x %d",
                  name, f" on {dev}" if name == "torch" else "", backend, nq, nr, k, qc, gc)
    searcher = None if name == "torch" else _FaissSearcher(d, name == "faiss-gpu", dev)
    work = dev if name == "torch" else torch.device("cpu")
    out_d, out_i = [], []
    ref_sq_cache: dict[int, torch.Tensor] = {}
    single_gallery = gc >= nr
    gallery_block = _rows(ref, 0, nr, work) if single_gallery else None
    for qs in range(0, nq, qc):
        qe = min(qs + qc, nq)
        q = _rows(query, qs, qe, work)
        q_sq = (q * q).sum(1)
        best_v = best_i = None
        for gs in range(0, nr, gc):
            ge = min(gs + gc, nr)
            g = gallery_block if single_gallery else _rows(ref, gs, ge, work)
            overlap = self_mode and gs < qe and qs < ge
            if searcher is None:
                r_sq = ref_sq_cache.get(gs) if single_gallery else None
                if r_sq is None:
                    r_sq = (g * g).sum(1)
                    if single_gallery:
                        ref_sq_cache[gs] = r_sq
                score = torch.addmm(r_sq[None, :], q, g.T, beta=-1.0, alpha=2.0)  # 2 q.r - |r|^2
                if overlap:
                    rows = torch.arange(max(qs, gs), min(qe, ge), device=work)
                    score[rows - qs, rows - gs] = -float("inf")
                kk = min(k, ge - gs)
                v, i = score.topk(kk, dim=1)
                i = i + gs
            else:
                kk = min(k + int(overlap), ge - gs)
                dist, i = searcher.search(g, q, kk, reuse=single_gallery)
                v, i = -dist, i + gs
                if overlap:
                    v = torch.where(i == torch.arange(qs, qe)[:, None], torch.full_like(v, -float("inf")), v)
                i = torch.where(i < gs, torch.full_like(i, nr), i)  # faiss pads with -1 when short
            best_v, best_i = _merge(best_v, best_i, v, i, k)
        if searcher is None:
            dist = (q_sq[:, None] - best_v).clamp_min(0)
        else:
            dist = -best_v
        out_d.append(dist.float().cpu())
        out_i.append(best_i.cpu())
    return torch.cat(out_d), torch.cat(out_i).long()


class KNNFunc:
    """A pytorch-metric-learning ``knn_func`` (``(query, k, reference, ref_includes_query) ->
    (distances, indices)``) backed by :func:`knn_search`; ``ref_includes_query`` means
    self-retrieval (the query's own entry is excluded)."""

    def __init__(self, backend: str = "auto", device: str | torch.device | None = None,
                 query_chunk: int | None = None, gallery_chunk: int | None = None):
        resolve_backend(backend, device)  # validate early
        self.backend, self.device = backend, device
        self.query_chunk, self.gallery_chunk = query_chunk, gallery_chunk

    def __call__(self, query, k, reference=None, ref_includes_query=False):
        ref = None if ref_includes_query else reference
        return knn_search(query, int(k), ref, backend=self.backend, device=self.device,
                          query_chunk=self.query_chunk, gallery_chunk=self.gallery_chunk)

