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


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_adam_eps_reaches_the_optimizer_and_its_update(name):
    """optim.eps=1 (ProxyNCA++): in every param group, and two steps equal Adam's update written out by hand."""
    cfg = tiny_config(None, [f"optim.name={name}", "optim.eps=1.0", "optim.weight_decay=0", "optim.lr=0.1"])
    module = TrainModule(build_model(cfg.model), build_loss("C1", num_classes=5, embedding_dim=8), None, 0.0)
    opt = build_optimizer(cfg, module)
    assert [g["eps"] for g in opt.param_groups] == [1.0] * len(opt.param_groups)
    params = [p for g in opt.param_groups for p in g["params"]]
    start = [p.detach().clone() for p in params]
    gen = torch.Generator().manual_seed(0)
    grads = [[torch.randn(p.shape, generator=gen) * 3 for p in params] for _ in range(2)]
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = g.clone()
        opt.step()
    b1, b2, lr, eps = 0.9, 0.999, 0.1, 1.0
    for p, p0, g1, g2 in zip(params, start, *grads):
        m1, v1 = (1 - b1) * g1, (1 - b2) * g1 * g1
        x1 = p0 - lr * (m1 / (1 - b1)) / ((v1 / (1 - b2)).sqrt() + eps)
        m2, v2 = b1 * m1 + (1 - b1) * g2, b2 * v1 + (1 - b2) * g2 * g2
        x2 = x1 - lr * (m2 / (1 - b1 ** 2)) / ((v2 / (1 - b2 ** 2)).sqrt() + eps)
        torch.testing.assert_close(p.detach(), x2, rtol=1e-5, atol=1e-6)
    assert tiny_config(None, []).optim.eps == 1e-8  # torch's default
    with pytest.raises(ConfigError, match="'optim.eps': expected a positive finite float"):
        tiny_config(None, ["optim.eps=0"])


def _one_sgd_step(lr: float, clip):
    from engine_fixtures import blob_datasets
    from gspdml.engine.trainer import train

    over = ["optim.name=sgd", "optim.momentum=0.0", "optim.weight_decay=0", f"optim.lr={lr}", "loss.name=PAnchor",
            "train.max_steps=1", "eval.test_at_end=false", f"train.grad_clip_value={'null' if clip is None else clip}"]
    res = train(tiny_config(None, over), progress=False, datasets=blob_datasets())
    model = {k: v.detach().clone() for k, v in res.model.named_parameters()}
    return model, res.extras["loss"].proxies.detach().clone()


def test_grad_clip_value_clips_each_element_of_the_model_gradients():
    """One plain SGD step: lr 1 and lr 2 without clipping give the start point p0 and the gradient g; with
    train.grad_clip_value=v the model moves by clamp(g, -v, v), the loss's proxies by their full gradient."""
    m1, p1 = _one_sgd_step(1.0, None)
    m2, p2 = _one_sgd_step(2.0, None)
    grad = {k: m1[k] - m2[k] for k in m1}
    v = float(torch.cat([g.abs().flatten() for g in grad.values()]).median())
    mc, pc = _one_sgd_step(1.0, v)
    clipped = 0
    for k in m1:
        p0 = 2 * m1[k] - m2[k]
        torch.testing.assert_close(mc[k], p0 - grad[k].clamp(-v, v), rtol=0, atol=1e-5, msg=k)
        clipped += int((grad[k].abs() > v * 1.01).sum())
    assert clipped > 10  # the crafted threshold cut about half of the elements
    torch.testing.assert_close(pc, p1)  # the proxies are not clipped (ProxyNCA++ clips model.parameters())
    assert float(((p1 - p2) / 100).abs().max()) > v  # ... although their gradient (lr x100) exceeds v
    with pytest.raises(ConfigError, match="'train.grad_clip_value'"):
        tiny_config(None, ["train.grad_clip_value=-1"])
