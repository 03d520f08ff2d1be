"""BoostedEarlyExitForSequenceClassification keeps transformers' model contracts: old checkpoints load, token
embeddings resize, hidden states / attentions are returned, a base-model checkpoint or a checkpoint whose heads
disagree with its exits is refused with a clear error, and a multi-label problem type is refused at the forward."""

import json
import logging
import os
import shutil

import pytest
import torch
from transformers import AutoModelForSequenceClassification, BertConfig, BertModel

import hf_dynamic  # noqa: F401  (registers the model types)
from hf_dynamic import BoostedEarlyExitConfig, BoostedEarlyExitForSequenceClassification

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures", "boosted_early_exit_v0")
VOCAB = 60


def tiny_bert(**kwargs):
    return BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=4, num_attention_heads=2,
                      intermediate_size=24, max_position_embeddings=32, hidden_dropout_prob=0.0,
                      attention_probs_dropout_prob=0.0, **kwargs)


def make_model(**kwargs):
    config = BoostedEarlyExitConfig(backbone=tiny_bert(), num_labels=3, classifier_dropout=0.0, **kwargs)
    return BoostedEarlyExitForSequenceClassification(config).eval()


def make_batch(batch=6, length=9, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    for i in range(batch):
        if i % 3:
            mask[i, -i:] = 0
            ids[i, -i:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def test_v0_checkpoint_loads_and_reproduces_its_outputs():
    """A checkpoint saved by the code before the one-shape redesign (tests/fixtures/make_boosted_early_exit_v0.py)."""
    with open(os.path.join(FIXTURE, "expected.json")) as handle:
        expected = json.load(handle)
    model = AutoModelForSequenceClassification.from_pretrained(FIXTURE).eval()
    assert isinstance(model, BoostedEarlyExitForSequenceClassification)
    inputs = {"input_ids": torch.tensor(expected["input_ids"]),
              "attention_mask": torch.tensor(expected["attention_mask"])}
    with torch.no_grad():
        out = model(**inputs, output_all_exits=True)
        torch.testing.assert_close(out.all_exit_logits, torch.tensor(expected["all_exit_logits"]), atol=1e-6, rtol=0)
        torch.testing.assert_close(out.logits, torch.tensor(expected["logits"]), atol=1e-6, rtol=0)
        model.config.exit_thresholds = expected["dynamic_thresholds"]
        dynamic = model(**inputs)
    assert dynamic.exit_layer.tolist() == expected["dynamic_exit_layer"]
    torch.testing.assert_close(dynamic.logits, torch.tensor(expected["dynamic_logits"]), atol=1e-6, rtol=0)


def test_resize_token_embeddings_updates_the_backbone_config_and_reloads(tmp_path):
    model = make_model()
    model.resize_token_embeddings(70, mean_resizing=False)
    assert model.config.backbone.vocab_size == 70 and model.backbone.config.vocab_size == 70
    assert model.get_input_embeddings().weight.shape == (70, 16)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert loaded.config.backbone.vocab_size == 70
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    batch = make_batch()
    batch["input_ids"][0, 1] = 69  # a new token
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits, atol=0, rtol=0)


@pytest.mark.parametrize("anytime", [False, True])
def test_hidden_states_and_attentions_are_the_backbones(anytime):
    model = make_model()
    model.set_attn_implementation("eager")
    batch = make_batch()
    with torch.no_grad():
        out = model(**batch, output_all_exits=anytime, output_hidden_states=True, output_attentions=True)
        reference = model.backbone(**batch, output_hidden_states=True, output_attentions=True)
    assert len(out.hidden_states) == 5 and len(out.attentions) == 4
    for ours, theirs in zip(out.hidden_states + out.attentions, reference.hidden_states + reference.attentions):
        torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-6)
    plain = model(**batch, output_all_exits=anytime)
    assert plain.hidden_states is None and plain.attentions is None
    assert len(model(**batch, output_hidden_states=True, return_dict=False)) >= 2


def test_dynamic_mode_hidden_states_when_every_sample_leaves_early():
    model = make_model()
    model.set_attn_implementation("eager")
    model.config.exit_thresholds = [0.0] * 4  # every sample leaves at the first exit
    with torch.no_grad():
        out = model(**make_batch(), output_hidden_states=True, output_attentions=True)
    assert out.exit_layer.tolist() == [1] * 6
    assert len(out.hidden_states) == 5 and len(out.attentions) == 4
    assert out.hidden_states[1].any() and not any(h.any() for h in out.hidden_states[2:])
    assert not any(a.any() for a in out.attentions[1:])


def test_attentions_under_sdpa_are_empty_with_a_warning(caplog):
    model = make_model()
    with caplog.at_level(logging.WARNING):
        out = model(**make_batch(), output_attentions=True)
    assert out.attentions == ()


def test_base_model_checkpoint_points_to_from_backbone(tmp_path):
    BertModel(tiny_bert()).save_pretrained(tmp_path / "bert")
    with pytest.raises(ValueError, match="from_backbone"):
        BoostedEarlyExitForSequenceClassification.from_pretrained(tmp_path / "bert")
    model = BoostedEarlyExitForSequenceClassification.from_backbone(str(tmp_path / "bert"), num_labels=2)
    assert model.config.backbone.vocab_size == VOCAB


def test_checkpoint_whose_heads_disagree_with_exit_layers_is_refused(tmp_path):
    make_model().save_pretrained(tmp_path / "four")
    shutil.copytree(tmp_path / "four", tmp_path / "two")
    path = tmp_path / "two" / "config.json"
    config = json.loads(path.read_text())
    config["exit_layers"] = [2, 4]
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"4 exit heads .* exit_layers=\[2, 4\] needs 2"):
        AutoModelForSequenceClassification.from_pretrained(tmp_path / "two")
    assert AutoModelForSequenceClassification.from_pretrained(tmp_path / "four").config.num_exits == 4


def test_multi_label_is_refused_at_the_forward_too():
    with pytest.raises(ValueError, match="multi_label_classification"):
        BoostedEarlyExitConfig(backbone=tiny_bert(), num_labels=3, problem_type="multi_label_classification")
    model = make_model()
    model.config.problem_type = "multi_label_classification"
    with pytest.raises(ValueError, match="multi_label_classification' is not supported"):
        model(**make_batch(), labels=torch.zeros(6, 3))


def test_loss_leaves_problem_type_unset():
    """The task loss is transformers' sequence-classification loss, without its write to config.problem_type."""
    model = make_model().train()
    out = model(**make_batch(), labels=torch.tensor([0, 1, 2, 0, 1, 2]))
    assert torch.isfinite(out.loss) and model.config.problem_type is None


def test_forward_declares_transformers_kwargs():
    """``**kwargs: Unpack[TransformersKwargs]``, the transformers way: ``num_items_in_batch`` is accepted and leaves
    the (per-sample mean) loss unchanged, the Trainer keeps its gradient-accumulation division
    (``accepts_loss_kwargs = False``), and kwargs the model cannot honour are refused."""
    import inspect
    from typing import Unpack

    from transformers.utils import TransformersKwargs

    annotation = inspect.signature(BoostedEarlyExitForSequenceClassification.forward).parameters["kwargs"].annotation
    assert annotation == Unpack[TransformersKwargs]
    model = make_model()
    assert model.accepts_loss_kwargs is False
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    with torch.no_grad():
        plain = model(**make_batch(), labels=labels, output_all_exits=True)
        counted = model(**make_batch(), labels=labels, output_all_exits=True, num_items_in_batch=torch.tensor(6))
    assert torch.equal(plain.loss, counted.loss) and torch.equal(plain.logits, counted.logits)
    with pytest.raises(TypeError, match="cu_seq_lens_q"):
        model(**make_batch(), cu_seq_lens_q=torch.tensor([0, 9]))


def _save_and_edit_exit_layers(model, folder, exit_layers):
    model.save_pretrained(folder)
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config["exit_layers"] = exit_layers
    path.write_text(json.dumps(config))


def test_checkpoint_whose_exit_layers_were_moved_is_refused(tmp_path):
    """Same number of exits, other layers ([2, 4] -> [3, 4]): each head records the layer it was trained at
    (``exit_heads.k.exit_layer``), so the heads are not silently loaded onto other layers."""
    model = make_model(exit_layers=[2, 4])
    assert [int(head.exit_layer) for head in model.exit_heads] == [2, 4]
    _save_and_edit_exit_layers(model, tmp_path / "moved", [3, 4])
    with pytest.raises(ValueError, match=r"exit_layers=\[3, 4\], but its exit heads were trained at layers \[2, 4\]"):
        AutoModelForSequenceClassification.from_pretrained(tmp_path / "moved")
    _save_and_edit_exit_layers(model, tmp_path / "same", [2, 4])
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "same")
    assert [int(head.exit_layer) for head in loaded.exit_heads] == [2, 4]


def test_exit_layers_cannot_move_under_a_built_model():
    """Editing ``config.exit_layers`` of a live model, or loading heads trained elsewhere, is refused too."""
    model = make_model(exit_layers=[2, 4])
    model.config.exit_layers = [3, 4]
    with pytest.raises(ValueError, match=r"config.exit_layers is \[3, 4\] but this model was built with exit heads at "
                                         r"layers \[2, 4\]"):
        model(**make_batch())
    model.config.exit_layers = [2, 4]
    with torch.no_grad():
        model.exit_heads[0].exit_layer.fill_(1)
    with pytest.raises(ValueError, match=r"the exit heads were trained at layers \[1, 4\]"):
        model.check_exit_heads()


def test_from_pretrained_reheads_with_ignore_mismatched_sizes(tmp_path):
    """As for every transformers classifier: other ``num_labels`` is a size-mismatch ``RuntimeError``, and with
    ``ignore_mismatched_sizes=True`` the heads' classifiers are re-initialised while everything else loads."""
    model = make_model(exit_layers=[2, 4])
    model.save_pretrained(tmp_path)
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
        AutoModelForSequenceClassification.from_pretrained(tmp_path, num_labels=5)
    reheaded = AutoModelForSequenceClassification.from_pretrained(tmp_path, num_labels=5,
                                                                  ignore_mismatched_sizes=True).eval()
    assert reheaded.config.num_labels == 5
    for name, tensor in model.state_dict().items():
        if ".classifier." not in name:
            assert torch.equal(reheaded.state_dict()[name], tensor), name
    with torch.no_grad():
        out = reheaded(**make_batch(), output_all_exits=True)
    assert out.all_exit_logits.shape == (6, 2, 5)


@pytest.mark.parametrize("mode", ["full", "anytime", "dynamic"])
def test_output_hidden_states_as_a_list_of_layers(mode):
    """transformers 5 reads a list (or one int) as the hidden-state indices to return, negative ones from the end:
    the others are ``None``, in every mode."""
    model = make_model()
    if mode == "dynamic":
        with torch.no_grad():
            for head in model.exit_heads:
                head.classifier.weight.mul_(80)
        model.config.exit_thresholds = [0.9, 0.9, 0.9, 0.0]
    batch = make_batch(batch=12, seed=3)
    with torch.no_grad():
        every = model(**batch, output_all_exits=mode == "anytime", output_hidden_states=True)
        chosen = model(**batch, output_all_exits=mode == "anytime", output_hidden_states=[0, 2, -1])
        one = model(**batch, output_all_exits=mode == "anytime", output_hidden_states=3)
    assert len(chosen.hidden_states) == len(one.hidden_states) == 5
    for index in range(5):
        if index in (0, 2, 4):
            torch.testing.assert_close(chosen.hidden_states[index], every.hidden_states[index], atol=0, rtol=0)
        else:
            assert chosen.hidden_states[index] is None
        assert (one.hidden_states[index] is None) == (index != 3)
    with pytest.raises(TypeError, match="output_hidden_states must be a bool, a layer index or a list"):
        model(**batch, output_hidden_states=[1.5])


def test_from_backbone_keeps_attention_implementation():
    """``from_backbone`` gives the model its encoder's attention implementation. transformers 5 has no public
    getter for it: this reads ``config._attn_implementation``, and fails loudly if transformers renames it."""
    for implementation in ("eager", "sdpa"):
        encoder = BertModel(tiny_bert())
        encoder.set_attn_implementation(implementation)
        assert encoder.config._attn_implementation == implementation  # the private seam the model reads
        model = BoostedEarlyExitForSequenceClassification.from_backbone(encoder, num_labels=2)
        assert model.backbone.config._attn_implementation == implementation
        assert model.config.backbone._attn_implementation == implementation
