"""``gspdml pretrain``: classification pretraining of a backbone (ResNet-20 on CIFAR-100).

``gspdml pretrain -c CONFIG [KEY=VALUE ...]`` runs a config (shipped name or YAML file;
``cifar100_resnet20_pretrain`` is the recipe); ``gspdml pretrain cifar100 --root DATA --out DIR``
runs that recipe on ``cifar100`` or ``cifar10`` (with the dataset's normalisation). The run folder
holds ``backbone.pth`` (for ``model.pretrained``), ``metrics.csv`` and ``metrics.json``; see
:mod:`gspdml.engine.pretrain`.
"""
from __future__ import annotations

import argparse

from gspdml.cli import common

__all__ = ["add_arguments", "run", "resolve_config", "RECIPE", "RECIPE_DATASETS"]

#: the shipped recipe used when only a dataset name is given
RECIPE = "cifar100_resnet20_pretrain"
RECIPE_DATASETS = ("cifar10", "cifar100")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", default=None, metavar="NAME_OR_PATH",
                        help=f"a shipped config name or a YAML file (default with DATASET: {RECIPE})")
    parser.add_argument("items", nargs="*", metavar="DATASET|KEY=VALUE",
                        help=f"optional dataset ({', '.join(RECIPE_DATASETS)}) to run the recipe on, then config "
                             "overrides (values parsed as YAML, e.g. train.max_epochs=50)")
    parser.add_argument("--root", default=None, metavar="PATH", help="dataset folder (overrides data.root)")
    common.add_output_argument(parser, "output folder for the run (overrides output_dir)")
    parser.add_argument("--name", help="run name (overrides name)")
    common.add_progress_argument(parser)
    parser.set_defaults(_extra_positionals="items")


def resolve_config(args: argparse.Namespace):
    """The config of a ``pretrain`` invocation: the config (or the recipe for DATASET), then overrides."""
    from gspdml.config import load_config
    from gspdml.errors import ConfigError, unknown_choice

    items = list(args.items or [])
    datasets = [i for i in items if "=" not in i]
    overrides = [i for i in items if "=" in i]
    if len(datasets) > 1:
        raise ConfigError(f"gspdml pretrain takes one DATASET, got {', '.join(datasets)} (overrides are KEY=VALUE)")
    head: list[str] = []
    if datasets:
        name = datasets[0].lower()
        if name not in RECIPE_DATASETS:
            raise unknown_choice("pretrain dataset", datasets[0], RECIPE_DATASETS)
        head = [f"data.dataset={name}", f"data.normalization={name}", f"name={name}_resnet20_pretrain",
                f"data.options={{{'label_type: fine' if name == 'cifar100' else ''}}}"]
    elif args.config is None:
        raise ConfigError(f"give a DATASET ({', '.join(RECIPE_DATASETS)}) or --config NAME_OR_FILE "
                          f"(e.g. gspdml pretrain -c {RECIPE} data.root=DATA)")
    if args.root:
        head.append(f"data.root={args.root}")
    if args.out:
        head.append(f"output_dir={args.out}")
    if args.name:
        head.append(f"name={args.name}")
    return load_config(args.config or RECIPE, head + overrides)


def run(args: argparse.Namespace) -> int:
    from gspdml.engine.pretrain import pretrain
    from gspdml.engine.runs import console_logging

    cfg = resolve_config(args)
    console_logging()
    result = pretrain(cfg, progress=not args.no_progress)
    m = result.metrics
    print(f"run folder: {result.run_dir}")
    print(f"steps: {m['steps']}  epochs: {m['epochs']}  train acc: {m['train_acc']:.4f}"
          + ("" if m["test_acc"] is None else f"  test acc: {m['test_acc']:.4f}"))
    print(f"backbone weights: {result.weights}  (use as model.pretrained)")
    return 0
