"""Knowledge-distillation losses between a teacher and a student language model (``docs/distill.md``).

:func:`distillation_kl_loss` is the token-level KD loss of Hinton et al. (2015): with temperature ``T``,

    L_KL = T² · mean over kept tokens t of  KL( softmax(z_t^teacher / T) ‖ softmax(z_t^student / T) )
         = T² · mean_t Σ_v p_t,v^T · (log p_t,v^T − log p_t,v^S)

(``T²`` keeps the gradient's scale independent of ``T``). A token is *kept* where its label is not
``ignore_index`` (padding and prompt positions carry ``-100`` in the labels of a causal LM); ``shift_labels=True``
pairs the logits at position ``t`` with the label at ``t + 1``, as a causal LM's own loss does.

:func:`hidden_state_mse` is the optional feature term: the mean squared error between teacher and student hidden
states over the kept tokens, for every pair of layers whose widths agree (a pruned student whose hidden size was
kept can be matched layer by layer; layers of other widths are skipped).

Both are pure functions of tensors, shared by every method that distils (``hf_dynamic.distill``'s Trainer, a
slimmable network's in-place distillation).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .validation import check_number

__all__ = ["distillation_kl_loss", "hidden_state_mse", "token_mask"]


def token_mask(labels: torch.Tensor | None, shape: torch.Size, ignore_index: int = -100,
               shift_labels: bool = True) -> torch.Tensor | None:
    """Boolean ``[batch, seq]`` mask of the positions that count (``None``: every position counts).

    With ``shift_labels`` the logits at ``t`` predict the label at ``t + 1``: position ``t`` counts when
    ``labels[:, t + 1] != ignore_index`` and the last position never counts (it has no next label).
    """
    if labels is None:
        return None
    if labels.shape != shape:
        raise ValueError(f"labels must have the logits' [batch, seq] shape {tuple(shape)}, got {tuple(labels.shape)}")
    if not shift_labels:
        return labels != ignore_index
    mask = torch.zeros(shape, dtype=torch.bool, device=labels.device)
    mask[:, :-1] = labels[:, 1:] != ignore_index
    return mask


def distillation_kl_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 1.0,
    labels: torch.Tensor | None = None,
    ignore_index: int = -100,
    shift_labels: bool = True,
) -> torch.Tensor:
    """``T² · KL(p_teacher^T ‖ p_student^T)`` averaged over the kept tokens (formula in the module docstring).

    Args:
        student_logits, teacher_logits: ``[batch, seq, vocab]`` (the same shape; computed in float32).
        temperature: ``T > 0``.
        labels: ``[batch, seq]`` token labels; positions whose (shifted) label is ``ignore_index`` are left out.
            ``None``: every position counts.
        shift_labels: pair the logits at ``t`` with the label at ``t + 1`` (causal LM); False: the same position.

    Returns a scalar; 0 (with a gradient path) when no token is kept.
    """
    check_number("temperature", temperature, gt=0)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student_logits {tuple(student_logits.shape)} and teacher_logits {tuple(teacher_logits.shape)} must "
            "have the same shape (the same vocabulary)"
        )
    if student_logits.dim() != 3:
        raise ValueError(f"logits must be [batch, seq, vocab], got shape {tuple(student_logits.shape)}")
    mask = token_mask(labels, student_logits.shape[:2], ignore_index, shift_labels)
    s = student_logits.float() / temperature
    t = teacher_logits.detach().float() / temperature
    if mask is not None:
        s, t = s[mask], t[mask]  # [kept, vocab]
    else:
        s, t = s.flatten(0, -2), t.flatten(0, -2)
    if s.shape[0] == 0:
        return student_logits.sum() * 0.0
    log_p_teacher = F.log_softmax(t, dim=-1)
    log_p_student = F.log_softmax(s, dim=-1)
    # F.kl_div(input=log q, target=log p, log_target=True) = Σ p (log p − log q), summed here per token
    per_token = F.kl_div(log_p_student, log_p_teacher, reduction="none", log_target=True).sum(-1)
    return per_token.mean() * (temperature**2)


def hidden_state_mse(
    student_hidden: Sequence[torch.Tensor],
    teacher_hidden: Sequence[torch.Tensor],
    mask: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """Mean over the matched layers of the mean squared error between hidden states, on the kept tokens.

    ``student_hidden[i]`` is paired with ``teacher_hidden[i]`` (``output_hidden_states=True`` gives the embedding
    output and every layer's); pairs whose shapes differ (a pruned hidden size, a different depth's extra layers)
    are skipped. ``mask``: ``[batch, seq]`` booleans of the tokens that count (``None``: all). Returns ``None``
    when no pair matches, so the caller can tell "no term" from a zero loss.
    """
    terms = []
    for s, t in zip(student_hidden, teacher_hidden):
        if s.shape != t.shape:
            continue
        diff = (s.float() - t.detach().float()).pow(2)
        if mask is not None:
            diff = diff[mask]
            if diff.numel() == 0:
                continue
        terms.append(diff.mean())
    if not terms:
        return None
    return torch.stack(terms).mean()
