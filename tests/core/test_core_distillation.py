"""hf_dynamic.core.distillation: the KD loss equals a hand-written softmax / KL (temperature, T², masking) and the
hidden-state MSE pairs only matching widths."""

import math

import pytest
import torch

from hf_dynamic.core.distillation import distillation_kl_loss, hidden_state_mse, token_mask


def reference_kl(student, teacher, temperature, keep):
    """Σ_v p log(p / q) per kept token, by hand (exp / sum, no log_softmax), mean, times T²."""
    total, n = 0.0, 0
    for b in range(student.shape[0]):
        for t in range(student.shape[1]):
            if not keep[b][t]:
                continue
            zs = [float(v) / temperature for v in student[b, t]]
            zt = [float(v) / temperature for v in teacher[b, t]]
            q = [math.exp(v) / sum(math.exp(u) for u in zs) for v in zs]
            p = [math.exp(v) / sum(math.exp(u) for u in zt) for v in zt]
            total += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
            n += 1
    return total / n * temperature**2


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_kl_equals_the_hand_written_reference_with_shifted_label_masking(temperature):
    student, teacher = torch.randn(2, 6, 5), torch.randn(2, 6, 5)
    labels = torch.randint(0, 5, (2, 6))
    labels[0, 2] = labels[1, 4] = labels[1, 5] = -100
    # shifted: the logits at t predict labels[t + 1]; the last position has no next label
    keep = [[t < 5 and int(labels[b, t + 1]) != -100 for t in range(6)] for b in range(2)]
    loss = distillation_kl_loss(student, teacher, temperature, labels=labels)
    assert float(loss) == pytest.approx(reference_kl(student, teacher, temperature, keep), rel=1e-5)
    unshifted = distillation_kl_loss(student, teacher, temperature, labels=labels, shift_labels=False)
    keep = [[int(labels[b, t]) != -100 for t in range(6)] for b in range(2)]
    assert float(unshifted) == pytest.approx(reference_kl(student, teacher, temperature, keep), rel=1e-5)
    everything = distillation_kl_loss(student, teacher, temperature)
    assert float(everything) == pytest.approx(reference_kl(student, teacher, temperature, [[True] * 6] * 2), rel=1e-5)


def test_kl_is_zero_for_equal_logits_and_gradients_reach_only_the_student():
    student = torch.randn(1, 4, 7, requires_grad=True)
    teacher = torch.randn(1, 4, 7, requires_grad=True)
    assert float(distillation_kl_loss(teacher.detach(), teacher.detach(), 3.0)) == pytest.approx(0.0, abs=1e-6)
    distillation_kl_loss(student, teacher, 2.0).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0 and teacher.grad is None
    none_kept = torch.full((1, 4), -100)
    loss = distillation_kl_loss(student, teacher, 2.0, labels=none_kept)
    assert float(loss) == 0.0 and loss.requires_grad


def test_bad_inputs_name_the_field():
    s = torch.randn(1, 3, 4)
    with pytest.raises(ValueError, match="temperature"):
        distillation_kl_loss(s, s, 0.0)
    with pytest.raises(ValueError, match="same shape"):
        distillation_kl_loss(s, torch.randn(1, 3, 5))
    with pytest.raises(ValueError, match="labels"):
        distillation_kl_loss(s, s, labels=torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[batch, seq, vocab\]"):
        distillation_kl_loss(s[0], s[0])


def test_hidden_state_mse_pairs_matching_widths_on_kept_tokens():
    mask = torch.tensor([[True, False, True]])
    s = [torch.randn(1, 3, 4), torch.randn(1, 3, 2), torch.randn(1, 3, 4)]
    t = [torch.randn(1, 3, 4), torch.randn(1, 3, 4), torch.randn(1, 3, 4)]
    expected = torch.stack([((s[i] - t[i])[mask] ** 2).mean() for i in (0, 2)]).mean()  # layer 1's width differs
    assert float(hidden_state_mse(s, t, mask)) == pytest.approx(float(expected), rel=1e-6)
    assert hidden_state_mse([torch.randn(1, 3, 2)], [torch.randn(1, 3, 4)]) is None
    assert token_mask(None, (1, 3)) is None
