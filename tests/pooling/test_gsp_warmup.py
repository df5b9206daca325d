"""GSP warm-up (the authors' TF ``warm_up_steps``): GAP output and an empty k-center memory for the
first ``warmup_steps`` training calls, the usual behaviour afterwards, exact resume; and the
trainer's ``train.pooling_warmup_epochs``."""
from __future__ import annotations

import pytest
import torch

from engine_fixtures import blob_datasets, single_thread, tiny_config  # noqa: F401
from gspdml.engine import state as state_module
from gspdml.engine.trainer import train
from gspdml.errors import ConfigError, InputError
from gspdml.pooling import build_pooling
from gspdml.pooling.gsp import GSP


def batch(seed, b=3, n=5, c=4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, n, c, generator=g) * 2


def naive_masked_gap(x, mask):
    return torch.stack([x[i, mask[i]].mean(0) for i in range(x.shape[0])])


def test_kcenter_gsp_outputs_gap_and_keeps_the_memory_empty_during_warm_up():
    gsp = GSP(4, num_prototypes=2, memory_size=6, warmup_steps=3).train()
    mask = torch.tensor([[True] * 5, [True, True, False, False, False], [True] * 4 + [False]])
    for step in range(3):
        x = batch(step)
        out, details = gsp(x, mask=mask, return_details=True)
        assert torch.allclose(out, naive_masked_gap(x, mask), atol=1e-6)
        assert torch.allclose(details["weights"], mask / mask.sum(1, keepdim=True))
        assert int(gsp.memory_count) == 0 and torch.all(gsp.memory == 0)
        assert int(gsp.warmup_count) == step + 1
    assert not gsp.is_warming_up and not gsp.is_initialized
    # after the warm-up: the memory fills (output still GAP), then k-center initialises
    x = batch(10)
    assert torch.allclose(gsp(x, mask=mask), naive_masked_gap(x, mask), atol=1e-6)
    assert int(gsp.memory_count) == 3 and int(gsp.warmup_count) == 3
    gsp(batch(11))
    assert gsp.is_initialized and int(gsp.memory_count) == 6
    x = batch(12)
    assert not torch.allclose(gsp(x), x.mean(1), atol=1e-3)  # GSP now


def test_random_init_gsp_switches_to_gsp_after_the_warm_up():
    torch.manual_seed(0)
    gsp = GSP(4, num_prototypes=3, mu=0.3, eps=5.0, init="random", warmup_steps=2)
    plain = GSP(4, num_prototypes=3, mu=0.3, eps=5.0, init="random")
    plain.load_state_dict({k: v for k, v in gsp.state_dict().items() if k != "warmup_count"})
    x = batch(1)
    gsp.train()
    assert torch.allclose(gsp(x), x.mean(1), atol=1e-6)
    gsp.eval()  # eval calls during the warm-up: GAP, and not counted
    assert torch.allclose(gsp(x), x.mean(1), atol=1e-6) and int(gsp.warmup_count) == 1
    gsp.train()
    assert torch.allclose(gsp(x), x.mean(1), atol=1e-6)
    assert int(gsp.warmup_count) == 2 and not gsp.is_warming_up
    out = gsp(x)
    assert torch.allclose(out, plain(x), atol=1e-6) and not torch.allclose(out, x.mean(1), atol=1e-3)
    assert int(gsp.warmup_count) == 2  # not counted after the warm-up


def test_state_dict_round_trip_mid_warm_up_resumes_exactly():
    torch.manual_seed(0)
    a = GSP(4, num_prototypes=2, memory_size=6, warmup_steps=3).train()
    for s in range(2):
        a(batch(s))
    b = GSP(4, num_prototypes=2, memory_size=6, warmup_steps=3).train()
    b.load_state_dict(a.state_dict())
    assert int(b.warmup_count) == 2 and b.is_warming_up
    assert "warmup_steps=3 (2 done)" in repr(b)
    for s in range(2, 6):
        x = batch(s)
        assert torch.allclose(a(x), b(x))
        assert int(a.memory_count) == int(b.memory_count)
    assert b.is_initialized and torch.equal(a.prototypes, b.prototypes) and torch.equal(a.memory, b.memory)
    assert int(b.memory_count) == 6  # steps 0-2 warm-up, steps 3-4 fill 6, step 5 GSP


def test_state_dicts_without_the_counter_load_and_setting_warmup_steps_later():
    gsp = GSP(4, num_prototypes=2, memory_size=4)
    old = gsp.state_dict()
    assert "warmup_count" not in old  # no warm-up: the keys stay as before the warm-up existed
    fresh = GSP(4, num_prototypes=2, memory_size=4, warmup_steps=2)
    fresh.load_state_dict(old)
    assert int(fresh.warmup_count) == 0 and fresh.is_warming_up
    gsp.warmup_steps = 1
    assert gsp.is_warming_up
    gsp.train()(batch(0))
    assert int(gsp.memory_count) == 0 and not gsp.is_warming_up
    # a state dict written with a warm-up loads into a GSP built without one (e.g. for evaluation)
    plain = GSP(4, num_prototypes=2, memory_size=4)
    plain.load_state_dict(gsp.state_dict())
    assert int(plain.warmup_count) == 1 and not plain.is_warming_up


@pytest.mark.parametrize("bad", [-1, 1.5, True, "2"])
def test_bad_warmup_steps(bad):
    with pytest.raises(InputError, match="warmup_steps must be an integer >= 0"):
        GSP(4, warmup_steps=bad)


def test_combinations_expose_the_inner_warm_up():
    pool = build_pooling("gmp+gsp", 4, num_prototypes=2, memory_size=4, warmup_steps=2)
    assert pool.warmup_steps == 2 and pool.gsp.warmup_steps == 2
    pool.warmup_steps = 5
    assert pool.gsp.warmup_steps == 5 and pool.gsp.is_warming_up


def test_trainer_sets_the_warm_up_from_pooling_warmup_epochs(tmp_path, monkeypatch):
    states = []
    create = state_module.TrainState.create

    def capture(*args, **kwargs):
        states.append(create(*args, **kwargs))
        return states[-1]

    monkeypatch.setattr(state_module.TrainState, "create", staticmethod(capture))
    seen = []

    def callback(row):
        gsp = states[0].model.pooling
        seen.append((row["epoch"], int(gsp.memory_count), int(gsp.warmup_count)))

    cfg = tiny_config(None, ["model.pooling=gsp", "model.pooling_kwargs={num_prototypes: 2, memory_size: 24}",
                             "train.max_steps=null", "train.max_epochs=2", "train.pooling_warmup_epochs=1"])
    train(cfg, progress=False, datasets=blob_datasets(), callback=callback)
    gsp = states[0].model.pooling
    epoch0 = [s for s in seen if s[0] == 0]
    assert epoch0 and gsp.warmup_steps == len(epoch0)
    assert all(memory == 0 for _, memory, _ in epoch0)  # empty through epoch 0
    assert [count for _, _, count in epoch0] == list(range(1, len(epoch0) + 1))
    assert any(memory > 0 for e, memory, _ in seen if e == 1) and gsp.is_initialized


def test_trainer_rejects_the_warm_up_for_a_pooling_without_one():
    cfg = tiny_config(None, ["train.pooling_warmup_epochs=1"])  # model.pooling=gap
    with pytest.raises(ConfigError, match="pooling_warmup_epochs=1 needs a pooling with a warm-up.*'gap'"):
        train(cfg, progress=False, datasets=blob_datasets())
