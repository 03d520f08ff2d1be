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
  (``lr=keep_ratio_lr``, no weight decay) at a constant learning rate (no warm-up/decay): the group's factor in the
  (``LambdaLR``) scheduler's ``lr_lambdas`` / ``base_lrs`` is a constant one (:meth:`DMSCallback.add_keep_ratio_group`,
  :meth:`DMSCallback.hold_keep_ratio_lr`). ``DMSTrainer`` puts the group into the optimizer when it creates it (its
  public ``create_optimizer`` / ``create_scheduler``), so a resumed run's optimizer state loads onto it. The group
  is added only if the optimizer does not already hold the keep ratios (if you build the optimizer yourself, e.g.
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

import torch
from transformers import TrainerCallback
from transformers.utils import logging

from ..core.validation import check_number
from .target import check_target, ramp_target

logger = logging.get_logger(__name__)

__all__ = ["DMSCallback", "KEEP_RATIO_GROUP", "PRUNER_STATE_NAME", "load_pruner_state"]

PRUNER_STATE_NAME = "dms_pruner.pt"
"""The file, in each Trainer checkpoint folder, holding the pruner's state (:meth:`DMSCallback.on_save`)."""

KEEP_RATIO_GROUP = "dms_keep_ratios"
"""Key (``True``) marking the optimizer param group :meth:`DMSCallback.add_keep_ratio_group` added: the group whose
learning rate :meth:`DMSCallback.hold_keep_ratio_lr` keeps constant."""


def load_pruner_state(pruner, checkpoint: str) -> None:
    """Load ``pruner``'s state from the :data:`PRUNER_STATE_NAME` file of a Trainer ``checkpoint`` folder (written by
    :meth:`DMSCallback.on_save`); a ``ValueError`` if the folder has none."""
    path = os.path.join(checkpoint, PRUNER_STATE_NAME)
    if not os.path.isfile(path):
        raise ValueError(f"resuming a DMS search needs the pruner's state {path}, written by DMSCallback at "
                         "every checkpoint; this checkpoint has none")
    pruner.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))


def _constant_factor(step: int) -> float:
    return 1.0


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

    def add_keep_ratio_group(self, optimizer, lr_scheduler=None) -> bool:
        """Add the keep ratios ``optimizer`` does not hold yet as one param group (``lr=keep_ratio_lr``, no weight
        decay, marked :data:`KEEP_RATIO_GROUP`); with ``lr_scheduler``, also give that group a constant factor in it
        (:meth:`hold_keep_ratio_lr`). Returns whether a group was added."""
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        params = [p for p in self.pruner.structure_parameters() if id(p) not in held]
        if not params:
            return False
        if lr_scheduler is not None:
            self._check_scheduler(lr_scheduler)
        optimizer.add_param_group(
            {"params": params, "lr": self.keep_ratio_lr, "weight_decay": 0.0, "initial_lr": self.keep_ratio_lr,
             KEEP_RATIO_GROUP: True}
        )
        self.hold_keep_ratio_lr(optimizer, lr_scheduler)
        logger.info(
            f"DMSCallback: added {len(params)} keep ratio(s) to the optimizer (constant lr={self.keep_ratio_lr})"
        )
        return True

    def hold_keep_ratio_lr(self, optimizer, lr_scheduler) -> None:
        """Keep the learning rate of ``optimizer``'s :data:`KEEP_RATIO_GROUP` group constant under a ``LambdaLR``
        ``lr_scheduler`` (Trainer's default): its factor in the scheduler's ``lr_lambdas`` becomes 1 and its
        ``base_lrs`` entry its own ``initial_lr`` (both appended if the scheduler was built before the group)."""
        marked = [i for i, group in enumerate(optimizer.param_groups) if group.get(KEEP_RATIO_GROUP)]
        if lr_scheduler is None or not marked:
            return
        self._check_scheduler(lr_scheduler)
        # No public seam: the Trainer builds one LambdaLR (transformers.get_scheduler) with one schedule for every
        # group, and torch takes per-group factors only in LambdaLR's constructor, while the Trainer's schedule
        # function is not public. So the group's entries of the lists LambdaLR.get_lr() reads (``lr_lambdas``,
        # ``base_lrs``; named in LambdaLR's state_dict docs) are replaced. tests/dms/test_dms_callback.py
        # (test_lambdalr_still_reads_its_per_group_lists) fails if torch stops reading them.
        for i in marked:
            group = optimizer.param_groups[i]
            lr = group.setdefault("initial_lr", group["lr"])
            if i < len(lr_scheduler.lr_lambdas):  # built over the group: replace its (warm-up/decay) factor
                lr_scheduler.lr_lambdas[i] = _constant_factor
                lr_scheduler.base_lrs[i] = lr
            else:  # built before the group: its next step() sets every group's lr from these lists
                lr_scheduler.lr_lambdas.append(_constant_factor)
                lr_scheduler.base_lrs.append(lr)
            group["lr"] = lr

    @staticmethod
    def _check_scheduler(lr_scheduler) -> None:
        if not (hasattr(lr_scheduler, "lr_lambdas") and hasattr(lr_scheduler, "base_lrs")):
            raise ValueError(
                f"DMSCallback can only extend a LambdaLR scheduler (Trainer's default); got "
                f"{type(lr_scheduler).__name__}. Put pruner.structure_parameters() in your optimizer yourself."
            )

    def on_save(self, args, state, control, **kwargs):
        """Write the pruner's state (keep ratios, Taylor importance EMA, update counts, resource weight, current
        target) into the checkpoint folder the Trainer just wrote, as :data:`PRUNER_STATE_NAME`."""
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if args.should_save and os.path.isdir(folder):
            torch.save(self.pruner.state_dict(), os.path.join(folder, PRUNER_STATE_NAME))

    def restore(self, checkpoint: str, optimizer=None, lr_scheduler=None) -> None:
        """Resume from a Trainer ``checkpoint`` folder: load the pruner's state written by :meth:`on_save`
        (:func:`load_pruner_state`) and, given an ``optimizer``, add the keep-ratio param group to it if missing
        (:meth:`add_keep_ratio_group`), so that a checkpoint's optimizer state, which holds that group, loads onto
        it. :class:`~hf_dynamic.dms.trainer.DMSTrainerMixin` calls it (without an optimizer: its optimizer holds the
        group from its creation) from ``train(resume_from_checkpoint=...)``, before the Trainer loads anything."""
        load_pruner_state(self.pruner, checkpoint)
        if optimizer is not None:
            self.add_keep_ratio_group(optimizer, lr_scheduler)

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
