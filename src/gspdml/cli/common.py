"""Arguments shared by several commands (written once here) and their resolution.

Arguments: checkpoint (``--checkpoint``), dataset (``--dataset --root --split --option``), device
(``--device``), batch size, output folder (``--out``), progress (``--no-progress``), config and
``KEY=VALUE`` overrides (``--config/-c``). Resolution: the device, a checkpoint's model with the
evaluated dataset's config, the evaluation dataset, the default output folder, readable class names.
Output checks (:func:`check_output_dir`, :func:`check_output_file`): an output path that cannot be
written is an :class:`~gspdml.errors.InputError` before any work starts.
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any

from gspdml.errors import ConfigError, InputError

__all__ = [
    "add_checkpoint_argument",
    "add_dataset_arguments",
    "add_device_argument",
    "add_batch_size_argument",
    "add_output_argument",
    "add_progress_argument",
    "add_checkpoint_analysis_arguments",
    "add_config_arguments",
    "resolve_device",
    "parse_options",
    "eval_config",
    "load_checkpoint_for_eval",
    "load_for_analysis",
    "eval_dataset",
    "display_normalization",
    "default_output_dir",
    "out_option",
    "class_names_of",
    "names_for_labels",
    "check_positive",
    "check_output_dir",
    "check_output_file",
]


# ---------------------------------------------------------------------------------------- arguments
def add_checkpoint_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="RUN_OR_CKPT",
                        help="a run folder (uses checkpoints/best.pt, else last.pt) or a checkpoint .pt file")
    add_trust_argument(parser, "the checkpoint")


def add_trust_argument(parser: argparse.ArgumentParser, what: str) -> None:
    """``--trust-checkpoint``: the one, explicit opt-in to unsafe (full pickle) checkpoint loading."""
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help=f"read {what} with full unpickling (torch weights_only=False); only for a file you "
                             "trust that holds more than tensors (it can run code)")


def add_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default=None, metavar="NAME",
                        help="dataset name (default: the checkpoint config's data.dataset)")
    parser.add_argument("--root", default=None, metavar="PATH",
                        help="dataset folder (default: the checkpoint config's data.root)")
    parser.add_argument("--split", default=None,
                        help="dataset split (default: the checkpoint config's data.test_split)")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="dataset option (value parsed as YAML), repeatable; added to the config's "
                             "data.options, which are dropped when --dataset names another dataset")


def add_device_argument(parser: argparse.ArgumentParser, default: str = "auto") -> None:
    parser.add_argument("--device", default=default,
                        help=f"cpu, cuda, cuda:N or auto (default: {default}); an unavailable device is an error")


def add_batch_size_argument(parser: argparse.ArgumentParser, default: int | None) -> None:
    what = f"default {default}" if default is not None else "default: the config's eval.batch_size"
    parser.add_argument("--batch-size", type=int, default=default, help=f"evaluation batch size ({what})")


def add_output_argument(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument("--out", default=None, metavar="DIR", help=help)


def add_progress_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_checkpoint_analysis_arguments(parser: argparse.ArgumentParser) -> None:
    """Checkpoint, dataset, device, batch size (64) and ``--out`` (default ``<run folder>/analysis``):
    the arguments of a command that analyses a checkpoint on a dataset."""
    add_checkpoint_argument(parser)
    add_dataset_arguments(parser)
    add_device_argument(parser)
    add_batch_size_argument(parser, 64)
    add_output_argument(parser, "output folder (default: <run folder>/analysis)")


def add_config_arguments(parser: argparse.ArgumentParser, required: bool = True, extra_help: str = "") -> None:
    """``--config/-c NAME_OR_PATH`` and ``KEY=VALUE`` overrides, which may stand before or after flags."""
    parser.add_argument("--config", "-c", required=required, metavar="NAME_OR_PATH",
                        help="a shipped config name (`gspdml configs` lists them) or a YAML file" + extra_help)
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides, values parsed as YAML (e.g. loss.name=MS train.max_steps=500)")
    parser.set_defaults(_extra_positionals="overrides")


# --------------------------------------------------------------------------------------- resolution
def resolve_device(spec: str):
    """``--device`` as a torch device (``cpu``, ``cuda``, ``cuda:N``, ``auto``); ConfigError when the
    device is unknown or not available here."""
    from gspdml.engine.distributed import resolve_device as resolve

    try:
        return resolve(spec)
    except ConfigError as exc:
        raise ConfigError(f"--device: {exc}") from None


def check_positive(name: str, value: int | None) -> None:
    """InputError unless ``value`` (of option ``name``) is None or >= 1."""
    if value is not None and value < 1:
        raise InputError(f"{name} must be >= 1; got {value}")


def parse_options(items) -> dict[str, Any]:
    """``["KEY=VALUE", ...]`` (``--option``) as a dict, values parsed as YAML."""
    import yaml

    options: dict[str, Any] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--option expects KEY=VALUE, got {item!r}")
        try:
            options[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise InputError(f"--option {item!r}: cannot parse the value as YAML: {exc}") from None
    return options


def eval_config(cfg, dataset: str | None = None, root: str | None = None, options=()):
    """``cfg`` with the dataset to evaluate: ``dataset`` (the config's data.options are dropped when
    it names another dataset), ``root``, and ``--option`` items added to data.options."""
    from gspdml.config import config_from_dict, to_dict

    data = to_dict(cfg)
    d = data["data"]
    if dataset is not None and dataset.lower() != str(d["dataset"]).lower():
        d["dataset"], d["options"] = dataset, {}
    if root is not None:
        d["root"] = root
    d["options"] = {**(d["options"] or {}), **parse_options(options)}
    return config_from_dict(data)


def load_checkpoint_for_eval(args: argparse.Namespace):
    """``(model, cfg, extra)`` of ``args.checkpoint``; ``cfg`` is the training config with the
    dataset arguments (``--dataset --root --option``) applied."""
    from gspdml.engine.checkpoint import load_model_from_checkpoint

    model, cfg, extra = load_model_from_checkpoint(args.checkpoint, trust=getattr(args, "trust_checkpoint", False))
    return model, eval_config(cfg, args.dataset, args.root, args.option), extra


def load_for_analysis(args: argparse.Namespace):
    """``(device, model, cfg, extra, out_dir)`` of an ``analyze`` / ``viz`` command, every input
    checked (batch size, device, checkpoint, writable output folder) before any work starts."""
    check_positive("--batch-size", args.batch_size)
    device = resolve_device(args.device)
    model, cfg, extra = load_checkpoint_for_eval(args)
    out_dir = check_output_dir(default_output_dir(extra["path"], args.out), out_option(args))
    return device, model, cfg, extra, out_dir


def eval_dataset(cfg, split: str | None):
    """``(dataset, split)``: split ``split`` (default data.test_split) of ``cfg``'s dataset with
    the evaluation transform."""
    from gspdml.engine.datasets import make_split

    split = split or cfg.data.test_split
    return make_split(cfg, split, False), split


def display_normalization(cfg) -> str:
    """The normalisation to undo when showing the model's input images."""
    return "none" if str(cfg.data.transform).lower() == "none" else cfg.data.normalization


def out_option(args: argparse.Namespace) -> str:
    """How an output folder was chosen, for messages: ``--out`` or the default one."""
    return "--out" if getattr(args, "out", None) else "the default <run folder>/analysis; choose one with --out"


def default_output_dir(checkpoint_path: str | Path, out: str | None) -> Path:
    """``out`` if given, else ``<run folder>/analysis`` for a checkpoint in ``<run>/checkpoints/``."""
    if out:
        return Path(out)
    ckpt = Path(checkpoint_path)
    run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    return run_dir / "analysis"


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


# ------------------------------------------------------------------------------------ output checks
def _cannot_write(path, option: str | None, reason: str) -> InputError:
    where = f" ({option})" if option else ""
    return InputError(f"cannot write {os.fspath(path)!r}{where}: {reason}")


def _probe_folder(folder: Path, path, option: str | None) -> None:
    """Create and remove a temporary file in the existing folder ``folder`` (the one reliable test
    of writability: permissions, read-only file systems, root's privileges)."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".gspdml-write-test-", dir=folder)
    except OSError as exc:
        raise _cannot_write(path, option, f"{exc.strerror or exc} ({str(folder)!r})") from None
    os.close(fd)
    os.unlink(probe)


def _existing_ancestor(path: Path, target, option: str | None) -> Path:
    """The nearest existing folder above ``path`` (``path`` itself excluded); InputError when an
    ancestor is a file."""
    parent = path.parent if str(path.parent) else Path(".")
    while not parent.exists():
        if parent == parent.parent:
            break
        parent = parent.parent
    if not parent.is_dir():
        raise _cannot_write(target, option, f"{str(parent)!r} is a file, not a folder")
    return parent


def check_output_dir(path, option: str | None = "--out") -> Path:
    """``path`` as a Path if it is (or can be created as) a writable folder; else InputError
    ``cannot write PATH (OPTION): REASON`` (a file, a file above it, a read-only folder). Creates
    nothing."""
    p = Path(os.path.expanduser(os.fspath(path)))
    if p.exists():
        if not p.is_dir():
            raise _cannot_write(path, option, "it is a file, not a folder")
        _probe_folder(p, path, option)
        return p
    _probe_folder(_existing_ancestor(p, path, option), path, option)
    return p


def check_output_file(path, option: str | None = "--json") -> Path:
    """``path`` as a Path if a file can be written there (written atomically: a temporary file in
    its folder, then renamed); else InputError ``cannot write PATH (OPTION): REASON``. Creates nothing."""
    p = Path(os.path.expanduser(os.fspath(path)))
    if p.is_dir():
        raise _cannot_write(path, option, "it is a folder, not a file")
    folder = p.parent if str(p.parent) else Path(".")
    if folder.exists():
        if not folder.is_dir():
            raise _cannot_write(path, option, f"{str(folder)!r} is a file, not a folder")
        _probe_folder(folder, path, option)
    else:
        _probe_folder(_existing_ancestor(folder, path, option), path, option)
    return p
