"""``DMSCallback``: run a DMS search (``docs/dms.md``, "## Search and export") under ``transformers.Trainer``.

The resource loss itself is added by the Trainer's ``compute_loss``: use :class:`hf_dynamic.dms.trainer.DMSTrainer`
(or mix :class:`~hf_dynamic.dms.trainer.DMSTrainerMixin` into your own Trainer subclass), which also adds this
callback when it is missing. The callback talks to the pruner through its public methods only:

- **target schedule**: the target is ramped linearly from the full size (1.0) to ``target`` over the first
  ``ramp_fraction`` (80 %) of ``state.max_steps``, then held (:meth:`DMSCallback.target_at`,
  :meth:`~hf_dynamic.dms.pruner.DMSPruner.set_target`);
- **keep-ratio learning rate**: at ``on_train_begin`` the keep ratios are added to the Trainer's optimizer as their
  own param group (``lr=keep_ratio_lr``, no weight decay), unless the optimizer already holds them (if you build
  the optimizer yourself, e.g. ``Trainer(optimizers=(torch.optim.AdamW([{"params": weights, "lr": 1e-5},
  {"params": pruner.structure_parameters(), "lr": 1e-2}]), None))``, that group is used as is). The group is added
  after the Trainer built its LR scheduler; the callback appends a constant factor to the (``LambdaLR``) scheduler's
  public ``lr_lambdas`` / ``base_lrs``, so the keep ratios' learning rate stays constant (no warm-up/decay);
- **projection**: after every optimizer step the keep ratios are clamped to ``[1/(2N), 1]`` and, if the pruner was
  built with ``resource_weight_adapt > 0``, the resource weight takes one multiplier step
  (:meth:`~hf_dynamic.dms.pruner.DMSPruner.adapt_resource_weight_`);
- **logging**: ``dms/target``, ``dms/resource_soft``, ``dms/resource_hard``, ``dms/keep_<kind>``, ``dms/kept_<mask>``,
  ``dms/task_loss``, ``dms/resource_loss`` are added to every log and kept in :attr:`DMSCallback.history`.

Structure-only search (DMS's fast mode): freeze the model (``model.requires_grad_(False)``); only the keep ratios
train. Joint search: leave the weights trainable.
"""

from __future__ import annotations

from transformers import TrainerCallback
from transformers.utils import logging

logger = logging.get_logger(__name__)

__all__ = ["DMSCallback"]


def _constant_factor(step: int) -> float:
    return 1.0


class DMSCallback(TrainerCallback):
    """Trainer glue for :class:`hf_dynamic.dms.pruner.DMSPruner`.

    Args:
        pruner: the attached pruner.
        target: final resource fraction (defaults to ``pruner.target``), in (0, 1).
        ramp_fraction: share of the steps over which the target ramps from 1.0 to ``target`` (0.8 in the paper).
        keep_ratio_lr: learning rate of the keep-ratio param group added to the Trainer's optimizer.
    """

    def __init__(self, pruner, target: float | None = None, ramp_fraction: float = 0.8, keep_ratio_lr: float = 1e-2):
        target = pruner.target if target is None else target
        if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0.0 < float(target) < 1.0:
            raise ValueError(f"target must be a fraction in (0, 1), got {target!r}")
        if not 0.0 < float(ramp_fraction) <= 1.0:
            raise ValueError(f"ramp_fraction must be in (0, 1], got {ramp_fraction!r}")
        if float(keep_ratio_lr) <= 0:
            raise ValueError(f"keep_ratio_lr must be > 0, got {keep_ratio_lr!r}")
        self.pruner = pruner
        self.target = float(target)
        self.ramp_fraction = float(ramp_fraction)
        self.keep_ratio_lr = float(keep_ratio_lr)
        self.history: list[dict] = []

    def target_at(self, step: int, max_steps: int) -> float:
        """Linear ramp from 1.0 at step 0 to ``target`` at ``ramp_fraction · max_steps``, constant afterwards."""
        ramp = max(1.0, self.ramp_fraction * max(int(max_steps), 1))
        progress = min(1.0, step / ramp)
        return 1.0 - (1.0 - self.target) * progress

    def on_train_begin(self, args, state, control, optimizer=None, lr_scheduler=None, **kwargs):
        self.pruner.set_target(self.target_at(state.global_step, state.max_steps))
        if optimizer is not None:
            held = {id(p) for group in optimizer.param_groups for p in group["params"]}
            params = [p for p in self.pruner.structure_parameters() if id(p) not in held]
            if params:
                self._add_keep_ratio_group(optimizer, lr_scheduler, params)

    def _add_keep_ratio_group(self, optimizer, lr_scheduler, params) -> None:
        """Add the keep ratios as a constant-lr param group, extending a ``LambdaLR`` scheduler to cover it."""
        if lr_scheduler is not None and not hasattr(lr_scheduler, "lr_lambdas"):
            raise ValueError(
                f"DMSCallback can only extend a LambdaLR scheduler (Trainer's default); got "
                f"{type(lr_scheduler).__name__}. Put pruner.structure_parameters() in your optimizer yourself."
            )
        group = {"params": params, "lr": self.keep_ratio_lr, "weight_decay": 0.0}
        optimizer.add_param_group(group)
        optimizer.param_groups[-1]["initial_lr"] = self.keep_ratio_lr
        if lr_scheduler is not None:  # its next step() sets every group's lr (and get_last_lr()) from these lists
            lr_scheduler.lr_lambdas.append(_constant_factor)
            lr_scheduler.base_lrs.append(self.keep_ratio_lr)
        logger.info(
            f"DMSCallback: added {len(params)} keep ratio(s) to the optimizer (constant lr={self.keep_ratio_lr})"
        )

    def on_step_begin(self, args, state, control, **kwargs):
        self.pruner.set_target(self.target_at(state.global_step, state.max_steps))

    def on_step_end(self, args, state, control, **kwargs):
        self.pruner.clamp_()
        self.pruner.adapt_resource_weight_()

    def on_log(self, args, state, control, logs=None, **kwargs):
        entry = {f"dms/{k}": v for k, v in self.pruner.summary().items()}
        self.history.append({"step": state.global_step, **entry})
        if logs is not None:
            logs.update(entry)  # seen by the reporting callbacks that run after this one
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(entry)  # Trainer copied ``logs`` into the history before on_log
