"""A tiny token-classification dataset shared by the PAD Trainer tests (tests/pad, tests/integration)."""

import torch


class Rows(torch.utils.data.Dataset):
    """``n`` rows of 9 random token ids (vocabulary 100) with a label in {0, 1, 2}, fixed by ``seed``."""

    def __init__(self, n=24, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.rows = [{"input_ids": torch.randint(0, 100, (9,), generator=g),
                      "labels": int(torch.randint(0, 3, (), generator=g))} for _ in range(n)]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]
