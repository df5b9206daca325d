"""The reference settings: dataset names, the per-dataset tables and the learning-rate multipliers."""
from __future__ import annotations

import pytest

from gspdml.errors import ConfigError
from gspdml.losses import LOSSES, build_loss, loss_arguments
from gspdml.losses import presets


def test_dataset_keys_and_aliases():
    assert presets.dataset_key(None, "C1") is None
    assert presets.dataset_key(" CUB200 ", "C1") == "cub" and presets.dataset_key("In-Shop", "C1") == "inshop"
    with pytest.raises(ConfigError, match="loss 'MS': unknown dataset 'imagenet'.*cub, cars196, sop, inshop"):
        presets.dataset_key("imagenet", "MS")
    for table in (presets.C2_MARGINS, presets.NIR_WEIGHTS):
        assert tuple(table) == presets.DATASETS
    assert set(presets.DATASET_ALIASES.values()) <= set(presets.DATASETS)


def test_every_loss_accepts_and_validates_dataset():
    for name in LOSSES:
        assert "dataset" in loss_arguments(name)
        build_loss(name, 3, 4, dataset="sop")
        with pytest.raises(ConfigError, match="unknown dataset"):
            build_loss(name, 3, 4, dataset="imagenet")


def test_proxy_losses_and_their_learning_rate_defaults():
    for name in LOSSES:
        groups = [g["name"] for g in build_loss(name, 3, 4).param_groups()]
        assert ("proxies" in groups) == (name in presets.PROXY_LOSSES), name
    for name in presets.PROXY_LOSSES:
        if name == "PNCA++":  # its own per-dataset multiplier: test_recipes.py
            assert loss_arguments(name)["proxy_lr_mult"] is None
            continue
        nir = name.endswith("+NIR")
        assert loss_arguments(name)["proxy_lr_mult"] == (presets.NIR_PROXY_LR_MULT if nir else presets.PROXY_LR_MULT)
        if nir:
            assert loss_arguments(name)["flow_lr_mult"] == presets.NIR_FLOW_LR_MULT
    assert (presets.PROXY_LR_MULT, presets.NIR_PROXY_LR_MULT, presets.NIR_FLOW_LR_MULT) == (100.0, 4000.0, 50.0)
