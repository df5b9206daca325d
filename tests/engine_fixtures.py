"""Tiny in-memory data and configs for the engine tests (CPU, a few ms per step)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from gspdml.config import load_config


class Blobs(Dataset):
    """``num_classes`` x ``per_class`` images (1, 12, 12): a class pattern plus noise.

    With ``augment`` every item gets fresh noise drawn from the *global* torch RNG, so an exact
    resume must restore the RNG state.
    """

    def __init__(self, num_classes: int = 12, per_class: int = 6, seed: int = 0, augment: bool = False,
                 first_class: int = 0, noise_seed: int | None = None) -> None:
        g = torch.Generator().manual_seed(seed)
        protos = torch.randn(num_classes, 1, 12, 12, generator=g)
        idx = np.repeat(np.arange(num_classes), per_class)
        if noise_seed is not None:
            g = torch.Generator().manual_seed(noise_seed)
        self.x = protos[idx] + 0.7 * torch.randn(len(idx), 1, 12, 12, generator=g)
        self.labels = (idx + first_class).astype(np.int64)
        self.num_classes = num_classes
        self.augment = augment

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        x = self.x[i]
        if self.augment:
            x = x + 0.05 * torch.randn_like(x)
        return x, int(self.labels[i])


def tiny_config(tmp_path=None, overrides=()):
    """A config for a tiny CNN on :class:`Blobs` (datasets are passed to ``train`` directly)."""
    base = [
        "name=tiny",
        f"output_dir={tmp_path if tmp_path is not None else 'null'}",
        "data.dataset=blobs",
        "data.num_workers=0",
        "data.classes_per_batch=4",
        "data.samples_per_class=3",
        "model.backbone=smallcnn",
        "model.backbone_kwargs={in_channels: 1, widths: [4, 8, 8]}",
        "model.local_dim=8",
        "model.pooling=gap",
        "model.freeze_bn=false",
        "loss.name=C1",
        "optim.lr=1e-2",
        "train.max_steps=6",
        "train.log_every=1",
        "train.device=cpu",
        "train.plot=false",
        "eval.batch_size=32",
    ]
    return load_config(None, base + list(overrides))


def blob_datasets(augment: bool = False) -> dict:
    return {"train": Blobs(12, 6, seed=0, augment=augment), "test": Blobs(6, 5, seed=1, first_class=100)}


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny models run fastest on one thread (and do not fight over a shared machine's cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def digits_cli_spec(tmp_path, name: str = "digits", **sections) -> dict:
    """A tiny Digits Collage config (shipped with the install) for CLI end-to-end tests: 2x2 grids,
    a 3-block smallcnn, C1, 2 steps on the CPU. ``sections`` update its sections key by key
    (``train={"max_steps": 5}``, ``loss={"name": "MS"}``, ``eval={"test_at_end": False}``)."""
    spec = {
        "name": name, "output_dir": str(tmp_path / "runs"),
        "data": {"dataset": "digits_collage", "transform": "none", "normalization": "none",
                 "classes_per_batch": 4, "samples_per_class": 2, "num_workers": 0,
                 "options": {"grid": 2, "upsample": 1, "samples_per_class": 8}},
        "model": {"backbone": "smallcnn", "backbone_kwargs": {"widths": [4, 4, 8]}, "local_dim": 8,
                  "pooling": "gap", "freeze_bn": False},
        "loss": {"name": "C1"},
        "optim": {"lr": 1.0e-3},
        "train": {"max_steps": 2, "device": "cpu", "plot": False, "log_every": 1},
    }
    for section, values in sections.items():
        spec.setdefault(section, {}).update(values)
    return spec


def write_yaml(path, spec: dict):
    """Write ``spec`` as YAML to ``path``; returns the path."""
    import yaml

    path.write_text(yaml.safe_dump(spec))
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (for a local process group)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
