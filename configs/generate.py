"""Generate the paper configs: the GSP paper's MLRC grid, its conventional protocol, the NIR recipe.

Run from the repository root (the generated files are committed)::

    python configs/generate.py            # writes src/gspdml/configs/*.yaml

* ``<dataset>_<loss>_<gsp|gap>.yaml``: {cub, cars196, sop, inshop} x 7 losses x {GSP, GAP}, the GSP
  paper's MLRC setting (Table 1 / Table 2): BN-Inception with frozen BN, 227 px, 128-D, Adam lr 1e-5 /
  wd 1e-4, 8 classes x 4 samples, validation on MLRC fold 0 every 100 (SOP, In-shop: 1000) steps with
  early stopping after 15 (10) validations without improvement (the authors' dml_small / dml_large
  ``steps_per_epoch`` and ``early_stopping_patience``); ``gspdml protocol`` runs all 4 folds. GSP: mu 0.3,
  64 prototypes (128 for SOP/In-shop), eps 5.0, k-center initialisation from a memory of 1024 GAP
  vectors, L_ZS lambda 0.1 (ridge 0.05). Proxy losses (PNCA, PAnchor) as the authors' trainModel.py
  switches them: batches of 32 distinct classes x 1 sample, the backbone frozen for the first epoch,
  GSP eps 0.5 and GSP outputting GAP (memory not filled) during that epoch.
* ``conv_<dataset>_<backbone>_xbm_<gapgmp|gmpgsp>.yaml``: the supplement's conventional protocol
  (Sec. 1.1; the authors' conventional_*_default.yaml, bninception_/resnet50_{small,large}.yaml): train
  on the train split (first half of the classes), test on the rest, 512-D, Recall@K, GAP+GMP baseline
  head vs GMP+GSP, XBM with the authors' memory, BN-Inception or ResNet-50.
* ``nir_<dataset>_<panchor|pnca>.yaml``: the NIR paper's recipe (Roth et al. 2022) for CUB, Cars196
  and SOP: ResNet-50 (frozen BN) at 224 px, 128-D, Adam lr 1e-5 / wd 4e-4, 45 classes x 2 samples,
  conventional protocol, ``L_NIR + w * L_proxy`` with proxies x4000 and the flow x50, the backbone
  frozen for the first epoch(s).

* ``pnca_pp_<dataset>.yaml``: the ProxyNCA++ recipe (Teh et al. 2020; ``euwern/proxynca_pp`` config/*.json,
  train.py) for CUB, Cars196 (CUB's values: no Cars196 config), SOP and In-shop: ResNet-50 (BN trained) at
  256 px, GMP + LayerNorm + Linear, Adam eps 1 / wd 0, gradients clipped by value 10, 5 warm-up epochs with the
  backbone frozen, ReduceLROnPlateau (x0.1, patience 4) on the validation MAP@R.

Every value and its source is listed in docs/paper-settings.md (tests/configs/test_paper_settings.py
checks the files against its tables). Losses get ``dataset`` plus only what differs from the loss's
defaults (which are the authors' values). The small shipped datasets have hand-written configs.
"""
from __future__ import annotations

import copy
from pathlib import Path

import yaml

from gspdml.losses.presets import C2_MARGINS, NIR_FLOW_LR_MULT, NIR_PROXY_LR_MULT, NIR_WEIGHTS, PROXY_LOSSES

HERE = Path(__file__).resolve().parent
#: the configs ship inside the package (``gspdml train -c NAME`` finds them by name)
OUT = HERE.parent / "src" / "gspdml" / "configs"

BASE = {
    "data": {
        "image_size": 227,
        "transform": "mlrc",
        "normalization": "bninception",
        "fold": 0,
        "num_folds": 4,
        "classes_per_batch": 8,
        "samples_per_class": 4,
        "num_workers": 8,
    },
    "model": {
        "backbone": "bninception",
        "pretrained": "weights/bn_inception-52deb4733.pth",
        "local_dim": 128,
        "freeze_bn": True,
        "projection": "auto",
    },
    "optim": {"name": "adam", "lr": 1.0e-5, "weight_decay": 1.0e-4, "scheduler": "none"},
    "train": {
        "max_epochs": 100,
        "eval_every_steps": 100,
        "patience": 15,
        "grad_clip": 10.0,
        "grad_clip_value": 10.0,
        "checkpoint_every_steps": 1000,
        "seed": 0,
        "log_every": 50,
    },
    "eval": {"batch_size": 128, "recall_ks": [1, 2, 4, 8]},
}

#: per dataset: data section, GSP prototypes (the authors' support_size: dml_small 64, dml_large 128) and the
#: validation period / patience (dml_small: steps_per_epoch 100, patience 15; dml_large: 1000, 10)
DATASETS = {
    "cub": {"data": {"dataset": "cub", "root": "data/CUB_200_2011"}, "num_prototypes": 64,
            "train": {"eval_every_steps": 100, "patience": 15}},
    "cars196": {"data": {"dataset": "cars196", "root": "data/cars196"}, "num_prototypes": 64,
                "train": {"eval_every_steps": 100, "patience": 15}},
    "sop": {"data": {"dataset": "sop", "root": "data/Stanford_Online_Products"}, "num_prototypes": 128,
            "train": {"eval_every_steps": 1000, "patience": 10}},
    "inshop": {
        "data": {"dataset": "inshop", "root": "data/inshop", "test_split": "query", "gallery_split": "gallery"},
        "num_prototypes": 128,
        "train": {"eval_every_steps": 1000, "patience": 10},
    },
}

# the paper's 7 losses; their settings are the loss defaults of gspdml.losses (the authors' values) picked by
# ``dataset``, except C2's per-dataset margins (gspdml.losses.presets.C2_MARGINS), which the configs spell out
LOSSES = ("C1", "C2", "Triplet", "MS", "XBM", "PNCA", "PAnchor")

POOLINGS = ("gsp", "gap")

#: GSP settings shared by every generated GSP config (paper Sec. 4.4; dml_default.yaml)
GSP_KWARGS = {"mu": 0.3, "solver": "exact", "iters": 100, "init": "kcenter", "memory_size": 1024}
#: GSP entropy weight: 5.0 (dml_default.yaml, paper Sec. 4.4); proxy losses 0.5 (trainModel.py, paper)
GSP_EPS = {"pair": 5.0, "proxy": 0.5}
#: L_ZS (paper Sec. 4.3/4.4; the zsr section of the authors' configs; scale 9.5 from their zsr_loss.py)
ZERO_SHOT = {"enabled": True, "weight": 0.1, "ridge": 0.05, "scale": 9.5}

#: the authors' proxy-loss switch (trainModel.py): classes_per_batch * sample_per_class distinct classes x 1
#: sample, capped at 100 classes (CUB) / 96 (Cars196); warm_start 1 epoch with the backbone frozen
#: (dml_small/large: freeze_during_warmup true); GSP warm_up_steps = one epoch
PROXY_BATCH_CAP = {"cub": 100, "cars196": 96}
PROXY_WARMUP_EPOCHS = 1

ORDER = ["name", "output_dir", "data", "model", "loss", "optim", "train", "eval"]


def merge(a: dict, b: dict) -> dict:
    out = copy.deepcopy(a)
    for k, v in b.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def proxy_batch(dataset: str, classes_per_batch: int, samples_per_class: int) -> dict:
    """The authors' proxy-loss batch: all ``P * K`` slots distinct classes, 1 sample each, capped per dataset."""
    classes = classes_per_batch * samples_per_class
    cap = PROXY_BATCH_CAP.get(dataset)
    return {"classes_per_batch": min(classes, cap) if cap else classes, "samples_per_class": 1}


def loss_kwargs(dataset: str, loss: str) -> dict:
    """``dataset`` plus what differs from the loss's defaults (C2: its MLRC margins, spelled out)."""
    if loss == "C2":
        pos, neg = C2_MARGINS[dataset]
        return {"pos_margin": pos, "neg_margin": neg}
    return {"dataset": dataset}


def build(dataset: str, loss: str, pooling: str) -> dict:
    ds = DATASETS[dataset]
    proxy = loss in PROXY_LOSSES
    name = f"{dataset}_{loss.lower()}_{pooling}"
    cfg = merge(BASE, {"name": name, "output_dir": "runs", "data": ds["data"], "train": ds["train"]})
    cfg["loss"] = {"name": loss, "kwargs": loss_kwargs(dataset, loss)}
    if proxy:
        cfg["data"].update(proxy_batch(dataset, BASE["data"]["classes_per_batch"], BASE["data"]["samples_per_class"]))
        cfg["train"]["freeze_backbone_epochs"] = PROXY_WARMUP_EPOCHS
    if pooling == "gsp":
        cfg["model"]["pooling"] = "gsp"
        cfg["model"]["pooling_kwargs"] = {"num_prototypes": ds["num_prototypes"],
                                          "eps": GSP_EPS["proxy" if proxy else "pair"], **GSP_KWARGS}
        cfg["loss"]["zero_shot"] = dict(ZERO_SHOT)
        if proxy:
            cfg["train"]["pooling_warmup_epochs"] = PROXY_WARMUP_EPOCHS
    else:
        cfg["model"]["pooling"] = "gap"
        cfg["model"]["pooling_kwargs"] = {}
        cfg["loss"]["zero_shot"] = {"enabled": False}
    return {k: cfg[k] for k in ORDER}


# --- the conventional protocol (supplement Sec. 1.1; the authors' conventional_{bninception,resnet50}_default.yaml
# with bninception_/resnet50_{small,large}.yaml; small = CUB, Cars196, large = SOP, In-shop) -------------------------
CONV_BASE = {
    "data": {"fold": None, "val_split": "test", "samples_per_class": 4, "num_workers": 8},
    "model": {"local_dim": 512, "freeze_bn": True, "projection": "auto"},
    "optim": {"name": "adam", "scheduler": "plateau", "gamma": 0.5, "min_lr": 1.0e-6},
    "train": {"max_epochs": 1000, "grad_clip": 10.0, "grad_clip_value": 10.0, "checkpoint_every_steps": 1000,
              "seed": 0, "log_every": 50},
    "eval": {"batch_size": 128, "use_best": True},
}

#: per backbone: image/normalisation, pretrained weights, batch classes (x4 samples), weight decay
CONV_BACKBONES = {
    "bninception": {"data": {"image_size": 227, "transform": "mlrc", "normalization": "bninception",
                             "classes_per_batch": 32},
                    "model": {"backbone": "bninception", "pretrained": "weights/bn_inception-52deb4733.pth"},
                    "optim": {"weight_decay": 1.0e-4}},
    "resnet50": {"data": {"image_size": 224, "transform": "imagenet", "normalization": "imagenet",
                          "classes_per_batch": 28},
                 "model": {"backbone": "resnet50", "pretrained": "weights/resnet50-0676ba61.pth"},
                 "optim": {"weight_decay": 4.0e-4}},
}

#: per size: lr, validation period (the authors' steps_per_epoch), early-stopping and plateau patience, XBM start
CONV_SIZES = {
    ("small", "bninception"): {"lr": 1.0e-5, "eval_every_steps": 25, "patience": 15, "plateau_patience": 4, "xbm_batches": 50, "xbm_start": 1000},
    ("small", "resnet50"): {"lr": 1.0e-5, "eval_every_steps": 25, "patience": 15, "plateau_patience": 4, "xbm_batches": 25, "xbm_start": 100},
    ("large", "bninception"): {"lr": 1.0e-4, "eval_every_steps": 250, "patience": 10, "plateau_patience": 3, "xbm_batches": 1400, "xbm_start": 1000},
    ("large", "resnet50"): {"lr": 1.0e-4, "eval_every_steps": 250, "patience": 10, "plateau_patience": 3, "xbm_batches": 1400, "xbm_start": 1000},
}

#: per dataset: size class, Recall@K list, XBM batches in memory where trainModel.py overrides it
CONV_DATASETS = {
    "cub": {"size": "small", "recall_ks": [1, 2, 4, 8]},
    "cars196": {"size": "small", "recall_ks": [1, 2, 4, 8]},
    "sop": {"size": "large", "recall_ks": [1, 10, 100, 1000], "xbm_batches": 1400},
    "inshop": {"size": "large", "recall_ks": [1, 10, 20, 30], "xbm_batches": 400},
}

#: config name part -> pooling (the supplement's GAP+GMP baseline head; GSP with augment_max_pool = GMP+GSP)
CONV_POOLINGS = {"gapgmp": "gap+gmp", "gmpgsp": "gmp+gsp"}


def build_conventional(dataset: str, backbone: str, pooling: str) -> dict:
    """The conventional-protocol XBM config of ``dataset`` with ``backbone`` and the ``pooling`` head."""
    spec, bb = CONV_DATASETS[dataset], CONV_BACKBONES[backbone]
    size = CONV_SIZES[(spec["size"], backbone)]
    name = f"conv_{dataset}_{backbone}_xbm_{pooling}"
    cfg = merge(CONV_BASE, {"name": name, "output_dir": "runs", "data": DATASETS[dataset]["data"]})
    cfg = merge(cfg, bb)
    cfg["optim"].update({"lr": size["lr"], "plateau_patience": size["plateau_patience"]})
    cfg["train"].update({"eval_every_steps": size["eval_every_steps"], "patience": size["patience"]})
    cfg["eval"]["recall_ks"] = list(spec["recall_ks"])
    batch = cfg["data"]["classes_per_batch"] * cfg["data"]["samples_per_class"]
    batches = spec.get("xbm_batches", size["xbm_batches"])
    cfg["loss"] = {"name": "XBM", "kwargs": {"dataset": dataset, "memory_size": batches * batch,
                                               "warmup_iters": size["xbm_start"]}}
    cfg["model"]["pooling"] = CONV_POOLINGS[pooling]
    if pooling == "gmpgsp":
        cfg["model"]["pooling_kwargs"] = {"num_prototypes": 64 if spec["size"] == "small" else 128,
                                          "eps": GSP_EPS["pair"], **GSP_KWARGS}
        cfg["loss"]["zero_shot"] = dict(ZERO_SHOT)
    else:
        cfg["model"]["pooling_kwargs"] = {}
        cfg["loss"]["zero_shot"] = {"enabled": False}
    cfg["data"] = {k: cfg["data"][k] for k in ("dataset", "root", "image_size", "transform", "normalization", "fold",
                                               "classes_per_batch", "samples_per_class", "num_workers", "test_split",
                                               "gallery_split", "val_split") if k in cfg["data"]}
    return {k: cfg[k] for k in ORDER}


# --- the NIR recipe (sources: the authors' nir_benchmark_runs.sh, parameters.py, main.py; see
# docs/paper-settings.md) ---------------------------------------------------------------------
NIR_BASE = {
    "data": {
        "image_size": 224,
        "transform": "imagenet",
        "normalization": "imagenet",
        "fold": None,
        "classes_per_batch": 45,
        "samples_per_class": 2,
        "num_workers": 8,
    },
    "model": {
        "backbone": "resnet50",
        "pretrained": "weights/resnet50-0676ba61.pth",
        "local_dim": 128,
        "freeze_bn": True,
        "projection": "auto",
        "pooling": "gap",
        "pooling_kwargs": {},
    },
    "optim": {"name": "adam", "lr": 1.0e-5, "weight_decay": 4.0e-4, "no_decay_norm_bias": False, "scheduler": "none"},
    "train": {
        "max_epochs": 100,
        "freeze_backbone_epochs": 1,
        "precision": "fp32",
        "eval_every_steps": None,
        "patience": None,
        "checkpoint_every_steps": 1000,
        "seed": 0,
        "log_every": 50,
    },
    "eval": {"batch_size": 128, "recall_ks": [1, 2, 4, 10], "metrics": ["nmi", "map_at_1000"]},
}

#: per dataset: what differs from NIR_BASE (SOP in the authors' script: 300 epochs, lr x0.2 at epochs 140 and
#: 230 (--tau 140 230 --gamma 0.2), 5 warm-up epochs, flow x1; CUB/Cars: --tau 100 is never reached in 100 epochs)
NIR_DATASETS = {
    "cub": {},
    "cars196": {},
    "sop": {"train": {"max_epochs": 300, "freeze_backbone_epochs": 5},
            "optim": {"scheduler": "multistep", "milestone_epochs": [140, 230], "gamma": 0.2},
            "loss_kwargs": {"flow_lr_mult": 1.0}},
}

#: config name part -> loss
NIR_LOSSES = {"panchor": "PAnchor+NIR", "pnca": "PNCA+NIR"}


def build_nir(dataset: str, loss: str) -> dict:
    """The NIR recipe config of ``dataset`` (cub, cars196, sop) with the base ``loss`` (panchor, pnca)."""
    spec = NIR_DATASETS[dataset]
    name = f"nir_{dataset}_{loss}"
    cfg = merge(NIR_BASE, {"name": name, "output_dir": "runs", "data": DATASETS[dataset]["data"]})
    cfg = merge(cfg, {k: v for k, v in spec.items() if k != "loss_kwargs"})
    kwargs = {
        "dataset": dataset,
        "proxy_weight": NIR_WEIGHTS[dataset],
        "proxy_lr_mult": NIR_PROXY_LR_MULT,
        "flow_lr_mult": NIR_FLOW_LR_MULT,
    }
    kwargs.update(spec.get("loss_kwargs", {}))
    cfg["loss"] = {"name": NIR_LOSSES[loss], "kwargs": kwargs, "zero_shot": {"enabled": False}}
    return {k: cfg[k] for k in ORDER}


# --- the ProxyNCA++ recipe (sources: euwern/proxynca_pp config/{cub,sop,inshop}.json, train.py, networks.py,
# dataset/config.json; see docs/paper-settings.md) ---------------------------------------------------------
PNCA_PP_BASE = {
    "data": {"image_size": 256, "transform": "imagenet", "normalization": "imagenet", "fold": None,
             "val_split": "test", "num_workers": 8},
    "model": {"backbone": "resnet50", "pretrained": "weights/resnet50-0676ba61.pth", "freeze_bn": False,
              "pooling": "gmp", "pooling_kwargs": {}, "projection": "after", "feature_norm": "layernorm"},
    "optim": {"name": "adam", "eps": 1.0, "weight_decay": 0.0, "no_decay_norm_bias": False, "scheduler": "plateau",
              "gamma": 0.1, "plateau_patience": 4, "min_lr": 0.0},
    "train": {"freeze_backbone_epochs": 5, "grad_clip_value": 10.0, "eval_every_steps": None, "patience": None,
              "checkpoint_every_steps": 1000, "seed": 0, "log_every": 50},
    "eval": {"batch_size": 128, "use_best": True},
}

#: per dataset: batch (classes x samples), embedding, lr, epochs (5 warm-up + nb_epochs), Recall@K
PNCA_PP_DATASETS = {
    "cub": {"classes": 8, "samples": 4, "dim": 2048, "lr": 4.0e-3, "epochs": 45, "recall_ks": [1, 2, 4, 8]},
    "cars196": {"classes": 8, "samples": 4, "dim": 2048, "lr": 4.0e-3, "epochs": 45, "recall_ks": [1, 2, 4, 8]},
    "sop": {"classes": 64, "samples": 3, "dim": 512, "lr": 2.4e-2, "epochs": 85, "recall_ks": [1, 10, 100, 1000]},
    "inshop": {"classes": 64, "samples": 3, "dim": 2048, "lr": 2.4e-2, "epochs": 85, "recall_ks": [1, 10, 20, 30]},
}


def build_pnca_pp(dataset: str) -> dict:
    """The ProxyNCA++ recipe config of ``dataset`` (cub, cars196, sop, inshop)."""
    spec = PNCA_PP_DATASETS[dataset]
    cfg = merge(PNCA_PP_BASE, {"name": f"pnca_pp_{dataset}", "output_dir": "runs", "data": DATASETS[dataset]["data"]})
    cfg["data"].update({"classes_per_batch": spec["classes"], "samples_per_class": spec["samples"]})
    cfg["model"]["local_dim"] = spec["dim"]
    cfg["optim"]["lr"] = spec["lr"]
    cfg["train"]["max_epochs"] = spec["epochs"]
    cfg["eval"]["recall_ks"] = list(spec["recall_ks"])
    cfg["loss"] = {"name": "PNCA++", "kwargs": {"dataset": dataset}, "zero_shot": {"enabled": False}}
    return {k: cfg[k] for k in ORDER}


def _write(cfg: dict, what: str, note: str = "", out: Path | None = None) -> Path:
    """Write ``cfg`` to ``<out or OUT>/<name>.yaml`` under a one-line header saying what it is."""
    path = (OUT if out is None else Path(out)) / f"{cfg['name']}.yaml"
    header = f"# {what} ({note}generated by configs/generate.py; edit the tables there)\n"
    path.write_text(header + yaml.safe_dump(cfg, sort_keys=False))
    return path


def main(out: Path | None = None) -> list[Path]:
    """Write every generated config to ``out`` (default: the package's configs folder); return the paths."""
    written = []
    for dataset in DATASETS:
        for loss in LOSSES:
            for pooling in POOLINGS:
                written.append(_write(build(dataset, loss, pooling),
                                      f"{dataset} / {loss} / {pooling.upper()}: the GSP paper's MLRC setting",
                                      "values and sources in docs/paper-settings.md; ", out))
    for dataset in CONV_DATASETS:
        for backbone in CONV_BACKBONES:
            for pooling in CONV_POOLINGS:
                written.append(_write(build_conventional(dataset, backbone, pooling),
                                      f"{dataset} / {backbone} / XBM / {CONV_POOLINGS[pooling].upper()}: the GSP "
                                      "supplement's conventional protocol",
                                      "values and sources in docs/paper-settings.md; ", out))
    for dataset in NIR_DATASETS:
        for loss in NIR_LOSSES:
            written.append(_write(build_nir(dataset, loss), f"{dataset} / {NIR_LOSSES[loss]}: the NIR paper's recipe",
                                  "Roth et al. 2022; values and sources in docs/paper-settings.md; ", out))
    for dataset in PNCA_PP_DATASETS:
        written.append(_write(build_pnca_pp(dataset), f"{dataset} / PNCA++: the ProxyNCA++ recipe",
                              "Teh et al. 2020; values and sources in docs/paper-settings.md; ", out))
    return written


if __name__ == "__main__":
    files = main()
    print(f"wrote {len(files)} configs to {OUT}")
