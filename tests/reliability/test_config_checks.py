"""Configs that cannot train (or cannot learn) are refused before training, naming the setting.

Issue 11 rows: ``optim.lr=.nan`` (was a raw torch traceback), ``.inf`` lr / NaN weight decay /
NaN grad_clip (passed validation), ``optim.min_lr_ratio=-2`` (negative lr), pair losses with one
sample or one class per batch (loss exactly 0 for the whole run), L_ZS without two class-disjoint
halves, proxy losses with more classes per batch than exist, ``train.amp`` on the CPU (ignored).
"""
from __future__ import annotations

import pytest

from engine_fixtures import Blobs, blob_datasets, tiny_config
from gspdml.cli import main
from gspdml.config import check_learnable, load_config
from gspdml.engine import train
from gspdml.errors import ConfigError


@pytest.mark.parametrize(
    "override, match",
    [
        ("optim.lr=.nan", r"'optim.lr': expected a positive finite float, got nan"),
        ("optim.lr=.inf", r"'optim.lr': expected a positive finite float, got inf"),
        ("optim.lr=nan", r"'optim.lr': expected a positive finite float, got nan"),  # a YAML string
        ("optim.weight_decay=.nan", r"'optim.weight_decay': expected a finite float >= 0, got nan"),
        ("optim.weight_decay=.inf", r"'optim.weight_decay': expected a finite float >= 0, got inf"),
        ("train.grad_clip=.nan", r"'train.grad_clip': expected null or a positive finite float, got nan"),
        ("train.grad_clip=.inf", r"'train.grad_clip': expected null or a positive finite float, got inf"),
        ("train.divergence_factor=.nan", r"'train.divergence_factor': expected null or a finite float > 1, got nan"),
        ("train.divergence_factor=0.5", r"'train.divergence_factor': expected null or a finite float > 1, got 0.5"),
        ("train.max_grad_norm=0", r"'train.max_grad_norm': expected null or a positive finite float, got 0.0"),
        ("train.max_grad_norm=.inf", r"'train.max_grad_norm': expected null or a positive finite float, got inf"),
        ("optim.min_lr_ratio=-2", r"'optim.min_lr_ratio': expected a float in \[0, 1\], got -2.0"),
        ("optim.min_lr_ratio=1.5", r"'optim.min_lr_ratio': expected a float in \[0, 1\], got 1.5"),
        ("optim.momentum=1", r"'optim.momentum': expected a float in \[0, 1\), got 1.0"),
        ("optim.momentum=-0.5", r"'optim.momentum': expected a float in \[0, 1\), got -0.5"),
        ("optim.gamma=0", r"'optim.gamma': expected a positive finite float, got 0.0"),
        ("optim.gamma=.nan", r"'optim.gamma': expected a positive finite float, got nan"),
        ("loss.zero_shot.ridge=.inf", r"'loss.zero_shot.ridge': expected a positive finite float, got inf"),
        ("loss.zero_shot.scale=0", r"'loss.zero_shot.scale': expected a positive finite float, got 0.0"),
        ("loss.zero_shot.scale=.nan", r"'loss.zero_shot.scale': expected a positive finite float, got nan"),
        ("loss.kwargs.margin=.nan", r"'loss.kwargs.margin': expected a number, got nan"),
        ("model.pooling_kwargs.mu=.nan", r"'model.pooling_kwargs.mu': expected a number, got nan"),
    ],
)
def test_non_finite_and_out_of_range_floats_are_refused(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, [override])


def test_nan_lr_on_the_command_line_is_one_line(tmp_path, capsys):
    code = main(["train", "-c", "digits_collage_gsp", "optim.lr=.nan", "train.max_steps=1", "train.device=cpu",
                 "--out", str(tmp_path), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines() == ["gspdml train: error: config key 'optim.lr': expected a positive finite "
                                        "float, got nan"]


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["loss.name=MS", "data.samples_per_class=1"], r"data.samples_per_class=1: loss MS .*positives"),
        (["loss.name=Triplet", "data.samples_per_class=1"], r"data.samples_per_class=1: loss Triplet .*positives"),
        (["loss.name=C2", "data.samples_per_class=1"], r"data.samples_per_class=1: loss C2 .*positives"),
        (["loss.name=C1", "data.classes_per_batch=1"], r"data.classes_per_batch=1: loss C1 .*negatives"),
        (["loss.name=XBM", "data.classes_per_batch=1"], r"data.classes_per_batch=1: loss XBM .*negatives"),
        (["loss.name=PNCA", "data.classes_per_batch=1", "loss.zero_shot.enabled=true", "model.pooling=gsp",
          "model.pooling_kwargs={num_prototypes: 4}"],
         r"data.classes_per_batch=1: loss.zero_shot.enabled \(L_ZS\) .*two class-disjoint halves"),
        (["loss.name=PNCA", "data.classes_per_batch=13"],
         r"data.classes_per_batch=13 but the training set has only 12 classes \(proxy loss PNCA"),
    ],
)
def test_runs_that_cannot_learn_are_refused_before_training(overrides, match):
    steps = []
    with pytest.raises(ConfigError, match=match):
        train(tiny_config(None, overrides), progress=False, datasets=blob_datasets(),
              callback=lambda row: steps.append(row["step"]))
    assert steps == []  # refused before the first step


def test_a_single_training_class_is_refused():
    with pytest.raises(ConfigError, match="the training set has 1 class; metric learning needs at least 2"):
        train(tiny_config(None, ["loss.name=PNCA", "data.classes_per_batch=1"]), progress=False,
              datasets={"train": Blobs(1, 6), "test": Blobs(3, 4, first_class=10)})


def test_proxy_losses_accept_one_sample_per_class():
    cfg = load_config(None, ["loss.name=PAnchor", "data.samples_per_class=1", "data.classes_per_batch=1"])
    check_learnable(cfg)  # proxies give every sample positives and negatives
    check_learnable(cfg, num_classes=5)


def test_samples_per_class_one_is_refused_on_the_command_line(tmp_path, capsys):
    code = main(["train", "-c", "digits_collage_gap", "data.samples_per_class=1", "train.max_steps=1",
                 "train.device=cpu", "--out", str(tmp_path), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "data.samples_per_class=1" in err and "positives" in err


def test_amp_on_cpu_is_an_error_naming_precision():
    with pytest.raises(ConfigError, match=r"'train.amp' was removed; set train.precision instead"):
        load_config(None, ["train.amp=true", "train.device=cpu"])


def test_fp16_on_cpu_is_refused_and_bf16_accepted():
    with pytest.raises(ConfigError, match=r"'train.precision': fp16 needs CUDA .*bf16 \(bfloat16 autocast, works on the CPU\)"):
        load_config(None, ["train.precision=fp16", "train.device=cpu"])
    assert load_config(None, ["train.precision=bf16", "train.device=cpu"]).train.precision == "bf16"
