"""Sharing checkpoints with users who do not have hf_dynamic (``docs/architecture.md``, "## Sharing").

``save_pretrained`` of every hf_dynamic model type (through :class:`HubSharingMixin`) writes, beside the config and
the safetensors:

- **remote code**: ``configuration_<type>.py``, ``modeling_<type>.py`` and the library modules they need, as
  same-folder files whose hf_dynamic imports are rewritten to same-folder relative imports
  (``from ...core.masks import x`` becomes ``from .hfd_core_masks import x``), and ``auto_map`` in ``config.json``.
  A process with only transformers (and torch, safetensors) then loads the folder with
  ``AutoModel*.from_pretrained(folder, trust_remote_code=True)``. Where hf_dynamic is installed its registered
  classes still win (transformers prefers explicitly registered classes over ``auto_map``), with or without
  ``trust_remote_code``.
- **a model card** ``README.md`` (only when the folder has none): the method, a config summary, how to load it with
  and without hf_dynamic, and the metrics of an ``eval_results.json`` in the folder (:func:`model_card`).

The bundle is derived, not listed: :func:`remote_code_files` follows every import of hf_dynamic modules (``ast``,
imports inside functions included) from the model type's configuration and modeling modules, and from those of any
hf_dynamic model type nested in the config (a boosted early-exit model on a PartialMoEBert backbone), which the
generated code registers with the Auto classes unless the environment already has them. It raises
:class:`BundleError` for what remote code cannot carry: an import of the package root or the registry, an
``importlib`` import of hf_dynamic, or a module-level import of a package transformers does not itself depend on (a
function-level one, such as DeepSpeed's, is wrapped in ``try`` so that transformers' remote-code check treats it as
optional).

This module imports nothing of hf_dynamic: it reads the library's source files. In the bundle it is replaced by a
stand-in whose :class:`HubSharingMixin` does nothing, so a model loaded from remote code saves as any remote-code
model does (transformers copies its files).
"""

from __future__ import annotations

import ast
import importlib
import json
import os
import sys
from importlib import metadata
from pathlib import Path

PACKAGE = "hf_dynamic"
PACKAGE_DIR = Path(__file__).resolve().parent
MODULE_PREFIX = "hfd_"
SHARING_MODULE = f"{PACKAGE}.sharing"
CARD_NAME = "README.md"
RESULTS_NAME = "eval_results.json"
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
    :data:`SHARING_MODULE` is included but not followed (the bundle gets its stand-in)."""
    seen, todo = [], list(roots)
    while todo:
        module = todo.pop(0)
        if module in seen:
            continue
        seen.append(module)
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
def _model_package(model_class: type):
    """The model-type package of an hf_dynamic model class (its ``CONFIG_CLASS`` and ``AUTO_CLASSES``)."""
    name = model_class.__module__.rpartition(".")[0]
    package = sys.modules.get(name) or importlib.import_module(name)
    if not hasattr(package, "CONFIG_CLASS") or not hasattr(package, "AUTO_CLASSES"):
        raise BundleError(f"{model_class.__name__} is not in an hf_dynamic model package ({name} exposes no "
                          "CONFIG_CLASS / AUTO_CLASSES)")
    return package


def _package_for_config(config_class: type):
    name = config_class.__module__.rpartition(".")[0]
    package = sys.modules.get(name) or importlib.import_module(name)
    return package if getattr(package, "CONFIG_CLASS", None) is config_class else None


def nested_packages(config) -> list:
    """The model-type packages of the hf_dynamic configs nested in ``config`` (a backbone), depth first."""
    out = []
    for value in vars(config).values():
        if hasattr(value, "to_dict") and hasattr(type(value), "model_type") and value is not config:
            package = None
            if type(value).__module__.startswith(f"{PACKAGE}.models."):
                package = _package_for_config(type(value))
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
    package = _model_package(model_class)
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


# ------------------------------------------------------------------------------------------------ the card
def _card_info(config) -> dict:
    """The ``MODEL_CARD`` of the config's model-type package: ``method`` (a sentence), ``docs`` (the docs page) and
    ``fields`` (the config fields the card's summary shows)."""
    package = _package_for_config(type(config)) if type(config).__module__.startswith(PACKAGE) else None
    return getattr(package, "MODEL_CARD", None) or {}


def _summary(config, fields) -> list[str]:
    rows = [f"| `{key}` | `{getattr(config, key, None)}` |" for key in fields]
    backbone = getattr(config, "backbone", None)
    if backbone is not None and hasattr(backbone, "model_type"):
        rows.insert(0, f"| backbone | `{backbone.model_type}`, {backbone.num_hidden_layers} layers, hidden size "
                       f"{backbone.hidden_size} |")
    labels = getattr(config, "id2label", None)
    if labels and any(not str(name).startswith("LABEL_") for name in labels.values()):
        rows.append(f"| labels | `{list(labels.values())}` |")
    return rows


def _metrics(folder) -> list[str]:
    path = Path(folder, RESULTS_NAME) if folder is not None else None
    if path is None or not path.is_file():
        return []
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    splits = results.get("metrics") if isinstance(results.get("metrics"), dict) else {"eval": results}
    rows = []
    for split, values in splits.items():
        if not isinstance(values, dict):
            continue
        shown = [f"{k} {v:.4f}" for k, v in values.items()
                 if isinstance(v, float) and not k.endswith(("runtime", "per_second"))]
        if shown:
            rows.append(f"| {split} | {', '.join(shown)} |")
    return ["", f"## Results (`{RESULTS_NAME}`)", "", "| split | metrics |", "|---|---|", *rows] if rows else []


def model_card(config, folder=None, *, title: str | None = None, details: str | None = None,
               tags=(), pipeline_tag: str | None = None) -> str:
    """The model card (``README.md``) of an hf_dynamic checkpoint: the method, a config summary, how to load it
    with and without hf_dynamic, and the metrics of ``folder/eval_results.json`` when there is one. ``details``
    (Markdown) is added after the summary (how the model was trained, for example)."""
    model_type = config.model_type
    info = _card_info(config)
    method, doc = info.get("method", f"hf_dynamic model type `{model_type}`"), info.get("docs", "docs/README.md")
    auto_name = _auto_name_of(config)
    path = "path/or/repo-id"
    tag_list = ", ".join(dict.fromkeys(["hf_dynamic", model_type, *tags]))
    front = ["---", "library_name: transformers", f"tags: [{tag_list}]"]
    if pipeline_tag:
        front.append(f"pipeline_tag: {pipeline_tag}")
    lines = [*front, "---", "", f"# {title or model_type}", "",
             f"{method}. Made with [hf_dynamic](https://pypi.org/project/{PIP_NAME}/) (method: `{doc}` there).", "",
             "| config | value |", "|---|---|", *_summary(config, info.get("fields", ()))]
    if details:
        lines += ["", details.strip()]
    lines += _metrics(folder)
    lines += ["", "## Use", "", f"With hf_dynamic installed (`pip install {PIP_NAME}`), its registered classes load "
              "the checkpoint:", "", "```python", "import hf_dynamic  # registers hf_dynamic's model types",
              f"from transformers import {auto_name}", "", f'model = {auto_name}.from_pretrained("{path}")', "```", "",
              "Without hf_dynamic, transformers runs the code saved beside the weights (`configuration_*.py`, "
              "`modeling_*.py`, `hfd_*.py`, generated from hf_dynamic's source):", "", "```python",
              f"from transformers import {auto_name}", "",
              f'model = {auto_name}.from_pretrained("{path}", trust_remote_code=True)', "```", "",
              "Without either, transformers asks for `trust_remote_code=True` (a prompt, or `ValueError: The "
              "repository ... contains custom code which must be executed ...`). Do not load this checkpoint into a stock "
              "transformers class (such as `BertForSequenceClassification` or `LlamaForCausalLM`): the weights that "
              "make it dynamic do not fit that class, which initialises the missing ones at random (its load report "
              "lists them as MISSING) and computes something else.", ""]
    return "\n".join(lines)


def _auto_name_of(config) -> str:
    """The Auto class the model card loads with: the one the package registers for ``config.architectures[0]``."""
    architectures = getattr(config, "architectures", None) or []
    package = _package_for_config(type(config)) if type(config).__module__.startswith(PACKAGE) else None
    for auto_name, model_class in getattr(package, "AUTO_CLASSES", {}).items():
        if architectures and model_class.__name__ == architectures[0]:
            return auto_name
    return "AutoModel"


def write_model_card(folder, config, *, overwrite: bool = False, **card_kwargs) -> bool:
    """Write :func:`model_card` to ``folder/README.md`` unless one exists (``overwrite=False``); returns whether it
    wrote."""
    path = Path(folder, CARD_NAME)
    if path.exists() and not overwrite:
        return False
    path.write_text(model_card(config, folder, **card_kwargs), encoding="utf-8")
    return True


# ------------------------------------------------------------------------------------------------ the mixin
TEMPLATE_CARD_MARK = "This is the model card of a 🤗 transformers model that has been pushed on the Hub"


class HubSharingMixin:
    """Put first in the bases of a model type's ``PreTrainedModel``: ``save_pretrained`` also writes the remote
    code (+ ``auto_map``) and the model card; ``push_to_hub`` uploads them (the card replaces transformers' generic
    template, never a card the Hub repository already has)."""

    def _sharing_auto_map(self) -> dict[str, str]:
        return auto_map(_model_package(type(self)))

    def _write_sharing_files(self, folder, replace_template_card: bool = False) -> None:
        write_remote_code(folder, type(self), self.config)
        card = Path(folder, CARD_NAME)
        overwrite = replace_template_card and card.is_file() and TEMPLATE_CARD_MARK in card.read_text("utf-8")
        tags = _card_tags(card) if overwrite else ()
        write_model_card(folder, self.config, overwrite=overwrite, tags=tags)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """``PreTrainedModel.save_pretrained``, plus the remote code, ``auto_map`` and a model card
        (:mod:`hf_dynamic.sharing`)."""
        previous = getattr(self.config, "auto_map", None)
        self.config.auto_map = {**(previous or {}), **self._sharing_auto_map()}
        try:
            result = super().save_pretrained(save_directory, *args, **kwargs)
        finally:
            self.config.auto_map = previous
        if kwargs.get("is_main_process", True) and os.path.isdir(save_directory):
            self._write_sharing_files(save_directory)
        return result

    def _upload_modified_files(self, working_dir, *args, **kwargs):
        # The upload step of push_to_hub and of save_pretrained(push_to_hub=True): the files must be there (and
        # newer than the timestamps save_pretrained took) before transformers lists what to upload.
        self._write_sharing_files(working_dir, replace_template_card=True)
        return super()._upload_modified_files(working_dir, *args, **kwargs)


def _card_tags(card: Path) -> tuple:
    """The tags of an existing card's front matter (kept when our card replaces transformers' template)."""
    try:
        from huggingface_hub import ModelCard

        return tuple(ModelCard.load(card).data.tags or ())
    except Exception:  # noqa: BLE001 (a card without readable metadata has no tags to keep)
        return ()


__all__ = ["BundleError", "HubSharingMixin", "auto_map", "bundled_name", "bundled_source", "import_closure",
           "model_card", "remote_code_files", "write_model_card", "write_remote_code"]
