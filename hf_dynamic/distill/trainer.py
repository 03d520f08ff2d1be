"""``DistillationTrainer``: a ``transformers.Trainer`` that trains a student against a frozen teacher
(``docs/distill.md``).

The training loss is

    L = α · L_KL(student, teacher; T) + (1 − α) · L_next-token + β · L_hidden

with ``L_KL`` = :func:`hf_dynamic.core.distillation.distillation_kl_loss` (``T²``-scaled KL over the tokens whose
label is not ``-100``), ``L_next-token`` the student's own causal-LM loss and ``L_hidden`` =
:func:`hf_dynamic.core.distillation.hidden_state_mse` over the layers whose widths match (``β =
hidden_weight``; 0 by default). ``α = 0`` and ``β = 0`` never run the teacher (a plain fine-tuning run on the same
schedule, e.g. an ablation at equal tokens).

The teacher is held *beside* the model, not inside it: it is not a submodule of the trained model, so
``save_model`` / checkpoints never contain it and the Trainer's optimizer never sees its parameters; its
parameters are frozen (``requires_grad=False``), it stays in eval mode and runs under ``torch.no_grad``. Resuming
is the Trainer's own ``train(resume_from_checkpoint=...)`` (model, optimizer, scheduler, RNG and data position come
from the checkpoint; the teacher is the same object passed again)::

    trainer = DistillationTrainer(model=student, teacher=teacher, args=args, train_dataset=data, alpha=0.5)
    trainer.train()

Mix :class:`DistillationTrainerMixin` first into a Trainer subclass of your own for the same loss.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import Trainer
from transformers.utils import logging

from ..core.distillation import distillation_kl_loss, hidden_state_mse, token_mask

logger = logging.get_logger(__name__)

__all__ = ["DistillationTrainer", "DistillationTrainerMixin"]


def _check_fraction(name, value, upper=1.0):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= upper:
        raise ValueError(f"{name} must be a number in [0, {upper:g}], got {value!r}")


class DistillationTrainerMixin:
    """Replaces the training loss of the ``Trainer`` it is mixed into by the distillation loss (module docstring).

    Args (keyword, beyond the Trainer's):
        teacher: the teacher ``nn.Module`` (a causal LM over the same vocabulary); moved to the training device,
            frozen and put in eval mode here. ``None`` only with ``alpha=0`` and ``hidden_weight=0``.
        alpha: weight ``α`` of the KL term in ``[0, 1]``; the next-token loss gets ``1 − α``.
        temperature: ``T > 0`` of the KL term.
        hidden_weight: ``β ≥ 0`` of the hidden-state MSE term.
    """

    def __init__(self, *args, teacher: nn.Module | None = None, alpha: float = 0.5, temperature: float = 1.0,
                 hidden_weight: float = 0.0, **kwargs):
        _check_fraction("alpha", alpha)
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
            raise ValueError(f"temperature must be a number > 0, got {temperature!r}")
        if isinstance(hidden_weight, bool) or not isinstance(hidden_weight, (int, float)) or hidden_weight < 0:
            raise ValueError(f"hidden_weight must be a number >= 0, got {hidden_weight!r}")
        uses_teacher = alpha > 0 or hidden_weight > 0
        if uses_teacher and not isinstance(teacher, nn.Module):
            raise TypeError(
                f"teacher must be an nn.Module when alpha={alpha} or hidden_weight={hidden_weight} is > 0, got "
                f"{type(teacher).__name__}"
            )
        super().__init__(*args, **kwargs)
        if teacher is not None and {id(p) for p in teacher.parameters()} & {id(p) for p in self.model.parameters()}:
            raise ValueError("teacher and the trained model share parameters; pass a separate (frozen) teacher copy")
        self.alpha, self.temperature, self.hidden_weight = float(alpha), float(temperature), float(hidden_weight)
        self.teacher = None
        if uses_teacher:
            teacher.requires_grad_(False)
            self.teacher = teacher.to(self.args.device).eval()
        # The KL and hidden terms are means over one micro-batch's tokens, so the next-token loss must be one too:
        # the model is not handed `num_items_in_batch` and the Trainer divides the sum by the accumulation steps.
        self.model_accepts_loss_kwargs = False
        self._warned_no_hidden = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not model.training or self.teacher is None:  # evaluation, or alpha = beta = 0: the model's own loss
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        labels = inputs.get("labels")
        if labels is None and self.alpha < 1.0:
            raise ValueError(f"alpha={self.alpha} < 1 needs 'labels' in the batch for the next-token loss")
        want_hidden = self.hidden_weight > 0
        outputs = model(**inputs, output_hidden_states=want_hidden)
        if self.teacher.training:  # something called .train() on it (e.g. a user's callback): keep it in eval
            self.teacher.eval()
        teacher_inputs = {k: v for k, v in inputs.items() if k != "labels"}
        with torch.no_grad():
            t_out = self.teacher(**teacher_inputs, output_hidden_states=want_hidden)
        loss = self.alpha * distillation_kl_loss(outputs.logits, t_out.logits, self.temperature, labels=labels)
        if self.alpha < 1.0:
            loss = loss + (1.0 - self.alpha) * outputs.loss
        if want_hidden:
            mask = token_mask(labels, outputs.logits.shape[:2], shift_labels=False) if labels is not None else None
            mse = hidden_state_mse(outputs.hidden_states, t_out.hidden_states, mask)
            if mse is not None:
                loss = loss + self.hidden_weight * mse
            elif not self._warned_no_hidden:
                logger.warning("hidden_weight > 0 but no student hidden state has the teacher's shape; the hidden "
                               "term is left out")
                self._warned_no_hidden = True
        return (loss, outputs) if return_outputs else loss


class DistillationTrainer(DistillationTrainerMixin, Trainer):
    """``Trainer`` + :class:`DistillationTrainerMixin` (``DistillationTrainer(..., teacher=teacher, alpha=0.5)``)."""
