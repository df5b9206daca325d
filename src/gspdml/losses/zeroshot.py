r"""Cross-batch zero-shot prediction loss :math:`\mathcal{L}_{ZS}` (paper Sec. 4.3, eq. 4.4).

The GSP layer transports mass from the local features to ``m`` learnable prototypes; the prototype
marginals ``z`` (one probability vector of length ``m`` per sample, eq. 4.3) can be read as
*attribute predictions*. :class:`ZeroShotLoss` asks these attributes to be useful for predicting
the classes of samples whose classes were not used to fit the predictor, which regularises the
prototypes towards transferable (class-agnostic) semantics.

Maths
-----
Let ``Υ = [v_1 … v_c]ᵀ`` be a learnable class-embedding table (one row of size ``D`` per training
class, He-normal initialised). A batch ``b`` with attribute vectors ``Z_b`` (rows ``z_i``) is split
into two halves ``b_1, b_2`` with *disjoint* classes. On one half a linear predictor
``v̂ = A z`` is fitted by ridge regression (P3)::

    A_k = argmin_A  Σ_{i ∈ b_k} ||A z_i − v_{y_i}||² + ε ||A||_F²

In row form with ``Z = Z_{b_k}`` (n × m) and ``V = Υ_{y(b_k)}`` (n × D) the solution ``W = A_kᵀ`` is::

    W = (ZᵀZ + ε I_m)⁻¹ Zᵀ V           (primal, an m × m system)
      = Zᵀ (Z Zᵀ + ε I_n)⁻¹ V           (dual, an n × n system; identical by the push-through identity)

computed with ``torch.linalg.solve`` on whichever system is smaller (never an explicit inverse),
so the fit is differentiable with respect to ``Z`` and ``Υ``. The *other* half is then scored
against *all* ``c`` training classes with logits ``s · v_jᵀ A_k z_i`` and a softmax
cross-entropy (eq. 4.4 is exactly this cross-entropy, written as
``log(1 + Σ_{j≠y} exp((v_j − v_y)ᵀ A z))``; ``s`` is the authors' code's softmax scale, 9.5)::

    ℓ_{k→k'} = (1/|b_{k'}|) Σ_{i ∈ b_{k'}} CE( s · Υ A_k z_i , y_i )
    L_ZS     = ½ (ℓ_{1→2} + ℓ_{2→1})

i.e. the *mean* of the two directions (eq. 4.4 writes their sum; the mean keeps the loss on the
scale of a single cross-entropy, like the authors' code, which averages over the whole batch; the
sum is exactly twice this value, so to reproduce it literally double λ's effect on L_ZS). The total
training loss is ``(1 − λ) L_DML + λ L_ZS`` with ``λ = 0.1`` (done by the engine).

With ``mu = 1`` the GSP layer is global average pooling, and its marginals still give attribute
vectors: this is the paper's "GAP + attributes" ablation; the loss needs nothing special for it.

Splitting
---------
``split="alternate"`` (default, deterministic): the distinct classes of the batch, in order of
first appearance, are assigned alternately to ``b_1`` and ``b_2`` (with a class-balanced batch of
8 classes x 4 samples this gives 4 classes / 16 samples per half). ``split="random"``: the classes
are shuffled (with ``generator`` if given) and then assigned alternately. A batch with fewer than
two distinct classes cannot be split and raises :class:`gspdml.errors.InputError`.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from gspdml.errors import InputError

__all__ = ["ZeroShotLoss", "ridge_fit", "split_classes"]

SPLITS = ("alternate", "random")


def ridge_fit(z: torch.Tensor, targets: torch.Tensor, ridge: float) -> torch.Tensor:
    """Ridge-regression weights ``W`` (..., m, D) with ``targets ≈ z @ W``.

    Minimises ``||z W − targets||_F² + ridge · ||W||_F²`` by a linear solve on the smaller of the
    primal (m × m) and dual (n × n) normal equations (no explicit inverse). ``z`` is (..., n, m),
    ``targets`` is (..., n, D) with the same leading (batch) dimensions; differentiable in both.
    ``ridge`` must be > 0 (the systems are then positive definite).
    """
    if z.ndim < 2 or targets.ndim != z.ndim or z.shape[:-1] != targets.shape[:-1]:
        raise InputError(
            f"ridge_fit expects z (..., n, m) and targets (..., n, D) with the same n and batch dimensions; "
            f"got {tuple(z.shape)} and {tuple(targets.shape)}"
        )
    if not ridge > 0:
        raise InputError(f"ridge must be > 0 (the regularisation weight ε of eq. P3); got {ridge}")
    n, m = z.shape[-2:]
    zt = z.mT
    if m <= n:
        eye = torch.eye(m, dtype=z.dtype, device=z.device)
        return torch.linalg.solve(zt @ z + ridge * eye, zt @ targets)
    eye = torch.eye(n, dtype=z.dtype, device=z.device)
    return zt @ torch.linalg.solve(z @ zt + ridge * eye, targets)


def split_classes(
    labels: torch.Tensor,
    split: str = "alternate",
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of two class-disjoint halves of a batch.

    The distinct classes, in order of first appearance (``"alternate"``) or shuffled
    (``"random"``), are assigned alternately to the first and the second half. Returns two 1-D
    index tensors (positions in ``labels``) in increasing order. Raises
    :class:`~gspdml.errors.InputError` when the batch has fewer than two distinct classes.
    """
    if split not in SPLITS:
        raise InputError(f"unknown zero-shot split {split!r}; valid choices are: {', '.join(SPLITS)}")
    labels = labels.reshape(-1)
    classes, inverse = torch.unique(labels, sorted=True, return_inverse=True)
    num = classes.numel()
    if num < 2:
        raise InputError(
            "ZeroShotLoss needs a batch with at least 2 distinct classes to split it into two "
            f"class-disjoint halves; got {labels.numel()} samples of {num} class(es). Use a "
            "class-balanced sampler with classes_per_batch >= 2."
        )
    positions = torch.arange(labels.numel(), device=labels.device)
    # first position of each class -> order of first appearance
    first = torch.full((num,), labels.numel(), dtype=torch.long, device=labels.device)
    first = first.scatter_reduce(0, inverse, positions, reduce="amin")
    order = torch.argsort(first)  # class slots in order of first appearance
    if split == "random":
        perm = torch.randperm(num, generator=generator, device="cpu").to(labels.device)
        order = order[perm]
    half_of_class = torch.empty(num, dtype=torch.long, device=labels.device)
    half_of_class[order] = torch.arange(num, device=labels.device) % 2
    half = half_of_class[inverse]
    return positions[half == 0], positions[half == 1]


def matched_scale(num_classes: int, reference_classes: int = 100, reference_scale: float = 9.5) -> float:
    """L_ZS softmax scale that keeps the logits at the size they have in the authors' setting.

    The class-embedding table is He-normal initialised with variance ``2 / num_classes``, so the
    logits ``s * v_j . A z`` grow like ``s / num_classes``. The authors' ``s = 9.5`` was used with
    ~100 training classes; with few classes (e.g. 8) the same ``s`` makes L_ZS start near 86 and
    swamp the metric loss (measured in the demo: GSP+L_ZS collapsed to near-uniform weights,
    MAP@R 0.07). This returns ``reference_scale * num_classes / reference_classes`` (0.76 for 8
    classes), which keeps the logit size; pass it as ``ZeroShotLoss(scale=...)`` /
    ``loss.zero_shot.scale`` when training on few classes.
    """
    if num_classes < 1 or reference_classes < 1:
        raise InputError(f"matched_scale needs positive class counts; got {num_classes} and {reference_classes}")
    return reference_scale * num_classes / reference_classes


class ZeroShotLoss(nn.Module):
    """Cross-batch zero-shot prediction loss L_ZS on prototype marginals (paper eq. 4.4).

    Args:
        num_classes: number of training classes ``c`` (labels must lie in ``[0, c)``).
        embed_dim: size ``D`` of the learnable class embeddings ``v_j`` (e.g. the embedding size).
        ridge: ridge weight ``ε`` of the predictor fit (P3); paper 0.05.
        scale: softmax scale ``s`` of the logits ``s · v_jᵀ A z_i`` (authors' code: 9.5).
        split: ``"alternate"`` (deterministic, default) or ``"random"``; see the module docstring.
        generator: optional ``torch.Generator`` for ``split="random"``.

    ``forward(z, labels)`` takes the prototype marginals ``z`` (B, m) (e.g.
    ``model(x, return_details=True)[1]["marginals"]``) and integer labels (B,) and returns the
    scalar loss (mean of the two prediction directions). The class-embedding table is the
    parameter ``class_embeddings`` (num_classes, embed_dim); :meth:`param_groups` lists it for the
    optimiser, with learning-rate multiplier ``lr_mult`` (1 by default).

    Example::

        zs = ZeroShotLoss(num_classes=100, embed_dim=128)
        emb, details = model(x, return_details=True)
        loss = 0.9 * dml_loss(emb, y) + 0.1 * zs(details["marginals"], y)
    """

    def __init__(
        self,
        num_classes: int,
        embed_dim: int,
        ridge: float = 0.05,
        scale: float = 9.5,
        split: Literal["alternate", "random"] = "alternate",
        generator: torch.Generator | None = None,
        lr_mult: float = 1.0,
    ) -> None:
        super().__init__()
        if int(num_classes) != num_classes or num_classes < 2:
            raise InputError(f"ZeroShotLoss num_classes must be an integer >= 2; got {num_classes!r}")
        if int(embed_dim) != embed_dim or embed_dim < 1:
            raise InputError(f"ZeroShotLoss embed_dim must be a positive integer; got {embed_dim!r}")
        if not ridge > 0:
            raise InputError(f"ZeroShotLoss ridge must be > 0; got {ridge!r}")
        if not scale > 0:
            raise InputError(f"ZeroShotLoss scale must be > 0; got {scale!r}")
        if split not in SPLITS:
            raise InputError(f"unknown zero-shot split {split!r}; valid choices are: {', '.join(SPLITS)}")
        self.num_classes = int(num_classes)
        self.embed_dim = int(embed_dim)
        self.ridge = float(ridge)
        self.scale = float(scale)
        self.split = split
        self.generator = generator
        self.lr_mult = float(lr_mult)
        table = torch.empty(self.num_classes, self.embed_dim)
        nn.init.kaiming_normal_(table, a=0, mode="fan_out")  # He-normal, as the authors' code
        self.class_embeddings = nn.Parameter(table)

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, embed_dim={self.embed_dim}, ridge={self.ridge}, "
            f"scale={self.scale}, split={self.split!r}"
        )

    def param_groups(self) -> list[dict]:
        """Optimiser parameter groups: the class-embedding table (learning rate x ``lr_mult``)."""
        return [{"name": "zero_shot_class_embeddings", "params": [self.class_embeddings], "lr_mult": self.lr_mult}]

    def _check(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if z is None:
            raise InputError(
                "ZeroShotLoss got z=None: the pooling gives no prototype marginals. Use GSP "
                "pooling (mu=1 for the 'GAP + attributes' variant) or disable loss.zero_shot."
            )
        if not isinstance(z, torch.Tensor) or z.ndim != 2:
            shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise InputError(f"ZeroShotLoss expects z of shape (B, m) (prototype marginals); got {shape}")
        if not z.is_floating_point():
            raise InputError(f"ZeroShotLoss expects floating-point z; got dtype {z.dtype}")
        if not isinstance(labels, torch.Tensor):
            labels = torch.as_tensor(labels)
        if labels.ndim == 2 and labels.shape[1] == 1:
            labels = labels[:, 0]
        if labels.ndim != 1 or labels.shape[0] != z.shape[0]:
            raise InputError(
                f"ZeroShotLoss expects labels of shape (B,) matching z's batch size {z.shape[0]}; "
                f"got labels of shape {tuple(labels.shape)}"
            )
        if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.is_complex():
            raise InputError(f"ZeroShotLoss expects integer class labels; got dtype {labels.dtype}")
        labels = labels.to(device=z.device, dtype=torch.long)
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise InputError(
                f"ZeroShotLoss labels must lie in [0, {self.num_classes}) (num_classes of the "
                f"class-embedding table); got range [{int(labels.min())}, {int(labels.max())}]"
            )
        return labels

    @staticmethod
    def _check_halves(halves, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(halves, (tuple, list)) or len(halves) != 2:
            raise InputError("ZeroShotLoss halves must be a pair (first_indices, second_indices)")
        first, second = (torch.as_tensor(h, dtype=torch.long, device=labels.device).reshape(-1) for h in halves)
        batch = labels.numel()
        if first.numel() == 0 or second.numel() == 0:
            raise InputError("ZeroShotLoss halves must both be non-empty")
        both = torch.cat([first, second])
        if int(both.min()) < 0 or int(both.max()) >= batch or torch.unique(both).numel() != both.numel():
            raise InputError(
                f"ZeroShotLoss halves must be distinct positions in [0, {batch}) without overlap; "
                f"got {first.tolist()} and {second.tolist()}"
            )
        shared = set(labels[first].tolist()) & set(labels[second].tolist())
        if shared:
            raise InputError(
                f"ZeroShotLoss halves must have disjoint classes; classes {sorted(shared)} are in both"
            )
        return first, second

    def _direction(self, z_fit, v_fit, z_eval, y_eval) -> torch.Tensor:
        w = ridge_fit(z_fit, v_fit, self.ridge)  # (m, D): v̂ = z @ w, i.e. A = wᵀ
        pred = z_eval @ w  # (n', D) predicted class embeddings
        logits = self.scale * pred @ self.class_embeddings.to(pred.dtype).T  # (n', c)
        return F.cross_entropy(logits, y_eval)

    def forward(
        self,
        z: torch.Tensor,
        labels: torch.Tensor,
        halves: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """L_ZS of a batch: z (B, m) prototype marginals, labels (B,) ints in [0, num_classes).

        ``halves`` optionally gives the split explicitly as two index tensors (positions in the
        batch); they must be non-empty, must not overlap and must have disjoint classes
        (samples in neither half are ignored). By default the split follows ``self.split``.
        """
        labels = self._check(z, labels)
        if halves is None:
            first, second = split_classes(labels, self.split, self.generator)
        else:
            first, second = self._check_halves(halves, labels)
        table = self.class_embeddings.to(z.dtype)
        z1, z2 = z[first], z[second]
        y1, y2 = labels[first], labels[second]
        v1, v2 = table[y1], table[y2]
        loss_12 = self._direction(z1, v1, z2, y2)  # fit on b1, predict b2
        loss_21 = self._direction(z2, v2, z1, y1)  # fit on b2, predict b1
        return 0.5 * (loss_12 + loss_21)
