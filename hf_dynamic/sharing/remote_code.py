"""The remote-code bundle of a checkpoint: what lets a process with only transformers load it (docs/architecture.md,
"## Sharing").

:func:`remote_code_files` gives ``configuration_<type>.py``, ``modeling_<type>.py`` and the library modules they
need, as same-folder files whose hf_dynamic imports are rewritten to same-folder relative imports (``from
...core.masks import x`` becomes ``from .hfd_core_masks import x``); :func:`auto_map` gives the ``config.json``
entry that points the Auto classes at them. A process with only transformers (and torch, safetensors) then loads the
folder with ``AutoModel*.from_pretrained(folder, trust_remote_code=True)``. Where hf_dynamic is installed its
registered classes still win (transformers prefers explicitly registered classes over ``auto_map``).

The bundle is derived, not listed: :func:`import_closure` follows every import of hf_dynamic modules (``ast``,
imports inside functions included) from the model type's configuration and modeling modules, and from those of any
hf_dynamic model type nested in the config (a boosted early-exit model on a PartialMoEBert backbone), which the
generated code registers with the Auto classes unless the environment already has them. It raises
:class:`BundleError` for what remote code cannot carry: an import of the package root or the registry, an
``importlib`` import of hf_dynamic, or a module-level import of a package transformers does not itself depend on (a
function-level one, such as DeepSpeed's, is wrapped in ``try`` so that transformers' remote-code check treats it as
optional).

This module imports nothing of hf_dynamic outside :mod:`hf_dynamic.sharing`: it reads the library's source files,
and finds a model type's classes in :mod:`.model_types`, which the registry fills. In the bundle the
``hf_dynamic.sharing`` package is replaced by a stand-in whose :class:`HubSharingMixin` does nothing, so a model
loaded from remote code saves as any remote-code model does (transformers copies its files).
"""

from __future__ import annotations

import ast
import sys
from importlib import metadata
from pathlib import Path

from .model_types import package_for_config, package_for_model

PACKAGE = "hf_dynamic"
PACKAGE_DIR = Path(__file__).resolve().parents[1]
MODULE_PREFIX = "hfd_"
SHARING_MODULE = f"{PACKAGE}.sharing"
# Packages a process that loads remote code has anyway: transformers and what transformers itself depends on.
RUNTIME_PACKAGES = frozenset({"torch", "transformers", "huggingface_hub", "safetensors", "numpy", "packaging",
                              "tokenizers", "regex", "yaml", "tqdm", "filelock"})
PIP_NAME = "hf-dynamic"

STAND_IN = '''"""Stand-in of hf_dynamic.sharing in remote code: saving a model loaded from here is transformers' own
remote-code save (it copies these files and keeps ``auto_map``)."""


class HubSharingMixin:
    pass
'''


class BundleError(ValueError):
    """A module in a model type's import closure that remote code cannot carry."""


# ------------------------------------------------------------------------------------------------- the closure
def _source_path(module: str) -> Path:
    parts = module.split(".")[1:]
    base = PACKAGE_DIR.joinpath(*parts)
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    raise BundleError(f"{module} is not a module of {PACKAGE} (looked for {base}.py and {base}/__init__.py)")


def _is_module(module: str) -> bool:
    try:
        _source_path(module)
    except BundleError:
        return False
    return True


def bundled_name(module: str) -> str:
    """The same-folder module name of an hf_dynamic module: a model type's ``configuration_*`` / ``modeling_*``
    keep their names (transformers' convention for remote code), every other module is ``hfd_`` + its dotted path
    below the package (``hf_dynamic.core.masks`` -> ``hfd_core_masks``)."""
    parts = module.split(".")
    if len(parts) == 4 and parts[1] == "models" and parts[3].startswith(("configuration_", "modeling_")):
        return parts[3]
    return MODULE_PREFIX + "_".join(parts[1:])


def _package_of(module: str) -> str:
    return module if _source_path(module).name == "__init__.py" else module.rpartition(".")[0]


def _targets(node, module: str) -> list[tuple[str, str | None, str | None]]:
    """``(hf_dynamic module, imported name or None, alias)`` for each hf_dynamic name an import node brings in."""
    if isinstance(node, ast.Import):
        return [(alias.name, None, alias.asname) for alias in node.names
                if alias.name.split(".")[0] == PACKAGE]
    if node.level:
        base = _package_of(module).split(".")
        if node.level > 1:
            base = base[: -(node.level - 1)]
        base = ".".join(base + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    if base.split(".")[0] != PACKAGE:
        return []
    out = []
    for alias in node.names:
        candidate = f"{base}.{alias.name}"
        if _is_module(candidate):
            out.append((candidate, None, alias.asname or alias.name))
        else:
            out.append((base, alias.name, alias.asname))
    return out


def _check_target(module: str, target: str, line: int) -> None:
    if target in (PACKAGE, f"{PACKAGE}.registry"):
        raise BundleError(f"{module}:{line} imports {target}, which remote code cannot carry (it registers every "
                          "model type); import the module that defines the name instead")


def _imports(module: str) -> tuple[ast.Module, list[str]]:
    """The parsed source of ``module`` and the hf_dynamic modules it imports (every nesting level)."""
    tree = ast.parse(_source_path(module).read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for target, _, _ in _targets(node, module):
                _check_target(module, target, node.lineno)
                found.append(target)
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str) and node.args[0].value.split(".")[0] == PACKAGE):
            raise BundleError(f"{module}:{node.lineno} imports {node.args[0].value!r} dynamically; remote code "
                              "needs a plain import statement")
    return tree, found


def import_closure(roots) -> list[str]:
    """Every hf_dynamic module the ``roots`` import, directly or not (roots included), in a stable order.
    :data:`SHARING_MODULE` is included but not followed (the bundle gets its stand-in); an import of one of its
    submodules raises :class:`BundleError`."""
    seen, todo = [], list(roots)
    while todo:
        module = todo.pop(0)
        if module in seen:
            continue
        seen.append(module)
        if module.startswith(f"{SHARING_MODULE}."):
            raise BundleError(f"{module} is imported by a model type's code; import its names from "
                              f"{SHARING_MODULE} (the package the bundle replaces by a stand-in)")
        if module != SHARING_MODULE:
            todo += [m for m in _imports(module)[1] if m not in seen]
    return seen


# --------------------------------------------------------------------------------------------- the rewriting
def _is_runtime(top: str) -> bool:
    return top in RUNTIME_PACKAGES or top in sys.stdlib_module_names or top == "__future__"


def _replacement(node, module: str, in_function: bool) -> str | None:
    """The text that replaces an import statement in the bundle (None: keep it)."""
    targets = _targets(node, module)
    if targets:
        modules, names = [], {}
        for target, name, alias in targets:
            if isinstance(node, ast.Import) and alias is None:
                raise BundleError(f"{module}:{node.lineno}: `import {target}` without `as`; remote code needs "
                                  "`from ... import ...` or `import ... as ...`")
            local = bundled_name(target)
            if name is None:
                modules.append(local + ("" if alias == local else f" as {alias}"))
            else:
                names.setdefault(local, []).append(name + (f" as {alias}" if alias else ""))
        statements = [f"from .{local} import {', '.join(imported)}" for local, imported in names.items()]
        return "; ".join(statements + ([f"from . import {', '.join(modules)}"] if modules else []))
    top = (node.names[0].name if isinstance(node, ast.Import) else node.module or "").split(".")[0]
    if getattr(node, "level", 0) or _is_runtime(top):
        return None
    if not in_function:
        raise BundleError(f"{module}:{node.lineno} imports {top!r} at module level; remote code may only import "
                          f"packages transformers depends on ({', '.join(sorted(RUNTIME_PACKAGES))}) there")
    return None if _in_try(node) else "try"


def _in_try(node) -> bool:
    return getattr(node, "_hfd_in_try", False)


def _mark(tree) -> list[tuple[ast.AST, bool]]:
    """Every import statement with whether it sits inside a function; marks those already inside a ``try``."""
    out = []

    def visit(node, in_function, in_try):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            node._hfd_in_try = in_try
            out.append((node, in_function))
        for child in ast.iter_child_nodes(node):
            visit(child, in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)),
                  in_try or isinstance(node, ast.Try))

    visit(tree, False, False)
    return out


def bundled_source(module: str) -> str:
    """``module``'s source as a same-folder remote-code module (hf_dynamic imports rewritten)."""
    source = _source_path(module).read_text(encoding="utf-8")
    lines = source.splitlines(keepends=True)
    tree = ast.parse(source)
    edits = []
    for node, in_function in _mark(tree):
        text = _replacement(node, module, in_function)
        if text is None:
            continue
        indent = lines[node.lineno - 1][: node.col_offset]
        if indent.strip():
            raise BundleError(f"{module}:{node.lineno}: an import sharing its line with other code cannot be "
                              "rewritten; give it its own line")
        if text == "try":  # an optional dependency: transformers' remote-code check skips imports inside `try`
            text = (f"try:  # optional: only this code path needs it\n{indent}    {ast.unparse(node)}\n"
                    f"{indent}except ImportError:\n{indent}    raise")
        edits.append((node, text))
    for node, text in sorted(edits, key=lambda edit: (edit[0].lineno, edit[0].col_offset), reverse=True):
        start, end = node.lineno - 1, node.end_lineno - 1
        lines[start: end + 1] = [lines[start][: node.col_offset] + text + lines[end][node.end_col_offset:]]
    relative = _source_path(module).relative_to(PACKAGE_DIR.parent).as_posix()
    header = (f"# Generated by {PACKAGE} {_version()} from {relative} as remote code (trust_remote_code=True): its\n"
              f"# imports of {PACKAGE} are rewritten to the modules beside this file. Source: pip install {PIP_NAME}\n")
    return header + "".join(lines)


def _version() -> str:
    try:
        return metadata.version(PIP_NAME)
    except Exception:  # noqa: BLE001 (a source checkout without metadata)
        return "(source)"


# ----------------------------------------------------------------------------------------------- the bundle
def model_type_package(model_class: type):
    """The model-type package of an hf_dynamic model class (its ``CONFIG_CLASS`` and ``AUTO_CLASSES``)."""
    package = package_for_model(model_class)
    if package is None:
        raise BundleError(f"{model_class.__module__}.{model_class.__name__} is not a class of a registered "
                          f"{PACKAGE} model type (hf_dynamic.registry.MODEL_PACKAGES)")
    return package


def nested_packages(config) -> list:
    """The model-type packages of the hf_dynamic configs nested in ``config`` (a backbone), depth first."""
    out = []
    for value in vars(config).values():
        if hasattr(value, "to_dict") and hasattr(type(value), "model_type") and value is not config:
            package = package_for_config(type(value))
            out += ([package] if package else []) + nested_packages(value)
    return out


def auto_map(package) -> dict[str, str]:
    """``config.auto_map`` for a model-type package: every Auto class it registers, as ``module.Class``."""
    out = {"AutoConfig": f"{bundled_name(package.CONFIG_CLASS.__module__)}.{package.CONFIG_CLASS.__name__}"}
    for auto_name, model_class in package.AUTO_CLASSES.items():
        out[auto_name] = f"{bundled_name(model_class.__module__)}.{model_class.__name__}"
    return out


def _roots(package) -> list[str]:
    return [package.CONFIG_CLASS.__module__, *dict.fromkeys(c.__module__ for c in package.AUTO_CLASSES.values())]


def _registration(nested: list, kind: str) -> str:
    """Code appended to the top config (``kind="config"``) or modeling module registering ``nested`` types with
    the Auto classes, where the environment lacks them (with hf_dynamic installed its registration stays)."""
    lines = ["\n\n# Model types nested in this checkpoint's config (registered unless the environment has them)."]
    for nested_package in nested:
        config_class = nested_package.CONFIG_CLASS
        local = bundled_name(config_class.__module__)
        if kind == "config":
            lines += ["from transformers import AutoConfig as _AutoConfig  # noqa: E402",
                      "from transformers.models.auto.configuration_auto import CONFIG_MAPPING as _CONFIG_MAPPING",
                      f"from .{local} import {config_class.__name__} as _Nested  # noqa: E402",
                      "if _Nested.model_type not in _CONFIG_MAPPING:",
                      "    _AutoConfig.register(_Nested.model_type, _Nested)"]
            continue
        # transformers imports the config and the modeling file into different packages (one per file hash): the
        # models are registered for the config class the config file registered, which is not this file's copy.
        lines += ["import transformers as _transformers  # noqa: E402",
                  "from transformers.models.auto.configuration_auto import CONFIG_MAPPING as _CONFIG_MAPPING",
                  f"_Nested = _CONFIG_MAPPING[{config_class.model_type!r}]",
                  f"if not _Nested.__module__.startswith({PACKAGE + '.'!r}):"]
        for auto_name, model_class in nested_package.AUTO_CLASSES.items():
            lines.append(f"    from .{bundled_name(model_class.__module__)} import {model_class.__name__}")
            lines.append(f"    _transformers.{auto_name}.register(_Nested, {model_class.__name__}, exist_ok=True)")
    return "\n".join(lines) + "\n"


def remote_code_files(model_class: type, config=None) -> dict[str, str]:
    """``{file name: source}`` of the remote code of ``model_class``'s model type (and of the types nested in
    ``config``). Raises :class:`BundleError` when a module of the closure cannot be carried."""
    package = model_type_package(model_class)
    nested = [p for p in dict.fromkeys(nested_packages(config) if config is not None else [])
              if p is not package]
    roots = _roots(package) + [m for p in nested for m in _roots(p)]
    files = {}
    for module in import_closure(roots):
        files[f"{bundled_name(module)}.py"] = STAND_IN if module == SHARING_MODULE else bundled_source(module)
    if nested:
        config_file = f"{bundled_name(package.CONFIG_CLASS.__module__)}.py"
        files[config_file] += _registration(nested, "config")
        for modeling in dict.fromkeys(c.__module__ for c in package.AUTO_CLASSES.values()):
            files[f"{bundled_name(modeling)}.py"] += _registration(nested, "model")
    return files


def write_remote_code(folder, model_class: type, config=None) -> list[str]:
    """Write :func:`remote_code_files` into ``folder``; returns the file names."""
    files = remote_code_files(model_class, config)
    for name, text in files.items():
        Path(folder, name).write_text(text, encoding="utf-8")
    return sorted(files)
