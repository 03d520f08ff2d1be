"""Slimmable networks: one checkpoint that runs at any width (``docs/slim.md``).

- :mod:`hf_dynamic.slim.modeling`: importance ordering (magnitude), :class:`SlimmableLinear`, ``make_slimmable``,
  ``set_width`` / ``width`` (uniform or per-layer widths, run as sliced dense computations);
- :mod:`hf_dynamic.slim.export`: a width as a real checkpoint (stock ``Bert*`` / ``Llama*`` at uniform widths,
  ``dms_llama`` at per-layer Llama widths);
- :mod:`hf_dynamic.slim.trainer`: ``SlimmableTrainerMixin`` / ``SlimmableTrainer`` (the sandwich rule with in-place
  distillation).

Nothing is imported here (``import hf_dynamic`` stays cheap); the public names are resolved lazily by the package
root.
"""
