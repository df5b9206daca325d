"""The ``gspdml`` command-line tool.

Each sub-command lives in its own module, which provides ``add_arguments(parser)`` and
``run(args) -> int``; this file only wires them together. User errors
(:class:`gspdml.errors.GspdmlError`) are printed as one clear message with exit code 2;
``--debug`` shows the full traceback instead.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# (command, module, help). A command with sub-commands maps to a dict of the same shape.
COMMANDS: dict[str, object] = {
    "demo": ("gspdml.demo.command", "GAP vs GSP (+L_ZS) on data shipped with the install; writes a report"),
    "train": ("gspdml.engine.commands_train", "train an embedding model from a YAML config"),
    "eval": ("gspdml.engine.commands_eval", "evaluate a checkpoint on a dataset (MAP@R, R-Precision, P@1, Recall@K)"),
    "protocol": ("gspdml.engine.commands_protocol", "run the MLRC 4-fold protocol (128D mean and 512D concatenation)"),
    "bench": {
        "gsp": ("gspdml.bench.gsp", "GSP solver speed vs GAP, the cost floor and the paper's fixed point"),
        "train": ("gspdml.bench.train", "training-step throughput, GAP vs GSP"),
        "eval": ("gspdml.bench.evaluate", "MAP@R evaluation time, faiss vs plain torch"),
    },
    "analyze": {
        "zeroshot": ("gspdml.analysis.commands", "zero-shot attribute evaluation of a trained checkpoint"),
    },
    "viz": {
        "weights": ("gspdml.viz.commands", "pooling-weight maps of a checkpoint over images"),
        "prototypes": ("gspdml.viz.commands", "per-class prototype histograms of a checkpoint"),
    },
}


def _chosen_path(argv: list[str]) -> list[str]:
    """The command words of ``argv`` (e.g. ``["bench", "gsp"]``), found without importing anything."""
    path, node = [], COMMANDS
    for token in argv:
        if token.startswith("-"):
            continue
        if isinstance(node, dict) and token in node:
            path.append(token)
            node = node[token]
            continue
        break
    return path


def _add(sub, name: str, spec, chosen: list[str]) -> None:
    if isinstance(spec, dict):
        parser = sub.add_parser(name, help=f"{name} sub-commands")
        inner = parser.add_subparsers(dest=f"{name}_command", metavar="COMMAND")
        inner.required = True
        rest = chosen[1:] if chosen[:1] == [name] else []
        for child, child_spec in spec.items():
            _add(inner, child, child_spec, rest)
        return
    module_name, help_text = spec
    parser = sub.add_parser(name, help=help_text, description=help_text)
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    if chosen[:1] != [name]:
        return  # only the chosen command's module is imported (fast --help, isolated failures)
    module = importlib.import_module(module_name)
    adder = getattr(module, f"add_arguments_{name}", None) or module.add_arguments
    runner = getattr(module, f"run_{name}", None) or module.run
    adder(parser)
    parser.set_defaults(_run=runner)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    from gspdml import __version__

    chosen = _chosen_path(list(sys.argv[1:] if argv is None else argv))
    parser = argparse.ArgumentParser(
        prog="gspdml",
        description="Generalized Sum Pooling for deep metric learning: train, evaluate, analyse, benchmark.",
    )
    parser.add_argument("--version", action="version", version=f"gspdml {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, spec in COMMANDS.items():
        _add(sub, name, spec, chosen)
    return parser


def main(argv: list[str] | None = None) -> int:
    from gspdml.errors import GspdmlError

    parser = build_parser(argv)
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except GspdmlError as exc:
        if getattr(args, "debug", False):
            raise
        print(f"gspdml {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
