"""PartialMoEBert declares its outputs the transformers way: forwards take ``**kwargs: Unpack[TransformersKwargs]``
(so transformers' attention-output checks run) and ``_can_record_outputs`` records the router logits with an
``OutputRecorder`` on the router, as Mixtral and Qwen3-MoE do."""

import inspect
import typing

import pytest
import torch
from transformers.utils import TransformersKwargs
from transformers.utils.output_capturing import OutputRecorder

import hf_dynamic
from hf_dynamic import PartialMoEBertConfig
from hf_dynamic.core.routing import TopKRouter

TINY = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=64, num_experts=4, num_experts_per_tok=2, dynamic_ratio=0.5)
CLASSES = [getattr(hf_dynamic, f"PartialMoEBert{head}")
           for head in ("Model", "ForSequenceClassification", "ForTokenClassification", "ForQuestionAnswering")]


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_forward_kwargs_are_transformers_kwargs(cls):
    kwargs = inspect.signature(cls.forward).parameters["kwargs"]
    assert kwargs.annotation == typing.Unpack[TransformersKwargs]
    recorder = cls._can_record_outputs["router_logits"]
    assert isinstance(recorder, OutputRecorder) and recorder.target_class is TopKRouter and recorder.index == 0


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_output_attentions_and_router_logits_are_recorded(cls):
    torch.manual_seed(0)
    model = cls(PartialMoEBertConfig(**TINY), ).eval()
    model.set_attn_implementation("eager")
    ids = torch.randint(0, 100, (2, 5))
    with torch.no_grad():
        out = model(ids, output_attentions=True, output_router_logits=True, output_hidden_states=True)
    assert len(out.attentions) == 2 and out.attentions[0].shape == (2, 4, 5, 5)
    torch.testing.assert_close(out.attentions[0].sum(-1), torch.ones(2, 4, 5))
    assert len(out.hidden_states) == 3
    assert len(out.router_logits) == 2 and out.router_logits[0].shape == (10, 4)
    # the recorded logits are the routers' own
    layer = model.base_model.encoder.layer[0]
    with torch.no_grad():
        hidden = out.hidden_states[0]
        attention = layer.attention(hidden, None)[0]
        torch.testing.assert_close(out.router_logits[0], layer.mlp.router(attention.reshape(-1, 32))[0])
    with torch.no_grad():
        plain = model(ids)
    assert getattr(plain, "router_logits", None) is None and plain.attentions is None
