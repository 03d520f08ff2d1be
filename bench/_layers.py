"""Shared pieces of the FFN / expert-layer benchmarks (bench/pad_ffn.py, bench/moe_layer.py)."""

from __future__ import annotations

import os
import statistics
import time

import torch
from torch import nn

from _results import cpu_model
from hf_dynamic.models.partial_moe_bert import PartialMoEBertConfig
from hf_dynamic.pad.layers import PartialDynamicFFN

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


class DenseFFN(nn.Module):
    """BERT's FFN: ``down(gelu(up(x)))`` with biases."""

    def __init__(self, hidden, ffn):
        super().__init__()
        self.up = nn.Linear(hidden, ffn)
        self.down = nn.Linear(ffn, hidden)

    def forward(self, x):
        return self.down(nn.functional.gelu(self.up(x)))


def moe_layer(hidden, ffn, experts, top_k, kappa, granularity, implementation=None):
    """A PartialDynamicFFN (router included): κ = 1 (full MoE) or a finalised κ layer (neuron: exactly κ·d_ff
    dynamic neurons; element: a random mask keeping κ of the entries). ``implementation`` None = the default."""
    config = PartialMoEBertConfig(hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=1,
                                  num_attention_heads=1, num_experts=experts, num_experts_per_tok=top_k,
                                  dynamic_ratio=kappa, partition_granularity=granularity)
    config._experts_implementation = implementation
    layer = PartialDynamicFFN(config, 0)
    if kappa < 1:
        random_partition_(layer, kappa)
        counts = layer.finalize_()
        config.pad_partition, config.pad_state = {"0": counts}, "finalized"
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if name != "phi":
                p.normal_(0, 0.02)
    return layer


@torch.no_grad()
def random_partition_(layer: PartialDynamicFFN, kappa: float) -> None:
    """Set a random mask keeping exactly ``round(κ·m)`` of the layer's ``m`` entries dynamic (the speed of a
    partition does not depend on which entries IMP would pick)."""
    flat = torch.zeros(layer.num_partition_entries, dtype=torch.bool)
    flat[torch.randperm(flat.numel())[: round(kappa * flat.numel())]] = True
    layer.set_partition_mask(flat)


def make_step(layer, x, grad, backward, inner=1):
    """A closure running ``inner`` forwards (no grad) or forward+backwards of ``layer`` on ``x``, then syncing."""
    def step():
        for _ in range(inner):
            if backward:
                x.grad = None
                out = layer(x)
                out = out[0] if isinstance(out, tuple) else out
                out.backward(grad)
            else:
                with torch.no_grad():
                    layer(x)
        if x.device.type == "cuda":
            torch.cuda.synchronize()
    return step


def time_interleaved(steps: dict, repeats: int, inner: int = 1) -> dict:
    """Median seconds per call of each named step (divided by ``inner``, the calls a step makes); the steps run
    round-robin after 2 warm-ups each, so a change in machine load affects them alike and the ratios stay
    meaningful on a shared machine."""
    for step in steps.values():
        for _ in range(2):
            step()
    times = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append((time.perf_counter() - start) / inner)
    return {name: statistics.median(t) for name, t in times.items()}


def machine_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return (f"CPU {cpu_model()}, {os.cpu_count()} cores, "
            f"{torch.get_num_threads()} torch threads")
