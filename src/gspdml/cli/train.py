"""``gspdml train``: train an embedding model from a config (+ ``KEY=VALUE`` overrides).

Ctrl-C (SIGINT) or SIGTERM finishes the current step, writes ``checkpoints/last.pt``, prints where
it is and the resume command, and exits with 130 / 143.
"""
from __future__ import annotations

import argparse
import json
import sys

from gspdml.cli import common

__all__ = ["add_arguments", "run", "resolve_config"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_config_arguments(parser, required=False, extra_help="; optional with --resume")
    parser.add_argument("--resume", metavar="RUN_OR_CKPT",
                        help="continue a run exactly from its checkpoints/last.pt (run folder or .pt file)")
    common.add_trust_argument(parser, "the --resume checkpoint")
    common.add_output_argument(parser, "output folder for the run (overrides output_dir)")
    parser.add_argument("--name", help="run name (overrides name)")
    common.add_progress_argument(parser)


def resolve_config(args: argparse.Namespace):
    """The config of a ``train`` invocation: the config (or the checkpoint's), then the overrides."""
    from gspdml.config import apply_overrides, config_from_dict, load_config, upgrade_stored_config
    from gspdml.engine.checkpoint import load_checkpoint
    from gspdml.errors import ConfigError

    overrides = list(args.overrides or [])
    if args.out:
        overrides.append(f"output_dir={args.out}")
    if args.name:
        overrides.append(f"name={args.name}")
    if args.config:
        return load_config(args.config, overrides)
    if args.resume:
        state = load_checkpoint(args.resume, prefer="last", trust=getattr(args, "trust_checkpoint", False))
        return config_from_dict(apply_overrides(upgrade_stored_config(state["config"]), overrides))
    raise ConfigError("give --config NAME_OR_FILE (or --resume RUN to continue a run with its stored config)")


def run(args: argparse.Namespace) -> int:
    from gspdml.engine.runs import Interrupted, console_logging
    from gspdml.engine.trainer import train

    cfg = resolve_config(args)
    console_logging()
    try:
        result = train(cfg, progress=not args.no_progress, resume=args.resume,
                       trust_checkpoint=getattr(args, "trust_checkpoint", False))
    except Interrupted as exc:
        print(f"gspdml train: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    print(f"run folder: {result.run_dir}")
    print(f"steps: {result.steps}  epochs: {result.epochs}  stopped early: {result.stopped_early}")
    if result.best_metrics:
        print("best validation:", json.dumps({k: round(v, 4) if isinstance(v, float) else v
                                              for k, v in result.best_metrics.items()}))
    if result.final_metrics:
        print("test:", json.dumps({k: round(v, 4) for k, v in result.final_metrics.items()}))
    return 0
