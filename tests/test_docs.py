"""The documentation stays true: README.md and docs/**/*.md.

* every ``gspdml.<...>`` dotted name in their code (inline code and code blocks, including
  ``from gspdml.x import a, b``) imports or resolves;
* every code block preceded by ``<!-- runnable -->`` runs (in a temporary folder, Agg backend);
* README.md is at most 10 KB;
* every relative link points to an existing file (and, with ``#anchor``, to an existing heading).
"""
from __future__ import annotations

import importlib
import os
import re
import sys
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted([README, *(ROOT / "docs").rglob("*.md")])

FENCE = re.compile(r"^```[^\n]*\n(.*?)^```[ \t]*$", re.S | re.M)
RUNNABLE = re.compile(r"<!--\s*runnable\s*-->\s*\n```python[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)
INLINE = re.compile(r"(`+)(.+?)\1", re.S)
DOTTED = re.compile(r"(?<![\w./-])gspdml(?:\.[A-Za-z_]\w*)+")
FROM_IMPORT = re.compile(r"\bfrom\s+(gspdml(?:\.\w+)*)\s+import\s+(\([^)]*\)|[^\n#;]+)")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$", re.M)


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _code_parts(text: str) -> list[str]:
    """The fenced code blocks and the inline code spans of a Markdown text."""
    blocks = [m.group(1) for m in FENCE.finditer(text)]
    prose = FENCE.sub("", text)
    return blocks + [m.group(2) for m in INLINE.finditer(prose)]


def _names_in(code: str) -> set[str]:
    names = set(DOTTED.findall(code))
    for module, imported in FROM_IMPORT.findall(code):
        for item in imported.strip("()").split(","):
            item = item.strip().split(" as ")[0].strip()
            if item and item != "*" and item.isidentifier():
                names.add(f"{module}.{item}")
    return names


def _all_names() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for doc in DOCS:
        for part in _code_parts(doc.read_text(encoding="utf-8")):
            for name in _names_in(part):
                found.setdefault(name, [])
                if _rel(doc) not in found[name]:
                    found[name].append(_rel(doc))
    return found


def resolve(dotted: str):
    """Import the longest importable module prefix of ``dotted``, then getattr the rest.

    A module that exists but fails to import raises (its error is the finding); only a module
    that does not exist makes the search try a shorter prefix.
    """
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        module_name = ".".join(parts[:i])
        try:
            obj = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and (module_name == exc.name or module_name.startswith(exc.name + ".")):
                continue
            raise
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(dotted)


NAMES = _all_names()


def test_docs_mention_names():
    assert len(NAMES) > 20, "the name scan found almost nothing: the regular expressions are broken"
    assert "gspdml.GSP" in NAMES


@pytest.mark.parametrize("name", sorted(NAMES))
def test_dotted_name_resolves(name):
    try:
        resolve(name)
    except Exception as exc:  # noqa: BLE001 - any failure is the finding
        pytest.fail(f"{name} (used in {', '.join(NAMES[name])}) does not resolve: {type(exc).__name__}: {exc}")


def _runnable_blocks() -> list[tuple[str, int, str]]:
    blocks = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for m in RUNNABLE.finditer(text):
            line = text.count("\n", 0, m.start(1)) + 1
            blocks.append((_rel(doc), line, m.group(1)))
    return blocks


BLOCKS = _runnable_blocks()


def _registries() -> list:
    """The component registries (those that import; a broken one fails its own names' test)."""
    found = []
    for module, attr in (("gspdml.pooling", "POOLINGS"), ("gspdml.losses", "LOSSES"),
                         ("gspdml.models", "BACKBONES"), ("gspdml.data", "DATASETS")):
        try:
            found.append(getattr(importlib.import_module(module), attr))
        except Exception:  # noqa: BLE001
            continue
    return found


def _registered(registry) -> set[str]:
    try:
        return {str(n).lower() for n in registry.names()}
    except AttributeError:
        return {str(n).lower() for n in registry}


def test_docs_have_runnable_blocks():
    assert len(BLOCKS) >= 6
    markers = sum(len(re.findall(r"<!--\s*runnable\s*-->", d.read_text(encoding="utf-8"))) for d in DOCS)
    assert markers == len(BLOCKS), "a <!-- runnable --> marker must be followed directly by a ```python block"
    assert any(path == "docs/extend.md" for path, _, _ in BLOCKS)


@pytest.mark.parametrize("path,line,code", BLOCKS, ids=[f"{p}:{n}" for p, n, _ in BLOCKS])
def test_runnable_block(path, line, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    if "matplotlib" in sys.modules:
        import matplotlib

        matplotlib.use("Agg")
    import torch

    threads = torch.get_num_threads()
    registries = _registries()
    before = [_registered(r) for r in registries]
    try:
        exec(compile(code, f"{path}:{line}", "exec"), {"__name__": f"docs_block_{line}"})
    finally:
        torch.set_num_threads(threads)
        for registry, names in zip(registries, before):
            if hasattr(registry, "unregister"):
                for name in _registered(registry) - names:
                    registry.unregister(name)


def test_readme_is_short():
    size = len(README.read_bytes())
    assert size <= 10240, f"README.md is {size} bytes; keep it at most 10240 (move details to docs/)"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces -> '-'."""
    text = re.sub(r"`|\*\*|\[([^\]]*)\]\([^)]*\)", lambda m: m.group(1) or "", heading).strip().lower()
    kept = "".join(ch for ch in text if ch in " -_" or unicodedata.category(ch)[0] in "LN")
    return kept.replace(" ", "-")


def _anchors(doc: Path) -> set[str]:
    text = FENCE.sub("", doc.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    anchors = set()
    for _, title in HEADING.findall(text):
        slug = _slug(title)
        count = seen.get(slug, 0)
        anchors.add(slug if count == 0 else f"{slug}-{count}")
        seen[slug] = count + 1
    return anchors


def _links() -> list[tuple[str, str]]:
    links = []
    for doc in DOCS:
        text = FENCE.sub("", doc.read_text(encoding="utf-8"))
        text = INLINE.sub("", text)
        for m in LINK.finditer(text):
            target = m.group(1) or m.group(2)
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            links.append((_rel(doc), target))
    return links


LINKS = _links()


def test_docs_have_links():
    assert len(LINKS) > 10


@pytest.mark.parametrize("doc,target", LINKS, ids=[f"{d}->{t}" for d, t in LINKS])
def test_relative_link(doc, target):
    file_part, _, anchor = target.partition("#")
    source = ROOT / doc
    dest = (source.parent / file_part).resolve() if file_part else source
    assert dest.exists(), f"{doc}: link {target!r} points to {dest}, which does not exist"
    if anchor and dest.suffix == ".md":
        assert anchor in _anchors(dest), f"{doc}: link {target!r}: no heading with anchor #{anchor} in {file_part or doc}"


def test_readme_has_the_ci_commands():
    """`.ci/run` runs exactly the README's install and test commands; they stay in the README."""
    text = README.read_text(encoding="utf-8")
    blocks = [m.group(1).strip() for m in FENCE.finditer(text)]
    assert 'python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[test]" && gspdml demo' in blocks
    assert "python -m pytest -q" in blocks


def _test_references() -> list[tuple[str, str, str]]:
    """``(doc, test file, test name)`` for every ``tests/...py::name`` the docs cite."""
    out = []
    for doc in DOCS:
        for file, name in re.findall(r"(tests/[\w/]+\.py)::(\w+)", doc.read_text()):
            out.append((_rel(doc), file, name))
    return out


def test_docs_cite_tests():
    assert any(doc.endswith("reliability.md") for doc, _, _ in _test_references())


@pytest.mark.parametrize("doc,file,name", _test_references(), ids=lambda v: str(v))
def test_cited_test_exists(doc, file, name):
    """A test the docs cite (``tests/x.py::test_y``) is a test function of that file."""
    import ast

    path = ROOT / file
    assert path.is_file(), f"{doc} cites {file}, which does not exist"
    tree = ast.parse(path.read_text())
    names = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    assert name in names, f"{doc} cites {file}::{name}, which is not a test in that file"
