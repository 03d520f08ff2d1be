"""Configuration of ``pruned_bert``: a BERT encoder whose layers have their own widths (attention heads, FFN
channels), the export format of per-layer or head-dropping BERT widths (``docs/slim.md``, "## Export").

transformers' ``BertConfig`` has one width for every layer, and stock BERT derives its head size from
``hidden_size / num_attention_heads``, so it cannot describe a layer with fewer heads. This config keeps
``num_attention_heads`` as the head count of the model the widths were cut from (it fixes the head size,
recorded explicitly as ``head_dim``) and adds the kept heads and FFN channels of each layer. Everything else
(hidden size, vocabulary, embeddings, norms, pooler, task heads) is BERT's.
"""

from huggingface_hub.dataclasses import strict
from transformers import BertConfig

__all__ = ["PrunedBertConfig"]

_PER_LAYER = ("layer_num_attention_heads", "layer_intermediate_sizes")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@strict
class PrunedBertConfig(BertConfig):
    r"""BERT configuration with per-layer widths.

    Args (beyond [`BertConfig`]'s):
        head_dim (`int`, *optional*): the size of every attention head, `hidden_size // num_attention_heads` (the
            default and the only accepted value: `num_attention_heads` is the head count of the full model).
        layer_num_attention_heads (`list[int]`, *optional*): the attention heads of each layer (each `>= 1`), so
            layer `i`'s query / key / value projections have `layer_num_attention_heads[i] * head_dim` outputs.
            Defaults to `num_attention_heads` for every layer.
        layer_intermediate_sizes (`list[int]`, *optional*): the FFN channels of each layer (each `>= 1`). Defaults
            to `intermediate_size` for every layer.

    Both lists have `num_hidden_layers` entries; a wrong length or an entry below 1 is a `ValueError` naming the
    field and the value (inside transformers' strict-config error, as its own field checks are).
    """

    model_type = "pruned_bert"

    head_dim: int | None = None
    layer_num_attention_heads: list[int] | None = None
    layer_intermediate_sizes: list[int] | None = None

    def __post_init__(self, **kwargs):
        n = self.num_hidden_layers
        if self.head_dim is None and _is_int(self.hidden_size) and _is_int(self.num_attention_heads) \
                and self.num_attention_heads > 0:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.layer_num_attention_heads is None and _is_int(n) and n >= 0:
            self.layer_num_attention_heads = [self.num_attention_heads] * n
        if self.layer_intermediate_sizes is None and _is_int(n) and n >= 0:
            self.layer_intermediate_sizes = [self.intermediate_size] * n
        super().__post_init__(**kwargs)

    def validate_pruned_widths(self):
        """``head_dim == hidden_size // num_attention_heads``; each per-layer list has ``num_hidden_layers``
        entries, each ``>= 1``."""
        if not (_is_int(self.num_attention_heads) and self.num_attention_heads >= 1):
            raise ValueError(f"num_attention_heads must be an int >= 1, got {self.num_attention_heads!r}")
        expected = self.hidden_size // self.num_attention_heads
        if self.head_dim != expected:
            raise ValueError(
                f"head_dim must be hidden_size // num_attention_heads = {self.hidden_size} // "
                f"{self.num_attention_heads} = {expected} (num_attention_heads is the full model's head count), "
                f"got head_dim={self.head_dim!r}"
            )
        n = self.num_hidden_layers
        for name in _PER_LAYER:
            values = getattr(self, name)
            if not isinstance(values, list) or len(values) != n:
                raise ValueError(f"{name} must be a list of num_hidden_layers={n} entries, got {values!r}")
            if any(not _is_int(v) or v < 1 for v in values):
                raise ValueError(f"{name} must hold ints >= 1 (one per layer), got {values!r}")
