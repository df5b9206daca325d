"""``gspdml bench gsp``: speed of the GSP layer against GAP, the cost floor and the paper's solver.

Every method is timed forward + backward in the same run, interleaved repeat by repeat (so load
from other processes hits all of them alike), and the median is reported:

- ``gap``: global average pooling.
- ``floor``: what any GSP implementation must compute: the normalised L2 cost matrix (the same
  cost code GSP uses) and a weighted sum of the features, with weights derived from the cost
  (its mean over prototypes) so that the backward pass runs through the cost too.
- ``exact``: the GSP layer with the exact solver (cost + closed form + Newton root + weighted sum),
  with the prototype marginals z used in the loss (as with the zero-shot loss).
- ``fixed_point``: the same with the paper's Prop. 4.2 iteration (k = 100) and Prop. 4.3 backward.

It also measures the relative error of fixed_point(100) against the exact solver (weights and
gradients) on a clustered eps = 20 case, where the fixed point converges slowly.
"""
from __future__ import annotations

import ctypes
import os
import platform
import statistics
import time
from typing import Callable

import torch

from gspdml.errors import InputError
from gspdml.io import format_table
from gspdml.pooling.transport import COST_BOUND, cost_points_by_prototypes, solve_points_first, weighted_sum

SHAPES = [(32, 64, 49, 128), (32, 128, 49, 512), (32, 128, 196, 512), (64, 64, 784, 128)]
METHODS = ("gap", "floor", "exact", "fixed_point")
MU, EPS, ITERS = 0.3, 5.0, 100


def tune_glibc_malloc() -> bool:
    """Keep large freed blocks in the heap instead of returning them to the OS.

    With glibc's defaults every multi-megabyte temporary is mmap-ed and unmapped again, so each
    step page-faults its memory back in, and how often depends on the order of allocations rather
    than on the method measured (the effect tcmalloc/jemalloc remove). Returns whether it applied.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        ok = libc.mallopt(m_mmap_threshold, 32 * 1024 * 1024) == 1
        return bool(ok and libc.mallopt(m_trim_threshold, 1 << 30) == 1)
    except (OSError, AttributeError):
        return False


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gsp_pool(feats: torch.Tensor, protos: torch.Tensor, solver: str):
    """What ``GSP.forward`` computes (without input validation): pooled (B, D) and z (B, m)."""
    cost_nm = cost_points_by_prototypes(feats, protos)
    weights, _, marginals, _ = solve_points_first(cost_nm, MU, EPS, solver=solver, iters=ITERS,
                                                  with_plan=False, cost_bound=COST_BOUND)
    return weighted_sum(feats, weights), marginals


def floor_pool(feats: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
    """The cost floor: the same cost code, weights = mean cost over prototypes, weighted sum."""
    cost_nm = cost_points_by_prototypes(feats, protos)
    return weighted_sum(feats, cost_nm.mean(-1))


def _steps(B: int, m: int, n: int, D: int, device, gen) -> dict[str, Callable[[], None]]:
    feats = torch.randn(B, n, D, generator=gen).to(device).requires_grad_()
    protos = torch.nn.functional.normalize(torch.randn(m, D, generator=gen), dim=1).to(device).requires_grad_()
    g_out = torch.randn(B, D, generator=gen).to(device)
    g_z = torch.randn(B, m, generator=gen).to(device)

    def gap():
        (feats.mean(1) * g_out).sum().backward()

    def floor():
        (floor_pool(feats, protos) * g_out).sum().backward()

    def make(solver):
        def step():
            pooled, z = gsp_pool(feats, protos, solver)
            ((pooled * g_out).sum() + (z * g_z).sum()).backward()
        return step

    def clear():
        feats.grad = None
        protos.grad = None

    steps = {"gap": gap, "floor": floor, "exact": make("exact"), "fixed_point": make("fixed_point")}
    return {k: (lambda f=f: (clear(), f())) for k, f in steps.items()}


def time_shape(shape, device, repeats: int, gen) -> dict:
    """Median wall-clock and CPU milliseconds of forward + backward for every method."""
    steps = _steps(*shape, device, gen)
    for step in steps.values():  # warm-up (allocator, kernels)
        step()
    wall = {k: [] for k in steps}
    cpu = {k: [] for k in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            _sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            step()
            _sync(device)
            wall[name].append((time.perf_counter() - t0) * 1e3)
            cpu[name].append((time.process_time() - c0) * 1e3)
    B, m, n, D = shape
    row = {"B": B, "m": m, "n": n, "D": D}
    for name in steps:
        row[f"{name}_ms"] = statistics.median(wall[name])
        row[f"{name}_cpu_ms"] = statistics.median(cpu[name])
    row["exact_over_floor"] = row["exact_ms"] / row["floor_ms"]
    row["fixed_over_exact"] = row["fixed_point_ms"] / row["exact_ms"]
    row["exact_over_floor_cpu"] = row["exact_cpu_ms"] / row["floor_cpu_ms"]
    row["fixed_over_exact_cpu"] = row["fixed_point_cpu_ms"] / row["exact_cpu_ms"]
    return row


def clustered_case(B=8, m=64, n=49, D=128, near_fraction=0.3, noise=0.02, seed=0, dtype=torch.float64):
    """Features of which ``near_fraction`` sit next to a prototype (the rest random), unit norm."""
    gen = torch.Generator().manual_seed(seed)
    protos = torch.nn.functional.normalize(torch.randn(m, D, generator=gen, dtype=dtype), dim=1)
    feats = torch.nn.functional.normalize(torch.randn(B, n, D, generator=gen, dtype=dtype), dim=-1)
    near = torch.rand(B, n, generator=gen) < near_fraction
    which = torch.randint(0, m, (B, n), generator=gen)
    close = protos[which] + noise * torch.randn(B, n, D, generator=gen, dtype=dtype)
    feats = torch.where(near.unsqueeze(-1), torch.nn.functional.normalize(close, dim=-1), feats)
    return feats, protos


def fixed_point_error(eps: float = 20.0, iters: int = ITERS) -> dict:
    """Relative error of the paper's fixed point (``iters`` steps) against the exact solver (float64)."""
    feats, protos = clustered_case()
    gen = torch.Generator().manual_seed(1)
    g_out = torch.randn(feats.shape[0], feats.shape[2], generator=gen, dtype=feats.dtype)
    g_z = torch.randn(feats.shape[0], protos.shape[0], generator=gen, dtype=feats.dtype)
    out = {}
    for solver in ("exact", "fixed_point"):
        f = feats.clone().requires_grad_()
        w = protos.clone().requires_grad_()
        cost_nm = cost_points_by_prototypes(f, w)
        weights, _, z, _ = solve_points_first(cost_nm, MU, eps, solver=solver, iters=iters, with_plan=False)
        loss = (weighted_sum(f, weights) * g_out).sum() + (z * g_z).sum()
        gf, gw = torch.autograd.grad(loss, (f, w))
        out[solver] = (weights.detach(), torch.cat([gf.flatten(), gw.flatten()]))
    w_ex, g_ex = out["exact"]
    w_fp, g_fp = out["fixed_point"]
    return {
        "case": f"clustered: B=8, m=64, n=49, D=128, 30% of features near a prototype, mu={MU}, eps={eps}",
        "iters": iters,
        "weight_rel_error": float((w_fp - w_ex).norm() / w_ex.norm()),
        "grad_rel_error": float((g_fp - g_ex).norm() / g_ex.norm()),
    }


def results_table(rows: list[dict]) -> str:
    """The timing rows as a Markdown table (ms per forward + backward, and the two ratios)."""
    header = ["(B, m, n, D)", "GAP ms", "floor ms", "exact ms", "exact/floor", "fixed_point(100) ms", "fixed/exact"]
    body = [[f"({r['B']}, {r['m']}, {r['n']}, {r['D']})", f"{r['gap_ms']:.2f}", f"{r['floor_ms']:.2f}",
             f"{r['exact_ms']:.2f}", f"{r['exact_over_floor']:.2f}", f"{r['fixed_point_ms']:.2f}",
             f"{r['fixed_over_exact']:.2f}"] for r in rows]
    return format_table(header, body)


def bench_gsp(device: str | torch.device = "cpu", repeats: int = 15, tune_malloc: bool = True,
              progress: bool = True) -> dict:
    """Time every method at every shape and measure the fixed point's error; returns the result
    (settings, ``rows``, ``fixed_point_accuracy`` and ``targets_met``: exact <= 1.3x floor and exact
    faster than the fixed point at every shape)."""
    from tqdm import tqdm

    from gspdml.engine.distributed import resolve_device

    device = resolve_device(str(device))
    if repeats < 1:
        raise InputError(f"repeats must be >= 1, got {repeats}")
    malloc_tuned = tune_glibc_malloc() if tune_malloc else False
    gen = torch.Generator().manual_seed(0)
    rows = []
    for shape in tqdm(SHAPES, desc="bench gsp", unit="shape", disable=not progress):
        rows.append(time_shape(shape, device, repeats, gen))
    accuracy = fixed_point_error()
    met = {
        "exact_le_1.3x_floor": all(r["exact_over_floor"] <= 1.3 for r in rows),
        "exact_faster_than_fixed_point": all(r["fixed_over_exact"] > 1.0 for r in rows),
    }
    device_name = (torch.cuda.get_device_name(device) if device.type == "cuda"
                   else (platform.processor() or platform.machine()))
    return {
        "benchmark": "gsp",
        "timing": "median over repeats of forward+backward, wall clock (ms); *_cpu_ms: process CPU time",
        "device": str(device),
        "device_name": device_name,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "repeats": repeats,
        "glibc_malloc_tuned": malloc_tuned,
        "mu": MU, "eps": EPS, "fixed_point_iters": ITERS,
        "rows": rows,
        "fixed_point_accuracy": accuracy,
        "targets_met": met,
    }


def report(result: dict) -> str:
    """The printed summary of :func:`bench_gsp`'s result."""
    accuracy, met = result["fixed_point_accuracy"], result["targets_met"]
    return "\n".join([
        f"GSP forward+backward on {result['device']} ({result['device_name']}), torch {result['torch']}, "
        f"{result['threads']} thread(s), median of {result['repeats']} repeats, mu={result['mu']}, "
        f"eps={result['eps']}" + (", glibc malloc tuned" if result["glibc_malloc_tuned"] else ""),
        results_table(result["rows"]),
        f"fixed_point({accuracy['iters']}) vs exact on {accuracy['case']}: relative weight error "
        f"{accuracy['weight_rel_error']:.2e}, relative gradient error {accuracy['grad_rel_error']:.2e}",
        "targets: " + ", ".join(f"{k}={'yes' if v else 'NO'}" for k, v in met.items()),
    ])
