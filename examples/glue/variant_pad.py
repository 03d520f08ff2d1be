"""run_glue.py variants of PAD-Net (METHODS.md §1): `moe` (upcycled top-k MoE, κ = 1) and `pad_moe` (κ < 1, IMP
at the start of training on the Trainer's own data, compact model at the end).

    python examples/glue/run_glue.py --task mrpc --variant pad_moe --pad_dynamic_ratio 0.5 --pad_granularity neuron
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from hf_dynamic.models.partial_moe_bert import PartialMoEBertForSequenceClassification
from hf_dynamic.pad.imp import IMPCallback, pad_layers
from hf_dynamic.pad.optim import PADTrainer

VARIANTS = ("moe", "pad_moe")


@dataclass
class Arguments:
    moe_num_experts: int = field(default=8, metadata={"help": "Experts per MoE layer (E)"})
    moe_top_k: int = field(default=2, metadata={"help": "Experts per token (top-k)"})
    moe_layers: str | None = field(default=None, metadata={"help": "Comma-separated MoE layer indices (default: all)"})
    moe_router_aux_loss_coef: float = field(default=0.01, metadata={"help": "Weight of the load-balancing loss"})
    moe_router_jitter_noise: float = field(default=0.0, metadata={"help": "Router input jitter in training"})
    moe_router_noise_std: float = field(default=0.0, metadata={"help": "Router logit noise std in training"})
    moe_drop_upcycling: float = field(default=0.0, metadata={
        "help": "Drop-Upcycling: share of d_ff neurons re-initialised in every expert after upcycling (0: off)"})
    pad_dynamic_ratio: float = field(default=0.5, metadata={"help": "κ, the dynamic fraction (pad_moe)"})
    pad_granularity: str = field(default="element", metadata={"help": "element (the paper) or neuron (structured)"})
    imp_iterations: int = field(default=2, metadata={"help": "IMP rounds T (kept fraction κ^((t+1)/T))"})
    imp_num_batches: int = field(default=8, metadata={"help": "Training batches scored per IMP round"})
    imp_scope: str = field(default="global", metadata={"help": "global (over all layers) or layer"})
    imp_score: str = field(default="auto", metadata={"help": "auto, snip or grad_variance"})
    router_lr_scale: float = field(default=1.0, metadata={"help": "Routers' lr as a multiple of --learning_rate"})
    lambda_lr_scale: float = field(default=1.0, metadata={"help": "λ's (φ) lr as a multiple of --learning_rate"})

    def __post_init__(self):
        # checked at parsing, before any data or model is loaded (drop_upcycle_ itself runs after upcycling)
        if not 0.0 <= self.moe_drop_upcycling <= 1.0:
            raise ValueError(f"--moe_drop_upcycling must be in [0, 1], got {self.moe_drop_upcycling!r}")


def _moe_layers(args):
    if args.moe_layers is None:
        return None
    return [int(i) for i in args.moe_layers.split(",") if i.strip()]


def build_model(variant, script_args, args, num_labels, problem_type):
    """Upcycle the dense checkpoint (default: the packaged MiniLM) into a PartialMoEBert classifier."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    from hf_dynamic.assets import minilm_path

    path = script_args.model_name_or_path or str(minilm_path())
    model = PartialMoEBertForSequenceClassification.from_dense(
        path, num_labels=num_labels, problem_type=problem_type, num_experts=args.moe_num_experts,
        num_experts_per_tok=args.moe_top_k, moe_layers=_moe_layers(args),
        router_aux_loss_coef=args.moe_router_aux_loss_coef, router_jitter_noise=args.moe_router_jitter_noise,
        router_noise_std=args.moe_router_noise_std,
        dynamic_ratio=1.0 if variant == "moe" else args.pad_dynamic_ratio,
        partition_granularity=args.pad_granularity)
    if args.moe_drop_upcycling > 0:  # torch's global RNG, seeded by run_glue's set_seed(--seed) before this call
        model.drop_upcycle_(args.moe_drop_upcycling)
    return model


def make_callbacks(variant, script_args, args):
    if variant != "pad_moe":
        return []
    return [IMPCallback(iterations=args.imp_iterations, num_batches=args.imp_num_batches, scope=args.imp_scope,
                        score=args.imp_score)]


def trainer_class_and_kwargs(variant, script_args, args):
    """``PADTrainer``: the routers and λ at their own learning rates (``docs/pad.md``, "## Learning rates")."""
    return PADTrainer, {"router_lr_scale": args.router_lr_scale, "lambda_lr_scale": args.lambda_lr_scale}


EXPERT_PARAMETERS = ("up_proj", "up_proj_bias", "down_proj", "down_proj_bias")


def parameter_counts(model) -> dict:
    """Total parameters, those of the MoE FFNs (experts + static + λ, router excluded), the routers, and the
    parameters *active per token*: the total less the ``(E − k)/E`` share of the per-expert tensors
    (``[E, ...]``) that a token's top-k routing leaves unused (static parts and routers are always active)."""
    ffn = router = idle = 0
    config = model.config
    idle_share = (config.num_experts - config.num_experts_per_tok) / config.num_experts
    for name, param in model.named_parameters():
        if ".mlp.router." in name:
            router += param.numel()
        elif ".mlp." in name:
            ffn += param.numel()
            if name.rsplit(".", 1)[-1] in EXPERT_PARAMETERS:
                idle += param.numel() * idle_share
    total = model.num_parameters()
    return {"num_parameters": total, "num_parameters_active": round(total - idle), "num_parameters_moe_ffn": ffn,
            "num_parameters_router": router}


def expert_spread(model) -> dict[str, float]:
    """Per MoE layer, how far its experts moved apart: ``mean_i ||W_i − W̄|| / ||W̄||`` over the per-expert weight
    tensors (up and down projections, their dynamic entries in a finalised PAD layer), ``W̄`` the experts' mean.
    0 for the identical copies that upcycling starts from."""
    per_layer: dict[str, list[torch.Tensor]] = {}
    for name, param in model.named_parameters():
        if ".mlp." in name and name.rsplit(".", 1)[-1] in ("up_proj", "down_proj"):
            layer = name.split(".mlp.")[0].rsplit(".", 1)[-1]
            per_layer.setdefault(layer, []).append(param.detach().float().reshape(param.shape[0], -1))
    spread = {}
    for layer, tensors in per_layer.items():
        weights = torch.cat(tensors, dim=1)  # [E, all of the layer's expert entries]
        mean = weights.mean(0, keepdim=True)
        spread[layer] = float((weights - mean).norm(dim=1).mean() / mean.norm().clamp_min(1e-12))
    return spread


def after_training(variant, script_args, args, trainer, eval_datasets, task):
    model = trainer.model
    config = model.config
    results = {
        **parameter_counts(model),
        "moe": {"num_experts": config.num_experts, "top_k": config.num_experts_per_tok,
                "dynamic_ratio": config.dynamic_ratio, "granularity": config.partition_granularity,
                "pad_state": config.pad_state, "expert_spread": expert_spread(model),
                "router_lr_scale": args.router_lr_scale, "lambda_lr_scale": args.lambda_lr_scale,
                "drop_upcycling": args.moe_drop_upcycling},
    }
    if variant == "pad_moe":
        layers = pad_layers(model)
        results["moe"]["lambda_d"] = {str(l.layer_idx): float(l.lambdas()[1].detach()) for l in layers}
        imp = [c for c in trainer.callback_handler.callbacks if isinstance(c, IMPCallback)]
        if imp and imp[0].summary is not None:
            results["imp"] = imp[0].summary
    return results
