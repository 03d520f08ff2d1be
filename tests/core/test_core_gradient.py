"""hf_dynamic.core.gradient: identity forward, scaled gradient backward."""

import torch

from hf_dynamic.core.gradient import scale_gradient


def test_scale_gradient_primitive():
    x = torch.randn(3, requires_grad=True)
    y = scale_gradient(x, 0.25)
    torch.testing.assert_close(y, x)
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.full((3,), 0.25))


def test_scale_gradient_is_a_no_op_without_autograd_or_unit_factor():
    x = torch.randn(3, requires_grad=True)
    assert scale_gradient(x, 1) is x
    with torch.no_grad():
        assert scale_gradient(x, 0.5) is x
