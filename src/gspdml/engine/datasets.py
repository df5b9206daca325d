"""Dataset preparation for a run: the splits of ``cfg.data`` with their transforms, the MLRC fold
split (:func:`gspdml.data.split_train_val`) and the class-balanced batch sampler.

Runs that cannot learn are refused here, before training (:func:`gspdml.config.check_learnable`):
from the config alone when the datasets are built, with the training set's class count when the
sampler is built. :func:`worker_error_message` recovers the one-line message of a gspdml error
raised inside a DataLoader worker process."""
from __future__ import annotations

from typing import Mapping

from torch.utils.data import Dataset

from gspdml.config import TrainConfig, check_learnable
from gspdml.data.samplers import ClassBalancedBatchSampler
from gspdml.data.splits import split_train_val
from gspdml.engine.distributed import DistContext
from gspdml.errors import ConfigError, GspdmlError, InputError

__all__ = ["transform_for", "make_split", "build_datasets", "build_sampler", "worker_error_message"]


def transform_for(cfg: TrainConfig, train: bool):
    """The train or eval transform of ``cfg.data`` (``None`` when ``data.transform`` is none)."""
    from gspdml.data import build_transform  # the transforms import torchvision

    d = cfg.data
    if str(d.transform).lower() == "none":
        return None
    return build_transform(d.transform, train=train, normalization=d.normalization, image_size=d.image_size)


def make_split(cfg: TrainConfig, split: str, train: bool) -> Dataset:
    """``cfg.data``'s dataset, split ``split``, with the train or eval transform."""
    from gspdml.data import build_dataset

    d = cfg.data
    return build_dataset(d.dataset, d.root, split, transform=transform_for(cfg, train), **d.options)


def build_datasets(cfg: TrainConfig, given: Mapping[str, Dataset | None] | None = None) -> dict[str, Dataset | None]:
    """The datasets of a run: ``train``, ``val``, ``test``, ``gallery``.

    Without a ``train`` in ``given`` they are built from ``cfg.data`` (entries of ``given``
    replace them): with ``data.fold`` set, the train split is divided into ``data.num_folds`` MLRC
    folds, training on the other folds and validating on the held-out one (eval transform); else
    ``data.val_split`` validates when set; ``test``/``gallery`` when ``eval.test_at_end``.
    With a ``train`` in ``given`` (not None), only the fold split is done (when ``data.fold`` is set and no
    ``val`` is given), validating on ``given["train_eval"]`` (the same set, eval transform) if any.
    """
    check_learnable(cfg)  # before any dataset is read or verified
    d = cfg.data
    out = dict(given or {})
    if "train" in out:
        if out["train"] is None:
            raise InputError("datasets['train'] is missing")
        if d.fold is not None and out.get("val") is None:
            out["train"], out["val"] = split_train_val(out["train"], d.fold, d.num_folds, out.get("train_eval"))
        return out
    built: dict[str, Dataset | None] = {"train": make_split(cfg, d.train_split, True), "val": None,
                                        "test": None, "gallery": None}
    if d.fold is not None:
        built["train"], built["val"] = split_train_val(built["train"], d.fold, d.num_folds,
                                                       make_split(cfg, d.train_split, False))
    elif d.val_split:
        built["val"] = make_split(cfg, d.val_split, False)
    if cfg.eval.test_at_end:
        built["test"] = make_split(cfg, d.test_split, False)
        if d.gallery_split:
            built["gallery"] = make_split(cfg, d.gallery_split, False)
    return {**built, **out}


def build_sampler(cfg: TrainConfig, train_set, ctx: DistContext) -> ClassBalancedBatchSampler:
    """This rank's share of the global class-balanced batches (``data.classes_per_batch`` x
    ``data.samples_per_class`` per global batch) over ``train_set`` (labels ``0..C-1``); ConfigError when the set cannot fill one batch or the
    loss cannot learn with its classes (:func:`gspdml.config.check_learnable`)."""
    d = cfg.data
    check_learnable(cfg, int(train_set.num_classes))
    sampler = ClassBalancedBatchSampler(
        train_set.labels, classes_per_batch=d.classes_per_batch, samples_per_class=d.samples_per_class,
        seed=cfg.train.seed, rank=ctx.rank, world_size=ctx.world_size,
    )
    if len(sampler) == 0:
        raise ConfigError(
            f"the class-balanced sampler yields no batch ({d.classes_per_batch} classes x "
            f"{d.samples_per_class} samples from {len(train_set)} samples of {train_set.num_classes} classes)"
        )
    return sampler


_WORKER_MARK = "Original Traceback (most recent call last):"


def worker_error_message(exc: BaseException) -> str:
    """The message of ``exc`` without the worker traceback that torch's DataLoader puts in front
    of an exception raised in a worker process (``Caught DataError in DataLoader worker process
    0. Original Traceback ...``): for a :class:`~gspdml.errors.GspdmlError` re-raised from a
    worker, the original one-line message; otherwise ``str(exc)`` unchanged."""
    text = str(exc)
    if not isinstance(exc, GspdmlError) or _WORKER_MARK not in text:
        return text
    tail = text.split(_WORKER_MARK, 1)[1]
    cls = type(exc)
    for prefix in (f"{cls.__module__}.{cls.__qualname__}: ", f"{cls.__qualname__}: "):
        at = tail.rfind("\n" + prefix)
        if at >= 0:
            return tail[at + 1 + len(prefix):].strip()
    return text
