"""DMS: differentiable model scaling for Llama-family causal LMs (``docs/dms.md``).

- :mod:`hf_dynamic.dms.adapters`: the architecture adapter table (Llama, Mistral, Qwen2, Qwen3 module paths);
- :mod:`hf_dynamic.dms.pruner`: :class:`DMSPruner` (masks via hooks, resource loss, hard masks; the one holder of
  the resource target);
- :mod:`hf_dynamic.dms.target`: the target's checks, its ramp and the exact-target snap (``meet_target``);
- :mod:`hf_dynamic.dms.trainer`: :class:`DMSTrainer` / ``DMSTrainerMixin`` (``compute_loss`` + the resource loss);
- :mod:`hf_dynamic.dms.callback`: :class:`DMSCallback` (Trainer glue: target ramp, keep-ratio lr, logging);
- :mod:`hf_dynamic.dms.export`: the kept structure and its slicing into the stock class at uniform widths (the
  per-layer ``dms_llama`` model builds itself with ``DMSLlamaForCausalLM.from_pruned(pruner)`` from the same
  helpers);
- :mod:`hf_dynamic.dms.baselines`: magnitude and one-shot Taylor structured pruning at a matched parameter count.

Primitives live in :mod:`hf_dynamic.core` (``topk.DifferentiableTopK``, ``importance.taylor_importance_ema_``,
``resources.llama_param_count`` / ``llama_forward_flops``). Nothing is imported here (``import hf_dynamic`` stays
cheap); the public names are resolved lazily by the package root.
"""
