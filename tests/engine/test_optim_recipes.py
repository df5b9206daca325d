"""Recipe pieces of the optimiser: the multi-step schedule in epochs, a loss group's own weight decay."""
import pytest
import torch

from engine_fixtures import tiny_config
from gspdml.engine.optim import build_optimizer, build_scheduler
from gspdml.engine.state import TrainModule
from gspdml.errors import ConfigError
from gspdml.losses import build_loss
from gspdml.models import build_model


def test_multistep_schedule_drops_at_the_milestone_epochs():
    """lr x gamma from the first step of each milestone epoch on (torch's MultiStepLR stepped per epoch)."""
    cfg = tiny_config(None, ["optim.scheduler=multistep", "optim.milestone_epochs=[2, 3]", "optim.gamma=0.2",
                             "optim.lr=1.0"])
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sch = build_scheduler(cfg, opt, total_steps=20, steps_per_epoch=4)
    lrs = []
    for _ in range(16):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sch.step()
    reference = torch.optim.lr_scheduler.MultiStepLR(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0),
                                                     milestones=[2, 3], gamma=0.2)
    per_epoch = []
    for _ in range(4):
        per_epoch.append(reference.get_last_lr()[0])
        reference.optimizer.step()
        reference.step()
    assert lrs == pytest.approx([lr for lr in per_epoch for _ in range(4)])


def test_multistep_needs_milestones_and_they_must_increase():
    with pytest.raises(ConfigError, match="needs optim.milestone_epochs"):
        tiny_config(None, ["optim.scheduler=multistep"])
    with pytest.raises(ConfigError, match="increasing ints >= 1"):
        tiny_config(None, ["optim.scheduler=multistep", "optim.milestone_epochs=[3, 2]"])


def test_nir_proxies_and_flow_get_no_weight_decay():
    """As the NIR authors (their loss groups set no decay; Adam's default is 0); the model keeps optim.weight_decay."""
    cfg = tiny_config(None, ["loss.name=PAnchor+NIR", "optim.weight_decay=4e-4", "optim.no_decay_norm_bias=false"])
    loss = build_loss("PAnchor+NIR", num_classes=5, embedding_dim=cfg.model.local_dim)
    opt = build_optimizer(cfg, TrainModule(build_model(cfg.model), loss, None, 0.1))
    decay = {g["name"]: g["weight_decay"] for g in opt.param_groups}
    assert decay["proxies"] == 0.0 and decay["nir_flow"] == 0.0 and decay["weights"] == pytest.approx(4e-4)


def test_eval_metrics_are_checked():
    assert tiny_config(None, ["eval.metrics=[nmi, map_at_1000]"]).eval.metrics == ["nmi", "map_at_1000"]
    with pytest.raises(ConfigError, match="unknown metric 'f1'"):
        tiny_config(None, ["eval.metrics=[f1]"])


def test_eval_metrics_reach_the_final_test(tmp_path):
    """eval.metrics adds NMI and mAP@K to the final test, equal to the pure metric on the same embeddings."""
    from engine_fixtures import blob_datasets
    from gspdml.engine.evaluate import embed_dataset
    from gspdml.engine.trainer import train
    from gspdml.evaluation.metrics import compute_retrieval_metrics

    cfg = tiny_config(None, ["eval.metrics=[nmi, map_at_10]"])
    res = train(cfg, progress=False, datasets=blob_datasets())
    emb, labels = embed_dataset(res.model, blob_datasets()["test"], progress=False)
    expected = compute_retrieval_metrics(emb, labels, extra_metrics=("nmi", "map_at_10"))
    assert {"nmi", "map_at_10"} <= set(res.final_metrics)
    assert res.final_metrics == pytest.approx(expected)
