"""Tiny random BERT and Llama (GQA) models shared by the slimmable-network tests (tests/slim)."""

import torch
from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM

TINY_BERT = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=40,
                 max_position_embeddings=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=3)
TINY_LLAMA = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=8, max_position_embeddings=64)


def tiny_bert():
    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(**TINY_BERT)).eval()


def tiny_llama():
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**TINY_LLAMA)).eval()


def tokens(n=2, t=10):
    return torch.randint(0, 64, (n, t), generator=torch.Generator().manual_seed(1))
