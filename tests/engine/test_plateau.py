"""optim.scheduler=plateau: ReduceLROnPlateau on the validation MAP@R, stepped after each validation,
resumed exactly; its config errors."""
from __future__ import annotations

import pytest
import torch

from engine_fixtures import Blobs, blob_datasets, single_thread, tiny_config  # noqa: F401
from gspdml.engine import context
from gspdml.engine.checkpoint import load_checkpoint
from gspdml.engine.trainer import train
from gspdml.errors import ConfigError


def _scripted(monkeypatch, metric_at_step, seen):
    """Validation returns the scripted MAP@R of the current step and records the groups' lrs in effect."""
    real = context.RunContext.evaluate

    def evaluate(self, state, query, gallery, desc):
        if desc != "validate":
            return real(self, state, query, gallery, desc)
        seen.append([g["lr"] for g in state.optimizer.param_groups])
        return {"map_at_r": metric_at_step[state.step], "precision_at_1": 0.0, "r_precision": 0.0}

    monkeypatch.setattr(context.RunContext, "evaluate", evaluate)


PLATEAU = ["data.fold=0", "optim.scheduler=plateau", "optim.gamma=0.5", "optim.plateau_patience=1",
           "optim.min_lr=3e-3", "optim.lr=1e-2", "optim.no_decay_norm_bias=false", "loss.name=PAnchor",
           "train.eval_every_steps=2"]
METRICS = [0.5, 0.4, 0.45, 0.6, 0.6, 0.3, 0.2, 0.1]


def test_plateau_lr_sequence_equals_torch_reduce_on_plateau(monkeypatch):
    seen: list = []
    _scripted(monkeypatch, {2 * (i + 1): m for i, m in enumerate(METRICS)}, seen)
    cfg = tiny_config(None, PLATEAU + ["train.max_steps=16"])
    res = train(cfg, progress=False, datasets=blob_datasets())
    assert res.steps == 16 and len(seen) == 8
    # hand-computed: patience 1 -> the lr halves at the 2nd validation in a row without a better MAP@R
    # (validations 3, 6, 8; 0.6 after 0.6 is no improvement); the weights group stops at min_lr 3e-3
    weights = [1e-2, 1e-2, 1e-2, 5e-3, 5e-3, 5e-3, 3e-3, 3e-3]
    proxies = [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25]  # PAnchor's proxies: lr x100, scaled too
    names = [g["name"] for g in _groups(cfg)]
    got_w = [lrs[names.index("weights")] for lrs in seen]
    got_p = [lrs[names.index("proxies")] for lrs in seen]
    assert got_w == pytest.approx(weights) and got_p == pytest.approx(proxies)
    # torch's ReduceLROnPlateau driven by hand with the same metrics
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in seen[0]]
    opt = torch.optim.SGD([{"params": [p], "lr": lr} for p, lr in zip(params, seen[0])])
    ref = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.5, patience=1, min_lr=3e-3)
    expected = []
    for m in METRICS:
        expected.append([g["lr"] for g in opt.param_groups])
        ref.step(m)
    assert _flat(seen) == pytest.approx(_flat(expected))
    # between validations the lr does not move (no per-step schedule): row s shows validation ceil(s/2)'s lr
    rows = [r for r in res.history if "loss" in r]
    assert [r["lr"] for r in rows] == pytest.approx([seen[(r["step"] - 1) // 2][0] for r in rows])


def _flat(rows):
    return [x for row in rows for x in row]


def _groups(cfg):
    from gspdml.engine.optim import build_optimizer
    from gspdml.engine.state import TrainModule
    from gspdml.losses import build_loss
    from gspdml.models import build_model

    loss = build_loss(cfg.loss.name, num_classes=3, embedding_dim=cfg.model.local_dim)
    return build_optimizer(cfg, TrainModule(build_model(cfg.model), loss, None, 0.0)).param_groups


class Interrupt(Exception):
    pass


def _data():
    return {"train": Blobs(12, 6, seed=0, augment=True), "test": Blobs(6, 4, seed=1, first_class=50)}


def _params(res):
    out = {f"model.{k}": v.detach().clone() for k, v in res.model.state_dict().items()}
    out.update({f"loss.{k}": v.detach().clone() for k, v in res.extras["loss"].state_dict().items()})
    return out


def test_resume_mid_plateau_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    """Validations at 2 (best), 4 (worse), [crash after step 5], 6 (worse again: lr x0.5), 8, 10 (x0.5):
    a resumed run that lost the plateau's count would not halve the lr at step 6."""
    seen_a: list = []
    script = {2: 0.5, 4: 0.4, 6: 0.45, 8: 0.3, 10: 0.2}
    _scripted(monkeypatch, script, seen_a)
    over = PLATEAU + ["optim.min_lr=0.0", "train.checkpoint_every_steps=1", "train.max_steps=10",
                      "eval.use_best=false", "model.freeze_bn=false"]
    full = train(tiny_config(tmp_path / "a", over), progress=False, datasets=_data())
    assert full.steps == 10 and full.epochs >= 2

    seen_b: list = []
    _scripted(monkeypatch, script, seen_b)
    cfg_b = tiny_config(tmp_path / "b", over)

    def crash(info):
        if info["step"] == 6:
            raise Interrupt()

    with pytest.raises(Interrupt):
        train(cfg_b, progress=False, datasets=_data(), callback=crash)
    run_b = tmp_path / "b" / "tiny"
    ckpt = load_checkpoint(run_b, prefer="last")
    assert ckpt["step"] == 5 and ckpt["scheduler"]["num_bad_epochs"] == 1  # mid-plateau
    resumed = train(cfg_b, progress=False, datasets=_data(), resume=run_b)
    assert resumed.steps == 10

    w = seen_a[0][-1]  # the weights group comes last
    assert [lrs[-1] for lrs in seen_a] == pytest.approx([w, w, w, w / 2, w / 2])
    # run b validated at 2, 4 and 6 (the crash came in the callback after step 6's validation), then
    # resumed from step 5 and validated at 6, 8, 10
    assert len(seen_b) == 6 and _flat(seen_b[:2] + seen_b[3:]) == pytest.approx(_flat(seen_a))
    a, b = _params(full), _params(resumed)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6, msg=k)
    lr_a = [r["lr"] for r in full.history if "loss" in r]
    lr_b = [r["lr"] for r in resumed.history if "loss" in r]
    assert lr_b == pytest.approx(lr_a) and len(set(lr_a)) == 2  # the drop at step 10 comes after the last row


def test_plateau_needs_a_validation(tmp_path):
    with pytest.raises(ConfigError, match="eval_every_steps=0 turns validation off"):
        tiny_config(None, ["optim.scheduler=plateau", "train.eval_every_steps=0", "data.fold=0"])
    cfg = tiny_config(tmp_path, ["optim.scheduler=plateau"])  # no fold, no val_split, no datasets['val']
    with pytest.raises(ConfigError, match="no validation set"):
        train(cfg, progress=False, datasets=blob_datasets())
    assert list(tmp_path.iterdir()) == []  # refused before the run folder is created
    with pytest.raises(ConfigError, match="needs gamma < 1"):
        tiny_config(None, ["optim.scheduler=plateau", "optim.gamma=1.0"])
    with pytest.raises(ConfigError, match="takes no optim.warmup_steps"):
        tiny_config(None, ["optim.scheduler=plateau", "optim.warmup_steps=5"])
    with pytest.raises(ConfigError, match="'optim.plateau_patience': expected an int >= 0"):
        tiny_config(None, ["optim.plateau_patience=-1"])
    with pytest.raises(ConfigError, match="'optim.min_lr'"):
        tiny_config(None, ["optim.min_lr=-1e-3"])
