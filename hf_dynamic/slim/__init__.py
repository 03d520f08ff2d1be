"""Slimmable networks: one checkpoint that runs at any width (``docs/slim.md``).

- :mod:`hf_dynamic.slim.modeling`: importance ordering (magnitude or first-order Taylor), :class:`SlimmableLinear`,
  ``make_slimmable``, ``set_width`` / ``width`` (uniform or per-layer widths, run as sliced dense computations);
- :mod:`hf_dynamic.slim.export`: a width as a real checkpoint (stock ``Bert*`` / ``Llama*`` at uniform widths,
  ``dms_llama`` at per-layer Llama widths);
- :mod:`hf_dynamic.slim.registered`: what the registered ``slimmable_bert`` / ``slimmable_llama`` model types share
  (``SlimmableModelMixin``: slimmable after construction, ``from_dense``, the stock class a uniform width exports to);
- :mod:`hf_dynamic.slim.trainer`: ``SlimmableTrainerMixin`` / ``SlimmableTrainer`` (the sandwich rule with in-place
  distillation);
- :mod:`hf_dynamic.slim.gate`: input-dependent width (``WidthGate``, ``DynamicWidthModel``: a gate picks each
  input's width, grouped batched inference, gate training with the compute cost in the loss, budget calibration).
- :mod:`hf_dynamic.slim.search`: AutoSlim-style greedy search of per-layer widths under a FLOP / latency budget
  (``autoslim_search``, ``FlopCost`` / ``LatencyCost``, ``uniform_width_for_budget``).

Nothing is imported eagerly (``import hf_dynamic`` stays cheap): ``from hf_dynamic import slim`` then
``slim.make_slimmable(model)``, ``with slim.width(model, 0.5): ...`` resolve the names below on first use.
"""

from ..core.lazy import lazy_attributes

_LAZY = {
    "SlimmableLinear": "hf_dynamic.slim.modeling",
    "make_slimmable": "hf_dynamic.slim.modeling",
    "order_by_importance_": "hf_dynamic.slim.modeling",
    "width_counts": "hf_dynamic.slim.modeling",
    "SlimmableModelMixin": "hf_dynamic.slim.registered",
    "is_slimmable": "hf_dynamic.slim.modeling",
    "set_width": "hf_dynamic.slim.modeling",
    "get_width": "hf_dynamic.slim.modeling",
    "width": "hf_dynamic.slim.modeling",
    "resolve_widths": "hf_dynamic.slim.modeling",
    "ffn_channel_importance": "hf_dynamic.slim.modeling",
    "head_group_importance": "hf_dynamic.slim.modeling",
    "taylor_importance": "hf_dynamic.slim.modeling",
    "sliced_state_dict": "hf_dynamic.slim.export",
    "export_width": "hf_dynamic.slim.export",
    "SlimmableTrainer": "hf_dynamic.slim.trainer",
    "SlimmableTrainerMixin": "hf_dynamic.slim.trainer",
    "sandwich_widths": "hf_dynamic.slim.trainer",
    "autoslim_search": "hf_dynamic.slim.search",
    "SlimSearchResult": "hf_dynamic.slim.search",
    "SearchStep": "hf_dynamic.slim.search",
    "FlopCost": "hf_dynamic.slim.search",
    "LatencyCost": "hf_dynamic.slim.search",
    "width_flops": "hf_dynamic.slim.search",
    "measure_latency": "hf_dynamic.slim.search",
    "uniform_width_for_budget": "hf_dynamic.slim.search",
    "widths_from_counts": "hf_dynamic.slim.search",
    "WidthGate": "hf_dynamic.slim.gate",
    "DynamicWidthModel": "hf_dynamic.slim.gate",
    "DynamicWidthOutput": "hf_dynamic.slim.gate",
    "GateData": "hf_dynamic.slim.gate",
    "GateCalibration": "hf_dynamic.slim.gate",
    "width_costs": "hf_dynamic.slim.gate",
    "gate_loss": "hf_dynamic.slim.gate",
    "collect_gate_data": "hf_dynamic.slim.gate",
    "train_gate": "hf_dynamic.slim.gate",
    "calibrate_gate": "hf_dynamic.slim.gate",
    "save_gate": "hf_dynamic.slim.gate",
    "load_gate": "hf_dynamic.slim.gate",
}

__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())
__all__ = sorted(_LAZY)
