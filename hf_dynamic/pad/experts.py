"""The routed-experts computation of PAD-Net's MoE layers: one swappable function, transformers' kernels.

An expert ``i`` computes ``down_i · act(up_i · x + up_bias_i) + down_bias_i`` (a BERT FFN, no gate); a token's
output is the routing-weighted sum over its top-k experts. :func:`experts_forward` dispatches to the function
registered under a name in ``transformers.integrations.moe.ALL_EXPERTS_FUNCTIONS`` (``"grouped_mm"``,
``"batched_mm"``, or any custom entry, e.g. a faster kernel registered later), with :func:`eager_experts_forward`
(a Python loop over the experts that receive tokens) as the ``"eager"`` reference.

Those functions take the experts *module* as ``self`` and read its ``up_proj``/``down_proj`` (``[E, out, in]``)
and bias attributes; :class:`ExpertWeights` is that view over any tensors (parameters, or weights merged on the
fly from PAD-Net's static and dynamic parts), so the same kernels serve every PAD-Net mode.
"""

from __future__ import annotations

import torch
from transformers.utils import logging

logger = logging.get_logger(__name__)

class ExpertWeights:
    """A view of stacked expert weights, shaped as transformers' experts kernels expect.

    ``up_proj [E, F, H]``, ``up_proj_bias [E, F]``, ``down_proj [E, H, F]``, ``down_proj_bias [E, H]``
    (``is_transposed=False``, ``has_gate=False``, ``has_bias=True``), ``act_fn`` the activation.
    """

    has_gate = False
    has_bias = True
    is_transposed = False
    is_concatenated = True
    has_post_expert_norm = False
    _is_expert_parallel = False

    def __init__(self, up_proj, up_proj_bias, down_proj, down_proj_bias, act_fn):
        num_experts, ffn, hidden = up_proj.shape
        if up_proj_bias.shape != (num_experts, ffn) or down_proj.shape != (num_experts, hidden, ffn) or \
                down_proj_bias.shape != (num_experts, hidden):
            raise ValueError(
                f"inconsistent expert shapes: up_proj {tuple(up_proj.shape)}, up_proj_bias "
                f"{tuple(up_proj_bias.shape)}, down_proj {tuple(down_proj.shape)}, down_proj_bias "
                f"{tuple(down_proj_bias.shape)}")
        self.num_experts = num_experts
        self.up_proj = up_proj
        self.up_proj_bias = up_proj_bias
        self.down_proj = down_proj
        self.down_proj_bias = down_proj_bias
        self.act_fn = act_fn


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
        y = torch.nn.functional.linear(h, self.down_proj[expert], self.down_proj_bias[expert])
        output.index_add_(0, token_idx, (y * top_k_weights[token_idx, slot, None]).to(accumulate))
    return output.to(hidden_states.dtype)


# torch's grouped GEMM needs 16-byte aligned row strides: feature sizes multiple of 8 cover fp32 and bf16.
GROUPED_MM_ALIGNMENT = 8


def pad_for_grouped_mm(weights: ExpertWeights, hidden_states: torch.Tensor):
    """Zero-pad the expert sizes (d_ff, hidden) to multiples of :data:`GROUPED_MM_ALIGNMENT`.

    Padded neurons have zero ``down`` columns and padded hidden dims zero ``up`` columns / ``down`` rows, so the
    result (sliced back to ``hidden``) is unchanged. Returns ``(weights, hidden_states, hidden)``; a no-op when
    the sizes are already aligned (the usual case: PAD-Net's neuron split can make ``d_ff`` odd).
    """
    num_experts, ffn, hidden = weights.up_proj.shape
    pad_f = (-ffn) % GROUPED_MM_ALIGNMENT
    pad_h = (-hidden) % GROUPED_MM_ALIGNMENT
    if pad_f == 0 and pad_h == 0:
        return weights, hidden_states, hidden
    F = torch.nn.functional
    padded = ExpertWeights(
        F.pad(weights.up_proj, (0, pad_h, 0, pad_f)),
        F.pad(weights.up_proj_bias, (0, pad_f)),
        F.pad(weights.down_proj, (0, pad_f, 0, pad_h)),
        F.pad(weights.down_proj_bias, (0, pad_h)),
        weights.act_fn,
    )
    return padded, F.pad(hidden_states, (0, pad_h)), hidden


def resolve_experts_implementation(name: str | None) -> str:
    """The experts implementation a layer uses: ``name``, or ``"grouped_mm"`` (transformers' default) if None."""
    return "grouped_mm" if name is None else name


def experts_forward(weights: ExpertWeights, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                    top_k_weights: torch.Tensor, implementation: str | None = None) -> torch.Tensor:
    """Mix the top-k experts of every token: ``sum_k w_tk · expert_{i_tk}(x_t)``; ``[tokens, hidden]`` in/out.

    ``implementation``: ``"eager"`` (:func:`eager_experts_forward`) or a key of transformers'
    ``ALL_EXPERTS_FUNCTIONS`` (default ``"grouped_mm"``: tokens sorted by expert, one grouped GEMM per projection,
    ``torch.nn.functional.grouped_mm`` on CPU and GPU, transformers' fallback op elsewhere).
    """
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

    implementation = resolve_experts_implementation(implementation)
    if implementation in ("grouped_mm", "batched_mm") and hidden_states.dtype == torch.float64:
        # torch's grouped GEMM has no fp64 kernel; fp64 (gradient checks) runs the eager reference.
        logger.warning_once(f"experts implementation {implementation!r} has no float64 kernel: using 'eager'")
        implementation = "eager"
    if implementation == "eager":
        function = eager_experts_forward
    else:
        function = ALL_EXPERTS_FUNCTIONS.get_interface(implementation, eager_experts_forward)
    if hidden_states.shape[0] == 0:
        return hidden_states.new_zeros(hidden_states.shape)
    if implementation == "grouped_mm":
        weights, hidden_states, hidden = pad_for_grouped_mm(weights, hidden_states)
        return function(weights, hidden_states, top_k_index, top_k_weights)[:, :hidden]
    return function(weights, hidden_states, top_k_index, top_k_weights)
