"""One ONNX graph per exit of a boosted early-exit model, for real early exit in ONNX Runtime (``docs/onnx.md``,
"## Early exit in ONNX Runtime").

Stage ``k`` runs the backbone layers between exit ``k − 1`` and exit ``k`` and exit ``k``'s head:

- stage 0: ``(input_ids, attention_mask[, token_type_ids]) → (layer_output, exit_logits)`` (embeddings first);
- stage ``k > 0``: ``(hidden_states, attention_mask) → (layer_output, exit_logits)``; the last stage returns
  ``exit_logits`` only.

``exit_logits`` is the head's own ``f_k``; the runtime forms the ensemble ``F_k = t·F_{k−1} + f_k`` and applies the
exit rule between stages, so a stage graph only ever sees the samples still in the batch. Each layer is called as the
BERT layout's encoder calls it (``layer(hidden_states, attention_mask=mask)`` with transformers' bidirectional mask for
the backbone's attention implementation), which covers BERT, RoBERTa, XLM-RoBERTa, CamemBERT and PartialMoEBert
backbones; other backbones are refused with a ``ValueError``.
"""

from __future__ import annotations

import inspect
import os

import torch
from torch import nn
from transformers.masking_utils import create_bidirectional_mask

from .onnx import copy_runtime, export_and_check

BERT_LAYOUT_BACKBONES = ("bert", "roberta", "xlm-roberta", "camembert", "partial_moe_bert")


def check_stage_backbone(model) -> None:
    """``ValueError`` unless the model's backbone has the BERT layout (``embeddings``, ``encoder.layer``)."""
    backbone = model.backbone
    model_type = backbone.config.model_type
    layers = getattr(getattr(backbone, "encoder", None), "layer", None)
    if model_type not in BERT_LAYOUT_BACKBONES or not isinstance(layers, nn.ModuleList):
        raise ValueError(
            f"per-exit ONNX graphs support backbones with the BERT layout {BERT_LAYOUT_BACKBONES}; this model's "
            f"backbone is {model_type!r} (export with early_exit_stages=False for the anytime graph only)")


class ExitStage(nn.Module):
    """The backbone layers ``[start, end)`` and exit head ``k`` (and the embeddings when ``start == 0``)."""

    def __init__(self, model, k: int):
        super().__init__()
        exit_layers = model.config.exit_layers
        start, end = (0 if k == 0 else exit_layers[k - 1]), exit_layers[k]
        backbone = model.backbone
        self.config = backbone.config
        self.embeddings = backbone.embeddings if k == 0 else None
        self.embedding_params = set(inspect.signature(backbone.embeddings.forward).parameters)
        self.layers = nn.ModuleList(backbone.encoder.layer[start:end])
        self.head = model.exit_heads[k]
        self.last = k == len(exit_layers) - 1

    def forward(self, first, attention_mask, token_type_ids=None):
        if self.embeddings is not None:
            kwargs = {"input_ids": first}
            if token_type_ids is not None and "token_type_ids" in self.embedding_params:
                kwargs["token_type_ids"] = token_type_ids
            hidden_states = self.embeddings(**kwargs)
        else:
            hidden_states = first
        mask = create_bidirectional_mask(config=self.config, inputs_embeds=hidden_states,
                                         attention_mask=attention_mask)
        for layer in self.layers:
            hidden_states = layer(hidden_states, attention_mask=mask)
            if isinstance(hidden_states, tuple):
                hidden_states = hidden_states[0]
        logits = self.head(hidden_states, attention_mask)
        return (logits,) if self.last else (hidden_states, logits)


def stage_name(k: int) -> str:
    return f"stage_{k}.onnx"


def export_stages(model, folder: str, sample: dict, check: dict, exporter: str, opset: int, atol: float) -> dict:
    """Export and check every stage graph (each on the previous stages' torch outputs), copy the runtime into
    ``folder``; return the manifest's ``early_exit`` entry (the exit settings the runtime reads)."""
    config = model.config
    text_inputs = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in sample]
    names, worst = [], 0.0
    sample, check = dict(sample), dict(check)
    for k in range(config.num_exits):
        stage = ExitStage(model, k)
        input_names = text_inputs if k == 0 else ["hidden_states", "attention_mask"]
        output_names = ["exit_logits"] if stage.last else ["layer_output", "exit_logits"]
        dynamic = {name: {0: "batch", 1: "sequence"} for name in input_names}
        path = os.path.join(folder, stage_name(k))
        worst = max(worst, export_and_check(stage, sample, check, path, input_names, output_names, dynamic, exporter,
                                            opset, atol))
        names.append(stage_name(k))
        if not stage.last:
            with torch.no_grad():
                sample["hidden_states"] = stage(*(sample[n] for n in input_names))[0]
                check["hidden_states"] = stage(*(check[n] for n in input_names))[0]
    copy_runtime(folder)
    settings = {
        "stages": names,
        "exit_layers": list(config.exit_layers),
        "num_backbone_layers": config.num_backbone_layers,
        "criterion": config.exit_criterion,
        "thresholds": None if config.exit_thresholds is None else [float(t) for t in config.exit_thresholds],
        "patience": config.exit_patience,
        "patience_tolerance": float(config.patience_tolerance),
        "regression": bool(config.is_regression),
        "boosting": bool(config.boosting),
        "ensemble_temperature": float(config.ensemble_temperature),
        "num_labels": config.num_labels,
        "inputs": text_inputs,
        "runtime": "ort_early_exit.py",
        "check": {"atol": atol, "max_abs_diff": worst},
    }
    return settings


__all__ = ["ExitStage", "export_stages", "check_stage_backbone", "BERT_LAYOUT_BACKBONES"]
