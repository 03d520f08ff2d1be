"""Perplexity of a causal language model over a whole text, in non-overlapping windows.

The text is tokenised once and cut into consecutive windows of ``window`` tokens (the last one may be shorter);
each window is scored on its own (no context carried over), every position but the window's first predicting
the next token. Perplexity is ``exp`` of the mean negative log-likelihood over all predicted tokens, the
``stride == max_length`` case of the Hugging Face perplexity recipe ("Perplexity of fixed-length models").
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from transformers.utils import logging

from ..core.validation import check_number

logger = logging.get_logger(__name__)


def _window_nll(model, batch: torch.Tensor) -> torch.Tensor:
    """Summed next-token negative log-likelihood of a ``(batch, length)`` block of token ids."""
    logits = model(input_ids=batch, use_cache=False).logits
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.size(-1)).float(), batch[:, 1:].reshape(-1), reduction="sum"
    )


def perplexity(model, tokenizer, text: str, window: int = 2048, batch_size: int = 1, device=None) -> dict:
    """Perplexity of ``model`` on ``text`` over non-overlapping ``window``-token windows.

    Args:
        model: a causal LM returning ``logits`` of shape ``(batch, length, vocab)``; put in eval mode for the
            computation (its training mode is restored afterwards).
        tokenizer: tokenises the whole ``text`` once (with its default special tokens).
        window: tokens per window (>= 2); the last, partial window is included.
        batch_size: full windows scored per forward pass (the partial one goes alone).
        device: where the token ids go; default the device of the model's first parameter.

    Returns:
        ``{"perplexity": float, "mean_nll": float, "tokens": int, "predicted_tokens": int}``: ``tokens`` counts
        the whole tokenised text, ``predicted_tokens`` the positions scored (``tokens`` minus one per window).
    """
    if not isinstance(text, str) or not text:
        raise ValueError(f"text must be a non-empty string, got {type(text).__name__} of length "
                         f"{len(text) if hasattr(text, '__len__') else 'n/a'}")
    check_number("window", window, integer=True, ge=2)
    check_number("batch_size", batch_size, integer=True, ge=1)
    if device is None:
        device = next(model.parameters()).device
    ids = torch.as_tensor(tokenizer(text, verbose=False)["input_ids"], dtype=torch.long)
    tokens = ids.numel()
    if tokens < 2:
        raise ValueError(f"text tokenises to {tokens} token(s); at least 2 are needed to predict one")

    full = tokens // window
    blocks = [ids[: full * window].view(full, window)[i : i + batch_size] for i in range(0, full, batch_size)]
    if tokens - full * window >= 2:  # a 1-token tail has nothing to predict
        blocks.append(ids[full * window :].unsqueeze(0))

    was_training = model.training
    model.eval()
    nll = torch.zeros((), dtype=torch.float64)
    predicted = 0
    try:
        with torch.inference_mode():
            for block in blocks:
                nll += _window_nll(model, block.to(device)).double().cpu()
                predicted += block.size(0) * (block.size(1) - 1)
    finally:
        model.train(was_training)
    mean_nll = float(nll) / predicted
    logger.info(f"perplexity: {tokens} tokens, {predicted} predicted, mean NLL {mean_nll:.4f}")
    return {
        "perplexity": math.exp(mean_nll),
        "mean_nll": mean_nll,
        "tokens": tokens,
        "predicted_tokens": predicted,
    }
