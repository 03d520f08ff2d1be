"""Expert diversity at upcycling: Drop-Upcycling (Nakamura et al., ICLR 2025; ``docs/pad.md``, "## Drop-Upcycling").

Sparse upcycling copies one dense FFN into every expert, so the experts start identical and, in a short
fine-tune, stay nearly so (``docs/pad.md``). Drop-Upcycling breaks the symmetry: in every expert independently,
a random share ``r`` of the ``d_ff`` intermediate neurons is re-initialised, i.e. for each dropped neuron ``j``
of expert ``i``

    up_i[j, :] ~ N(mean(up_i), std(up_i)),   up_bias_i[j] ~ N(mean(up_bias_i), std(up_bias_i)),
    down_i[:, j] ~ N(mean(down_i), std(down_i)),

the statistics being those of the expert's whole (still dense-copied) tensor. The other ``(1 − r)·d_ff`` neurons
keep the pre-trained weights; the static weight of a PAD-Net layer is never touched. It applies to the layouts
that store full-size experts (plain MoE and IMP's masked layouts), i.e. before IMP finalises the layer.
"""

from __future__ import annotations

import torch

from ..core.validation import check_number

# the expert tensors indexed by the intermediate neuron, and that neuron's axis in one expert's slice (``[F, H]``,
# ``[F]``, ``[H, F]``); the down-projection bias (``[E, H]``) has no neuron axis and is kept.
NEURON_AXIS = {"up_proj": 0, "up_proj_bias": 0, "down_proj": 1}


@torch.no_grad()
def drop_upcycle_(layers, ratio: float, generator: torch.Generator | None = None) -> int:
    """Re-initialise ``round(ratio · d_ff)`` random neurons in every expert of every layer, in place (the formula:
    module docstring). ``layers``: :class:`~hf_dynamic.pad.layers.PartialDynamicFFN` modules with full-size
    experts. ``generator``: the random source (default: torch's global one). Returns the neurons re-initialised
    per expert. Raises ValueError for a ratio outside ``[0, 1]`` or a finalised layer, before changing anything."""
    check_number("ratio", ratio, ge=0, le=1)
    layers = list(layers)
    for layer in layers:
        if layer.layout not in ("moe", "masked"):
            raise ValueError(f"drop_upcycle_ needs full-size experts (layout 'moe' or 'masked'); layer "
                             f"{layer.layer_idx} is {layer.layout!r}")
    count = 0
    for layer in layers:
        count = round(ratio * layer.ffn_size)
        tensors = {name: getattr(layer, name) for name in NEURON_AXIS if hasattr(layer, name)}
        for expert in range(layer.num_experts):
            neurons = torch.randperm(layer.ffn_size, generator=generator)[:count].to(layer.router.weight.device)
            for name, param in tensors.items():
                weight = param[expert]
                axis = NEURON_AXIS[name]
                shape = list(weight.shape)
                shape[axis] = count
                fresh = torch.randn(shape, generator=generator, dtype=torch.float32)
                fresh = fresh.to(weight.device) * weight.float().std() + weight.float().mean()
                weight.index_copy_(axis, neurons, fresh.to(weight.dtype))
        layer.clear_cache()
    return count
