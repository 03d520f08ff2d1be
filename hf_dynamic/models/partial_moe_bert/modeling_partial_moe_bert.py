"""PartialMoEBert: BERT with PAD-Net partially dynamic mixture-of-experts FFNs (He et al., arXiv 2211.05528;
``docs/pad.md``, "## Partially dynamic MoE").

The layer, its output, the encoder and the base model subclass their transformers BERT counterparts and call
their ``__init__`` before replacing what differs, so a transformers upgrade that changes BERT's structure breaks
here, loudly; the heads follow transformers' pattern (BERT's head layout, transformers' task losses). Everything but the FFN is
transformers' BERT (embeddings, attention, pooler, heads' layout and key names). In the
MoE layers (``config.moe_layers``), ``intermediate.dense`` + ``output.dense`` become a
:class:`~hf_dynamic.pad.layers.PartialDynamicFFN` named ``mlp`` (router + static/dynamic experts);
``output.LayerNorm`` and the residual stay. The Switch load-balancing loss over the MoE layers is always returned
as ``aux_loss`` and added (× ``router_aux_loss_coef``) to the loss when labels are given; router logits are
returned with ``output_router_logits=True``.

``from_dense`` upcycles a dense BERT checkpoint (every expert and the static weight copy its FFN, router new), so
the model computes exactly what the dense model computes until IMP (:mod:`hf_dynamic.pad.imp`) and training
separate them.
"""

import os
from dataclasses import dataclass
from typing import Unpack

import torch
from torch import nn
from transformers import initialization as init
from transformers.modeling_outputs import (
    BaseModelOutputWithPoolingAndCrossAttentions,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)
from transformers.core_model_loading import ConversionOps, WeightConverter
from transformers.modeling_utils import PreTrainedModel
from transformers.models.bert.configuration_bert import BertConfig
from transformers.models.bert.modeling_bert import (
    BertEncoder,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertLayer,
    BertModel,
    BertPreTrainedModel,
    BertSelfAttention,
)
from transformers.models.bert.modeling_bert import BertOutput
from transformers.utils import TransformersKwargs, logging
from transformers.utils.generic import can_return_tuple
from transformers.utils.output_capturing import OutputRecorder

from ...core.checkpoints import checkpoint_tensor_shapes
from ...core.routing import TopKRouter, load_balancing_loss
from ...core.zero import gathered
from ...core.validation import check_config_overrides
from ...pad.experts import EXPERTS_IMPLEMENTATION, register_experts_implementation
from ...pad.checks import CheckedCheckpointMixin, check_layer_against_config
from ...pad.layers import PARTS, PartialDynamicFFN
from ...pad.partial import is_legacy_phi, upgrade_phi
from ...pad.upcycling import drop_upcycle_
from ...sharing import HubSharingMixin
from .configuration_partial_moe_bert import PartialMoEBertConfig

logger = logging.get_logger(__name__)


# ------------------------------------------------------------------------------------------------------- outputs
@dataclass
class PartialMoEBertModelOutput(BaseModelOutputWithPoolingAndCrossAttentions):
    """BERT's base output plus ``aux_loss`` (Switch load-balancing loss) and ``router_logits`` (on request)."""

    aux_loss: torch.Tensor | None = None
    router_logits: tuple[torch.Tensor, ...] | None = None


@dataclass
class PartialMoEBertSequenceClassifierOutput(SequenceClassifierOutput):
    aux_loss: torch.Tensor | None = None
    router_logits: tuple[torch.Tensor, ...] | None = None


@dataclass
class PartialMoEBertTokenClassifierOutput(TokenClassifierOutput):
    aux_loss: torch.Tensor | None = None
    router_logits: tuple[torch.Tensor, ...] | None = None


@dataclass
class PartialMoEBertQuestionAnsweringOutput(QuestionAnsweringModelOutput):
    aux_loss: torch.Tensor | None = None
    router_logits: tuple[torch.Tensor, ...] | None = None


# ------------------------------------------------------------------------------------------------------- layers
class PartialMoEBertOutput(BertOutput):
    """BERT's ``BertOutput`` without its dense projection (the MoE computes that): dropout, residual, LayerNorm."""

    def __init__(self, config):
        super().__init__(config)
        del self.dense

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(hidden_states) + input_tensor)


class PartialMoEBertLayer(BertLayer):
    """A BERT encoder layer whose FFN is a :class:`PartialDynamicFFN` (``mlp``); attention is BERT's."""

    def __init__(self, config, layer_idx: int):
        if config.is_decoder or config.add_cross_attention:
            raise ValueError("PartialMoEBert is an encoder: is_decoder and add_cross_attention must be False, got "
                             f"is_decoder={config.is_decoder}, add_cross_attention={config.add_cross_attention}")
        super().__init__(config, layer_idx=layer_idx)
        del self.intermediate
        self.mlp = PartialDynamicFFN(config, layer_idx)
        self.output = PartialMoEBertOutput(config)

    def forward(self, hidden_states, attention_mask=None, encoder_hidden_states=None, encoder_attention_mask=None,
                cache=None, **kwargs: Unpack[TransformersKwargs]):
        attention_output, _ = self.attention(hidden_states, attention_mask, cache=cache, **kwargs)
        ffn_output, _ = self.mlp(attention_output)
        return self.output(ffn_output, attention_output)


class PartialMoEBertEncoder(BertEncoder):
    """BERT's encoder with :class:`PartialMoEBertLayer` at the indices of ``config.moe_layers``."""

    def __init__(self, config):
        super().__init__(config)
        for index in config.moe_layer_indices:
            self.layer[index] = PartialMoEBertLayer(config, layer_idx=index)


# ------------------------------------------------------------------------------------------------ checkpoints
class PhiToVector(ConversionOps):
    """Load-time conversion of φ: checkpoints written before φ became a ``[1]`` tensor store it 0-d; reshape it
    (``[1]`` passes through). Saving writes ``[1]`` (the reverse is the identity)."""

    @torch.no_grad()
    def convert(self, input_dict, source_patterns, target_patterns, **kwargs):
        (name, tensors), = input_dict.items()
        tensor = tensors[0] if isinstance(tensors, list) else tensors
        return {target_patterns[0]: upgrade_phi(tensor)}

    @property
    def reverse_op(self) -> ConversionOps:
        return PhiToVector()


def _register_phi_conversion() -> None:
    from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping

    if get_checkpoint_conversion_mapping(PartialMoEBertConfig.model_type) is None:
        register_checkpoint_conversion_mapping(
            PartialMoEBertConfig.model_type, [WeightConverter("mlp.phi", "mlp.phi", [PhiToVector()])])


_register_phi_conversion()


# ------------------------------------------------------------------------------------------------------- models
class PartialMoEBertPreTrainedModel(HubSharingMixin, CheckedCheckpointMixin, BertPreTrainedModel):
    config: PartialMoEBertConfig
    config_class = PartialMoEBertConfig
    base_model_prefix = "bert"
    _no_split_modules = ["BertEmbeddings", "BertLayer", "PartialMoEBertLayer"]
    # transformers' model-definition convention for output capture (every transformers model declares it; no public
    # alternative): tests/models/partial_moe_bert/test_partial_moe_bert_outputs.py fails if it stops being read.
    _can_record_outputs = {
        "hidden_states": BertLayer,
        "attentions": BertSelfAttention,
        "router_logits": OutputRecorder(TopKRouter, index=0),
    }
    # Which dense BERT class each of ours upcycles (`from_dense`); filled below.
    _dense_class: type = BertModel

    @classmethod
    def _can_set_experts_implementation(cls) -> bool:
        # The experts kernels are dispatched by PartialDynamicFFN through transformers' ALL_EXPERTS_FUNCTIONS, but
        # transformers decides whether `set_experts_implementation` may act by searching the model's *module source*
        # for its decorator, which sits on hf_dynamic.pad.experts.ExpertWeights, not here. No public flag exists, so
        # this private hook is overridden; tests/pad/test_pad_seams.py fails loudly if transformers stops calling it.
        return True

    def get_correct_experts_implementation(self, requested_experts: str | None) -> str:
        # Unset means hf_dynamic's kernel, not transformers' `grouped_mm`. It is registered on `import hf_dynamic`,
        # and here for a process that has only this module (remote code, hf_dynamic.sharing).
        register_experts_implementation()
        return super().get_correct_experts_implementation(
            EXPERTS_IMPLEMENTATION if requested_experts is None else requested_experts)

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        std = self.config.initializer_range
        if isinstance(module, TopKRouter):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, PartialDynamicFFN):
            for name, param in module.named_parameters(recurse=False):
                if name == "phi" or name.endswith("bias"):
                    init.zeros_(param)
                else:
                    init.normal_(param, mean=0.0, std=std)
            if module.layout == "masked":
                for name, buffer in module.named_buffers(recurse=False):
                    init.copy_(buffer, torch.ones_like(buffer))

    # --------------------------------------------------------------------------------------------- upcycling
    @classmethod
    def from_dense(cls, dense_model_or_path, **config_overrides):
        """Sparse upcycling (Komatsuzaki et al. 2023; ``docs/pad.md``, "## Partially dynamic MoE") of a dense BERT model or checkpoint folder.

        Every expert and the static weight copy the dense FFN (both matrices and biases), the router is new, every
        other weight (and a matching task head) is copied. ``config_overrides`` set any config field (MoE fields,
        ``num_labels``, ``problem_type``...). Right after upcycling the model computes what the dense one does.
        Raises ValueError for a checkpoint that is not a BERT (``model_type != "bert"``) and TypeError for a keyword
        that is not a config field, before loading anything.
        """
        check_config_overrides(cls.config_class, config_overrides, f"{cls.__name__}.from_dense")
        if isinstance(dense_model_or_path, PreTrainedModel):
            dense = dense_model_or_path
            cls._check_dense_config(dense.config, type(dense).__name__)
            config = cls._config_from_dense(dense.config, config_overrides)
        elif isinstance(dense_model_or_path, (str, os.PathLike)):
            from transformers import AutoConfig

            dense_config = AutoConfig.from_pretrained(dense_model_or_path)
            cls._check_dense_config(dense_config, str(dense_model_or_path))
            config = cls._config_from_dense(dense_config, config_overrides)
            load_config = BertConfig(**{k: v for k, v in config.to_dict().items()
                                        if k in BertConfig.__dataclass_fields__ or k in (
                                            "num_labels", "id2label", "label2id", "problem_type")})
            dense = cls._dense_class.from_pretrained(dense_model_or_path, config=load_config, dtype=torch.float32)
        else:
            raise ValueError(f"dense_model_or_path must be a PreTrainedModel or a folder, got "
                             f"{type(dense_model_or_path).__name__}")
        if config.pad_state != "unpartitioned":
            raise ValueError(f"from_dense builds an unpartitioned model, got pad_state={config.pad_state!r}")
        model = cls(config)
        model.load_dense_(dense)
        return model

    @staticmethod
    def _check_dense_config(config, name: str) -> None:
        model_type = getattr(config, "model_type", None)
        if model_type != "bert":
            raise ValueError(f"from_dense needs a BERT checkpoint (model_type 'bert'); {name} has model_type "
                             f"{model_type!r}")

    @staticmethod
    def _config_from_dense(dense_config, overrides: dict) -> PartialMoEBertConfig:
        values = dense_config.to_dict()
        for key in ("model_type", "architectures", "transformers_version", "auto_map", "_name_or_path"):
            values.pop(key, None)
        values.update(overrides)
        values.setdefault("dtype", "float32")
        return PartialMoEBertConfig(**values)

    @torch.no_grad()
    def load_dense_(self, dense: PreTrainedModel) -> None:
        """Copy a dense BERT's weights into this (unpartitioned) model; FFNs are copied to static + every expert.

        Under DeepSpeed ZeRO-3 either model may be partitioned (a dense model loaded with ``from_pretrained`` while
        ZeRO-3 ``TrainingArguments`` exist is): the parameters are gathered for the copy, and rank 0's copy kept
        (``hf_dynamic.core.zero.gathered``)."""
        with gathered(dense.parameters()), gathered(self.parameters(), modifier_rank=0):
            self._copy_dense(dense)

    def _copy_dense(self, dense: PreTrainedModel) -> None:
        ours = self.base_model
        theirs = dense.base_model if hasattr(dense, "base_model") else dense
        if len(theirs.encoder.layer) != len(ours.encoder.layer):
            raise ValueError(f"the dense model has {len(theirs.encoder.layer)} layers, this config "
                             f"{len(ours.encoder.layer)}")
        state = {k: v for k, v in theirs.state_dict().items()}
        own = ours.state_dict()
        copied = set()
        for key, value in state.items():
            if key in own:
                if own[key].shape != value.shape:
                    raise ValueError(f"dense weight {key} has shape {tuple(value.shape)}, expected "
                                     f"{tuple(own[key].shape)}")
                own[key].copy_(value)
                copied.add(key)
        for index, layer in enumerate(ours.encoder.layer):
            if not isinstance(layer, PartialMoEBertLayer):
                continue
            dense_layer = theirs.encoder.layer[index]
            ffn = {"up": dense_layer.intermediate.dense.weight, "up_bias": dense_layer.intermediate.dense.bias,
                   "down": dense_layer.output.dense.weight, "down_bias": dense_layer.output.dense.bias}
            for part, static_name, expert_name in PARTS:
                if hasattr(layer.mlp, static_name):
                    getattr(layer.mlp, static_name).copy_(ffn[part])
                if hasattr(layer.mlp, expert_name):
                    experts = getattr(layer.mlp, expert_name)
                    experts.copy_(ffn[part].unsqueeze(0).expand_as(experts))
            prefix = f"encoder.layer.{index}."
            copied |= {prefix + n for n in ("intermediate.dense.weight", "intermediate.dense.bias",
                                            "output.dense.weight", "output.dense.bias")}
        missing = [k for k in own if k not in copied and ".mlp." not in k]
        if missing:
            raise ValueError(f"the dense model lacks weights this model needs: {missing[:5]}")
        if dense is not theirs and type(self).__name__.replace("PartialMoEBert", "Bert") == type(dense).__name__:
            prefix = f"{dense.base_model_prefix}."
            head_state = {k: v for k, v in dense.state_dict().items() if not k.startswith(prefix)}
            mine = self.state_dict()
            for key, value in head_state.items():
                if key in mine and mine[key].shape == value.shape:
                    mine[key].copy_(value)

    # --------------------------------------------------------------------------------------------- PAD helpers
    def pad_layers(self) -> list[PartialDynamicFFN]:
        """The model's PAD/MoE FFN layers, in depth order."""
        return [m for m in self.modules() if isinstance(m, PartialDynamicFFN)]

    def drop_upcycle_(self, ratio: float, generator: torch.Generator | None = None) -> int:
        """Drop-Upcycling (``docs/pad.md``, "## Drop-Upcycling"): re-initialise a random ``ratio`` of the ``d_ff``
        neurons in every expert, in place, after :meth:`from_dense` and before IMP finalises the layers
        (:func:`hf_dynamic.pad.upcycling.drop_upcycle_`). Returns the neurons re-initialised per expert."""
        return drop_upcycle_(self.pad_layers(), ratio, generator)

    def clear_cache(self) -> None:
        """Drop every PAD layer's inference cache now (:meth:`PartialDynamicFFN.clear_cache`), e.g. to free its
        memory; never needed for correctness: a cache is rebuilt when any of its layer's tensors changed."""
        for layer in self.pad_layers():
            layer.clear_cache()

    def check_pad_shapes(self) -> None:
        """Raise ValueError when a MoE layer's stored tensors disagree with the shapes its config implies."""
        for layer in self.pad_layers():
            check_layer_against_config(layer, _expected_layer_shapes(self.config, layer.layer_idx), self.config)

    @staticmethod
    def check_checkpoint_shapes(folder, config) -> None:
        """The pre-load check of :class:`~hf_dynamic.pad.checks.CheckedCheckpointMixin` (safetensors headers only)."""
        _check_checkpoint_shapes(folder, config)

    def _encode(self, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, output_router_logits,
                kwargs) -> PartialMoEBertModelOutput:
        """The heads' call of the encoder."""
        kwargs.pop("return_dict", None)
        return self.bert(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                         position_ids=position_ids, inputs_embeds=inputs_embeds,
                         output_router_logits=output_router_logits, return_dict=True, **kwargs)

    def _head_output(self, output_class, outputs, loss, **fields):
        """A head's output: its task ``loss`` plus ``router_aux_loss_coef`` × the aux loss, the encoder's extras."""
        aux_loss = outputs.aux_loss
        if loss is not None and aux_loss is not None:
            loss = loss + self.config.router_aux_loss_coef * aux_loss.to(loss.device)
        return output_class(loss=loss, hidden_states=outputs.hidden_states, attentions=outputs.attentions,
                            aux_loss=aux_loss, router_logits=outputs.router_logits, **fields)


def _check_checkpoint_shapes(folder, config) -> None:
    """Compare the MoE tensors' shapes in a folder's safetensors files with those ``config`` implies."""
    expected_by_layer = {}
    for key, (match, shape) in checkpoint_tensor_shapes(folder, r"(?:^|\.)encoder\.layer\.(\d+)\.mlp\.(\w+)$").items():
        index, name = int(match.group(1)), match.group(2)
        if index not in config.moe_layer_indices:
            raise ValueError(f"checkpoint tensor {key} belongs to layer {index}, which is not in the "
                             f"config's moe_layers={config.moe_layers}")
        if index not in expected_by_layer:
            expected_by_layer[index] = _expected_layer_shapes(config, index)
        expected = expected_by_layer[index].get(name)
        if is_legacy_phi(name, shape, expected):
            continue  # written before φ became [1]; PhiToVector upgrades it on load
        if expected != shape:
            raise ValueError(
                f"checkpoint tensor {key} has shape {shape}, but the config (dynamic_ratio="
                f"{config.dynamic_ratio}, pad_state={config.pad_state!r}, pad_partition[{str(index)!r}]="
                f"{(config.pad_partition or {}).get(str(index))!r}) implies {expected}")


def _expected_layer_shapes(config, layer_idx: int) -> dict[str, tuple[int, ...]]:
    """The shapes a :class:`PartialDynamicFFN` built from ``config`` has (built on the meta device)."""
    with torch.device("meta"):
        layer = PartialDynamicFFN(config, layer_idx)
    return layer.expected_shapes()


class PartialMoEBertModel(PartialMoEBertPreTrainedModel, BertModel):
    """The bare PartialMoEBert encoder (BERT embeddings, PAD-MoE encoder, pooler)."""

    _no_split_modules = ["BertEmbeddings", "BertLayer", "PartialMoEBertLayer"]
    _dense_class = BertModel

    def __init__(self, config: PartialMoEBertConfig, add_pooling_layer: bool = True):
        BertModel.__init__(self, config, add_pooling_layer=add_pooling_layer)
        self.encoder = PartialMoEBertEncoder(config)
        self.post_init()

    def post_init(self):
        """``PreTrainedModel.post_init`` once the model is whole. ``BertModel.__init__`` ends with ``post_init()``
        while ``self.encoder`` is still BERT's dense encoder; run then, it would initialise weights that are thrown
        away, flag the dense layers for a legacy ``gradient_checkpointing=True`` config (and consume the field, so
        the MoE layers never are), and find no MoE layer to register as a DeepSpeed ZeRO-3 leaf. So it waits for the
        call at the end of this class's ``__init__``."""
        if isinstance(getattr(self, "encoder", None), PartialMoEBertEncoder):
            super().post_init()

    @can_return_tuple
    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, output_router_logits: bool | None = None,
                **kwargs: Unpack[TransformersKwargs]) -> PartialMoEBertModelOutput:
        """BERT's forward; also returns ``aux_loss`` and, if ``output_router_logits``, ``router_logits``."""
        if output_router_logits is None:
            output_router_logits = self.config.output_router_logits
        kwargs.pop("return_dict", None)
        outputs = BertModel.forward(self, input_ids=input_ids, attention_mask=attention_mask,
                                    token_type_ids=token_type_ids, position_ids=position_ids,
                                    inputs_embeds=inputs_embeds, output_router_logits=True, return_dict=True,
                                    **kwargs)
        router_logits = tuple(outputs["router_logits"])
        aux_loss = load_balancing_loss(router_logits, self.config.num_experts, self.config.num_experts_per_tok,
                                       attention_mask if attention_mask is not None and attention_mask.dim() == 2
                                       else None)
        return PartialMoEBertModelOutput(
            last_hidden_state=outputs.last_hidden_state,
            pooler_output=outputs.pooler_output,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            aux_loss=aux_loss,
            router_logits=router_logits if output_router_logits else None,
        )


def _classifier_dropout(config) -> float:
    return config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob


class _PartialMoEBertClassifier(PartialMoEBertPreTrainedModel):
    """BERT's classification heads: encoder features (pooled or per token) → dropout → linear, plus the task's
    transformers loss (``self.loss_function``) and the aux loss."""

    add_pooling_layer = True
    output_class: type = SequenceClassifierOutput

    def __init__(self, config: PartialMoEBertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = PartialMoEBertModel(config, add_pooling_layer=self.add_pooling_layer)
        self.dropout = nn.Dropout(_classifier_dropout(config))
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def features(self, outputs: PartialMoEBertModelOutput) -> torch.Tensor:
        raise NotImplementedError

    def task_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @can_return_tuple
    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, labels=None, output_router_logits: bool | None = None,
                **kwargs: Unpack[TransformersKwargs]):
        outputs = self._encode(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                               output_router_logits, kwargs)
        logits = self.classifier(self.dropout(self.features(outputs)))
        loss = None if labels is None else self.task_loss(logits, labels)
        return self._head_output(self.output_class, outputs, loss, logits=logits)


class PartialMoEBertForSequenceClassification(_PartialMoEBertClassifier):
    """PartialMoEBert with BERT's sequence-classification head (pooled output → dropout → linear)."""

    _dense_class = BertForSequenceClassification
    output_class = PartialMoEBertSequenceClassifierOutput

    def features(self, outputs):
        return outputs.pooler_output

    def task_loss(self, logits, labels):
        return self.loss_function(labels=labels, pooled_logits=logits, config=self.config)


class PartialMoEBertForTokenClassification(_PartialMoEBertClassifier):
    """PartialMoEBert with BERT's token-classification head."""

    _dense_class = BertForTokenClassification
    add_pooling_layer = False
    output_class = PartialMoEBertTokenClassifierOutput

    def features(self, outputs):
        return outputs.last_hidden_state

    def task_loss(self, logits, labels):
        return self.loss_function(logits=logits, labels=labels, config=self.config)


class PartialMoEBertForQuestionAnswering(PartialMoEBertPreTrainedModel):
    """PartialMoEBert with BERT's extractive question-answering head (span start/end logits)."""

    _dense_class = BertForQuestionAnswering

    def __init__(self, config: PartialMoEBertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = PartialMoEBertModel(config, add_pooling_layer=False)
        self.qa_outputs = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    @can_return_tuple
    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, start_positions=None, end_positions=None,
                output_router_logits: bool | None = None,
                **kwargs: Unpack[TransformersKwargs]) -> PartialMoEBertQuestionAnsweringOutput:
        outputs = self._encode(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                               output_router_logits, kwargs)
        logits = self.qa_outputs(outputs.last_hidden_state)
        start_logits, end_logits = logits.split(1, dim=-1)
        start_logits, end_logits = start_logits.squeeze(-1).contiguous(), end_logits.squeeze(-1).contiguous()
        loss = None
        if start_positions is not None and end_positions is not None:
            loss = self.loss_function(start_logits, end_logits, start_positions, end_positions)
        return self._head_output(PartialMoEBertQuestionAnsweringOutput, outputs, loss, start_logits=start_logits,
                                 end_logits=end_logits)


__all__ = [
    "PartialMoEBertPreTrainedModel",
    "PartialMoEBertModel",
    "PartialMoEBertForSequenceClassification",
    "PartialMoEBertForTokenClassification",
    "PartialMoEBertForQuestionAnswering",
]
