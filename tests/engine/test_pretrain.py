"""Classification pretraining (``gspdml.engine.pretrain`` and ``gspdml pretrain``) on the tiny CIFAR-100 pickles."""
from __future__ import annotations

import csv
import json

import pytest
import torch

from fixtures_data import make_cifar100
from gspdml.cli import main
from gspdml.config import load_config
from gspdml.engine.pretrain import METRIC_COLUMNS, Classifier, pretrain
from gspdml.errors import ConfigError, DataError
from gspdml.models import build_backbone

SMALL = ["train.max_steps=2", "data.classes_per_batch=4", "data.samples_per_class=2", "data.num_workers=0",
         "train.device=cpu", "eval.batch_size=50"]


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    return make_cifar100(tmp_path_factory.mktemp("cifar"), train_per_fine=1, test_per_fine=1)


def test_recipe_config():
    cfg = load_config("cifar100_resnet20_pretrain")
    assert (cfg.data.dataset, cfg.data.normalization, cfg.model.backbone) == ("cifar100", "cifar100", "resnet20")
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.momentum, cfg.optim.scheduler) == ("sgd", 0.1, 0.9, "cosine")
    assert cfg.data.classes_per_batch * cfg.data.samples_per_class == 128 and cfg.train.max_epochs == 200


def test_pretrain_two_steps_and_load_weights(cifar, tmp_path):
    cfg = load_config("cifar100_resnet20_pretrain", [f"data.root={cifar['root']}", f"output_dir={tmp_path}"] + SMALL)
    torch.manual_seed(0)
    before = build_backbone("resnet20").state_dict()
    result = pretrain(cfg, progress=False)
    assert result.run_dir == tmp_path / "cifar100_resnet20_pretrain"
    assert {p.name for p in result.run_dir.iterdir()} == {"config.yaml", "backbone.pth", "classifier.pth",
                                                          "metrics.csv", "metrics.json"}
    m = json.loads((result.run_dir / "metrics.json").read_text())
    assert m["steps"] == 2 and m["epochs"] == 1 and m["num_classes"] == 100 and m["batch_size"] == 8
    assert 0.0 <= m["test_acc"] <= 1.0 and m["test_loss"] > 0
    rows = list(csv.reader(open(result.run_dir / "metrics.csv")))
    assert tuple(rows[0]) == METRIC_COLUMNS and len(rows) == 2 and rows[1][:2] == ["1", "2"]
    saved = torch.load(result.weights, weights_only=True)
    loaded = build_backbone("resnet20", pretrained=str(result.weights))
    state = loaded.state_dict()
    assert set(saved) == set(state)
    # every tensor is loaded (the BN step counters are not weights: load_checked skips them)
    assert all(torch.equal(saved[k], state[k]) for k in state if not k.endswith("num_batches_tracked"))
    # the backbone ran in training mode: its BN statistics left the fresh initialisation
    assert not torch.equal(saved["bn1.running_mean"], before["bn1.running_mean"])
    # the file also feeds model.pretrained of an embedding model
    from gspdml.models import build_model

    mcfg = load_config("cifar_collage_gsp", [f"model.pretrained={result.weights}"]).model
    model = build_model(mcfg)
    assert torch.equal(model.backbone.state_dict()["conv1.weight"], saved["conv1.weight"])


def test_pretrain_accuracy_against_recount(cifar, tmp_path):
    cfg = load_config("cifar100_resnet20_pretrain", [f"data.root={cifar['root']}", f"output_dir={tmp_path}"] + SMALL)
    result = pretrain(cfg, progress=False)
    from gspdml.data import build_dataset
    from gspdml.engine.pretrain import pretrain_transform

    model = Classifier(build_backbone("resnet20"), 100)
    model.load_state_dict(torch.load(result.run_dir / "classifier.pth", weights_only=True))
    model.eval()
    test = build_dataset("cifar100", cifar["root"], "test", pretrain_transform(False, "cifar100"))
    with torch.no_grad():
        correct = sum(int(model(x[None]).argmax(1)) == y for x, y in test)
    assert result.metrics["test_acc"] == pytest.approx(correct / len(test))


def test_pretrain_cli_dataset_form(cifar, tmp_path, capsys):
    assert main(["pretrain", "cifar100", "--root", cifar["root"], "--out", str(tmp_path), "--no-progress"] + SMALL) == 0
    out = capsys.readouterr().out
    assert "backbone weights:" in out and (tmp_path / "cifar100_resnet20_pretrain" / "backbone.pth").is_file()
    assert main(["pretrain", "-c", "cifar100_resnet20_pretrain", f"data.root={cifar['root']}", "--out", str(tmp_path),
                 "--name", "again", "--no-progress"] + SMALL) == 0
    assert (tmp_path / "again" / "backbone.pth").is_file()


def test_pretrain_errors(cifar, tmp_path, capsys):
    assert main(["pretrain", "mnist", "--root", cifar["root"]]) == 2
    assert "valid choices are: cifar10, cifar100" in capsys.readouterr().err
    assert main(["pretrain"]) == 2
    assert "give a DATASET" in capsys.readouterr().err
    cfg = load_config("cifar100_resnet20_pretrain", [f"data.root={cifar['root']}", f"output_dir={tmp_path}"] + SMALL
                      + ["data.classes_per_batch=200"])
    with pytest.raises(DataError, match="fewer than one batch"):
        pretrain(cfg, progress=False)
    cfg = load_config("cifar100_resnet20_pretrain", [f"data.root={cifar['root']}", "output_dir=null"] + SMALL)
    with pytest.raises(ConfigError, match="output_dir is null"):
        pretrain(cfg, progress=False)
