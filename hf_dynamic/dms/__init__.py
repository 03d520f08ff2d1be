"""DMS: differentiable model scaling for Llama-family causal LMs (METHODS.md §3, issue 5).

- :mod:`hf_dynamic.dms.pruner`: :class:`DMSPruner` (masks via hooks, resource loss, hard masks, export);
- :mod:`hf_dynamic.dms.callback`: :class:`DMSCallback` (Trainer glue: resource loss, target ramp, keep-ratio lr);
- :mod:`hf_dynamic.dms.export`: slicing into a stock ``LlamaForCausalLM`` or a per-layer ``dms_llama`` model;
- :mod:`hf_dynamic.dms.baselines`: magnitude and one-shot Taylor structured pruning at a matched parameter count.

Primitives live in :mod:`hf_dynamic.core` (``topk.DifferentiableTopK``, ``importance.taylor_importance_ema_``,
``resources.llama_param_count`` / ``llama_forward_flops``). Nothing is imported here (``import hf_dynamic`` stays
cheap); the public names are resolved lazily by the package root.
"""
