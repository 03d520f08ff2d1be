"""DMS search over a Llama-family causal LM (``docs/dms.md``, "## Search and export"; Liu et al., ICML 2024,
arXiv 2405.07194).

:class:`DMSPruner` attaches differentiable top-k masks (:class:`hf_dynamic.core.topk.DifferentiableTopK`) to a
``LlamaForCausalLM``, ``MistralForCausalLM``, ``Qwen2ForCausalLM`` or ``Qwen3ForCausalLM`` (module paths from
:mod:`hf_dynamic.dms.adapters`) through forward hooks; the model object stays a stock
transformers model (its ``state_dict``, ``generate``, PEFT wrapping and gradient checkpointing are unchanged). The
masks are computed once per forward (a pre-hook on the decoder stack) and applied as follows:

================  ==========================================  =================================================
kind              element                                      where the mask multiplies
================  ==========================================  =================================================
``"heads"``       ``head_grouping="kv"`` (default): a KV head  the input of ``o_proj`` (each head's ``head_dim``
                  with its whole query group (GQA);            slice)
                  ``"query"``: a query-head slot inside every
                  KV group (each group keeps the same number)
``"mlp"``         an MLP intermediate channel                  the input of ``down_proj``
``"hidden"``      a channel of the residual stream (shared by  the embedding output and the output of every
                  every layer)                                 ``o_proj`` / ``down_proj`` (residual branches)
``"layers"``      ``uniform=True``: a whole decoder layer;     the output of ``o_proj`` / ``down_proj``, i.e. the
                  ``uniform=False``: an attention or MLP       residual branch: ``y = x + m_block · f(x)``
                  sub-block
================  ==========================================  =================================================

With ``uniform=True`` each kind has one keep ratio shared by every layer (every layer keeps the same number of
heads / channels, each choosing *which* by its own importance), so the result is a stock ``LlamaForCausalLM``;
``uniform=False`` gives each layer its own ratios (exported by
``hf_dynamic.DMSLlamaForCausalLM.from_pruned(pruner)`` as our ``dms_llama`` model type). Because
``LlamaConfig`` requires ``hidden_size % num_attention_heads == 0``, in uniform mode the *hard* hidden mask keeps
the nearest multiple of the kept query-head count (the hard-masked model and the export agree exactly).

Taylor importance accumulates by itself on every backward pass (tensor hooks on the masks); the resource loss
``L_res = w · log(R(e) / R_target)`` (when ``R > R_target``) is :meth:`DMSPruner.resource_loss`; in a plain loop add
it to the task loss yourself (or call :meth:`DMSPruner.add_resource_loss`). Under ``Trainer`` use
:class:`hf_dynamic.dms.trainer.DMSTrainer` (its ``compute_loss`` adds the resource loss) with
:class:`hf_dynamic.dms.callback.DMSCallback` (target ramp, keep-ratio learning rate, logging).

The pruner is the one holder of the resource target (``target``, the final fraction, and ``current_target``, the
ramped value the loss uses): the callback ramps it and the export reads it (:mod:`hf_dynamic.dms.target`, which
also holds :meth:`DMSPruner.meet_target`'s algorithm); the slicing into a smaller model is
:mod:`hf_dynamic.dms.export`. One pruner at a time may be attached to a model.
"""

from __future__ import annotations

import contextlib
import functools
import math
import weakref

import torch
from torch import nn
from transformers.utils import logging

from ..core.resources import count_parameters, llama_forward_flops, llama_param_count
from ..core.topk import DifferentiableTopK, apply_mask
from ..core.validation import check_bool, check_choice, check_number
from . import target as _target
from .adapters import ADAPTERS, adapter_for
from .export import HardStructure, export_uniform, hard_structure, searched_structure

logger = logging.get_logger(__name__)

__all__ = ["DMSPruner", "HardStructure", "ELEMENT_KINDS", "SUPPORTED_MODEL_TYPES"]

ELEMENT_KINDS = ("heads", "mlp", "hidden", "layers")
SUPPORTED_MODEL_TYPES = tuple(ADAPTERS)
RESOURCES = ("params", "flops")
HEAD_GROUPINGS = ("kv", "query")
# The paper's temperatures λ (docs/dms.md, "## Differentiable top-k"): 1 for channels, 4 for heads and blocks.
DEFAULT_TEMPERATURES = {"heads": 4.0, "mlp": 1.0, "hidden": 1.0, "layers": 4.0}


# The pruner attached to each model (its hooks keep it alive): a second one would stack its masks on the first's.
_ATTACHED = weakref.WeakKeyDictionary()


class DMSPruner(nn.Module):
    """Differentiable width/depth search (DMS, ``docs/dms.md``) over a Llama-family ``*ForCausalLM``.

    Args:
        model: a ``LlamaForCausalLM``, ``MistralForCausalLM``, ``Qwen2ForCausalLM`` or ``Qwen3ForCausalLM`` (see
            :data:`hf_dynamic.dms.adapters.ADAPTERS`); hooks are attached to it in place.
        target: final resource as a fraction of the whole model's count, in (0, 1). The pruner is its one holder
            (:attr:`target`): ``DMSCallback`` ramps towards it, :meth:`meet_target` and the export read it.
        prune: element kinds to search, a subset of ``("heads", "mlp", "hidden", "layers")``.
        resource: ``"params"`` (parameter count) or ``"flops"`` (matmul FLOPs of a ``flops_seq_len`` forward).
        uniform: tie each kind's keep ratio across layers (stock ``*ForCausalLM`` export) or not (``dms_llama``,
            built by ``DMSLlamaForCausalLM.from_pruned``).
        head_grouping: ``"kv"`` (a KV head and its query group are one element) or ``"query"`` (query heads within
            each KV group, every group keeping the same number; KV heads are all kept).
        resource_weight: ``w`` of the resource loss (initial value when adapted).
        resource_weight_adapt: ``0`` keeps ``w`` fixed (the paper). ``r > 0`` turns ``w`` into a multiplier that
            :meth:`adapt_resource_weight_` (called by ``DMSCallback`` after every step) multiplies by ``1 + r`` while
            ``R(e) > R_target`` and divides by ``1 + r`` otherwise. Why: the task gradient w.r.t. a keep ratio grows
            as the model shrinks (measured on SmolLM2-135M at e = 0.6: ~2 for MLP, ~23 for hidden, ~100 for layers,
            against ~1 for the resource term at w = 1), so a fixed ``w`` that is too small never reaches the target
            and one that is too large shrinks every kind alike (Adam normalises step sizes). An adapted ``w`` settles
            where each kind's marginal task cost per unit of resource is equal (a Lagrange multiplier).
        temperatures: per-kind ``λ`` overriding :data:`DEFAULT_TEMPERATURES`.
        flops_seq_len: sequence length of the FLOP count when ``resource="flops"``.
        channel_multiple: the hard masks keep a multiple of this many MLP channels and hidden channels (nearest
            multiple; e.g. 8 or 64 for GPU-friendly matmul shapes). 1 = the plain hard mask ``m ≥ 0.5``. It must
            leave every searched channel kind at least two kept counts (``≤ intermediate_size // 2``, ``≤ hidden_size
            // 2``), else that kind could not move.

    Every argument is checked before anything is attached (a ``ValueError`` naming the field and value: NaN, a
    string for a number or a bool, an unknown choice), and a model that already carries an attached pruner is
    refused (their masks would multiply); call the other pruner's :meth:`remove` first.
    """

    def __init__(
        self,
        model: nn.Module,
        target: float,
        prune=ELEMENT_KINDS,
        resource: str = "params",
        uniform: bool = True,
        head_grouping: str = "kv",
        resource_weight: float = 1.0,
        temperatures: dict | None = None,
        flops_seq_len: int = 2048,
        resource_weight_adapt: float = 0.0,
        channel_multiple: int = 1,
    ):
        super().__init__()
        target = _target.check_target("target", target)
        if isinstance(prune, str):
            prune = (prune,)
        if not isinstance(prune, (tuple, list, set, frozenset)):
            raise TypeError(f"prune must be an element kind or a sequence of them {ELEMENT_KINDS}, got {prune!r}")
        prune = tuple(prune)
        unknown = [k for k in prune if k not in ELEMENT_KINDS]
        if unknown or not prune:
            raise ValueError(f"prune: unknown element kind(s) {unknown or prune!r}; choose from {ELEMENT_KINDS}")
        check_choice("resource", resource, RESOURCES)
        check_bool("uniform", uniform)
        check_choice("head_grouping", head_grouping, HEAD_GROUPINGS)
        check_number("resource_weight", resource_weight, gt=0)
        check_number("resource_weight_adapt", resource_weight_adapt, ge=0)
        check_number("flops_seq_len", flops_seq_len, integer=True, ge=1)
        check_number("channel_multiple", channel_multiple, integer=True, ge=1)
        if temperatures is not None and not isinstance(temperatures, dict):
            raise TypeError(f"temperatures must be a dict {{kind: λ}} or None, got {temperatures!r}")
        temperatures = {**DEFAULT_TEMPERATURES, **(temperatures or {})}
        bad = [k for k in temperatures if k not in ELEMENT_KINDS]
        if bad:
            raise ValueError(f"temperatures: unknown element kind(s) {bad}; choose from {ELEMENT_KINDS}")
        for kind, value in temperatures.items():
            check_number(f"temperatures[{kind!r}]", value, gt=0)
        other = _ATTACHED.get(model)
        if other is not None and other._handles:
            raise ValueError(
                f"{type(model).__name__} already has a DMSPruner attached ({other.extra_repr()}); a second one would "
                "multiply its masks into the first's. Call remove() on the first pruner before building another"
            )
        self.adapter = adapter_for(model)

        config = model.config
        self._target = target
        self._current_target = None  # until set_target (the ramp): the final target
        self.prune = tuple(k for k in ELEMENT_KINDS if k in prune)
        self.resource_kind = resource
        self.uniform = uniform
        self.head_grouping = head_grouping
        self.resource_weight = float(resource_weight)
        self.resource_weight_adapt = float(resource_weight_adapt)
        self._initial_resource_weight = float(resource_weight)
        self.flops_seq_len = int(flops_seq_len)
        self.channel_multiple = int(channel_multiple)
        self.num_layers = config.num_hidden_layers
        self.hidden_size = config.hidden_size
        layout = self.adapter.head_layout(config)
        self.num_heads, self.num_kv_heads, self.head_dim = layout.num_heads, layout.num_kv_heads, layout.head_dim
        self.group_size = layout.group_size
        self.intermediate_size = config.intermediate_size
        self.vocab_size = config.vocab_size
        self.tie_word_embeddings = bool(getattr(config, "tie_word_embeddings", False))
        self.attention_bias = self.adapter.has_bias(config, "qkv")  # Qwen2: q/k/v biases, none on o_proj
        self.o_proj_bias = self.adapter.has_bias(config, "o")
        self.mlp_bias = self.adapter.has_bias(config, "mlp")

        for kind, size, what in (("mlp", self.intermediate_size, "MLP channels (intermediate_size)"),
                                 ("hidden", self.hidden_size, "hidden channels (hidden_size)")):
            if kind in self.prune and channel_multiple > size // 2:
                raise ValueError(
                    f"channel_multiple={channel_multiple} leaves the {size} {what} a single kept count, so the "
                    f"search could not change it; use at most {size // 2}, or drop {kind!r} from prune"
                )
        if "heads" in self.prune and head_grouping == "query" and self.group_size == 1:
            raise ValueError(
                "head_grouping='query' prunes query heads within each KV group and needs grouped-query attention; "
                f"this model has num_attention_heads == num_key_value_heads == {self.num_heads} (use 'kv')"
            )

        # The formula must describe this model exactly, else the resource constraint is meaningless.
        full_params = self._count({})
        real = count_parameters(model)
        if int(round(float(full_params))) != real:
            raise ValueError(
                f"unsupported architecture {type(model).__name__}: its {real} parameters differ from the "
                f"{self.adapter.class_name} layout's count {int(full_params)} (biases or extra modules?)"
            )

        L, per_layer = self.num_layers, not self.uniform
        topk = {}
        if "heads" in self.prune:
            if head_grouping == "kv":
                topk["heads"] = DifferentiableTopK(
                    self.num_kv_heads, rows=(L,), shared_keep_ratio=not per_layer, temperature=temperatures["heads"]
                )
            else:
                topk["heads"] = DifferentiableTopK(
                    self.group_size, rows=(L, self.num_kv_heads), keep_ratio_dims=int(per_layer),
                    temperature=temperatures["heads"],
                )
        if "mlp" in self.prune:
            topk["mlp"] = DifferentiableTopK(
                self.intermediate_size, rows=(L,), shared_keep_ratio=not per_layer, temperature=temperatures["mlp"]
            )
        if "hidden" in self.prune:
            topk["hidden"] = DifferentiableTopK(self.hidden_size, temperature=temperatures["hidden"])
        if "layers" in self.prune:
            topk["layers"] = DifferentiableTopK(L if self.uniform else 2 * L, temperature=temperatures["layers"])
        self.topk = nn.ModuleDict(topk)
        device = next(model.parameters()).device
        self.to(device)

        self.model = [model]  # a list: not registered as a submodule (keeps pruner.parameters() = keep ratios)
        self.mode = "soft"
        self.last_losses: dict[str, float] = {}
        self._masks: dict | None = None
        self._handles = []
        self._full_resource = float(self._count({}, kind=self.resource_kind))
        self.attach()

    # --------------------------------------------------------------------------------------------- hooks
    def attach(self) -> None:
        """Attach the mask hooks to the model (done by the constructor; call again after :meth:`remove`). A
        ``ValueError`` if another pruner is attached to the model."""
        if self._handles:
            return
        model, a = self.model[0], self.adapter
        other = _ATTACHED.get(model)
        if other is not None and other is not self and other._handles:
            raise ValueError(f"{type(model).__name__} already has another DMSPruner attached ({other.extra_repr()}); "
                             "call its remove() first")
        layers = a.decoder_layers(model)
        h = self._handles
        h.append(model.get_submodule(a.decoder).register_forward_pre_hook(self._begin_forward))  # once per forward
        h.append(model.get_submodule(a.embed_tokens).register_forward_hook(self._scale_embedding))
        for i, layer in enumerate(layers):
            o_proj, down_proj = layer.get_submodule(a.o_proj), layer.get_submodule(a.down_proj)
            h.append(o_proj.register_forward_pre_hook(functools.partial(self._mask_heads, i)))
            h.append(o_proj.register_forward_hook(functools.partial(self._scale_branch, i, "attn")))
            h.append(down_proj.register_forward_pre_hook(functools.partial(self._mask_channels, i)))
            h.append(down_proj.register_forward_hook(functools.partial(self._scale_branch, i, "mlp")))
        _ATTACHED[model] = self

    def remove(self) -> None:
        """Detach every hook: the model computes as if it had never been wrapped."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if _ATTACHED.get(self.model[0]) is self:
            del _ATTACHED[self.model[0]]

    def _begin_forward(self, module, args):
        self._masks = self.masks(self.mode, track=torch.is_grad_enabled())

    def _scale_embedding(self, module, args, output):
        hidden = self._masks.get("hidden") if self._masks else None
        return output if hidden is None else apply_mask(output, hidden)

    def _mask_heads(self, layer, module, args):
        heads = self._masks.get("heads_q") if self._masks else None
        if heads is None:
            return None
        scale = heads[layer].repeat_interleave(self.head_dim)
        return (apply_mask(args[0], scale),) + tuple(args[1:])

    def _mask_channels(self, layer, module, args):
        mlp = self._masks.get("mlp") if self._masks else None
        if mlp is None:
            return None
        return (apply_mask(args[0], mlp[layer]),) + tuple(args[1:])

    def _scale_branch(self, layer, which, module, args, output):
        if not self._masks:
            return output
        block = self._masks.get(f"{which}_block")
        hidden = self._masks.get("hidden")
        if block is not None:
            output = apply_mask(output, block[layer])
        if hidden is not None:
            output = apply_mask(output, hidden)
        return output

    # --------------------------------------------------------------------------------------------- masks
    def masks(self, mode: str = "soft", track: bool = False) -> dict:
        """Masks of every searched kind: ``hidden [H]``, ``heads_q [L, n_q]``, ``heads_kv [L, n_kv]``, ``mlp [L, I]``,
        ``attn_block [L]``, ``mlp_block [L]`` (absent keys: that kind is not searched).

        ``mode``: ``"soft"`` (differentiable; with ``track`` the backward pass updates the Taylor importance),
        ``"hard"`` (0/1, what an export implements), ``"ones"`` (every element kept, with ``track`` the gradients
        still update the importance: one-shot Taylor scoring of the full model).
        """
        if mode not in ("soft", "hard", "ones"):
            raise ValueError(f"mode must be 'soft', 'hard' or 'ones', got {mode!r}")
        raw = {}
        for kind, op in self.topk.items():
            if mode == "hard":
                m = op.hard_mask()
            elif mode == "ones":
                m = torch.ones_like(op.importance)
                m = op.track(m) if track else m
            else:
                m = op(track_importance=track)
            raw[kind] = m
        L = self.num_layers
        out = {}
        if "heads" in raw:
            m = raw["heads"]
            if self.head_grouping == "kv":
                out["heads_kv"] = m
                out["heads_q"] = m.repeat_interleave(self.group_size, dim=-1)
            else:
                out["heads_q"] = m.reshape(L, self.num_heads)
                out["heads_kv"] = torch.ones(L, self.num_kv_heads, device=m.device)
        if "mlp" in raw:
            out["mlp"] = raw["mlp"]
            if mode == "hard" and self.channel_multiple > 1:
                counts = _target.round_counts(raw["mlp"].sum(-1), self.channel_multiple, self.intermediate_size)
                out["mlp"] = self.topk["mlp"].hard_mask_with_count(counts)
        if "layers" in raw:
            m = raw["layers"]
            if self.uniform:
                out["attn_block"] = out["mlp_block"] = m
            else:
                out["attn_block"], out["mlp_block"] = m.view(L, 2)[:, 0], m.view(L, 2)[:, 1]
        if "hidden" in raw:
            out["hidden"] = raw["hidden"]
            if mode == "hard":
                out["hidden"] = self._round_hidden(out)
        return out

    def _round_hidden(self, masks: dict) -> torch.Tensor:
        """Hard hidden count → nearest multiple of ``channel_multiple`` and, in uniform mode, of the kept query
        heads (``LlamaConfig`` requires ``hidden_size % num_attention_heads == 0``)."""
        multiple = self.channel_multiple
        if self.uniform:
            heads = int(masks["heads_q"][0].sum()) if "heads_q" in masks else self.num_heads
            multiple = math.lcm(multiple, heads)
        hidden = masks["hidden"]
        count = int(hidden.sum())
        rounded = int(_target.round_counts(torch.tensor(count), multiple, self.hidden_size))
        return hidden if rounded == count else self.topk["hidden"].hard_mask_with_count(rounded)

    @contextlib.contextmanager
    def hard_masks(self):
        """Within this context the model runs with the hard masks: the reference an export must equal."""
        previous = self.mode
        self.mode = "hard"
        try:
            yield self
        finally:
            self.mode = previous

    @contextlib.contextmanager
    def full_model_scoring(self, ema_decay: float | None = None):
        """Within this context every element is kept and backward passes still update the Taylor importance.

        ``ema_decay`` overrides the importance EMA decay inside the context (``0.0``: each backward pass replaces
        the importance with that batch's ``(m·∂L/∂m)²``, as one-shot scoring wants).
        """
        previous = self.mode
        decays = {kind: op.ema_decay for kind, op in self.topk.items()}
        self.mode = "ones"
        try:
            if ema_decay is not None:
                for op in self.topk.values():
                    op.set_ema_decay(ema_decay)
            yield self
        finally:
            self.mode = previous
            for kind, op in self.topk.items():
                op.set_ema_decay(decays[kind])

    # ------------------------------------------------------------------------------------------ resources
    def _count(self, masks: dict, kind: str = "params") -> torch.Tensor:
        """Resource from masks (soft sums are differentiable in ``e``; hard sums are exact counts)."""
        L = self.num_layers
        hidden = masks["hidden"].sum() if "hidden" in masks else self.hidden_size
        nq = masks["heads_q"].sum(-1) if "heads_q" in masks else self.num_heads
        nkv = masks["heads_kv"].sum(-1) if "heads_kv" in masks else self.num_kv_heads
        inter = masks["mlp"].sum(-1) if "mlp" in masks else self.intermediate_size
        attn = masks.get("attn_block", 1.0)
        mlp = masks.get("mlp_block", 1.0)
        common = dict(
            vocab_size=self.vocab_size, hidden_size=hidden, head_dim=self.head_dim, num_attention_heads=nq,
            num_key_value_heads=nkv, intermediate_size=inter, num_layers=L, attention_present=attn,
            mlp_present=mlp,
        )
        if kind == "flops":
            return llama_forward_flops(**common, seq_len=self.flops_seq_len)
        return llama_param_count(
            **common, tie_word_embeddings=self.tie_word_embeddings, attention_bias=self.attention_bias,
            mlp_bias=self.mlp_bias, o_proj_bias=self.o_proj_bias, head_norms=len(self.adapter.head_norms),
        )

    @property
    def full_resource(self) -> float:
        """The unpruned model's resource (parameters or FLOPs)."""
        return self._full_resource

    def resource(self, hard: bool = False, kind: str | None = None) -> torch.Tensor:
        """``R(e)`` from the soft masks (differentiable) or the hard masks (exact), in absolute units.

        ``kind`` (``"params"`` or ``"flops"``) overrides the searched resource (e.g. the parameter count of a
        FLOP-constrained search).
        """
        if kind is not None:
            check_choice("kind", kind, RESOURCES)
        masks = self.masks("hard" if hard else "soft", track=False)
        return self._count(masks, kind=kind or self.resource_kind)

    def resource_ratio(self, hard: bool = False) -> torch.Tensor:
        """``R(e) / R(full)``."""
        return self.resource(hard) / self._full_resource

    def resource_loss(self, target: float | None = None) -> torch.Tensor:
        """``L_res = w · log(R(e) / R_target)`` if ``R(e) > R_target`` else 0 (``docs/dms.md``, "## Resource
        loss"); a scalar tensor.

        ``target`` (a fraction of the full resource) overrides the scheduled :attr:`current_target`.
        """
        t = self.current_target if target is None else _target.check_target("target", target, allow_full=True)
        ratio = self.resource_ratio(hard=False)
        # log R − log t rather than log(R / t): R / t overflows for a tiny (yet valid) t
        return (self.resource_weight * torch.relu(torch.log(ratio) - math.log(t))).to(torch.float32)

    def add_resource_loss(self, task_loss: torch.Tensor) -> torch.Tensor:
        """``task_loss + resource_loss()``; both values are kept for :meth:`summary` (``task_loss``,
        ``resource_loss``). :class:`hf_dynamic.dms.trainer.DMSTrainer` calls it on every training step."""
        res = self.resource_loss()
        self.last_losses = {"task_loss": float(task_loss.detach()), "resource_loss": float(res.detach())}
        return task_loss + res.to(task_loss.dtype)

    # ------------------------------------------------------------------------------------------ target
    @property
    def target(self) -> float:
        """The final resource target, a fraction in (0, 1) of the full model's: the value ``DMSCallback`` ramps
        towards and :meth:`meet_target` / the export meet. The pruner is its only holder; assigning it (checked)
        changes it for both."""
        return self._target

    @target.setter
    def target(self, value: float) -> None:
        self._target = _target.check_target("target", value)

    @property
    def current_target(self) -> float:
        """The target the resource loss uses now: the ramped value :meth:`set_target` gave during a search, else
        :attr:`target`."""
        return self.target if self._current_target is None else self._current_target

    def set_target(self, target: float) -> None:
        """Set the resource target the loss uses now (:attr:`current_target`, a fraction in (0, 1]); the final
        :attr:`target` is unchanged. :class:`hf_dynamic.dms.callback.DMSCallback` ramps it with this."""
        self._current_target = _target.check_target("target", target, allow_full=True)

    @torch.no_grad()
    def adapt_resource_weight_(self) -> float:
        """One multiplier update of ``w`` (no-op when ``resource_weight_adapt == 0``); returns the new ``w``.

        ``w`` stays within ``[w0 / 1e3, max(1e4, w0 · 1e4)]`` (``w0``: its initial value).
        """
        rate = self.resource_weight_adapt
        if rate > 0:
            above = float(self.resource_ratio(hard=False)) > self.current_target
            w = self.resource_weight * (1.0 + rate) if above else self.resource_weight / (1.0 + rate)
            w0 = self._initial_resource_weight
            self.resource_weight = min(max(w, w0 / 1e3), max(1e4, w0 * 1e4))
        return self.resource_weight

    # ------------------------------------------------------------------------------------------ state
    def get_extra_state(self) -> dict:
        """The search state beyond the keep ratios and importances (which are parameters and buffers): the
        resource weight (adapted, see :meth:`adapt_resource_weight_`), the current and the final target.
        ``state_dict()`` includes it, so ``pruner.load_state_dict(pruner.state_dict())`` restores a search
        entirely."""
        return {"resource_weight": self.resource_weight, "current_target": self.current_target,
                "target": self.target}

    def set_extra_state(self, state: dict) -> None:
        """Restore :meth:`get_extra_state`'s values; a ``ValueError`` if the state was saved by a search towards
        another final target (the resumed search would ramp to one value and export at the other)."""
        if "target" in state and float(state["target"]) != self.target:
            raise ValueError(
                f"the saved DMS search ran towards target={float(state['target'])}, this pruner has "
                f"target={self.target}; build the pruner with the saved target to resume it"
            )
        self.resource_weight = float(state["resource_weight"])
        self._current_target = _target.check_target("current_target", float(state["current_target"]),
                                                    allow_full=True)

    # -------------------------------------------------------------------------------------- structure API
    def structure_parameters(self) -> list[nn.Parameter]:
        """The keep ratios ``e`` (one tensor per searched kind): give them their own optimizer / learning rate."""
        return [op.keep_ratio for op in self.topk.values()]

    @torch.no_grad()
    def clamp_(self) -> None:
        """Project every keep ratio onto ``[1/(2N), 1]`` (call after an optimizer step)."""
        for op in self.topk.values():
            op.clamp_()

    @property
    def num_search_steps(self) -> int:
        """Importance updates seen so far (the least over searched kinds)."""
        return min(int(op.num_updates) for op in self.topk.values())

    def set_loss_scale_source(self, source) -> None:
        """Tell the Taylor importance of every searched kind where to read the loss scale of a mixed-precision run
        (a ``torch.amp.GradScaler``, a callable returning one, or None); see
        :meth:`hf_dynamic.core.topk.DifferentiableTopK.set_loss_scale_source` and ``docs/dms.md``, "## Mixed
        precision". ``DMSTrainer`` does this itself."""
        for op in self.topk.values():
            op.set_loss_scale_source(source)

    @torch.no_grad()
    def set_importance(self, kind: str, importance: torch.Tensor) -> None:
        """Overwrite a kind's importance (e.g. a magnitude criterion for a baseline); counts as one update."""
        if kind not in self.topk:
            raise ValueError(f"kind {kind!r} is not searched; searched kinds: {tuple(self.topk)}")
        op = self.topk[kind]
        op.importance.copy_(importance.reshape(op.importance.shape))
        op.num_updates += 1

    def summary(self) -> dict:
        """Keep ratios (mean over rows), hard kept counts and resource ratios, for logging."""
        out = {"target": self.current_target, "resource_weight": self.resource_weight}
        with torch.no_grad():
            out["resource_soft"] = float(self.resource_ratio(hard=False))
            out["resource_hard"] = float(self.resource_ratio(hard=True))
            for kind, op in self.topk.items():
                out[f"keep_{kind}"] = float(op.clamped_keep_ratio().mean())
            hard = self.masks("hard")
            for key, m in hard.items():
                out[f"kept_{key}"] = float(m.sum(-1).float().mean()) if m.dim() > 1 else float(m.sum())
        out.update(self.last_losses)
        return out

    def meet_target(self, target: float | None = None) -> dict:
        """Snap every keep ratio to a whole count so that the hard masks (and so the export) meet :attr:`target`
        from below, as closely as the finest searched kind allows (``docs/dms.md``, "## Exact-target export"; the
        algorithm is :func:`hf_dynamic.dms.target.meet_target`). Call it after the search, before exporting;
        without it the export follows the paper's rule.

        ``target``, if given, must equal :attr:`target` (the pruner is the one holder of the target: a search
        ramped towards one value does not export at another by accident); to export at another target, assign
        ``pruner.target`` first. Returns ``{"target", "before", "after", "counts"}``: the hard resource ratios
        before / after and the kept counts per kind (lists over rows).
        """
        if target is not None:
            value = _target.check_target("target", target)
            if value != self.target:
                raise ValueError(
                    f"meet_target(target={target!r}) conflicts with the pruner's target={self.target}, the one the "
                    f"search ramped towards; to export at {target!r}, set pruner.target = {target!r} first"
                )
        return _target.meet_target(self)

    def hard_structure(self) -> HardStructure:
        """Indices kept by the hard masks (the structure an export builds; :func:`hf_dynamic.dms.export.
        hard_structure`)."""
        return hard_structure(self)

    def searched_structure(self) -> HardStructure:
        """:meth:`hard_structure`, after checking that a search ran (what every export starts from)."""
        return searched_structure(self)

    def export(self, uniform: bool = True, dtype: torch.dtype | None = None):
        """Build the pruned model whose logits equal the hard-masked model's: a stock ``*ForCausalLM`` of the
        original class with a smaller config (ValueError, saying how far from uniform, if the masks differ across
        layers).

        Per-layer widths (a ``uniform=False`` search) are exported model-side, by
        ``hf_dynamic.DMSLlamaForCausalLM.from_pruned(pruner)`` (model type ``dms_llama``); ``uniform=False`` here
        raises a ValueError that says so (``docs/dms.md``, "## Search and export").
        """
        if not uniform:
            raise ValueError(
                "pruner.export(uniform=False) is gone: per-layer widths are exported by the dms_llama model type, "
                "hf_dynamic.DMSLlamaForCausalLM.from_pruned(pruner) (Llama only)"
            )
        return export_uniform(self.model[0], self.searched_structure(), self.adapter, dtype=dtype)

    def extra_repr(self) -> str:
        return (
            f"target={self.target}, prune={self.prune}, resource={self.resource_kind!r}, uniform={self.uniform}, "
            f"head_grouping={self.head_grouping!r}"
        )
