"""Config dataclasses: YAML round trip, typed overrides, clear errors, every shipped config validates."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

from gspdml.config import (
    TrainConfig,
    apply_overrides,
    config_from_dict,
    load_config,
    save_config,
    to_dict,
)
from gspdml.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "src" / "gspdml" / "configs"


def test_defaults_match_the_paper():
    cfg = TrainConfig()
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay) == ("adam", 1e-5, 1e-4)
    assert (cfg.data.classes_per_batch, cfg.data.samples_per_class) == (8, 4)
    assert cfg.model.local_dim == 128
    z = cfg.loss.zero_shot
    assert (z.enabled, z.weight, z.ridge, z.scale) == (False, 0.1, 0.05, 9.5)


def test_yaml_round_trip(tmp_path):
    cfg = load_config(None, ["loss.name=Triplet", "data.fold=2", "model.pooling_kwargs.mu=0.5"])
    path = save_config(cfg, tmp_path / "c.yaml")
    again = load_config(path)
    assert again == cfg
    assert to_dict(again)["model"]["pooling_kwargs"] == {"mu": 0.5}


def test_overrides_are_parsed_as_yaml(tmp_path):
    f = tmp_path / "x.yaml"
    f.write_text("name: x\ntrain: {max_steps: 5}\n")
    cfg = load_config(f, ["train.plot=false", "data.fold=null", "optim.lr=1e-3", "train.max_steps=7",
                          "eval.recall_ks=[1, 5]", "loss.kwargs.margin=0.2", "name=y"])
    assert cfg.train.plot is False and cfg.data.fold is None
    assert cfg.optim.lr == pytest.approx(1e-3) and isinstance(cfg.optim.lr, float)  # '1e-3' is a YAML string
    assert cfg.train.max_steps == 7 and cfg.eval.recall_ks == [1, 5]
    assert cfg.loss.kwargs == {"margin": 0.2} and cfg.name == "y"


def test_int_is_accepted_for_float_but_not_the_reverse():
    assert config_from_dict({"optim": {"lr": 1}}).optim.lr == 1.0
    with pytest.raises(ConfigError, match=r"'train.max_steps'.*2.5.*expected int or null"):
        config_from_dict({"train": {"max_steps": 2.5}})


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["optim.learning_rate=0.1"])
    msg = str(err.value)
    assert "'optim.learning_rate'" in msg and "lr" in msg and "weight_decay" in msg and "scheduler" in msg
    with pytest.raises(ConfigError, match="valid keys of 'top level' are: name, output_dir, data"):
        config_from_dict({"modle": {}})
    with pytest.raises(ConfigError, match="enabled, weight, ridge, scale"):
        config_from_dict({"loss": {"zero_shot": {"lambda": 0.1}}})


def test_wrong_type_names_key_value_and_type():
    with pytest.raises(ConfigError, match=r"'train.plot': value 'maybe' has the wrong type; expected bool$"):
        load_config(None, ["train.plot=maybe"])
    with pytest.raises(ConfigError, match=r"'train.patience': value 'maybe' has the wrong type; expected int or null"):
        load_config(None, ["train.patience=maybe"])
    with pytest.raises(ConfigError, match=r"'data.classes_per_batch'.*'eight'.*expected int"):
        config_from_dict({"data": {"classes_per_batch": "eight"}})
    with pytest.raises(ConfigError, match="section 'model' must be a mapping"):
        config_from_dict({"model": 3})


@pytest.mark.parametrize(
    "override, match",
    [
        ("data.fold=4", r"data.fold.*0..3"),
        ("optim.name=rmsprop", "adam, adamw, sgd"),
        ("optim.scheduler=linear", "none, cosine, step"),
        ("train.device=tpu", "auto, cpu, cuda"),
        ("train.device=cuda:x", r"'train.device': unknown value 'cuda:x'.*cuda:N"),
        ("train.device=cpu:0", "'train.device': unknown value 'cpu:0'"),
        ("loss.zero_shot.weight=1.5", r"\[0, 1\]"),
        ("eval.recall_ks=[0]", "positive ints"),
        ("optim.lr=-1", "positive"),
        ("badformat", "section.key=value"),
        ("loss.name.x=1", "loss.name.*expected str"),
    ],
)
def test_value_checks(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, [override])


def test_device_accepts_cuda_with_an_index():
    # whether the device exists is checked when training starts (gspdml.engine.distributed.resolve_device)
    assert load_config(None, ["train.device=cuda:1"]).train.device == "cuda:1"


def test_removed_proxy_lr_mult_points_to_the_loss_keyword():
    with pytest.raises(ConfigError, match=r"'optim.proxy_lr_mult' was removed; set loss.kwargs.proxy_lr_mult"):
        load_config(None, ["optim.proxy_lr_mult=7"])
    assert load_config(None, ["loss.kwargs.proxy_lr_mult=7"]).loss.kwargs == {"proxy_lr_mult": 7}


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n")
    with pytest.raises(ConfigError, match="mapping at top level"):
        load_config(lst)
    typo = tmp_path / "typo.yaml"
    typo.write_text("train: {max_step: 3}\n")
    with pytest.raises(ConfigError, match=r"typo.yaml: unknown config key 'train.max_step'"):
        load_config(typo)


def test_apply_overrides_does_not_mutate():
    base = {"train": {"seed": 1}}
    out = apply_overrides(base, ["train.seed=2"])
    assert base == {"train": {"seed": 1}} and out == {"train": {"seed": 2}}


def test_every_shipped_config_validates():
    files = sorted(CONFIGS.glob("*.yaml"))
    assert len(files) >= 60  # 56 paper settings + the small datasets
    for f in files:
        cfg = load_config(f)
        assert cfg.name == f.stem, f


def test_paper_configs_are_in_sync_with_the_generator():
    spec = importlib.util.spec_from_file_location("cfg_generate", Path(__file__).resolve().parents[1] / "configs" / "generate.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    names = []
    for ds in gen.DATASETS:
        for loss in gen.LOSSES:
            for pool in gen.POOLINGS:
                expected = gen.build(ds, loss, pool)
                on_disk = yaml.safe_load((CONFIGS / f"{expected['name']}.yaml").read_text())
                assert on_disk == expected, expected["name"]
                names.append(expected["name"])
    assert len(names) == 56
    c2 = yaml.safe_load((CONFIGS / "cars196_c2_gsp.yaml").read_text())
    assert c2["loss"]["kwargs"] == {"pos_margin": 0.2652, "neg_margin": 0.5409}
    pnca = load_config(CONFIGS / "sop_pnca_gsp.yaml")
    assert pnca.model.pooling_kwargs["eps"] == 0.5 and pnca.model.pooling_kwargs["num_prototypes"] == 128
    assert pnca.loss.zero_shot.enabled and pnca.data.fold == 0
    gap = load_config(CONFIGS / "cub_ms_gap.yaml")
    assert gap.model.pooling == "gap" and not gap.loss.zero_shot.enabled
    inshop = load_config(CONFIGS / "inshop_ms_gsp.yaml")
    assert (inshop.data.test_split, inshop.data.gallery_split) == ("query", "gallery")


def test_override_into_a_scalar_is_reported():
    with pytest.raises(ConfigError, match="'name' is not a section"):
        apply_overrides({"loss": {"name": "MS"}}, ["loss.name.x=1"])


def test_shipped_configs_name_registered_components():
    from gspdml.data import DATASETS
    from gspdml.losses import LOSSES
    from gspdml.models import BACKBONES
    from gspdml.pooling.registry import POOLINGS

    losses = {k.lower() for k in LOSSES}
    for f in sorted(CONFIGS.glob("*.yaml")):
        cfg = load_config(f)
        assert cfg.data.dataset in DATASETS, f
        assert cfg.model.backbone in BACKBONES, f
        assert cfg.model.pooling in POOLINGS, f
        assert cfg.loss.name.lower() in losses, f


def test_precision_replaces_amp():
    assert TrainConfig().train.precision == "auto" and TrainConfig().train.freeze_backbone_epochs == 0
    assert load_config(None, ["train.precision=bf16"]).train.precision == "bf16"
    for value in ("true", "false", "null"):
        with pytest.raises(ConfigError, match=r"'train.amp' was removed; set train.precision instead"):
            load_config(None, [f"train.amp={value}"])
    with pytest.raises(ConfigError, match=r"'train.precision': unknown value 'fp8'; valid choices are: auto, fp32, bf16, fp16"):
        load_config(None, ["train.precision=fp8"])


def test_resolve_precision():
    import torch

    from gspdml.config import resolve_precision

    table = {("auto", "cuda"): torch.float16, ("auto", "cpu"): None, ("fp32", "cuda"): None, ("fp32", "cpu"): None,
             ("bf16", "cuda"): torch.bfloat16, ("bf16", "cpu"): torch.bfloat16, ("fp16", "cuda"): torch.float16,
             ("FP16", "cuda:1"): torch.float16}
    for (precision, device), dtype in table.items():
        assert resolve_precision(precision, device) is dtype, (precision, device)
    assert resolve_precision("bf16", torch.device("cpu")) is torch.bfloat16
    with pytest.raises(ConfigError, match=r"fp16 needs CUDA.*bf16.*works on the CPU"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(ConfigError, match="valid choices are: auto, fp32, bf16, fp16"):
        resolve_precision("half", "cuda")


def test_freeze_backbone_epochs_range():
    assert load_config(None, ["train.freeze_backbone_epochs=3"]).train.freeze_backbone_epochs == 3
    with pytest.raises(ConfigError, match=r"'train.freeze_backbone_epochs': expected an int >= 0, got -1"):
        load_config(None, ["train.freeze_backbone_epochs=-1"])


def test_stored_configs_with_amp_are_upgraded():
    from gspdml.config import upgrade_stored_config

    stored = to_dict(TrainConfig())
    del stored["train"]["precision"]
    for amp, precision in ((None, "auto"), (True, "auto"), (False, "fp32")):
        old = {**stored, "train": {**stored["train"], "amp": amp}}
        new = upgrade_stored_config(old)
        assert "amp" in old["train"] and "amp" not in new["train"]  # a copy
        assert config_from_dict(new).train.precision == precision
    assert upgrade_stored_config(to_dict(TrainConfig())) == to_dict(TrainConfig())


def test_stored_configs_without_projection_keep_their_old_head():
    from gspdml.config import upgrade_stored_config

    for pooling, upgraded in (("gsp", "gsp"), ("gap", "gap"), ("gmp+gsp", "gmp+gsp-projected"),
                              ("GeM+GSP", "gem+gsp-projected")):
        stored = to_dict(TrainConfig())
        stored["model"]["pooling"] = pooling
        del stored["model"]["projection"]
        model = config_from_dict(upgrade_stored_config(stored)).model
        assert (model.projection, model.pooling) == ("before", upgraded)
    # a config written with the key is left alone, whatever its pooling
    current = to_dict(TrainConfig())
    current["model"]["pooling"] = "gmp+gsp"
    assert upgrade_stored_config(current) == current


def test_optimiser_recipe_keys_are_typed_and_checked():
    """optim.eps, optim.plateau_patience, optim.min_lr, train.grad_clip_value (ProxyNCA++)."""
    cfg = config_from_dict({"optim": {"eps": 1, "scheduler": "plateau", "gamma": 0.1, "plateau_patience": 4,
                                      "min_lr": 1e-6}, "train": {"grad_clip_value": 10}, "data": {"fold": 0}})
    assert (cfg.optim.eps, cfg.optim.plateau_patience, cfg.optim.min_lr, cfg.train.grad_clip_value) == (1.0, 4, 1e-6, 10.0)
    defaults = config_from_dict({})
    assert (defaults.optim.eps, defaults.optim.min_lr, defaults.train.grad_clip_value) == (1e-8, 0.0, None)
    for data, match in (({"optim": {"eps": -1.0}}, "'optim.eps': expected a positive finite float"),
                        ({"optim": {"min_lr": float("inf")}}, "'optim.min_lr'"),
                        ({"train": {"grad_clip_value": 0.0}}, "'train.grad_clip_value': expected null or a positive"),
                        ({"optim": {"plateau_patience": 1.5}}, "'optim.plateau_patience'"),
                        ({"optim": {"scheduler": "plateau", "gamma": 2.0}}, "needs gamma < 1"),
                        ({"optim": {"scheduler": "plateaux"}}, "valid choices are: .*plateau")):
        with pytest.raises(ConfigError, match=match):
            config_from_dict(data)
