"""PAD-Net: partially dynamic networks (He et al., arXiv 2211.05528; METHODS.md §1).

- :mod:`hf_dynamic.pad.layers`: the partially dynamic MoE FFN (static + dynamic experts, λ, masks, compaction);
- :mod:`hf_dynamic.pad.experts`: the routed-experts computation (transformers' expert kernels, eager reference);
- :mod:`hf_dynamic.pad.imp`: Iterative Mode Partition (``iterative_mode_partition``, ``IMPCallback``).
"""
