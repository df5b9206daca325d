"""``gspdml bench gsp``: speed of the GSP layer against GAP, the cost floor and the paper's solver.

Every method is timed forward + backward in the same run, interleaved repeat by repeat (so load
from other processes hits all of them alike), and the median is reported, per shape and per
feature layout (``tokens``: a contiguous (B, n, D) token set; ``maps``: an NCHW (B, D, H, W)
map, the CNN case; ``channels_last``: the same map in channels_last memory order):

- ``gap``: global average pooling.
- ``floor``: what any GSP implementation must compute: the normalised L2 cost matrix (the same
  cost code GSP uses) and a weighted sum of the features, with weights derived from the cost
  (its mean over prototypes) so that the backward pass runs through the cost too.
- ``exact``: the GSP layer with the exact solver (cost + closed form + Newton root + weighted sum),
  with the prototype marginals z used in the loss (as with the zero-shot loss).
- ``fixed_point``: the same with the paper's Prop. 4.2 iteration (k = 100) and Prop. 4.3 backward.
- ``module``: the ``GSP`` module itself (exact solver), input validation included.

A second table times the solvers alone through ``partial_transport`` on a precomputed cost
(exact vs fixed_point(100), weights and marginals in the loss). It also measures the relative
error of fixed_point(100) against the exact solver (weights and gradients) on a clustered
eps = 20 case, where the fixed point converges slowly.
"""
from __future__ import annotations

import ctypes
import math
import os
import platform
import statistics
import time
from typing import Callable

import torch

from gspdml.errors import InputError
from gspdml.io import format_table
from gspdml.pooling.transport import (
    COST_BOUND,
    cost_points_by_prototypes,
    no_autocast,
    prefer_rows,
    solve_points_first,
    solver_dtype,
    weighted_sum,
)

SHAPES = [(32, 64, 49, 128), (32, 128, 49, 512), (32, 128, 196, 512), (64, 64, 784, 128)]
METHODS = ("gap", "floor", "exact", "fixed_point", "module")
LAYOUTS = ("tokens", "maps", "channels_last")
PRECISIONS = ("fp32", "bf16")
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


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA), so a wall-clock timing covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gsp_pool(feats: torch.Tensor, protos: torch.Tensor, solver: str):
    """What ``GSP.forward`` computes (without input validation): pooled (B, D) and z (B, m)."""
    dtype = solver_dtype(torch.promote_types(feats.dtype, protos.dtype))
    with no_autocast(feats.device.type):
        feats = prefer_rows(feats.to(dtype))
        cost_nm = cost_points_by_prototypes(feats, protos.to(dtype))
        weights, _, marginals, _ = solve_points_first(cost_nm, MU, EPS, solver=solver, iters=ITERS,
                                                      with_plan=False, cost_bound=COST_BOUND)
        return weighted_sum(feats, weights), marginals


def floor_pool(feats: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
    """The cost floor: the same cost code, weights = mean cost over prototypes, weighted sum."""
    dtype = solver_dtype(torch.promote_types(feats.dtype, protos.dtype))
    with no_autocast(feats.device.type):
        feats = prefer_rows(feats.to(dtype))
        cost_nm = cost_points_by_prototypes(feats, protos.to(dtype))
        return weighted_sum(feats, cost_nm.mean(-1))


def map_size(n: int) -> tuple[int, int]:
    """(H, W) of a map with n positions: square when n is a square, else (1, n)."""
    h = math.isqrt(n)
    return (h, h) if h * h == n else (1, n)


def layout_features(B: int, n: int, D: int, layout: str, dtype, device, gen) -> tuple[torch.Tensor, torch.Tensor]:
    """``(leaf, feats)``: the leaf tensor gradients go to and its (B, n, D) view in ``layout``."""
    if layout == "tokens":
        leaf = torch.randn(B, n, D, generator=gen).to(device=device, dtype=dtype).requires_grad_()
        return leaf, leaf
    H, W = map_size(n)
    x = torch.randn(B, D, H, W, generator=gen).to(device=device, dtype=dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    leaf = x.requires_grad_()
    return leaf, leaf.flatten(2).transpose(1, 2)


def _steps(B: int, m: int, n: int, D: int, device, gen, layout: str = "tokens", precision: str = "fp32"
           ) -> dict[str, Callable[[], None]]:
    from gspdml.pooling.gsp import GSP

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    leaf, _ = layout_features(B, n, D, layout, dtype, device, gen)
    protos = torch.nn.functional.normalize(torch.randn(m, D, generator=gen), dim=1).to(device).requires_grad_()
    g_out = torch.randn(B, D, generator=gen).to(device)
    g_z = torch.randn(B, m, generator=gen).to(device)
    module = GSP(D, num_prototypes=m, mu=MU, eps=EPS, init="random").to(device)
    with torch.no_grad():
        module.prototypes.copy_(protos)

    def view():  # the (B, n, D) features, as the module sees them
        return leaf if layout == "tokens" else leaf.flatten(2).transpose(1, 2)

    def gap():
        (view().mean(1).float() * g_out).sum().backward()

    def floor():
        (floor_pool(view(), protos) * g_out).sum().backward()

    def make(solver):
        def step():
            pooled, z = gsp_pool(view(), protos, solver)
            ((pooled.float() * g_out).sum() + (z * g_z).sum()).backward()
        return step

    def module_step():
        pooled, details = module(leaf, return_details=True)
        ((pooled.float() * g_out).sum() + (details["marginals"] * g_z).sum()).backward()

    def clear():
        leaf.grad = None
        protos.grad = None
        module.prototypes.grad = None

    steps = {"gap": gap, "floor": floor, "exact": make("exact"), "fixed_point": make("fixed_point"),
             "module": module_step}
    autocast = precision != "fp32"

    def run(f):
        clear()
        with torch.autocast(device.type, dtype=dtype, enabled=autocast):
            f()
    return {k: (lambda f=f: run(f)) for k, f in steps.items()}


def _transport_steps(B: int, m: int, n: int, D: int, device, gen) -> dict[str, Callable[[], None]]:
    """The solvers alone: ``partial_transport`` on a precomputed (B, m, n) GSP cost."""
    from gspdml.pooling.transport import partial_transport, prototype_cost

    feats = torch.randn(B, n, D, generator=gen).to(device)
    protos = torch.nn.functional.normalize(torch.randn(m, D, generator=gen), dim=1).to(device)
    cost = prototype_cost(feats, protos).detach().requires_grad_()
    g_w = torch.randn(B, n, generator=gen).to(device)
    g_z = torch.randn(B, m, generator=gen).to(device)

    def make(solver):
        def step():
            cost.grad = None
            res = partial_transport(cost, MU, EPS, solver=solver, iters=ITERS)
            ((res.weights * g_w).sum() + (res.marginals * g_z).sum()).backward()
        return step
    return {"exact": make("exact"), "fixed_point": make("fixed_point")}


def _time(steps: dict, device, repeats: int) -> tuple[dict, dict]:
    """Median wall-clock and CPU milliseconds of every step, interleaved repeat by repeat."""
    for step in steps.values():  # warm-up (allocator, kernels)
        step()
    wall = {k: [] for k in steps}
    cpu = {k: [] for k in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            step()
            sync(device)
            wall[name].append((time.perf_counter() - t0) * 1e3)
            cpu[name].append((time.process_time() - c0) * 1e3)
    return ({k: statistics.median(v) for k, v in wall.items()}, {k: statistics.median(v) for k, v in cpu.items()})


def time_shape(shape, device, repeats: int, gen, layouts=("tokens",), precision: str = "fp32") -> list[dict]:
    """One row per layout: median wall-clock and CPU ms of forward + backward for every method
    (all layouts and methods interleaved)."""
    steps = {}
    for layout in layouts:
        for k, f in _steps(*shape, device, gen, layout, precision).items():
            steps[(layout, k)] = f
    wall, cpu = _time(steps, device, repeats)
    B, m, n, D = shape
    rows = []
    for layout in layouts:
        row = {"layout": layout, "B": B, "m": m, "n": n, "D": D}
        for name in METHODS:
            row[f"{name}_ms"] = wall[(layout, name)]
            row[f"{name}_cpu_ms"] = cpu[(layout, name)]
        row["exact_over_floor"] = row["exact_ms"] / row["floor_ms"]
        row["fixed_over_exact"] = row["fixed_point_ms"] / row["exact_ms"]
        row["exact_over_floor_cpu"] = row["exact_cpu_ms"] / row["floor_cpu_ms"]
        row["fixed_over_exact_cpu"] = row["fixed_point_cpu_ms"] / row["exact_cpu_ms"]
        rows.append(row)
    return rows


def time_transport(shape, device, repeats: int, gen) -> dict:
    """The solvers alone through ``partial_transport``: exact vs fixed_point(100) at one shape."""
    wall, cpu = _time(_transport_steps(*shape, device, gen), device, repeats)
    B, m, n, D = shape
    return {"B": B, "m": m, "n": n, "D": D, "exact_ms": wall["exact"], "fixed_point_ms": wall["fixed_point"],
            "exact_cpu_ms": cpu["exact"], "fixed_point_cpu_ms": cpu["fixed_point"],
            "fixed_over_exact": wall["fixed_point"] / wall["exact"]}


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
    """The timing rows as a Markdown table (ms per forward + backward, and the ratios)."""
    header = ["layout", "(B, m, n, D)", "GAP ms", "floor ms", "exact ms", "exact/floor", "fixed_point(100) ms",
              "fixed/exact", "module ms"]
    body = [[r.get("layout", "tokens"), f"({r['B']}, {r['m']}, {r['n']}, {r['D']})", f"{r['gap_ms']:.2f}",
             f"{r['floor_ms']:.2f}", f"{r['exact_ms']:.2f}", f"{r['exact_over_floor']:.2f}",
             f"{r['fixed_point_ms']:.2f}", f"{r['fixed_over_exact']:.2f}", f"{r['module_ms']:.2f}"] for r in rows]
    return format_table(header, body)


def layout_ratios(rows: list[dict]) -> list[dict]:
    """Module time of every map layout over the token set's, per shape."""
    by_shape: dict[tuple, dict] = {}
    for r in rows:
        by_shape.setdefault((r["B"], r["m"], r["n"], r["D"]), {})[r["layout"]] = r["module_ms"]
    out = []
    for shape, t in by_shape.items():
        if "tokens" in t:
            for layout in ("maps", "channels_last"):
                if layout in t:
                    out.append({"shape": list(shape), "layout": layout, "over_tokens": t[layout] / t["tokens"]})
    return out


def transport_table(rows: list[dict]) -> str:
    header = ["(B, m, n, D)", "exact ms", "fixed_point(100) ms", "fixed/exact"]
    body = [[f"({r['B']}, {r['m']}, {r['n']}, {r['D']})", f"{r['exact_ms']:.2f}", f"{r['fixed_point_ms']:.2f}",
             f"{r['fixed_over_exact']:.2f}"] for r in rows]
    return format_table(header, body)


def bench_gsp(device: str | torch.device = "cpu", repeats: int = 15, tune_malloc: bool = True,
              progress: bool = True, layouts=("tokens", "maps"), precision: str = "fp32") -> dict:
    """Time every method at every shape and layout, the solvers alone, and the fixed point's
    error; returns the result (settings, ``rows``, ``transport_rows``, ``layout_ratios``,
    ``fixed_point_accuracy`` and ``targets_met``: exact <= 1.3x floor and exact faster than the
    fixed point at every shape and layout, also through ``partial_transport``, and every map
    layout <= 1.1x the token set)."""
    from tqdm import tqdm

    from gspdml.engine.distributed import resolve_device

    device = resolve_device(str(device))
    if repeats < 1:
        raise InputError(f"repeats must be >= 1, got {repeats}")
    layouts = tuple(dict.fromkeys(layouts))
    bad = [x for x in layouts if x not in LAYOUTS]
    if bad or not layouts:
        raise InputError(f"layouts must be among {', '.join(LAYOUTS)}, got {', '.join(map(str, layouts)) or 'none'}")
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    malloc_tuned = tune_glibc_malloc() if tune_malloc else False
    gen = torch.Generator().manual_seed(0)
    rows, transport_rows = [], []
    for shape in tqdm(SHAPES, desc="bench gsp", unit="shape", disable=not progress):
        rows += time_shape(shape, device, repeats, gen, layouts, precision)
        transport_rows.append(time_transport(shape, device, repeats, gen))
    ratios = layout_ratios(rows)
    accuracy = fixed_point_error()
    met = {
        "exact_le_1.3x_floor": all(r["exact_over_floor"] <= 1.3 for r in rows),
        "exact_faster_than_fixed_point": all(r["fixed_over_exact"] > 1.0 for r in rows),
        "exact_faster_than_fixed_point_through_partial_transport": all(r["fixed_over_exact"] > 1.0
                                                                        for r in transport_rows),
    }
    if ratios:
        met["maps_le_1.1x_tokens"] = all(r["over_tokens"] <= 1.1 for r in ratios)
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
        "layouts": list(layouts),
        "precision": precision,
        "mu": MU, "eps": EPS, "fixed_point_iters": ITERS,
        "rows": rows,
        "transport_rows": transport_rows,
        "layout_ratios": ratios,
        "fixed_point_accuracy": accuracy,
        "targets_met": met,
    }


def report(result: dict) -> str:
    """The printed summary of :func:`bench_gsp`'s result."""
    accuracy, met = result["fixed_point_accuracy"], result["targets_met"]
    lines = [
        f"GSP forward+backward on {result['device']} ({result['device_name']}), torch {result['torch']}, "
        f"{result['threads']} thread(s), median of {result['repeats']} repeats, mu={result['mu']}, "
        f"eps={result['eps']}, {result.get('precision', 'fp32')}"
        + (", glibc malloc tuned" if result["glibc_malloc_tuned"] else ""),
        results_table(result["rows"]),
    ]
    if result.get("layout_ratios"):
        lines.append("module time over the token set's: " + ", ".join(
            f"{r['layout']} {tuple(r['shape'])} {r['over_tokens']:.2f}x" for r in result["layout_ratios"]))
    if result.get("transport_rows"):
        lines += ["the solvers alone (partial_transport on a precomputed cost):",
                  transport_table(result["transport_rows"])]
    lines += [
        f"fixed_point({accuracy['iters']}) vs exact on {accuracy['case']}: relative weight error "
        f"{accuracy['weight_rel_error']:.2e}, relative gradient error {accuracy['grad_rel_error']:.2e}",
        "targets: " + ", ".join(f"{k}={'yes' if v else 'NO'}" for k, v in met.items()),
    ]
    return "\n".join(lines)
