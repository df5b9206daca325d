"""``gspdml protocol``: the MLRC 4-fold protocol (128D fold average and 512D concatenation)."""
from __future__ import annotations

import argparse

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", required=True, help="YAML config (configs/*.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides (values parsed as YAML)")
    parser.add_argument("--repeats", type=int, default=1, help="repeats per fold (the paper: 3); default 1")
    parser.add_argument("--folds", type=int, nargs="+", default=None, help="run only these folds (default: all)")
    parser.add_argument("--out", metavar="DIR", help="protocol folder (default: output_dir/name)")
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    from gspdml.engine.runs import console_logging
    from gspdml.config import load_config
    from gspdml.engine.protocol import run_protocol
    from gspdml.evaluation.mlrc import format_table

    cfg = load_config(args.config, list(args.overrides or []))
    console_logging()
    result = run_protocol(cfg, repeats=args.repeats, progress=not args.no_progress, out_dir=args.out,
                          folds=args.folds)
    print(format_table(result.summary))
    if result.out_dir is not None:
        print(f"protocol folder: {result.out_dir} (protocol.json, protocol.md, one run folder per fold)")
    return 0
