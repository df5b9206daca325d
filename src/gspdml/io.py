"""Small output helpers shared by every layer: the one JSON writer and the one table formatter."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

__all__ = ["jsonable", "write_json", "format_table"]


def jsonable(obj: Any) -> Any:
    """``obj`` with dict keys as strings, tuples as lists, numpy/torch scalars as Python numbers,
    paths as strings and non-finite floats as ``None`` (JSON has no NaN)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item):
        try:
            return jsonable(obj.item())
        except (ValueError, RuntimeError):
            return str(obj)
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` (see :func:`jsonable`) as indented JSON, atomically (temporary file + rename);
    missing parent folders are created."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(jsonable(obj), indent=2, allow_nan=False) + "\n")
    os.replace(tmp, out)
    return out


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]], markdown: bool = True) -> str:
    """A table of ``rows`` under ``header``: Markdown, or plain text with aligned columns."""
    header = [str(h) for h in header]
    body = [[str(c) for c in r] for r in rows]
    for i, r in enumerate(body):
        if len(r) != len(header):
            raise ValueError(f"format_table: row {i} has {len(r)} cells, the header {len(header)}")
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in body])
    widths = [max(len(x) for x in col) for col in zip(header, *body)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*header), fmt.format(*["-" * w for w in widths])] + [fmt.format(*r) for r in body]
    return "\n".join(line.rstrip() for line in lines)
