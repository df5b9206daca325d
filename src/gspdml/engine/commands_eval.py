"""``gspdml eval``: retrieval metrics of a trained checkpoint on a dataset split."""
from __future__ import annotations

import argparse
import json

__all__ = ["add_arguments", "run", "evaluate_checkpoint"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="RUN_OR_CKPT",
                        help="run folder (uses checkpoints/best.pt, else last.pt) or a .pt file")
    parser.add_argument("--dataset", help="dataset name (default: the one the model was trained on)")
    parser.add_argument("--root", help="dataset folder (default: the training config's data.root)")
    parser.add_argument("--split", default=None, help="split to evaluate (default: data.test_split, e.g. test)")
    parser.add_argument("--gallery-split", default=None,
                        help="retrieve --split against this split (In-shop: --split query --gallery-split gallery)")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="dataset option (repeatable), value parsed as YAML")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--num-workers", type=int, default=None)
    parser.add_argument("--json", metavar="FILE", help="also write the metrics to this JSON file")
    parser.add_argument("--no-progress", action="store_true")


def evaluate_checkpoint(checkpoint, dataset=None, root=None, split=None, gallery_split=None, options=None,
                        batch_size=None, device="auto", num_workers=None, progress=True) -> dict:
    """Load a checkpoint, build the dataset split(s) with the eval transform, return the metrics."""
    from gspdml.config import apply_overrides, config_from_dict, to_dict
    from gspdml.engine.checkpoint import load_model_from_checkpoint
    from gspdml.engine.distributed import resolve_device
    from gspdml.engine.evaluate import evaluate_model
    from gspdml.engine.trainer import make_split

    model, cfg, extra = load_model_from_checkpoint(checkpoint)
    data = to_dict(cfg)
    if dataset is not None and dataset != cfg.data.dataset:
        data["data"]["options"] = {}  # the training dataset's options do not apply to another dataset
    over = []
    if dataset is not None:
        over.append(f"data.dataset={dataset}")
    if root is not None:
        over.append(f"data.root={root}")
    cfg = config_from_dict(apply_overrides(data, over + [f"data.options.{o}" for o in options or []]))
    split = split or cfg.data.test_split
    if gallery_split is None and split == cfg.data.test_split:
        gallery_split = cfg.data.gallery_split
    dev = resolve_device(device)
    query = make_split(cfg, split, False)
    gallery = make_split(cfg, gallery_split, False) if gallery_split else None
    metrics = evaluate_model(
        model, query, gallery, batch_size=batch_size or cfg.eval.batch_size, recall_ks=cfg.eval.recall_ks,
        device=dev, progress=progress, num_workers=cfg.data.num_workers if num_workers is None else num_workers,
    )
    return {"checkpoint": extra["path"], "dataset": cfg.data.dataset, "split": split,
            "gallery_split": gallery_split, "metrics": metrics}


def run(args: argparse.Namespace) -> int:
    out = evaluate_checkpoint(
        args.checkpoint, args.dataset, args.root, args.split, args.gallery_split, args.option,
        args.batch_size, args.device, args.num_workers, progress=not args.no_progress,
    )
    where = out["split"] + (f" vs {out['gallery_split']}" if out["gallery_split"] else " (self-retrieval)")
    print(f"{out['dataset']} {where}  [{out['checkpoint']}]")
    width = max(len(k) for k in out["metrics"])
    for k, v in out["metrics"].items():
        print(f"  {k:<{width}}  {100 * v:6.2f}")
    if args.json:
        from pathlib import Path

        from gspdml.engine.runs import write_json_atomic

        write_json_atomic(out, Path(args.json))
    return 0
