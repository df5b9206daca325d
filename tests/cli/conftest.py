"""Fixtures of the command tests: untrained small GSP models saved as run folders."""
import pytest
import torch


def _save_untrained_checkpoint(run, *, dataset: str, options: dict, backbone: str, backbone_kwargs: dict,
                               pooling_kwargs: dict, num_classes: int, zero_shot: bool = False,
                               transform: str = "none", image_size: int = 227):
    """Build a small GSP model from a config and save it as ``run/checkpoints/best.pt``; returns ``run``."""
    from gspdml.config import TrainConfig, to_dict
    from gspdml.engine.checkpoint import save_checkpoint
    from gspdml.models import build_model

    cfg = TrainConfig()
    cfg.data.dataset, cfg.data.root, cfg.data.transform, cfg.data.normalization = dataset, "", transform, "none"
    cfg.data.image_size = image_size
    cfg.data.options = dict(options)
    cfg.model.backbone, cfg.model.backbone_kwargs = backbone, dict(backbone_kwargs)
    cfg.model.local_dim = 16
    cfg.model.pooling = "gsp"
    cfg.model.pooling_kwargs = dict(pooling_kwargs)
    cfg.model.freeze_bn = False
    cfg.loss.zero_shot.enabled = zero_shot
    torch.manual_seed(0)
    model = build_model(cfg.model)
    save_checkpoint({"config": to_dict(cfg), "model": model.state_dict(), "num_classes": num_classes, "step": 0,
                     "epoch": 0, "metrics": {}}, run / "checkpoints" / "best.pt")
    return run


@pytest.fixture
def untrained_checkpoint():
    """``make(run, dataset=..., options=..., backbone=..., backbone_kwargs=..., pooling_kwargs=...,
    num_classes=..., zero_shot=False, transform="none", image_size=227) -> run``: an untrained model
    saved as a run folder."""
    return _save_untrained_checkpoint
