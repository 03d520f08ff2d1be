"""GGUF export: run a dense or DMS-pruned Llama-family model in llama.cpp (``docs/gguf.md``).

:func:`save_gguf` writes one ``.gguf`` file — hyper-parameters, tokenizer, weights — that llama.cpp (and the
tools built on it) loads without our code:

- ``llama`` / ``mistral`` models (a dense model, or a uniform DMS export) as llama.cpp's ``llama`` architecture;
- ``qwen2`` models as llama.cpp's ``qwen2`` architecture (with its q/k/v biases);
- ``dms_llama`` models (a per-layer DMS export) as llama.cpp's ``deci`` architecture, whose ``head_count``,
  ``head_count_kv`` and ``feed_forward_length`` are per-layer arrays.

Weights are stored as ``f32``, ``f16`` or ``q8_0`` (quantised by ``gguf.quants.quantize``; 1-D tensors stay f32,
as llama.cpp's converter keeps them). Rotary embeddings: transformers rotates pairs (j, j + d/2) of each head
(``rotate_half``), llama.cpp's ``llama`` / ``deci`` architectures rotate pairs (2j, 2j + 1), so the rows of
``q_proj`` / ``k_proj`` (and their biases) are reordered per head, row 2j ← j and row 2j + 1 ← j + d/2
(:func:`interleave_rotary_rows`); the attention scores q·k are unchanged because both vectors are reordered alike.
``qwen2`` uses transformers' pairing in llama.cpp too and is written as is.

Two gaps in llama.cpp's ``deci`` graph are bridged with sub-blocks whose weights are all zero, which add exactly
0 to the residual stream:

- layer 0 must have attention heads (llama.cpp reads the head size from layer 0's head count): an attention-free
  layer 0 is written with one head whose projections are zero;
- a layer with attention but no MLP loses its attention output in llama.cpp (its graph skips the layer's residual
  update when ``feed_forward_length`` is 0), as does the last layer: such a layer is written with a one-channel
  MLP whose projections are zero. A layer with neither sub-block (other than layer 0 and the last) is written
  with 0 heads and 0 channels, which llama.cpp runs as the identity.

Anything the format or llama.cpp cannot express — another architecture, an activation other than SiLU, a
sliding window, a RoPE scaling other than linear / llama3, a parameter with no GGUF name (a norm bias, ...), a
tokenizer other than byte-level BPE — is a ``ValueError`` naming it, raised before the file is created. The file
is written to a temporary name in the target folder and renamed into place (``os.replace``), so a reader never
sees half a file.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import torch
from transformers.utils import logging

from ..core.validation import check_choice
from .gguf_vocab import GGUFVocab, gguf_vocab

logger = logging.get_logger(__name__)

__all__ = ["GGUF_DTYPES", "GGUF_ARCHITECTURES", "save_gguf", "interleave_rotary_rows"]

GGUF_DTYPES = ("f32", "f16", "q8_0")
# transformers model_type -> llama.cpp architecture
GGUF_ARCHITECTURES = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "dms_llama": "deci"}
_ARCH_ENUM = {"llama": gguf.MODEL_ARCH.LLAMA, "qwen2": gguf.MODEL_ARCH.QWEN2, "deci": gguf.MODEL_ARCH.DECI}
_FILE_TYPES = {
    "f32": gguf.LlamaFileType.ALL_F32,
    "f16": gguf.LlamaFileType.MOSTLY_F16,
    "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
}
# Biases llama.cpp loads, per architecture (GGUF tensor kinds, as in "blk.N.<kind>.bias"); any other bias (of a
# norm, say) has a GGUF name but llama.cpp would reject the file, so save_gguf refuses it.
_BIASES = {
    "llama": {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"},
    "deci": {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"},
    "qwen2": {"attn_q", "attn_k", "attn_v"},
}
# Architectures whose llama.cpp RoPE pairs (2j, 2j + 1): q/k rows are interleaved on export.
_INTERLEAVED_ROPE = ("llama", "deci")
_F16_MAX = float(np.finfo(np.float16).max)


# ------------------------------------------------------------------------------------------------ layout
@dataclass(frozen=True)
class _LayerPlan:
    """Widths one layer is written with, and which of its sub-blocks are zero placeholders."""

    heads: int
    kv_heads: int
    ff: int
    zero_attention: bool = False
    zero_mlp: bool = False


def _layer_plans(config, arch: str) -> list[_LayerPlan]:
    n = config.num_hidden_layers
    if arch != "deci":
        return [_LayerPlan(config.num_attention_heads, config.num_key_value_heads, config.intermediate_size)] * n
    plans = []
    for i, (heads, kv, ff) in enumerate(zip(config.layer_num_attention_heads, config.layer_num_key_value_heads,
                                            config.layer_intermediate_sizes)):
        zero_attention = heads == 0 and i == 0
        if zero_attention:
            heads = kv = 1
        zero_mlp = ff == 0 and (heads > 0 or i == n - 1)
        plans.append(_LayerPlan(heads, kv, 1 if zero_mlp else ff, zero_attention, zero_mlp))
    return plans


def interleave_rotary_rows(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Reorder the output rows of ``q_proj`` / ``k_proj`` (or their bias) from transformers' rotary pairing
    (j, j + d/2) to llama.cpp's (2j, 2j + 1), head by head: new row 2j ← old row j, new row 2j + 1 ← old row
    j + d/2, with d the head size. Its inverse is the reordering transformers' GGUF loader applies."""
    rows = weight.shape[0]
    if n_heads <= 0 or rows % n_heads or (rows // n_heads) % 2:
        raise ValueError(f"cannot split {rows} rows into {n_heads} heads of even size")
    head = rows // n_heads
    split = weight.reshape(n_heads, 2, head // 2, *weight.shape[1:])
    return np.ascontiguousarray(split.swapaxes(1, 2)).reshape(weight.shape)


# ------------------------------------------------------------------------------------------------ checks
def _architecture(model) -> str:
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    arch = GGUF_ARCHITECTURES.get(model_type)
    if arch is None:
        raise ValueError(
            f"save_gguf: model_type={model_type!r} ({type(model).__name__}) has no GGUF export; supported: "
            + ", ".join(f"{k} (llama.cpp {v})" for k, v in GGUF_ARCHITECTURES.items())
        )
    if getattr(model, "lm_head", None) is None:
        raise ValueError(f"save_gguf: {type(model).__name__} has no lm_head; export the *ForCausalLM model")
    return arch


def _rope(config) -> tuple[float, str, dict]:
    """(theta, rope_type, parameters) of ``config``; ValueError for what llama.cpp's Llama graph cannot run."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    theta = params.get("rope_theta", getattr(config, "rope_theta", None))
    if theta is None:
        raise ValueError("save_gguf: config has no rope_theta")
    rope_type = params.get("rope_type", "default")
    check_choice("rope_parameters['rope_type'] (the RoPE scalings save_gguf can write)", rope_type,
                 ("default", "linear", "llama3"))
    if params.get("partial_rotary_factor", 1.0) != 1.0:
        raise ValueError(f"save_gguf: partial_rotary_factor={params['partial_rotary_factor']} has no GGUF form here")
    return float(theta), rope_type, params


def _check_config(config, arch: str) -> None:
    act = getattr(config, "hidden_act", None)
    if act != "silu":
        raise ValueError(f"save_gguf: hidden_act={act!r}; llama.cpp's {arch} architecture runs SiLU (\"silu\") MLPs")
    window = getattr(config, "sliding_window", None)
    if config.model_type == "mistral" and window is not None and window < config.max_position_embeddings:
        raise ValueError(
            f"save_gguf: sliding_window={window} < max_position_embeddings={config.max_position_embeddings}; "
            "llama.cpp's llama architecture attends to the whole context (set sliding_window=None to export "
            "anyway)"
        )
    if config.model_type == "qwen2" and getattr(config, "use_sliding_window", False):
        raise ValueError("save_gguf: use_sliding_window=True; llama.cpp's qwen2 architecture has no sliding window")
    head_dim = _head_dim(config)
    if arch == "qwen2" and head_dim * config.num_attention_heads != config.hidden_size:
        raise ValueError(
            f"save_gguf: head_dim={head_dim} x num_attention_heads={config.num_attention_heads} != hidden_size="
            f"{config.hidden_size}; llama.cpp's qwen2 architecture needs them equal"
        )
    _rope(config)


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


# ------------------------------------------------------------------------------------------------ tensors
def _encode(name: str, array: np.ndarray, dtype: str) -> tuple[np.ndarray, gguf.GGMLQuantizationType | None]:
    """The stored form of one tensor: 1-D tensors (norms, biases, RoPE factors) f32; matrices as ``dtype``, except
    a q8_0 matrix whose rows are not a whole number of 32-value blocks, stored f16 (as llama.cpp's converter
    does)."""
    if array.ndim == 1 or dtype == "f32":
        return array.astype(np.float32), None
    if dtype == "q8_0":
        qtype = gguf.GGMLQuantizationType.Q8_0
        block = gguf.GGML_QUANT_SIZES[qtype][0]
        if array.shape[-1] % block == 0:
            return gguf.quants.quantize(array.astype(np.float32), qtype), qtype
        logger.info("save_gguf: %s has rows of %d values (not a multiple of %d): stored f16", name, array.shape[-1],
                    block)
    peak = float(np.abs(array).max()) if array.size else 0.0
    if peak > _F16_MAX:
        raise ValueError(f"save_gguf: {name} has a value of magnitude {peak:g}, beyond float16's range; use "
                         "dtype='f32'")
    return array.astype(np.float16), None


def _llama3_rope_factors(config, params: dict) -> np.ndarray:
    """llama.cpp's ``rope_freqs`` for a ``llama3`` RoPE scaling: per frequency, base inverse frequency divided by
    the scaled one (llama.cpp divides each rotation angle by it), from transformers' own RoPE initialisation."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, torch.device("cpu"))
    dim = _head_dim(config)
    base = 1.0 / (params["rope_theta"] ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    return (base / scaled.float()).numpy().astype(np.float32)


def _check_shape(key: str, name: str, shape: tuple, plans: list[_LayerPlan], head_dim: int, hidden: int) -> None:
    """ValueError when a layer's projection does not have the widths its config declares (the file would carry
    one width and the tensor another: llama.cpp refuses such a file, or worse, misreads it)."""
    parts = name.split(".")
    if parts[0] != "blk":
        return
    p = plans[int(parts[1])]
    rows = {"attn_q": p.heads * head_dim, "attn_k": p.kv_heads * head_dim, "attn_v": p.kv_heads * head_dim,
            "attn_output": hidden, "ffn_gate": p.ff, "ffn_up": p.ff, "ffn_down": hidden}.get(parts[2])
    cols = {"attn_output": p.heads * head_dim, "ffn_down": p.ff}.get(parts[2], hidden)
    expected = (rows,) if parts[-1] == "bias" else (rows, cols)
    if rows is not None and tuple(shape) != expected:
        raise ValueError(f"save_gguf: {key} has shape {tuple(shape)}, but the config's widths for layer {parts[1]} "
                         f"give {expected}: the model's modules disagree with its config")


def _gguf_tensors(model, arch: str, plans: list[_LayerPlan], dtype: str):
    """(gguf name, stored array, quantisation type) for every tensor of the file; ValueError naming a parameter
    that has no GGUF name."""
    config = model.config
    n_layers = config.num_hidden_layers
    names = gguf.get_tensor_name_map(_ARCH_ENUM[arch], n_layers)
    head_dim = _head_dim(config)
    hidden = config.hidden_size
    tied = bool(getattr(config, "tie_word_embeddings", False))
    state = model.state_dict()
    planned: list[tuple[str, np.ndarray]] = []
    for key, tensor in state.items():
        if tied and key == "lm_head.weight":
            continue  # llama.cpp reuses token_embd when the file has no output.weight
        name = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if name is not None and name.endswith(".bias") and name.split(".")[-2] not in _BIASES[arch]:
            name = None
        if name is None:
            raise ValueError(f"save_gguf: parameter {key!r} of {type(model).__name__} has no GGUF tensor name in "
                             f"llama.cpp's {arch} architecture")
        array = tensor.detach().to(torch.float32).cpu().numpy()
        _check_shape(key, name, array.shape, plans, head_dim, hidden)
        if arch in _INTERLEAVED_ROPE and (".attn_q." in name or ".attn_k." in name):
            layer = int(name.split(".")[1])
            heads = plans[layer].heads if ".attn_q." in name else plans[layer].kv_heads
            array = interleave_rotary_rows(array, heads)
        planned.append((name, array))
    for i, plan in enumerate(plans):
        if plan.zero_attention:
            planned += [
                (f"blk.{i}.attn_norm.weight", np.ones(hidden, np.float32)),
                (f"blk.{i}.attn_q.weight", np.zeros((head_dim, hidden), np.float32)),
                (f"blk.{i}.attn_k.weight", np.zeros((head_dim, hidden), np.float32)),
                (f"blk.{i}.attn_v.weight", np.zeros((head_dim, hidden), np.float32)),
                (f"blk.{i}.attn_output.weight", np.zeros((hidden, head_dim), np.float32)),
            ]
        if plan.zero_mlp:
            planned += [
                (f"blk.{i}.ffn_norm.weight", np.ones(hidden, np.float32)),
                (f"blk.{i}.ffn_gate.weight", np.zeros((1, hidden), np.float32)),
                (f"blk.{i}.ffn_up.weight", np.zeros((1, hidden), np.float32)),
                (f"blk.{i}.ffn_down.weight", np.zeros((hidden, 1), np.float32)),
            ]
    _, rope_type, params = _rope(config)
    if rope_type == "llama3":
        planned.append(("rope_freqs.weight", _llama3_rope_factors(config, params)))
    return [(name, *_encode(name, array, dtype)) for name, array in planned]


# ------------------------------------------------------------------------------------------------ metadata
def _write_metadata(writer: gguf.GGUFWriter, model, arch: str, plans: list[_LayerPlan], dtype: str,
                    vocab: GGUFVocab, name: str) -> None:
    config = model.config
    head_dim = _head_dim(config)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_file_type(_FILE_TYPES[dtype])
    if dtype == "q8_0":
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    if arch == "deci":
        writer.add_feed_forward_length([p.ff for p in plans])
        writer.add_head_count([p.heads for p in plans])
        writer.add_head_count_kv([p.kv_heads for p in plans])
    else:
        writer.add_feed_forward_length(plans[0].ff)
        writer.add_head_count(plans[0].heads)
        writer.add_head_count_kv(plans[0].kv_heads)
    if arch == "deci" or head_dim * config.num_attention_heads != config.hidden_size:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    theta, rope_type, params = _rope(config)
    writer.add_rope_freq_base(theta)
    if rope_type == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(params["factor"]))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(config.vocab_size)
    vocab.add_to_gguf(writer)


# ------------------------------------------------------------------------------------------------ public
def save_gguf(model, tokenizer, path: str | os.PathLike, dtype: str = "f16", *,
              tokenizer_pre: str | None = None) -> Path:
    """Write ``model`` and ``tokenizer`` to the GGUF file ``path`` for llama.cpp; returns the path.

    Args:
        model: a ``LlamaForCausalLM`` / ``MistralForCausalLM`` (llama.cpp ``llama``), ``Qwen2ForCausalLM``
            (``qwen2``) or ``DMSLlamaForCausalLM`` (``deci``, per-layer widths), in any float dtype.
        tokenizer: its transformers tokenizer (a fast byte-level BPE tokenizer: GPT-2, SmolLM, Llama 3, Qwen2
            style); tokens, merges, special tokens and chat template are carried over.
        path: the ``.gguf`` file to write (its folder must exist; an existing file is replaced).
        dtype: ``"f32"``, ``"f16"`` or ``"q8_0"`` for the matrices (1-D tensors are always f32).
        tokenizer_pre: llama.cpp's pre-tokenizer name, for a tokenizer whose pre-tokenizer is not recognised.

    Everything is checked and encoded before the file is created; a ``ValueError`` names what cannot be
    expressed. See ``docs/gguf.md``.
    """
    check_choice("dtype", dtype, GGUF_DTYPES)
    path = Path(path)
    if not path.parent.is_dir():
        raise ValueError(f"path: folder {str(path.parent)!r} does not exist")
    arch = _architecture(model)
    config = model.config
    _check_config(config, arch)
    plans = _layer_plans(config, arch)
    vocab = gguf_vocab(tokenizer, config.vocab_size, tokenizer_pre)
    tensors = _gguf_tensors(model, arch, plans, dtype)
    name = Path(str(getattr(config, "_name_or_path", "") or path.stem)).name or path.stem

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        writer = gguf.GGUFWriter(tmp, arch)
        _write_metadata(writer, model, arch, plans, dtype, vocab, name)
        for tensor_name, data, qtype in tensors:
            writer.add_tensor(tensor_name, data, raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    logger.info("save_gguf: wrote %s (llama.cpp %s, %s, %d tensors)", path, arch, dtype, len(tensors))
    return path
