"""``gspdml protocol``: the MLRC 4-fold protocol (128D fold average and 512D concatenation)."""
from __future__ import annotations

import argparse

from gspdml.cli import common

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_config_arguments(parser)
    parser.add_argument("--repeats", type=int, default=1, help="repeats per fold (the paper: 3); default 1")
    parser.add_argument("--folds", type=int, nargs="+", default=None, help="run only these folds (default: all)")
    common.add_output_argument(parser, "protocol folder (default: output_dir/name)")
    common.add_progress_argument(parser)


def run(args: argparse.Namespace) -> int:
    from gspdml.config import load_config
    from gspdml.engine.protocol import run_protocol
    from gspdml.engine.runs import console_logging
    from gspdml.evaluation.mlrc import format_table

    cfg = load_config(args.config, list(args.overrides or []))
    console_logging()
    result = run_protocol(cfg, repeats=args.repeats, progress=not args.no_progress, out_dir=args.out,
                          folds=args.folds)
    print(format_table(result.summary))
    if result.out_dir is not None:
        print(f"protocol folder: {result.out_dir} (protocol.json, protocol.md, one run folder per fold)")
    return 0
