"""``DMSCallback``: run a DMS search (``docs/dms.md``, "## Search and export") under ``transformers.Trainer``.

The resource loss itself is added by the Trainer's ``compute_loss``: use :class:`hf_dynamic.dms.trainer.DMSTrainer`
(or mix :class:`~hf_dynamic.dms.trainer.DMSTrainerMixin` into your own Trainer subclass), which also adds this
callback when it is missing. Under a plain ``Trainer`` the callback raises a ``TypeError`` at ``on_train_begin``
(before any step): that run would train the keep ratios without a resource term, i.e. search nothing. The callback
talks to the pruner through its public methods only:

- **target schedule**: the target is ramped linearly from the full size (1.0) to the pruner's ``target`` over the
  first ``ramp_fraction`` (80 %) of ``state.max_steps``, then held (:meth:`DMSCallback.target_at`,
  :func:`hf_dynamic.dms.target.ramp_target`, :meth:`~hf_dynamic.dms.pruner.DMSPruner.set_target`). The pruner
  holds the target; the callback has none of its own (``DMSCallback(pruner, target=x)`` with another ``x`` is a
  ``ValueError``), so the search ramps to the value the export meets;
- **keep-ratio learning rate**: the keep ratios train as their own param group of the Trainer's optimizer
  (``lr=keep_ratio_lr``, no weight decay) at a constant learning rate (no warm-up/decay): the Trainer's scheduler
  is chained (``torch.optim.lr_scheduler.ChainedScheduler``) with :class:`KeepRatioLR`, which sets that group back
  to its ``initial_lr`` after every step (:meth:`DMSCallback.add_keep_ratio_group`,
  :meth:`DMSCallback.hold_keep_ratio_lr`). ``DMSTrainer`` puts the group into the optimizer when it creates it and
  the chain in place of the scheduler (its public ``create_optimizer`` / ``create_scheduler``), so a resumed run's
  optimizer and scheduler states load onto them. The group is added only if the optimizer does not already hold
  the keep ratios (if you build the optimizer yourself, e.g.
  ``DMSTrainer(optimizers=(torch.optim.AdamW([{"params": weights, "lr": 1e-5},
  {"params": pruner.structure_parameters(), "lr": 1e-2}]), None))``, that group is used as is, scheduled like the
  others);
- **projection**: after every optimizer step the keep ratios are clamped to ``[1/(2N), 1]`` and, if the pruner was
  built with ``resource_weight_adapt > 0``, the resource weight takes one multiplier step
  (:meth:`~hf_dynamic.dms.pruner.DMSPruner.adapt_resource_weight_`);
- **logging**: ``dms/target``, ``dms/resource_soft``, ``dms/resource_hard``, ``dms/keep_<kind>``, ``dms/kept_<mask>``,
  ``dms/task_loss``, ``dms/resource_loss`` are added to every log and kept in :attr:`DMSCallback.history`.

Structure-only search (DMS's fast mode): freeze the model (``model.requires_grad_(False)``); only the keep ratios
train. Joint search: leave the weights trainable.
"""

from __future__ import annotations

import os
import weakref

import torch
from torch.optim.lr_scheduler import ChainedScheduler, LRScheduler, ReduceLROnPlateau
from transformers import TrainerCallback
from transformers.optimization import GreedyLR
from transformers.utils import logging

from ..core.validation import check_number
from .target import check_target, ramp_target

logger = logging.get_logger(__name__)

__all__ = ["DMSCallback", "KEEP_RATIO_GROUP", "KeepRatioLR", "PRUNER_STATE_NAME", "load_pruner_state"]

PRUNER_STATE_NAME = "dms_pruner.pt"
"""The file, in each Trainer checkpoint folder, holding the pruner's state (:meth:`DMSCallback.on_save`)."""

KEEP_RATIO_GROUP = "dms_keep_ratios"
"""Key (``True``) marking the optimizer param group :meth:`DMSCallback.add_keep_ratio_group` added: the group whose
learning rate :class:`KeepRatioLR` keeps constant."""


def load_pruner_state(pruner, checkpoint: str) -> None:
    """Load ``pruner``'s state from the :data:`PRUNER_STATE_NAME` file of a Trainer ``checkpoint`` folder (written by
    :meth:`DMSCallback.on_save`); a ``ValueError`` if the folder has none."""
    path = os.path.join(checkpoint, PRUNER_STATE_NAME)
    if not os.path.isfile(path):
        raise ValueError(f"resuming a DMS search needs the pruner's state {path}, written by DMSCallback at "
                         "every checkpoint; this checkpoint has none")
    pruner.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))


class KeepRatioLR(LRScheduler):
    """Sets the learning rate of each :data:`KEEP_RATIO_GROUP` param group to its ``initial_lr`` and leaves every
    other group's as it is (a custom schedule on torch's public ``LRScheduler`` base, ``get_lr`` only).

    Chained after the Trainer's scheduler (``torch.optim.lr_scheduler.ChainedScheduler``, built by
    :meth:`DMSCallback.hold_keep_ratio_lr`), it keeps the keep ratios at a constant learning rate while the model's
    groups follow the warm-up / decay."""

    def get_lr(self) -> list:
        return [group["initial_lr"] if group.get(KEEP_RATIO_GROUP) else group["lr"]
                for group in self.optimizer.param_groups]


class DMSCallback(TrainerCallback):
    """Trainer glue for :class:`hf_dynamic.dms.pruner.DMSPruner`.

    Args:
        pruner: the attached pruner; it holds the target (``pruner.target``).
        target: only for compatibility: ``None`` or the pruner's own target (another value is a ``ValueError``;
            set ``pruner.target`` instead).
        ramp_fraction: share of the steps over which the target ramps from 1.0 to ``pruner.target`` (0.8 in the
            paper), in (0, 1].
        keep_ratio_lr: learning rate of the keep-ratio param group added to the Trainer's optimizer, > 0.

    Attributes:
        trainer_adds_resource_loss: set by :class:`~hf_dynamic.dms.trainer.DMSTrainerMixin` for the length of its
            ``train()``; ``on_train_begin`` refuses to start without it (a plain ``Trainer`` adds no resource loss).
    """

    def __init__(self, pruner, target: float | None = None, ramp_fraction: float = 0.8, keep_ratio_lr: float = 1e-2):
        if target is not None and check_target("target", target) != pruner.target:
            raise ValueError(
                f"DMSCallback(target={target!r}) conflicts with the pruner's target={pruner.target}: the search would "
                f"ramp to one and meet_target()/export at the other. The pruner holds the target: build "
                f"DMSPruner(model, target={target!r}) or set pruner.target = {target!r}, and leave target out here"
            )
        check_number("ramp_fraction", ramp_fraction, gt=0, le=1)
        check_number("keep_ratio_lr", keep_ratio_lr, gt=0)
        self.pruner = pruner
        self.ramp_fraction = float(ramp_fraction)
        self.keep_ratio_lr = float(keep_ratio_lr)
        self.history: list[dict] = []
        self.trainer_adds_resource_loss = False
        self._held = None  # a weak reference to the scheduler chain hold_keep_ratio_lr returned last

    @property
    def target(self) -> float:
        """The final target: the pruner's (:attr:`hf_dynamic.dms.pruner.DMSPruner.target`, its only holder)."""
        return self.pruner.target

    def target_at(self, step: int, max_steps: int) -> float:
        """Linear ramp from 1.0 at step 0 to the pruner's ``target`` at ``ramp_fraction · max_steps``, constant
        afterwards (:func:`hf_dynamic.dms.target.ramp_target`)."""
        return ramp_target(self.pruner.target, step, max_steps, self.ramp_fraction)

    def on_train_begin(self, args, state, control, **kwargs):
        if not self.trainer_adds_resource_loss:
            raise TypeError(
                "DMSCallback runs under a Trainer that does not add the DMS resource loss, so the search would train "
                "the keep ratios on the task loss alone and search nothing. Use hf_dynamic.DMSTrainer(..., "
                "pruner=pruner) or put hf_dynamic.dms.trainer.DMSTrainerMixin first in your Trainer's bases"
            )
        self.pruner.set_target(self.target_at(state.global_step, state.max_steps))

    def add_keep_ratio_group(self, optimizer) -> bool:
        """Add the keep ratios ``optimizer`` does not hold yet as one param group (``lr=keep_ratio_lr``, no weight
        decay, marked :data:`KEEP_RATIO_GROUP`). Returns whether a group was added."""
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        params = [p for p in self.pruner.structure_parameters() if id(p) not in held]
        if not params:
            return False
        optimizer.add_param_group(
            {"params": params, "lr": self.keep_ratio_lr, "weight_decay": 0.0, "initial_lr": self.keep_ratio_lr,
             KEEP_RATIO_GROUP: True}
        )
        logger.info(
            f"DMSCallback: added {len(params)} keep ratio(s) to the optimizer (constant lr={self.keep_ratio_lr})"
        )
        return True

    def hold_keep_ratio_lr(self, optimizer, lr_scheduler):
        """The scheduler to use instead of ``lr_scheduler`` (built over every group of ``optimizer``, e.g. the
        Trainer's): ``ChainedScheduler([lr_scheduler, KeepRatioLR(optimizer)])``, which steps ``lr_scheduler`` and
        then sets the :data:`KEEP_RATIO_GROUP` group back to its ``initial_lr``, so the keep ratios train at a
        constant learning rate while the model follows the warm-up / decay. Returned as is: ``None``, a scheduler
        with no such group to hold, the chain this callback returned before, and a metric-driven scheduler
        (``ReduceLROnPlateau``, ``GreedyLR``: the Trainer steps those with a metric, so they cannot be chained; the
        keep ratios then follow it, with a warning)."""
        if lr_scheduler is None or not any(group.get(KEEP_RATIO_GROUP) for group in optimizer.param_groups):
            return lr_scheduler
        if self._held is not None and lr_scheduler is self._held():
            return lr_scheduler
        if isinstance(lr_scheduler, (ReduceLROnPlateau, GreedyLR)) or not isinstance(lr_scheduler, LRScheduler):
            logger.warning(
                f"DMSCallback: {type(lr_scheduler).__name__} cannot be chained with a constant keep-ratio learning "
                "rate; the keep ratios follow its schedule"
            )
            return lr_scheduler
        chain = ChainedScheduler([lr_scheduler, KeepRatioLR(optimizer)], optimizer=optimizer)
        self._held = weakref.ref(chain)
        return chain

    def on_save(self, args, state, control, **kwargs):
        """Write the pruner's state (keep ratios, Taylor importance EMA, update counts, resource weight, current
        target) into the checkpoint folder the Trainer just wrote, as :data:`PRUNER_STATE_NAME`."""
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if args.should_save and os.path.isdir(folder):
            torch.save(self.pruner.state_dict(), os.path.join(folder, PRUNER_STATE_NAME))

    def restore(self, checkpoint: str, optimizer=None) -> None:
        """Resume from a Trainer ``checkpoint`` folder: load the pruner's state written by :meth:`on_save`
        (:func:`load_pruner_state`) and, given an ``optimizer``, add the keep-ratio param group to it if missing
        (:meth:`add_keep_ratio_group`), so that a checkpoint's optimizer state, which holds that group, loads onto
        it. :class:`~hf_dynamic.dms.trainer.DMSTrainerMixin` calls it (without an optimizer: its optimizer holds the
        group from its creation) from ``train(resume_from_checkpoint=...)``, before the Trainer loads anything."""
        load_pruner_state(self.pruner, checkpoint)
        if optimizer is not None:
            self.add_keep_ratio_group(optimizer)

    def on_step_begin(self, args, state, control, **kwargs):
        self.pruner.set_target(self.target_at(state.global_step, state.max_steps))

    def on_step_end(self, args, state, control, **kwargs):
        # The Trainer zeroes only the model's gradients (``model.zero_grad()``); the keep ratios are not model
        # parameters, so without this their gradients would add up over every step of the search.
        for param in self.pruner.structure_parameters():
            param.grad = None
        self.pruner.clamp_()
        self.pruner.adapt_resource_weight_()

    def on_log(self, args, state, control, logs=None, **kwargs):
        entry = {f"dms/{k}": v for k, v in self.pruner.summary().items()}
        self.history.append({"step": state.global_step, **entry})
        if logs is not None:
            logs.update(entry)  # seen by the reporting callbacks that run after this one
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(entry)  # Trainer copied ``logs`` into the history before on_log
