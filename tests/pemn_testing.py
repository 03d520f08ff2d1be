"""A tiny ConvNet (Conv2d + two Linear layers, no other parameters) for the PEMN tests."""

import torch
from torch import nn


class TinyNet(nn.Module):
    def __init__(self, bias: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, bias=bias)
        self.fc1 = nn.Linear(4 * 6 * 6, 32, bias=bias)
        self.fc2 = nn.Linear(32, 10, bias=bias)

    def forward(self, x, labels=None):
        logits = self.fc2(torch.relu(self.fc1(torch.relu(self.conv(x)).flatten(1))))
        if labels is None:
            return logits
        return {"loss": nn.functional.cross_entropy(logits, labels), "logits": logits}
