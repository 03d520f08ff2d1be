"""Boosted early-exit heads on any transformers encoder (BoostNet, METHODS.md §2; Yu et al., AAAI 2023,
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
"""

import copy
import inspect
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import CrossEntropyLoss, MSELoss
from transformers import AutoModel, PreTrainedModel
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_outputs import ModelOutput
from transformers.utils import logging

from ...core.gradient import scale_gradient
from ...core.routing import TopKRouter, load_balancing_loss
from .configuration_boosted_early_exit import BoostedEarlyExitConfig

logger = logging.get_logger(__name__)


# ----------------------------------------------------------------------------------------------------------------
# Exit criteria (METHODS.md §2: confidence = max softmax of F_n; DeeBERT: entropy; PABEE: patience)
# ----------------------------------------------------------------------------------------------------------------
def exit_confidence(logits: torch.Tensor) -> torch.Tensor:
    """Max softmax probability per sample (BoostNet / MSDNet confidence), shape ``(batch,)``."""
    return torch.softmax(logits.float(), dim=-1).amax(dim=-1)


def exit_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of the softmax per sample (DeeBERT's exit criterion), shape ``(batch,)``."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    return -(log_probs.exp() * log_probs).sum(dim=-1)


def exit_score(logits: torch.Tensor, criterion: str) -> torch.Tensor:
    """A score that grows with certainty: the exit fires when ``score >= threshold_score``.

    ``confidence``: the max probability itself; ``entropy``: minus the entropy (so the entropy threshold θ maps to
    the score threshold -θ).
    """
    if criterion == "confidence":
        return exit_confidence(logits)
    if criterion == "entropy":
        return -exit_entropy(logits)
    raise ValueError(f"exit_criterion {criterion!r} has no per-exit score (only 'confidence' and 'entropy')")


def threshold_to_score(threshold: float, criterion: str) -> float:
    """Map a stored threshold to the score scale of :func:`exit_score`."""
    return threshold if criterion == "confidence" else -threshold


def score_to_threshold(score: float, criterion: str) -> float:
    """Inverse of :func:`threshold_to_score`."""
    return score if criterion == "confidence" else -score


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
    exit_losses: torch.FloatTensor | None = None
    aux_loss: torch.FloatTensor | None = None


class ExitHead(nn.Module):
    """Exit head f_n: BERT-pooler-style ``classifier(dropout(tanh(dense(pool(h)))))`` on a layer's output.

    ``pooling="cls"``: the first token (BERT's pooler, DeeBERT's highway exits); ``"mean"``: the mean over the
    non-padding tokens (how sentence-transformers such as all-MiniLM-L6-v2 were trained to pool).
    """

    def __init__(self, hidden_size: int, num_labels: int, dropout: float, pooling: str = "cls"):
        super().__init__()
        self.pooling = pooling
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.activation = nn.Tanh()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_labels)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.pooling == "cls":
            pooled = hidden_states[:, 0]
        elif attention_mask is None:
            pooled = hidden_states.mean(dim=1)
        else:
            weights = attention_mask.to(hidden_states.dtype).unsqueeze(-1)
            pooled = (hidden_states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)
        return self.classifier(self.dropout(self.activation(self.dense(pooled))))


class BoostedEarlyExitPreTrainedModel(PreTrainedModel):
    config_class = BoostedEarlyExitConfig
    config: BoostedEarlyExitConfig
    base_model_prefix = "backbone"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _no_split_modules = []


class BoostedEarlyExitForSequenceClassification(BoostedEarlyExitPreTrainedModel):
    """Sequence classifier / regressor with boosted early exits (METHODS.md §2) on a wrapped encoder."""

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
        config._attn_implementation = encoder.config._attn_implementation
        model = cls(config)
        state = {k: v for k, v in encoder.state_dict().items() if not k.startswith("pooler.")}
        model.backbone.load_state_dict(state, strict=True)
        pooler = getattr(getattr(encoder, "pooler", None), "dense", None)
        if isinstance(pooler, nn.Linear) and pooler.weight.shape == model.exit_heads[0].dense.weight.shape:
            with torch.no_grad():
                for head in model.exit_heads:
                    head.dense.weight.copy_(pooler.weight)
                    head.dense.bias.copy_(pooler.bias)
        return model.to(next(encoder.parameters()).device)

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
        """F_n = t·F_{n-1} + f_n (boosting) or f_n (joint); F_{n-1} enters through stop-gradient (METHODS.md §2).

        The stop-gradient does not change the value, so the same tensor serves as exit n's training input
        ``t·stop_grad(F_{n-1}) + f_n`` and as its ensemble prediction F_n.
        """
        if not self.config.boosting or previous is None:
            return head_logits
        return self.config.ensemble_temperature * previous.detach() + head_logits

    def _all_exits(self, hidden_states, attention_mask):
        """Run every layer up to the last exit and every exit head; return the list of exit predictions F_n.

        Gradient rescaling (METHODS.md §2): after exit n's layer, the trunk is wrapped as
        ``z = scale(h, 1/c)`` (head n reads z) and ``h' = scale(z, c-1)`` (the next layers read h'), with
        c = N-n+1 the number of exits at or after n. The gradient reaching the layers up to exit n is then
        ``(1/c)·Σ_{k≥n} ∂L_k/∂h``: the sum over the exits after it scaled by 1/(N-n+1), without compounding.
        """
        mask = self._layer_mask(hidden_states, attention_mask)
        rescale = self.config.gradient_rescale and self.training and torch.is_grad_enabled()
        num_exits = self.config.num_exits
        exit_at = {layer: k for k, layer in enumerate(self.config.exit_layers)}
        layers = self.layers
        predictions, previous = [], None
        for index in range(self.config.exit_layers[-1]):
            hidden_states = layers[index](hidden_states, mask)
            k = exit_at.get(index + 1)
            if k is None:
                continue
            remaining = num_exits - k
            if rescale:
                hidden_states = scale_gradient(hidden_states, 1.0 / remaining)
            previous = self._ensemble(previous, self.exit_heads[k](hidden_states, attention_mask))
            predictions.append(previous)
            if rescale and remaining > 1:
                hidden_states = scale_gradient(hidden_states, float(remaining - 1))
        return predictions

    def _routers(self) -> list:
        """The backbone's top-k routers (MoE backbones such as PartialMoEBert), in module order."""
        return [module for module in self.backbone.modules() if isinstance(module, TopKRouter)]

    def _all_exits_with_router_loss(self, hidden_states, attention_mask, routers):
        """:meth:`_all_exits`, plus the Switch load-balancing loss of ``routers`` (their logits captured by hooks),
        as the backbone's own forward adds it (``core.routing.load_balancing_loss``)."""
        captured = []
        hooks = [router.register_forward_hook(lambda module, args, out: captured.append(out[0])) for router in routers]
        try:
            predictions = self._all_exits(hidden_states, attention_mask)
        finally:
            for hook in hooks:
                hook.remove()
        mask = attention_mask if attention_mask is not None and attention_mask.dim() == 2 else None
        aux_loss = load_balancing_loss(tuple(captured), routers[0].num_experts, routers[0].top_k, mask)
        return predictions, aux_loss

    def _exit_fires(self, prediction, k, state):
        """Boolean mask of the samples whose exit criterion fires at exit k (0-based) for the current batch."""
        criterion = self.config.exit_criterion
        if criterion == "patience":
            if self.config.is_regression:
                current = prediction.float().squeeze(-1)
                agree = (current - state["previous"]).abs() <= self.config.patience_tolerance if k > 0 else None
            else:
                current = prediction.argmax(dim=-1)
                agree = current == state["previous"] if k > 0 else None
            if agree is not None:
                state["count"] = torch.where(agree, state["count"] + 1, torch.zeros_like(state["count"]))
            state["previous"] = current
            return state["count"] >= self.config.exit_patience
        threshold = threshold_to_score(self.config.exit_thresholds[k], criterion)
        return exit_score(prediction, criterion) >= threshold

    def _dynamic_exits(self, hidden_states, attention_mask):
        """Dynamic mode: each sample leaves at the first exit whose criterion fires (the last exit takes all).

        The layers after an exit run only on the samples still in the batch: hidden states, the padding mask and
        the criterion state are compacted (position / token type ids are consumed by the embeddings before any
        exit, so nothing else needs carrying), and trailing positions that are padding for every remaining sample
        are dropped (:func:`trim_trailing_padding`).
        """
        batch = hidden_states.shape[0]
        if attention_mask is None:
            attention_mask = torch.ones(hidden_states.shape[:2], dtype=torch.long, device=hidden_states.device)
        exit_at = {layer: k for k, layer in enumerate(self.config.exit_layers)}
        last = self.config.num_exits - 1
        logits = hidden_states.new_zeros(batch, self.config.num_labels)
        exit_layer = torch.zeros(batch, dtype=torch.long, device=hidden_states.device)
        active = torch.arange(batch, device=hidden_states.device)
        state = {"count": torch.zeros(batch, dtype=torch.long, device=hidden_states.device), "previous": None}
        mask = self._layer_mask(hidden_states, attention_mask)
        layers, previous = self.layers, None
        for index in range(self.config.exit_layers[-1]):
            hidden_states = layers[index](hidden_states, mask)
            k = exit_at.get(index + 1)
            if k is None:
                continue
            previous = self._ensemble(previous, self.exit_heads[k](hidden_states, attention_mask))
            if k == last:
                fire = torch.ones(active.shape[0], dtype=torch.bool, device=active.device)
            else:
                fire = self._exit_fires(previous, k, state)
            if bool(fire.any()):
                leaving = active[fire]
                logits[leaving] = previous[fire].to(logits.dtype)
                exit_layer[leaving] = index + 1
                keep = ~fire
                if not bool(keep.any()):
                    break
                active, hidden_states, previous = active[keep], hidden_states[keep], previous[keep]
                hidden_states, attention_mask = trim_trailing_padding(hidden_states, attention_mask[keep])
                state = {key: (value[keep] if value is not None else None) for key, value in state.items()}
                mask = self._layer_mask(hidden_states, attention_mask)
        return logits, exit_layer

    def _task_loss(self, logits, labels):
        """L of METHODS.md §2: cross-entropy (classification) or mean squared error (regression, num_labels=1)."""
        if self.config.is_regression:
            return MSELoss()(logits.squeeze(-1).float(), labels.view(-1).float())
        return CrossEntropyLoss()(logits.view(-1, self.config.num_labels).float(), labels.view(-1))

    def boosted_loss(self, exit_predictions, labels):
        """BoostNet's loss ``Σ_n w_n·L(t·stop_grad(F_{n-1}) + f_n, y)`` (METHODS.md §2), one backward for all exits.

        ``exit_predictions`` are the F_n of :meth:`_all_exits`, which already carry the stop-gradient (or are the
        plain f_n of the joint baseline). Returns ``(loss, per_exit_losses)``.
        """
        weights = self.config.exit_loss_weights or [1.0] * len(exit_predictions)
        losses = torch.stack([self._task_loss(prediction, labels) for prediction in exit_predictions])
        return (losses * losses.new_tensor(weights)).sum(), losses.detach()

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
        return_dict: bool | None = None,
    ) -> BoostedEarlyExitOutput | tuple:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
            Class indices, or float targets for regression (``num_labels == 1``).
        output_all_exits (`bool`, *optional*):
            Anytime mode: run every exit and return their predictions as ``all_exit_logits``.

        Dynamic (early-exit) mode is used in eval mode when the config enables it
        (``config.dynamic_exit_enabled``) and ``output_all_exits`` is not set.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        hidden_states = self._embed(input_ids, token_type_ids, position_ids, inputs_embeds)
        dynamic = not self.training and self.config.dynamic_exit_enabled and not output_all_exits
        loss = all_exit_logits = exit_layer = exit_losses = aux_loss = None
        if dynamic:
            self.config.check_exit_setup()
            logits, exit_layer = self._dynamic_exits(hidden_states, attention_mask)
            if labels is not None:
                loss = self._task_loss(logits, labels)
        else:
            routers = self._routers() if labels is not None else []
            coefficient = getattr(self.config.backbone, "router_aux_loss_coef", 0.0) or 0.0
            if routers and coefficient:
                predictions, aux_loss = self._all_exits_with_router_loss(hidden_states, attention_mask, routers)
            else:
                predictions = self._all_exits(hidden_states, attention_mask)
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
            exit_losses=exit_losses,
            aux_loss=aux_loss,
        )
        return output if return_dict else output.to_tuple()


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
