"""Primitives shared by every method of hf_dynamic (docs/core.md).

- :mod:`.masks`: exact top-k boolean masks and 1-bit mask packing;
- :mod:`.topk`: DMS's differentiable top-k operator (soft masks over ranked elements, learnable keep ratio);
- :mod:`.importance`: importance scores (SNIP ``|dL/dM|``, cross-expert gradient variance, Taylor EMA);
- :mod:`.routing`: mixture-of-experts routing (top-k softmax, router, load-balancing loss);
- :mod:`.gradient`: identity-forward gradient scaling;
- :mod:`.resources`: parameter and FLOP counts, differentiable in the widths;
- :mod:`.validation`: argument checks that name the bad field (a choice, a real number in a range, a bool);
- :mod:`.checkpoints`: a checkpoint folder's tensor shapes, read from the safetensors headers;
- :mod:`.distillation`: knowledge-distillation losses between a teacher and a student (docs/distill.md);
- :mod:`.zero`: DeepSpeed ZeRO-3 helpers (gathering sharded parameters);
- :mod:`.lazy`: lazy public names for a package (PEP 562).

The layering rule (docs/architecture.md): modules here import nothing of hf_dynamic outside ``hf_dynamic.core``.
Nothing is imported here, so ``import hf_dynamic.core.masks`` pulls in only what that module needs.
"""
