"""``slimmable_bert``: ``from_dense`` (the stock weights, ordered as ``make_slimmable`` orders them), the width a
checkpoint loads at, stock classes loading its weights, export to the stock class, ``SlimmableTrainer`` on the
registered class, and a real MiniLM round trip (``docs/slim.md``, "## Registered model types")."""

import copy
import json
import os
import re

import pytest
import torch
from slim_testing import TINY_BERT, tiny_bert, tokens
from transformers import (
    AutoModelForSequenceClassification,
    BertConfig,
    BertForSequenceClassification,
    BertModel,
    LlamaConfig,
    TrainingArguments,
)

import hf_dynamic
from hf_dynamic import slim
from hf_dynamic.models.slimmable_bert import (
    SlimmableBertConfig,
    SlimmableBertForSequenceClassification,
    SlimmableBertModel,
)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

# State dicts are compared bit for bit; the logits of two separately built models up to rounding (the MiniLM
# example differed by 7e-9 in one run).
SAME = dict(rtol=0, atol=1e-6)


def logits(model, x, widths=1.0):
    with torch.no_grad(), slim.width(model, widths):
        return model(x).logits


def calibration():
    x = tokens(4, 8)
    return [{"input_ids": x, "labels": torch.tensor([0, 1, 2, 0])}]


@pytest.mark.parametrize("importance", ["magnitude", "taylor"])
def test_from_dense_orders_as_make_slimmable_and_leaves_the_dense_model_alone(importance):
    dense = tiny_bert()
    before = {k: v.clone() for k, v in dense.state_dict().items()}
    batches = calibration() if importance == "taylor" else None
    # slim_width 0.5: the Taylor scores must still be taken at full width
    model = SlimmableBertForSequenceClassification.from_dense(dense, importance=importance,
                                                              calibration_batches=batches, slim_width=0.5)
    reference = slim.make_slimmable(copy.deepcopy(dense), importance=importance, calibration_batches=batches)
    for key, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    assert all(torch.equal(v, before[k]) for k, v in dense.state_dict().items())
    assert slim.get_width(model) == [(2, 20), (2, 20)] and not model.training
    x = tokens()
    torch.testing.assert_close(logits(model, x), logits(reference, x), **SAME)
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, logits(reference, x, 0.5), **SAME)
        torch.testing.assert_close(logits(model, x), dense(x).logits, rtol=0, atol=1e-5)


def test_from_dense_of_a_slimmable_model_keeps_its_order():
    trained = slim.make_slimmable(tiny_bert())
    with torch.no_grad():  # an order no importance score would give
        trained.bert.encoder.layer[0].intermediate.dense.weight.mul_(torch.linspace(0.1, 2.0, 40)[:, None])
    model = SlimmableBertForSequenceClassification.from_dense(trained)
    for key, value in trained.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    with pytest.raises(ValueError, match="ordered.*calibration_batches"):
        SlimmableBertForSequenceClassification.from_dense(trained, calibration_batches=calibration())


def test_from_dense_refuses_bad_arguments_before_loading(tmp_path):
    dense = tiny_bert()
    with pytest.raises(TypeError, match="BertForSequenceClassification or a checkpoint folder, got BertModel"):
        SlimmableBertForSequenceClassification.from_dense(BertModel(BertConfig(**TINY_BERT)))
    with pytest.raises(TypeError, match="slim_widht"):
        SlimmableBertForSequenceClassification.from_dense(dense, slim_widht=0.5)
    with pytest.raises(ValueError, match="importance"):
        SlimmableBertForSequenceClassification.from_dense(dense, importance="fisher")
    with pytest.raises(ValueError, match="calibration_batches"):
        SlimmableBertForSequenceClassification.from_dense(dense, importance="taylor")
    with pytest.raises(Exception) as info:  # 0.1 of 4 heads keeps none
        SlimmableBertForSequenceClassification.from_dense(dense, slim_width=0.1)
    assert "slim_width=0.1 keeps 0 of 4 attention head groups" in str(info.value)
    LlamaConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                vocab_size=50).save_pretrained(tmp_path / "llama")
    with pytest.raises(ValueError, match="needs a 'bert' model.*'llama'"):
        SlimmableBertForSequenceClassification.from_dense(str(tmp_path / "llama"))
    SlimmableBertForSequenceClassification(SlimmableBertConfig(**TINY_BERT)).save_pretrained(tmp_path / "slim")
    with pytest.raises(ValueError, match="'slimmable_bert' checkpoint already"):
        SlimmableBertForSequenceClassification.from_dense(str(tmp_path / "slim"))


def test_checkpoint_loads_at_its_width_and_a_stock_class_loads_it_at_full_width(tmp_path):
    model = SlimmableBertForSequenceClassification.from_dense(
        tiny_bert(), slim_width={1: {"attention": 0.5, "mlp": 0.25}}).eval()
    slim.set_width(model, 0.25)  # a run-time width: not the checkpoint's
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["slim_width"] == {"1": {"attention": 0.5, "mlp": 0.25}}
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert type(loaded) is SlimmableBertForSequenceClassification
    assert loaded.config.slim_width == {1: {"attention": 0.5, "mlp": 0.25}}
    assert slim.get_width(loaded) == [(4, 40), (2, 10)]
    x = tokens()
    for widths in (1.0, 0.5, {1: {"attention": 0.5, "mlp": 0.25}}):
        torch.testing.assert_close(logits(loaded, x, widths), logits(model, x, widths), **SAME)

    stock = BertForSequenceClassification.from_pretrained(tmp_path).eval()  # what the model card promises
    for key, value in stock.state_dict().items():
        assert torch.equal(value, model.state_dict()[key]), key
    with torch.no_grad():
        torch.testing.assert_close(stock(x).logits, logits(model, x), **SAME)
    card = (tmp_path / "README.md").read_text()
    assert "The stock BERT class with the same head (`BertForSequenceClassification`, ...) loads these weights" in card
    assert "Do not load this checkpoint into a stock" not in card


def test_uniform_export_is_the_stock_class():
    model = SlimmableBertForSequenceClassification.from_dense(tiny_bert())
    widths = {i: {"attention": 1.0, "mlp": 0.5} for i in range(2)}
    small = slim.export_width(model, widths)
    assert type(small) is BertForSequenceClassification and type(small.config) is BertConfig
    assert small.config.intermediate_size == 20 and not hasattr(small.config, "slim_width")
    assert small.config.architectures == ["BertForSequenceClassification"]
    x = tokens()
    with torch.no_grad():
        torch.testing.assert_close(small(x).logits, logits(model, x, widths), rtol=0, atol=1e-5)


def test_slimmable_trainer_trains_the_registered_class(tmp_path):
    model = SlimmableBertForSequenceClassification.from_dense(tiny_bert(), slim_width=0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = tokens(8, 8)
    data = [{"input_ids": x[i], "labels": torch.tensor(i % 3)} for i in range(8)]
    args = TrainingArguments(output_dir=str(tmp_path / "run"), per_device_train_batch_size=4, max_steps=2,
                             learning_rate=1e-2, report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True)
    slim.SlimmableTrainer(model=model, args=args, train_dataset=data, num_random_widths=1, min_width=0.25).train()
    # the sandwich widths are scoped: the model is back at its own width, and full-width weights moved
    assert slim.get_width(model) == [(2, 20), (2, 20)]
    assert not torch.equal(before["bert.encoder.layer.0.output.dense.weight"][:, 30:],
                           model.state_dict()["bert.encoder.layer.0.output.dense.weight"][:, 30:])
    model.eval().save_pretrained(tmp_path / "model")
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "model")
    for widths in (0.5, 1.0):
        torch.testing.assert_close(logits(loaded, x, widths), logits(model, x, widths), **SAME)


def test_base_model_class_is_slimmable_too():
    torch.manual_seed(0)
    model = SlimmableBertModel(SlimmableBertConfig(**TINY_BERT, slim_width=0.5)).eval()
    assert slim.get_width(model) == [(2, 20), (2, 20)] and model.pooler is not None
    without_pooler = SlimmableBertModel(SlimmableBertConfig(**TINY_BERT), add_pooling_layer=False)
    assert without_pooler.pooler is None and slim.is_slimmable(without_pooler)


def test_docs_example_minilm_round_trip_is_exact_at_half_width(tmp_path, monkeypatch, capsys):
    """The example of docs/slim.md, "## Registered model types" (a real MiniLM), run as written in a scratch folder."""
    with open(os.path.join(REPO, "docs", "slim.md")) as f:
        blocks = [b for b in re.findall(r"```python\n(.*?)```", f.read(), flags=re.S) if ".from_dense(" in b]
    assert len(blocks) == 1
    monkeypatch.chdir(tmp_path)
    scope = {"__name__": "__docs_example__"}
    exec(compile(blocks[0], "docs/slim.md", "exec"), scope)
    printed = capsys.readouterr().out.strip().splitlines()[-1]  # (deepspeed may log a line first)
    assert printed.split() == ["SlimmableBertForSequenceClassification", "0.5", "(6,", "768)"]
    model, loaded, ids = scope["model"], scope["loaded"], scope["ids"]
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    torch.testing.assert_close(scope["half"], logits(model, ids, 0.5), **SAME)
    torch.testing.assert_close(scope["full"], logits(model, ids), **SAME)
    dense = BertForSequenceClassification.from_pretrained(hf_dynamic.minilm_path(), num_labels=2).eval()
    dense.classifier.load_state_dict(model.classifier.state_dict())  # from_dense(folder) drew its own head
    with torch.no_grad():
        torch.testing.assert_close(scope["full"], dense(ids).logits, rtol=0, atol=1e-5)


def test_slim_width_layer_keys():
    """config.json's string layer keys are read as ints; a layer given twice, a non-canonical key or a key that is
    no layer is refused by name; a string-keyed width set on the config after it is built is read too."""
    config = SlimmableBertConfig(**TINY_BERT, slim_width={"1": 0.5, 0: {"mlp": 0.25}})
    assert config.slim_width == {1: 0.5, 0: {"mlp": 0.25}}
    for bad, message in (({0: 0.5, "0": 0.25}, "slim_width gives layer 0 twice"),
                         ({"01": 0.5}, "slim_width has unknown layer '01'"),
                         ({"x": 0.5}, "slim_width has unknown layer 'x'"),
                         ({2: 0.5}, "slim_width has unknown layer 2")):
        with pytest.raises(Exception) as info:
            SlimmableBertConfig(**TINY_BERT, slim_width=bad)
        assert message in str(info.value), (bad, info.value)
    config.slim_width = {"1": {"attention": 0.25}}
    assert slim.get_width(SlimmableBertForSequenceClassification(config)) == [(4, 40), (1, 40)]
