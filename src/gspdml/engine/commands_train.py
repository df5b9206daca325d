"""``gspdml train``: train an embedding model from a YAML config (+ ``key=value`` overrides)."""
from __future__ import annotations

import argparse
import json

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", help="YAML config (configs/*.yaml); optional with --resume")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides, values parsed as YAML (e.g. loss.name=Triplet train.max_steps=500)")
    parser.add_argument("--resume", metavar="RUN_OR_CKPT",
                        help="continue a run exactly from its checkpoints/last.pt (run folder or .pt file)")
    parser.add_argument("--out", metavar="DIR", help="output folder for the run (overrides output_dir)")
    parser.add_argument("--name", help="run name (overrides name)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def resolve_config(args):
    """The config of a ``train`` invocation: file or checkpoint config, then overrides."""
    from gspdml.config import apply_overrides, config_from_dict, load_config
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
        state = load_checkpoint(args.resume, prefer="last")
        return config_from_dict(apply_overrides(state["config"], overrides))
    raise ConfigError("give --config FILE (or --resume RUN to continue a run with its stored config)")


def run(args: argparse.Namespace) -> int:
    from gspdml.engine.runs import console_logging
    from gspdml.engine.trainer import train

    cfg = resolve_config(args)
    console_logging()
    result = train(cfg, progress=not args.no_progress, resume=args.resume)
    print(f"run folder: {result.run_dir}")
    print(f"steps: {result.steps}  epochs: {result.epochs}  stopped early: {result.stopped_early}")
    if result.best_metrics:
        print("best validation:", json.dumps({k: round(v, 4) if isinstance(v, float) else v
                                              for k, v in result.best_metrics.items()}))
    if result.final_metrics:
        print("test:", json.dumps({k: round(v, 4) for k, v in result.final_metrics.items()}))
    return 0
