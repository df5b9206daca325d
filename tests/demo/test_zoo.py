"""The pooling zoo (gspdml.demo.zoo): ranking and verdict against hand-computed values, the run
folder from known metrics (a stand-in for training), failures in the table, and unknown names."""
import csv
import json

import numpy as np
import pytest
import torch

from gspdml.demo import studies, zoo
from gspdml.errors import ConfigError
from gspdml.pooling import POOLINGS


def _entry(mean, std, seeds=3):
    return {"mean": {"map_at_r": mean}, "std": {"map_at_r": std}, "seeds": list(range(seeds)),
            "values": {"map_at_r": [mean] * seeds}, "seconds": [1.0] * seeds}


SUMMARY = {"a": _entry(0.60, 0.02), "b": _entry(0.58, 0.03), "c": _entry(0.45, 0.01), "e": _entry(0.41, 0.02),
           "gap": _entry(0.40, 0.02), "d": _entry(0.30, 0.05)}


def test_rank_by_mean_ties_by_name():
    assert zoo.rank_poolings(SUMMARY) == ["a", "b", "c", "e", "gap", "d"]
    assert zoo.rank_poolings({"y": _entry(0.5, 0), "x": _entry(0.5, 0)}) == ["x", "y"]


def test_verdict_hand_computed():
    lead, vs_gap, breaks = zoo.zoo_verdict(SUMMARY)
    # a - b = 0.02 < hypot(0.02, 0.03) = 0.036; a - c = 0.15, a - e = 0.19, ... all > spread
    assert "a ranks first" in lead and "its lead over b is within" in lead
    assert "ahead of c, e, gap, d by more than the spread" in lead
    # vs gap: a +0.20 (0.028), b +0.18 (0.036), c +0.05 (0.022) above; d -0.10 (0.054) below; e +0.01 (0.028) level
    assert "above by more than the spread: a, b, c;" in vs_gap
    assert "below by more than the spread: d;" in vs_gap and "within the spread: e." in vs_gap
    # neighbours: b-c 0.13 > 0.032, c-e 0.04 > 0.022, gap-d 0.10 > 0.054; a-b, e-gap within
    assert "b > c (+0.130 vs spread 0.032)" in breaks and "c > e (+0.040 vs spread 0.022)" in breaks
    assert "gap > d (+0.100 vs spread 0.054)" in breaks
    assert "a > b" not in breaks and "e > gap" not in breaks


def test_verdict_single_seed_and_empty():
    one = {"a": _entry(0.6, 0.0, seeds=1), "gap": _entry(0.1, 0.0, seeds=1)}
    (line,) = zoo.zoo_verdict(one)
    assert "Single seed" in line and "says nothing" in line
    assert "nothing to rank" in zoo.zoo_verdict({})[0]


def test_unknown_pooling_lists_the_choices():
    with pytest.raises(ConfigError, match="unknown pooling 'nope'; valid choices are: attention, cbam"):
        zoo.zoo_poolings(["gap", "nope"])
    assert zoo.zoo_poolings(["GAP", "gsp", "gap"]) == ["gap", "gsp"]
    assert zoo.zoo_poolings() == POOLINGS.names()


def test_pooling_specs_gsp_family_gets_the_demo_settings():
    budget = studies.BUDGETS["default"]
    for name in ("gsp", "gmp+gsp", "gem+gsp"):
        kw = zoo.pooling_spec(name, budget)["pooling_kwargs"]
        assert kw["mu"] == 0.3 and kw["eps"] == 20.0 and kw["num_prototypes"] == budget.num_prototypes
    for name in ("gap", "gsop", "netvlad"):
        assert zoo.pooling_spec(name, budget) == {"pooling": name, "pooling_kwargs": {}, "zs": False}
    cfg = studies.digits_config("netvlad", budget, 1, spec=zoo.pooling_spec("netvlad", budget))
    assert cfg["model"]["pooling"] == "netvlad" and cfg["train"]["seed"] == 1
    assert "projection" not in cfg["model"]  # the head is the model config's default
    # the recipe is the demo's digits recipe, only the pooling differs
    gap = studies.digits_config("GAP", budget, 1)
    for part in ("data", "loss", "optim", "train", "eval"):
        assert cfg[part] == gap[part]


# known metrics per (pooling, seed): a stand-in for training
KNOWN = {"gap": [0.40, 0.42], "gsp": [0.55, 0.61], "gmp": [0.30, 0.50]}


def _fake_run_method(fail=()):
    def run(study, method, cfg, train_ds, test_ds, mask_fn, progress=True, grid=None):
        seed = cfg["train"]["seed"]
        if (method, seed) in fail or method in fail:
            raise RuntimeError(f"diverged | {method}")
        v = KNOWN[method][seed]
        return studies.RunOutput(study=study, method=method, seed=seed,
                                 metrics={"map_at_r": v, "r_precision": v + 0.1, "precision_at_1": v + 0.2},
                                 seconds=2.0, embeddings=torch.zeros(1, 2), labels=torch.zeros(1), details={},
                                 weights={"target_rel": 1.5})
    return run


def test_run_folder_ranks_known_metrics_and_reports_failures(tmp_path, monkeypatch):
    monkeypatch.setattr(studies, "run_method", _fake_run_method(fail={("gmp", 1)}))
    out = tmp_path / "zoo"
    res = zoo.run_zoo(out, poolings=["gap", "gsp", "gmp"], seeds=2, quick=True, progress=False)
    assert res["ranking"] == ["gsp", "gap", "gmp"]  # means 0.58, 0.41, 0.30 (gmp: seed 0 only)
    assert res["summary"]["gsp"]["mean"]["map_at_r"] == pytest.approx(0.58)
    assert res["summary"]["gsp"]["std"]["map_at_r"] == pytest.approx(np.std([0.55, 0.61], ddof=1))
    assert res["failures"] == {"gmp": [{"seed": 1, "error": "RuntimeError: diverged / gmp"}]}
    assert not res["all_failed"]
    # gmp has one finished seed: left out of the spread comparisons, and named
    assert res["verdict"][-1] == "Not compared (one finished seed, no spread): gmp."
    assert "gsp ranks first" in res["verdict"][0] and "gmp" not in res["verdict"][0]
    table = (out / "table.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and "rank" not in line]
    assert [r.split(" | ")[1] for r in rows] == ["gsp", "gap", "gmp"]
    assert "0.580 ± 0.042" in rows[0] and "1/2" in rows[2] and "seed 1 failed: RuntimeError" in rows[2]
    assert "![pooling zoo](poolings.png)" in table and "gsp ranks first" in table
    with open(out / "runs.csv") as fh:
        runs = list(csv.DictReader(fh))
    assert len(runs) == 6 and [r["status"] for r in runs].count("failed") == 1
    assert float(next(r for r in runs if r["pooling"] == "gsp" and r["seed"] == "1")["map_at_r"]) == 0.61
    with open(out / "summary.csv") as fh:
        assert [r["pooling"] for r in csv.DictReader(fh)] == ["gsp", "gap", "gmp"]
    settings = json.loads((out / "settings.json").read_text())
    assert settings["configs"]["gsp"]["model"]["pooling_kwargs"]["mu"] == 0.3
    assert settings["budget"]["name"] == "quick" and settings["seed_list"] == [0, 1]
    assert (out / "poolings.png").stat().st_size > 1000
    assert json.loads((out / "metrics.json").read_text())["ranking"] == ["gsp", "gap", "gmp"]


def test_all_failed_pooling_is_listed_and_every_failure_exits_non_zero(tmp_path, monkeypatch, capsys):
    from gspdml.cli import main

    monkeypatch.setattr(studies, "run_method", _fake_run_method(fail={"gmp"}))
    assert main(["study", "poolings", "--quick", "--seeds", "2", "--poolings", "gap", "gmp",
                 "--out", str(tmp_path / "one"), "--no-progress"]) == 0
    table = (tmp_path / "one" / "table.md").read_text()
    assert "| - | gmp | failed | failed | failed | - | 0/2 | - | failed: seed 0: RuntimeError" in table
    monkeypatch.setattr(studies, "run_method", _fake_run_method(fail={"gap", "gmp"}))
    assert main(["study", "poolings", "--quick", "--seeds", "1", "--poolings", "gap", "gmp",
                 "--out", str(tmp_path / "all"), "--no-progress"]) == 1
    assert "every run failed" in capsys.readouterr().err
    assert json.loads((tmp_path / "all" / "metrics.json").read_text())["all_failed"] is True


def test_torch_threads_sets_and_restores_and_rejects_bad_counts():
    import torch

    from gspdml.demo.studies import torch_threads
    from gspdml.errors import InputError

    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    for bad in (0, -2, True, 1.5):
        with pytest.raises(InputError, match="--threads must be an integer >= 1"):
            with torch_threads(bad):
                pass
    assert torch.get_num_threads() == before
