"""The PEMN tuner: turns the targeted layers of any model into masked random layers (docs/pemn.md, "## Storage").

:class:`PEMNModel` is a ``peft`` tuner (``BaseTuner``): ``peft.get_peft_model(model, PEMNConfig(...))`` builds one
prototype per adapter from the seed and the target layers' shapes, and wraps every targeted ``nn.Linear`` /
``nn.Conv2d`` in a :mod:`.layer` module. Saving and loading go through two hooks of ``BaseTuner``:

- :meth:`PEMNModel._get_adapter_state_dict` replaces each layer's float scores by its mask, bit-packed
  (``<layer>.pemn_mask``, ``ceil(numel / 8)`` bytes), and adds the recipe (``base_model.pemn_recipe``, its JSON as
  bytes) and, when the model has tensors the adapter does not replace (a transformer's embeddings and LayerNorms),
  their fingerprint (``base_model.pemn_base_fingerprint``, :func:`base_fingerprint`); nothing else is written;
- :meth:`PEMNModel._remap_adapter_state_dict_for_load` checks the recipe against the model's config and each mask's
  bit count and kept count against its layer, then turns each mask back into scores (1 kept, 0 dropped) whose
  edge-popup mask is that mask exactly; a base whose untargeted tensors differ from the fingerprint's is reported
  (a warning: the masked layers are exact, the rest of the network is not the trained one).
"""

from __future__ import annotations

import hashlib
import json
import math

import torch
from peft.tuners.tuners_utils import BaseTuner
from peft.utils.other import AuxiliaryTrainingWrapper
from torch import nn
from transformers.utils import logging

from ..core.masks import pack_bool_mask, packed_numel, unpack_bool_mask
from . import retry_registration
from .config import PEMNConfig
from .layer import LAYER_CLASSES, SUPPORTED_LAYERS, PEMNLayer, edge_popup_mask, keep_count
from .prototypes import build_prototype

SCORES = "pemn_scores"
MASK = "pemn_mask"
RECIPE_KEY = "base_model.pemn_recipe"
FINGERPRINT_KEY = "base_model.pemn_base_fingerprint"
PEFT_PREFIX = "base_model.model."

logger = logging.get_logger(__name__)


def target_layer_shapes(model: nn.Module, config: PEMNConfig, matches) -> dict[str, tuple[int, ...]]:
    """Name -> weight shape of every module of ``model`` that ``config`` targets (``matches(config, name)``).

    ``ValueError`` if a matched module is not an ``nn.Linear`` / ``nn.Conv2d`` or if nothing matches (naming the
    target modules and the candidate layers).
    """
    shapes = {}
    for name, module in model.named_modules():
        if not name or not matches(config, name):
            continue
        base = module.get_base_layer() if isinstance(module, PEMNLayer) else module
        if type(base) not in LAYER_CLASSES:
            raise ValueError(
                f"PEMNConfig.target_modules={config.target_modules!r} matches {name!r}, a {type(base).__name__}; "
                f"PEMN supports {', '.join(c.__name__ for c in SUPPORTED_LAYERS)} only")
        shapes[name] = tuple(base.weight.shape)
    if not shapes:
        candidates = [n for n, m in model.named_modules() if type(m) in LAYER_CLASSES]
        raise ValueError(
            f"PEMNConfig.target_modules={config.target_modules!r} matched no module of the model; its "
            f"{'/'.join(c.__name__ for c in SUPPORTED_LAYERS)} modules are {candidates[:20]}"
            + (" ..." if len(candidates) > 20 else ""))
    return shapes


def recipe_tensor(config: PEMNConfig) -> torch.Tensor:
    """The recipe as a ``uint8`` tensor (its sorted-key JSON, UTF-8)."""
    return torch.tensor(list(json.dumps(config.recipe(), sort_keys=True).encode("utf-8")), dtype=torch.uint8)


def check_recipe(stored: torch.Tensor | None, config: PEMNConfig) -> None:
    """``ValueError`` unless the checkpoint's recipe tensor equals ``config``'s recipe."""
    if stored is None:
        raise ValueError(f"checkpoint has no {RECIPE_KEY!r} entry: it was not saved by PEMN")
    saved = json.loads(bytes(stored.to(torch.uint8).tolist()).decode("utf-8"))
    if saved != config.recipe():
        diff = {k: (saved.get(k), v) for k, v in config.recipe().items() if saved.get(k) != v}
        raise ValueError(
            "checkpoint was saved with another prototype recipe; field: (checkpoint, model) = "
            + ", ".join(f"{k}: {a!r} vs {b!r}" for k, (a, b) in diff.items()))


def _untargeted(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The entries of ``state_dict`` (of ``model``) that the adapter neither replaces (PEMN layers) nor stores
    (peft's ``modules_to_save`` wrappers), keyed without peft's ``base_model.model.`` prefix."""
    owned = tuple(f"{name.removeprefix(PEFT_PREFIX)}." for name, module in model.named_modules()
                  if name and isinstance(module, (PEMNLayer, AuxiliaryTrainingWrapper)))
    names = {key: key.removeprefix(PEFT_PREFIX) for key in state_dict}
    return {name: state_dict[key] for key, name in names.items() if not name.startswith(owned)}


def _digest(tensors: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """SHA-256 (32 ``uint8``) over the name, dtype, shape and bytes of each tensor, in name order; ``None`` when
    there is no tensor or one has no data (a meta tensor: weights not materialised, nothing to compare)."""
    if not tensors or any(t.is_meta for t in tensors.values()):
        return None
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode("utf-8"))
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return torch.frombuffer(bytearray(digest.digest()), dtype=torch.uint8)


def base_fingerprint(model: nn.Module, state_dict: dict[str, torch.Tensor] | None = None) -> torch.Tensor | None:
    """The fingerprint of the base model's tensors that a PEMN adapter does not carry (embeddings, LayerNorms,
    untargeted layers): SHA-256 (32 ``uint8``) over their names, dtypes, shapes and bytes; ``None`` when there is
    none (or they are not materialised).

    A PEMN adapter rebuilds its masked layers from the recipe, but the network also runs these tensors, taken from
    whatever base it is loaded on: the fingerprint lets loading tell whether they are the trained ones
    (docs/pemn.md, "## Storage"). It costs one pass over the untargeted weights at save and at load.
    """
    return _digest(_untargeted(model, model.state_dict() if state_dict is None else state_dict))


def check_base_fingerprint(stored: torch.Tensor | None, model: nn.Module) -> bool:
    """Warn (and return False) when ``model``'s untargeted tensors differ from the ``stored`` fingerprint. Not
    checked (True): an adapter saved without one (an all-targeted model, or an older adapter), and a base whose
    weights are not materialised (meta tensors)."""
    if stored is None:
        return True
    tensors = _untargeted(model, model.state_dict())
    if any(t.is_meta for t in tensors.values()):
        logger.info("PEMN: the base model's untargeted tensors are not materialised; base fingerprint not checked")
        return True
    current = _digest(tensors)
    if current is not None and torch.equal(stored.to(torch.uint8).cpu(), current):
        return True
    names = sorted(tensors)
    logger.warning(
        "PEMN adapter loaded on a base model whose untargeted tensors (those the adapter does not store: "
        f"{len(names)} tensors such as {names[:3]}) are not the ones it was trained with (values, dtypes or shapes "
        "differ from the adapter's base fingerprint). The masked layers are exact, the rest of the network is not: "
        "the outputs differ from the trained model's. Load the adapter on the base it was trained on (the same "
        "checkpoint, or the same seed and initialisation).")
    return False


def unpack_layer_mask(packed: torch.Tensor, shape: tuple[int, ...], sparsity: float, layer: str) -> torch.Tensor:
    """Unpack and validate one stored mask: byte count, zero padding bits and kept count must fit ``shape``."""
    numel = math.prod(shape)
    if packed.dtype != torch.uint8 or packed.dim() != 1 or packed.numel() != packed_numel(numel):
        raise ValueError(
            f"mask of layer {layer!r} has {packed.numel() * 8} bits ({packed.numel()} bytes, {packed.dtype}) but the "
            f"layer's weight {shape} needs {numel} bits ({packed_numel(numel)} uint8 bytes)")
    bits = unpack_bool_mask(packed, (packed.numel() * 8,))
    if bits[numel:].any():
        raise ValueError(
            f"mask of layer {layer!r} sets bits beyond the layer's {numel} weights {shape}: its bit count disagrees")
    mask = bits[:numel].reshape(shape)
    kept, expected = int(mask.sum()), keep_count(sparsity, numel)
    if kept != expected:
        raise ValueError(
            f"mask of layer {layer!r} keeps {kept} of {numel} weights but sparsity={sparsity} keeps {expected}")
    return mask


class PEMNModel(BaseTuner):
    """Parameter-efficient masking network tuner: frozen random prototype weights, trained edge-popup masks.

    Example::

        import hf_dynamic, peft
        config = hf_dynamic.PEMNConfig(target_modules=["fc1", "fc2"], strategy="rp", ratio=0.1, sparsity=0.5)
        model = peft.get_peft_model(base_model, config)     # only the scores train
        model.save_pretrained("pemn")                       # the recipe and 1 bit per weight
        model = peft.PeftModel.from_pretrained(fresh_base, "pemn")
    """

    prefix: str = "pemn_"
    tuner_layer_cls = PEMNLayer
    target_module_mapping: dict[str, list[str]] = {}

    def _pre_injection_hook(self, model: nn.Module, config: PEMNConfig, adapter_name: str) -> None:
        shapes = target_layer_shapes(model, config, self._check_target_module_exists)
        prototype = build_prototype(shapes, config.strategy, config.seed, config.init, config.ratio, config.permute)
        self.__dict__.setdefault("pemn_prototypes", {})[adapter_name] = prototype

    def _create_and_replace(self, config, adapter_name, target, target_name, parent, current_key, **kwargs):
        prototype = self.__dict__["pemn_prototypes"][adapter_name]
        if isinstance(target, PEMNLayer):
            target.update_layer(adapter_name, prototype, current_key, config)
            return
        new_module = LAYER_CLASSES[type(target)](target, adapter_name, prototype, current_key, config)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)
        self._replace_module(parent, target_name, new_module, target)

    @staticmethod
    def _mask_from_scores(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
        with torch.no_grad():
            return edge_popup_mask(scores, sparsity).bool()

    @classmethod
    def _get_adapter_state_dict(cls, model, config, adapter_name, state_dict, unwanted_adapter_names):
        selected = super()._get_adapter_state_dict(model, config, adapter_name, state_dict, unwanted_adapter_names)
        scores_suffix = f".{SCORES}.{adapter_name}"
        to_return = {}
        for key, value in selected.items():
            if key.endswith(scores_suffix):
                layer = key[: -len(scores_suffix)]
                to_return[f"{layer}.{MASK}.{adapter_name}"] = pack_bool_mask(
                    cls._mask_from_scores(value, config.sparsity).cpu())
            else:
                to_return[key] = value
        to_return[f"{RECIPE_KEY}.{adapter_name}"] = recipe_tensor(config)
        fingerprint = base_fingerprint(model, state_dict)
        if fingerprint is not None:
            to_return[f"{FINGERPRINT_KEY}.{adapter_name}"] = fingerprint
        return to_return

    @classmethod
    def _remap_adapter_state_dict_for_load(cls, model, config, adapter_name, state_dict):
        state_dict = dict(state_dict)
        recipe = [state_dict.pop(k) for k in list(state_dict) if k == RECIPE_KEY or k.endswith(".pemn_recipe")]
        check_recipe(recipe[0] if recipe else None, config)
        fingerprint = [state_dict.pop(k) for k in list(state_dict)
                       if k == FINGERPRINT_KEY or k.endswith(".pemn_base_fingerprint")]
        check_base_fingerprint(fingerprint[0] if fingerprint else None, model)
        layers = {}
        for name, module in model.named_modules():
            if isinstance(module, PEMNLayer) and adapter_name in module.pemn_scores:
                layers[name.removeprefix(PEFT_PREFIX)] = module
        converted, restored = {}, set()
        for key, value in state_dict.items():
            if not key.endswith(f".{MASK}"):
                converted[key] = value
                continue
            name = key[: -len(f".{MASK}")].removeprefix(PEFT_PREFIX)
            if name not in layers:
                raise ValueError(f"checkpoint holds a mask for layer {name!r}, which is not a PEMN layer of the model")
            scores = layers[name].pemn_scores[adapter_name]
            mask = unpack_layer_mask(value, tuple(scores.shape), config.sparsity, name)
            converted[key[: -len(MASK)] + SCORES] = mask.to(device=scores.device, dtype=scores.dtype)
            restored.add(name)
        missing = sorted(set(layers) - restored)
        if missing:
            raise ValueError(f"checkpoint has no mask for PEMN layers {missing}")
        return super()._remap_adapter_state_dict_for_load(model, config, adapter_name, converted)


retry_registration()  # see hf_dynamic.pemn._register_quietly
