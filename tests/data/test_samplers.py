"""ClassBalancedBatchSampler: distinct classes, K per class, determinism, resume, ranks."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from gspdml.data import ClassBalancedBatchSampler
from gspdml.errors import CheckpointError, InputError


def _labels(seed=0):
    rng = np.random.default_rng(seed)
    sizes = [2, 3, 4, 5, 7, 8, 9, 12, 4, 6, 11, 1]  # some classes smaller than K=4
    labels = np.concatenate([np.full(n, c * 10) for c, n in enumerate(sizes)])  # non-contiguous ids
    return labels[rng.permutation(len(labels))]


def test_batches_hold_p_distinct_classes_with_k_each():
    labels = _labels()
    s = ClassBalancedBatchSampler(labels, classes_per_batch=4, samples_per_class=4, seed=3)
    batches = list(s)
    assert len(batches) == len(s) > 3
    counts = Counter(labels.tolist())
    seen = Counter()
    for b in batches:
        assert len(b) == 16
        groups = [labels[b[i * 4:(i + 1) * 4]] for i in range(4)]
        assert all(len(set(g.tolist())) == 1 for g in groups)  # K consecutive = one class
        cls = [int(g[0]) for g in groups]
        assert len(set(cls)) == 4  # distinct classes
        for g, idx in zip(cls, (b[i * 4:(i + 1) * 4] for i in range(4))):
            if counts[g] >= 4:
                assert len(set(idx)) == 4  # no replacement when the class is big enough
            else:
                assert set(idx) <= set(np.flatnonzero(labels == g).tolist())
        seen.update(i for i in b if counts[labels[i]] >= 4)
    assert max(seen.values()) == 1  # each sample of a big class at most once per epoch


def test_determinism_and_epochs():
    labels = _labels()
    a = ClassBalancedBatchSampler(labels, 3, 2, seed=5)
    b = ClassBalancedBatchSampler(labels, 3, 2, seed=5)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    c = ClassBalancedBatchSampler(labels, 3, 2, seed=6)
    assert list(c) != first


def test_resume_continues_with_exact_next_batch():
    labels = _labels()
    ref = ClassBalancedBatchSampler(labels, 4, 2, seed=1)
    ref.set_epoch(2)
    full = list(ref)
    run = ClassBalancedBatchSampler(labels, 4, 2, seed=1)
    run.set_epoch(2)
    it = iter(run)
    done = [next(it) for _ in range(3)]
    state = run.state_dict()
    assert state["epoch"] == 2 and state["position"] == 3
    resumed = ClassBalancedBatchSampler(labels, 4, 2, seed=1)
    resumed.load_state_dict(state)
    resumed.set_epoch(2)  # the usual per-epoch call must not rewind a loaded state
    assert done + list(resumed) == full
    resumed.set_epoch(3)
    assert list(resumed)[0] != full[0]
    # consumed overrides the produced count (DataLoader prefetching)
    assert run.state_dict(consumed=1)["position"] == 1


def test_state_mismatch_is_an_error():
    s = ClassBalancedBatchSampler(_labels(), 4, 2, seed=1)
    state = s.state_dict()
    other = ClassBalancedBatchSampler(_labels(), 4, 2, seed=2)
    with pytest.raises(CheckpointError, match="seed: saved 1 vs now 2"):
        other.load_state_dict(state)
    with pytest.raises(CheckpointError, match="position"):
        s.load_state_dict({k: v for k, v in state.items() if k != "position"})


@pytest.mark.parametrize("world", [2, 4])
def test_ranks_share_one_global_batch_by_contiguous_classes(world):
    labels = _labels()
    P, K = 4, 2
    single = ClassBalancedBatchSampler(labels, P, K, seed=4)
    plan = list(single)
    ranks = [ClassBalancedBatchSampler(labels, P, K, seed=4, rank=r, world_size=world) for r in range(world)]
    per_rank = [list(s) for s in ranks]
    share = P // world * K
    for r, batches in enumerate(per_rank):
        assert len(batches) == len(plan) == len(ranks[r])  # one share of every global batch
        assert ranks[r].local_batch_size == share and ranks[r].batch_size == P * K
        for b, g in zip(batches, plan):
            assert b == g[r * share:(r + 1) * share]  # rank r: classes [r*P/W, (r+1)*P/W), all K samples
            cls = labels[b].reshape(P // world, K)
            assert (cls == cls[:, :1]).all()  # whole classes only
    for s_, g in zip(zip(*per_rank), plan):  # rank order concatenation is the global batch
        assert sum(s_, []) == g
    # resume on a rank continues with its share of the next global batch
    it = iter(ranks[1])
    next(it)
    state = ranks[1].state_dict(consumed=1)
    again = ClassBalancedBatchSampler(labels, P, K, seed=4, rank=1, world_size=world)
    again.load_state_dict(state)
    assert list(again) == per_rank[1][1:]


def test_classes_per_batch_must_divide_by_world_size():
    from gspdml.errors import ConfigError

    with pytest.raises(ConfigError, match=r"classes_per_batch=3 is not divisible by the world size 2.*multiple of 2"):
        ClassBalancedBatchSampler(_labels(), 3, 2, rank=0, world_size=2)


def test_works_as_dataloader_batch_sampler():
    labels = _labels()
    ds = TensorDataset(torch.arange(len(labels)), torch.as_tensor(labels))
    s = ClassBalancedBatchSampler(labels, 4, 3, seed=0)
    loader = DataLoader(ds, batch_sampler=s)
    for (idx, y), b in zip(loader, list(s)):
        assert idx.tolist() == b and y.tolist() == labels[b].tolist()


def test_invalid_arguments():
    with pytest.raises(InputError, match="only 12 classes"):
        ClassBalancedBatchSampler(_labels(), classes_per_batch=13)
    with pytest.raises(InputError, match="rank"):
        ClassBalancedBatchSampler(_labels(), 2, 2, rank=2, world_size=2)
    with pytest.raises(InputError, match="integers"):
        ClassBalancedBatchSampler(np.array([0.5, 1.5]), 1, 1)
