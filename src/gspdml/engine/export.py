"""Export a trained embedding model for serving: ONNX (``torch.onnx.export(..., dynamo=True)``) or
a PyTorch 2 program (``torch.export`` + ``torch.export.save``, a ``.pt2`` file).

The exported graph takes a batch of preprocessed images ``images`` (B, C, H, W) float32 (or, for a
token backbone, ``tokens`` (B, N) int64 and ``mask`` (B, N) bool, True = real token) and returns
``embeddings`` (B, D) float32 with unit L2 norm; the batch size (and N) are dynamic. Next to the
file, ``<out>.json`` records what a service needs to feed it: the input kind, names, shape and
dtype, the image preprocessing (resize/crop, channel order, value scale, mean and std, or
``none``), the embedding dimension, the model (backbone, pooling), the source checkpoint and the
gspdml and torch versions.

Before it reports success, :func:`export_model` runs the written file (onnxruntime for ONNX, the
loaded ``ExportedProgram`` for pt2) and the checkpoint's PyTorch model on the same sample batches
(two batch sizes, and two token counts for token models) and requires
``|exported - pytorch| <= ATOL + RTOL * |pytorch|`` elementwise; otherwise it removes the file
and raises :class:`ExportError` with the largest difference.
"""
from __future__ import annotations

import importlib
import os
import re
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from gspdml.errors import ConfigError, GspdmlError, InputError

__all__ = [
    "FORMATS",
    "ATOL",
    "RTOL",
    "ExportError",
    "ExportedEmbedder",
    "ExportedTokenEmbedder",
    "exported_module",
    "input_spec",
    "metadata_path",
    "export_model",
    "export_checkpoint",
    "run_exported",
]

FORMATS = ("onnx", "pt2")
#: Elementwise tolerance of the verification: ``|exported - pytorch| <= ATOL + RTOL * |pytorch|``.
ATOL = 1e-4
RTOL = 1e-4
#: The packages of ``pip install "gspdml[export]"`` (module names), needed for ``format="onnx"``.
ONNX_MODULES = ("onnx", "onnxscript", "onnxruntime")
#: Token count of the sample token batch (a second count checks the dynamic length).
SAMPLE_TOKENS = 12


class ExportError(GspdmlError, RuntimeError):
    """A model cannot be exported, or the exported file does not reproduce the PyTorch model."""


def metadata_path(out: str | os.PathLike) -> Path:
    """The JSON written next to an exported file: ``<out>.json`` (``model.onnx`` -> ``model.onnx.json``)."""
    out = Path(out)
    return out.with_name(out.name + ".json")


class ExportedEmbedder(nn.Module):
    """The graph that is exported for an image model: ``forward(images) -> embeddings``, the
    :class:`~gspdml.models.EmbeddingModel`'s L2-normalised output (B, D)."""

    input_kind = "image"

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images)


class ExportedTokenEmbedder(ExportedEmbedder):
    """The graph that is exported for a token model: ``forward(tokens, mask) -> embeddings``."""

    input_kind = "tokens"

    def forward(self, tokens: Tensor, mask: Tensor) -> Tensor:  # type: ignore[override]
        return self.model(tokens, mask=mask)


def exported_module(model: nn.Module) -> ExportedEmbedder:
    """The module that is exported for ``model`` (by its ``input_kind``), in eval mode."""
    cls = ExportedTokenEmbedder if getattr(model, "input_kind", "image") == "tokens" else ExportedEmbedder
    return cls(model).eval()


# ------------------------------------------------------------------------------------ input spec
def input_spec(model: nn.Module, cfg, image_size: Sequence[int] | None = None) -> dict:
    """The input description of ``model`` trained with ``cfg`` (the ``input`` entry of the JSON).

    Keys: ``kind`` (``image`` or ``tokens``), ``names``, ``shape`` and ``dtype`` per input
    (``"batch"``/``"tokens"`` mark dynamic dimensions), ``dynamic``, and ``preprocessing``; for
    images also ``channels`` and ``size`` ``[H, W]``, for tokens ``num_tokens``. The image
    preprocessing is the config's evaluation transform written out: ``resize_shorter_side`` +
    ``center_crop`` (mlrc) or ``resize_to`` (small), then values in ``value_range`` [0, 1],
    ``channel_order`` (RGB or BGR, None for non-3-channel images), times ``scale``, minus ``mean``,
    divided by ``std``; ``steps`` says the same in words.
    """
    from gspdml.data.transforms import CROP_KINDS, NORMALIZATIONS, eval_resize_size

    kind = getattr(model, "input_kind", "image")
    if kind == "tokens":
        num_tokens = getattr(getattr(model, "backbone", None), "num_tokens", None)
        if num_tokens is None:
            raise ExportError(f"token backbone {type(model.backbone).__name__} has no 'num_tokens' attribute; "
                              "cannot build sample token ids")
        if image_size is not None:
            raise InputError("image_size applies to image models; this model takes token ids")
        return {
            "kind": "tokens",
            "names": ["tokens", "mask"],
            "shape": {"tokens": ["batch", "tokens"], "mask": ["batch", "tokens"]},
            "dtype": {"tokens": "int64", "mask": "bool"},
            "dynamic": ["batch", "tokens"],
            "num_tokens": int(num_tokens),
            "preprocessing": {"transform": "none", "normalization": "none",
                              "steps": ["token ids in [0, num_tokens - 1], padded to a common length N",
                                        "mask: True at real tokens, False at padding"]},
        }
    d = cfg.data
    transform = str(d.transform).lower()
    channels = int(getattr(getattr(model, "backbone", None), "in_channels", 3))
    if image_size is not None:
        size = [int(s) for s in image_size]
        if len(size) == 1:
            size = size * 2
        if len(size) != 2 or min(size) < 1:
            raise InputError(f"image_size must be one or two positive integers (H [W]), got {list(image_size)}")
    elif transform in ("mlrc", "imagenet", "small"):
        size = [int(d.image_size)] * 2
    else:
        size, channels = _dataset_image_shape(cfg, channels)
    norm_name = "none" if transform == "none" else str(d.normalization)
    if norm_name not in NORMALIZATIONS:
        raise ConfigError(f"data.normalization {norm_name!r} is unknown; expected one of {sorted(NORMALIZATIONS)}")
    spec = NORMALIZATIONS[norm_name]
    mean = list(spec["mean"]) if norm_name != "none" else [0.0] * channels
    std = list(spec["std"]) if norm_name != "none" else [1.0] * channels
    if len(mean) != channels:
        raise ConfigError(f"data.normalization {norm_name!r} has {len(mean)} channels but the backbone takes "
                          f"{channels}-channel images")
    steps, pre = [], {"transform": transform, "normalization": norm_name}
    if transform in CROP_KINDS:
        resize = eval_resize_size(transform, size[0])
        steps += [f"resize the shorter side to {resize} px (bilinear, antialiased)",
                  f"center crop {size[0]}x{size[1]}"]
        pre.update(resize_shorter_side=resize, center_crop=size)
    elif transform == "small":
        steps.append(f"resize to {size[0]}x{size[1]} (bilinear, antialiased)")
        pre.update(resize_to=size)
    else:
        steps.append(f"images of {size[0]}x{size[1]} px as the dataset gives them (no resize)")
    bgr = bool(spec["bgr"])
    steps.append(f"float {'RGB' if channels == 3 else 'values'} in [0, 1], channels first (C, H, W)")
    if bgr:
        steps.append("reverse the channel order to BGR")
    if float(spec["scale"]) != 1.0:
        steps.append(f"multiply by {spec['scale']:g}")
    if norm_name != "none":
        steps.append("subtract mean, divide by std (per channel, in the model's channel order)")
    pre.update(value_range=[0.0, 1.0], channel_order=("BGR" if bgr else "RGB") if channels == 3 else None,
               scale=float(spec["scale"]), mean=mean, std=std, steps=steps)
    return {
        "kind": "image",
        "names": ["images"],
        "shape": {"images": ["batch", channels, size[0], size[1]]},
        "dtype": {"images": "float32"},
        "dynamic": ["batch"],
        "channels": channels,
        "size": size,
        "preprocessing": pre,
    }


def _dataset_image_shape(cfg, channels: int) -> tuple[list[int], int]:
    """(size, channels) of one item of the config's eval split (for ``data.transform=none``)."""
    from gspdml.engine.datasets import make_split

    hint = "pass the input size explicitly (image_size=(H, W); `gspdml export --image-size H W`)"
    try:
        item = make_split(cfg, cfg.data.test_split, False)[0][0]
    except (GspdmlError, OSError, IndexError) as exc:
        raise ConfigError(f"data.transform=none: the input size comes from the dataset {cfg.data.dataset!r}, "
                          f"which cannot be read here ({exc}); {hint}") from None
    x = item.get("x") if isinstance(item, dict) else item
    if not isinstance(x, Tensor) or x.dim() != 3:
        raise ConfigError(f"data.transform=none: an item of {cfg.data.dataset!r} is not a (C, H, W) image "
                          f"tensor; {hint}")
    return [int(x.shape[1]), int(x.shape[2])], int(x.shape[0])


def _sample_inputs(spec: dict, batch: int, tokens: int, seed: int, device: torch.device) -> tuple[Tensor, ...]:
    """A deterministic batch in the model's input domain (normalised images, or token ids + mask)."""
    g = torch.Generator().manual_seed(seed)
    if spec["kind"] == "tokens":
        ids = torch.randint(0, spec["num_tokens"], (batch, tokens), generator=g)
        lengths = torch.randint((tokens + 1) // 2, tokens + 1, (batch,), generator=g)
        lengths[0] = tokens  # one unpadded sample
        mask = torch.arange(tokens).unsqueeze(0) < lengths.unsqueeze(1)
        return ids.to(device), mask.to(device)
    c, h, w = spec["shape"]["images"][1:]
    pre = spec["preprocessing"]
    x = torch.rand(batch, c, h, w, generator=g)
    if pre["channel_order"] == "BGR":
        x = x.flip(1)
    mean = torch.tensor(pre["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(pre["std"]).view(1, -1, 1, 1)
    return ((x * pre["scale"] - mean) / std).to(device),


# ------------------------------------------------------------------------------------- exporting
def _require_onnx() -> dict[str, str]:
    """The versions of the ONNX packages; ExportError naming the extra when one is missing."""
    versions, missing = {}, []
    for name in ONNX_MODULES:
        try:
            versions[name] = getattr(importlib.import_module(name), "__version__", "?")
        except ImportError:
            missing.append(name)
    if missing:
        raise ExportError(f"format 'onnx' needs the packages {', '.join(ONNX_MODULES)} (missing: "
                          f"{', '.join(missing)}); install them with: pip install \"gspdml[export]\"")
    return versions


def _dynamic_shapes(spec: dict):
    batch = torch.export.Dim("batch", min=1)
    if spec["kind"] == "tokens":
        n = torch.export.Dim("tokens", min=1)
        return ({0: batch, 1: n}, {0: batch, 1: n})
    return ({0: batch},)


@contextmanager
def _full_fp32():
    """No TF32 in convolutions and matrix products (CUDA), so references are plain float32."""
    conv, mm = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = conv, mm


def _reason(exc: BaseException) -> str:
    """``Type: first line`` of the innermost cause of ``exc`` (torch's export errors are long reports)."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = str(exc).strip()
    reason = f"{type(exc).__name__}: {text.splitlines()[0] if text else '(no message)'}"
    found = re.search(r'raised this error:\s*File "([^"]+)", line (\d+)', text)
    return reason + (f" (at {found.group(1)}:{found.group(2)})" if found else "")


def _capture(wrapper: ExportedEmbedder, args: tuple[Tensor, ...], spec: dict, format: str):
    """The ``ExportedProgram`` (pt2) or ``ONNXProgram`` (onnx) of ``wrapper``; ExportError with the reason."""
    what = f"{type(wrapper.model).__name__} (pooling {getattr(wrapper.model, 'pooling_name', '?')!r})"
    try:
        if format == "pt2":
            return torch.export.export(wrapper, args, dynamic_shapes=_dynamic_shapes(spec), strict=False)
        with warnings.catch_warnings():  # token inputs share their dynamic dimensions: expected, not news
            warnings.filterwarnings("ignore", message=r"# The axis name: \w+ will not be used", category=UserWarning)
            return torch.onnx.export(wrapper, args, dynamo=True, verbose=False, dynamic_shapes=_dynamic_shapes(spec),
                                     input_names=spec["names"], output_names=["embeddings"])
    except Exception as exc:
        step = "torch.export" if format == "pt2" else "torch.onnx.export(dynamo=True)"
        raise ExportError(f"{step} cannot capture {what}: {_reason(exc)}") from exc


def _remove(paths: Sequence[Path]) -> None:
    for p in paths:
        try:
            p.unlink()
        except FileNotFoundError:
            pass


def run_exported(path: str | os.PathLike, inputs: Sequence[Tensor], format: str | None = None) -> Tensor:
    """Run an exported file on ``inputs`` (onnxruntime on CPU for ``.onnx``, the loaded program for
    ``.pt2``); returns the embeddings as a CPU float tensor."""
    path = Path(path)
    format = _format_of(path, format)
    if format == "onnx":
        _require_onnx()
        import numpy as np
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, torch.get_num_threads())
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feed = {i.name: np.ascontiguousarray(t.detach().cpu().numpy()) for i, t in zip(session.get_inputs(), inputs)}
        return torch.from_numpy(session.run(None, feed)[0]).float()
    program = torch.export.load(str(path))
    with torch.no_grad():
        return program.module()(*inputs).detach().float().cpu()


def _format_of(path: Path, format: str | None) -> str:
    if format is None:
        format = {".onnx": "onnx", ".pt2": "pt2"}.get(path.suffix.lower())
        if format is None:
            raise InputError(f"cannot tell the export format of {str(path)!r} from its suffix; "
                             f"expected .onnx or .pt2, or name the format ({', '.join(FORMATS)})")
    format = str(format).lower()
    if format not in FORMATS:
        raise InputError(f"unknown export format {format!r}; expected one of: {', '.join(FORMATS)}")
    return format


def _compare(got: Tensor, ref: Tensor) -> tuple[bool, float, float]:
    """(within tolerance, max |difference|, max |difference| / |reference| over entries >= 1e-3)."""
    if got.shape != ref.shape:
        return False, float("inf"), float("inf")
    diff = (got - ref).abs()
    ok = bool((diff <= ATOL + RTOL * ref.abs()).all())
    big = ref.abs() >= 1e-3
    rel = float((diff[big] / ref.abs()[big]).max()) if bool(big.any()) else 0.0
    return ok, float(diff.max()), rel


def export_model(model: nn.Module, cfg, out: str | os.PathLike, format: str | None = None, *,
                 batch_size: int = 8, image_size: Sequence[int] | None = None, seed: int = 0,
                 source: dict | None = None) -> dict:
    """Export ``model`` (an :class:`~gspdml.models.EmbeddingModel` trained with config ``cfg``) to
    ``out`` and write ``<out>.json``; returns that metadata.

    Args:
        model: the model, on the device it is exported from (exported and verified in eval mode;
            its mode is restored afterwards).
        cfg: its :class:`~gspdml.config.TrainConfig` (input size and normalisation come from ``cfg.data``).
        out: output file; ``format`` defaults to its suffix (``.onnx`` or ``.pt2``).
        batch_size: size of the sample batch the export is verified on (a second size, 1 or 3,
            checks the dynamic batch dimension).
        image_size: ``(H, W)`` (or ``(S,)``) of the input images; default from ``cfg.data``
            (``image_size`` for the mlrc/small transforms, one dataset item for ``transform=none``).
        seed: seed of the sample batches.
        source: extra facts about the source (checkpoint path, step) recorded in the JSON.

    Raises:
        ExportError: the ONNX packages are missing, torch.export cannot capture the model, or
            the exported file does not reproduce the model within ``ATOL``/``RTOL`` (the file is
            removed then).
    """
    out = Path(out)
    format = _format_of(out, format)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if out.is_dir():
        raise InputError(f"export output {str(out)!r} is a folder; give a file name such as model.{format}")
    versions = {"torch": torch.__version__}
    if format == "onnx":
        versions.update(_require_onnx())
    training = model.training
    try:
        return _export_eval(model.eval(), cfg, out, format, batch_size, image_size, seed, source, versions)
    finally:
        model.train(training)


def _export_eval(model: nn.Module, cfg, out: Path, format: str, batch_size: int, image_size, seed: int,
                 source: dict | None, versions: dict) -> dict:
    from gspdml import __version__
    from gspdml.io import write_json

    device = next(iter(model.parameters())).device
    spec = input_spec(model, cfg, image_size)
    wrapper = exported_module(model)
    other = 1 if batch_size > 1 else 3
    checks = [(batch_size, SAMPLE_TOKENS), (other, SAMPLE_TOKENS + 5)]
    with torch.no_grad(), _full_fp32():
        example = _sample_inputs(spec, max(batch_size, 2), SAMPLE_TOKENS, seed, device)
        program = _capture(wrapper, example, spec, format)
        samples = [_sample_inputs(spec, b, n, seed + 1 + i, device) for i, (b, n) in enumerate(checks)]
        refs = [model(*s) if spec["kind"] == "image" else model(s[0], mask=s[1]) for s in samples]
        refs = [r.float().cpu() for r in refs]
    out.parent.mkdir(parents=True, exist_ok=True)
    written = [out, out.with_name(out.name + ".data")]  # ONNX may put large weights in <out>.data
    _remove([metadata_path(out)])
    extra: dict[str, Any] = {}
    try:
        if format == "onnx":
            program.save(str(out))
            extra["opset"] = {op.domain or "ai.onnx": int(op.version) for op in program.model_proto.opset_import}
            runtime = f"onnxruntime {versions['onnxruntime']} (CPUExecutionProvider)"
        else:
            torch.export.save(program, str(out))
            runtime = f"torch.export.load (torch {torch.__version__}, {device.type})"
        results = []
        for (b, n), sample, ref in zip(checks, samples, refs):
            got = run_exported(out, sample, format)
            ok, max_abs, max_rel = _compare(got, ref)
            row = {"batch_size": b, "max_abs_diff": max_abs, "max_rel_diff": max_rel}
            if spec["kind"] == "tokens":
                row["tokens"] = n
            results.append(row)
            if not ok:
                what = f"batch {b}" + (f", {n} tokens" if spec["kind"] == "tokens" else "")
                shape = "" if got.shape == ref.shape else f" (output shape {tuple(got.shape)}, expected {tuple(ref.shape)})"
                raise ExportError(
                    f"the exported {format} file does not reproduce the PyTorch model: max |difference| "
                    f"{max_abs:.3g} on the sample {what}{shape}; tolerance |a - b| <= {ATOL:g} + {RTOL:g} |b|; "
                    f"removed {str(out)!r}")
    except BaseException:
        _remove(written)
        raise
    files = [str(p) for p in written if p.is_file()]
    meta = {
        "format": format,
        "file": out.name,
        "files": [Path(f).name for f in files],
        "gspdml_version": __version__,
        "versions": versions,
        "model": {
            "name": getattr(cfg, "name", None),
            "backbone": cfg.model.backbone,
            "pooling": getattr(model, "pooling_name", cfg.model.pooling),
            "pooling_kwargs": dict(cfg.model.pooling_kwargs or {}),
            "local_dim": int(model.local_dim),
        },
        "input": spec,
        "output": {"name": "embeddings", "shape": ["batch", int(model.local_dim)], "dtype": "float32",
                   "l2_normalized": True},
        "embedding_dim": int(model.local_dim),
        "exported_on": str(device),
        "verification": {"runtime": runtime, "atol": ATOL, "rtol": RTOL,
                         "rule": "|exported - pytorch| <= atol + rtol * |pytorch| elementwise",
                         "reference": f"the checkpoint's PyTorch model in float32 on {device}", "samples": results},
        "source": dict(source or {}),
        **extra,
    }
    write_json(metadata_path(out), meta)
    return meta


def export_checkpoint(path_or_run_dir: str | os.PathLike, out: str | os.PathLike, format: str | None = None, *,
                      batch_size: int = 8, device: Any = "cpu", image_size: Sequence[int] | None = None,
                      seed: int = 0) -> dict:
    """:func:`export_model` of the model stored in a checkpoint file or a run folder (its best,
    else last checkpoint), rebuilt with :func:`gspdml.engine.checkpoint.load_model_from_checkpoint`
    on ``device``."""
    from gspdml.engine.checkpoint import load_model_from_checkpoint
    from gspdml.engine.distributed import resolve_device

    dev = device if isinstance(device, torch.device) else resolve_device(str(device))
    format = _format_of(Path(out), format)
    if format == "onnx":
        _require_onnx()  # fail before loading anything
    model, cfg, extra = load_model_from_checkpoint(path_or_run_dir, map_location=dev)
    source = {"checkpoint": extra["path"], "step": extra.get("step"), "epoch": extra.get("epoch")}
    return export_model(model, cfg, out, format, batch_size=batch_size, image_size=image_size, seed=seed,
                        source=source)
