"""Generate the paper's configs: {cub, cars196, sop, inshop} x 7 losses x {gsp, gap}.

Run from the repository root (the generated files are committed)::

    python configs/generate.py            # writes src/gspdml/configs/<dataset>_<loss>_<pooling>.yaml

Every file is a base config (MLRC protocol: BN-Inception with frozen BN, 227 px, 128-D, Adam
lr 1e-5 / wd 1e-4, 8 classes x 4 samples, validation on MLRC fold 0 with early stopping) plus the
per-dataset and per-loss entries of the tables below. ``gspdml protocol`` runs all 4 folds.
GSP settings follow the paper (Sec. 4.4): mu 0.3, 64 prototypes (128 for the large SOP/In-shop),
eps 0.5 for proxy losses and 5.0 otherwise, zero-shot regulariser lambda 0.1 (ridge 0.05).
The small shipped datasets have hand-written configs next to these (digits_collage_*.yaml, ...).

It also writes the NIR paper's recipe (Roth et al. 2022), ``nir_<dataset>_<panchor|pnca>.yaml`` for
CUB, Cars196 and SOP: ResNet-50 (frozen BN) at 224 px, 128-D, Adam lr 1e-5 / wd 4e-4, 45 classes x 2
samples, conventional protocol (train on the train split, test on the test split, no validation),
``L_NIR + w * L_proxy`` with proxies x4000 and the flow x50, the backbone frozen for the first
epoch(s). Every value and its source in the authors' code is listed in docs/paper-settings.md.
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
    },
    "optim": {"name": "adam", "lr": 1.0e-5, "weight_decay": 1.0e-4, "scheduler": "none"},
    "train": {
        "max_epochs": 100,
        "eval_every_steps": None,
        "patience": 10,
        "checkpoint_every_steps": 1000,
        "seed": 0,
        "log_every": 50,
    },
    "eval": {"batch_size": 128, "recall_ks": [1, 2, 4, 8]},
}

DATASETS = {
    "cub": {"data": {"dataset": "cub", "root": "data/CUB_200_2011"}, "num_prototypes": 64},
    "cars196": {"data": {"dataset": "cars196", "root": "data/cars196"}, "num_prototypes": 64},
    "sop": {"data": {"dataset": "sop", "root": "data/Stanford_Online_Products"}, "num_prototypes": 128},
    "inshop": {
        "data": {"dataset": "inshop", "root": "data/inshop", "test_split": "query", "gallery_split": "gallery"},
        "num_prototypes": 128,
    },
}

# the paper's 7 losses; their settings are the reference defaults of gspdml.losses, except C2's
# per-dataset margins (gspdml.losses.presets.C2_MARGINS), which the configs spell out
LOSSES = ("C1", "C2", "Triplet", "MS", "XBM", "PNCA", "PAnchor")

POOLINGS = ("gsp", "gap")


def merge(a: dict, b: dict) -> dict:
    out = copy.deepcopy(a)
    for k, v in b.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def build(dataset: str, loss: str, pooling: str) -> dict:
    ds = DATASETS[dataset]
    kwargs = {}
    if loss == "C2":
        pos, neg = C2_MARGINS[dataset]
        kwargs = {"pos_margin": pos, "neg_margin": neg}
    proxy = loss in PROXY_LOSSES
    name = f"{dataset}_{loss.lower()}_{pooling}"
    cfg = merge(BASE, {"name": name, "output_dir": "runs", "data": ds["data"]})
    cfg["loss"] = {"name": loss, "kwargs": dict(kwargs)}
    if pooling == "gsp":
        cfg["model"]["pooling"] = "gsp"
        cfg["model"]["pooling_kwargs"] = {
            "num_prototypes": ds["num_prototypes"],
            "mu": 0.3,
            "eps": 0.5 if proxy else 5.0,
            "solver": "exact",
        }
        cfg["loss"]["zero_shot"] = {"enabled": True, "weight": 0.1, "ridge": 0.05, "scale": 9.5}
    else:
        cfg["model"]["pooling"] = "gap"
        cfg["model"]["pooling_kwargs"] = {}
        cfg["loss"]["zero_shot"] = {"enabled": False}
    # key order as in the dataclasses
    order = ["name", "output_dir", "data", "model", "loss", "optim", "train", "eval"]
    return {k: cfg[k] for k in order}


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
    order = ["name", "output_dir", "data", "model", "loss", "optim", "train", "eval"]
    return {k: cfg[k] for k in order}


def _write(cfg: dict, what: str, note: str = "") -> Path:
    """Write ``cfg`` to ``OUT/<name>.yaml`` under a one-line header saying what it is."""
    path = OUT / f"{cfg['name']}.yaml"
    header = f"# {what} ({note}generated by configs/generate.py; edit the tables there)\n"
    path.write_text(header + yaml.safe_dump(cfg, sort_keys=False))
    return path


def main() -> list[Path]:
    written = []
    for dataset in DATASETS:
        for loss in LOSSES:
            for pooling in POOLINGS:
                written.append(_write(build(dataset, loss, pooling),
                                      f"{dataset} / {loss} / {pooling.upper()}: the GSP paper's MLRC setting"))
    for dataset in NIR_DATASETS:
        for loss in NIR_LOSSES:
            written.append(_write(build_nir(dataset, loss), f"{dataset} / {NIR_LOSSES[loss]}: the NIR paper's recipe",
                                  "Roth et al. 2022; values and sources in docs/paper-settings.md; "))
    return written


if __name__ == "__main__":
    files = main()
    print(f"wrote {len(files)} configs to {OUT}")
