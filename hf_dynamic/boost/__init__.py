"""BoostNet's inference side (METHODS.md §2): budgeted batch classification for boosted early exits.

The model itself is :mod:`hf_dynamic.models.boosted_early_exit`; :mod:`hf_dynamic.boost.calibration` chooses its
exit thresholds for a compute budget (``calibrate_thresholds``) and traces accuracy vs measured cost
(``accuracy_cost_curve``, ``plot_accuracy_cost_curve``). Imported lazily by ``hf_dynamic``.
"""
