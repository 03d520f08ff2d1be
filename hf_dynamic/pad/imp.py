"""Iterative Mode Partition (IMP), PAD-Net's choice of which entries are dynamic (``docs/pad.md``, "## Iterative
Mode Partition").

Before training, on a few mini-batches: relax the mask ``M`` to continuous values, score every entry, keep the
top fraction as dynamic and make the rest static; repeat ``T`` times with the kept fraction decaying as
``κ^((t+1)/T)`` (t = 0..T−1), so the final mask keeps exactly ``round(κ·m)`` of the ``m`` entries (jointly over the
layers with ``scope="global"``, per layer with ``scope="layer"``). Entries made static stay static.

Scores (:mod:`hf_dynamic.core.importance`): SNIP ``|dL/dM|`` (the paper), or, when the experts are still copies of
the static weight (an upcycled model, where ``dL/dM`` is identically zero), the cross-expert gradient variance.
``score="auto"`` picks the latter exactly in that case. Gradients are summed over the batches (full-batch
gradient) and, under ``torch.distributed``, summed over the ranks; the masks are then broadcast from rank 0, so
every rank ends with identical masks.

:func:`finalize_partition` then drops the redundant entries (compact storage, see :mod:`hf_dynamic.pad.layouts`).
:class:`IMPCallback` runs IMP inside ``Trainer`` on the Trainer's own training dataloader.

IMP works on every module of the model that implements the partially dynamic layer interface
(:class:`~hf_dynamic.pad.interface.PartiallyDynamicLayer`), through its public methods only; it knows nothing of
the model, nor of how a layer stores its weights.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import torch
from transformers import TrainerCallback
from transformers.utils import logging

from ..core.checkpoints import check_optimizer_state_shapes
from ..core.importance import normalize_scores
from ..core.masks import count_to_keep, topk_mask, topk_masks
from ..core.validation import check_choice, check_number
from ..core.zero import is_zero3_partitioned
from .interface import PartiallyDynamicLayer

logger = logging.get_logger(__name__)

SCOPES = ("global", "layer")
SCORES = ("auto", "snip", "grad_variance")


def pad_layers(model) -> list[PartiallyDynamicLayer]:
    """The partially dynamic layers of ``model`` (PAD/MoE FFNs, ...) in depth order."""
    return [m for m in model.modules() if isinstance(m, PartiallyDynamicLayer)]


def _check_imp_arguments(model, dynamic_ratio, iterations, num_batches, scope, score) -> float:
    layers = pad_layers(model)
    config = model.config
    if not layers:
        raise ValueError(f"{type(model).__name__} has no partially dynamic layers (PAD-Net MoE FFNs or convolutions), "
                         f"so nothing to partition: config.dynamic_ratio={getattr(config, 'dynamic_ratio', None)}")
    if not all(layer.partitionable for layer in layers):
        raise ValueError(f"{type(model).__name__} has nothing to partition (every entry dynamic, a plain MoE): "
                         f"config.dynamic_ratio={config.dynamic_ratio}")
    state = getattr(config, "pad_state", None)
    if state != "unpartitioned":
        raise ValueError(f"IMP runs once, on an unpartitioned model; this model has pad_state={state!r}")
    if dynamic_ratio is not None:
        check_number("dynamic_ratio", dynamic_ratio, gt=0, lt=1)  # κ = 1 has nothing to partition
    check_number("iterations", iterations, integer=True, ge=1)
    check_number("num_batches", num_batches, integer=True, ge=1)
    check_choice("scope", scope, SCOPES)
    check_choice("score", score, SCORES)
    return float(config.dynamic_ratio if dynamic_ratio is None else dynamic_ratio)


def _distributed():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1 else None


def _all_reduce_sum_(tensors: list[torch.Tensor]) -> None:
    dist = _distributed()
    if dist is not None:
        for tensor in tensors:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)


def _broadcast_masks_(masks: list[torch.Tensor]) -> list[torch.Tensor]:
    dist = _distributed()
    if dist is None:
        return masks
    out = []
    for mask in masks:
        as_bytes = mask.to(torch.uint8)
        dist.broadcast(as_bytes, src=0)
        out.append(as_bytes.bool())
    return out


def _to_device(batch, device):
    if not isinstance(batch, Mapping):
        raise ValueError(f"IMP batches must be mappings of tensors (as a DataLoader with a collator yields), got "
                         f"{type(batch).__name__}")
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def _score_iteration(model, layers, dataloader, num_batches: int, kind: str, device) -> tuple[list, int]:
    """Accumulate one IMP iteration's gradients over ``num_batches`` batches; return per-layer scores."""
    for layer in layers:
        layer.imp_begin()
    seen = 0
    for batch in dataloader:
        outputs = model(**_to_device(batch, device))
        loss = outputs.loss if hasattr(outputs, "loss") else None
        if loss is None:
            raise ValueError("IMP needs the model to return a loss: batches must contain labels")
        inputs = [layer.imp_inputs() for layer in layers]
        flat = [t for ts in inputs for t in ts]
        if not loss.requires_grad:
            raise ValueError("IMP needs gradients: the loss does not require grad (is the model run under "
                             "torch.no_grad() / inference_mode, or are its PAD layers outside the loss?)")
        # A tensor computed from frozen weights only (PEFT freezes the base model; neuron mode's static b_down)
        # has no gradient path: it gets zeros, which its score ignores.
        found = iter(torch.autograd.grad(loss, [t for t in flat if t.requires_grad], allow_unused=True))
        grads = iter([next(found) if t.requires_grad else None for t in flat])
        for layer, tensors in zip(layers, inputs):
            layer.imp_accumulate([torch.zeros_like(t) if g is None else g for t, g in zip(tensors, grads)])
        seen += 1
        if seen >= num_batches:  # stop before fetching a batch that would go unused
            break
    if seen == 0:
        raise ValueError("the IMP dataloader yielded no batches")
    # Sum the gradients over ranks before scoring (|.| and the variance are not additive over ranks).
    _all_reduce_sum_([g for layer in layers for g in layer.imp_gradients(kind)])
    return [layer.imp_scores(kind) for layer in layers], seen


def iterative_mode_partition(model, dataloader, dynamic_ratio: float | None = None, iterations: int = 2,
                             num_batches: int = 8, scope: str = "global", score: str = "auto",
                             finalize: bool = True) -> dict:
    """Run PAD-Net's Iterative Mode Partition on ``model`` (unpartitioned: a PartialMoEBert, a DynamicResNet, any
    model with partially dynamic layers) and fix its masks.

    Args:
        dataloader: any iterable of batches (dicts of tensors with labels); ``num_batches`` are used per iteration.
        dynamic_ratio: κ ∈ (0, 1); default ``model.config.dynamic_ratio`` (which is updated to it).
        iterations: T, the number of score/prune rounds (kept fraction ``κ^((t+1)/T)``).
        scope: ``"global"`` (one top-k over every layer's entries) or ``"layer"`` (exactly κ in each layer).
        score: ``"snip"``, ``"grad_variance"`` or ``"auto"`` (gradient variance iff some layer's experts are still
            identical to its static weight, i.e. SNIP is identically zero).
        finalize: drop the redundant entries afterwards (:func:`finalize_partition`).

    Scoring runs in eval mode (no dropout, no router noise), so the masks are a deterministic function of the
    model and the batches. On a freshly upcycled model (experts identical to the static weight) the gradients do
    not depend on the mask, so the batches are scored once and reused by every iteration. Returns a summary
    (score used, batches, scored iterations, kept fraction per layer, seconds).
    Raises ValueError, before any work, on a plain MoE (κ = 1), a model already partitioned or finalised, or bad
    arguments.
    """
    kappa = _check_imp_arguments(model, dynamic_ratio, iterations, num_batches, scope, score)
    if finalize:
        _refuse_adapted_parameters(model)
    layers = pad_layers(model)
    kind = score
    if kind == "auto":
        kind = "grad_variance" if any(layer.experts_tied() for layer in layers) else "snip"
    start = time.perf_counter()
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    batches = 0
    schedule, kept_counts = [], []
    # While every layer's experts are copies of its static weight (λ_s = λ_d = 1), the merged weights, hence the
    # loss and its gradients, do not depend on M: every iteration would see the same scores, so they are computed
    # once (T iterations then cost one, and equal T = 1's one-shot top-κ).
    reuse = kind == "grad_variance" and all(layer.experts_tied() for layer in layers)
    scored = 0
    try:
        for t in range(iterations):
            keep = kappa ** ((t + 1) / iterations)
            if t == 0 or not reuse:
                raw_scores, batches = _score_iteration(model, layers, dataloader, num_batches, kind, device)
                raw_scores = normalize_scores(raw_scores)
                scored += 1
            current = [layer.partition_mask().to(s.device) for layer, s in zip(layers, raw_scores)]
            scores = [s.masked_fill(~m, float("-inf")) for s, m in zip(raw_scores, current)]
            if scope == "global":
                masks = topk_masks(scores, count_to_keep(keep, sum(s.numel() for s in scores)))
            else:
                masks = [topk_mask(s, count_to_keep(keep, s.numel())) for s in scores]
            masks = _broadcast_masks_(masks)
            for layer, mask in zip(layers, masks):
                layer.set_partition_mask(mask)
            schedule.append(keep)
            kept_counts.append(sum(int(m.sum()) for m in masks))
            for layer in layers:
                layer.imp_end()
    finally:
        for layer in layers:
            layer.imp_end()
        model.train(was_training)
    model.config.dynamic_ratio = kappa
    model.config.pad_state = "partitioned"
    summary = {
        "score": kind,
        "dynamic_ratio": kappa,
        "iterations": iterations,
        "batches_per_iteration": batches,
        "scored_iterations": scored,
        "scope": scope,
        "schedule": schedule,
        "kept_counts": kept_counts,
        "num_entries": sum(layer.num_partition_entries for layer in layers),
        "kept_per_layer": {str(layer.layer_idx): float(layer.partition_mask().float().mean())
                           for layer in layers},
        "seconds": time.perf_counter() - start,
    }
    logger.info("IMP done: %s", summary)
    if finalize:
        finalize_partition(model)
    return summary


def _adapted_pad_parameters(model) -> list[str]:
    """``module.parameter`` names of PAD layers that a parameter adapter wraps (PEFT's ``ParamWrapper``: a module
    with ``parameter_name`` whose ``get_base_layer()`` is a partially dynamic layer)."""
    found = []
    for name, module in model.named_modules():
        parameter = getattr(module, "parameter_name", None)
        base = getattr(module, "base_layer", None)
        while base is not None and not isinstance(base, PartiallyDynamicLayer):
            base = getattr(base, "base_layer", None)
        if parameter is not None and base is not None:
            found.append(f"{name}.{parameter}")
    return found


def _refuse_adapted_parameters(model) -> None:
    """ValueError when finalising would break parameter adapters attached to PAD expert weights."""
    adapted = _adapted_pad_parameters(model)
    if adapted:
        raise ValueError(
            f"finalize_partition changes the shapes of the PAD expert parameters, but adapters (PEFT "
            f"target_parameters) are attached to {adapted[:4]}: run IMP and finalize_partition before wrapping the "
            "model with PEFT, or keep the partitioned layout (iterative_mode_partition(..., finalize=False), "
            "IMPCallback(finalize_at='never'))")


def finalize_partition(model) -> dict:
    """Make a partitioned model compact: static entries stored once where ``M = 0``, dynamic ones where ``M = 1``
    (bit-packed mask in element mode; static/dynamic neuron split in neuron mode). Records the per-layer counts in
    ``config.pad_partition`` and sets ``config.pad_state = "finalized"``; returns the counts."""
    state = getattr(model.config, "pad_state", None)
    if state != "partitioned":
        raise ValueError(f"finalize_partition needs a partitioned model (run IMP first); pad_state={state!r}")
    _refuse_adapted_parameters(model)
    counts = {str(layer.layer_idx): layer.finalize_() for layer in pad_layers(model)}
    model.config.pad_partition = counts
    model.config.pad_state = "finalized"
    return counts


def model_pad_state(model) -> str | None:
    """``model.config.pad_state``, corrected to ``"partitioned"`` (in the config too) when it says
    ``"unpartitioned"`` but a layer's mask already has static entries (masks loaded into an unpartitioned model):
    IMP never runs on a model that has masks."""
    config = model.config
    state = getattr(config, "pad_state", None)
    if state == "unpartitioned" and any(
            layer.partitionable and not bool(layer.partition_mask().all()) for layer in pad_layers(model)):
        logger.warning("the model's masks are already partitioned although its config says 'unpartitioned'; "
                       "pad_state set to 'partitioned'")
        config.pad_state = state = "partitioned"
    return state


FINALIZE_AT = ("auto", "train_begin", "train_end", "never")


class IMPCallback(TrainerCallback):
    """Run :func:`iterative_mode_partition` at ``on_train_begin`` on the Trainer's own training dataloader.

    IMP sets the masks in place. ``finalize_at`` says when the model becomes compact:

    - ``"train_begin"``: right after IMP, before the first optimiser step. Parameters keep their identity (only
      their ``.data`` shrinks) and the optimiser has no state yet, so training runs on the compact, faster layout.
      Not possible once a wrapper has flattened or bucketed the parameters (DDP, DeepSpeed, FSDP).
    - ``"train_end"``: train on the partitioned (masked, full-storage) layout, compact at ``on_train_end``.
    - ``"auto"`` (default): ``"train_begin"`` in a single process without DeepSpeed/FSDP, else ``"train_end"``.
    - ``"never"``: keep the partitioned layout.

    Every rank of a distributed run computes the same masks. The IMP summary (with its wall time) is kept in
    :attr:`summary`.
    """

    def __init__(self, dynamic_ratio: float | None = None, iterations: int = 2, num_batches: int = 8,
                 scope: str = "global", score: str = "auto", finalize_at: str = "auto"):
        check_choice("scope", scope, SCOPES)
        check_choice("score", score, SCORES)
        check_choice("finalize_at", finalize_at, FINALIZE_AT)
        self.kwargs = dict(dynamic_ratio=dynamic_ratio, iterations=iterations, num_batches=num_batches,
                           scope=scope, score=score)
        self.finalize_at = finalize_at
        self.summary: dict | None = None

    def _resolved_finalize_at(self, args) -> str:
        if self.finalize_at != "auto":
            return self.finalize_at
        wrapped = _distributed() is not None or getattr(args, "deepspeed", None) or getattr(args, "fsdp", None)
        return "train_end" if wrapped else "train_begin"

    def on_train_begin(self, args, state, control, model=None, train_dataloader=None, optimizer=None, **kwargs):
        if model is None or train_dataloader is None:
            raise ValueError("IMPCallback needs the Trainer's model and train_dataloader")
        if optimizer is not None and state.global_step > 0 and not getattr(args, "deepspeed", None):
            check_optimizer_state_shapes(optimizer, model)  # a resumed optimizer state of another layout
        pad_state = model_pad_state(model)
        if pad_state != "unpartitioned":
            # a resumed run (or a partitioned model): the masks are the checkpoint's, IMP must not overwrite them
            log = logger.info if state.global_step > 0 else logger.warning
            log("IMPCallback: the model is already %s; IMP is not run again", pad_state)
            return
        self.summary = iterative_mode_partition(model, train_dataloader, finalize=False, **self.kwargs)
        self.summary["finalize_at"] = self._resolved_finalize_at(args)
        if self.summary["finalize_at"] == "train_begin":
            finalize_partition(model)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self._resolved_finalize_at(args) == "never" or model is None:
            return
        if getattr(model.config, "pad_state", None) == "partitioned":
            if is_zero3_partitioned(model.parameters()):
                # ZeRO-3 owns the parameters (shards; its engine saves them by ds_id): they cannot shrink in place
                logger.warning("IMPCallback: under DeepSpeed ZeRO-3 the model stays in the partitioned (masked) "
                               "layout; save it, load it with from_pretrained and call finalize_partition(model)")
                return
            finalize_partition(model)
