"""``gspdml study poolings``: every registered pooling on the Digits Collage, ranked with the seed
spread (:func:`gspdml.demo.zoo.run_zoo`)."""
from __future__ import annotations

import argparse
import sys

from gspdml.cli import common

__all__ = ["add_arguments_poolings", "run_poolings"]


def add_arguments_poolings(parser: argparse.ArgumentParser) -> None:
    common.add_output_argument(parser, "run folder, new or empty (default: gspdml_runs/zoo-<UTC timestamp>)")
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds 0..N-1 per pooling (default 3)")
    parser.add_argument("--poolings", nargs="+", default=None, metavar="NAME",
                        help="poolings to compare (default: every registered pooling)")
    parser.add_argument("--quick", action="store_true",
                        help="the demo's tiny budget (about 10 s a run on CPU; numbers are meaningless)")
    common.add_device_argument(parser, default="cpu")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads for torch (default 1, as the demo: the small models gain little from more)")
    common.add_progress_argument(parser)


def run_poolings(args: argparse.Namespace) -> int:
    from gspdml.demo.zoo import run_zoo, zoo_poolings

    zoo_poolings(args.poolings)  # unknown names fail before anything runs
    common.check_positive("--seeds", args.seeds)
    common.check_positive("--threads", args.threads)
    common.resolve_device(args.device)
    result = run_zoo(args.out, poolings=args.poolings, seeds=args.seeds, quick=args.quick, device=args.device,
                     threads=args.threads, progress=not args.no_progress)
    if result["all_failed"]:
        print("gspdml study poolings: every run failed (see the status column)", file=sys.stderr)
        return 1
    return 0
