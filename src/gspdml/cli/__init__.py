"""The ``gspdml`` command-line tool: the command table, routing and error handling.

Every command lives in one module of this package. A table entry ``"gspdml.cli.train"`` names a
module with ``add_arguments(parser)`` and ``run(args) -> int``; ``"gspdml.cli.bench:gsp"`` names
``add_arguments_gsp`` / ``run_gsp`` of a module that holds several commands. Only the chosen
command's module is imported (fast ``--help``, isolated failures). User errors
(:class:`gspdml.errors.GspdmlError`, also when raised inside a DataLoader worker process) and
file-system errors (:class:`OSError`: a full disk, a read-only folder) print as one line
``gspdml <command>: error: ...`` with exit code 2 (``--debug`` re-raises them); Ctrl-C exits with 130.

Output paths are checked before the command runs: an option whose metavar is ``DIR`` (a folder,
e.g. ``--out``) or ``FILE`` (a file, e.g. ``--json``) names an output, and a value that cannot be
written (a file given as a folder, a read-only folder, ...) is refused with
``cannot write PATH (OPTION): REASON`` before any work starts.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import NamedTuple

__all__ = ["Command", "COMMANDS", "build_parser", "main", "check_outputs", "error_message"]


class Command(NamedTuple):
    """One leaf of the command table: ``module[:name]``, a one-line help and an example."""

    target: str
    help: str
    example: str = ""


COMMANDS: dict[str, object] = {
    "demo": Command("gspdml.cli.demo", "GAP vs GSP (+L_ZS) on data shipped with the install; writes a report",
                    "gspdml demo --quick --out demo_run"),
    "train": Command("gspdml.cli.train", "train an embedding model from a config (shipped name or YAML file)",
                     "gspdml train -c digits_collage_gsp train.max_steps=100 --out runs"),
    "eval": Command("gspdml.cli.eval", "evaluate a checkpoint on a dataset (MAP@R, R-Precision, P@1, Recall@K)",
                    "gspdml eval --checkpoint runs/digits_collage_gsp --split test --json eval.json"),
    "protocol": Command("gspdml.cli.protocol", "run the MLRC 4-fold protocol (128D mean and 512D concatenation)",
                        "gspdml protocol -c cub_ms_gsp --repeats 3 data.root=/data/CUB_200_2011"),
    "export": Command("gspdml.cli.export", "export a trained model to ONNX or a torch.export .pt2 file, verified",
                      "gspdml export runs/digits_collage_gsp --format onnx --out model.onnx"),
    "pretrain": Command("gspdml.cli.pretrain", "pretrain a backbone by classification (ResNet-20 on CIFAR-100)",
                        "gspdml pretrain cifar100 --root data --out runs"),
    "configs": Command("gspdml.cli.configs", "list the configs shipped with gspdml (usable as -c NAME)",
                       "gspdml configs --json"),
    "bench": {
        "gsp": Command("gspdml.cli.bench:gsp", "GSP solver speed vs GAP, the cost floor and the paper's fixed point",
                       "gspdml bench gsp --quick --threads 1"),
        "train": Command("gspdml.cli.bench:train", "training-step throughput, GAP vs GSP",
                         "gspdml bench train --quick --backbones resnet50"),
        "eval": Command("gspdml.cli.bench:eval", "MAP@R evaluation time, faiss vs plain torch",
                        "gspdml bench eval --quick --json bench_eval.json"),
    },
    "study": {
        "poolings": Command("gspdml.cli.study:poolings",
                            "every pooling x seeds on the Digits Collage: ranked table with the seed spread, plot",
                            "gspdml study poolings --quick --poolings gap gsp --out zoo_run"),
    },
    "analyze": {
        "zeroshot": Command("gspdml.cli.analyze:zeroshot", "zero-shot attribute evaluation of a trained checkpoint",
                            "gspdml analyze zeroshot --checkpoint runs/digits_collage_gsp --repeats 1000"),
    },
    "viz": {
        "weights": Command("gspdml.cli.viz:weights", "pooling-weight maps of a checkpoint over images",
                           "gspdml viz weights --checkpoint runs/digits_collage_gsp --num 16 --by-prototype"),
        "prototypes": Command("gspdml.cli.viz:prototypes", "per-class prototype histograms of a checkpoint",
                              "gspdml viz prototypes --checkpoint runs/digits_collage_gsp --split test"),
        "assignments": Command("gspdml.cli.viz:assignments", "images coloured by each location's dominant prototype (Fig. 5)",
                               "gspdml viz assignments runs/cifar10_pnca_fig5 --num 8"),
    },
}


#: option metavars that mark an output path: a folder or a file
_OUTPUT_METAVARS = ("DIR", "FILE")


def _epilog(*examples: str) -> str | None:
    """The ``--help`` ending: ``example:`` (or ``examples:``) and the example command lines."""
    examples = [e for e in examples if e]
    if not examples:
        return None
    return ("examples:" if len(examples) > 1 else "example:") + "".join(f"\n  {e}" for e in examples)


def _leaves(node: dict, path: tuple[str, ...] = ()):
    """``(path, Command)`` of every command below ``node``."""
    for name, spec in node.items():
        if isinstance(spec, dict):
            yield from _leaves(spec, path + (name,))
        else:
            yield path + (name,), Command(*spec)


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


def _add(sub, name: str, spec, chosen: list[str], prefix: str) -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    if isinstance(spec, dict):
        examples = [cmd.example for _, cmd in _leaves(spec)]
        parser = sub.add_parser(name, help=f"{name} sub-commands", epilog=_epilog(*examples),
                                formatter_class=formatter)
        inner = parser.add_subparsers(dest=f"{name}_command", metavar="COMMAND")
        inner.required = True
        rest = chosen[1:] if chosen[:1] == [name] else []
        for child, child_spec in spec.items():
            _add(inner, child, child_spec, rest, f"{prefix} {name}")
        return
    cmd = Command(*spec)
    parser = sub.add_parser(name, help=cmd.help, description=cmd.help, epilog=_epilog(cmd.example),
                            formatter_class=formatter)
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    parser.set_defaults(_command=f"{prefix} {name}".strip())
    if chosen[:1] != [name]:
        return  # only the chosen command's module is imported
    module_name, _, suffix = cmd.target.partition(":")
    module = importlib.import_module(module_name)
    adder = getattr(module, f"add_arguments_{suffix}" if suffix else "add_arguments")
    runner = getattr(module, f"run_{suffix}" if suffix else "run")
    adder(parser)
    outputs = [(a.dest, a.metavar, a.option_strings[-1]) for a in parser._actions
               if a.option_strings and a.metavar in _OUTPUT_METAVARS]
    parser.set_defaults(_run=runner, _outputs=outputs)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The argument parser; only the command chosen in ``argv`` gets its full arguments."""
    from gspdml import __version__

    chosen = _chosen_path(list(sys.argv[1:] if argv is None else argv))
    parser = argparse.ArgumentParser(
        prog="gspdml",
        description="Generalized Sum Pooling for deep metric learning: train, evaluate, analyse, benchmark.",
        epilog=_epilog(COMMANDS["train"].example), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"gspdml {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, spec in COMMANDS.items():
        _add(sub, name, spec, chosen, "")
    return parser


def _parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse ``argv``; positionals after flags go to the command's ``_extra_positionals`` list
    (e.g. ``overrides``), so ``gspdml train -c C a=1 --no-progress b=2`` keeps both overrides."""
    args, extra = parser.parse_known_args(argv)
    dest = getattr(args, "_extra_positionals", None)
    unknown = [e for e in extra if dest is None or e.startswith("-")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if extra:
        setattr(args, dest, list(getattr(args, dest) or []) + extra)
    return args


def check_outputs(args: argparse.Namespace) -> None:
    """InputError unless every output path given on the command line (options with metavar ``DIR``
    or ``FILE``) can be written; see :func:`gspdml.cli.common.check_output_dir`."""
    from gspdml.cli.common import check_output_dir, check_output_file

    for dest, metavar, option in getattr(args, "_outputs", ()):
        value = getattr(args, dest, None)
        if isinstance(value, str) and value:
            (check_output_dir if metavar == "DIR" else check_output_file)(value, option)


def error_message(exc: BaseException) -> str:
    """The one line printed for a user error: the message of a :class:`~gspdml.errors.GspdmlError`
    (without the traceback torch's DataLoader adds when it was raised in a worker process), or
    ``cannot access PATH: REASON`` for an :class:`OSError` about a path."""
    from gspdml.errors import GspdmlError

    if isinstance(exc, GspdmlError):
        text = str(exc)
        if "DataLoader worker" in text:
            from gspdml.engine.datasets import worker_error_message

            text = worker_error_message(exc)
        return text
    if isinstance(exc, OSError):
        reason = exc.strerror or str(exc)
        if exc.filename is not None:
            target = repr(exc.filename) + (f" -> {exc.filename2!r}" if exc.filename2 is not None else "")
            return f"cannot access {target}: {reason}"
        return f"{reason} (--debug shows where)"
    return str(exc)


def main(argv: list[str] | None = None) -> int:
    """Run ``gspdml`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    from gspdml.errors import GspdmlError

    args = _parse(build_parser(argv), argv)
    try:
        check_outputs(args)
        return int(args._run(args) or 0)
    except (GspdmlError, OSError) as exc:
        if getattr(args, "debug", False):
            raise
        print(f"gspdml {args._command}: error: {error_message(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # gspdml.engine.runs.Interrupted carries the exit code and the resume hint
        print(f"gspdml {args._command}: {exc}" if str(exc) else "interrupted", file=sys.stderr)
        return int(getattr(exc, "exit_code", 130))
