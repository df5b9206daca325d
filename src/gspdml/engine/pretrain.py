"""Classification pretraining of a backbone (ResNet-20 on CIFAR-100 for the Cifar Collage).

:func:`pretrain` trains ``backbone -> global average pooling -> linear classifier`` with
cross-entropy on a labelled dataset and writes a run folder::

    <output_dir>/<name>/
        config.yaml       the resolved config
        backbone.pth      the backbone's state dict: pass it as ``model.pretrained``
        classifier.pth    backbone + head (``backbone.*``, ``head.*``)
        metrics.csv       one row per epoch: epoch, step, lr, train_loss, train_acc, test_loss, test_acc
        metrics.json      the final numbers (``test_acc``, ``test_loss``, steps, epochs, wall time)

It reads a :class:`gspdml.config.TrainConfig` (``configs/cifar100_resnet20_pretrain.yaml`` is the
recipe) and uses: ``name``, ``output_dir``; ``data.dataset/root/options/normalization/image_size/
num_workers/train_split/test_split``; the batch size ``data.classes_per_batch x
data.samples_per_class`` (plain shuffled batches, not class-balanced); ``model.backbone``,
``backbone_kwargs`` and ``pretrained`` (start weights); ``optim.*`` (:func:`gspdml.engine.optim.
build_optimizer` / ``build_scheduler``: no weight decay on BN and biases); ``train.max_epochs``,
``max_steps``, ``seed``, ``device``, ``precision``; ``eval.batch_size``. The loss, pooling and
zero-shot sections are not used.

Augmentation (He et al. 2016, Sec. 4.2): random crop of ``image_size`` from the image padded by
``image_size // 8`` pixels (4 for 32x32) and a horizontal flip; evaluation: the image as is. Both
end with the config's ``data.normalization`` (``cifar100`` for CIFAR-100).
"""
from __future__ import annotations

import csv
import math
import time
import types
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from gspdml.config import TrainConfig, resolve_precision, save_config
from gspdml.data import build_dataset
from gspdml.data.transforms import normalization_transforms
from gspdml.engine.checkpoint import seed_everything
from gspdml.engine.distributed import resolve_device
from gspdml.engine.optim import build_optimizer, build_scheduler
from gspdml.engine.runs import TrainingDiverged, new_run_dir
from gspdml.errors import ConfigError, DataError
from gspdml.io import write_json
from gspdml.models import build_backbone

__all__ = ["Classifier", "PretrainResult", "pretrain", "pretrain_transform", "METRIC_COLUMNS"]

METRIC_COLUMNS = ("epoch", "step", "lr", "train_loss", "train_acc", "test_loss", "test_acc")


def pretrain_transform(train: bool, normalization: str, image_size: int = 32):
    """The CIFAR classification pipeline: (train) pad + random crop + flip; then tensor + normalisation."""
    from torchvision.transforms import v2

    size = int(image_size)
    head = [v2.ToImage()]
    if train:
        head += [v2.RandomCrop(size, padding=max(size // 8, 1)), v2.RandomHorizontalFlip()]
    return v2.Compose(head + [v2.ToDtype(torch.float32, scale=True)] + normalization_transforms(normalization))


class Classifier(nn.Module):
    """``backbone`` (B, C, h, w) -> global average pooling -> ``head`` Linear(C, num_classes)."""

    def __init__(self, backbone: nn.Module, num_classes: int) -> None:
        super().__init__()
        channels = getattr(backbone, "out_channels", None)
        if not isinstance(channels, int):
            raise ConfigError(f"pretrain: backbone {type(backbone).__name__} has no integer 'out_channels' attribute")
        if getattr(backbone, "input_kind", "image") != "image":
            raise ConfigError(f"pretrain: the backbone takes {backbone.input_kind}, classification pretraining needs images")
        self.backbone = backbone
        self.head = nn.Linear(channels, int(num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x).mean(dim=(2, 3)))

    def param_groups(self, weight_decay: float = 0.0) -> list[dict]:
        """Weight decay on conv/linear weights only (not on BN parameters and biases)."""
        decay, no_decay = [], []
        for module in self.modules():
            for pname, param in module.named_parameters(recurse=False):
                if not param.requires_grad:
                    continue
                norm = isinstance(module, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm))
                (no_decay if norm or pname == "bias" or param.ndim <= 1 else decay).append(param)
        return [g for g in ({"name": "decay", "params": decay, "weight_decay": float(weight_decay), "lr_mult": 1.0},
                            {"name": "no_decay", "params": no_decay, "weight_decay": 0.0, "lr_mult": 1.0})
                if g["params"]]


@dataclass
class PretrainResult:
    """Where a pretraining run wrote its files and its final numbers."""

    run_dir: Path
    weights: Path
    metrics: dict = field(default_factory=dict)
    history: list = field(default_factory=list)


def _loader(dataset, batch_size: int, train: bool, workers: int, seed: int):
    generator = torch.Generator().manual_seed(seed) if train else None
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=train, drop_last=train,
                                       num_workers=workers, generator=generator, pin_memory=False)


def _logits(model: Classifier, x, y, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits, labels)`` of a batch on ``device``, the forward under autocast to ``dtype`` (None: fp32)."""
    x, y = x.to(device), torch.as_tensor(y).to(device)
    with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        return model(x), y


@torch.no_grad()
def _evaluate(model: Classifier, loader, device, dtype) -> tuple[float, float]:
    """(mean cross-entropy, top-1 accuracy) over ``loader``."""
    model.eval()
    total, loss_sum, correct = 0, 0.0, 0
    for x, y in loader:
        logits, y = _logits(model, x, y, device, dtype)
        loss_sum += float(nn.functional.cross_entropy(logits.float(), y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
        total += len(y)
    return loss_sum / max(total, 1), correct / max(total, 1)


def pretrain(cfg: TrainConfig, *, progress: bool = True, datasets: dict | None = None) -> PretrainResult:
    """Train ``cfg.model.backbone`` + a linear head by cross-entropy; see the module docstring.

    ``datasets`` may give ready ``{"train": ..., "test": ...}`` datasets (items ``(image tensor,
    label)``); otherwise they are built from ``cfg.data`` with :func:`pretrain_transform`.
    Returns a :class:`PretrainResult`; ``weights`` is the ``backbone.pth`` file.
    """
    from tqdm.auto import tqdm

    d, o, t = cfg.data, cfg.optim, cfg.train
    if cfg.output_dir is None:
        raise ConfigError("pretrain: output_dir is null, but pretraining writes the backbone weights; set output_dir or --out")
    batch_size = int(d.classes_per_batch) * int(d.samples_per_class)
    if batch_size < 2:
        raise ConfigError(f"pretrain: the batch size data.classes_per_batch x data.samples_per_class must be >= 2, got {batch_size}")
    device = resolve_device(t.device)
    dtype = resolve_precision(t.precision, device.type)
    seed_everything(t.seed)
    if datasets is None:
        datasets = {split: build_dataset(d.dataset, d.root, split, pretrain_transform(split == d.train_split, d.normalization, d.image_size),
                                         **(d.options or {}))
                    for split in (d.train_split, d.test_split)}
        datasets = {"train": datasets[d.train_split], "test": datasets[d.test_split]}
    train_set, test_set = datasets["train"], datasets.get("test")
    num_classes = getattr(train_set, "num_classes", None)
    if not isinstance(num_classes, int) or num_classes < 2:
        raise DataError(f"pretrain: dataset {d.dataset!r} split {d.train_split!r} needs integer labels of >= 2 classes "
                        f"(num_classes), got {num_classes!r}")
    if len(train_set) < batch_size:
        raise DataError(f"pretrain: dataset {d.dataset!r} split {d.train_split!r} has {len(train_set)} images, fewer than "
                        f"one batch ({batch_size}); lower data.classes_per_batch x data.samples_per_class")
    model = Classifier(build_backbone(cfg.model.backbone, pretrained=cfg.model.pretrained, **cfg.model.backbone_kwargs),
                       num_classes).to(device)
    module = types.SimpleNamespace(model=model, loss=nn.Identity(), zero_shot=nn.Identity(), parameters=model.parameters)
    optimizer = build_optimizer(cfg, module)
    train_loader = _loader(train_set, batch_size, True, d.num_workers, t.seed)
    steps_per_epoch = len(train_loader)
    total = steps_per_epoch * int(t.max_epochs)
    if t.max_steps is not None:
        total = min(total, int(t.max_steps))
    if total <= 0:
        raise ConfigError(f"pretrain: nothing to train (train.max_epochs={t.max_epochs}, train.max_steps={t.max_steps})")
    scheduler = build_scheduler(cfg, optimizer, total, steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)
    test_loader = _loader(test_set, int(cfg.eval.batch_size), False, d.num_workers, t.seed) if test_set is not None else None

    run_dir = new_run_dir(cfg.output_dir, cfg.name)
    save_config(cfg, run_dir / "config.yaml")
    csv_path = run_dir / "metrics.csv"
    history: list[dict] = []
    with open(csv_path, "w", newline="") as f:
        csv.writer(f).writerow(METRIC_COLUMNS)
    start, step, epoch = time.perf_counter(), 0, 0
    bar = tqdm(total=total, desc=f"pretrain {cfg.name}", disable=not progress, dynamic_ncols=True)
    try:
        while step < total:
            model.train()
            loss_sum, correct, seen = 0.0, 0, 0
            for x, y in train_loader:
                logits, y = _logits(model, x, y, device, dtype)
                loss = nn.functional.cross_entropy(logits.float(), y)
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise TrainingDiverged(f"pretrain: the loss became {value} at step {step + 1}; "
                                           f"lower optim.lr (now {o.lr}) or check the data")
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                step += 1
                loss_sum += value * len(y)
                correct += int((logits.argmax(1) == y).sum())
                seen += len(y)
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{value:.3f}")
                if step >= total:
                    break
            epoch += 1
            row = {"epoch": epoch, "step": step, "lr": optimizer.param_groups[0]["lr"],
                   "train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1),
                   "test_loss": math.nan, "test_acc": math.nan}
            if test_loader is not None:
                row["test_loss"], row["test_acc"] = _evaluate(model, test_loader, device, dtype)
            history.append(row)
            with open(csv_path, "a", newline="") as f:
                csv.writer(f).writerow([row[c] for c in METRIC_COLUMNS])
    finally:
        bar.close()
    weights = run_dir / "backbone.pth"
    torch.save({k: v.detach().cpu() for k, v in model.backbone.state_dict().items()}, weights)
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, run_dir / "classifier.pth")
    last = history[-1]
    metrics = {"dataset": d.dataset, "backbone": cfg.model.backbone, "num_classes": num_classes,
               "steps": step, "epochs": epoch, "batch_size": batch_size,
               "train_loss": last["train_loss"], "train_acc": last["train_acc"],
               "test_loss": None if test_loader is None else last["test_loss"],
               "test_acc": None if test_loader is None else last["test_acc"],
               "wall_time_s": round(time.perf_counter() - start, 3), "weights": str(weights)}
    write_json(run_dir / "metrics.json", metrics)
    return PretrainResult(run_dir, weights, metrics, history)
