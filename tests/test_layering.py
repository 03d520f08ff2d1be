"""The import layering of docs/architecture.md, checked on the source (ast), and the hygiene of its prose.

Layers (an arrow ``A ← B`` means B may import A)::

    core ← methods (pad, boost, dms, pemn, ...) ← models/<type> ← registry ← hf_dynamic/__init__.py
    core ← data, assets                                                       (leaves used by examples)

Per package, the hf_dynamic modules a module may import (function-level imports, ``TYPE_CHECKING`` imports and
``importlib.import_module("<constant>")`` calls included):

- ``core``: ``core`` only;
- ``data`` and ``assets``: ``core``, ``data``, ``assets``;
- a method package (``pad``, ``boost``, ``dms``, ``pemn``): ``core`` and itself; never another method, never
  ``models``;
- ``models/<type>``: ``core``, any method, and its own ``models/<type>`` package; not ``data`` or ``assets`` (a
  model is loaded by ``from_pretrained`` on machines without the datasets stack) and not another model type (it
  composes other models through the Auto classes);
- ``models/__init__.py``: nothing of hf_dynamic;
- ``sharing`` (the remote-code bundler and the model card that ``save_pretrained`` of every model type writes):
  only itself (it reads the library's source files; the model types it needs are handed to it by the registry, it
  never imports one, by name or otherwise); ``models/<type>`` may import it;
- ``registry``: ``core``, methods, models and ``sharing`` (it imports every model package by name and registers
  each with transformers and with ``sharing``);
- ``deploy`` (exports to other engines: GGUF for llama.cpp, ONNX for onnxruntime): ``core``, methods, models and
  itself; nothing below it imports it;
- the package root ``hf_dynamic/__init__.py``: anything. Nothing else imports the root or ``hf_dynamic.registry``.

No module of the library imports ``examples``, ``bench`` or ``tests``.

A new top-level package under ``hf_dynamic/`` must be classified here (the test fails until it is).
"""

from __future__ import annotations

import ast
import io
import re
import sys
import tokenize
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "hf_dynamic"
ROOT = "hf_dynamic"
METHOD_PACKAGES = ("pad", "boost", "dms", "pemn", "distill", "slim")
LEAF_PACKAGES = ("data", "assets")
OUTSIDE_LIBRARY = ("examples", "bench", "tests")

# Import arrows against the rule still being removed: (file, imported module). The test fails on an entry that no
# longer occurs, so this set only shrinks; it is empty now and should stay so.
KNOWN_VIOLATIONS: set[tuple[str, str]] = set()

# Docstrings / comments that still cite internal write-ups or issue numbers: (file, rule), rule "internal-doc" or
# "issue-number". Same mechanism: an entry that no longer occurs fails the test. Empty now.
KNOWN_PROSE: set[tuple[str, str]] = set()


# ---------------------------------------------------------------------------------------------------- the source
def library_files() -> list[Path]:
    return sorted(p for p in PACKAGE_DIR.rglob("*.py") if "__pycache__" not in p.parts)


def rel(path: Path) -> str:
    return path.relative_to(PACKAGE_DIR.parent).as_posix()


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_module(dotted: str) -> bool:
    """Whether ``dotted`` (``hf_dynamic.x.y``) is a module or package of the library."""
    base = PACKAGE_DIR.parent.joinpath(*dotted.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def imports_of(path: Path) -> list[tuple[int, str]]:
    """Every module ``path`` imports, absolute: ``(line, dotted name)``; every nesting level is visited."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                if node.level > 1:
                    base_parts = base_parts[: -(node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                # `from pkg import submodule` imports the submodule; `from mod import name` imports mod.
                found.append((node.lineno, candidate if is_module(candidate) else base))
        elif isinstance(node, ast.Call) and node.args and _is_import_module_call(node.func):
            constant = isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
            found.append((node.lineno, node.args[0].value if constant else DYNAMIC))
        elif isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "_LAZY" for t in node.targets) \
                and isinstance(node.value, ast.Dict):
            # a lazy-attribute table (core/lazy.py imports its modules on first access): each value is an import
            found += [(v.lineno, v.value) for v in node.value.values
                      if isinstance(v, ast.Constant) and isinstance(v.value, str)]
    return found


# An import whose module name is computed at run time: the checker cannot judge it, so it is refused outside
# core/lazy.py (which imports the modules of the `_LAZY` tables, read above as imports of the table's module).
DYNAMIC = "<computed module name>"
DYNAMIC_IMPORTS_ALLOWED = {"hf_dynamic/core/lazy.py"}


def _is_import_module_call(func) -> bool:
    if isinstance(func, ast.Attribute):
        return func.attr == "import_module"
    return isinstance(func, ast.Name) and func.id in ("import_module", "__import__")


# -------------------------------------------------------------------------------------------------------- the rule
def layer_of(dotted: str) -> str | None:
    """The layer of an hf_dynamic module name (``None`` for anything outside the library)."""
    parts = dotted.split(".")
    if parts[0] != ROOT:
        return None
    if len(parts) == 1:
        return "root"
    top = parts[1]
    if top == "registry":
        return "registry"
    if top == "sharing":
        return "sharing"
    if top == "core":
        return "core"
    if top in LEAF_PACKAGES:
        return top
    if top in METHOD_PACKAGES:
        return f"method:{top}"
    if top == "models":
        return "models" if len(parts) == 2 else f"model:{parts[2]}"
    if top == "deploy":
        return "deploy"
    raise AssertionError(
        f"{dotted}: hf_dynamic.{top} is not classified in tests/test_layering.py; add it to the rule (and to "
        "docs/architecture.md)")


def allowed(source: str, target: str) -> bool:
    if source == "root":
        return True
    if target in ("root", "registry"):
        return False
    if source == "registry":
        return target in ("core", "models", "sharing") or target.startswith(("method:", "model:"))
    if source == "core":
        return target == "core"
    if source in LEAF_PACKAGES:
        return target in ("core", *LEAF_PACKAGES)
    if source.startswith("method:"):
        return target in ("core", source)
    if source.startswith("model:"):
        return target in ("core", "sharing") or target.startswith("method:") or target == source
    if source == "sharing":
        return target == "sharing"
    if source == "models":
        return False
    if source == "deploy":
        return target in ("core", "deploy", "models") or target.startswith(("method:", "model:"))
    raise AssertionError(f"unclassified source layer {source}")


def violations() -> set[tuple[str, str, int]]:
    found = set()
    for path in library_files():
        source = layer_of(module_name(path))
        for line, target_module in imports_of(path):
            if target_module == DYNAMIC:
                if rel(path) not in DYNAMIC_IMPORTS_ALLOWED:
                    found.add((rel(path), target_module, line))
                continue
            top = target_module.split(".")[0]
            if top in OUTSIDE_LIBRARY:
                found.add((rel(path), target_module, line))
                continue
            target = layer_of(target_module)
            if target is not None and not allowed(source, target):
                found.add((rel(path), target_module, line))
    return found


def test_rule_is_enforced_on_known_shapes():
    """The checker itself: a few arrows of each kind, judged as docs/architecture.md states them."""
    assert allowed("core", "core") and not allowed("core", "method:pad") and not allowed("core", "data")
    assert allowed("data", "core") and allowed("assets", "data") and not allowed("data", "method:pad")
    assert allowed("method:pad", "core") and allowed("method:pad", "method:pad")
    assert not allowed("method:boost", "method:pad") and not allowed("method:dms", "model:dms_llama")
    assert allowed("model:partial_moe_bert", "method:pad") and allowed("model:x", "core")
    assert not allowed("model:boosted_early_exit", "model:partial_moe_bert")
    assert not allowed("model:x", "data") and not allowed("model:x", "assets")
    for source in ("core", "data", "method:pad", "model:x", "registry"):
        assert not allowed(source, "root") and not allowed(source, "registry")
    assert allowed("registry", "model:x") and allowed("registry", "method:pad") and allowed("root", "registry")
    assert layer_of("hf_dynamic.models.dms_llama.modeling_dms_llama") == "model:dms_llama"
    assert layer_of("transformers.models.llama") is None
    assert allowed("model:x", "sharing") and not allowed("sharing", "core") and not allowed("method:pad", "sharing")
    assert allowed("sharing", "sharing") and not allowed("sharing", "model:x") and allowed("registry", "sharing")


def test_imports_follow_the_layering():
    found = violations()
    pairs = {(f, m) for f, m, _ in found}
    new = sorted((f, m, line) for f, m, line in found if (f, m) not in KNOWN_VIOLATIONS)
    assert not new, "imports against docs/architecture.md's layering:\n" + "\n".join(
        f"  {f}:{line} imports {m}" for f, m, line in new)
    stale = sorted(KNOWN_VIOLATIONS - pairs)
    assert not stale, ("KNOWN_VIOLATIONS entries that no longer occur (remove them from tests/test_layering.py): "
                       f"{stale}")


def test_computed_and_lazy_imports_are_seen(tmp_path, monkeypatch):
    """``importlib.import_module(name)`` with a computed name is refused outside core/lazy.py (the checker cannot
    tell where it leads), and the module names of a ``_LAZY`` table count as imports of the module holding it."""
    sample = tmp_path / "sample.py"
    sample.write_text("import importlib\n_LAZY = {'f': 'hf_dynamic.models.x.y'}\n\n"
                      "def load(name):\n    return importlib.import_module(f'hf_dynamic.{name}')\n")
    monkeypatch.setattr(sys.modules[__name__], "module_name", lambda path: "hf_dynamic.core.sample")
    assert imports_of(sample) == [(1, "importlib"), (2, "hf_dynamic.models.x.y"), (5, DYNAMIC)]
    root_lazy = [m for _, m in imports_of(PACKAGE_DIR / "__init__.py") if m == "hf_dynamic.pemn.config"]
    assert root_lazy, "the root's _LAZY table was not read"


def test_function_level_imports_are_seen():
    """A lazy import inside a function counts like a top-level one (the checker walks the whole tree)."""
    src = PACKAGE_DIR / "dms" / "pruner.py"
    lazy = [m for line, m in imports_of(src) if m.startswith("hf_dynamic.dms.export")]
    assert lazy, "pruner.export's function-level `from .export import ...` was not found"


# ------------------------------------------------------------------------------------------------------- prose
INTERNAL_DOC = re.compile(r"(METHODS|ASSETS|ARCHITECTURE)\.md|\.\./shared(?!/data)|shared/(docs|seeds)")
ISSUE_IN_PROSE = re.compile(r"\bissues?\s*(#\s*)?\d+", re.IGNORECASE)
HASH_NUMBER = re.compile(r"#\d+")


def prose_of(path: Path) -> list[tuple[str, int, str]]:
    """``(kind, line, text)`` for every docstring and comment of ``path``."""
    text = path.read_text(encoding="utf-8")
    out = []
    tree = ast.parse(text)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                out.append(("docstring", body[0].lineno, body[0].value.value))
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type == tokenize.COMMENT:
            out.append(("comment", token.start[0], token.string))
    return out


def prose_findings() -> set[tuple[str, str, int, str]]:
    found = set()
    for path in library_files():
        for kind, line, text in prose_of(path):
            if INTERNAL_DOC.search(text):
                found.add((rel(path), "internal-doc", line, INTERNAL_DOC.search(text).group(0)))
            match = ISSUE_IN_PROSE.search(text) or (HASH_NUMBER.search(text[1:]) if kind == "comment" else None)
            if match:
                found.add((rel(path), "issue-number", line, match.group(0)))
    return found


def test_prose_checker_finds_what_it_should(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text('"""See METHODS.md §1 and ../shared/docs."""\n\n'
                      'def f():\n    """Fixed in issue 6."""\n    x = "#1 String"  # see #12\n    return x\n'
                      '# data lives in ../shared/data/glue\n')
    found = prose_of(sample)
    assert any(INTERNAL_DOC.search(t) for k, _, t in found if k == "docstring")
    assert any(ISSUE_IN_PROSE.search(t) for k, _, t in found if k == "docstring")
    comments = [t for k, _, t in found if k == "comment"]
    assert HASH_NUMBER.search(comments[0][1:]) and not INTERNAL_DOC.search(comments[1])
    assert not any("#1 String" in t for _, _, t in found)  # string literals are code, not prose


def test_docstrings_and_comments_cite_docs_not_internal_notes_or_issues():
    """Users see docs/, not the project's internal write-ups or its issue tracker numbers."""
    found = prose_findings()
    pairs = {(f, rule) for f, rule, _, _ in found}
    new = sorted(x for x in found if (x[0], x[1]) not in KNOWN_PROSE)
    assert not new, "docstrings/comments to point at docs/ instead:\n" + "\n".join(
        f"  {f}:{line} [{rule}] {snippet!r}" for f, rule, line, snippet in new)
    stale = sorted(KNOWN_PROSE - pairs)
    assert not stale, f"KNOWN_PROSE entries that no longer occur (remove them from tests/test_layering.py): {stale}"


@pytest.mark.parametrize("page", ["README.md", "architecture.md", "core.md", "data.md", "pad.md", "boost.md", "dms.md"])
def test_docs_pages_exist_and_stand_alone(page):
    """The pages the docstrings point to exist and do not send users to files they do not have."""
    path = PACKAGE_DIR.parent / "docs" / page
    assert path.is_file(), f"docs/{page} is missing"
    text = path.read_text(encoding="utf-8")
    assert not INTERNAL_DOC.search(text), f"docs/{page} cites {INTERNAL_DOC.search(text).group(0)!r}"


REQUIRED_SECTIONS = {
    "pad.md": ["## Partially dynamic MoE", "## Iterative Mode Partition", "## Layouts", "## Expert kernel"],
    "boost.md": ["## Boosted exits", "## Exit rule and criteria", "## Calibration"],
    "dms.md": ["## Differentiable top-k", "## Resource loss", "## Search and export", "## Architecture adapters"],
}


@pytest.mark.parametrize("page", sorted(REQUIRED_SECTIONS))
def test_method_pages_have_their_sections(page):
    lines = (PACKAGE_DIR.parent / "docs" / page).read_text(encoding="utf-8").splitlines()
    missing = [s for s in REQUIRED_SECTIONS[page] if s not in lines]
    assert not missing, f"docs/{page} lacks the sections {missing}"


def test_docs_pages_cited_in_the_source_exist():
    cited = set()
    for path in library_files():
        for _, _, text in prose_of(path):
            cited.update(re.findall(r"docs/([A-Za-z_]+\.md)", text))
    missing = sorted(page for page in cited if not (PACKAGE_DIR.parent / "docs" / page).is_file())
    assert not missing, f"docstrings cite docs pages that do not exist: {missing}"
