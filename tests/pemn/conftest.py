"""A tiny ConvNet (Conv2d + two Linear layers, no other parameters) for the PEMN tests."""

import pytest
import torch

from pemn_testing import TinyNet


@pytest.fixture
def tiny_net():
    return TinyNet


@pytest.fixture
def batch():
    generator = torch.Generator().manual_seed(1)
    return torch.randn(16, 1, 8, 8, generator=generator), torch.randint(0, 10, (16,), generator=generator)
