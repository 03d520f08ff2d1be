"""Configuration of ``slimmable_bert``: BERT that runs at any width (``docs/slim.md``, "## Registered model types")."""

from huggingface_hub.dataclasses import strict
from transformers import BertConfig

from ...slim.registered import SlimWidthConfigMixin

__all__ = ["SlimmableBertConfig"]


@strict
class SlimmableBertConfig(SlimWidthConfigMixin, BertConfig):
    r"""BERT configuration plus the width the model runs at.

    Args (beyond [`BertConfig`]'s):
        slim_width (`float` or `dict`, *optional*, defaults to 1.0): the width the model is set to when it is built
            or loaded: a multiplier `w` in (0, 1] (every layer keeps `round_half_up(w · n)` of its `n` attention
            heads and FFN channels), or a per-layer dict `{layer: w}` / `{layer: {"attention": a, "mlp": m}}`
            (unlisted layers at full width), as `hf_dynamic.slim.set_width` takes. `config.json` stores the layer
            indices as strings; they are read back as ints. `set_width(model, ...)` changes the width at run time.
            A width that keeps no head or channel of some layer is a `ValueError` naming `slim_width`.
    """

    model_type = "slimmable_bert"

    slim_width: float | int | dict = 1.0
