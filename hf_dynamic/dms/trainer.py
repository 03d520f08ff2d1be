"""``DMSTrainer``: a ``transformers.Trainer`` whose training loss includes DMS's resource loss (``docs/dms.md``,
"## Resource loss").

``compute_loss`` is the Trainer's own (the model's loss, or your ``compute_loss_func``) plus
:meth:`hf_dynamic.dms.pruner.DMSPruner.resource_loss` in training mode (evaluation losses stay task-only). To add
the same to a Trainer subclass of your own, put :class:`DMSTrainerMixin` first in its bases. The target ramp, the
keep ratios' param group and the ``dms/*`` logs come from :class:`hf_dynamic.dms.callback.DMSCallback`, which the
trainer adds with its defaults when ``callbacks`` holds none for this pruner::

    trainer = DMSTrainer(model=model, args=args, train_dataset=data, pruner=pruner,
                         callbacks=[DMSCallback(pruner, keep_ratio_lr=1e-2)])
    trainer.train()
    small = pruner.export()
"""

from __future__ import annotations

from transformers import Trainer

from .callback import DMSCallback

__all__ = ["DMSTrainer", "DMSTrainerMixin"]


class DMSTrainerMixin:
    """Adds ``pruner.resource_loss()`` to the training loss of the ``Trainer`` it is mixed into.

    Args (keyword, beyond the Trainer's):
        pruner: the attached :class:`~hf_dynamic.dms.pruner.DMSPruner`.
    """

    def __init__(self, *args, pruner, **kwargs):
        callbacks = list(kwargs.pop("callbacks", None) or [])
        if not any(isinstance(cb, DMSCallback) and cb.pruner is pruner for cb in callbacks):
            callbacks.append(DMSCallback(pruner))
        self.pruner = pruner
        super().__init__(*args, callbacks=callbacks, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(
            model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch
        )
        if model.training:
            loss = self.pruner.add_resource_loss(loss)
        return (loss, outputs) if return_outputs else loss


class DMSTrainer(DMSTrainerMixin, Trainer):
    """``Trainer`` + :class:`DMSTrainerMixin` (``DMSTrainer(..., pruner=pruner)``)."""
