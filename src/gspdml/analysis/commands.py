"""``gspdml analyze zeroshot``: zero-shot attribute evaluation of a trained checkpoint.

Usage::

    gspdml analyze zeroshot --checkpoint runs/digits_gsp_zs          # run folder or .pt file
    gspdml analyze zeroshot --checkpoint best.pt --dataset digits_collage --split train \\
        --repeats 1000 --out analysis/

The dataset defaults to the one in the checkpoint's config (same root and options), evaluated
on ``--split`` (default: the config's test split) with the config's evaluation transform. Writes
``zeroshot_<split>.json`` (summary, per-repeat MAPs, per-class mean prototype marginals) and
``prototypes_<split>.png`` (per-class prototype histograms) to ``--out`` (default:
``<run folder>/analysis``) and prints the result table.

The helpers :func:`load_checkpoint_model` and :func:`build_eval_dataset` are shared with
``gspdml viz``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from gspdml.errors import InputError

__all__ = [
    "add_arguments",
    "run",
    "add_checkpoint_arguments",
    "add_dataset_arguments",
    "load_checkpoint_model",
    "build_eval_dataset",
    "default_output_dir",
    "class_names_of",
    "names_for_labels",
    "eval_transform",
    "display_normalization",
    "resolve_device",
]


# ----------------------------------------------------------------------------------- shared helpers
def add_checkpoint_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint", required=True, metavar="RUN_OR_CKPT",
        help="a run folder (uses checkpoints/best.pt, else last.pt) or a checkpoint .pt file",
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    parser.add_argument("--batch-size", type=int, default=64, help="evaluation batch size (default 64)")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="output folder (default: <run folder>/analysis)")


def add_dataset_arguments(parser: argparse.ArgumentParser, split_default: str | None = None) -> None:
    parser.add_argument("--dataset", default=None, metavar="NAME",
                        help="dataset name (default: the checkpoint config's data.dataset)")
    parser.add_argument("--root", default=None, metavar="PATH",
                        help="dataset folder (default: the checkpoint config's data.root)")
    parser.add_argument("--split", default=split_default,
                        help="dataset split (default: the checkpoint config's data.test_split)")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="dataset builder option (YAML value), repeatable; added to the config's "
                             "data.options, which are dropped when --dataset names another dataset")


def resolve_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise InputError(f"--device: {exc}; expected cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was requested but CUDA is not available; use --device cpu")
    return device


def load_checkpoint_model(path: str):
    """``(model, cfg, extra)`` of a checkpoint file or run folder (see ``load_model_from_checkpoint``)."""
    from gspdml.engine.checkpoint import load_model_from_checkpoint

    return load_model_from_checkpoint(path)


def default_output_dir(checkpoint_path: str | Path, out: str | None) -> Path:
    """``out`` if given, else ``<run folder>/analysis`` for a checkpoint in ``<run>/checkpoints/``."""
    if out:
        return Path(out)
    ckpt = Path(checkpoint_path)
    run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    return run_dir / "analysis"


def _parse_options(items: list[str]) -> dict[str, Any]:
    import yaml

    options: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--option expects KEY=VALUE, got {item!r}")
        try:
            options[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise InputError(f"--option {item!r}: cannot parse the value as YAML: {exc}") from None
    return options


def eval_transform(cfg):
    """The evaluation transform of a training config (``None`` when ``data.transform`` is none)."""
    import inspect

    d = cfg.data
    if str(d.transform).lower() == "none":
        return None
    from gspdml.data import build_transform

    kwargs = {"normalization": d.normalization, "image_size": d.image_size}
    params = inspect.signature(build_transform).parameters
    return build_transform(d.transform, train=False, **{k: v for k, v in kwargs.items() if k in params})


def display_normalization(cfg) -> str:
    """The normalisation to undo when showing the model's input images."""
    return "none" if str(cfg.data.transform).lower() == "none" else cfg.data.normalization


def build_eval_dataset(cfg, dataset: str | None, root: str | None, split: str | None, option_items: list[str]):
    """The dataset to analyse: the config's dataset unless overridden, with the eval transform."""
    from gspdml.data import build_dataset

    name = dataset or cfg.data.dataset
    same = name.lower() == str(cfg.data.dataset).lower()
    options = dict(cfg.data.options) if same else {}
    options.update(_parse_options(option_items))
    root = root if root is not None else cfg.data.root
    split = split or cfg.data.test_split
    return build_dataset(name, root, split, transform=eval_transform(cfg), **options), name, split


def class_names_of(dataset, num_classes: int) -> list[str]:
    """Readable class names of a gspdml dataset (``class_names``, digit pairs, ...) or ``class i``."""
    names = getattr(dataset, "class_names", None)
    if names is not None and len(names) == num_classes:
        return [str(n) for n in names]
    pairs = getattr(dataset, "pairs", None)
    if pairs is not None and len(pairs) == num_classes:
        return ["+".join(str(d) for d in p) for p in pairs]
    class_ids = getattr(dataset, "class_ids", None)
    if class_ids is not None and len(class_ids) == num_classes:
        return [f"class {int(c)}" for c in class_ids]
    return [f"class {i}" for i in range(num_classes)]


def names_for_labels(dataset, labels) -> list[str]:
    """Names of the (0..C-1) split labels ``labels`` of ``dataset``."""
    labels = [int(c) for c in labels]
    num = int(getattr(dataset, "num_classes", 0) or 0)
    if num and max(labels) < num:
        names = class_names_of(dataset, num)
        return [names[c] for c in labels]
    return [f"class {c}" for c in labels]


# ------------------------------------------------------------------------------------------ command
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``gspdml analyze zeroshot``."""
    add_checkpoint_arguments(parser)
    add_dataset_arguments(parser)
    parser.add_argument("--repeats", type=int, default=1000, help="random class splits (default 1000, as the paper)")
    parser.add_argument("--ridge", type=float, default=0.05, help="ridge weight of the predictor fit (default 0.05)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random class splits (default 0)")
    parser.add_argument("--no-plot", action="store_true", help="do not write the prototype histogram PNG")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Run ``gspdml analyze zeroshot``."""
    from gspdml.analysis.zeroshot import evaluate_model_zero_shot

    if args.repeats < 1:
        raise InputError(f"--repeats must be >= 1; got {args.repeats}")
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be >= 1; got {args.batch_size}")
    device = resolve_device(args.device)
    model, cfg, extra = load_checkpoint_model(args.checkpoint)
    dataset, name, split = build_eval_dataset(cfg, args.dataset, args.root, args.split, args.option)
    try:
        result, outputs = evaluate_model_zero_shot(
            model, dataset, repeats=args.repeats, ridge=args.ridge, seed=args.seed,
            batch_size=args.batch_size, device=device, progress=not args.quiet,
        )
    except InputError as exc:
        raise InputError(f"checkpoint {extra['path']}: {exc}") from None

    from gspdml.analysis.zeroshot import class_means

    classes, z_per_class = class_means(outputs["marginals"], outputs["labels"])
    names = names_for_labels(dataset, classes)
    out_dir = default_output_dir(extra["path"], args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {
        "checkpoint": extra["path"],
        "dataset": name,
        "split": split,
        "num_samples": int(len(outputs["labels"])),
        **result.summary(),
        "map_l2_per_repeat": result.map_l2.tolist(),
        "map_cosine_per_repeat": result.map_cosine.tolist(),
        "class_names": names,
        "z_per_class": z_per_class.tolist(),
        "config": {
            "pooling": cfg.model.pooling,
            "pooling_kwargs": dict(cfg.model.pooling_kwargs),
            "loss": cfg.loss.name,
            "zero_shot_enabled": bool(cfg.loss.zero_shot.enabled),
        },
    }
    json_path = out_dir / f"zeroshot_{split}.json"
    json_path.write_text(json.dumps(report, indent=2))
    print(f"checkpoint: {extra['path']}  dataset: {name} ({split}, {report['num_samples']} samples)")
    print(result.format_table())
    print(f"wrote {json_path}")
    if not args.no_plot:
        from gspdml.viz.prototypes import plot_prototype_histograms

        png = plot_prototype_histograms(
            z_per_class, out_dir / f"prototypes_{split}.png", class_names=names,
            title=f"prototype histograms per class ({name}, {split})",
        )
        print(f"wrote {png}")
    return 0
