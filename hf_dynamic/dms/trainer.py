"""``DMSTrainer``: a ``transformers.Trainer`` whose training loss includes DMS's resource loss (``docs/dms.md``,
"## Resource loss").

``compute_loss`` is the Trainer's own (the model's loss, or your ``compute_loss_func``) plus
:meth:`hf_dynamic.dms.pruner.DMSPruner.resource_loss` in training mode (evaluation losses stay task-only). To add
the same to a Trainer subclass of your own, put :class:`DMSTrainerMixin` first in its bases. The target ramp, the
keep ratios' param group and the ``dms/*`` logs come from :class:`hf_dynamic.dms.callback.DMSCallback`, which the
trainer adds with its defaults when ``callbacks`` holds none for this pruner. The mixin works through the Trainer's
public methods only: ``create_optimizer`` / ``create_scheduler`` put the keep ratios' constant-lr param group into
the optimizer from its creation, and ``train(resume_from_checkpoint=...)`` restores the pruner's state first
(``docs/dms.md``, "## Resume")::

    trainer = DMSTrainer(model=model, args=args, train_dataset=data, pruner=pruner,
                         callbacks=[DMSCallback(pruner, keep_ratio_lr=1e-2)])
    trainer.train()
    small = pruner.export()
"""

from __future__ import annotations

import os

from transformers import Trainer
from transformers.trainer_utils import get_last_checkpoint

from .callback import DMSCallback, load_pruner_state

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
        # fp16 training scales the loss: the Taylor importance divides the Accelerator's current scale back out
        # (read at each backward pass, as the scaler changes it; docs/dms.md, "## Mixed precision").
        pruner.set_loss_scale_source(self._loss_scaler)

    def _loss_scaler(self):
        return getattr(getattr(self, "accelerator", None), "scaler", None)

    @property
    def dms_callback(self) -> DMSCallback | None:
        """The :class:`~hf_dynamic.dms.callback.DMSCallback` driving this trainer's pruner (None if removed)."""
        for callback in self.callback_handler.callbacks:
            if isinstance(callback, DMSCallback) and callback.pruner is self.pruner:
                return callback
        return None

    def create_optimizer(self, *args, **kwargs):
        # The keep ratios' param group is part of the optimizer from its creation, so a resumed run's optimizer
        # state (which holds the group, with its Adam moments) loads onto it (docs/dms.md, "## Resume").
        optimizer = super().create_optimizer(*args, **kwargs)
        if self.dms_callback is not None and self.dms_callback.add_keep_ratio_group(optimizer):
            if self.lr_scheduler is not None:  # given with the optimizer: built without the group, it cannot step
                raise ValueError(
                    "DMSTrainer(optimizers=(optimizer, scheduler)): the optimizer does not hold the keep ratios, "
                    "and the scheduler was built without them; add pruner.structure_parameters() to the optimizer "
                    "as a param group of their own before building the scheduler"
                )
        return optimizer

    def create_scheduler(self, num_training_steps, optimizer=None):
        # The scheduler is built over every group, then chained with KeepRatioLR: the keep ratios' group keeps a
        # constant learning rate (no warm-up/decay) through public torch schedulers only.
        scheduler = super().create_scheduler(num_training_steps, optimizer)
        if self.dms_callback is not None:
            optimizer = self.optimizer if optimizer is None else optimizer
            self.lr_scheduler = scheduler = self.dms_callback.hold_keep_ratio_lr(optimizer, scheduler)
        return scheduler

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        """``Trainer.train``; resuming (``resume_from_checkpoint`` a checkpoint folder, or True for the last one in
        ``args.output_dir``) first restores the pruner's state from the checkpoint's ``dms_pruner.pt`` (a
        ``ValueError`` if it has none; docs/dms.md, "## Resume")."""
        checkpoint = resume_from_checkpoint
        if checkpoint is True:
            checkpoint = get_last_checkpoint(self.args.output_dir)  # None: the Trainer raises its own error
        callback = self.dms_callback
        if isinstance(checkpoint, (str, os.PathLike)):
            if callback is not None:
                callback.restore(checkpoint)
            else:
                load_pruner_state(self.pruner, checkpoint)
            resume_from_checkpoint = checkpoint
        if callback is None:
            return super().train(resume_from_checkpoint, *args, **kwargs)
        # tells the callback that this trainer's compute_loss adds the resource loss (it refuses a plain Trainer)
        callback.trainer_adds_resource_loss = True
        try:
            return super().train(resume_from_checkpoint, *args, **kwargs)
        finally:
            callback.trainer_adds_resource_loss = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(
            model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch
        )
        if model.training:
            loss = self.pruner.add_resource_loss(loss)
        return (loss, outputs) if return_outputs else loss


class DMSTrainer(DMSTrainerMixin, Trainer):
    """``Trainer`` + :class:`DMSTrainerMixin` (``DMSTrainer(..., pruner=pruner)``)."""
