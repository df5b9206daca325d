"""The generated paper configs follow docs/paper-settings.md, load, validate, and the generator is idempotent."""
from __future__ import annotations

import fnmatch
import importlib.util
import re
from pathlib import Path

import pytest
import yaml

from gspdml.config import check_learnable, load_config, shipped_configs, to_dict, validate_config

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "paper-settings.md"
SECTIONS = ("data", "model", "loss", "optim", "train", "eval")
PAIR = re.compile(r"`((?:%s)\.[A-Za-z0-9_.]+): ([^`]+)`" % "|".join(SECTIONS))


def _generator():
    spec = importlib.util.spec_from_file_location("cfg_generate_settings", ROOT / "configs" / "generate.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    return gen


def _rows():
    """(patterns, setting, {key: value}) of every row of every doc table with `configs` and `gspdml` columns."""
    rows, header = [], None
    for line in DOC.read_text().splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
            continue
        if set(cells) <= {"---"} or "configs" not in header or "gspdml" not in header:
            continue
        patterns = re.findall(r"`([^`]+)`", cells[header.index("configs")])
        pairs = {k: yaml.safe_load(v) for k, v in PAIR.findall(cells[header.index("gspdml")])}
        rows.append((patterns, cells[header.index("setting")], pairs))
    return rows


def _generated_names(gen) -> list[str]:
    names = [gen.build(d, l, p)["name"] for d in gen.DATASETS for l in gen.LOSSES for p in gen.POOLINGS]
    names += [gen.build_conventional(d, b, p)["name"] for d in gen.CONV_DATASETS for b in gen.CONV_BACKBONES
              for p in gen.CONV_POOLINGS]
    names += [gen.build_nir(d, l)["name"] for d in gen.NIR_DATASETS for l in gen.NIR_LOSSES]
    names += [gen.build_pnca_pp(d)["name"] for d in gen.PNCA_PP_DATASETS]
    return names


def _lookup(tree: dict, key: str):
    node = tree
    for part in key.split("."):
        assert isinstance(node, dict) and part in node, f"{key} missing"
        node = node[part]
    return node


def test_the_doc_tables_cover_every_generated_config_and_the_required_settings():
    gen, rows = _generator(), _rows()
    names = _generated_names(gen)
    assert len(names) == 56 + 16 + 6 + 4 and len(set(names)) == len(names)
    keys_per_config = {n: set() for n in names}
    for patterns, setting, pairs in rows:
        matched = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
        assert matched, f"row {setting!r}: patterns {patterns} match no generated config"
        for n in matched:
            keys_per_config[n] |= set(pairs)
    required = {"model.backbone", "data.image_size", "data.classes_per_batch", "data.samples_per_class",
                "optim.name", "optim.lr", "optim.weight_decay", "train.freeze_backbone_epochs", "model.local_dim",
                "loss.name", "eval.recall_ks", "model.pooling"}
    for n, keys in keys_per_config.items():
        assert required <= keys, f"{n}: the doc has no value for {sorted(required - keys)}"
        if n.endswith("gsp"):
            gsp_keys = {"model.pooling_kwargs.mu", "model.pooling_kwargs.eps", "model.pooling_kwargs.num_prototypes",
                        "model.pooling_kwargs.memory_size", "train.pooling_warmup_epochs", "loss.zero_shot.enabled"}
            assert gsp_keys <= keys, f"{n}: the doc has no value for {sorted(gsp_keys - keys)}"


def test_every_documented_value_is_in_the_shipped_configs():
    gen = _generator()
    names = _generated_names(gen)
    shipped = shipped_configs()
    checked = 0
    for patterns, setting, pairs in _rows():
        for n in names:
            if not any(fnmatch.fnmatchcase(n, p) for p in patterns):
                continue
            tree = to_dict(load_config(shipped[n]))
            for key, value in pairs.items():
                assert _lookup(tree, key) == value, f"{n}: {key} = {_lookup(tree, key)!r}, the doc says {value!r} ({setting})"
                checked += 1
    assert checked > 1000


@pytest.mark.parametrize("name", ["cub_pnca_gsp", "cars196_panchor_gap", "sop_pnca_gsp", "inshop_panchor_gsp"])
def test_proxy_configs_use_the_authors_batch_and_warmups(name):
    cfg = load_config(name)
    cap = {"cub": 100, "cars196": 96}.get(cfg.data.dataset, 10 ** 9)
    assert (cfg.data.classes_per_batch, cfg.data.samples_per_class) == (min(8 * 4, cap), 1)
    assert cfg.train.freeze_backbone_epochs == 1
    assert cfg.train.pooling_warmup_epochs == (1 if cfg.model.pooling == "gsp" else 0)
    check_learnable(cfg)  # a proxy loss learns from one sample per class
    check_learnable(cfg, num_classes=75)  # CUB's MLRC training folds: 75 classes >= 32


def test_conventional_configs_follow_the_authors_files():
    for name in ("conv_cub_bninception_xbm_gapgmp", "conv_inshop_resnet50_xbm_gmpgsp"):
        cfg = load_config(name)
        assert cfg.data.fold is None and cfg.model.local_dim == 512
        batch = cfg.data.classes_per_batch * cfg.data.samples_per_class
        batches = {"cub": 50, "inshop": 400}[cfg.data.dataset]
        assert cfg.loss.kwargs["memory_size"] == batches * batch
    gsp = load_config("conv_inshop_resnet50_xbm_gmpgsp")
    assert gsp.model.pooling == "gmp+gsp" and gsp.loss.zero_shot.enabled and gsp.optim.lr == 1e-4
    assert (gsp.data.test_split, gsp.data.gallery_split) == ("query", "gallery")


def test_every_generated_config_loads_and_validates():
    gen = _generator()
    shipped = shipped_configs()
    for n in _generated_names(gen):
        cfg = load_config(shipped[n])
        validate_config(cfg)
        check_learnable(cfg)
        assert cfg.name == n


def test_generator_is_idempotent(tmp_path):
    gen = _generator()
    written = gen.main(tmp_path)
    assert len(written) == 82
    for path in written:
        committed = gen.OUT / path.name
        assert committed.read_bytes() == path.read_bytes(), path.name
