"""``gspdml eval``: retrieval metrics of a trained checkpoint on a dataset split.

The checkpoint is read safely (tensors and plain values only; ``--trust-checkpoint`` opts into
full unpickling for a trusted file). A checkpoint with NaN/inf weights, or a model whose embeddings
are all identical or of zero norm, is refused instead of reporting chance-level metrics."""
from __future__ import annotations

import argparse

from gspdml.cli import common

__all__ = ["add_arguments", "run", "evaluate_checkpoint"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_checkpoint_argument(parser)
    common.add_dataset_arguments(parser)
    parser.add_argument("--gallery-split", default=None,
                        help="retrieve --split against this split (In-shop: --split query --gallery-split gallery)")
    common.add_batch_size_argument(parser, None)
    common.add_device_argument(parser)
    parser.add_argument("--num-workers", type=int, default=None,
                        help="DataLoader workers (default: the config's data.num_workers)")
    parser.add_argument("--knn", default="auto", choices=["auto", "torch", "faiss", "faiss-gpu"],
                        help="exact kNN backend (default auto: faiss GPU, torch on CUDA, or the faster of torch "
                             "and faiss-cpu on the CPU; the choice is logged)")
    parser.add_argument("--chunk-size", type=int, default=None, metavar="N",
                        help="rows per query chunk and per gallery chunk of the kNN search (default: blocks of "
                             "~256 MiB)")
    parser.add_argument("--memmap", default=None, metavar="DIR",
                        help="write the embeddings memory-mapped to a temporary folder under DIR (removed "
                             "afterwards) and search them chunk by chunk: galleries larger than RAM")
    parser.add_argument("--precision", default="fp32", choices=["auto", "fp32", "bf16", "fp16"],
                        help="autocast precision of the embedding pass (default fp32; bf16 on CPU and CUDA, fp16 "
                             "on CUDA only; auto = fp16 on CUDA, fp32 on the CPU)")
    parser.add_argument("--json", metavar="FILE", help="also write the metrics to this JSON file")
    common.add_progress_argument(parser)


def evaluate_checkpoint(checkpoint, dataset=None, root=None, split=None, gallery_split=None, options=(),
                        batch_size=None, device="auto", num_workers=None, progress=True, trust=False,
                        knn="auto", chunk_size=None, memmap=None, precision="fp32") -> dict:
    """Load a checkpoint, build the split(s) with the eval transform and return the metrics
    (InputError for degenerate embeddings, CheckpointError for non-finite weights). ``knn``,
    ``chunk_size``, ``memmap``: see :func:`gspdml.engine.evaluate.evaluate_model` (``memmap_dir``)."""
    from gspdml.engine.checkpoint import load_model_from_checkpoint
    from gspdml.engine.evaluate import evaluate_model

    from gspdml.config import resolve_precision

    dev = common.resolve_device(device)
    precision = resolve_precision(precision, dev.type)  # fp16 on the CPU: a clear error before any work
    common.check_positive("--batch-size", batch_size)
    common.check_positive("--chunk-size", chunk_size)
    model, cfg, extra = load_model_from_checkpoint(checkpoint, trust=trust)
    cfg = common.eval_config(cfg, dataset, root, options)
    query, split = common.eval_dataset(cfg, split)
    if gallery_split is None and split == cfg.data.test_split:
        gallery_split = cfg.data.gallery_split
    gallery = common.eval_dataset(cfg, gallery_split)[0] if gallery_split else None
    metrics = evaluate_model(
        model, query, gallery, batch_size=batch_size or cfg.eval.batch_size, recall_ks=cfg.eval.recall_ks,
        extra_metrics=cfg.eval.metrics,
        device=dev, progress=progress, num_workers=cfg.data.num_workers if num_workers is None else num_workers,
        refuse_collapsed=True, knn=knn, chunk_size=chunk_size, memmap_dir=memmap, precision=precision,
    )
    return {"checkpoint": extra["path"], "dataset": cfg.data.dataset, "split": split,
            "gallery_split": gallery_split, "metrics": metrics}


def run(args: argparse.Namespace) -> int:
    out = evaluate_checkpoint(
        args.checkpoint, args.dataset, args.root, args.split, args.gallery_split, args.option,
        args.batch_size, args.device, args.num_workers, progress=not args.no_progress,
        trust=getattr(args, "trust_checkpoint", False), knn=args.knn, chunk_size=args.chunk_size,
        memmap=args.memmap, precision=args.precision,
    )
    where = out["split"] + (f" vs {out['gallery_split']}" if out["gallery_split"] else " (self-retrieval)")
    print(f"{out['dataset']} {where}  [{out['checkpoint']}]")
    width = max(len(k) for k in out["metrics"])
    for k, v in out["metrics"].items():
        print(f"  {k:<{width}}  {100 * v:6.2f}")
    if args.json:
        from gspdml.io import write_json

        write_json(args.json, out)
    return 0
