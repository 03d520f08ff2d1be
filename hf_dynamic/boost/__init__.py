"""BoostNet, the method (docs/boost.md): boosted early exits for transformers encoders.

- :mod:`~hf_dynamic.boost.heads`: the exit heads f_n;
- :mod:`~hf_dynamic.boost.loss`: the boosted ensemble ``F_n = t·F_{n-1} + f_n`` (stop-gradient on F_{n-1}), the
  gradient rescaling of the trunk and the boosted loss;
- :mod:`~hf_dynamic.boost.criteria`: the exit criteria (one class each, registry ``EXIT_CRITERIA``) and the one
  exit rule (``ExitRule``);
- :mod:`~hf_dynamic.boost.backbones`: how dynamic mode runs each encoder architecture layer by layer
  (``BackboneAdapter``, one per architecture, looked up by ``model_type``);
- :mod:`~hf_dynamic.boost.calibration`: exit thresholds for a compute budget (``calibrate_thresholds``) and
  accuracy vs measured cost (``accuracy_cost_curve``, ``plot_accuracy_cost_curve``).

The model that uses them is :mod:`hf_dynamic.models.boosted_early_exit`; this package never imports it. Nothing is
imported here, so importing a submodule stays cheap.
"""
