"""Knowledge distillation for ``transformers.Trainer`` (``docs/distill.md``).

- :mod:`hf_dynamic.distill.trainer`: :class:`DistillationTrainer` / ``DistillationTrainerMixin`` (a frozen teacher's
  token distributions as a KL term mixed with the next-token loss, optionally a hidden-state MSE term).

The losses themselves are :mod:`hf_dynamic.core.distillation` (shared with every method that distils). Nothing is
imported here; the public names are resolved lazily by the package root.
"""
