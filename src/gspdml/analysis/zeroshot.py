r"""Zero-shot attribute evaluation of prototype marginals (paper Sec. 5.1, "Zero-shot regularization").

The GSP layer's prototype marginals ``z`` (B, m) are read as attribute predictions. The paper asks
how well they transfer to classes that were not used to fit a predictor:

1. For every class ``c`` compute the mean attribute vector ``z̄_c`` (mean of ``z`` over the class's
   samples) and the class embedding ``ē_c`` (mean of the model's embeddings over the class).
2. Split the classes at random into two halves, ``S_fit`` (``C − ⌊C/2⌋`` classes) and ``S_out``
   (``⌊C/2⌋`` classes).
3. Fit a ridge predictor ``ē ≈ A z̄`` on ``S_fit`` (eq. P3 with ``ε`` = ``ridge``; a linear solve on
   the smaller normal-equation system) and predict ``ê_c = A z̄_c`` for every ``c ∈ S_out``.
4. Each prediction ``ê_c`` queries the held-out true class embeddings ``{ē_k : k ∈ S_out}``, ranked
   by L2 distance (ascending) or by cosine similarity (descending). Exactly one of them (``ē_c``) is
   relevant, so the average precision is ``1 / rank`` and MAP is the mean reciprocal rank over
   ``S_out``. Ties count against the query (``rank = 1 + #{k ≠ c : ê_c is at least as close to
   ē_k}``), so a degenerate predictor cannot score well through ties.
5. Repeat ``repeats`` times (1000 in the paper) with seeded random splits; report mean ± std.

A random ranking scores ``H_k / k`` on average (``k = |S_out|``, ``H_k`` the harmonic number), given
as ``chance`` in the result. The array-level functions (:func:`zero_shot_map`,
:func:`evaluate_zero_shot`) need no model; :func:`evaluate_model_zero_shot` runs a model over a
dataset first.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from gspdml.errors import InputError
from gspdml.io import format_table
from gspdml.losses.zeroshot import ridge_fit

__all__ = [
    "ZeroShotEvaluation",
    "class_means",
    "ridge_fit_batched",
    "held_out_average_precision",
    "zero_shot_map",
    "evaluate_zero_shot",
    "collect_model_outputs",
    "evaluate_model_zero_shot",
    "harmonic_chance",
    "random_class_splits",
]

METRICS = ("l2", "cosine")


@dataclass
class ZeroShotEvaluation:
    """Result of the zero-shot attribute evaluation.

    ``map_l2`` / ``map_cosine`` hold one MAP per repeat (shape (repeats,)); :meth:`summary` gives
    mean ± std. ``chance`` is the expected MAP of a random ranking of the ``num_held_out`` classes.
    """

    num_classes: int
    num_prototypes: int
    embed_dim: int
    num_held_out: int
    repeats: int
    ridge: float
    seed: int
    map_l2: np.ndarray
    map_cosine: np.ndarray
    chance: float
    classes: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def summary(self) -> dict[str, Any]:
        """JSON-ready summary: mean/std of both MAPs plus the settings."""
        return {
            "map_l2_mean": float(self.map_l2.mean()),
            "map_l2_std": float(self.map_l2.std()),
            "map_cosine_mean": float(self.map_cosine.mean()),
            "map_cosine_std": float(self.map_cosine.std()),
            "chance_map": float(self.chance),
            "num_classes": self.num_classes,
            "num_held_out": self.num_held_out,
            "num_prototypes": self.num_prototypes,
            "embed_dim": self.embed_dim,
            "repeats": self.repeats,
            "ridge": self.ridge,
            "seed": self.seed,
        }

    def format_table(self) -> str:
        """A small plain-text table of the result."""
        s = self.summary()
        rows = [
            ("L2 distance", f"{s['map_l2_mean']:.4f} ± {s['map_l2_std']:.4f}"),
            ("cosine similarity", f"{s['map_cosine_mean']:.4f} ± {s['map_cosine_std']:.4f}"),
            ("chance (random ranking)", f"{s['chance_map']:.4f}"),
        ]
        title = (
            f"zero-shot attribute prediction: {self.num_classes} classes, fit on "
            f"{self.num_classes - self.num_held_out}, predict {self.num_held_out}; "
            f"{self.num_prototypes} prototypes; {self.repeats} random splits (seed {self.seed})"
        )
        return title + "\n" + format_table(["metric", "MAP (mean ± std)"], rows, markdown=False)


def _as_2d_float(name: str, array) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    array = np.asarray(array)
    if array.ndim != 2:
        raise InputError(f"{name} must be a 2-D array (samples or classes x features); got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.number):
        raise InputError(f"{name} must be numeric; got dtype {array.dtype}")
    array = array.astype(np.float64)
    if not np.isfinite(array).all():
        raise InputError(f"{name} contains NaN or inf values ({int((~np.isfinite(array)).sum())} entries)")
    return array


def _as_labels(labels, n: int) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != n:
        raise InputError(f"labels must be a 1-D array of length {n} (one per sample); got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"labels must be integers; got dtype {labels.dtype}")
    return labels.astype(np.int64)


def class_means(values, labels) -> tuple[np.ndarray, np.ndarray]:
    """Per-class means of ``values`` (N, d): returns ``(classes (C,) sorted, means (C, d))``."""
    values = _as_2d_float("values", values)
    labels = _as_labels(labels, values.shape[0])
    classes, inverse = np.unique(labels, return_inverse=True)
    sums = np.zeros((len(classes), values.shape[1]))
    np.add.at(sums, inverse, values)
    counts = np.bincount(inverse, minlength=len(classes)).astype(np.float64)
    return classes, sums / counts[:, None]


def ridge_fit_batched(z: np.ndarray, targets: np.ndarray, ridge: float) -> np.ndarray:
    """Ridge weights ``W`` (..., m, D) with ``targets ≈ z @ W`` for batched z (..., n, m), in
    float64 (:func:`gspdml.losses.zeroshot.ridge_fit`, the fit L_ZS uses, on NumPy arrays)."""
    z, targets = (torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64)) for a in (z, targets))
    return ridge_fit(z, targets, ridge).numpy()


def held_out_average_precision(pred: np.ndarray, true: np.ndarray, metric: str) -> np.ndarray:
    """Average precision of each prediction ranking the true embeddings; pred/true (..., k, D).

    Query ``i`` (``pred[..., i, :]``) ranks the ``k`` rows of ``true``; only ``true[..., i, :]`` is
    relevant, so AP = 1 / rank, with ties counted against the query. Returns (..., k).
    """
    if metric == "l2":
        diff = pred[..., :, None, :] - true[..., None, :, :]
        score = -np.sqrt((diff**2).sum(-1))  # higher is better
    elif metric == "cosine":
        pn = pred / np.maximum(np.linalg.norm(pred, axis=-1, keepdims=True), 1e-12)
        tn = true / np.maximum(np.linalg.norm(true, axis=-1, keepdims=True), 1e-12)
        score = pn @ np.swapaxes(tn, -1, -2)
    else:
        raise InputError(f"unknown ranking metric {metric!r}; valid choices are: {', '.join(METRICS)}")
    own = np.diagonal(score, axis1=-2, axis2=-1)[..., None]  # (..., k, 1)
    at_least_as_good = (score >= own).sum(-1) - 1  # other classes ranked at or above the relevant one
    return 1.0 / (1.0 + at_least_as_good)


def random_class_splits(num_classes: int, repeats: int, seed: int = 0) -> np.ndarray:
    """``repeats`` seeded random permutations of ``range(num_classes)``, shape (repeats, C).

    In each row the first ``C // 2`` classes are held out and the rest fit the predictor.
    """
    rng = np.random.default_rng(seed)
    return np.argsort(rng.random((int(repeats), int(num_classes))), axis=1)


def zero_shot_map(
    class_z,
    class_embeddings,
    repeats: int = 1000,
    ridge: float = 0.05,
    seed: int = 0,
    classes=None,
) -> ZeroShotEvaluation:
    """Zero-shot MAP from per-class attribute vectors (C, m) and class embeddings (C, D).

    See the module docstring for the procedure. ``repeats`` random class splits are drawn from
    ``numpy.random.default_rng(seed)``; needs at least 4 classes (2 to fit, 2 to rank).
    """
    class_z = _as_2d_float("class_z", class_z)
    class_embeddings = _as_2d_float("class_embeddings", class_embeddings)
    num, m = class_z.shape
    if class_embeddings.shape[0] != num:
        raise InputError(
            f"class_z and class_embeddings must have one row per class; got {num} and {class_embeddings.shape[0]}"
        )
    if num < 4:
        raise InputError(
            f"zero-shot evaluation needs at least 4 classes (half to fit the predictor, at least 2 "
            f"held out to rank); got {num}"
        )
    if int(repeats) != repeats or repeats < 1:
        raise InputError(f"repeats must be a positive integer; got {repeats!r}")
    repeats = int(repeats)
    held = num // 2
    perms = random_class_splits(num, repeats, seed)
    fit_idx, out_idx = perms[:, held:], perms[:, :held]
    weights = ridge_fit_batched(class_z[fit_idx], class_embeddings[fit_idx], ridge)  # (R, m, D)
    pred = class_z[out_idx] @ weights  # (R, held, D)
    true = class_embeddings[out_idx]
    map_l2 = held_out_average_precision(pred, true, "l2").mean(-1)
    map_cos = held_out_average_precision(pred, true, "cosine").mean(-1)
    chance = harmonic_chance(held)
    return ZeroShotEvaluation(
        num_classes=num,
        num_prototypes=m,
        embed_dim=class_embeddings.shape[1],
        num_held_out=held,
        repeats=repeats,
        ridge=float(ridge),
        seed=int(seed),
        map_l2=map_l2,
        map_cosine=map_cos,
        chance=chance,
        classes=np.arange(num) if classes is None else np.asarray(classes),
    )


def evaluate_zero_shot(
    z,
    embeddings,
    labels,
    repeats: int = 1000,
    ridge: float = 0.05,
    seed: int = 0,
) -> ZeroShotEvaluation:
    """Zero-shot MAP from per-sample marginals z (N, m), embeddings (N, D) and labels (N,).

    Class attribute vectors and class embeddings are the per-class means; then :func:`zero_shot_map`.
    """
    z = _as_2d_float("z", z)
    embeddings = _as_2d_float("embeddings", embeddings)
    if embeddings.shape[0] != z.shape[0]:
        raise InputError(f"z and embeddings must have the same number of samples; got {z.shape[0]} and {embeddings.shape[0]}")
    classes, class_z = class_means(z, labels)
    _, class_emb = class_means(embeddings, labels)
    return zero_shot_map(class_z, class_emb, repeats=repeats, ridge=ridge, seed=seed, classes=classes)


def collect_model_outputs(
    model: torch.nn.Module,
    dataset,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    limit: int | None = None,
    keep: tuple[str, ...] = ("marginals",),
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """Run the model over ``dataset`` in order (eval mode) and keep embeddings, labels and details.

    Uses :func:`gspdml.engine.evaluate.embed_dataset` with ``return_details=True``. Returns a dict with
    ``"embeddings"`` (N, D), ``"labels"`` (N,) and the requested ``keep`` entries of the pooling
    details (e.g. ``"marginals"`` (N, m), ``"weights"`` (N, h, w) or (N, n)), as numpy arrays.
    ``limit`` keeps only the first ``limit`` samples. Raises :class:`~gspdml.errors.InputError`
    when a requested detail is missing (e.g. ``"marginals"`` with a pooling without prototypes).
    """
    from torch.utils.data import Subset

    from gspdml.engine.evaluate import embed_dataset

    if len(dataset) == 0:
        raise InputError("the dataset is empty; nothing to evaluate")
    if limit is not None:
        if int(limit) < 1:
            raise InputError(f"limit must be a positive number of samples; got {limit!r}")
        dataset = Subset(dataset, range(min(int(limit), len(dataset))))
    emb, labels, details = embed_dataset(
        model, dataset, batch_size=batch_size, device=device, return_details=True, progress=progress
    )
    out = {"embeddings": emb.numpy(), "labels": labels.numpy()}
    for key in keep:
        if key not in details:
            pooling = type(getattr(model, "pooling", model)).__name__
            hint = (
                "; the zero-shot analysis needs prototype marginals: use a model with GSP pooling "
                "(mu=1 for the 'GAP + attributes' variant)"
                if key == "marginals"
                else ""
            )
            raise InputError(f"the model's pooling ({pooling}) gives no {key!r} in its details{hint}")
        out[key] = details[key].numpy()
    return out


def evaluate_model_zero_shot(
    model: torch.nn.Module,
    dataset,
    repeats: int = 1000,
    ridge: float = 0.05,
    seed: int = 0,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> tuple[ZeroShotEvaluation, dict[str, np.ndarray]]:
    """Zero-shot attribute evaluation of a model on a dataset.

    Returns the evaluation and the collected outputs (embeddings, labels, marginals), which the
    caller can reuse, e.g. for :func:`gspdml.viz.prototypes.plot_prototype_histograms`.
    """
    outputs = collect_model_outputs(
        model, dataset, batch_size=batch_size, device=device, keep=("marginals",), progress=progress
    )
    result = evaluate_zero_shot(
        outputs["marginals"], outputs["embeddings"], outputs["labels"], repeats=repeats, ridge=ridge, seed=seed
    )
    return result, outputs


def harmonic_chance(k: int) -> float:
    """Expected MAP of a uniformly random ranking of ``k`` items with one relevant: ``H_k / k``."""
    return math.fsum(1.0 / r for r in range(1, k + 1)) / k
