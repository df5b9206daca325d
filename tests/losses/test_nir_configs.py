"""The shipped NIR recipe configs: in sync with configs/generate.py and equal to the authors' values."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

from gspdml.config import load_config, shipped_configs
from gspdml.losses import build_loss

ROOT = Path(__file__).resolve().parents[2]

# the authors' runs (nir_benchmark_runs.sh, ResNet50 dim 128, ProxyAnchor + NIR), with parameters.py's
# defaults for what the script leaves out: lr 1e-5, decay 4e-4, samples_per_class 2, proxy lr x4000,
# flow lr x50, cond mode dense, 5 blocks, fc depth 8 / width 128, clamp 2
AUTHORS = {
    "cub": {"epochs": 100, "warmup": 1, "w": 0.0075, "flow_mult": 50.0},
    "cars196": {"epochs": 100, "warmup": 1, "w": 0.01, "flow_mult": 50.0},
    "sop": {"epochs": 300, "warmup": 5, "w": 0.3, "flow_mult": 1.0},
}


def _generator():
    spec = importlib.util.spec_from_file_location("cfg_generate_nir", ROOT / "configs" / "generate.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    return gen


def test_nir_configs_are_in_sync_with_the_generator():
    gen = _generator()
    names = []
    for dataset in gen.NIR_DATASETS:
        for loss in gen.NIR_LOSSES:
            expected = gen.build_nir(dataset, loss)
            path = shipped_configs()[expected["name"]]
            assert yaml.safe_load(path.read_text()) == expected, expected["name"]
            names.append(expected["name"])
    assert sorted(names) == sorted(f"nir_{d}_{l}" for d in AUTHORS for l in ("panchor", "pnca"))


@pytest.mark.parametrize("dataset", sorted(AUTHORS))
@pytest.mark.parametrize("loss", ["panchor", "pnca"])
def test_nir_configs_follow_the_authors_settings(dataset, loss):
    cfg = load_config(f"nir_{dataset}_{loss}")
    ref = AUTHORS[dataset]
    assert (cfg.model.backbone, cfg.model.local_dim, cfg.model.freeze_bn, cfg.model.pooling) == ("resnet50", 128, True, "gap")
    assert (cfg.data.image_size, cfg.data.normalization) == (224, "imagenet")
    assert cfg.data.classes_per_batch * cfg.data.samples_per_class == 90 and cfg.data.samples_per_class == 2
    assert cfg.data.fold is None and cfg.data.val_split is None  # conventional protocol: train split -> test split
    assert (cfg.data.train_split, cfg.data.test_split) == ("train", "test")
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay) == ("adam", 1e-5, 4e-4)
    assert not cfg.optim.no_decay_norm_bias  # the authors decay every model parameter
    assert cfg.train.max_epochs == ref["epochs"] and cfg.train.freeze_backbone_epochs == ref["warmup"]
    assert cfg.train.precision == "fp32"  # the authors' runs leave --use_float16 off
    assert cfg.loss.name == {"panchor": "PAnchor+NIR", "pnca": "PNCA+NIR"}[loss]
    assert not cfg.loss.zero_shot.enabled
    kw = cfg.loss.kwargs
    assert kw["proxy_weight"] == ref["w"] and kw["proxy_lr_mult"] == 4000.0 and kw["flow_lr_mult"] == ref["flow_mult"]
    built = build_loss(cfg.loss.name, num_classes=100, embedding_dim=cfg.model.local_dim, **kw)
    assert built.proxy_weight == ref["w"]
    groups = {g["name"]: g["lr_mult"] for g in built.param_groups()}
    assert groups == {"proxies": 4000.0, "nir_flow": ref["flow_mult"]}
    flow = built.nir.flow
    assert len(flow.blocks) == 5 and flow.cond_prep.cond_mode == "dense" and built.nir.objective == "exp"
    assert all(b.clamp == 2.0 for b in flow.blocks) and built.nir.noise == 0.0
