"""DynamicResNet settings a user expects to act: an unknown ``from_static`` keyword is a TypeError, and a folder
loads with the model's own config object (transformers' ``test_load_with_mismatched_shapes`` does that)
(``docs/pad.md``, "## Partially dynamic convolution")."""

import pytest
import torch
from transformers import ResNetConfig, ResNetForImageClassification

from hf_dynamic import DynamicResNetConfig, DynamicResNetForImageClassification, finalize_partition
from hf_dynamic.pad.imp import pad_layers

BASIC = dict(num_channels=1, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 2], layer_type="basic",
             num_labels=10)


def test_from_static_rejects_unknown_keywords():
    static = ResNetForImageClassification(ResNetConfig(**BASIC))
    with pytest.raises(TypeError, match=r"from_static\(\) got unknown keyword argument\(s\) \['num_kernal'\]"):
        DynamicResNetForImageClassification.from_static(static, num_kernal=8)


@pytest.mark.parametrize("kwargs,finalize", [(dict(dynamic_ratio=1.0), False), (dict(dynamic_ratio=0.5), True),
                                             (dict(dynamic_ratio=0.5, partition_granularity="filter"), True)])
def test_from_pretrained_with_the_models_own_config(tmp_path, kwargs, finalize):
    torch.manual_seed(0)
    model = DynamicResNetForImageClassification(DynamicResNetConfig(**BASIC, **kwargs)).eval()
    if finalize:
        generator = torch.Generator().manual_seed(1)
        for layer in pad_layers(model):
            layer.set_partition_mask(torch.rand(layer.num_partition_entries, generator=generator) < 0.5)
        model.config.pad_state = "partitioned"
        finalize_partition(model)
    model.save_pretrained(tmp_path)
    loaded = DynamicResNetForImageClassification.from_pretrained(tmp_path, config=model.config).eval()
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, model(x).logits, rtol=0, atol=0)
