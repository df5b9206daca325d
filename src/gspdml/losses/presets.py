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

#: The losses with learnable proxies (their ``param_groups()`` hold a ``"proxies"`` group).
PROXY_LOSSES = ("PNCA", "PAnchor", "PAnchor+NIR", "PNCA+NIR")
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
