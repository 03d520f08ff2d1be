"""Input-dependent width: a light gate picks each input's width (Dynamic Slimmable Networks, Li et al. CVPR 2021;
``docs/slim.md``, "## Input-dependent width").

For a slimmable BERT-family sequence classifier (:func:`hf_dynamic.slim.make_slimmable`) with ``L`` layers:

1. the first ``k = gate_layers`` encoder layers run **at full width** for the whole batch (every width shares them);
2. the :class:`WidthGate` reads ``f = Σ_t m_t h_t / Σ_t m_t`` (the attention-masked mean of those layers' output
   ``h``) and scores the candidate widths ``w_1 < ... < w_W``: ``s = Linear(f)`` (or a one-hidden-layer MLP); the
   choice is ``argmax_w (s_w − β · c_w)``, ``c_w`` the FLOP fraction of width ``w`` and ``β`` the budget bias set
   by :func:`calibrate_gate`;
3. :class:`DynamicWidthModel` groups the batch by chosen width and runs layers ``k .. L−1``, pooler and classifier
   of each group at its width (a smaller dense computation, :func:`hf_dynamic.slim.width`), scattering the logits
   back into the batch order.

Cost (:func:`width_costs`): ``c_w = F(w) / F(1)``, ``F`` the forward matmul FLOPs at sequence length ``T``
(:func:`hf_dynamic.slim.search.width_flops`, i.e. :func:`hf_dynamic.core.resources.bert_forward_flops`: per layer
``2·T·(4·H·n·d + 2·H·I) + 4·n·T²·d`` with the kept heads ``n`` and FFN channels ``I``, plus pooler and classifier)
with the first ``k`` layers at full width and the others at ``w``. The gate's own ``H·W`` is not counted.

Training (:func:`gate_loss`): ``p = softmax(s)``, ``L = mean_i Σ_w p_iw · (CE_iw + λ · c_w)``, the expected loss
of a width drawn from the gate's policy, with the slimmable weights frozen (:func:`collect_gate_data` +
:func:`train_gate`, on cached per-width losses) or trained jointly (:class:`DynamicWidthModel`'s training-mode
forward returns ``L``, so a stock ``Trainer`` trains it).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers.utils import ModelOutput, logging

from ..core.validation import check_number
from .modeling import _require_slimmable, resolve_widths, slim_layers, width
from .search import width_flops

logger = logging.get_logger(__name__)

__all__ = [
    "WidthGate",
    "DynamicWidthModel",
    "DynamicWidthOutput",
    "GateData",
    "GateCalibration",
    "masked_mean",
    "width_costs",
    "gate_loss",
    "collect_gate_data",
    "train_gate",
    "calibrate_gate",
    "save_gate",
    "load_gate",
]

_GATE_METADATA_KEY = "hf_dynamic_width_gate"


def _check_widths(widths) -> tuple[float, ...]:
    if not isinstance(widths, (list, tuple)) or len(widths) < 2:
        raise ValueError(f"widths must be a list or tuple of at least 2 widths, got {widths!r}")
    for i, w in enumerate(widths):
        check_number(f"widths[{i}]", w, gt=0, le=1)
    if any(b <= a for a, b in zip(widths, widths[1:])):
        raise ValueError(f"widths must be strictly increasing, got {widths!r}")
    return tuple(float(w) for w in widths)


def masked_mean(hidden_states: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """``f = Σ_t m_t h_t / Σ_t m_t`` over the sequence (every token when ``attention_mask`` is ``None``)."""
    if attention_mask is None:
        return hidden_states.mean(1)
    m = attention_mask.to(hidden_states.dtype)[..., None]
    return (hidden_states * m).sum(1) / m.sum(1).clamp_min(1.0)


def _choose(scores: torch.Tensor, costs: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """``argmax_w (s_w − β · c_w)``; ties go to the first (the cheapest) width."""
    return torch.argmax(scores - beta.to(scores.dtype) * costs.to(scores.dtype), dim=-1)


class WidthGate(nn.Module):
    """Scores candidate widths from early features (module docstring; ``docs/slim.md``).

    Args:
        hidden_size: the encoder's hidden size (the feature size).
        widths: the candidate width multipliers, strictly increasing, each in ``(0, 1]``.
        gate_layers: ``k``, the encoder layers that run at full width before the gate (an int ``>= 0``; 0 reads the
            embeddings).
        hidden_dim: 0 for a linear gate ``s = W f + b``; ``> 0`` for ``s = W_2 ReLU(W_1 f + b_1) + b_2``.
        cost_seq_len: the sequence length ``T`` at which :class:`DynamicWidthModel` computes the costs ``c_w`` used
            in training and calibration.

    Buffers (saved with the gate): ``costs`` (``c_w``, NaN until a :class:`DynamicWidthModel` sets them) and
    ``beta`` (the budget bias ``β``, 0 until :func:`calibrate_gate`).
    """

    def __init__(self, hidden_size: int, widths=(0.25, 0.5, 0.75, 1.0), gate_layers: int = 1, hidden_dim: int = 0,
                 cost_seq_len: int = 128):
        check_number("hidden_size", hidden_size, integer=True, ge=1)
        widths = _check_widths(widths)
        check_number("gate_layers", gate_layers, integer=True, ge=0)
        check_number("hidden_dim", hidden_dim, integer=True, ge=0)
        check_number("cost_seq_len", cost_seq_len, integer=True, ge=1)
        super().__init__()
        self.hidden_size, self.widths, self.gate_layers = hidden_size, widths, gate_layers
        self.hidden_dim, self.cost_seq_len = hidden_dim, cost_seq_len
        n = len(widths)
        if hidden_dim:
            self.scorer = nn.Sequential(nn.Linear(hidden_size, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, n))
        else:
            self.scorer = nn.Linear(hidden_size, n)
        self.register_buffer("costs", torch.full((n,), math.nan))
        self.register_buffer("beta", torch.zeros(()))

    def config_dict(self) -> dict:
        """The constructor arguments (stored beside the weights by :func:`save_gate`)."""
        return {"hidden_size": self.hidden_size, "widths": list(self.widths), "gate_layers": self.gate_layers,
                "hidden_dim": self.hidden_dim, "cost_seq_len": self.cost_seq_len}

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """The raw scores ``s`` ``[batch, len(widths)]`` of features ``f`` ``[batch, hidden_size]``."""
        return self.scorer(features)

    def _require_costs(self) -> None:
        if torch.isnan(self.costs).any():
            raise ValueError("the gate has no width costs yet: wrap the model with DynamicWidthModel(model, gate)")

    def choose(self, features: torch.Tensor) -> torch.Tensor:
        """The chosen width index per input: ``argmax_w (s_w − β · c_w)``."""
        self._require_costs()
        return _choose(self(features), self.costs, self.beta)

    def extra_repr(self) -> str:
        return f"widths={self.widths}, gate_layers={self.gate_layers}"


# --- cost ---------------------------------------------------------------------------------------------------------
def width_costs(model: nn.Module, widths, gate_layers: int, seq_len: int) -> torch.Tensor:
    """``c_w`` per candidate width: the forward FLOPs with layers ``< gate_layers`` at full width and the others at
    ``w``, over the full model's, both from :func:`hf_dynamic.slim.search.width_flops` (module docstring;
    ``docs/slim.md``). float64 ``[len(widths)]``."""
    widths = _check_widths(widths)
    check_number("seq_len", seq_len, integer=True, ge=1)
    num_layers = len(slim_layers(model))
    full = width_flops(model, resolve_widths(model, 1.0), seq_len=seq_len)
    return torch.tensor([width_flops(model, resolve_widths(model, {i: w for i in range(gate_layers, num_layers)}),
                                     seq_len=seq_len) / full for w in widths], dtype=torch.float64)


# --- inference ----------------------------------------------------------------------------------------------------
@dataclass
class DynamicWidthOutput(ModelOutput):
    """Output of :class:`DynamicWidthModel`.

    loss: eval — the cross-entropy of ``logits``; training — the gate loss ``L`` (:func:`gate_loss`).
    logits: ``[batch, num_labels]`` in the input order, each row from its chosen width (eval; ``None`` in training).
    width_index: the chosen width's index per input; widths: the chosen width multiplier per input.
    cost: the batch's mean FLOP fraction (eval: of the widths that ran, at this batch's padded length; training:
    the expected cost ``mean_i Σ_w p_iw c_w``). gate_scores: the raw scores ``s``.
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    width_index: torch.Tensor | None = None
    widths: torch.Tensor | None = None
    cost: torch.Tensor | None = None
    gate_scores: torch.Tensor | None = None


class _GivenHiddenStates(nn.Module):
    """Stands in for the embeddings while the tail runs: returns the hidden states the shared layers produced."""

    def __init__(self, hidden_states: torch.Tensor):
        super().__init__()
        self.hidden_states = hidden_states

    def forward(self, *args, **kwargs) -> torch.Tensor:
        return self.hidden_states


class DynamicWidthModel(nn.Module):
    """A slimmable BERT-family sequence classifier with a :class:`WidthGate` (module docstring; ``docs/slim.md``).

    Args:
        model: a ``*ForSequenceClassification`` of the BERT family (BERT, RoBERTa, MiniLM, ...) made slimmable
            (:func:`hf_dynamic.slim.make_slimmable`), with ``num_labels >= 2``.
        gate: a :class:`WidthGate`, or ``None`` to build ``WidthGate(hidden_size, **gate_kwargs)``.
        cost_weight: ``λ`` of the training loss (:func:`gate_loss`), a number ``>= 0``.

    The gate's ``costs`` are set from ``model`` (:func:`width_costs` at ``gate.cost_seq_len``); a gate that carries
    other costs (built for another model) is refused. Eval mode: grouped inference (real compaction). Training mode
    with ``labels``: the gate loss over every width (``len(widths)`` tail passes per batch).

    The layers are run through the model's own ``forward``: the shared layers by calling the base model with only
    the first ``k`` layers in its layer list, the tail by calling the model with its embeddings replaced by the
    shared hidden states and only layers ``k..L−1`` in the list (``nn.Module`` attribute swaps, undone after the
    call; not thread-safe).
    """

    def __init__(self, model: nn.Module, gate: WidthGate | None = None, cost_weight: float = 0.0, **gate_kwargs):
        check_number("cost_weight", cost_weight, ge=0)
        _require_slimmable(model)
        base = getattr(model, "base_model", model)
        encoder = getattr(base, "encoder", None)
        if encoder is None or not hasattr(encoder, "layer") or not hasattr(base, "embeddings"):
            raise TypeError(f"{type(model).__name__}: input-dependent width supports BERT-family encoders "
                            "(base_model.embeddings, base_model.encoder.layer) only")
        num_labels = getattr(model.config, "num_labels", 0)
        if num_labels < 2 or getattr(model.config, "problem_type", None) in ("regression",
                                                                            "multi_label_classification"):
            raise ValueError(f"DynamicWidthModel needs a single-label classifier (num_labels >= 2), got "
                             f"num_labels={num_labels}, problem_type={model.config.problem_type!r}")
        if gate is None:
            gate = WidthGate(model.config.hidden_size, **gate_kwargs)
        elif gate_kwargs:
            raise TypeError(f"gate options {sorted(gate_kwargs)} given together with a gate")
        if not isinstance(gate, WidthGate):
            raise TypeError(f"gate must be a WidthGate, got {type(gate).__name__}")
        num_layers = len(encoder.layer)
        if gate.hidden_size != model.config.hidden_size:
            raise ValueError(f"gate.hidden_size={gate.hidden_size} differs from the model's hidden_size "
                             f"{model.config.hidden_size}")
        if gate.gate_layers >= num_layers:
            raise ValueError(f"gate_layers={gate.gate_layers} leaves no layer to slim (the model has {num_layers})")
        costs = width_costs(model, gate.widths, gate.gate_layers, gate.cost_seq_len)
        if torch.any(costs[1:] <= costs[:-1]):
            raise ValueError(f"widths={gate.widths} do not all keep different numbers of units (costs "
                             f"{[round(c, 4) for c in costs.tolist()]}): choose widths further apart")
        if not torch.isnan(gate.costs).any() and not torch.allclose(gate.costs.double(), costs, atol=1e-6):
            raise ValueError(f"the gate's costs {gate.costs.tolist()} differ from this model's {costs.tolist()}: the "
                             "gate was built for another model")
        super().__init__()
        self.model, self.gate, self.cost_weight = model, gate, float(cost_weight)
        with torch.no_grad():
            gate.costs.copy_(costs)

    @property
    def config(self):
        return self.model.config

    @contextlib.contextmanager
    def _layers(self, start: int, stop: int, hidden_states: torch.Tensor | None = None):
        """The base model runs only layers ``start..stop-1``; with ``hidden_states`` they replace the embeddings."""
        base = self.model.base_model
        layers, embeddings, pooler = base.encoder.layer, base.embeddings, getattr(base, "pooler", None)
        try:
            base.encoder.layer = nn.ModuleList(layers[start:stop])
            if hidden_states is not None:
                base.embeddings = _GivenHiddenStates(hidden_states)
            elif pooler is not None:
                base.pooler = None
            yield
        finally:
            base.encoder.layer, base.embeddings = layers, embeddings
            if pooler is not None:
                base.pooler = pooler

    def _inputs(self, input_ids, attention_mask, token_type_ids, index=None):
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        inputs = {k: v for k, v in inputs.items() if v is not None}
        return inputs if index is None else {k: v[index] for k, v in inputs.items()}

    def shared(self, input_ids, attention_mask=None, token_type_ids=None):
        """The first ``k`` layers at full width for the whole batch: ``(hidden states h_k, gate features f)``."""
        k = self.gate.gate_layers
        with width(self.model, 1.0), self._layers(0, k):
            hidden = self.model.base_model(**self._inputs(input_ids, attention_mask, token_type_ids)).last_hidden_state
        return hidden, masked_mean(hidden, attention_mask)

    def tail_logits(self, hidden, width_multiplier: float, input_ids, attention_mask=None, token_type_ids=None):
        """Layers ``k..L−1``, pooler and classifier at ``width_multiplier`` on ``hidden`` (from :meth:`shared`)."""
        k, n = self.gate.gate_layers, len(self.model.base_model.encoder.layer)
        with width(self.model, {i: width_multiplier for i in range(k, n)}), self._layers(k, n, hidden):
            return self.model(**self._inputs(input_ids, attention_mask, token_type_ids)).logits

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None) -> DynamicWidthOutput:
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
            raise ValueError(f"input_ids must be a [batch, sequence] tensor, got {type(input_ids).__name__}"
                             + (f" of shape {tuple(input_ids.shape)}" if isinstance(input_ids, torch.Tensor) else ""))
        for name, value in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids)):
            if value is not None and value.shape != input_ids.shape:
                raise ValueError(f"{name} has shape {tuple(value.shape)}, input_ids {tuple(input_ids.shape)}")
        hidden, features = self.shared(input_ids, attention_mask, token_type_ids)
        scores = self.gate(features)
        costs = self.gate.costs
        if self.training and labels is not None:
            per_width = torch.stack([F.cross_entropy(self.tail_logits(hidden, w, input_ids, attention_mask,
                                                                      token_type_ids), labels, reduction="none")
                                     for w in self.gate.widths], dim=1)
            loss = gate_loss(scores, per_width, costs, self.cost_weight)
            p = scores.softmax(-1)
            index = p.argmax(-1)
            return DynamicWidthOutput(loss=loss, width_index=index, widths=self._widths_tensor()[index],
                                      cost=(p * costs.to(p.dtype)).sum(-1).mean(), gate_scores=scores)
        index = _choose(scores, costs, self.gate.beta)
        logits = None
        for j, w in enumerate(self.gate.widths):
            rows = (index == j).nonzero().squeeze(1)
            if rows.numel() == 0:
                continue
            group = self.tail_logits(hidden[rows], w, **self._inputs(input_ids, attention_mask, token_type_ids, rows))
            if logits is None:
                logits = group.new_empty(input_ids.shape[0], group.shape[-1])
            logits[rows] = group
        loss = None if labels is None else F.cross_entropy(logits, labels)
        batch_costs = width_costs(self.model, self.gate.widths, self.gate.gate_layers, input_ids.shape[1])
        return DynamicWidthOutput(loss=loss, logits=logits, width_index=index, widths=self._widths_tensor()[index],
                                  cost=batch_costs.to(index.device)[index].mean(), gate_scores=scores)

    def _widths_tensor(self) -> torch.Tensor:
        return torch.tensor(self.gate.widths, dtype=torch.float64, device=self.gate.costs.device)

    def calibrate(self, dataloader, budget: float) -> "GateCalibration":
        """:func:`calibrate_gate` on the features of a held-out ``dataloader`` (the caller carves it from the
        training data); sets ``self.gate.beta``."""
        check_number("budget", budget, gt=0, le=1)
        return calibrate_gate(self.gate, collect_gate_data(self, dataloader).features, budget)


# --- training -----------------------------------------------------------------------------------------------------
def gate_loss(scores: torch.Tensor, per_width_loss: torch.Tensor, costs: torch.Tensor,
              cost_weight: float) -> torch.Tensor:
    """``L = mean_i Σ_w p_iw · (CE_iw + λ · c_w)`` with ``p_i = softmax(s_i)`` (``docs/slim.md``): the expected loss
    of a width drawn from the gate's policy. ``scores``, ``per_width_loss``: ``[batch, W]``; ``costs``: ``[W]``."""
    p = scores.softmax(-1)
    return (p * (per_width_loss + cost_weight * costs.to(p.dtype))).sum(-1).mean()


@dataclass
class GateData:
    """Per held-in example: the gate's features ``[n, H]`` and, when labels were given, the cross-entropy at every
    candidate width ``[n, W]`` (``None`` otherwise)."""

    features: torch.Tensor
    per_width_loss: torch.Tensor | None


_MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@torch.no_grad()
def collect_gate_data(dynamic: DynamicWidthModel, dataloader) -> GateData:
    """One eval-mode pass over ``dataloader`` (dicts of tensors): features, and per-width losses where the batches
    have ``labels`` (all or none of them), on the CPU. The weights are not changed (frozen-weight gate training)."""
    was_training = dynamic.training
    dynamic.eval()
    device = dynamic.gate.costs.device
    features, losses = [], []
    try:
        for batch in dataloader:
            inputs = {k: batch[k].to(device) for k in _MODEL_INPUTS if batch.get(k) is not None}
            hidden, f = dynamic.shared(**inputs)
            features.append(f.float().cpu())
            if batch.get("labels") is not None:
                labels = batch["labels"].to(device)
                losses.append(torch.stack([F.cross_entropy(dynamic.tail_logits(hidden, w, **inputs).float(), labels,
                                                           reduction="none") for w in dynamic.gate.widths], 1).cpu())
    finally:
        dynamic.train(was_training)
    if not features:
        raise ValueError("dataloader yielded no batches")
    if losses and len(losses) != len(features):
        raise ValueError("some batches have labels and some have not")
    return GateData(torch.cat(features), torch.cat(losses) if losses else None)


def train_gate(gate: WidthGate, data: GateData, cost_weight: float, epochs: int = 50, lr: float = 1e-2,
               batch_size: int = 64, seed: int = 0) -> list[float]:
    """Train ``gate`` on cached ``data`` (:func:`collect_gate_data`) by Adam on :func:`gate_loss` with ``λ =
    cost_weight``; minibatches shuffled by a generator seeded with ``seed`` (the run is deterministic). Returns the
    mean loss of every epoch. The slimmable model is not involved: its weights are frozen by construction."""
    check_number("cost_weight", cost_weight, ge=0)
    check_number("epochs", epochs, integer=True, ge=1)
    check_number("lr", lr, gt=0)
    check_number("batch_size", batch_size, integer=True, ge=1)
    check_number("seed", seed, integer=True)
    if data.per_width_loss is None:
        raise ValueError("train_gate needs per-width losses: collect the data from batches with labels")
    gate._require_costs()
    device = gate.costs.device
    features, losses = data.features.to(device), data.per_width_loss.to(device)
    optimizer = torch.optim.Adam(gate.scorer.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    history = []
    was_training = gate.training
    gate.train()
    try:
        for _ in range(epochs):
            order, total = torch.randperm(len(features), generator=generator), 0.0
            for rows in order.split(batch_size):
                loss = gate_loss(gate(features[rows]), losses[rows], gate.costs, cost_weight)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(rows)
            history.append(total / len(features))
    finally:
        gate.train(was_training)
    return history


# --- budget calibration -------------------------------------------------------------------------------------------
@dataclass
class GateCalibration:
    """Result of :func:`calibrate_gate`: ``beta`` (stored in ``gate.beta``), the target ``budget``, the mean cost
    the choices give on the calibration split (``<= budget``) and how many of its inputs chose each width."""

    beta: float
    budget: float
    calibration_cost: float
    width_counts: list


@torch.no_grad()
def calibrate_gate(gate: WidthGate, features: torch.Tensor, budget: float) -> GateCalibration:
    """Set ``gate.beta`` so that the mean cost of ``argmax_w (s_w − β c_w)`` over ``features`` (a held-out split)
    is at most ``budget``, as close to it as the split allows (``docs/slim.md``).

    Each input's chosen cost is non-increasing in ``β`` (for ``β_1 < β_2`` the choices satisfy
    ``(β_2 − β_1)(c_{w_1} − c_{w_2}) ≥ 0``), so the mean cost ``C(β)`` is a non-increasing step function and the
    smallest ``β`` with ``C(β) ≤ budget`` is found by bisection between a ``β`` that picks the widest width for every
    input and one that picks the narrowest (``|β| > (max score spread) / (min cost gap)``). The decisions are
    evaluated with ``β`` in the gate's own dtype, so the stored value reproduces them exactly. ``budget``: in
    ``[c_1, 1]`` (the narrowest width's cost up to the full model).
    """
    gate._require_costs()
    costs = gate.costs
    check_number("budget", budget, gt=0, le=1)
    if budget < float(costs[0]) - 1e-12:
        raise ValueError(f"budget={budget} is below the narrowest width's cost {float(costs[0]):.4f}")
    if not isinstance(features, torch.Tensor) or features.dim() != 2 or features.shape[1] != gate.hidden_size \
            or features.shape[0] == 0:
        raise ValueError(f"features must be a non-empty [n, {gate.hidden_size}] tensor, got "
                         f"{tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__}")
    scores = gate(features.to(costs.device, gate.beta.dtype))
    cost_of = costs.double()

    def mean_cost(beta: float) -> float:
        return float(cost_of[_choose(scores, costs, torch.tensor(beta, dtype=gate.beta.dtype))].mean())

    spread = float((scores.max(1).values - scores.min(1).values).max())
    gap = float((cost_of[1:] - cost_of[:-1]).min())
    bound = 2.0 * (spread / gap + 1.0)
    lo, hi = -bound, bound  # C(lo) = widest cost; C(hi) = narrowest cost <= budget
    if mean_cost(lo) <= budget:
        hi = lo
    else:
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            if mid in (lo, hi):
                break
            if mean_cost(mid) <= budget:
                hi = mid
            else:
                lo = mid
    gate.beta.fill_(hi)
    index = _choose(scores, costs, gate.beta)
    result = GateCalibration(beta=float(gate.beta), budget=float(budget),
                             calibration_cost=float(cost_of[index].mean()),
                             width_counts=torch.bincount(index, minlength=len(gate.widths)).tolist())
    logger.info(f"calibrated the width gate for budget {budget}: beta={result.beta:.6g}, cost on the calibration "
                f"split {result.calibration_cost:.4f}, width counts {result.width_counts}")
    return result


# --- save / load --------------------------------------------------------------------------------------------------
def save_gate(gate: WidthGate, path: str) -> str:
    """Write ``gate`` (weights, ``costs``, ``beta`` and its constructor arguments as safetensors metadata) to the
    safetensors file ``path`` atomically (a temporary file renamed over ``path``). Returns ``path``."""
    if not isinstance(gate, WidthGate):
        raise TypeError(f"gate must be a WidthGate, got {type(gate).__name__}")
    tensors = {k: v.detach().cpu().contiguous() for k, v in gate.state_dict().items()}
    temporary = f"{path}.tmp"
    save_file(tensors, temporary, metadata={"format": "pt", _GATE_METADATA_KEY: json.dumps(gate.config_dict())})
    os.replace(temporary, path)
    return path


def load_gate(path: str) -> WidthGate:
    """The :class:`WidthGate` saved by :func:`save_gate` at ``path`` (exact round trip)."""
    from safetensors import safe_open

    with safe_open(path, framework="pt") as handle:
        metadata = handle.metadata() or {}
    if _GATE_METADATA_KEY not in metadata:
        raise ValueError(f"{path} is not a width gate saved by save_gate (no {_GATE_METADATA_KEY!r} metadata)")
    gate = WidthGate(**json.loads(metadata[_GATE_METADATA_KEY]))
    gate.load_state_dict(load_file(path))
    return gate
