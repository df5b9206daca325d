"""``gspdml demo``: GAP vs GSP (+L_ZS) on data shipped with the install; writes a report
(:func:`gspdml.demo.run.run_demo`)."""
from __future__ import annotations

import argparse

from gspdml.cli import common

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_output_argument(parser, "run folder, new or empty (default: gspdml_runs/demo-<UTC timestamp>)")
    parser.add_argument("--quick", action="store_true",
                        help="every step on a tiny budget (about a minute; numbers are meaningless)")
    parser.add_argument("--full", action="store_true",
                        help="5 seeds, learned-attention baseline and the 2x2/3x3/4x4 clutter sweep")
    parser.add_argument("--seeds", type=int, default=None,
                        help="number of seeds 0..N-1 (default 3, --full 5, --quick 1)")
    common.add_device_argument(parser, default="cpu")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads for torch (default 1: the demo's small models gain little from more "
                             "threads and slow down badly when the cores are shared)")
    common.add_progress_argument(parser)


def run(args: argparse.Namespace) -> int:
    from gspdml.demo.run import run_demo

    common.resolve_device(args.device)
    run_demo(args.out, quick=args.quick, full=args.full, seeds=args.seeds, device=args.device,
             threads=args.threads, progress=not args.no_progress)
    return 0
