"""``gspdml analyze zeroshot``: zero-shot attribute evaluation of a trained checkpoint.

The dataset defaults to the checkpoint config's (same root and options), split ``--split``
(default: the config's test split), with the config's evaluation transform. Writes
``zeroshot_<split>.json`` (summary, per-repeat MAPs, per-class mean prototype marginals) and
``prototypes_<split>.png`` (per-class prototype histograms) to ``--out`` (default
``<run folder>/analysis``) and prints the result table.
"""
from __future__ import annotations

import argparse

from gspdml.cli import common
from gspdml.errors import InputError

__all__ = ["add_arguments_zeroshot", "run_zeroshot"]


def add_arguments_zeroshot(parser: argparse.ArgumentParser) -> None:
    common.add_checkpoint_analysis_arguments(parser)
    parser.add_argument("--repeats", type=int, default=1000, help="random class splits (default 1000, as the paper)")
    parser.add_argument("--ridge", type=float, default=0.05, help="ridge weight of the predictor fit (default 0.05)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random class splits (default 0)")
    parser.add_argument("--no-plot", action="store_true", help="do not write the prototype histogram PNG")
    common.add_progress_argument(parser)


def run_zeroshot(args: argparse.Namespace) -> int:
    from gspdml.analysis.zeroshot import class_means, evaluate_model_zero_shot
    from gspdml.io import write_json

    common.check_positive("--repeats", args.repeats)
    device, model, cfg, extra, out_dir = common.load_for_analysis(args)
    dataset, split = common.eval_dataset(cfg, args.split)
    name = cfg.data.dataset
    try:
        result, outputs = evaluate_model_zero_shot(
            model, dataset, repeats=args.repeats, ridge=args.ridge, seed=args.seed,
            batch_size=args.batch_size, device=device, progress=not args.no_progress,
        )
    except InputError as exc:
        raise InputError(f"checkpoint {extra['path']}: {exc}") from None

    classes, z_per_class = class_means(outputs["marginals"], outputs["labels"])
    names = common.names_for_labels(dataset, classes)
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
    json_path = write_json(out_dir / f"zeroshot_{split}.json", report)
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
