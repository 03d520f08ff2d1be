"""Exit heads: the small classifier f_n that reads one backbone layer's hidden states (docs/boost.md, "## Boosted
exits")."""

import torch
from torch import nn

EXIT_POOLINGS = ("cls", "mean")


def pool(hidden_states: torch.Tensor, attention_mask: torch.Tensor | None, pooling: str) -> torch.Tensor:
    """``"cls"``: the first token; ``"mean"``: the mean over the non-padding tokens (all of them without a mask)."""
    if pooling == "cls":
        return hidden_states[:, 0]
    if attention_mask is None:
        return hidden_states.mean(dim=1)
    weights = attention_mask.to(hidden_states.dtype).unsqueeze(-1)
    return (hidden_states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)


class ExitHead(nn.Module):
    """Exit head f_n: BERT-pooler-style ``classifier(dropout(tanh(dense(pool(h)))))`` on a layer's output.

    ``pooling="cls"``: the first token (BERT's pooler, DeeBERT's highway exits); ``"mean"``: the mean over the
    non-padding tokens (how sentence-transformers such as all-MiniLM-L6-v2 were trained to pool).

    ``layer``: the 1-based backbone layer the head reads, kept in the persistent buffer ``exit_layer`` so that a
    checkpoint records where each head was trained and a model can refuse heads loaded onto other layers.
    """

    def __init__(self, hidden_size: int, num_labels: int, dropout: float, pooling: str = "cls", layer: int = 0):
        super().__init__()
        self.register_buffer("exit_layer", torch.tensor(layer, dtype=torch.long))
        self.pooling = pooling
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.activation = nn.Tanh()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_labels)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        pooled = pool(hidden_states, attention_mask, self.pooling)
        return self.classifier(self.dropout(self.activation(self.dense(pooled))))


__all__ = ["EXIT_POOLINGS", "ExitHead", "pool"]
