"""run_glue.py variant of PEMN (docs/pemn.md): the packaged MiniLM classifier whose encoder Linear layers are
replaced by *random* weights of the same shape, regenerated from a seed, of which only a binary mask per layer is
learned (edge-popup); the classifier head is trained in full. Embeddings and LayerNorms keep their pre-trained
values (they are not Linear layers, so PEMN does not touch them) and are frozen, as peft freezes every
non-adapter parameter.

    python examples/glue/run_glue.py --task sst2 --variant pemn --pemn_sparsity 0.5 --learning_rate 1e-3
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

VARIANTS = ("pemn",)
# Every Linear layer inside the encoder (q, k, v, attention output, FFN in and out), not the pooler or the head.
ENCODER_LINEARS = r".*encoder\.layer\.\d+\..*(query|key|value|dense)$"


@dataclass
class Arguments:
    pemn_strategy: str = field(default="mp", metadata={"help": "Prototype: one_layer, mp or rp"})
    pemn_sparsity: float = field(default=0.5, metadata={"help": "Fraction of each layer's random weights masked out"})
    pemn_ratio: float = field(default=0.1, metadata={"help": "r, the random vector's length ratio (rp)"})
    pemn_seed: int = field(default=0, metadata={"help": "Seed of the random prototype"})
    pemn_target_modules: str = field(default=ENCODER_LINEARS, metadata={"help": "Regex of the layers to mask"})


def build_model(variant, script_args, args, num_labels, problem_type):
    """The pre-trained MiniLM classifier with PEMN on its encoder's Linear layers (``peft.get_peft_model``)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    from peft import get_peft_model
    from transformers import AutoModelForSequenceClassification

    import hf_dynamic

    path = script_args.model_name_or_path or str(hf_dynamic.minilm_path())
    base = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels, problem_type=problem_type,
                                                              dtype=torch.float32)
    config = hf_dynamic.PEMNConfig(target_modules=args.pemn_target_modules, strategy=args.pemn_strategy,
                                   sparsity=args.pemn_sparsity, ratio=args.pemn_ratio, seed=args.pemn_seed,
                                   modules_to_save=["classifier"], task_type="SEQ_CLS")
    return get_peft_model(base, config)


def make_callbacks(variant, script_args, args):
    return []


def masked_shapes(model) -> list[tuple[int, ...]]:
    """The weight shapes of the layers PEMN masks (one ``pemn_scores`` tensor per layer)."""
    return [tuple(p.shape) for n, p in model.named_parameters() if ".pemn_scores." in n]


def after_training(variant, script_args, args, trainer, eval_datasets, task):
    """Stored bytes of the masked layers: PEMN (seed + recipe + 1 bit per weight) against their fp32 weights."""
    from hf_dynamic.pemn.api import pemn_storage_bytes

    model = trainer.model
    shapes = masked_shapes(model)
    numel = sum(torch.Size(s).numel() for s in shapes)
    config = model.peft_config["default"]
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"pemn": {"strategy": config.strategy, "sparsity": config.sparsity, "ratio": config.ratio,
                     "seed": config.seed, "masked_layers": len(shapes), "masked_weights": numel,
                     "stored_bytes_masked_layers": pemn_storage_bytes(shapes, config),
                     "dense_fp32_bytes_masked_layers": 4 * numel, "trainable_parameters": trainable}}
