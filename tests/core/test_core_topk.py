"""DifferentiableTopK (docs/dms.md, "## Differentiable top-k"): normalisation, soft-mask polarisation, gradients,
Taylor EMA."""

import pytest
import torch

from hf_dynamic.core.importance import taylor_importance_ema_
from hf_dynamic.core.topk import DifferentiableTopK, normalize_importance


@pytest.mark.parametrize(
    "sampler",
    [
        lambda n: torch.randn(n),
        lambda n: torch.rand(n).pow(8) * 1e6,  # heavily skewed
        lambda n: torch.distributions.Exponential(0.1).sample((n,)),
        lambda n: torch.randint(0, 3, (n,)).float(),  # many ties
    ],
)
def test_normalized_importance_is_uniform(sampler):
    n = 257
    c = sampler(n)
    cn = normalize_importance(c)
    # exactly the grid {1/N, ..., 1}: uniform whatever the input distribution
    assert torch.equal(torch.sort(cn).values, torch.arange(1, n + 1) / n)
    # and it preserves the order of c (non-strictly)
    order = torch.argsort(c, stable=True)
    assert torch.all(cn[order][1:] > cn[order][:-1])
    # the paper's definition #{j: c_j <= c_i}/N where there are no ties
    if len(torch.unique(c)) == n:
        ref = (c[None, :] <= c[:, None]).sum(1).float() / n
        assert torch.allclose(cn, ref)


def test_normalize_rows_independently():
    c = torch.randn(3, 5)
    cn = normalize_importance(c)
    for r in range(3):
        assert torch.equal(cn[r], normalize_importance(c[r]))


@pytest.mark.parametrize("temperature,n,e", [(1.0, 64, 0.37), (4.0, 12, 0.6), (1.0, 500, 0.05)])
def test_soft_mask_polarises(temperature, n, e):
    op = DifferentiableTopK(n, temperature=temperature, init_keep_ratio=e)
    op.importance.copy_(torch.randn(n))
    soft, hard = op.soft_mask().detach(), op.hard_mask()
    cn = op.normalized_importance()
    far = (cn - (1 - e)).abs() > 3.0 / (temperature * n)
    assert far.any()
    assert ((soft - hard).abs()[far] < 0.05).all()
    # the formula itself
    assert torch.allclose(soft, torch.sigmoid(temperature * n * (cn - (1 - e))))
    assert torch.equal(hard, (soft >= 0.5).float())


def test_keep_ratio_gradient_nonzero_and_resource_like_loss():
    op = DifferentiableTopK(16, temperature=1.0, init_keep_ratio=0.5)
    op.importance.copy_(torch.rand(16))
    op.soft_mask().sum().backward()
    assert op.keep_ratio.grad is not None and op.keep_ratio.grad.abs() > 0


def test_keep_ratio_clamped_with_straight_through_gradient():
    n = 10
    op = DifferentiableTopK(n, init_keep_ratio=1.0)
    with torch.no_grad():
        op.keep_ratio.fill_(-3.0)
    e = op.clamped_keep_ratio()
    assert float(e.detach()) == pytest.approx(1 / (2 * n))
    assert op.kept_counts().item() == 1  # e = 1/(2N) keeps exactly one element
    e.backward()
    assert op.keep_ratio.grad == 1.0  # gradient still reaches e outside the range
    op.clamp_()
    assert float(op.keep_ratio.detach()) == pytest.approx(1 / (2 * n))
    with torch.no_grad():
        op.keep_ratio.fill_(5.0)
    assert op.kept_counts().item() == n and float(op.clamped_keep_ratio().detach()) == 1.0


@pytest.mark.parametrize("count", [1, 3, 7])
def test_set_keep_count_and_hard_mask_with_count(count):
    op = DifferentiableTopK(7, rows=(4,), shared_keep_ratio=False)
    op.importance.copy_(torch.randn(4, 7))
    op.set_keep_count(count)
    assert op.kept_counts().tolist() == [count] * 4
    # the kept elements are the most important ones of each row
    top = torch.topk(op.importance, count, dim=-1).indices
    assert torch.equal(op.hard_mask().gather(-1, top), torch.ones(4, count))
    assert torch.equal(op.hard_mask_with_count(count), op.hard_mask())


def test_shared_ratio_keeps_same_count_in_every_row():
    op = DifferentiableTopK(9, rows=(5, 2), keep_ratio_dims=0, init_keep_ratio=0.4)
    op.importance.copy_(torch.randn(5, 2, 9))
    counts = op.kept_counts()
    assert counts.shape == (5, 2) and len(torch.unique(counts)) == 1
    per_layer = DifferentiableTopK(9, rows=(5, 2), keep_ratio_dims=1)
    assert per_layer.keep_ratio.shape == (5,)
    with torch.no_grad():
        per_layer.keep_ratio.copy_(torch.linspace(0.1, 1.0, 5))
    counts = per_layer.kept_counts()
    assert torch.equal(counts[:, 0], counts[:, 1]) and counts[0, 0] < counts[-1, 0]


def test_taylor_ema_update_from_backward():
    torch.manual_seed(0)
    op = DifferentiableTopK(6, init_keep_ratio=0.7)
    w = torch.randn(6)

    def reference():  # m and dL/dm of the same loss, computed by hand before the update
        m_ref = op.soft_mask().detach().requires_grad_(True)
        ((m_ref * w).sum() ** 2).backward()
        return m_ref.detach(), m_ref.grad

    m_ref, g_ref = reference()
    m = op()  # tracked soft mask
    ((m * w).sum() ** 2).backward()
    assert torch.allclose(op.importance, 0.01 * (m_ref * g_ref) ** 2)
    assert int(op.num_updates) == 1
    # second step: c <- 0.99 c + 0.01 (m g)^2
    prev = op.importance.clone()
    m_ref, g_ref = reference()
    m = op()
    ((m * w).sum() ** 2).backward()
    assert torch.allclose(op.importance, 0.99 * prev + 0.01 * (m_ref * g_ref) ** 2)
    assert int(op.num_updates) == 2


def test_taylor_ema_function_and_shape_check():
    c = torch.ones(3)
    taylor_importance_ema_(c, torch.tensor([1.0, 0.5, 0.0]), torch.tensor([2.0, 2.0, 2.0]), decay=0.9)
    assert torch.allclose(c, torch.tensor([0.9 + 0.1 * 4, 0.9 + 0.1 * 1, 0.9]))
    with pytest.raises(ValueError, match="same shape"):
        taylor_importance_ema_(c, torch.ones(2), torch.ones(3))


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_elements"):
        DifferentiableTopK(0)
    with pytest.raises(ValueError, match="init_keep_ratio"):
        DifferentiableTopK(4, init_keep_ratio=0.0)
    with pytest.raises(ValueError, match="count"):
        DifferentiableTopK(4).set_keep_count(5)
    with pytest.raises(ValueError, match="keep_ratio_dims"):
        DifferentiableTopK(4, rows=(2,), keep_ratio_dims=2)


@pytest.mark.parametrize("kwargs, message", [
    ({"temperature": float("nan")}, "temperature must be a finite number > 0, got nan"),
    ({"ema_decay": float("nan")}, r"ema_decay must be a finite number >= 0 and < 1, got nan"),
    ({"init_keep_ratio": "0.5"}, r"init_keep_ratio must be a number, got '0.5' \(str\)"),
    ({"num_elements": 4.5}, r"num_elements must be an integer, got 4.5 \(float\)"),
    ({"temperature": True}, r"temperature must be a number, got True \(bool\)"),
])
def test_not_a_real_number_is_refused_naming_the_argument(kwargs, message):
    """A NaN passed every `float(x) <= 0` style check (NaN compares False), a string was read by float(), 4.5
    elements were truncated to 4: each is refused by core.validation.check_number."""
    with pytest.raises(ValueError, match=f"^{message}$"):
        DifferentiableTopK(**{"num_elements": 4, **kwargs})
    if "ema_decay" in kwargs:
        with pytest.raises(ValueError, match=f"^{message}$"):
            DifferentiableTopK(4).set_ema_decay(kwargs["ema_decay"])


def test_public_name():
    import hf_dynamic

    assert hf_dynamic.DifferentiableTopK is DifferentiableTopK
