"""``gspdml configs``: the shipped configs, one line each (gspdml.cli.configs)."""
import json

from gspdml.cli import main
from gspdml.config import shipped_configs


def test_configs_lists_every_shipped_config(capsys):
    assert main(["configs"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["name", "dataset", "loss", "pooling", "L_ZS"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:]}
    assert set(rows) == set(shipped_configs()) and len(rows) >= 2
    assert rows["digits_collage_gsp"] == ["digits_collage", "MS", "gsp", "on"]


def test_configs_json(capsys):
    assert main(["configs", "--json"]) == 0
    entries = {e["name"]: e for e in json.loads(capsys.readouterr().out)}
    assert set(entries) == set(shipped_configs())
    digits = entries["digits_collage_gsp"]
    assert digits["dataset"] == "digits_collage" and digits["pooling"] == "gsp" and digits["zero_shot"] is True
    assert digits["path"].endswith("digits_collage_gsp.yaml")
