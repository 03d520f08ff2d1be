"""PEMN prototypes: the random weights of every masked layer, regenerated from one seed (docs/pemn.md, "## Prototypes").

A prototype maps each target layer (name, shape) to a frozen random weight ``scale(layer) * unit(layer)``:

- ``unit`` is unit-scale noise (``signed_constant``: ±1 with probability ½ each; ``kaiming_normal``: N(0, 1)) taken
  from a random source the strategy defines:

  - ``one_layer``: one unit tensor per distinct layer shape, shared by all layers of that shape;
  - ``mp`` (max-layer padding): one unit vector of ``numel(largest layer)`` entries; each layer is its first
    ``numel(layer)`` entries, reshaped;
  - ``rp`` (random vector padding): one unit vector of ``ceil(ratio * numel(largest layer))`` entries, tiled to
    ``numel(layer)`` entries (then, with ``permute``, shuffled by a per-layer permutation), reshaped;

- ``scale`` is the layer's Kaiming standard deviation ``gain / sqrt(fan_in)`` with the ReLU gain ``sqrt(2)``
  (``fan_in`` multiplied by ``1 - sparsity`` with ``scale_fan``), so every layer keeps a Kaiming-scaled weight
  whatever the strategy: one scalar per layer, computed from the shape, never stored.

Every draw comes from a CPU ``torch.Generator`` seeded by :func:`derive_seed` from the recipe's seed and a fixed
label (the shape, the layer name), so the weights depend only on the recipe and the target layers, not on the order
in which layers are visited or on the global RNG. :func:`build_prototype` is the one entry point.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field

import torch

STRATEGIES = ("one_layer", "mp", "rp")
INITS = ("signed_constant", "kaiming_normal")
RELU_GAIN = math.sqrt(2.0)


def derive_seed(seed: int, label: str) -> int:
    """A 63-bit generator seed from the recipe's ``seed`` and a ``label`` (stable across processes and machines)."""
    return (int(seed) * 0x9E3779B1 + zlib.crc32(label.encode("utf-8"))) % (2**63 - 1)


def generator(seed: int, label: str) -> torch.Generator:
    """A CPU generator seeded by :func:`derive_seed`."""
    return torch.Generator(device="cpu").manual_seed(derive_seed(seed, label))


def unit_noise(numel: int, init: str, gen: torch.Generator) -> torch.Tensor:
    """``numel`` unit-scale draws: ±1 (``signed_constant``) or N(0, 1) (``kaiming_normal``), float32, on the CPU."""
    if init == "signed_constant":
        return torch.randint(0, 2, (numel,), generator=gen, dtype=torch.int8).float().mul_(2).sub_(1)
    if init == "kaiming_normal":
        return torch.randn(numel, generator=gen)
    raise ValueError(f"init must be one of {INITS}, got {init!r}")


def fan_in(shape: tuple[int, ...]) -> int:
    """Inputs per output unit of a Linear ``(out, in)`` or Conv ``(out, in/groups, *kernel)`` weight."""
    return math.prod(shape[1:])


def kaiming_scale(shape: tuple[int, ...], sparsity: float = 0.0, scale_fan: bool = False) -> float:
    """``sqrt(2) / sqrt(fan_in)``; with ``scale_fan`` the fan-in counts only the kept fraction ``1 - sparsity``."""
    fan = fan_in(shape) * ((1.0 - sparsity) if scale_fan else 1.0)
    return RELU_GAIN / math.sqrt(fan)


@dataclass
class Prototype:
    """The random source of one PEMN network: :meth:`unit` and :meth:`bias` per target layer.

    ``layers`` maps each target layer's name to its weight shape; ``sources`` holds the random tensors the strategy
    draws (per shape for ``one_layer``, one vector for ``mp`` / ``rp``), the only random state besides the per-layer
    permutations and biases.
    """

    strategy: str
    seed: int
    init: str
    ratio: float
    permute: bool
    layers: dict[str, tuple[int, ...]]
    sources: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def max_numel(self) -> int:
        return max(math.prod(shape) for shape in self.layers.values())

    @property
    def source_numel(self) -> int:
        """Random numbers the prototype holds (what the paper counts as the prototype's size)."""
        return sum(t.numel() for t in self.sources.values())

    def unit(self, name: str) -> torch.Tensor:
        """The unit-scale weight of layer ``name`` (a view of the shared source where the strategy allows)."""
        shape = self.layers[name]
        numel = math.prod(shape)
        if self.strategy == "one_layer":
            return self.sources[str(shape)].view(shape)
        if self.strategy == "mp":
            return self.sources["max_layer"][:numel].view(shape)
        vector = self.sources["vector"]
        flat = vector.repeat(math.ceil(numel / vector.numel()))[:numel]
        if self.permute:
            flat = flat[torch.randperm(numel, generator=generator(self.seed, f"permute:{name}"))]
        return flat.view(shape)

    def bias(self, name: str, out_features: int) -> torch.Tensor:
        """A bias for layer ``name`` from the seed: uniform in ``±1/sqrt(fan_in)`` (torch's default bias init)."""
        bound = 1.0 / math.sqrt(fan_in(self.layers[name]))
        gen = generator(self.seed, f"bias:{name}")
        return torch.rand(out_features, generator=gen).mul_(2 * bound).sub_(bound)


def build_prototype(
    layers: dict[str, tuple[int, ...]],
    strategy: str,
    seed: int,
    init: str = "signed_constant",
    ratio: float = 0.1,
    permute: bool = True,
) -> Prototype:
    """Draw the prototype of ``strategy`` for the target ``layers`` (name -> weight shape)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if not layers:
        raise ValueError("a prototype needs at least one target layer")
    layers = {name: tuple(int(d) for d in shape) for name, shape in layers.items()}
    proto = Prototype(strategy, int(seed), init, float(ratio), bool(permute), layers)
    if strategy == "one_layer":
        for shape in sorted(set(layers.values())):
            proto.sources[str(shape)] = unit_noise(math.prod(shape), init, generator(seed, f"one_layer:{shape}"))
    elif strategy == "mp":
        proto.sources["max_layer"] = unit_noise(proto.max_numel, init, generator(seed, "mp"))
    else:
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"ratio must be in (0, 1], got {ratio!r}")
        length = max(1, math.ceil(ratio * proto.max_numel))
        proto.sources["vector"] = unit_noise(length, init, generator(seed, "rp"))
    return proto
