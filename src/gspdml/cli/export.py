"""``gspdml export RUN_OR_CKPT --format onnx|pt2 --out FILE``: a trained embedding model as an ONNX
file or a PyTorch 2 program, with its preprocessing in ``FILE.json``, verified against the
checkpoint before success is reported (see docs/export.md)."""
from __future__ import annotations

import argparse
from pathlib import Path

from gspdml.cli import common
from gspdml.errors import InputError

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="RUN_OR_CKPT",
                        help="a run folder (uses checkpoints/best.pt, else last.pt) or a checkpoint .pt file")
    parser.add_argument("--format", choices=["onnx", "pt2"], default=None,
                        help="onnx (needs pip install \"gspdml[export]\") or pt2 (torch.export); "
                             "default: from the --out suffix (.onnx / .pt2)")
    parser.add_argument("--out", required=True, metavar="FILE",
                        help="the exported file; its preprocessing is written to FILE.json")
    parser.add_argument("--batch-size", type=int, default=8, metavar="N",
                        help="size of the sample batch the export is verified on (default 8; batch 1 or 3 "
                             "is checked too, for the dynamic batch size)")
    parser.add_argument("--image-size", type=int, nargs="+", default=None, metavar="PX",
                        help="input image size, H or H W (default: the config's data.image_size; for data.transform=none "
                             "the size of one dataset item)")
    common.add_device_argument(parser, default="cpu")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample batches (default 0)")


def run(args: argparse.Namespace) -> int:
    from gspdml.engine.export import ATOL, RTOL, export_checkpoint

    common.check_positive("--batch-size", args.batch_size)
    if args.image_size is not None and (len(args.image_size) > 2 or min(args.image_size) < 1):
        raise InputError(f"--image-size takes one or two positive integers (H [W]), got {args.image_size}")
    device = common.resolve_device(args.device)
    meta = export_checkpoint(args.checkpoint, args.out, args.format, batch_size=args.batch_size, device=device,
                             image_size=args.image_size, seed=args.seed)
    out = Path(args.out)
    inp = meta["input"]
    shapes = ", ".join(f"{name} ({', '.join(str(d) for d in inp['shape'][name])}) {inp['dtype'][name]}"
                       for name in inp["names"])
    checks = meta["verification"]["samples"]
    worst = max(c["max_abs_diff"] for c in checks)
    sizes = " and ".join(str(c["batch_size"]) for c in checks)
    size_mb = sum((out.parent / f).stat().st_size for f in meta["files"]) / 1e6
    print(f"exported {meta['model']['backbone']} + {meta['model']['pooling']} from {meta['source']['checkpoint']} "
          f"(step {meta['source']['step']}) as {meta['format']}: {out} ({size_mb:.1f} MB)")
    print(f"input: {shapes}; output: embeddings (batch, {meta['embedding_dim']}) float32, L2-normalised")
    print(f"verified with {meta['verification']['runtime']} on sample batches of {sizes}: max |difference| "
          f"{worst:.2g} (tolerance {ATOL:.0e} + {RTOL:.0e} |reference|)")
    print(f"preprocessing: {out.name}.json")
    return 0
