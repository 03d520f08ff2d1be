"""The PEMN configuration: a PEFT config whose fields are the prototype recipe and the mask sparsity (docs/pemn.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

from peft.config import PeftConfig

from ..core.validation import check_bool, check_choice, check_number
from . import register, retry_registration
from .prototypes import INITS, STRATEGIES

PEFT_TYPE = "PEMN"  # the peft_type string written to adapter_config.json (see hf_dynamic.pemn.register)

# The fields that decide the frozen weights and the kept count of every mask: a checkpoint stores them (as the
# recipe) and refuses to load into a model built from a different recipe.
SCORE_INITS = ("kaiming_uniform", "magnitude")
RECIPE_FIELDS = ("strategy", "seed", "init", "ratio", "permute", "sparsity", "scale_fan", "random_bias")


def check_targets(name: str, value, required: bool) -> None:
    """``ValueError`` naming ``name`` unless ``value`` is a module-name regex (``str``) or a list / tuple / set of
    names; when ``required``, ``None`` or an empty list is refused too (PEMN has no per-architecture default
    targets, and peft would otherwise fail later with an ``AttributeError``)."""
    if value is None:
        if required:
            raise ValueError(f"{name} is required (PEMN has no default targets for any architecture): pass the "
                             "names or a regex of the nn.Linear / nn.Conv2d modules to mask, e.g. ['fc1', 'fc2'] "
                             "or 'all-linear'")
        return
    if isinstance(value, str):
        if not value:
            raise ValueError(f"{name} must be a non-empty string or list of module names, got ''")
        return
    if not isinstance(value, (list, tuple, set)) or (required and not value) \
            or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"{name} must be a regex (str) or a {'non-empty ' if required else ''}list of module names "
                         f"(str), got {value!r}")


@dataclass
class PEMNConfig(PeftConfig):
    """Configuration of a parameter-efficient masking network (Bai et al., NeurIPS 2022).

    Every targeted ``nn.Linear`` / ``nn.Conv2d`` has its weight replaced by a frozen random weight drawn from a
    prototype (``strategy``, ``seed``, ``init``, ``ratio``, ``permute``); only one score per weight is trained, and
    the forward uses the ``1 - sparsity`` fraction of weights with the largest ``|score|`` (edge-popup). A saved
    adapter holds the recipe (in ``adapter_config.json``) and one bit per weight.
    """

    target_modules: Optional[Union[list[str], str]] = field(
        default=None,
        metadata={
            "help": "Names (or a regex) of the nn.Linear / nn.Conv2d modules to turn into masked random layers, e.g. "
            "['fc1', 'fc2'] or 'all-linear'. Required: PEMN has no per-architecture default."
        },
    )
    exclude_modules: Optional[Union[list[str], str]] = field(
        default=None, metadata={"help": "Names (or a regex) of modules not to target, even if target_modules match."}
    )
    strategy: str = field(
        default="mp",
        metadata={
            "help": "Prototype strategy: 'one_layer' (layers of one shape share one random tensor), 'mp' (max-layer "
            "padding: each layer is a prefix of the largest layer's random tensor) or 'rp' (random vector padding: a "
            "vector of ratio * numel(largest layer) entries repeated to fill each layer)."
        },
    )
    sparsity: float = field(
        default=0.5,
        metadata={
            "help": "Fraction of each layer's weights masked OUT, in (0, 1); the mask keeps exactly "
            "round((1 - sparsity) * numel) weights per layer."
        },
    )
    ratio: float = field(
        default=0.1,
        metadata={
            "help": "RP only: the random vector's length as a fraction r in (0, 1] of the largest layer's numel."},
    )
    permute: bool = field(
        default=True,
        metadata={"help": "RP only: shuffle the repeated vector with a per-layer permutation drawn from the seed."},
    )
    init: str = field(
        default="signed_constant",
        metadata={
            "help": "Random init of the prototype: 'signed_constant' (±std, the signed Kaiming constant) or "
            "'kaiming_normal' (N(0, std^2)), std = sqrt(2 / fan_in) of each layer."
        },
    )
    scale_fan: bool = field(
        default=False,
        metadata={"help": "Compute each layer's Kaiming std from the kept fan-in (1 - sparsity) * fan_in instead."},
    )
    seed: int = field(default=0, metadata={"help": "Seed from which the prototype (and seeded biases) is regenerated."})
    random_bias: bool = field(
        default=False,
        metadata={
            "help": "Targeted layers' biases: False drops them (the paper's networks have none); True draws them from "
            "the seed (frozen, torch's default uniform init) for layers whose base layer has a bias. The base model's "
            "own biases are never used."
        },
    )
    init_scores: str = field(
        default="kaiming_uniform",
        metadata={
            "help": "Initial scores: 'kaiming_uniform' (edge-popup's choice, random ranks) or 'magnitude' (|w| of "
            "the random weight, so the initial mask keeps the largest random weights). Not needed to reload."
        },
    )
    modules_to_save: Optional[list[str]] = field(
        default=None,
        metadata={
            "help": "Extra modules trained in full and saved in fp32 (e.g. a classifier head that is not targeted); "
            "they add to the stored bytes."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = PEFT_TYPE
        register()  # a PEMNConfig in hand means peft is imported: make sure it knows "PEMN" (idempotent)
        check_targets("PEMNConfig.target_modules", self.target_modules, required=True)
        check_targets("PEMNConfig.exclude_modules", self.exclude_modules, required=False)
        if isinstance(self.target_modules, (list, tuple)):
            self.target_modules = set(self.target_modules)
        check_choice("PEMNConfig.strategy", self.strategy, STRATEGIES)
        check_number("PEMNConfig.sparsity", self.sparsity, gt=0, lt=1)  # the fraction masked OUT
        check_number("PEMNConfig.ratio", self.ratio, gt=0, le=1)  # r of RP
        check_choice("PEMNConfig.init", self.init, INITS)
        check_choice("PEMNConfig.init_scores", self.init_scores, SCORE_INITS)
        check_number("PEMNConfig.seed", self.seed, integer=True, ge=0)
        for name in ("permute", "scale_fan", "random_bias"):
            check_bool(f"PEMNConfig.{name}", getattr(self, name))

    def recipe(self) -> dict:
        """The fields that decide the frozen weights and the masks' kept counts (see ``RECIPE_FIELDS``)."""
        return {name: getattr(self, name) for name in RECIPE_FIELDS}


retry_registration()  # see hf_dynamic.pemn._register_quietly
