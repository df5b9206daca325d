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

import argparse
import ctypes
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

from gspdml.errors import InputError
from gspdml.pooling.functional import _cost_t, solve_t, weighted_sum

SHAPES = [(32, 64, 49, 128), (32, 128, 49, 512), (32, 128, 196, 512), (64, 64, 784, 128)]
METHODS = ("gap", "floor", "exact", "fixed_point")
MU, EPS, ITERS = 0.3, 5.0, 100
# Normalised vectors have norm <= 1, so every GSP cost lies in [0, 2] (same hint the layer uses).
_COST_BOUND = 2.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="fewer repeats (3) for a fast smoke run; same shapes")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed repeats per method and shape (default: 15, or 3 with --quick)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (default 0: leave torch's default)")
    parser.add_argument("--out", default="bench_results/gsp.json", help="JSON output path")
    parser.add_argument("--system-malloc", action="store_true",
                        help="keep glibc's default malloc thresholds (see benchmarks/README.md)")
    parser.add_argument("--check", action="store_true",
                        help="exit with status 1 unless exact <= 1.3x floor and exact < fixed_point everywhere")


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
    ct = _cost_t(feats, protos)
    weights, _, marginals, _ = solve_t(ct, MU, EPS, solver=solver, iters=ITERS, with_plan=False,
                                       cost_bound=_COST_BOUND)
    return weighted_sum(feats, weights), marginals


def floor_pool(feats: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
    """The cost floor: the same cost code, weights = mean cost over prototypes, weighted sum."""
    ct = _cost_t(feats, protos)
    return weighted_sum(feats, ct.mean(-1))


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
        ct = _cost_t(f, w)
        weights, _, z, _ = solve_t(ct, MU, eps, solver=solver, iters=iters, with_plan=False)
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


def format_table(rows: list[dict]) -> str:
    head = ("| (B, m, n, D) | GAP ms | floor ms | exact ms | exact/floor | fixed_point(100) ms "
            "| fixed/exact |")
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| ({r['B']}, {r['m']}, {r['n']}, {r['D']}) | {r['gap_ms']:.2f} | {r['floor_ms']:.2f} | "
            f"{r['exact_ms']:.2f} | {r['exact_over_floor']:.2f} | {r['fixed_point_ms']:.2f} | "
            f"{r['fixed_over_exact']:.2f} |"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    try:
        device = torch.device(args.device)
    except RuntimeError as exc:
        raise InputError(f"--device {args.device!r} is not a valid torch device ({exc})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was requested but CUDA is not available on this machine")
    repeats = args.repeats if args.repeats is not None else (3 if args.quick else 15)
    if repeats < 1:
        raise InputError(f"--repeats must be >= 1, got {repeats}")
    if args.threads < 0:
        raise InputError(f"--threads must be >= 0, got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    malloc_tuned = False if args.system_malloc else tune_glibc_malloc()
    gen = torch.Generator().manual_seed(0)
    rows = []
    for shape in tqdm(SHAPES, desc="bench gsp", unit="shape"):
        rows.append(time_shape(shape, device, repeats, gen))
    accuracy = fixed_point_error()
    met = {
        "exact_le_1.3x_floor": all(r["exact_over_floor"] <= 1.3 for r in rows),
        "exact_faster_than_fixed_point": all(r["fixed_over_exact"] > 1.0 for r in rows),
    }
    device_name = (torch.cuda.get_device_name(device) if device.type == "cuda"
                   else (platform.processor() or platform.machine()))
    result = {
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
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"GSP forward+backward on {device} ({device_name}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s), median of {repeats} repeats, mu={MU}, eps={EPS}"
          + (", glibc malloc tuned" if malloc_tuned else ""))
    print(format_table(rows))
    print(f"fixed_point({accuracy['iters']}) vs exact on {accuracy['case']}: relative weight error "
          f"{accuracy['weight_rel_error']:.2e}, relative gradient error {accuracy['grad_rel_error']:.2e}")
    print("targets: " + ", ".join(f"{k}={'yes' if v else 'NO'}" for k, v in met.items()))
    print(f"wrote {out}")
    if args.check and not all(met.values()):
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``python benchmarks/bench_gsp.py``."""
    parser = argparse.ArgumentParser(prog="bench_gsp", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))

