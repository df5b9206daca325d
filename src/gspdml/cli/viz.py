"""``gspdml viz weights`` and ``gspdml viz prototypes``: plots of a trained checkpoint.

The dataset defaults to the checkpoint config's (evaluation transform); the PNGs go to ``--out``
(default ``<run folder>/analysis``). The numbers come from :mod:`gspdml.analysis`, the figures
from :mod:`gspdml.viz`.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from gspdml.cli import common
from gspdml.errors import InputError

__all__ = ["add_arguments_weights", "run_weights", "add_arguments_prototypes", "run_prototypes",
           "add_arguments_assignments", "run_assignments"]


# ------------------------------------------------------------------------------------------ weights
def add_arguments_weights(parser: argparse.ArgumentParser) -> None:
    common.add_checkpoint_analysis_arguments(parser)
    parser.add_argument("--images", nargs="+", default=None, metavar="PATH",
                        help="image files to show (instead of dataset samples)")
    parser.add_argument("--num", type=int, default=16, help="number of dataset samples to show (default 16)")
    parser.add_argument("--by-prototype", action="store_true",
                        help="colour each location by its dominant prototype (paper Fig. 5) instead of the weight scale")
    parser.add_argument("--ncols", type=int, default=None, help="panels per row (default up to 8)")
    parser.add_argument("--name", default=None, help="output file name (default weights_<source>.png)")


def _load_image_files(paths: list[str], cfg, model):
    """Image files with the checkpoint's evaluation transform: a list of (C, H, W) tensors."""
    import torch
    from torchvision.transforms import v2

    from gspdml.data.images import load_image
    from gspdml.engine.datasets import transform_for

    in_channels = getattr(getattr(model, "backbone", None), "in_channels", 3)
    mode = "L" if in_channels == 1 else "RGB"
    transform = transform_for(cfg, train=False) or v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])
    tensors = []
    for path in paths:
        x = transform(load_image(path, mode=mode))
        if isinstance(x, torch.Tensor) and x.ndim == 3 and x.shape[0] != in_channels and in_channels == 1:
            x = x.mean(0, keepdim=True)
        tensors.append(torch.as_tensor(x, dtype=torch.float32))
    sizes = {tuple(t.shape) for t in tensors}
    if len(sizes) > 1:
        raise InputError(
            f"the images have different sizes after the checkpoint's transform ({sorted(sizes)}); "
            "use a config with a fixed-size evaluation transform or images of one size"
        )
    return tensors


def run_weights(args: argparse.Namespace) -> int:
    import torch

    from gspdml.analysis.weights import check_image_model, find_gsp, pooling_weight_maps
    from gspdml.viz.weights import nearest_prototypes, plot_weight_maps, to_display_image

    common.check_positive("--num", args.num)
    device, model, cfg, extra, out_dir = common.load_for_analysis(args)
    check_image_model(model, "gspdml viz weights")
    if args.images:
        xs = _load_image_files(args.images, cfg, model)
        titles = [Path(p).name for p in args.images]
        source = "images"
    else:
        dataset, split = common.eval_dataset(cfg, args.split)
        name = cfg.data.dataset
        count = min(args.num, len(dataset))
        if count == 0:
            raise InputError(f"dataset {name!r} split {split!r} is empty")
        # spread the samples over the dataset (datasets are often sorted by class)
        idx = np.unique(np.linspace(0, len(dataset) - 1, count).round().astype(int))
        items = [dataset[int(i)] for i in idx]
        xs = [torch.as_tensor(x) for x, _ in items]
        titles = common.names_for_labels(dataset, [int(y) for _, y in items])
        source = f"{name}_{split}"

    gsp = find_gsp(model) if args.by_prototype else None
    weights, features = pooling_weight_maps(model, torch.stack(xs), batch_size=args.batch_size, device=device, gsp=gsp)
    norm = common.display_normalization(cfg)
    images = np.stack([to_display_image(x, norm) for x in xs])
    dominant, num_prototypes = None, None
    if gsp is not None:
        if not gsp.is_initialized:
            print("note: the GSP prototypes are not initialised yet (k-center pending); the weights are uniform")
        dominant = nearest_prototypes(features, gsp.prototypes)
        num_prototypes = int(gsp.prototypes.shape[0])
    file_name = args.name or f"weights_{source}{'_prototypes' if args.by_prototype else ''}.png"
    common.check_output_file(out_dir / file_name, "--name" if args.name else "--out")
    path = plot_weight_maps(
        images, weights, out_dir / file_name, titles=titles, dominant=dominant,
        num_prototypes=num_prototypes, ncols=args.ncols, title=f"pooling weights ({cfg.model.pooling})",
    )
    print(f"wrote {path}")
    return 0


# --------------------------------------------------------------------------------------- prototypes
def add_arguments_prototypes(parser: argparse.ArgumentParser) -> None:
    common.add_checkpoint_analysis_arguments(parser)
    parser.add_argument("--limit", type=int, default=None, help="use only the first N samples")
    common.add_progress_argument(parser)


def run_prototypes(args: argparse.Namespace) -> int:
    from gspdml.analysis.zeroshot import class_means, collect_model_outputs
    from gspdml.viz.prototypes import plot_prototype_histograms

    device, model, cfg, extra, out_dir = common.load_for_analysis(args)
    dataset, split = common.eval_dataset(cfg, args.split)
    name = cfg.data.dataset
    outputs = collect_model_outputs(
        model, dataset, batch_size=args.batch_size, device=device, limit=args.limit,
        keep=("marginals",), progress=not args.no_progress,
    )
    classes, z_per_class = class_means(outputs["marginals"], outputs["labels"])
    path = plot_prototype_histograms(
        z_per_class, out_dir / f"prototypes_{name}_{split}.png",
        class_names=common.names_for_labels(dataset, classes),
        title=f"prototype histograms per class ({name}, {split}; "
              f"L_ZS {'on' if cfg.loss.zero_shot.enabled else 'off'})",
    )
    print(f"wrote {path}")
    return 0


# -------------------------------------------------------------------------------------- assignments
def add_arguments_assignments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="RUN_OR_CKPT",
                        help="a run folder (uses checkpoints/best.pt, else last.pt) or a checkpoint .pt file")
    common.add_trust_argument(parser, "the checkpoint")
    common.add_dataset_arguments(parser)
    common.add_device_argument(parser)
    common.add_batch_size_argument(parser, 64)
    common.add_output_argument(parser, "output folder (default: <run folder>/analysis)")
    parser.add_argument("--num", type=int, default=8, help="number of dataset samples to show (default 8)")
    parser.add_argument("--ncols", type=int, default=None, help="panels per row (default up to 8)")
    parser.add_argument("--min-weight", type=float, default=1.0,
                        help="colour only locations whose pooling weight x n is at least this (1 = uniform; default 1)")
    parser.add_argument("--name", default=None, help="output file name (default assignments_<dataset>_<split>.png)")


def run_assignments(args: argparse.Namespace) -> int:
    import torch

    from gspdml.analysis.weights import check_image_model, find_gsp, pooling_weight_maps
    from gspdml.analysis.assignments import dominant_assignments, transport_plans
    from gspdml.viz.assignments import plot_assignments
    from gspdml.viz.weights import to_display_image

    common.check_positive("--num", args.num)
    if not args.min_weight >= 0:
        raise InputError(f"--min-weight must be >= 0, got {args.min_weight}")
    device, model, cfg, extra, out_dir = common.load_for_analysis(args)
    check_image_model(model, "gspdml viz assignments")
    gsp = find_gsp(model)
    dataset, split = common.eval_dataset(cfg, args.split)
    count = min(args.num, len(dataset))
    if count == 0:
        raise InputError(f"dataset {cfg.data.dataset!r} split {split!r} is empty")
    idx = np.unique(np.linspace(0, len(dataset) - 1, count).round().astype(int))
    items = [dataset[int(i)] for i in idx]
    xs = torch.stack([torch.as_tensor(x) for x, _ in items])
    _, features = pooling_weight_maps(model, xs, batch_size=args.batch_size, device=device, gsp=gsp)
    if not gsp.is_initialized:
        print("note: the GSP prototypes are not initialised yet (k-center pending); the assignments use the "
              "current prototypes")
    plan, weights = transport_plans(features, gsp.prototypes, gsp.mu, gsp.eps, solver=gsp.solver, iters=gsp.iters)
    dominant = dominant_assignments(plan, weights, args.min_weight)
    norm = common.display_normalization(cfg)
    images = np.stack([to_display_image(x, norm) for x in xs])
    file_name = args.name or f"assignments_{cfg.data.dataset}_{split}.png"
    common.check_output_file(out_dir / file_name, "--name" if args.name else "--out")
    path = plot_assignments(
        images, dominant, weights, out_dir / file_name, num_prototypes=int(gsp.prototypes.shape[0]),
        titles=common.names_for_labels(dataset, [int(y) for _, y in items]), ncols=args.ncols,
        title=f"dominant prototype per location ({cfg.name}, {split})",
    )
    print(f"wrote {path}")
    return 0
