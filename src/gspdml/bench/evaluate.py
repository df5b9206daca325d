"""``gspdml bench eval``: retrieval-metric evaluation time and peak memory, side by side in one process.

Two cases on synthetic data shaped like Stanford Online Products (L2-normalised 128-D embeddings,
class sizes 2-10, each class a noisy cluster so the metrics are neither 0 nor 1):

- ``self``: 60,000 embeddings in ~11,000 classes, each retrieved against all others (MLRC, SOP);
- ``gallery``: a synthetic 1,000,000 x 128 gallery and a query subset (10,000 queries by
  default, held out of the gallery: In-shop style), so that it finishes in minutes on 2 cores.

Methods (same data, same process, checked to give the same numbers as ours):

- ``ours``: :func:`gspdml.evaluation.compute_retrieval_metrics` with the default ``knn="auto"``;
- ``ours_torch`` / ``ours_faiss``: the same with the chunked torch or faiss-cpu kNN forced (the
  measurement behind ``auto``'s CPU choice);
- ``ours_memmap``: ours with the gallery in a memory-mapped ``.npy`` file, searched in chunks;
- ``pml``: pytorch-metric-learning's stock ``AccuracyCalculator`` (``k="max_bin_count"``, its
  default faiss kNN); a method that fails (PML stock's label-match table needs classes x gallery
  entries: ~78 GB at 1M) is reported with its error instead of a time;
- ``naive``: :func:`gspdml.evaluation.naive.naive_retrieval_metrics`, a plain torch brute force.

Time: median of ``repeats``, the methods interleaved repeat by repeat. Peak memory: the rise of the process's peak resident set (Linux
``VmHWM`` after resetting it through ``/proc/self/clear_refs``) over the resident set before the
method, i.e. what the method itself allocated (the inputs are already in memory); where the reset
is unavailable, ``resource.getrusage`` max RSS (process-wide, monotonic) is reported instead.
"""
from __future__ import annotations

import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

__all__ = ["synthetic_embeddings", "bench_eval", "bench_eval_case", "report", "METHODS"]

METHODS = ("ours", "ours_torch", "ours_faiss", "ours_memmap", "pml", "naive")
_DESCRIPTION = {
    "ours": "ours (default, knn=auto)",
    "ours_torch": "ours, chunked torch kNN",
    "ours_faiss": "ours, chunked faiss-cpu kNN",
    "ours_memmap": "ours, gallery memory-mapped",
    "pml": "PML stock AccuracyCalculator + faiss",
    "naive": "plain torch brute force",
}


def synthetic_embeddings(num: int = 60_000, dim: int = 128, num_classes: int = 11_000, noise: float = 1.5,
                         seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``num`` unit vectors in ``num_classes`` noisy clusters (class sizes 2..10, like SOP)."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(2, 11, size=num_classes)
    sizes = np.maximum(np.round(sizes * num / sizes.sum()).astype(int), 2)
    labels = np.repeat(np.arange(num_classes), sizes)
    if len(labels) > num:
        labels = labels[:num]
    elif len(labels) < num:
        labels = np.concatenate([labels, rng.integers(0, num_classes, num - len(labels))])
    g = torch.Generator().manual_seed(seed)
    centers = torch.nn.functional.normalize(torch.randn(num_classes, dim, generator=g), dim=1)
    x = centers[torch.from_numpy(labels)] + noise * torch.randn(num, dim, generator=g) / dim ** 0.5
    return torch.nn.functional.normalize(x, dim=1), torch.from_numpy(labels).long()


def _rss_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _measure(fn):
    """``(seconds, peak MiB above the start, how, result)`` of one call of ``fn``."""
    import gc

    gc.collect()
    reset = False
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        reset = _rss_kib("VmHWM") is not None
    except OSError:
        pass
    before = _rss_kib("VmRSS") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t0
    if reset:
        peak = (_rss_kib("VmHWM") - before) / 1024
        return seconds, peak, "VmHWM - VmRSS before", out
    peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    return seconds, peak, "ru_maxrss rise (process-wide)", out


def _pml_stock(q, ql, ref, rl):
    import logging

    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    calc = AccuracyCalculator(include=("mean_average_precision_at_r", "r_precision", "precision_at_1"),
                              k="max_bin_count", device=torch.device("cpu"))
    pml_logger = logging.getLogger("PML")
    level = pml_logger.level
    pml_logger.setLevel(logging.ERROR)
    try:
        if ref is None:
            raw = calc.get_accuracy(q, ql)
        else:
            raw = calc.get_accuracy(q, ql, ref, rl, ref_includes_query=False)
    finally:
        pml_logger.setLevel(level)
    return {"map_at_r": raw["mean_average_precision_at_r"], "r_precision": raw["r_precision"],
            "precision_at_1": raw["precision_at_1"]}


def _runner(method: str, q, ql, ref, rl, folder: Path | None):
    from gspdml.evaluation.metrics import compute_retrieval_metrics
    from gspdml.evaluation.naive import naive_retrieval_metrics

    if method == "ours":
        return lambda: compute_retrieval_metrics(q, ql, ref, rl)
    if method in ("ours_torch", "ours_faiss"):
        return lambda: compute_retrieval_metrics(q, ql, ref, rl, knn=method[5:])
    if method == "ours_memmap":
        path = folder / "gallery.npy"
        np.save(path, (q if ref is None else ref).numpy())
        mm = np.load(path, mmap_mode="r")
        if ref is None:
            return lambda: compute_retrieval_metrics(mm, ql, chunk_size=65_536)
        return lambda: compute_retrieval_metrics(q, ql, mm, rl, chunk_size=65_536)
    if method == "pml":
        return lambda: _pml_stock(q, ql, ref, rl)
    if method == "naive":
        n_ref = len(q) if ref is None else len(ref)
        chunk = max(1, min(2048, (1 << 26) // n_ref))  # score blocks of at most 256 MiB
        return lambda: naive_retrieval_metrics(q, ql, ref, rl, chunk_size=chunk)
    from gspdml.errors import InputError

    raise InputError(f"unknown bench eval method {method!r}; valid: {', '.join(METHODS)}")


def bench_eval_case(q, ql, ref=None, rl=None, methods=METHODS, repeats: int = 1, name: str = "self") -> dict:
    """Time and measure every method on one query set (and gallery); return a result dict."""
    from gspdml.evaluation.knn import resolve_backend

    repeats = max(int(repeats), 1)
    runs: dict[str, list] = {m: [] for m in methods}
    with tempfile.TemporaryDirectory(prefix="gspdml_bench_eval_") as folder:
        fns = {m: _runner(m, q, ql, ref, rl, Path(folder)) for m in methods}
        failed: dict[str, str] = {}
        for _ in range(repeats):  # interleaved repeat by repeat: ratios hold on a busy machine
            for method in methods:
                if method in failed:
                    continue
                try:
                    runs[method].append(_measure(fns[method]))
                except (MemoryError, RuntimeError) as exc:  # e.g. PML stock's label table at 1M
                    failed[method] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
        del fns
    rows, reference = [], None
    for method in methods:
        if method in failed:
            rows.append({"method": method, "description": _DESCRIPTION[method], "error": failed[method]})
            continue
        seconds = float(np.median([r[0] for r in runs[method]]))
        peak, how, metrics = max(r[1] for r in runs[method]), runs[method][0][2], runs[method][0][3]
        if reference is None:
            reference = metrics
        diff = max(abs(metrics[k] - reference[k]) for k in metrics if k in reference)
        rows.append({"method": method, "description": _DESCRIPTION[method], "seconds": seconds,
                     "all_seconds": [r[0] for r in runs[method]], "peak_mib": peak, "peak_how": how,
                     "max_abs_difference": diff, "map_at_r": metrics["map_at_r"],
                     "precision_at_1": metrics["precision_at_1"]})
    fastest_other = min((r["seconds"] for r in rows if r["method"] in ("pml", "naive") and "error" not in r),
                        default=None)
    ours = next((r["seconds"] for r in rows if r["method"] == "ours" and "error" not in r), None)
    labels = ql if rl is None else rl
    return {
        "case": name, "num_queries": int(len(q)), "num_reference": int(len(q) if ref is None else len(ref)),
        "dim": int(q.shape[1]), "num_classes": int(len(torch.unique(labels))),
        "max_class_size": int(torch.bincount(labels).max()), "threads": torch.get_num_threads(),
        "auto_backend": "{} on {}".format(*resolve_backend("auto")), "rows": rows, "metrics": reference,
        "ours_vs_fastest_baseline": None if ours is None or fastest_other is None else fastest_other / ours,
    }


def bench_eval(num: int = 60_000, dim: int = 128, num_classes: int = 11_000, repeats: int = 1, seed: int = 0,
               gallery: int | None = 1_000_000, gallery_queries: int = 10_000, methods=METHODS,
               gallery_methods=("ours", "ours_memmap", "pml", "naive")) -> dict:
    """The ``self`` case (``num`` embeddings) and, unless ``gallery`` is None, the ``gallery`` case
    (``gallery_queries`` held-out queries against ``gallery`` embeddings, same class-size law)."""
    from gspdml.errors import InputError
    from gspdml.evaluation.metrics import compute_retrieval_metrics

    if num < 4 or num_classes < 2 or num_classes * 2 > num:
        raise InputError(f"need at least 2 samples per class: {num} embeddings, {num_classes} classes")
    bad = [m for m in (*methods, *gallery_methods) if m not in METHODS]
    if bad:
        raise InputError(f"unknown bench eval method(s) {bad}; valid: {', '.join(METHODS)}")
    wx, wy = synthetic_embeddings(600, dim, 100, seed=seed + 1)  # warm-up: imports, faiss/BLAS init
    compute_retrieval_metrics(wx, wy)
    x, y = synthetic_embeddings(num, dim, num_classes, seed=seed)
    cases = [bench_eval_case(x, y, methods=methods, repeats=repeats, name="self")]
    del x, y
    if gallery is not None:
        if gallery_queries < 1 or gallery < 2 * gallery_queries:
            raise InputError(f"the gallery case needs 1 <= queries <= gallery/2, got {gallery_queries} and {gallery}")
        total = gallery + gallery_queries
        classes = max(2, round(num_classes * total / num))  # the same class sizes as the self case
        x, y = synthetic_embeddings(total, dim, classes, seed=seed + 2)
        pick = torch.zeros(total, dtype=torch.bool)
        pick[torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:gallery_queries]] = True
        q, ql, g, gl = x[pick].contiguous(), y[pick], x[~pick].contiguous(), y[~pick]
        del x, y
        cases.append(bench_eval_case(q, ql, g, gl, methods=gallery_methods, repeats=repeats, name="gallery"))
    return {"cases": cases}


def report(res: dict) -> str:
    """The printed summary of :func:`bench_eval`'s result."""
    from gspdml.io import format_table

    out = []
    for case in res["cases"]:
        what = ("self-retrieval" if case["case"] == "self"
                else f"{case['num_queries']:,} held-out queries against a gallery of")
        out.append(f"{case['case']}: {what} {case['num_reference']:,} x {case['dim']} embeddings, "
                   f"{case['num_classes']:,} classes (max class size {case['max_class_size']}), "
                   f"{case['threads']} threads; knn=auto chose {case['auto_backend']}")
        out.append(format_table(
            ["method", "seconds", "peak MiB", "MAP@R", "P@1", "max |diff| vs first"],
            [[r["description"], "failed", "-", "-", "-", r["error"][:90]] if "error" in r else
             [r["description"], f"{r['seconds']:.2f}", f"{r['peak_mib']:.0f}", f"{r['map_at_r']:.4f}",
              f"{r['precision_at_1']:.4f}", f"{r['max_abs_difference']:.1e}"] for r in case["rows"]],
            markdown=True))
        if case["ours_vs_fastest_baseline"] is not None:
            out.append(f"ours vs the fastest of PML stock / plain torch: {case['ours_vs_fastest_baseline']:.2f}x")
        how = next((r["peak_how"] for r in case["rows"] if "peak_how" in r), None)
        out.append(f"(peak memory: {how})" if how else "")
    return "\n".join(out)
