"""``gspdml viz weights`` and ``gspdml viz prototypes``: plots of a trained checkpoint.

Usage::

    # pooling-weight maps over the first 16 test images (or over your own image files)
    gspdml viz weights --checkpoint runs/digits_gsp --num 16
    gspdml viz weights --checkpoint runs/cub_gsp --images a.jpg b.jpg --by-prototype
    # per-class prototype histograms (paper Fig. 5) on the test split
    gspdml viz prototypes --checkpoint runs/digits_gsp_zs --split test

The dataset defaults to the one in the checkpoint's config (evaluation transform); the PNGs go
to ``--out`` (default ``<run folder>/analysis``).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from gspdml.errors import InputError

__all__ = ["add_arguments_weights", "run_weights", "add_arguments_prototypes", "run_prototypes"]


# ------------------------------------------------------------------------------------------ weights
def add_arguments_weights(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``gspdml viz weights``."""
    from gspdml.analysis.commands import add_checkpoint_arguments, add_dataset_arguments

    add_checkpoint_arguments(parser)
    parser.add_argument("--images", nargs="+", default=None, metavar="PATH",
                        help="image files to show (instead of dataset samples)")
    add_dataset_arguments(parser)
    parser.add_argument("--num", type=int, default=16, help="number of dataset samples to show (default 16)")
    parser.add_argument("--by-prototype", action="store_true",
                        help="colour each location by its dominant prototype (paper Fig. 5) instead of the weight scale")
    parser.add_argument("--ncols", type=int, default=None, help="panels per row (default up to 8)")
    parser.add_argument("--name", default=None, help="output file name (default weights_<source>.png)")


def _check_image_model(model, what: str) -> None:
    backbone = getattr(model, "backbone", None)
    if getattr(backbone, "input_kind", "image") != "image":
        raise InputError(
            f"{what} needs an image model; this checkpoint's backbone takes "
            f"{getattr(backbone, 'input_kind', '?')} (token sets have no spatial weight map)"
        )


def _load_image_files(paths: list[str], cfg, model):
    """Load image files with the checkpoint's evaluation transform: list of (C, H, W) tensors."""
    import torch
    from torchvision.transforms import v2

    from gspdml.analysis.commands import eval_transform
    from gspdml.data.images import load_image

    in_channels = getattr(getattr(model, "backbone", None), "in_channels", 3)
    mode = "L" if in_channels == 1 else "RGB"
    transform = eval_transform(cfg) or v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])
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


def _find_gsp(model):
    """The model's GSP layer (also inside combined poolings such as gmp+gsp)."""
    from gspdml.pooling.gsp import GSP

    for module in model.modules():
        if isinstance(module, GSP):
            return module
    pooling = type(getattr(model, "pooling", model)).__name__
    raise InputError(f"--by-prototype needs a model with GSP pooling (prototypes); the model's pooling is {pooling}")


def run_weights(args: argparse.Namespace) -> int:
    """Run ``gspdml viz weights``."""
    import torch

    from gspdml.analysis.commands import (
        build_eval_dataset,
        default_output_dir,
        display_normalization,
        load_checkpoint_model,
        names_for_labels,
        resolve_device,
    )
    from gspdml.viz.weights import nearest_prototypes, plot_weight_maps, to_display_image

    if args.num < 1:
        raise InputError(f"--num must be >= 1; got {args.num}")
    device = resolve_device(args.device)
    model, cfg, extra = load_checkpoint_model(args.checkpoint)
    _check_image_model(model, "gspdml viz weights")
    if args.images:
        xs = _load_image_files(args.images, cfg, model)
        titles = [Path(p).name for p in args.images]
        source = "images"
    else:
        dataset, name, split = build_eval_dataset(cfg, args.dataset, args.root, args.split, args.option)
        count = min(args.num, len(dataset))
        if count == 0:
            raise InputError(f"dataset {name!r} split {split!r} is empty")
        # spread the samples over the dataset (datasets are often sorted by class)
        idx = np.unique(np.linspace(0, len(dataset) - 1, count).round().astype(int))
        items = [dataset[int(i)] for i in idx]
        xs = [torch.as_tensor(x) for x, _ in items]
        titles = names_for_labels(dataset, [int(y) for _, y in items])
        source = f"{name}_{split}"

    gsp = _find_gsp(model) if args.by_prototype else None
    captured: list = []
    hook = gsp.register_forward_hook(lambda mod, inp, out: captured.append(inp[0].detach())) if gsp else None
    weights = []
    model.to(device).eval()
    try:
        with torch.no_grad():
            for start in range(0, len(xs), args.batch_size):
                batch = torch.stack(xs[start:start + args.batch_size]).to(device)
                _, details = model(batch, return_details=True)
                w = details.get("weights") if isinstance(details, dict) else None
                if w is None or w.ndim != 3:
                    raise InputError("the model's pooling gives no (B, h, w) weight map in its details")
                weights.append(w.float().cpu())
    finally:
        if hook is not None:
            hook.remove()
    weights_np = torch.cat(weights).numpy()
    norm = display_normalization(cfg)
    images = np.stack([to_display_image(x, norm) for x in xs])
    dominant, num_prototypes = None, None
    if gsp is not None:
        if not gsp.is_initialized:
            print("note: the GSP prototypes are not initialised yet (k-center pending); the weights are uniform")
        dominant = nearest_prototypes(torch.cat(captured), gsp.prototypes)
        num_prototypes = int(gsp.prototypes.shape[0])
    out_dir = default_output_dir(extra["path"], args.out)
    file_name = args.name or f"weights_{source}{'_prototypes' if args.by_prototype else ''}.png"
    path = plot_weight_maps(
        images, weights_np, out_dir / file_name, titles=titles, dominant=dominant,
        num_prototypes=num_prototypes, ncols=args.ncols,
        title=f"pooling weights ({cfg.model.pooling})",
    )
    print(f"wrote {path}")
    return 0


# --------------------------------------------------------------------------------------- prototypes
def add_arguments_prototypes(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``gspdml viz prototypes``."""
    from gspdml.analysis.commands import add_checkpoint_arguments, add_dataset_arguments

    add_checkpoint_arguments(parser)
    add_dataset_arguments(parser)
    parser.add_argument("--limit", type=int, default=None, help="use only the first N samples")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run_prototypes(args: argparse.Namespace) -> int:
    """Run ``gspdml viz prototypes``."""
    from gspdml.analysis.commands import (
        build_eval_dataset,
        default_output_dir,
        load_checkpoint_model,
        names_for_labels,
        resolve_device,
    )
    from gspdml.analysis.zeroshot import class_means, collect_model_outputs
    from gspdml.viz.prototypes import plot_prototype_histograms

    device = resolve_device(args.device)
    model, cfg, extra = load_checkpoint_model(args.checkpoint)
    dataset, name, split = build_eval_dataset(cfg, args.dataset, args.root, args.split, args.option)
    outputs = collect_model_outputs(
        model, dataset, batch_size=args.batch_size, device=device, limit=args.limit,
        keep=("marginals",), progress=not args.quiet,
    )
    classes, z_per_class = class_means(outputs["marginals"], outputs["labels"])
    out_dir = default_output_dir(extra["path"], args.out)
    path = plot_prototype_histograms(
        z_per_class, out_dir / f"prototypes_{name}_{split}.png", class_names=names_for_labels(dataset, classes),
        title=f"prototype histograms per class ({name}, {split}; "
              f"L_ZS {'on' if cfg.loss.zero_shot.enabled else 'off'})",
    )
    print(f"wrote {path}")
    return 0
