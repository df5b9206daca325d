"""The layer rule (docs/dev/architecture.md): a module never imports from a higher layer.

Every module under ``src/gspdml`` is parsed; every ``import`` / ``from ... import`` anywhere in it
(function-level ones too), every ``importlib.import_module("gspdml...")`` literal and every value
of a package's lazy ``_EXPORTS`` table counts as an edge. An edge from package A to package B is
allowed when B's layer is lower than A's, or A and B are the same package. Packages that share a
layer (data and pooling; models and losses; analysis and viz; demo and bench) are independent of
each other. Only ``gspdml/__init__.py`` (the public re-exports) is exempt.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "gspdml"

#: top-level unit (module or package below gspdml) -> layer, lowest first
LAYERS = {
    "errors": 0, "_lazy": 0,
    "registry": 1, "io": 1,
    "config": 2,
    "data": 3, "pooling": 3,
    "models": 4, "losses": 4, "functional": 4,
    "evaluation": 5,
    "engine": 6,
    "analysis": 7, "viz": 7,
    "demo": 8, "bench": 8,
    "cli": 9,
}


def _unit(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "gspdml" or len(parts) < 2:
        return None
    return parts[1]


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _edges(path: Path, text: str | None = None) -> list[tuple[int, str]]:
    """``(line, imported module)`` for every gspdml import in the file (or in ``text``, as if it were)."""
    tree = ast.parse(path.read_text() if text is None else text, filename=str(path))
    this = _module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.append((node.lineno, mod))
            # "from gspdml import engine" imports the sub-package
            if mod == "gspdml":
                out += [(node.lineno, f"gspdml.{a.name}") for a in node.names
                        if (SRC / a.name).is_dir() or (SRC / f"{a.name}.py").is_file()]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module":
            if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                out.append((node.lineno, node.args[0].value))
        elif isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "_EXPORTS" for t in node.targets):
            if isinstance(node.value, ast.Dict):
                out += [(node.lineno, v.value) for v in node.value.values
                        if isinstance(v, ast.Constant) and isinstance(v.value, str)]
    return [(line, m) for line, m in out if m.startswith("gspdml")]


def _modules() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py") if p != SRC / "__init__.py")


def test_every_unit_has_a_layer():
    units = {_unit(_module_name(p)) for p in _modules()}
    missing = sorted(u for u in units if u not in LAYERS)
    assert not missing, f"add these to LAYERS (and docs/dev/architecture.md): {missing}"


def test_no_import_goes_up_or_sideways():
    bad = []
    for path in _modules():
        src_unit = _unit(_module_name(path))
        for line, target in _edges(path):
            dst_unit = _unit(target)
            if dst_unit is None or dst_unit == src_unit:
                continue
            if dst_unit not in LAYERS:
                bad.append(f"{path.relative_to(SRC)}:{line} imports unknown unit {target}")
            elif LAYERS[dst_unit] >= LAYERS[src_unit]:
                bad.append(
                    f"{path.relative_to(SRC)}:{line} ({src_unit}, layer {LAYERS[src_unit]}) imports {target} "
                    f"({dst_unit}, layer {LAYERS[dst_unit]})"
                )
    assert not bad, "upward or sideways imports:\n" + "\n".join(bad)


def test_the_checker_sees_function_level_relative_and_lazy_imports():
    """The parser must find imports hidden in functions, relative ones, import_module literals and _EXPORTS."""
    code = (
        "def f():\n    from gspdml.engine import trainer\n"
        "from ..cli import main\n"
        "import importlib\nimportlib.import_module('gspdml.viz')\n"
        "_EXPORTS = {'x': 'gspdml.models.embedding'}\n"
    )
    targets = sorted(m for _, m in _edges(SRC / "data" / "probe.py", code))
    assert targets == ["gspdml.cli", "gspdml.engine", "gspdml.models.embedding", "gspdml.viz"]


def test_no_argparse_outside_cli():
    offenders = [str(p.relative_to(SRC)) for p in _modules()
                 if _unit(_module_name(p)) != "cli" and "argparse" in {m for _, m in _imports_any(p)}]
    assert not offenders, f"argparse belongs in gspdml/cli/ only: {offenders}"


def _imports_any(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.lineno, node.module.split(".")[0]


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__])
