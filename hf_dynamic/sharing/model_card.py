"""The model card (``README.md``) of an hf_dynamic checkpoint (docs/architecture.md, "## Sharing").

:func:`build_model_card` builds a ``huggingface_hub.ModelCard`` from a ``ModelCardData`` (the front matter:
``library_name``, ``tags``, ``pipeline_tag``) and :data:`CARD_TEMPLATE` (a Jinja template rendered by
``ModelCard.from_template``): the method (the model type's ``MODEL_CARD``), a summary of the config, the metrics of
an ``eval_results.json`` in the folder, and how to load the checkpoint with and without hf_dynamic;
:func:`model_card` is its text. :func:`write_model_card` writes it unless the folder already has a card.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

from .model_types import package_for_config
from .remote_code import PIP_NAME

CARD_NAME = "README.md"
RESULTS_NAME = "eval_results.json"
# What transformers' template card (a repository pushed without a card) says; our card replaces that one only.
TEMPLATE_CARD_MARK = "This is the model card of a 🤗 transformers model that has been pushed on the Hub"

CARD_TEMPLATE = """---
{{ card_data }}
---

# {{ title }}

{{ method }}. Made with [hf_dynamic](https://pypi.org/project/{{ pip_name }}/) (method: `{{ docs }}` there).

| config | value |
|---|---|
{% for key, value in summary %}| {{ key }} | {{ value }} |
{% endfor %}
{%- if details %}
{{ details }}
{% endif %}
{%- if results %}
## Results (`{{ results_name }}`)

| split | metrics |
|---|---|
{% for split, shown in results %}| {{ split }} | {{ shown }} |
{% endfor %}
{%- endif %}
## Use

With hf_dynamic installed (`pip install {{ pip_name }}`), its registered classes load the checkpoint:

```python
import hf_dynamic  # registers hf_dynamic's model types
from transformers import {{ auto_name }}

model = {{ auto_name }}.from_pretrained("path/or/repo-id")
```

Without hf_dynamic, transformers runs the code saved beside the weights (`configuration_*.py`, `modeling_*.py`,
`hfd_*.py`, generated from hf_dynamic's source):

```python
from transformers import {{ auto_name }}

model = {{ auto_name }}.from_pretrained("path/or/repo-id", trust_remote_code=True)
```

Without either, transformers asks for `trust_remote_code=True` (a prompt, or `ValueError: The repository ... contains
custom code which must be executed ...`).
{%- if stock_loading %} {{ stock_loading }}
{%- else %} Do not load this checkpoint into a stock transformers class (such as
`BertForSequenceClassification` or `LlamaForCausalLM`): the weights that make it dynamic do not fit that class, which
initialises the missing ones at random (its load report lists them as MISSING) and computes something else.
{%- endif %}
"""


def _summary(config, fields) -> list[tuple[str, str]]:
    """``(row name, value)`` of the card's config table: the backbone, the ``fields`` and named labels."""
    rows = [(f"`{key}`", f"`{getattr(config, key, None)}`") for key in fields]
    backbone = getattr(config, "backbone", None)
    if backbone is not None and hasattr(backbone, "model_type"):
        rows.insert(0, ("backbone", f"`{backbone.model_type}`, {backbone.num_hidden_layers} layers, hidden size "
                                    f"{backbone.hidden_size}"))
    labels = getattr(config, "id2label", None)
    if labels and any(not str(name).startswith("LABEL_") for name in labels.values()):
        rows.append(("labels", f"`{list(labels.values())}`"))
    return rows


def _results(folder) -> list[tuple[str, str]]:
    """``(split, "metric value, ...")`` from ``folder/eval_results.json`` (the float metrics, without timings);
    ``[]`` without a readable file. Its layout is ``{"metrics": {split: {name: value}}}`` or ``{name: value}``."""
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
            rows.append((split, ", ".join(shown)))
    return rows


def _auto_name_of(config, package) -> str:
    """The Auto class the card loads with: the one the package registers for ``config.architectures[0]``."""
    architectures = getattr(config, "architectures", None) or []
    for auto_name, model_class in getattr(package, "AUTO_CLASSES", {}).items():
        if architectures and model_class.__name__ == architectures[0]:
            return auto_name
    return "AutoModel"


def build_model_card(config, folder=None, *, title: str | None = None, details: str | None = None,
                     tags=(), pipeline_tag: str | None = None) -> ModelCard:
    """The ``ModelCard`` of an hf_dynamic checkpoint: the method, a config summary, how to load it with and without
    hf_dynamic, and the metrics of ``folder/eval_results.json`` when there is one. ``details`` (Markdown) is added
    after the summary (how the model was trained, for example); ``tags`` follow ``hf_dynamic`` and the model type.
    The package's ``MODEL_CARD`` gives ``method``, ``docs``, the summary's ``fields`` and, for a type whose weights a
    stock class loads as they are, ``stock_loading`` (said instead of the warning against stock classes)."""
    package = package_for_config(type(config))
    info = getattr(package, "MODEL_CARD", None) or {}
    data = ModelCardData(library_name="transformers", pipeline_tag=pipeline_tag,
                         tags=list(dict.fromkeys(["hf_dynamic", config.model_type, *tags])))
    return ModelCard.from_template(
        data, template_str=CARD_TEMPLATE, title=title or config.model_type, pip_name=PIP_NAME,
        method=info.get("method", f"hf_dynamic model type `{config.model_type}`"),
        docs=info.get("docs", "docs/README.md"), summary=_summary(config, info.get("fields", ())),
        details=details.strip() if details else None, results=_results(folder), results_name=RESULTS_NAME,
        auto_name=_auto_name_of(config, package), stock_loading=info.get("stock_loading"))


def model_card(config, folder=None, **card_kwargs) -> str:
    """The ``README.md`` text of :func:`build_model_card` (same arguments)."""
    return str(build_model_card(config, folder, **card_kwargs))


def write_model_card(folder, config, *, overwrite: bool = False, **card_kwargs) -> bool:
    """Write :func:`build_model_card` to ``folder/README.md`` unless one exists (``overwrite=False``), atomically (a
    temporary file renamed over it); returns whether it wrote."""
    path = Path(folder, CARD_NAME)
    if path.exists() and not overwrite:
        return False
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".README.", suffix=".tmp")
    os.close(handle)
    try:
        build_model_card(config, folder, **card_kwargs).save(temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return True


def card_tags(path) -> tuple:
    """The tags of an existing card's front matter (kept when our card replaces transformers' template)."""
    try:
        return tuple(ModelCard.load(path).data.tags or ())
    except Exception:  # noqa: BLE001 (a card without readable metadata has no tags to keep)
        return ()
