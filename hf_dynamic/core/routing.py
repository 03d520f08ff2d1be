"""Token routing for mixture-of-experts layers (shared primitive).

- :func:`top_k_softmax`: softmax over the experts in fp32, keep the top-k, renormalise the kept weights to sum 1
  (Mixtral / Switch convention; ``docs/pad.md``, "## Partially dynamic MoE").
- :class:`TopKRouter`: a bias-free linear router with optional Switch-style multiplicative input jitter and
  additive Gaussian logit noise (a fixed-variance form of Shazeer et al. 2017 noisy top-k gating), training only.
- :func:`load_balancing_loss`: the Switch Transformer auxiliary loss (Fedus et al. 2021, eq. 4-6), computed by
  transformers' own ``load_balancing_loss_func`` (imported lazily: it lives in the Mixtral modeling module).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def top_k_softmax(router_logits: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(weights, index)``, both ``[tokens, top_k]``: renormalised softmax weights of the top-k experts.

    The softmax is taken in fp32; the weights are returned in fp32.
    """
    if not 1 <= top_k <= router_logits.shape[-1]:
        raise ValueError(f"top_k must be in [1, {router_logits.shape[-1]}], got {top_k}")
    probs = torch.softmax(router_logits.float(), dim=-1)
    weights, index = torch.topk(probs, top_k, dim=-1)
    weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, index


class TopKRouter(nn.Module):
    """Linear top-k router: ``logits = x W^T`` (``W``: ``[num_experts, hidden]``), then :func:`top_k_softmax`.

    Args:
        hidden_size, num_experts, top_k: sizes.
        jitter_noise: if > 0, in training the input is multiplied by ``U(1 - eps, 1 + eps)`` noise (Switch).
        noise_std: if > 0, in training ``N(0, noise_std^2)`` noise is added to the logits (noisy top-k gating).

    ``forward(hidden [tokens, hidden]) -> (router_logits [tokens, E], weights [tokens, k], index [tokens, k])``;
    the returned logits are the ones routing used (with noise in training).
    """

    def __init__(self, hidden_size: int, num_experts: int, top_k: int, jitter_noise: float = 0.0,
                 noise_std: float = 0.0):
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k must be in [1, num_experts={num_experts}], got {top_k}")
        self.num_experts = num_experts
        self.top_k = top_k
        self.jitter_noise = jitter_noise
        self.noise_std = noise_std
        self.weight = nn.Parameter(torch.empty(num_experts, hidden_size))

    def forward(self, hidden_states: torch.Tensor):
        if self.training and self.jitter_noise > 0:
            hidden_states = hidden_states * torch.empty_like(hidden_states).uniform_(
                1.0 - self.jitter_noise, 1.0 + self.jitter_noise)
        router_logits = F.linear(hidden_states, self.weight.to(hidden_states.dtype))
        if self.training and self.noise_std > 0:
            router_logits = router_logits + torch.randn_like(router_logits) * self.noise_std
        weights, index = top_k_softmax(router_logits, self.top_k)
        return router_logits, weights, index

    def extra_repr(self) -> str:
        return (f"num_experts={self.num_experts}, top_k={self.top_k}, jitter_noise={self.jitter_noise}, "
                f"noise_std={self.noise_std}")


def load_balancing_loss(router_logits, num_experts: int, top_k: int, attention_mask=None) -> torch.Tensor:
    """Switch Transformer load-balancing loss ``E * sum_e f_e * P_e`` over the layers' router logits.

    ``router_logits``: a tuple of ``[batch * seq, E]`` tensors (one per MoE layer); ``attention_mask``
    (``[batch, seq]``) excludes padding. ``f_e`` counts the top-k assignments (so a perfectly balanced router
    gives ``top_k``). Delegates to ``transformers.models.mixtral.modeling_mixtral.load_balancing_loss_func``.
    """
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    if not isinstance(router_logits, tuple) or len(router_logits) == 0:
        raise ValueError("router_logits must be a non-empty tuple of per-layer [tokens, experts] tensors")
    return load_balancing_loss_func(router_logits, num_experts, top_k, attention_mask)
