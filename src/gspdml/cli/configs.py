"""``gspdml configs``: the configs shipped with gspdml, usable as ``gspdml train -c NAME``."""
from __future__ import annotations

import argparse

__all__ = ["add_arguments", "run", "shipped_config_table"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true",
                        help="print a JSON list (name, path, dataset, loss, pooling, zero_shot) instead of a table")


def shipped_config_table() -> list[dict]:
    """One entry per shipped config: name, path, dataset, loss, pooling and whether L_ZS is on."""
    from gspdml.config import load_config, shipped_configs

    rows = []
    for name, path in shipped_configs().items():
        cfg = load_config(path)
        rows.append({"name": name, "path": str(path), "dataset": cfg.data.dataset, "loss": cfg.loss.name,
                     "pooling": cfg.model.pooling, "zero_shot": bool(cfg.loss.zero_shot.enabled)})
    return rows


def run(args: argparse.Namespace) -> int:
    rows = shipped_config_table()
    if args.json:
        import json

        print(json.dumps(rows, indent=2))
        return 0
    from gspdml.io import format_table

    print(format_table(["name", "dataset", "loss", "pooling", "L_ZS"],
                       [[r["name"], r["dataset"], r["loss"], r["pooling"], "on" if r["zero_shot"] else "off"]
                        for r in rows], markdown=False))
    return 0
