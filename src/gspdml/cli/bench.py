"""``gspdml bench gsp|train|eval``: the benchmarks of :mod:`gspdml.bench`, run side by side in one
process (see benchmarks/README.md)."""
from __future__ import annotations

import argparse
from pathlib import Path

from gspdml.cli import common
from gspdml.errors import InputError

__all__ = ["add_arguments_gsp", "run_gsp", "add_arguments_train", "run_train", "add_arguments_eval", "run_eval"]


def _add_threads_argument(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument("--threads", type=int, default=None, help=help)


def _set_threads(threads: int | None, faiss: bool = False) -> None:
    """Set torch's (and faiss's) CPU threads when ``threads`` is given (>= 1)."""
    if threads is None or threads == 0:
        return
    if threads < 0:
        raise InputError(f"--threads must be >= 0, got {threads}")
    import torch

    torch.set_num_threads(threads)
    if faiss:
        import faiss as faiss_lib

        faiss_lib.omp_set_num_threads(threads)


def _write_json(path, obj) -> None:
    from gspdml.io import write_json

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    print(f"wrote {write_json(out, obj)}")


# ---------------------------------------------------------------------------------------------- gsp
def add_arguments_gsp(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="fewer repeats (3) for a fast smoke run; same shapes")
    common.add_device_argument(parser, default="cpu")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed repeats per method and shape (default: 15, or 3 with --quick)")
    _add_threads_argument(parser, "torch CPU threads (default: leave torch's default)")
    parser.add_argument("--out", default="bench_results/gsp.json", metavar="FILE", help="JSON output path")
    parser.add_argument("--system-malloc", action="store_true",
                        help="keep glibc's default malloc thresholds (see benchmarks/README.md)")
    parser.add_argument("--layouts", nargs="+", default=["tokens", "maps"], metavar="LAYOUT",
                        choices=["tokens", "maps", "channels_last"],
                        help="feature layouts to time: tokens (B, N, C), maps (NCHW), channels_last "
                             "(default: tokens maps)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                        help="features in float32, or bfloat16 under autocast (the solver runs in float32)")
    parser.add_argument("--check", action="store_true",
                        help="exit with status 1 unless every target is met (exact <= 1.3x floor, exact < "
                             "fixed_point, also through partial_transport, maps <= 1.1x tokens)")
    common.add_progress_argument(parser)


def run_gsp(args: argparse.Namespace) -> int:
    from gspdml.bench.gsp import bench_gsp, report

    device = common.resolve_device(args.device)
    _set_threads(args.threads)
    repeats = args.repeats if args.repeats is not None else (3 if args.quick else 15)
    result = bench_gsp(device, repeats=repeats, tune_malloc=not args.system_malloc, progress=not args.no_progress,
                       layouts=args.layouts, precision=args.precision)
    print(report(result))
    _write_json(args.out, result)
    return 1 if args.check and not all(result["targets_met"].values()) else 0


# -------------------------------------------------------------------------------------------- train
def add_arguments_train(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backbones", nargs="+", default=["bninception", "resnet50"])
    parser.add_argument("--poolings", nargs="+", default=["gap", "gsp"],
                        help="gap, gsp and/or gsp+zs (GSP with L_ZS); the first one is the reference")
    parser.add_argument("--image-size", type=int, default=227)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per setup (median reported)")
    parser.add_argument("--warmup", type=int, default=2)
    common.add_device_argument(parser)
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                        help="autocast dtype: auto (fp16 on CUDA, fp32 on CPU), fp32, bf16, fp16 (CUDA only)")
    parser.add_argument("--compile", action="store_true",
                        help="also time a torch.compile-d copy of every model, alternated with the eager one")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend (default inductor)")
    parser.add_argument("--loss", default="MS")
    parser.add_argument("--zero-shot", action="store_true", help="add L_ZS to the GSP model's step (see gsp+zs)")
    _add_threads_argument(parser, "torch CPU threads")
    parser.add_argument("--quick", action="store_true", help="tiny version: 64 px, batch 8, 2 steps")
    parser.add_argument("--json", metavar="FILE", help="write the rows as JSON")
    common.add_progress_argument(parser)


def run_train(args: argparse.Namespace) -> int:
    from gspdml.bench.train import bench_train, report
    from gspdml.errors import ConfigError

    device = common.resolve_device(args.device)
    _set_threads(args.threads)
    size, batch, steps, warmup = args.image_size, args.batch_size, args.steps, args.warmup
    if args.quick:
        size, batch, steps, warmup = 64, 8, 2, 1
    try:
        rows = bench_train(tuple(args.backbones), tuple(args.poolings), size, batch, steps, warmup, device,
                           args.precision, args.loss, args.zero_shot, progress=not args.no_progress,
                           compile=args.compile, compile_backend=args.compile_backend)
    except ConfigError as exc:
        raise ConfigError(str(exc).replace("train.precision", "--precision")) from None
    print(report(rows, args.loss))
    if args.json:
        _write_json(args.json, rows)
    return 0


# --------------------------------------------------------------------------------------------- eval
def add_arguments_eval(parser: argparse.ArgumentParser) -> None:
    from gspdml.bench.evaluate import METHODS

    parser.add_argument("--num", type=int, default=60_000, help="self-retrieval case: embeddings (default 60,000)")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--classes", type=int, default=11_000, help="self-retrieval case: classes (default 11,000)")
    parser.add_argument("--gallery", type=int, default=1_000_000,
                        help="gallery case: gallery size (default 1,000,000; 0 skips the case)")
    parser.add_argument("--gallery-queries", type=int, default=10_000,
                        help="gallery case: held-out queries searched against the gallery (default 10,000)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS, metavar="METHOD",
                        help=f"self case methods (default: all of {' '.join(METHODS)})")
    parser.add_argument("--gallery-methods", nargs="+", default=["ours", "ours_memmap", "pml", "naive"],
                        choices=METHODS, metavar="METHOD", help="gallery case methods (default: ours ours_memmap "
                                                                "pml naive)")
    parser.add_argument("--repeats", type=int, default=1, help="median of N runs, the methods interleaved")
    _add_threads_argument(parser, "torch/faiss threads (default: all)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny version: 6,000 x 128 in 1,100 classes, gallery 20,000 with 1,000 queries")
    parser.add_argument("--json", metavar="FILE", help="write the result as JSON")


def run_eval(args: argparse.Namespace) -> int:
    from gspdml.bench.evaluate import bench_eval, report

    _set_threads(args.threads, faiss=True)
    common.check_positive("--gallery-queries", args.gallery_queries)
    if args.gallery < 0:
        raise InputError(f"--gallery must be >= 0 (0 skips the gallery case), got {args.gallery}")
    num, classes = (6_000, 1_100) if args.quick else (args.num, args.classes)
    gallery, queries = (20_000, 1_000) if args.quick else (args.gallery or None, args.gallery_queries)
    res = bench_eval(num, args.dim, classes, repeats=args.repeats, gallery=gallery, gallery_queries=queries,
                     methods=tuple(args.methods), gallery_methods=tuple(args.gallery_methods))
    print(report(res))
    if args.json:
        _write_json(args.json, res)
    return 0
