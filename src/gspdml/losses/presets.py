"""The losses' reference settings, defined once: per-dataset tables and learning-rate multipliers.

The built-in builders (:mod:`gspdml.losses.builtin`) take their defaults from here and
``configs/generate.py`` writes the shipped configs from the same tables. This module imports no
torch, so the generator stays light.
"""
from __future__ import annotations

from typing import Optional

from gspdml.errors import ConfigError

__all__ = [
    "DATASETS",
    "DATASET_ALIASES",
    "C2_MARGINS",
    "NIR_WEIGHTS",
    "XBM_MEMORY_SIZES",
    "XBM_START",
    "PNCA_TEMPERATURE",
    "PNCA_PP_TEMPERATURE",
    "PNCA_PP_PROXY_LR_MULT",
    "PROXY_LOSSES",
    "PROXY_LR_MULT",
    "NIR_PROXY_LR_MULT",
    "NIR_FLOW_LR_MULT",
    "dataset_key",
]

#: The datasets with reference settings, in the paper's order.
DATASETS = ("cub", "cars196", "sop", "inshop")
#: Other spellings of those datasets -> their key in :data:`DATASETS`.
DATASET_ALIASES = {
    "cub200": "cub",
    "cub-200-2011": "cub",
    "cars": "cars196",
    "stanford_online_products": "sop",
    "in-shop": "inshop",
}
#: MLRC-tuned contrastive margins ``(pos, neg)`` of C2. In-shop has no tuned value: SOP's are used.
C2_MARGINS = {"cub": (0.0, 0.3841), "cars196": (0.2652, 0.5409), "sop": (0.2850, 0.5130), "inshop": (0.2850, 0.5130)}
#: NIR's weight ``w`` of the proxy loss in ``L_NIR + w * L_proxy``. In-shop: SOP's value.
NIR_WEIGHTS = {"cub": 0.0075, "cars196": 0.01, "sop": 0.3, "inshop": 0.3}
#: XBM memory in embeddings = the GSP authors' ``batches_in_mem`` x their batch of 32 (8 classes x 4):
#: 25 batches for CUB/Cars196 (``configs/dml_small.yaml``), 1400 for SOP and 400 for In-shop
#: (``trainModel.py``).
XBM_MEMORY_SIZES = {"cub": 25 * 32, "cars196": 25 * 32, "sop": 1400 * 32, "inshop": 400 * 32}
#: XBM ``start_at``: steps before the memory starts to fill (the memory loss starts once it is full).
XBM_START = 1000
#: The GSP authors' ProxyNCA temperature (``lambda_softmax`` 0.11: softmax over cos / 0.11).
PNCA_TEMPERATURE = 0.11
#: ProxyNCA++'s temperature T = 1/9 on the squared distance of normalised vectors.
PNCA_PP_TEMPERATURE = 1.0 / 9.0
#: ProxyNCA++'s "fast-moving proxies": proxy lr / backbone lr in its configs (Adam, eps 1):
#: cub.json and inshop.json 4e2 / 4e-3, sop.json 4e1*6 / 4e-3*6; Cars196 has no config: CUB's.
PNCA_PP_PROXY_LR_MULT = {"cub": 1e5, "cars196": 1e5, "sop": 1e4, "inshop": 1e5}

#: The losses with learnable proxies (their ``param_groups()`` hold a ``"proxies"`` group).
PROXY_LOSSES = ("PNCA", "PAnchor", "PAnchor+NIR", "PNCA+NIR", "PNCA++")
#: Learning-rate multiplier of the proxies of a plain proxy loss.
PROXY_LR_MULT = 100.0
#: Learning-rate multipliers of the proxies and of the flow of a ``+NIR`` loss (NIR's settings).
NIR_PROXY_LR_MULT = 4000.0
NIR_FLOW_LR_MULT = 50.0


def dataset_key(dataset: Optional[str], loss: str) -> Optional[str]:
    """``dataset`` as a key of the tables above (aliases resolved, case-insensitive); None stays None.

    Raises ConfigError naming ``loss`` and the valid datasets for anything else.
    """
    if dataset is None:
        return None
    key = str(dataset).strip().lower()
    key = DATASET_ALIASES.get(key, key)
    if key not in DATASETS:
        raise ConfigError(
            f"loss {loss!r}: unknown dataset {dataset!r} for the reference settings; valid choices are: "
            f"{', '.join(DATASETS)} (or leave it unset and give the settings explicitly)"
        )
    return key
