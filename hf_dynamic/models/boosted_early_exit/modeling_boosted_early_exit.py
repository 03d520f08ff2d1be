"""Boosted early-exit heads on any transformers encoder (BoostNet, docs/boost.md; Yu et al., AAAI 2023,
arXiv 2211.16726), with exits that really skip the remaining layers.

The model wraps a backbone encoder with the BERT module layout — an ``embeddings`` module and one
``nn.ModuleList`` of layers called as ``layer(hidden_states, attention_mask)`` (BERT, RoBERTa, DistilBERT,
hf_dynamic's PartialMoEBert, ...) — and puts an exit head after each layer listed in ``config.exit_layers``.

Three ways to run it:

- training / full mode: every layer and every exit runs; the loss is BoostNet's
  ``Σ_n w_n·L(t·stop_grad(F_{n-1}) + f_n, y)`` (or, with ``boosting=False``, the joint baseline ``Σ_n w_n·L(f_n, y)``);
  ``logits`` is the last exit's prediction.
- anytime mode (``output_all_exits=True``): also returns every exit's prediction as ``all_exit_logits``
  (batch, exits, labels).
- dynamic mode (eval mode with ``exit_thresholds`` set, or ``exit_patience`` for the patience criterion): the
  samples whose exit criterion fires leave the batch; later layers run only on the samples still in it (batch
  compaction), and the output carries each sample's ``logits`` and ``exit_layer``.

The method's pieces (exit heads, boosted ensemble and loss, gradient rescaling, exit criteria and rule, calibration)
live in :mod:`hf_dynamic.boost`; this module wires them onto a backbone.

There is no base-model class (no ``BoostedEarlyExitModel`` registered with ``AutoModel``): the exit heads *are* the
method, so every model of this type has a task head, and without them what remains is the backbone itself, which its
own class already serves: ``model.backbone`` (also ``model.base_model``) is a stock ``BertModel`` /
``RobertaModel`` / ... and ``model.backbone.save_pretrained(path)`` writes a checkpoint that ``AutoModel`` loads.
Conversely a base-model checkpoint is turned into this class with
:meth:`BoostedEarlyExitForSequenceClassification.from_backbone`; ``from_pretrained`` on one raises a ``ValueError``
saying so.
"""

import copy
import inspect
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Unpack

import torch
from torch import nn
from transformers import AutoModel, PreTrainedModel
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_outputs import ModelOutput
from transformers.utils import TransformersKwargs, logging

from ...boost.criteria import ExitRule, exit_confidence, exit_entropy, exit_score
from ...boost.heads import ExitHead
from ...boost.loss import boosted_loss, boosted_prediction, rescale_trunk
from ...core.checkpoints import checkpoint_tensor_shapes
from ...core.routing import TopKRouter, load_balancing_loss
from ...sharing import HubSharingMixin
from .configuration_boosted_early_exit import BoostedEarlyExitConfig

logger = logging.get_logger(__name__)


# ----------------------------------------------------------------------------------------------------------------
# Backbone structure
# ----------------------------------------------------------------------------------------------------------------
def find_layer_stack(encoder: nn.Module, num_layers: int) -> tuple[nn.Module, str]:
    """Find an encoder's embeddings module and its layer list, by structure (not by class name).

    Returns ``(embeddings, dotted_path_of_layer_list)``: the layer list is the shallowest ``nn.ModuleList`` holding
    ``num_layers`` modules (their types may differ, e.g. PartialMoEBert mixes MoE and dense layers). Raises
    ``ValueError`` when the encoder lacks that structure.
    """
    embeddings = getattr(encoder, "embeddings", None)
    if not isinstance(embeddings, nn.Module):
        raise ValueError(
            f"backbone {type(encoder).__name__} has no `embeddings` module; boosted exits need an encoder with the "
            "BERT layout (embeddings + a list of layers)"
        )
    candidates = []
    for name, module in encoder.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == num_layers:
            candidates.append(name)
    if not candidates:
        raise ValueError(
            f"backbone {type(encoder).__name__} has no list of {num_layers} layers (num_hidden_layers); boosted "
            "exits need an encoder with the BERT layout (embeddings + a list of layers)"
        )
    return embeddings, min(candidates, key=lambda n: n.count("."))


def trim_trailing_padding(hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> tuple:
    """Drop the trailing sequence positions that are padding for every sample left in the batch.

    Those positions are masked keys for every query and their own outputs are never read (the exit heads pool the
    first token or the masked mean), so removing them changes no result; it saves compute once the longest
    samples have exited. Keeps at least one position.
    """
    present = attention_mask.any(dim=0)
    length = int(present.nonzero().max()) + 1 if bool(present.any()) else 1
    if length == attention_mask.shape[1]:
        return hidden_states, attention_mask
    return hidden_states[:, :length], attention_mask[:, :length]


def _check_encoder_config(config):
    if getattr(config, "is_decoder", False) or getattr(config, "is_encoder_decoder", False):
        raise ValueError(
            f"backbone {config.model_type!r} is a decoder (is_decoder / is_encoder_decoder); boosted exits need a "
            "bidirectional encoder"
        )
    if getattr(config, "hidden_size", None) is None:
        raise ValueError(f"backbone config {config.model_type!r} has no hidden_size")


# ----------------------------------------------------------------------------------------------------------------
# Modules
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class BoostedEarlyExitOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor`, *optional*):
        Training loss: BoostNet's ``Σ_n w_n·L_n`` over all exits (full mode), or the task loss of the returned
        per-sample logits (dynamic mode).
    logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`):
        The last exit's prediction (full / anytime mode) or each sample's prediction at the exit it took (dynamic).
    all_exit_logits (`torch.FloatTensor` of shape `(batch_size, num_exits, num_labels)`, *optional*):
        Every exit's prediction in order (anytime mode, ``output_all_exits=True``).
    exit_layer (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
        Dynamic mode: the backbone layer (1-based, as in ``exit_layers``) whose exit produced each prediction; it
        is also the number of backbone layers run for that sample.
    hidden_states (`tuple(torch.FloatTensor)`, *optional*, with ``output_hidden_states=True``):
        The embeddings' output and each backbone layer's output, ``(batch_size, sequence_length, hidden_size)``
        each, as the backbone returns them. Dynamic mode: the same entries, zero-padded: a sample's rows are zero
        in the layers after its ``exit_layer`` (never computed for it) and at the trailing padding positions
        dropped once the longest samples had left.
    attentions (`tuple(torch.FloatTensor)`, *optional*, with ``output_attentions=True``):
        Each backbone layer's attention weights, ``(batch_size, num_heads, sequence_length, sequence_length)``, as
        the backbone returns them (an empty tuple, with a warning, under an attention implementation that does not
        return weights, such as sdpa: load with ``attn_implementation="eager"``). Dynamic mode: zero-padded as
        ``hidden_states``.
    exit_losses (`torch.FloatTensor` of shape `(num_exits,)`, *optional*):
        Full mode with labels: each exit's (unweighted, detached) loss L_n.
    aux_loss (`torch.FloatTensor`, *optional*):
        Full mode, MoE backbones (PartialMoEBert): the Switch load-balancing loss of the backbone's routers; it is
        added to ``loss`` with the backbone's ``router_aux_loss_coef``.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    all_exit_logits: torch.FloatTensor | None = None
    exit_layer: torch.LongTensor | None = None
    hidden_states: tuple | None = None
    attentions: tuple | None = None
    exit_losses: torch.FloatTensor | None = None
    aux_loss: torch.FloatTensor | None = None


class BoostedEarlyExitPreTrainedModel(HubSharingMixin, PreTrainedModel):
    config_class = BoostedEarlyExitConfig
    config: BoostedEarlyExitConfig
    base_model_prefix = "backbone"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _no_split_modules = []
    # The loss is a mean over the batch's samples: forward accepts ``num_items_in_batch`` (``**kwargs``) but does not
    # normalise by it, so the Trainer keeps dividing the loss by the gradient-accumulation steps.
    accepts_loss_kwargs = False


class BoostedEarlyExitForSequenceClassification(BoostedEarlyExitPreTrainedModel):
    """Sequence classifier / regressor with boosted early exits (docs/boost.md) on a wrapped encoder."""

    def __init__(self, config: BoostedEarlyExitConfig):
        super().__init__(config)
        backbone_config = config.backbone
        _check_encoder_config(backbone_config)
        backbone = AutoModel.from_config(backbone_config)
        if getattr(backbone, "pooler", None) is not None:
            backbone.pooler = None  # the exit heads pool for themselves; an unused pooler would get no gradient
        self.backbone = backbone
        # the embeddings and the layer list stay registered under `backbone` only (no aliases in the state dict)
        _, self._layer_path = find_layer_stack(backbone, config.num_backbone_layers)
        self._embeddings_params = set(inspect.signature(backbone.embeddings.forward).parameters)
        hidden_size = backbone_config.hidden_size
        dropout = config.classifier_dropout
        if dropout is None:
            dropout = getattr(backbone_config, "hidden_dropout_prob", getattr(backbone_config, "dropout", 0.1))
        self.exit_heads = nn.ModuleList(
            [ExitHead(hidden_size, config.num_labels, dropout, config.exit_pooling) for _ in config.exit_layers]
        )
        self.post_init()

    # -- structure ------------------------------------------------------------------------------------------
    @property
    def embeddings(self) -> nn.Module:
        """The backbone's embeddings module."""
        return self.backbone.embeddings

    @property
    def layers(self) -> nn.ModuleList:
        """The backbone's layer list (discovered by structure)."""
        return self.backbone.get_submodule(self._layer_path)

    def get_input_embeddings(self):
        return self.backbone.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.backbone.set_input_embeddings(value)

    @classmethod
    def from_backbone(cls, model_or_path, exit_layers=None, num_labels=None, **config_kwargs):
        """Build a boosted early-exit model on a pretrained encoder.

        Args:
            model_or_path: a base encoder (``BertModel``, ``RobertaModel``, ``DistilBertModel``,
                ``PartialMoEBertModel``, ...), a model with a task head (its encoder, ``model.base_model``, is
                used) or a checkpoint folder / Hub name (loaded in float32 with ``AutoModel``).
            exit_layers: 1-based layers carrying an exit (default: every layer).
            num_labels: number of labels (1 = regression); default: the backbone config's ``num_labels``.
            **config_kwargs: other [`BoostedEarlyExitConfig`] fields (``boosting``, ``ensemble_temperature``, ...).

        The encoder's weights are copied; when the encoder has a BERT pooler (``pooler.dense``), every exit head's
        ``dense`` starts from it. The remaining head weights are freshly initialised (they are new).
        """
        if isinstance(model_or_path, (str, bytes)) or hasattr(model_or_path, "__fspath__"):
            encoder = AutoModel.from_pretrained(model_or_path, dtype=torch.float32)
        elif isinstance(model_or_path, PreTrainedModel):
            encoder = model_or_path.base_model
        else:
            raise ValueError(
                f"model_or_path must be a PreTrainedModel or a checkpoint path, got {type(model_or_path).__name__}"
            )
        backbone_config = copy.deepcopy(encoder.config)
        _check_encoder_config(backbone_config)
        find_layer_stack(encoder, backbone_config.num_hidden_layers)  # fail early on a foreign structure
        if num_labels is None:
            num_labels = backbone_config.num_labels
        label_kwargs = {"num_labels": num_labels}
        if backbone_config.id2label is not None and len(backbone_config.id2label) == num_labels and num_labels > 1:
            label_kwargs = {"id2label": dict(backbone_config.id2label), "label2id": dict(backbone_config.label2id)}
        if num_labels == 1:
            config_kwargs.setdefault("problem_type", "regression")
        config = BoostedEarlyExitConfig(backbone=backbone_config, exit_layers=exit_layers, **label_kwargs, **config_kwargs)
        model = cls(config)
        model.set_attn_implementation(encoder.config._attn_implementation)  # the encoder's, for the whole model
        state = {k: v for k, v in encoder.state_dict().items() if not k.startswith("pooler.")}
        model.backbone.load_state_dict(state, strict=True)
        pooler = getattr(getattr(encoder, "pooler", None), "dense", None)
        if isinstance(pooler, nn.Linear) and pooler.weight.shape == model.exit_heads[0].dense.weight.shape:
            with torch.no_grad():
                for head in model.exit_heads:
                    head.dense.weight.copy_(pooler.weight)
                    head.dense.bias.copy_(pooler.bias)
        return model.to(next(encoder.parameters()).device)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """``PreTrainedModel.from_pretrained``, plus a ``ValueError`` for a local checkpoint of another model type
        (a base encoder such as a saved ``BertModel``: use :meth:`from_backbone`) and for a checkpoint whose exit
        heads do not match its ``exit_layers`` (heads would load onto the wrong layers)."""
        folder = pretrained_model_name_or_path
        if folder is not None and os.path.isdir(folder):
            config = kwargs.get("config")
            if not isinstance(config, BoostedEarlyExitConfig):
                _check_checkpoint_model_type(folder)
                config = BoostedEarlyExitConfig.from_pretrained(folder)
            _check_checkpoint_heads(folder, config)
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    # -- pieces of the forward pass ---------------------------------------------------------------------------
    def _embed(self, input_ids, token_type_ids, position_ids, inputs_embeds):
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        kwargs = {"input_ids": input_ids, "inputs_embeds": inputs_embeds}
        if position_ids is not None:
            if "position_ids" not in self._embeddings_params:
                raise ValueError(f"position_ids: the {self.config.backbone.model_type} embeddings take none")
            kwargs["position_ids"] = position_ids
        if token_type_ids is not None:
            if "token_type_ids" in self._embeddings_params:
                kwargs["token_type_ids"] = token_type_ids
            elif bool(token_type_ids.any()):
                raise ValueError(
                    f"token_type_ids: the {self.config.backbone.model_type} backbone has no token type embeddings, "
                    "but non-zero token_type_ids were given"
                )
        return self.embeddings(**kwargs)

    def _layer_mask(self, hidden_states, attention_mask):
        """The backbone's attention mask for its attention implementation, from the 2-D padding mask."""
        return create_bidirectional_mask(
            config=self.backbone.config, inputs_embeds=hidden_states, attention_mask=attention_mask
        )

    def _ensemble(self, previous, head_logits):
        """F_n = t·F_{n-1} + f_n (boosting) or f_n (joint); F_{n-1} enters through stop-gradient."""
        return boosted_prediction(previous, head_logits, self.config.ensemble_temperature, self.config.boosting)

    def _all_exits(self, hidden_states, attention_mask, record=None):
        """Run every layer up to the last exit and every exit head; return the list of exit predictions F_n.

        Gradient rescaling (docs/boost.md, "## Boosted exits", :func:`hf_dynamic.boost.loss.rescale_trunk`): the
        gradient reaching the layers up to exit n is ``(1/c)·Σ_{k≥n} ∂L_k/∂h`` with c = N-n+1 the number of exits at
        or after n.
        """
        mask = self._layer_mask(hidden_states, attention_mask)
        rescale = self.config.gradient_rescale and self.training and torch.is_grad_enabled()
        num_exits = self.config.num_exits
        exit_at = {layer: k for k, layer in enumerate(self.config.exit_layers)}
        layers = self.layers
        predictions, previous = [], None
        for index in range(self.config.exit_layers[-1]):
            hidden_states = layers[index](hidden_states, mask)
            if record is not None:
                record.layer_output(hidden_states)
            k = exit_at.get(index + 1)
            if k is None:
                continue
            head_input, hidden_states = rescale_trunk(hidden_states, num_exits - k, rescale)
            previous = self._ensemble(previous, self.exit_heads[k](head_input, attention_mask))
            predictions.append(previous)
        return predictions

    def _routers(self) -> list:
        """The backbone's top-k routers (MoE backbones such as PartialMoEBert), in module order."""
        return [module for module in self.backbone.modules() if isinstance(module, TopKRouter)]

    def _all_exits_with_router_loss(self, hidden_states, attention_mask, routers, record=None):
        """:meth:`_all_exits`, plus the Switch load-balancing loss of ``routers`` (their logits captured by hooks),
        as the backbone's own forward adds it (``core.routing.load_balancing_loss``)."""
        captured = []
        hooks = [router.register_forward_hook(lambda module, args, out: captured.append(out[0])) for router in routers]
        try:
            predictions = self._all_exits(hidden_states, attention_mask, record)
        finally:
            for hook in hooks:
                hook.remove()
        mask = attention_mask if attention_mask is not None and attention_mask.dim() == 2 else None
        aux_loss = load_balancing_loss(tuple(captured), routers[0].num_experts, routers[0].top_k, mask)
        return predictions, aux_loss

    def _dynamic_exits(self, hidden_states, attention_mask, record=None):
        """Dynamic mode: each sample leaves at the first exit whose criterion fires (the last exit takes all), as
        :class:`hf_dynamic.boost.criteria.ExitRule` decides.

        The layers after an exit run only on the samples still in the batch: hidden states, the padding mask and
        the criterion state are compacted (position / token type ids are consumed by the embeddings before any
        exit, so nothing else needs carrying), and trailing positions that are padding for every remaining sample
        are dropped (:func:`trim_trailing_padding`).
        """
        batch = hidden_states.shape[0]
        if attention_mask is None:
            attention_mask = torch.ones(hidden_states.shape[:2], dtype=torch.long, device=hidden_states.device)
        exit_at = {layer: k for k, layer in enumerate(self.config.exit_layers)}
        logits = hidden_states.new_zeros(batch, self.config.num_labels)
        exit_layer = torch.zeros(batch, dtype=torch.long, device=hidden_states.device)
        active = torch.arange(batch, device=hidden_states.device)
        rule = ExitRule(self.config, batch, hidden_states.device)
        mask = self._layer_mask(hidden_states, attention_mask)
        layers, previous = self.layers, None
        for index in range(self.config.exit_layers[-1]):
            hidden_states = layers[index](hidden_states, mask)
            if record is not None:
                record.layer_output(hidden_states, active)
            k = exit_at.get(index + 1)
            if k is None:
                continue
            previous = self._ensemble(previous, self.exit_heads[k](hidden_states, attention_mask))
            fire = rule.fires(previous, k)
            if bool(fire.any()):
                leaving = active[fire]
                logits[leaving] = previous[fire].to(logits.dtype)
                exit_layer[leaving] = index + 1
                keep = ~fire
                if not bool(keep.any()):
                    break
                active, hidden_states, previous = active[keep], hidden_states[keep], previous[keep]
                hidden_states, attention_mask = trim_trailing_padding(hidden_states, attention_mask[keep])
                rule.keep(keep)
                mask = self._layer_mask(hidden_states, attention_mask)
        return logits, exit_layer

    def _task_loss(self, logits, labels):
        """L: cross-entropy (classification) or mean squared error (regression, num_labels=1), through
        transformers' sequence-classification loss (``self.loss_function``) in float32."""
        if self.config.is_regression:
            logits, labels = logits.float().view(-1), labels.float().view(-1)
        else:
            logits = logits.float()
        return self.loss_function(labels, logits, _LossConfig(self.config))

    def boosted_loss(self, exit_predictions, labels):
        """BoostNet's loss ``Σ_n w_n·L(t·stop_grad(F_{n-1}) + f_n, y)`` (:func:`hf_dynamic.boost.loss.boosted_loss`),
        one backward for all exits. Returns ``(loss, per_exit_losses)``."""
        return boosted_loss(exit_predictions, labels, self._task_loss, self.config.exit_loss_weights)

    # -- forward ------------------------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_all_exits: bool | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BoostedEarlyExitOutput | tuple:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
            Class indices, or float targets for regression (``num_labels == 1``).
        output_all_exits (`bool`, *optional*):
            Anytime mode: run every exit and return their predictions as ``all_exit_logits``.
        output_hidden_states (`bool`, *optional*):
            Return the embeddings' and every backbone layer's output as ``hidden_states`` (as the backbone does).
            In dynamic mode each sample's rows are filled up to its ``exit_layer`` and zero after it (those layers
            never ran for it); see [`BoostedEarlyExitOutput`].
        output_attentions (`bool`, *optional*):
            Return every backbone layer's attention weights as ``attentions``, padded like ``hidden_states`` in
            dynamic mode.

        kwargs ([`TransformersKwargs`], *optional*):
            Of these, ``num_items_in_batch`` is accepted and unused (the loss is a mean over the samples); the
            packed-sequence ones (``cu_seq_lens_q``, ...) and ``output_router_logits`` are refused (`TypeError`).

        Dynamic (early-exit) mode is used in eval mode when the config enables it
        (``config.dynamic_exit_enabled``) and ``output_all_exits`` is not set.
        """
        unsupported = sorted(set(kwargs) - {"num_items_in_batch"})
        if unsupported:
            raise TypeError(f"{type(self).__name__}.forward() does not support {', '.join(unsupported)}")
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        if output_attentions is None:
            output_attentions = self.config.output_attentions
        self.config.check_problem_type()
        hidden_states = self._embed(input_ids, token_type_ids, position_ids, inputs_embeds)
        dynamic = not self.training and self.config.dynamic_exit_enabled and not output_all_exits
        record = _Recorder(self, hidden_states, output_hidden_states, output_attentions, dynamic)
        loss = all_exit_logits = exit_layer = exit_losses = aux_loss = None
        with record.attention_hooks():
            if dynamic:
                self.config.check_exit_setup()
                logits, exit_layer = self._dynamic_exits(hidden_states, attention_mask, record.active())
                if labels is not None:
                    loss = self._task_loss(logits, labels)
            else:
                routers = self._routers() if labels is not None else []
                coefficient = getattr(self.config.backbone, "router_aux_loss_coef", 0.0) or 0.0
                if routers and coefficient:
                    predictions, aux_loss = self._all_exits_with_router_loss(
                        hidden_states, attention_mask, routers, record.active()
                    )
                else:
                    predictions = self._all_exits(hidden_states, attention_mask, record.active())
                logits = predictions[-1]
                if labels is not None:
                    loss, exit_losses = self.boosted_loss(predictions, labels)
                    if aux_loss is not None:
                        loss = loss + coefficient * aux_loss.to(loss.device)
                if output_all_exits:
                    all_exit_logits = torch.stack(predictions, dim=1)
        output = BoostedEarlyExitOutput(
            loss=loss,
            logits=logits,
            all_exit_logits=all_exit_logits,
            exit_layer=exit_layer,
            hidden_states=record.hidden_states(),
            attentions=record.attentions(),
            exit_losses=exit_losses,
            aux_loss=aux_loss,
        )
        return output if return_dict else output.to_tuple()


class _LossConfig:
    """The two fields transformers' ``ForSequenceClassificationLoss`` reads, with the problem type resolved here
    (that loss would otherwise write ``problem_type`` into the model's config, and guess multi-label from float
    labels)."""

    def __init__(self, config):
        self.num_labels = config.num_labels
        self.problem_type = "regression" if config.is_regression else "single_label_classification"


class _Recorder:
    """Collects the hidden states and attention weights a forward pass was asked for.

    ``layer_output(h, active)`` stores a layer's output for the samples ``active`` (dynamic mode: the samples still
    in the batch, whose rows go into a zero-padded full-batch tensor); the attention weights are caught by forward
    hooks on the backbone's attention modules (the classes its ``_can_record_outputs`` names).
    """

    def __init__(self, model, embeddings_output, want_hidden, want_attentions, padded):
        self.model, self.padded = model, padded
        self.want_hidden, self.want_attentions = bool(want_hidden), bool(want_attentions)
        self.shape = embeddings_output.shape[:2]
        self._hidden = [embeddings_output] if self.want_hidden else None
        self._attentions = [] if self.want_attentions else None
        self._padded = 0  # attention entries already padded

    def active(self):
        """Self when anything is recorded, else ``None`` (the layer loops then skip recording)."""
        return self if (self.want_hidden or self.want_attentions) else None

    def _pad(self, tensor, seq_dims, active):
        if not self.padded or active is None or tensor is None:
            return tensor
        batch, length = self.shape
        shape = [batch, *tensor.shape[1:]]
        for dim in seq_dims:
            shape[dim] = length
        full = tensor.new_zeros(shape)
        index = [active] + [slice(0, tensor.shape[dim]) if dim in seq_dims else slice(None)
                                  for dim in range(1, tensor.dim())]
        full[tuple(index)] = tensor
        return full

    def layer_output(self, hidden_states, active=None):
        """Called after each layer: store its output and pad the attention weights it produced."""
        if self.want_hidden:
            self._hidden.append(self._pad(hidden_states, (1,), active))
        if self.want_attentions:
            for i in range(self._padded, len(self._attentions)):
                self._attentions[i] = self._pad(self._attentions[i], (2, 3), active)
            self._padded = len(self._attentions)

    def _attention_hook(self, module, args, output):
        self._attentions.append(output[self._attention_index] if isinstance(output, tuple) else None)

    @contextmanager
    def attention_hooks(self):
        if not self.want_attentions:
            yield
            return
        target = type(self.model.backbone)._can_record_outputs.get("attentions") if hasattr(
            type(self.model.backbone), "_can_record_outputs") else None
        target_class = getattr(target, "target_class", target)
        self._attention_index = getattr(target, "index", 1) if not isinstance(target, type) else 1
        if not isinstance(target_class, type):
            raise ValueError(
                f"output_attentions: the {self.model.config.backbone.model_type} backbone does not say which of its "
                "modules compute attention weights"
            )
        hooks = [module.register_forward_hook(self._attention_hook)
                 for module in self.model.layers.modules() if isinstance(module, target_class)]
        try:
            yield
        finally:
            for hook in hooks:
                hook.remove()

    def _complete(self, tensors, count):
        """Dynamic mode stops once every sample has left: the layers that never ran give zero tensors."""
        return tuple(tensors) + tuple(torch.zeros_like(tensors[-1]) for _ in range(count - len(tensors)))

    def hidden_states(self):
        if not self.want_hidden:
            return None
        return self._complete(self._hidden, self.model.config.num_backbone_layers + 1)

    def attentions(self):
        if not self.want_attentions:
            return None
        if any(weights is None for weights in self._attentions):
            logger.warning_once(
                f"attention implementation {self.model.config.backbone._attn_implementation!r} returns no attention "
                "weights; load the model with attn_implementation='eager' to get them"
            )
            return ()
        return self._complete(self._attentions, self.model.config.num_backbone_layers)


def _check_checkpoint_model_type(folder) -> None:
    """``ValueError`` when a checkpoint folder holds another model type (e.g. a base ``BertModel``)."""
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        return
    with open(path) as handle:
        model_type = json.load(handle).get("model_type")
    if model_type != BoostedEarlyExitConfig.model_type:
        raise ValueError(
            f"{folder} holds a {model_type!r} checkpoint, not a {BoostedEarlyExitConfig.model_type!r} one; build a "
            "boosted early-exit model on it with BoostedEarlyExitForSequenceClassification.from_backbone("
            f"{folder!r}, num_labels=...)"
        )


def _check_checkpoint_heads(folder, config) -> None:
    """``ValueError`` when a checkpoint's exit heads disagree with its ``exit_layers`` (count or width)."""
    found = checkpoint_tensor_shapes(folder, r"(?:^|\.)exit_heads\.(\d+)\.classifier\.weight$")
    shapes = {int(match.group(1)): shape for match, shape in found.values()}
    if not shapes:
        return
    if sorted(shapes) != list(range(config.num_exits)):
        raise ValueError(
            f"checkpoint {folder} has {len(shapes)} exit heads (indices {sorted(shapes)}), but its config's "
            f"exit_layers={config.exit_layers} needs {config.num_exits}: the heads would load onto the wrong layers"
        )
    expected = (config.num_labels, config.backbone.hidden_size)
    for index, shape in sorted(shapes.items()):
        if shape != expected:
            raise ValueError(
                f"checkpoint {folder}: exit head {index} (layer {config.exit_layers[index]}) has classifier shape "
                f"{shape}, but the config (num_labels={config.num_labels}, hidden_size="
                f"{config.backbone.hidden_size}) implies {expected}"
            )


__all__ = [
    "BoostedEarlyExitForSequenceClassification",
    "BoostedEarlyExitOutput",
    "BoostedEarlyExitPreTrainedModel",
    "ExitHead",
    "exit_confidence",
    "exit_entropy",
    "exit_score",
    "find_layer_stack",
    "trim_trailing_padding",
]
