"""Configuration of ``slimmable_bert``: BERT that runs at any width (``docs/slim.md``, "## Registered model types")."""

from huggingface_hub.dataclasses import strict
from transformers import BertConfig

from ...slim.registered import check_slim_width, layer_keys_to_int

__all__ = ["SlimmableBertConfig"]


@strict
class SlimmableBertConfig(BertConfig):
    r"""BERT configuration plus the width the model runs at.

    Args (beyond [`BertConfig`]'s):
        slim_width (`float` or `dict`, *optional*, defaults to 1.0): the width the model is set to when it is built
            or loaded: a multiplier `w` in (0, 1] (every layer keeps `round_half_up(w · n)` of its `n` attention
            heads and FFN channels), or a per-layer dict `{layer: w}` / `{layer: {"attention": a, "mlp": m}}`
            (unlisted layers at full width), as `hf_dynamic.slim.set_width` takes. `config.json` stores the layer
            indices as strings; they are read back as ints. `set_width(model, ...)` changes the width at run time.
    """

    model_type = "slimmable_bert"

    slim_width: float | int | dict = 1.0

    def __post_init__(self, **kwargs):
        self.slim_width = layer_keys_to_int(self.slim_width)
        super().__post_init__(**kwargs)

    def validate_slim_width(self):
        """Every width must keep at least one head and one FFN channel of every layer (checked once the sizes are)."""
        check_slim_width(self.slim_width, self.num_hidden_layers, self.num_attention_heads, self.intermediate_size)
