"""Class-balanced batch sampling (P classes x K samples per batch).

Why not pytorch-metric-learning's ``MPerClassSampler``: it draws from NumPy's global random state
(so it is not reproducible per epoch without reseeding the whole process), has no ``set_epoch``,
no resumable state and no notion of distributed ranks, and it yields a flat index stream rather
than batches (batches only hold distinct classes when its ``batch_size`` argument is set and the
DataLoader batches exactly along its stream). The zero-shot loss needs every batch to hold P
*distinct* classes so that the batch splits into two class-disjoint halves, and resumed or
distributed runs need an exact, seeded plan; hence this sampler.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Sampler

from gspdml.errors import CheckpointError, ConfigError, InputError


class ClassBalancedBatchSampler(Sampler[list[int]]):
    """Batches of ``classes_per_batch`` (P) distinct classes x ``samples_per_class`` (K) indices.

    Epoch plan (a pure function of ``seed``, ``epoch`` and ``labels``):

    1. each class's indices are shuffled and cut into chunks of K (a remainder smaller than K is
       left out of this epoch; another shuffle next epoch uses it). A class with fewer than K
       samples contributes one chunk of K drawn *with replacement* from its samples — the only
       case in which an index repeats inside a batch;
    2. batches are assembled greedily: each batch takes P distinct classes, drawn without
       replacement with probability proportional to their remaining chunks, and one chunk of each;
       this stops when fewer than P classes have chunks left. Every sample is used at most once per
       epoch (except in classes smaller than K). Batch order follows the batch's position in
       the assembly order, i.e. classes are interleaved.

    Within a batch the K indices of a class are consecutive: positions ``[c*K, (c+1)*K)`` hold
    class ``c`` of the batch.

    Distributed (``world_size`` W > 1): every rank computes the same plan of *global* P x K
    batches (same seed) and yields, at every step, its contiguous share of each global batch:
    rank r gets classes ``[r*P/W, (r+1)*P/W)`` of the batch, all K samples of each, i.e.
    positions ``[r*(P/W)*K, (r+1)*(P/W)*K)``. Concatenating the ranks' batches in rank order gives
    the global batch, which the training module rebuilds by all-gathering; every rank yields the
    same number of batches (the number of global batches). P must be divisible by W
    (ConfigError otherwise). The plan holds only full batches: nothing is ever padded.

    Resuming: ``state_dict()`` records the epoch and how many batches were produced in it;
    ``load_state_dict`` makes the next ``iter`` continue with exactly the next batch. Under a
    multi-worker DataLoader the sampler runs ahead of training (prefetching), so pass the number of
    batches actually consumed: ``state_dict(consumed=steps_done_in_epoch)``. Call ``set_epoch(e)``
    at the start of every epoch (as with ``DistributedSampler``); it rewinds to the epoch's first
    batch unless ``e`` is the epoch already loaded from a state.
    """

    def __init__(self, labels: Sequence[int] | np.ndarray, classes_per_batch: int = 8, samples_per_class: int = 4,
                 seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        labels = np.asarray(labels)
        if labels.ndim != 1 or labels.size == 0:
            raise InputError(f"labels must be a non-empty 1-D sequence, got shape {labels.shape}")
        if not np.issubdtype(labels.dtype, np.integer):
            raise InputError(f"labels must be integers, got dtype {labels.dtype}")
        for name, value in (("classes_per_batch", classes_per_batch), ("samples_per_class", samples_per_class), ("world_size", world_size)):
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise InputError(f"{name} must be a positive integer, got {value!r}")
        if not 0 <= rank < world_size:
            raise InputError(f"rank must be in 0..{world_size - 1}, got {rank}")
        if classes_per_batch % world_size:
            raise ConfigError(
                f"classes_per_batch={classes_per_batch} is not divisible by the world size {world_size}: each rank "
                f"takes an equal share of the global batch's classes; set data.classes_per_batch to a multiple of "
                f"{world_size}"
            )
        self.labels = labels.astype(np.int64)
        self.classes, inverse = np.unique(self.labels, return_inverse=True)
        if len(self.classes) < classes_per_batch:
            raise InputError(
                f"classes_per_batch={classes_per_batch} but the labels have only {len(self.classes)} classes; "
                "lower classes_per_batch (batches hold distinct classes)"
            )
        order = np.argsort(inverse, kind="stable")
        counts = np.bincount(inverse, minlength=len(self.classes))
        self._members = np.split(order, np.cumsum(counts)[:-1])
        self.P, self.K = int(classes_per_batch), int(samples_per_class)
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.epoch = 0
        self.position = 0
        self._plan_cache: tuple[int, np.ndarray] | None = None

    @property
    def batch_size(self) -> int:
        """P x K (the global batch)."""
        return self.P * self.K

    @property
    def local_batch_size(self) -> int:
        """(P / world_size) x K: the samples of one batch this rank yields."""
        return self.P // self.world_size * self.K

    def _plan(self, epoch: int) -> np.ndarray:
        """All batches of ``epoch`` (before distributing), shape (num_batches, P*K)."""
        if self._plan_cache is not None and self._plan_cache[0] == epoch:
            return self._plan_cache[1]
        rng = np.random.default_rng([self.seed, epoch])
        K = self.K
        chunks: list[np.ndarray] = []
        for members in self._members:
            if len(members) < K:
                chunks.append(rng.choice(members, size=(1, K), replace=True))
            else:
                perm = rng.permutation(members)
                n = len(perm) // K
                chunks.append(perm[: n * K].reshape(n, K))
        remaining = np.asarray([len(c) for c in chunks], dtype=np.int64)
        used = np.zeros(len(chunks), dtype=np.int64)
        batches = []
        while np.count_nonzero(remaining) >= self.P:
            picked = rng.choice(len(chunks), size=self.P, replace=False, p=remaining / remaining.sum())
            batches.append(np.concatenate([chunks[c][used[c]] for c in picked]))
            used[picked] += 1
            remaining[picked] -= 1
        plan = np.stack(batches).astype(np.int64) if batches else np.empty((0, self.P * K), dtype=np.int64)
        self._plan_cache = (epoch, plan)
        return plan

    def _rank_batches(self, epoch: int) -> np.ndarray:
        """This rank's share of every global batch of ``epoch``, shape (num_batches, P/W*K)."""
        plan = self._plan(epoch)
        share = self.local_batch_size
        return plan[:, self.rank * share:(self.rank + 1) * share]

    def __len__(self) -> int:
        """Number of batches this rank yields in the current epoch."""
        return len(self._rank_batches(self.epoch))

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._rank_batches(self.epoch)
        start = self.position
        for i in range(start, len(batches)):
            self.position = i + 1
            yield batches[i].tolist()
        self.position = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's plan; rewinds to its first batch unless ``epoch`` is the current one."""
        if int(epoch) != self.epoch:
            self.epoch = int(epoch)
            self.position = 0

    def state_dict(self, consumed: int | None = None) -> dict[str, Any]:
        """Epoch and position (batches done in the epoch; ``consumed`` overrides the produced count)."""
        return {
            "epoch": self.epoch,
            "position": self.position if consumed is None else int(consumed),
            "seed": self.seed,
            "classes_per_batch": self.P,
            "samples_per_class": self.K,
            "world_size": self.world_size,
            "num_samples": int(len(self.labels)),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a ``state_dict()``; the next ``iter`` continues with the next batch of that epoch."""
        expected = {"seed": self.seed, "classes_per_batch": self.P, "samples_per_class": self.K,
                    "world_size": self.world_size, "num_samples": int(len(self.labels))}
        try:
            mismatch = {k: (state[k], v) for k, v in expected.items() if state[k] != v}
            epoch, position = int(state["epoch"]), int(state["position"])
        except KeyError as exc:
            raise CheckpointError(f"sampler state lacks the key {exc.args[0]!r}") from None
        if mismatch:
            detail = ", ".join(f"{k}: saved {a} vs now {b}" for k, (a, b) in mismatch.items())
            raise CheckpointError(f"sampler state does not match this sampler ({detail})")
        self.epoch, self.position = epoch, position
