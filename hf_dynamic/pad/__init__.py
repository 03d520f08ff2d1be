"""PAD-Net: partially dynamic networks (He et al., arXiv 2211.05528; ``docs/pad.md``).

- :mod:`hf_dynamic.pad.interface`: the partially dynamic layer interface IMP works through;
- :mod:`hf_dynamic.pad.partial`: the one base of the partially dynamic layers (φ/λ, the mask, IMP's state,
  finalisation, expected shapes, adopt-on-load) and their layout base classes;
- :mod:`hf_dynamic.pad.layers`: the partially dynamic MoE FFN (static + dynamic experts, λ, masks, compaction);
- :mod:`hf_dynamic.pad.layouts`: its storage layouts (plain MoE, masked, finalised element / neuron mode);
- :mod:`hf_dynamic.pad.upcycling`: Drop-Upcycling, expert diversity right after upcycling;
- :mod:`hf_dynamic.pad.experts`: the routed-experts computation (transformers' expert kernels, eager reference);
- :mod:`hf_dynamic.pad.conv`: dynamic convolution (Dynamic Convolution, CondConv) and its partially dynamic
  version (``DynamicConv2d``, ``PartialDynamicConv2d``); :mod:`hf_dynamic.pad.temperature`: the temperature schedule;
- :mod:`hf_dynamic.pad.imp`: Iterative Mode Partition (``iterative_mode_partition``, ``IMPCallback``), for the MoE
  FFN and the convolution alike.
"""
