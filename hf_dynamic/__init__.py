"""hf_dynamic: dynamic networks as first-class Hugging Face transformers models.

Importing the package registers every model type it defines with transformers' Auto classes (see
:mod:`hf_dynamic.registry`), so ``AutoModel*.from_pretrained`` loads our checkpoints without
``trust_remote_code``. Everything else (data loading, metrics, assets, callbacks) is imported lazily on first
attribute access, so ``import hf_dynamic`` never pulls in datasets, matplotlib, peft or deepspeed.
"""

from .core.lazy import lazy_attributes

__version__ = "0.1.0"

# Public name -> module that defines it. Modules are imported on first access (PEP 562).
_LAZY = {
    # assets
    "minilm_path": "hf_dynamic.assets",
    "smollm2_gguf_path": "hf_dynamic.assets",
    "smollm2_path": "hf_dynamic.assets",
    # data
    "GLUE_TASKS": "hf_dynamic.data.glue",
    "load_glue": "hf_dynamic.data.glue",
    "compute_glue_metrics": "hf_dynamic.data.metrics",
    "glue_compute_metrics_fn": "hf_dynamic.data.metrics",
    "load_text": "hf_dynamic.data.text",
    "perplexity": "hf_dynamic.data.perplexity",
    # PAD-Net (Iterative Mode Partition)
    "iterative_mode_partition": "hf_dynamic.pad.imp",
    "IMPCallback": "hf_dynamic.pad.imp",
    "finalize_partition": "hf_dynamic.pad.imp",
    "PADTrainer": "hf_dynamic.pad.optim",
    # PAD-Net / dynamic convolution layers
    "DynamicConv2d": "hf_dynamic.pad.conv",
    "PartialDynamicConv2d": "hf_dynamic.pad.conv",
    "TemperatureAnnealingCallback": "hf_dynamic.pad.temperature",
    # BoostNet (budgeted early exit)
    "calibrate_thresholds": "hf_dynamic.boost.calibration",
    "accuracy_cost_curve": "hf_dynamic.boost.calibration",
    "plot_accuracy_cost_curve": "hf_dynamic.boost.calibration",
    "BackboneAdapter": "hf_dynamic.boost.backbones",
    "register_backbone_adapter": "hf_dynamic.boost.backbones",
    # DMS
    "DifferentiableTopK": "hf_dynamic.core.topk",
    "DMSPruner": "hf_dynamic.dms.pruner",
    "DMSCallback": "hf_dynamic.dms.callback",
    "DMSTrainer": "hf_dynamic.dms.trainer",
    "DistillationTrainer": "hf_dynamic.distill.trainer",
    "DistillationTrainerMixin": "hf_dynamic.distill.trainer",
    "distillation_kl_loss": "hf_dynamic.core.distillation",
    # slimmable networks (docs/slim.md)
    "make_slimmable": "hf_dynamic.slim.modeling",
    "set_width": "hf_dynamic.slim.modeling",
    "export_width": "hf_dynamic.slim.export",
    "SlimmableTrainer": "hf_dynamic.slim.trainer",
    "SlimmableTrainerMixin": "hf_dynamic.slim.trainer",
    # deploy (exports to other engines)
    "save_gguf": "hf_dynamic.deploy.gguf",
    "export_onnx": "hf_dynamic.deploy.onnx",
    # PEMN (a peft method: peft.get_peft_model(model, PEMNConfig(...)))
    "PEMNConfig": "hf_dynamic.pemn.config",
    "PEMNModel": "hf_dynamic.pemn.model",
    # digit images
    "load_mnist": "hf_dynamic.data.mnist",
    "load_sklearn_digits": "hf_dynamic.data.mnist",
}

from .registry import register_all as _register_all  # noqa: E402

_PUBLIC_MODEL_NAMES = _register_all()  # the one registration entry point: Auto classes, sharing, kernel, PEMN hook
globals().update(_PUBLIC_MODEL_NAMES)


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())


__all__ = ["__version__", *sorted(_PUBLIC_MODEL_NAMES), *sorted(_LAZY)]
