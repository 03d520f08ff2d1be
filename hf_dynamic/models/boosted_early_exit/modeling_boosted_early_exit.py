"""Boosted early-exit heads on a transformers encoder (BoostNet, docs/boost.md; Yu et al., AAAI 2023,
arXiv 2211.16726), with exits that really skip the remaining layers.

The model wraps a backbone encoder (BERT, RoBERTa, XLM-RoBERTa, CamemBERT, DistilBERT, ModernBERT, hf_dynamic's
PartialMoEBert: the architectures of :mod:`hf_dynamic.boost.backbones`) and puts an exit head after each layer listed
in ``config.exit_layers``; exit n reads what the backbone reports as ``hidden_states[n]`` (the last exit its
``last_hidden_state``).

Three ways to run it:

- training / full mode: the backbone runs its own ``forward``; forward hooks on its layer modules hand each exit
  layer's output to its head (and apply the gradient rescaling). The loss is BoostNet's
  ``Σ_n w_n·L(t·stop_grad(F_{n-1}) + f_n, y)`` (or, with ``boosting=False``, the joint baseline
  ``Σ_n w_n·L(f_n, y)``); ``logits`` is the last exit's prediction.
- anytime mode (``output_all_exits=True``): also returns every exit's prediction as ``all_exit_logits``
  (batch, exits, labels).
- dynamic mode (eval mode with ``exit_thresholds`` set, or ``exit_patience`` for the patience criterion): the
  samples whose exit criterion fires leave the batch; later layers run only on the samples still in it (batch
  compaction), and the output carries each sample's ``logits`` and ``exit_layer``. The backbone's own forward cannot
  shrink its batch between layers, so this mode runs the backbone's public sub-modules (embeddings, layers) with
  the arguments its architecture's layers take, as written in the architecture's
  :class:`~hf_dynamic.boost.backbones.BackboneAdapter`.

The method's pieces (exit heads, boosted ensemble and loss, gradient rescaling, exit criteria and rule, calibration,
backbone adapters) live in :mod:`hf_dynamic.boost`; this module wires them onto a backbone.

There is no base-model class (no ``BoostedEarlyExitModel`` registered with ``AutoModel``): the exit heads *are* the
method, so every model of this type has a task head, and without them what remains is the backbone itself, which its
own class already serves: ``model.backbone`` (also ``model.base_model``) is a stock ``BertModel`` /
``ModernBertModel`` / ... and ``model.backbone.save_pretrained(path)`` writes a checkpoint that ``AutoModel`` loads.
Conversely a base-model checkpoint is turned into this class with
:meth:`BoostedEarlyExitForSequenceClassification.from_backbone`; ``from_pretrained`` on one raises a ``ValueError``
saying so.
"""

import copy
import glob
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Unpack

import torch
from torch import nn
from transformers import AutoModel, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import ModelOutput
from transformers.utils import TransformersKwargs, logging

from ...boost.backbones import get_backbone_adapter
from ...boost.criteria import ExitRule, exit_confidence, exit_entropy, exit_score
from ...boost.heads import ExitHead
from ...boost.loss import boosted_loss, boosted_prediction, rescale_trunk
from ...core.checkpoints import checkpoint_tensor_shapes
from ...core.validation import check_config_overrides  # the generic unknown-keyword check of every builder
from ...sharing import HubSharingMixin
from .configuration_boosted_early_exit import BoostedEarlyExitConfig

logger = logging.get_logger(__name__)


# ----------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------
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
    get_backbone_adapter(config.model_type)  # ValueError for an architecture without an adapter


def hidden_states_selection(output_hidden_states, count: int) -> set | None:
    """The hidden-state indices ``output_hidden_states`` asks for, as transformers 5 reads it: ``None`` / ``False``:
    none; ``True``: all ``count`` of them; an int or a list of ints: those indices (negative ones count from the end,
    0 is the embeddings' output; indices out of range select nothing). ``TypeError`` for anything else."""
    if output_hidden_states is None or output_hidden_states is False:
        return None
    if output_hidden_states is True:
        return set(range(count))
    indices = [output_hidden_states] if isinstance(output_hidden_states, int) else output_hidden_states
    if not isinstance(indices, (list, tuple)) or any(isinstance(i, bool) or not isinstance(i, int) for i in indices):
        raise TypeError(
            "output_hidden_states must be a bool, a layer index or a list of layer indices (0 = the embeddings), "
            f"got {output_hidden_states!r}"
        )
    return {i % count for i in indices if -count <= i < count}


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
        each, as the backbone returns them (with ``output_hidden_states`` a list of indices: ``None`` at the
        others). Dynamic mode: the same entries, zero-padded: a sample's rows are zero in the layers after its
        ``exit_layer`` (never computed for it) and at the trailing padding positions dropped once the longest
        samples had left.
    attentions (`tuple(torch.FloatTensor)`, *optional*, with ``output_attentions=True``):
        Each backbone layer's attention weights, ``(batch_size, num_heads, sequence_length, sequence_length)``, as
        the backbone returns them (an empty tuple, with a warning, under an attention implementation that does not
        return weights, such as sdpa: load with ``attn_implementation="eager"``). Dynamic mode: zero-padded as
        ``hidden_states``.
    exit_losses (`torch.FloatTensor` of shape `(num_exits,)`, *optional*):
        Full mode with labels: each exit's (unweighted, detached) loss L_n.
    aux_loss (`torch.FloatTensor`, *optional*):
        Full mode, MoE backbones (PartialMoEBert): the load-balancing loss the backbone's own forward returns as
        ``aux_loss``; with labels it is added to ``loss`` with the backbone's ``router_aux_loss_coef``.
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
    # checkpoints written before the heads recorded their layer (tests/fixtures/boosted_early_exit_v0) lack these
    # buffers; ``_init_weights`` fills them from ``config.exit_layers``, which is all such a checkpoint says
    _keys_to_ignore_on_load_missing = [r"exit_heads\.\d+\.exit_layer"]
    # The loss is a mean over the batch's samples: forward accepts ``num_items_in_batch`` (``**kwargs``) but does not
    # normalise by it, so the Trainer keeps dividing the loss by the gradient-accumulation steps.
    accepts_loss_kwargs = False


class BoostedEarlyExitForSequenceClassification(BoostedEarlyExitPreTrainedModel):
    """Sequence classifier / regressor with boosted early exits (docs/boost.md) on a wrapped encoder."""

    def __init__(self, config: BoostedEarlyExitConfig):
        super().__init__(config)
        backbone_config = config.backbone
        _check_encoder_config(backbone_config)
        self._adapter = get_backbone_adapter(backbone_config.model_type)
        backbone = AutoModel.from_config(backbone_config)
        if getattr(backbone, "pooler", None) is not None:
            backbone.pooler = None  # the exit heads pool for themselves; an unused pooler would get no gradient
        self.backbone = backbone
        layers = self._adapter.layers(backbone)
        if len(layers) != config.num_backbone_layers:
            raise ValueError(
                f"backbone {type(backbone).__name__}: {self._adapter.layers_path} holds {len(layers)} layers, its "
                f"config's num_hidden_layers is {config.num_backbone_layers}"
            )
        # where the exits sit, fixed for this model's lifetime: exit layer -> exit index k
        self._exit_layers = tuple(config.exit_layers)
        self._exit_at = {layer: k for k, layer in enumerate(self._exit_layers)}
        hidden_size = backbone_config.hidden_size
        dropout = config.classifier_dropout
        if dropout is None:
            dropout = getattr(backbone_config, "hidden_dropout_prob", getattr(backbone_config, "dropout", 0.1))
        self.exit_heads = nn.ModuleList(
            [ExitHead(hidden_size, config.num_labels, dropout, config.exit_pooling, layer) for layer in config.exit_layers]
        )
        self.post_init()
        if getattr(backbone_config, "dtype", None) is None:  # from_pretrained records it: set it so configs round-trip
            backbone_config.dtype = self.dtype

    # -- structure ------------------------------------------------------------------------------------------
    @property
    def embeddings(self) -> nn.Module:
        """The backbone's embeddings module."""
        return self.backbone.embeddings

    @property
    def layers(self) -> nn.ModuleList:
        """The backbone's layer list (where the architecture's adapter says it is)."""
        return self._adapter.layers(self.backbone)

    def get_input_embeddings(self):
        return self.backbone.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.backbone.set_input_embeddings(value)

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, ExitHead):  # a head not loaded from a checkpoint reads the layer the config gives it
            init.constant_(module.exit_layer, self._exit_layers[list(self.exit_heads).index(module)])

    @classmethod
    def from_backbone(cls, model_or_path, exit_layers=None, num_labels=None, **config_kwargs):
        """Build a boosted early-exit model on a pretrained encoder.

        Args:
            model_or_path: a base encoder (``BertModel``, ``RobertaModel``, ``DistilBertModel``, ``ModernBertModel``,
                ``PartialMoEBertModel``, ...), a model with a task head (its encoder, ``model.base_model``, is
                used) or a checkpoint folder / Hub name (loaded in float32 with ``AutoModel``).
            exit_layers: 1-based layers carrying an exit (default: every layer).
            num_labels: number of labels (1 = regression); default: the backbone config's ``num_labels``.
            **config_kwargs: other [`BoostedEarlyExitConfig`] fields (``boosting``, ``ensemble_temperature``, ...);
                a keyword that is no config field is a ``TypeError``, before anything is loaded.

        The encoder's weights are copied and its attention implementation kept; when the encoder has a BERT pooler
        (``pooler.dense``), every exit head's ``dense`` starts from it. The remaining head weights are freshly
        initialised (they are new).
        """
        check_config_overrides(BoostedEarlyExitConfig, config_kwargs, f"{cls.__name__}.from_backbone")
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
        if num_labels is None:
            num_labels = backbone_config.num_labels
        label_kwargs = {"num_labels": num_labels}
        if backbone_config.id2label is not None and len(backbone_config.id2label) == num_labels and num_labels > 1:
            label_kwargs = {"id2label": dict(backbone_config.id2label), "label2id": dict(backbone_config.label2id)}
        if num_labels == 1:
            config_kwargs.setdefault("problem_type", "regression")
        config = BoostedEarlyExitConfig(backbone=backbone_config, exit_layers=exit_layers, **label_kwargs, **config_kwargs)
        model = cls(config)
        # transformers 5 has no public getter of a loaded model's attention implementation: the config property
        # `_attn_implementation` is where `set_attn_implementation` writes it (checked by
        # tests/models/boosted_early_exit/test_boosted_early_exit_contracts.py::test_from_backbone_keeps_attention_implementation)
        model.set_attn_implementation(encoder.config._attn_implementation)
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
        heads do not match its ``exit_layers`` in number or in the layers they were trained at (the heads would
        read the wrong layers). Heads of another width are transformers' business, as for any classifier: a
        ``RuntimeError``, or with ``ignore_mismatched_sizes=True`` freshly initialised heads
        (``from_pretrained(folder, num_labels=5, ignore_mismatched_sizes=True)`` re-heads a model)."""
        folder = pretrained_model_name_or_path
        if folder is not None and os.path.isdir(folder):
            config = kwargs.get("config")
            if not isinstance(config, BoostedEarlyExitConfig):
                _check_checkpoint_model_type(folder)
                config = BoostedEarlyExitConfig.from_pretrained(folder)
            _check_checkpoint_heads(folder, config)
        model = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        loaded = model[0] if isinstance(model, tuple) else model  # output_loading_info=True
        loaded.check_exit_heads()
        return model

    def check_exit_heads(self) -> None:
        """``ValueError`` when an exit head was trained at another layer than ``config.exit_layers`` puts it
        (``exit_heads.k.exit_layer``, saved in every checkpoint), or when ``config.exit_layers`` was edited after the
        model was built."""
        self.check_exit_layers_unchanged()
        trained = [int(head.exit_layer) for head in self.exit_heads]
        if trained != list(self._exit_layers):
            raise ValueError(
                f"exit_layers={list(self._exit_layers)}, but the exit heads were trained at layers {trained} "
                "(exit_heads.k.exit_layer): the heads would read the wrong layers"
            )

    # -- pieces of the forward pass ---------------------------------------------------------------------------
    def _checked_token_type_ids(self, token_type_ids):
        """``token_type_ids`` for a backbone that takes them; dropped when all zero for one that does not."""
        if token_type_ids is None or self._adapter.takes_token_type_ids:
            return token_type_ids
        if bool(token_type_ids.any()):
            raise ValueError(
                f"token_type_ids: the {self.config.backbone.model_type} backbone has no token type embeddings, but "
                "non-zero token_type_ids were given"
            )
        return None

    def _ensemble(self, previous, head_logits):
        """F_n = t·F_{n-1} + f_n (boosting) or f_n (joint); F_{n-1} enters through stop-gradient."""
        return boosted_prediction(previous, head_logits, self.config.ensemble_temperature, self.config.boosting)

    def _all_exits(self, inputs: dict, attention_mask, output_hidden_states, output_attentions):
        """Full / anytime mode: the backbone's own forward, every exit head; returns ``(predictions F_n, backbone
        output)``.

        A forward hook on each exit layer but the last hands the layer's output to its head; the last exit reads
        the backbone's ``last_hidden_state``. Gradient rescaling (docs/boost.md, "## Boosted exits",
        :func:`hf_dynamic.boost.loss.rescale_trunk`): the hook returns the reweighted trunk as the layer's output, so
        the gradient reaching the layers up to exit n is ``(1/c)·Σ_{k≥n} ∂L_k/∂h`` with c = N-n+1.
        """
        rescale = self.config.gradient_rescale and self.training and torch.is_grad_enabled()
        num_exits = self.config.num_exits
        head_inputs = {}

        def exit_hook(k, module, args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            head_inputs[k], trunk = rescale_trunk(hidden, num_exits - k, rescale)
            if trunk is hidden:
                return None
            return (trunk, *output[1:]) if isinstance(output, tuple) else trunk

        layers = self.layers
        hooks = [layers[layer - 1].register_forward_hook(lambda *a, k=k: exit_hook(k, *a))
                 for layer, k in self._exit_at.items() if k < num_exits - 1]
        try:
            outputs = self.backbone(**inputs, attention_mask=attention_mask, output_hidden_states=output_hidden_states,
                                    output_attentions=output_attentions, return_dict=True)
        finally:
            for hook in hooks:
                hook.remove()
        head_inputs[num_exits - 1] = outputs.last_hidden_state
        predictions, previous = [], None
        for k, head in enumerate(self.exit_heads):
            previous = self._ensemble(previous, head(head_inputs[k], attention_mask))
            predictions.append(previous)
        return predictions, outputs

    def _dynamic_exits(self, inputs: dict, attention_mask, record):
        """Dynamic mode: each sample leaves at the first exit whose criterion fires (the last exit takes all), as
        :class:`hf_dynamic.boost.criteria.ExitRule` decides.

        The backbone's embeddings and layers run one by one as the architecture's adapter
        (:mod:`hf_dynamic.boost.backbones`) says. After an exit the layers run only on the samples still in the
        batch: hidden states, padding mask, position ids and criterion state are compacted, the layers' arguments
        (masks, rotary embeddings) rebuilt for the smaller batch, and trailing positions that are padding for every
        remaining sample dropped (:func:`trim_trailing_padding`).
        """
        adapter, backbone = self._adapter, self.backbone
        position_ids = inputs.get("position_ids")
        hidden_states = adapter.embed(backbone, inputs.get("input_ids"), inputs.get("inputs_embeds"),
                                      inputs.get("token_type_ids"), position_ids)
        batch, device = hidden_states.shape[0], hidden_states.device
        if attention_mask is None:
            attention_mask = torch.ones(hidden_states.shape[:2], dtype=torch.long, device=device)
        logits = hidden_states.new_zeros(batch, self.config.num_labels)
        exit_layer = torch.zeros(batch, dtype=torch.long, device=device)
        active = torch.arange(batch, device=device)
        rule = ExitRule(self.config.exit_settings(), batch, device)
        arguments = adapter.layer_arguments(backbone, hidden_states, attention_mask, position_ids)
        record.layer_output(0, hidden_states, active)
        layers, last, previous = self.layers, self._exit_layers[-1], None
        for index in range(last):
            hidden_states = layers[index](hidden_states, **arguments(index))
            if isinstance(hidden_states, tuple):  # layers that also return their attention weights
                hidden_states = hidden_states[0]
            if index + 1 == last:
                hidden_states = adapter.final(backbone, hidden_states)
            record.layer_output(index + 1, hidden_states, active)
            k = self._exit_at.get(index + 1)
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
                if position_ids is not None:
                    position_ids = position_ids[keep] if position_ids.shape[0] > 1 else position_ids
                    position_ids = position_ids[:, : hidden_states.shape[1]]
                rule.keep(keep)
                arguments = adapter.layer_arguments(backbone, hidden_states, attention_mask, position_ids)
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
        output_hidden_states: bool | int | list[int] | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BoostedEarlyExitOutput | tuple:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
            Class indices, or float targets for regression (``num_labels == 1``).
        output_all_exits (`bool`, *optional*):
            Anytime mode: run every exit and return their predictions as ``all_exit_logits``.
        output_hidden_states (`bool`, `int` or `list[int]`, *optional*):
            Return the embeddings' and every backbone layer's output as ``hidden_states`` (as the backbone does);
            an index or a list of indices (0 = the embeddings, negative from the end) returns those and ``None`` in
            the other places, as transformers does. In dynamic mode each sample's rows are filled up to its
            ``exit_layer`` and zero after it (those layers never ran for it); see [`BoostedEarlyExitOutput`].
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
        hidden_selection = hidden_states_selection(output_hidden_states, self.config.num_backbone_layers + 1)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        self.config.check_problem_type()
        self.check_exit_layers_unchanged()
        inputs = {"input_ids": input_ids, "inputs_embeds": inputs_embeds, "position_ids": position_ids}
        token_type_ids = self._checked_token_type_ids(token_type_ids)
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        dynamic = not self.training and self.config.dynamic_exit_enabled and not output_all_exits
        loss = all_exit_logits = exit_layer = exit_losses = aux_loss = None
        if dynamic:
            self.config.check_exit_setup()
            record = _PaddedRecord(input_ids if input_ids is not None else inputs_embeds, hidden_selection,
                                   bool(output_attentions), self.config.num_backbone_layers)
            with record.attention_hooks(self._adapter.attention_modules(self.backbone)):
                logits, exit_layer = self._dynamic_exits(inputs, attention_mask, record)
            hidden_states, attentions = record.hidden_states(), record.attentions()
            if labels is not None:
                loss = self._task_loss(logits, labels)
        else:
            predictions, outputs = self._all_exits(inputs, attention_mask, output_hidden_states, output_attentions)
            hidden_states, attentions = outputs.get("hidden_states"), outputs.get("attentions")
            aux_loss = outputs.get("aux_loss")  # MoE backbones (PartialMoEBert): the router load-balancing loss
            logits = predictions[-1]
            if labels is not None:
                loss, exit_losses = self.boosted_loss(predictions, labels)
                coefficient = getattr(self.config.backbone, "router_aux_loss_coef", 0.0) or 0.0
                if aux_loss is not None and coefficient:
                    loss = loss + coefficient * aux_loss.to(loss.device)
            if output_all_exits:
                all_exit_logits = torch.stack(predictions, dim=1)
        if output_attentions and not attentions:
            logger.warning_once(
                "output_attentions: the backbone's attention implementation returns no attention weights; load the "
                "model with attn_implementation='eager' to get them"
            )
            attentions = ()
        output = BoostedEarlyExitOutput(
            loss=loss,
            logits=logits,
            all_exit_logits=all_exit_logits,
            exit_layer=exit_layer,
            hidden_states=hidden_states,
            attentions=attentions,
            exit_losses=exit_losses,
            aux_loss=aux_loss,
        )
        return output if return_dict else output.to_tuple()

    def check_exit_layers_unchanged(self) -> None:
        """``ValueError`` when ``config.exit_layers`` was edited after the model was built (its heads stay where
        they were built)."""
        if list(self.config.exit_layers) != list(self._exit_layers):
            raise ValueError(
                f"config.exit_layers is {self.config.exit_layers} but this model was built with exit heads at layers "
                f"{list(self._exit_layers)}; build a new model to move the exits"
            )


class _LossConfig:
    """The two fields transformers' ``ForSequenceClassificationLoss`` reads, with the problem type resolved here
    (that loss would otherwise write ``problem_type`` into the model's config, and guess multi-label from float
    labels)."""

    def __init__(self, config):
        self.num_labels = config.num_labels
        self.problem_type = "regression" if config.is_regression else "single_label_classification"


class _PaddedRecord:
    """Dynamic mode's ``hidden_states`` and ``attentions``: each layer's rows for the samples still in the batch,
    scattered into zero tensors of the full batch and length (the attention weights caught by forward hooks on the
    modules the backbone adapter names)."""

    def __init__(self, inputs, hidden_selection, want_attentions, num_layers):
        self.batch, self.length = inputs.shape[:2]
        self.selection, self.want_attentions, self.num_layers = hidden_selection, want_attentions, num_layers
        self._hidden = [None] * (num_layers + 1)
        self._attentions, self._pending = [], []
        self._zeros = None  # a full-size zero hidden state, for the selected layers that ran for no sample

    def _scatter(self, tensor, active, seq_dims):
        shape = [self.batch, *tensor.shape[1:]]
        index = [active]
        for dim in range(1, tensor.dim()):
            if dim in seq_dims:
                shape[dim] = self.length
            index.append(slice(0, tensor.shape[dim]))
        full = tensor.new_zeros(shape)
        full[tuple(index)] = tensor
        return full

    def layer_output(self, index, hidden_states, active):
        """Store layer ``index``'s output (0: the embeddings) and the attention weights that layer produced."""
        if index == 0 and self.selection is not None:
            self._zeros = hidden_states.new_zeros(self.batch, self.length, *hidden_states.shape[2:])
        if self.selection is not None and index in self.selection:
            self._hidden[index] = self._scatter(hidden_states, active, (1,))
        for weights in self._pending:
            self._attentions.append(None if weights is None else self._scatter(weights, active, (2, 3)))
        self._pending = []

    @contextmanager
    def attention_hooks(self, modules):
        if not self.want_attentions:
            yield
            return
        hooks = [module.register_forward_hook(
            lambda module, args, output: self._pending.append(output[1] if isinstance(output, tuple) else None))
            for module in modules]
        try:
            yield
        finally:
            for hook in hooks:
                hook.remove()

    def hidden_states(self):
        """``num_layers + 1`` entries; a selected layer that ran for no sample is zeros, an unselected one ``None``."""
        if self.selection is None:
            return None
        return tuple(None if i not in self.selection else (h if h is not None else self._zeros)
                     for i, h in enumerate(self._hidden))

    def attentions(self):
        if not self.want_attentions:
            return None
        if not self._attentions or any(weights is None for weights in self._attentions):
            return ()
        missing = self.num_layers - len(self._attentions)
        return tuple(self._attentions) + tuple(torch.zeros_like(self._attentions[-1]) for _ in range(missing))


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
    """``ValueError`` when a checkpoint's exit heads disagree with its ``exit_layers`` (their count, or the layer
    each head was trained at), before anything is loaded."""
    found = checkpoint_tensor_shapes(folder, r"(?:^|\.)exit_heads\.(\d+)\.classifier\.weight$")
    shapes = {int(match.group(1)): shape for match, shape in found.values()}
    if not shapes:
        return
    if sorted(shapes) != list(range(config.num_exits)):
        raise ValueError(
            f"checkpoint {folder} has {len(shapes)} exit heads (indices {sorted(shapes)}), but its config's "
            f"exit_layers={config.exit_layers} needs {config.num_exits}: the heads would load onto the wrong layers"
        )
    trained = _checkpoint_exit_layers(folder)
    if trained is not None and trained != list(config.exit_layers):
        raise ValueError(
            f"checkpoint {folder}: exit_layers={config.exit_layers}, but its exit heads were trained at layers "
            f"{trained} (exit_heads.k.exit_layer): the heads would read the wrong layers"
        )


def _checkpoint_exit_layers(folder) -> list | None:
    """The layer each exit head of a checkpoint was trained at (its ``exit_heads.k.exit_layer`` buffers, read from
    the safetensors files), or ``None`` for a checkpoint written before they were saved."""
    from safetensors import safe_open

    found = checkpoint_tensor_shapes(folder, r"(?:^|\.)exit_heads\.(\d+)\.exit_layer$")
    if not found:
        return None
    layers = {}
    for path in sorted(glob.glob(os.path.join(folder, "*.safetensors"))):
        with safe_open(path, framework="pt") as handle:
            for key in handle.keys():
                if key in found:
                    layers[int(found[key][0].group(1))] = int(handle.get_tensor(key))
    return [layers[k] for k in sorted(layers)]


__all__ = [
    "BoostedEarlyExitForSequenceClassification",
    "BoostedEarlyExitOutput",
    "BoostedEarlyExitPreTrainedModel",
    "ExitHead",
    "exit_confidence",
    "exit_entropy",
    "exit_score",
    "hidden_states_selection",
    "trim_trailing_padding",
]
