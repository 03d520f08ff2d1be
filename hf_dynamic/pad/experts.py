"""The routed-experts computation of PAD-Net's MoE layers: one swappable function, and hf_dynamic's fast kernel
(see ``docs/pad.md``, "## Expert kernel").

An expert ``i`` computes ``down_i · act(up_i · x + up_bias_i) + down_bias_i`` (a BERT FFN, no gate); a token's
output is the routing-weighted sum over its top-k experts. :class:`ExpertWeights` is an experts class decorated
with transformers' ``use_experts_implementation``: its ``forward`` dispatches, through
:data:`PAD_EXPERTS_FUNCTIONS` (an ``ExpertsInterface`` over transformers' global registry), to the function
registered under ``config``'s experts implementation in ``transformers.integrations.moe.ALL_EXPERTS_FUNCTIONS``
(``"grouped_mm"``, ``"batched_mm"``, ours, or any custom entry), with :func:`eager_experts_forward` (a Python loop
over the experts that receive tokens) as the ``"eager"`` reference.

Ours, :func:`sorted_grouped_mm_experts_forward`, is registered as ``"hf_dynamic_grouped_mm"``
(:data:`EXPERTS_IMPLEMENTATION`) on ``import hf_dynamic``, so any transformers MoE model built with
``@use_experts_implementation`` can select it (``from_pretrained(..., experts_implementation=
"hf_dynamic_grouped_mm")``); PartialMoEBert uses it by default. It computes what transformers' ``grouped_mm``
computes, with every backward a gather or a GEMM instead of the scatter-adds of advanced indexing, which dominate
the biased ``grouped_mm`` backward on the GPU (68 % of CUDA time in ``indexing_backward_kernel`` in a profile):

- the up-projection bias is folded into the grouped GEMM as an extra input column of ones (its gradient comes out
  of the GEMM's weight gradient);
- the down-projection bias is added after the top-k mix in token order, ``Σ_k w_tk·b_{i_tk} = R_t · B`` with the
  ``[tokens, E]`` routing matrix ``R`` (one small GEMM forward and backward);
- sorting tokens by expert and back are row gathers whose backward is the inverse gather (plus the sum over a
  token's k copies), custom autograd functions :class:`_GatherSortedRows` / :class:`_PermuteRows`.

The functions take the experts *module* as ``self`` and read its ``up_proj``/``down_proj`` (``[E, out, in]``, or
``[E, in, out]`` when ``is_transposed``) and bias attributes; :class:`ExpertWeights` is that view over any tensors
(parameters, or weights merged from PAD-Net's static and dynamic parts), so the same kernels serve every PAD-Net
layout. It is not an ``nn.Module``: PAD's layers store their weights under their own (checkpoint) names and build
a view per forward, often over merged, non-parameter tensors.
"""

from __future__ import annotations

import torch
from transformers import PretrainedConfig
from transformers.integrations.moe import ExpertsInterface, use_experts_implementation
from transformers.utils import logging

logger = logging.get_logger(__name__)

EXPERTS_IMPLEMENTATION = "hf_dynamic_grouped_mm"
"""The name under which :func:`sorted_grouped_mm_experts_forward` is registered in ``ALL_EXPERTS_FUNCTIONS``."""

# torch's grouped GEMM needs 16-byte aligned row strides: feature sizes multiple of 8 cover fp32, bf16 and fp16.
GROUPED_MM_ALIGNMENT = 8


class PadExpertsInterface(ExpertsInterface):
    """transformers' ``ALL_EXPERTS_FUNCTIONS`` (every registered kernel) as PAD's expert views use it: an unset
    implementation means ours (:data:`EXPERTS_IMPLEMENTATION`), ``"eager"`` the reference loop, and transformers'
    kernels get their inputs adapted (see :func:`_adapted`)."""

    def get_interface(self, experts_implementation: str | None, default):
        if exporting():
            return static_loop_experts_forward  # every kernel computes the same; this one traces to a true graph
        implementation = resolve_experts_implementation(experts_implementation)
        if implementation == EXPERTS_IMPLEMENTATION:
            return sorted_grouped_mm_experts_forward
        if implementation == "eager":
            return default
        return _adapted(super().get_interface(implementation, default), implementation)


PAD_EXPERTS_FUNCTIONS = PadExpertsInterface()
"""The dispatcher :class:`ExpertWeights` is decorated with (its registry is transformers' global one)."""


def experts_config(implementation: str | None = None) -> PretrainedConfig:
    """A bare config that selects ``implementation`` (None: ours), for :class:`ExpertWeights` built outside a model."""
    return PretrainedConfig(experts_implementation=implementation)


@use_experts_implementation(experts_interface=PAD_EXPERTS_FUNCTIONS, has_bias=True, has_gate=False)
class ExpertWeights:
    """A view of stacked expert weights, shaped as transformers' experts kernels expect; ``forward(hidden_states,
    top_k_index, top_k_weights)`` runs the kernel ``config`` selects (transformers' ``use_experts_implementation``).

    ``up_proj [E, F, H]``, ``up_proj_bias [E, F]``, ``down_proj [E, H, F]``, ``down_proj_bias [E, H]`` or None
    (PAD neuron mode's routed part has no down bias), ``act_fn`` the activation. ``config`` is the model's config
    (or :func:`experts_config`); its experts implementation picks the kernel, None meaning ours.
    """

    def __init__(self, config, up_proj, up_proj_bias, down_proj, down_proj_bias, act_fn):
        num_experts, ffn, hidden = up_proj.shape
        if up_proj_bias.shape != (num_experts, ffn) or down_proj.shape != (num_experts, hidden, ffn) or (
                down_proj_bias is not None and down_proj_bias.shape != (num_experts, hidden)):
            raise ValueError(
                f"inconsistent expert shapes: up_proj {tuple(up_proj.shape)}, up_proj_bias "
                f"{tuple(up_proj_bias.shape)}, down_proj {tuple(down_proj.shape)}, down_proj_bias "
                f"{None if down_proj_bias is None else tuple(down_proj_bias.shape)}")
        self.num_experts = num_experts
        self.up_proj = up_proj
        self.up_proj_bias = up_proj_bias
        self.down_proj = down_proj
        self.down_proj_bias = down_proj_bias
        self.act_fn = act_fn

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                top_k_weights: torch.Tensor) -> torch.Tensor:
        """The ``"eager"`` implementation (the decorator dispatches the others)."""
        return eager_experts_forward(self, hidden_states, top_k_index, top_k_weights)

    def with_down_bias(self) -> ExpertWeights:
        """This view with an explicit zero ``down_proj_bias`` where it is None (transformers' kernels need one)."""
        if self.down_proj_bias is not None:
            return self
        num_experts, hidden, _ = self.down_proj.shape
        zeros = self.down_proj.new_zeros(num_experts, hidden)
        return ExpertWeights(self.config, self.up_proj, self.up_proj_bias, self.down_proj, zeros, self.act_fn)


def eager_experts_forward(self: ExpertWeights, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                          top_k_weights: torch.Tensor) -> torch.Tensor:
    """Reference: loop over the experts that receive tokens, ``index_add_`` their weighted outputs (sum in fp32,
    or fp64 for fp64 inputs)."""
    accumulate = torch.promote_types(hidden_states.dtype, torch.float32)
    output = torch.zeros(hidden_states.shape, dtype=accumulate, device=hidden_states.device)
    with torch.no_grad():
        hit = torch.unique(top_k_index).tolist()
    for expert in hit:
        token_idx, slot = torch.where(top_k_index == expert)
        x = hidden_states[token_idx]
        h = self.act_fn(torch.nn.functional.linear(x, self.up_proj[expert], self.up_proj_bias[expert]))
        down_bias = None if self.down_proj_bias is None else self.down_proj_bias[expert]
        y = torch.nn.functional.linear(h, self.down_proj[expert], down_bias)
        output.index_add_(0, token_idx, (y * top_k_weights[token_idx, slot, None]).to(accumulate))
    return output.to(hidden_states.dtype)


def exporting() -> bool:
    """Whether the model is being traced for an export (``torch.export``, either ONNX exporter, ``torch.jit``)."""
    return bool(torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export() or torch.jit.is_tracing())


def static_loop_experts_forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                                top_k_weights: torch.Tensor) -> torch.Tensor:
    """:func:`eager_experts_forward` over *every* expert, for exports (``docs/pad.md``, "## Expert kernel").

    The eager loop visits the experts a batch hits (a Python list read from the data), the grouped kernels sort the
    tokens by expert (``aten.sort.stable``, which no ONNX function lowers): a trace of either would bake in the
    traced batch's routing or fail. Here the loop is over ``range(E)`` and each expert's tokens are found with
    ``nonzero``, a data-dependent shape both exporters express; an expert without tokens multiplies an empty
    matrix. Same operations as the eager reference, so the same values.
    """
    accumulate = torch.promote_types(hidden_states.dtype, torch.float32)
    output = torch.zeros(hidden_states.shape, dtype=accumulate, device=hidden_states.device)
    for expert in range(self.num_experts):
        token_idx, slot = torch.where(top_k_index == expert)
        h = self.act_fn(torch.nn.functional.linear(hidden_states[token_idx], self.up_proj[expert],
                                                   self.up_proj_bias[expert]))
        down_bias = None if self.down_proj_bias is None else self.down_proj_bias[expert]
        y = torch.nn.functional.linear(h, self.down_proj[expert], down_bias)
        output.index_add_(0, token_idx, (y * top_k_weights[token_idx, slot, None]).to(accumulate))
    return output.to(hidden_states.dtype)


# ---------------------------------------------------------------------------------------------- our kernel
def _aligned(n: int) -> int:
    return -(-n // GROUPED_MM_ALIGNMENT) * GROUPED_MM_ALIGNMENT


class _GatherSortedRows(torch.autograd.Function):
    """``out[j, :H] = x[perm[j] // k]`` (the token-expert pairs sorted by expert), then ``width − H`` extra columns:
    a column of ones first if ``ones_column`` (it multiplies the bias row of the GEMM weight), zeros after.

    Backward: un-sort the gradient with the inverse permutation (a gather) and sum each token's k rows.
    """

    @staticmethod
    def forward(ctx, x, perm, inv_perm, top_k: int, width: int, ones_column: bool):
        tokens, hidden = x.shape
        rows = x.index_select(0, torch.div(perm, top_k, rounding_mode="floor"))
        if width > hidden:
            out = x.new_zeros(rows.shape[0], width)
            out[:, :hidden] = rows
            if ones_column:
                out[:, hidden] = 1
            rows = out
        ctx.save_for_backward(inv_perm)
        ctx.shape = (tokens, top_k, hidden)
        return rows

    @staticmethod
    def backward(ctx, grad):
        (inv_perm,) = ctx.saved_tensors
        tokens, top_k, hidden = ctx.shape
        grad_x = grad[:, :hidden].index_select(0, inv_perm).view(tokens, top_k, hidden).sum(dim=1)
        return grad_x, None, None, None, None, None


class _PermuteRows(torch.autograd.Function):
    """``x[index]`` for a permutation ``index``; backward ``grad[inverse]`` (a gather, no scatter-add)."""

    @staticmethod
    def forward(ctx, x, index, inverse):
        ctx.save_for_backward(inverse)
        return x.index_select(0, index)

    @staticmethod
    def backward(ctx, grad):
        (inverse,) = ctx.saved_tensors
        return grad.index_select(0, inverse), None, None


def _grouped_mm(x: torch.Tensor, weight: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """``x [S, K] @ weight [E, K, N]`` per group of rows: transformers' dispatcher (``torch.nn.functional.grouped_mm``
    where it applies, its own fallback elsewhere); fp64, which torch's grouped GEMM lacks, takes the fallback op.

    Two private seams, kept because no public API does this: ``moe._grouped_mm`` is the only code that knows when
    torch's public ``F.grouped_mm`` may run (device, compute capability, dtype, alignment, ``torch.compile``) and
    falls back otherwise; ``torch.ops.transformers.grouped_mm_fallback`` is that fallback, the only grouped GEMM with
    a float64 kernel (``F.grouped_mm`` takes fp32/bf16/fp16). ``tests/pad/test_pad_seams.py`` fails loudly when
    either changes.
    """
    from transformers.integrations import moe

    if x.dtype == torch.float64:
        return torch.ops.transformers.grouped_mm_fallback(x, weight, offs=offsets)
    return moe._grouped_mm(x, weight, offsets)


def _grouped_weight(weight: torch.Tensor, bias: torch.Tensor | None, is_transposed: bool, in_width: int,
                    out_width: int, dtype: torch.dtype) -> torch.Tensor:
    """The right operand ``[E, in_width, out_width]`` of the grouped GEMM: ``W^T`` per expert, zero-padded, with the
    bias as row ``in`` (it meets the ones column :class:`_GatherSortedRows` appends).

    Padding happens in the stored layout (``[E, out, in]`` unless ``is_transposed``), a contiguous copy; the
    transpose stays a view (a transposing copy costs more than the GEMM's layout preference on the CPU).
    """
    weight = weight.to(dtype)
    in_dim, out_dim = (1, 2) if is_transposed else (2, 1)
    fan_in, fan_out = weight.shape[in_dim], weight.shape[out_dim]
    pieces = [weight]
    if bias is not None:
        pieces.append(bias.to(dtype).unsqueeze(in_dim))
    extra_in = in_width - fan_in - (bias is not None)
    if extra_in:
        shape = list(weight.shape)
        shape[in_dim] = extra_in
        pieces.append(weight.new_zeros(shape))
    padded = torch.cat(pieces, dim=in_dim) if len(pieces) > 1 else weight
    if out_width != fan_out:
        pad = [0, 0, 0, 0]
        pad[1 if out_dim == 2 else 3] = out_width - fan_out
        padded = torch.nn.functional.pad(padded, pad)
    return padded if is_transposed else padded.transpose(-2, -1)


def sorted_grouped_mm_experts_forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                                      top_k_weights: torch.Tensor) -> torch.Tensor:
    """``out_t = Σ_k w_tk · (down_{i_tk} · act(up_{i_tk} · x_t + b^up_{i_tk}) + b^down_{i_tk})`` with grouped GEMMs.

    Same contract as transformers' ``grouped_mm_experts_forward`` (``self`` an experts module: ``up_proj`` or
    ``gate_up_proj`` with ``_apply_gate``, ``down_proj``, optional biases, ``is_transposed``; ``[tokens, hidden]``
    in and out), computed as the module docstring describes; the top-k mix and the down bias accumulate in fp32.
    Expert parallelism and post-expert norms are delegated to transformers' ``grouped_mm``.
    """
    from transformers.integrations import moe

    if getattr(self, "_is_expert_parallel", False) or getattr(self, "has_post_expert_norm", False):
        return moe.grouped_mm_experts_forward(self, hidden_states, top_k_index, top_k_weights)
    if hidden_states.dim() != 2 or top_k_index.shape != top_k_weights.shape or top_k_index.dim() != 2 or \
            top_k_index.shape[0] != hidden_states.shape[0]:
        raise ValueError(f"expected hidden_states [tokens, hidden] with top_k_index / top_k_weights [tokens, k]; got "
                         f"{tuple(hidden_states.shape)}, {tuple(top_k_index.shape)}, {tuple(top_k_weights.shape)}")
    num_tokens, hidden = hidden_states.shape
    top_k = top_k_index.shape[1]
    if num_tokens == 0:
        return hidden_states.new_zeros(hidden_states.shape)
    num_experts = self.num_experts
    has_bias = getattr(self, "has_bias", False)
    if self.has_gate:
        up_weight, up_bias = self.gate_up_proj, (self.gate_up_proj_bias if has_bias else None)
    else:
        up_weight, up_bias = self.up_proj, (self.up_proj_bias if has_bias else None)
    down_bias = getattr(self, "down_proj_bias", None) if has_bias else None
    # torch's grouped GEMM is not autocast-aware: under autocast, compute in its dtype as nn.Linear would.
    device_type = hidden_states.device.type
    autocast = torch.is_autocast_enabled(device_type)
    compute_dtype = torch.get_autocast_dtype(device_type) if autocast else up_weight.dtype
    x = hidden_states.contiguous().to(compute_dtype)

    with torch.no_grad():
        expert_ids = top_k_index.reshape(-1)
        sorted_ids, perm = torch.sort(expert_ids, stable=True)
        inv_perm = torch.empty_like(perm)
        inv_perm[perm] = torch.arange(perm.numel(), device=perm.device)
        # histc as transformers does: it counts the same on CPU and CUDA (float input on CPU, int on CUDA).
        histc_input = sorted_ids.float() if sorted_ids.device.type in ("cpu", "mps") else sorted_ids.int()
        counts = torch.histc(histc_input, bins=num_experts, min=0, max=num_experts - 1)
        offsets = torch.cumsum(counts, dim=0, dtype=torch.int32)

    # Up projection, bias folded in: [x, 1, 0...] @ [W^T; b; 0...].
    in_width = _aligned(hidden + (up_bias is not None))
    up_out = up_weight.shape[-1] if self.is_transposed else up_weight.shape[-2]
    up_width = _aligned(up_out)
    rows = _GatherSortedRows.apply(x, perm, inv_perm, top_k, in_width, up_bias is not None)
    h = _grouped_mm(rows, _grouped_weight(up_weight, up_bias, self.is_transposed, in_width, up_width, compute_dtype),
                    offsets)
    if up_width != up_out:
        h = h[:, :up_out]
    h = self._apply_gate(h) if self.has_gate else self.act_fn(h)

    # Down projection (no bias here), back to token order, mixed in fp32.
    ffn = h.shape[1]
    ffn_width, out_width = _aligned(ffn), _aligned(hidden)
    if ffn_width != ffn:
        h = torch.nn.functional.pad(h, (0, ffn_width - ffn))
    y = _grouped_mm(h, _grouped_weight(self.down_proj, None, self.is_transposed, ffn_width, out_width, compute_dtype),
                    offsets)
    if out_width != hidden:
        y = y[:, :hidden]
    y = _PermuteRows.apply(y, inv_perm, perm).view(num_tokens, top_k, hidden)
    accumulate = torch.promote_types(compute_dtype, torch.float32)
    with torch.autocast(device_type, enabled=False):  # the mix and the bias GEMM stay in fp32 (or fp64)
        weights = top_k_weights.to(accumulate)
        output = (y * weights.unsqueeze(-1)).sum(dim=1)
        if down_bias is not None:
            routing = weights.new_zeros(num_tokens, num_experts).scatter_add(1, top_k_index, weights)
            output = torch.addmm(output, routing, down_bias.to(accumulate))
    return output.to(hidden_states.dtype)


def register_experts_implementation() -> None:
    """Register :func:`sorted_grouped_mm_experts_forward` in transformers' ``ALL_EXPERTS_FUNCTIONS`` (idempotent)."""
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

    ALL_EXPERTS_FUNCTIONS.register(EXPERTS_IMPLEMENTATION, sorted_grouped_mm_experts_forward)


# ---------------------------------------------------------------------------------------------- dispatch
def pad_for_grouped_mm(weights: ExpertWeights, hidden_states: torch.Tensor):
    """Zero-pad the expert sizes (d_ff, hidden) to multiples of :data:`GROUPED_MM_ALIGNMENT` for transformers'
    ``grouped_mm`` (ours pads internally).

    Padded neurons have zero ``down`` columns and padded hidden dims zero ``up`` columns / ``down`` rows, so the
    result (sliced back to ``hidden``) is unchanged. Returns ``(weights, hidden_states, hidden)``; a no-op when
    the sizes are already aligned (PAD-Net's neuron split can make ``d_ff`` odd).
    """
    num_experts, ffn, hidden = weights.up_proj.shape
    pad_f = _aligned(ffn) - ffn
    pad_h = _aligned(hidden) - hidden
    if pad_f == 0 and pad_h == 0:
        return weights, hidden_states, hidden
    F = torch.nn.functional
    padded = ExpertWeights(
        weights.config,
        F.pad(weights.up_proj, (0, pad_h, 0, pad_f)),
        F.pad(weights.up_proj_bias, (0, pad_f)),
        F.pad(weights.down_proj, (0, pad_f, 0, pad_h)),
        F.pad(weights.down_proj_bias, (0, pad_h)),
        weights.act_fn,
    )
    return padded, F.pad(hidden_states, (0, pad_h)), hidden


def resolve_experts_implementation(name: str | None) -> str:
    """The experts implementation a layer uses: ``name``, or ours (:data:`EXPERTS_IMPLEMENTATION`) if None."""
    return EXPERTS_IMPLEMENTATION if name is None else name


def _adapted(function, implementation: str):
    """``function`` (a kernel of ``ALL_EXPERTS_FUNCTIONS``) fed the way PAD's expert views need: no tokens gives
    zeros, a missing down bias becomes zeros, ``grouped_mm`` gets aligned sizes, fp64 (which torch's grouped GEMM
    lacks; gradient checks use it) runs the eager reference."""

    def forward(weights, hidden_states, top_k_index, top_k_weights):
        if implementation in ("grouped_mm", "batched_mm") and hidden_states.dtype == torch.float64:
            logger.warning_once(f"experts implementation {implementation!r} has no float64 kernel: using 'eager'")
            return eager_experts_forward(weights, hidden_states, top_k_index, top_k_weights)
        if hidden_states.shape[0] == 0:
            return hidden_states.new_zeros(hidden_states.shape)
        weights = weights.with_down_bias()
        if implementation != "grouped_mm":
            return function(weights, hidden_states, top_k_index, top_k_weights)
        weights, hidden_states, hidden = pad_for_grouped_mm(weights, hidden_states)
        return function(weights, hidden_states, top_k_index, top_k_weights)[:, :hidden]

    return forward


def experts_forward(weights: ExpertWeights, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                    top_k_weights: torch.Tensor, implementation: str | None = None) -> torch.Tensor:
    """Mix the top-k experts of every token: ``sum_k w_tk · expert_{i_tk}(x_t)``; ``[tokens, H]`` in/out.

    ``weights.forward`` with ``implementation`` instead of the one ``weights.config`` selects: ``"eager"``
    (:func:`eager_experts_forward`) or a key of transformers' ``ALL_EXPERTS_FUNCTIONS``; None means ours,
    ``"hf_dynamic_grouped_mm"`` (:func:`sorted_grouped_mm_experts_forward`).
    """
    function = PAD_EXPERTS_FUNCTIONS.get_interface(implementation, eager_experts_forward)
    return function(weights, hidden_states, top_k_index, top_k_weights)
