"""Sandwich-rule training with in-place distillation (US-Nets; ``docs/slim.md``, "## Training").

Each training step runs the slimmable model at

- the **largest** width (1.0): the task loss ``L_task`` (the model's own loss from the batch's labels);
- the **smallest** width ``min_width`` and ``num_random_widths`` widths drawn uniformly from ``[min_width, 1]``:
  the in-place distillation loss ``L_KL(w) = T² · KL(softmax(z_1.0 / T) ‖ softmax(z_w / T))`` to the largest
  width's *detached* logits (:func:`hf_dynamic.core.distillation.distillation_kl_loss`),

and back-propagates ``L = L_task + Σ_w L_KL(w)``, i.e. accumulates every width's gradient into the shared weights
before the one optimizer step. The random widths come from a generator seeded by ``(args.seed, global_step)``, so a
run resumed from one of the Trainer's checkpoints draws the same widths as an uninterrupted run.

For 2-D logits (sequence classification) every example counts; for 3-D logits (token-level heads, causal LMs) the
tokens with ``attention_mask == 1`` count (all tokens without a mask), at the same position in teacher and student.
"""

from __future__ import annotations

import torch
from transformers import Trainer

from ..core.distillation import distillation_kl_loss
from ..core.validation import check_number
from .modeling import _require_slimmable, resolve_widths, width

__all__ = ["SlimmableTrainerMixin", "SlimmableTrainer", "sandwich_widths"]


def sandwich_widths(min_width: float, num_random_widths: int, seed: int, step: int) -> list[float]:
    """``[1.0, min_width, r_1, ..., r_n]`` with ``r_i ~ U[min_width, 1]`` from a generator seeded by
    ``(seed, step)``: the widths of one sandwich step (a function of the step alone, hence resumable)."""
    generator = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(step))
    draws = torch.rand(num_random_widths, generator=generator, dtype=torch.float64)
    return [1.0, float(min_width), *(min_width + (1.0 - min_width) * draws).tolist()]


def _distill(student_logits, teacher_logits, attention_mask, temperature):
    if student_logits.dim() == 2:  # [batch, classes]: one "token" per example
        return distillation_kl_loss(student_logits[:, None], teacher_logits[:, None], temperature)
    # the attention mask as labels with ignore_index=0 keeps exactly the attended positions
    return distillation_kl_loss(student_logits, teacher_logits, temperature, labels=attention_mask,
                                ignore_index=0, shift_labels=False)


class SlimmableTrainerMixin:
    """Trainer mixin: the sandwich rule with in-place distillation (module docstring, ``docs/slim.md``).

    Args (keywords, beyond the Trainer's):
        num_random_widths: random widths per step, an int ``>= 0`` (US-Nets use 2).
        min_width: the smallest width, in ``(0, 1]``; it must keep at least one unit of every layer.
        temperature: ``T > 0`` of the distillation loss.

    The model must be slimmable already (:func:`hf_dynamic.slim.make_slimmable`, before the Trainer builds its
    optimizer). Evaluation runs at the width the model is set to (full width unless changed).
    """

    def __init__(self, *args, num_random_widths: int = 2, min_width: float = 0.25, temperature: float = 1.0,
                 **kwargs):
        check_number("num_random_widths", num_random_widths, integer=True, ge=0)
        check_number("min_width", min_width, gt=0, le=1)
        check_number("temperature", temperature, gt=0)
        super().__init__(*args, **kwargs)
        _require_slimmable(self.model)
        resolve_widths(self.model, min_width)  # a min_width that keeps 0 units of some layer fails here
        self.num_random_widths, self.min_width, self.temperature = num_random_widths, float(min_width), \
            float(temperature)
        # every term is a mean over one micro-batch, so the task loss must be one too (see DistillationTrainer)
        self.model_accepts_loss_kwargs = False

    def sandwich_widths(self) -> list[float]:
        """This step's widths (:func:`sandwich_widths` at ``args.seed`` and ``state.global_step``)."""
        return sandwich_widths(self.min_width, self.num_random_widths, self.args.seed, self.state.global_step)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not model.training:
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        slimmable = self.model  # the widths live on the unwrapped model's modules, shared with any wrapper
        largest, *others = self.sandwich_widths()
        with width(slimmable, largest):
            loss, outputs = super().compute_loss(model, inputs, return_outputs=True,
                                                 num_items_in_batch=num_items_in_batch)
        teacher = outputs.logits.detach()
        student_inputs = {k: v for k, v in inputs.items() if k != "labels"}
        for w in others:
            with width(slimmable, w):
                logits = model(**student_inputs).logits
            loss = loss + _distill(logits, teacher, inputs.get("attention_mask"), self.temperature)
        return (loss, outputs) if return_outputs else loss


class SlimmableTrainer(SlimmableTrainerMixin, Trainer):
    """``Trainer`` + :class:`SlimmableTrainerMixin` (``SlimmableTrainer(model, args, ..., min_width=0.25)``)."""
