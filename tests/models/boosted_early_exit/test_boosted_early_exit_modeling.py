"""Boosted early exits (docs/boost.md): loss, gradient rescaling, anytime / dynamic modes, save/load, backbones."""

import pytest
import torch
from torch import nn
from transformers import (
    AutoModelForSequenceClassification,
    BertConfig,
    BertForSequenceClassification,
    BertModel,
    CamembertConfig,
    DistilBertConfig,
    DistilBertModel,
    GPT2Config,
    GPT2Model,
    ModernBertConfig,
    RobertaConfig,
    XLMRobertaConfig,
)

import hf_dynamic
from hf_dynamic import BoostedEarlyExitConfig, BoostedEarlyExitForSequenceClassification

VOCAB = 60


def tiny_bert(layers=4, dropout=0.0):
    return BertConfig(
        vocab_size=VOCAB, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=24,
        max_position_embeddings=32, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
    )


def tiny_distilbert(layers=3):
    return DistilBertConfig(
        vocab_size=VOCAB, dim=16, n_layers=layers, n_heads=2, hidden_dim=24, max_position_embeddings=32,
        dropout=0.0, attention_dropout=0.0,
    )


def tiny_roberta(layers=3):
    return RobertaConfig(
        vocab_size=VOCAB, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=24,
        max_position_embeddings=40, pad_token_id=1, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )


def tiny_roberta_family(config_class, layers=3):
    return config_class(
        vocab_size=VOCAB, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=24,
        max_position_embeddings=40, pad_token_id=1, bos_token_id=0, eos_token_id=2, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )


def tiny_modernbert(layers=4):
    """Layers alternate global and sliding-window attention (a window of 2 tokens each side, shorter than the test
    sequences), with rotary position embeddings and a final norm: a layer BERT's call does not fit."""
    return ModernBertConfig(
        vocab_size=VOCAB, hidden_size=16, intermediate_size=24, num_hidden_layers=layers, num_attention_heads=2,
        global_attn_every_n_layers=2, local_attention=4, max_position_embeddings=64, pad_token_id=0, bos_token_id=1,
        eos_token_id=2, cls_token_id=1, sep_token_id=2,
    )


def tiny_partial_moe_bert(layers=3):
    from hf_dynamic.models.partial_moe_bert import PartialMoEBertConfig

    return PartialMoEBertConfig(
        vocab_size=VOCAB, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=24,
        max_position_embeddings=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_experts=4,
        num_experts_per_tok=2, moe_layers=[0, 2],
    )


BACKBONES = {
    "bert": tiny_bert,
    "distilbert": tiny_distilbert,
    "roberta": tiny_roberta,
    "xlm-roberta": lambda: tiny_roberta_family(XLMRobertaConfig),
    "camembert": lambda: tiny_roberta_family(CamembertConfig),
    "modernbert": tiny_modernbert,
    "partial_moe_bert": tiny_partial_moe_bert,
}


def make_model(backbone="bert", num_labels=3, **kwargs):
    kwargs.setdefault("classifier_dropout", 0.0)
    config = BoostedEarlyExitConfig(backbone=BACKBONES[backbone](), num_labels=num_labels, **kwargs)
    return BoostedEarlyExitForSequenceClassification(config)


def make_batch(batch=6, length=9, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    for i in range(batch):  # right padding of varying length
        pad = i % 4
        if pad:
            mask[i, -pad:] = 0
            ids[i, -pad:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def spread_heads(model, scale=4.0):
    """Make exit heads confident enough that confidence thresholds split a batch."""
    with torch.no_grad():
        for head in model.exit_heads:
            head.classifier.weight.mul_(scale * 20)


def _quantile_thresholds(model, batch, q=0.5):
    with torch.no_grad():
        conf = torch.softmax(model(**batch, output_all_exits=True).all_exit_logits, -1).amax(-1)
    return [float(torch.quantile(conf[:, k], q)) for k in range(conf.shape[1])]


def layer_outputs(model, batch):
    """Hidden states after every backbone layer, from the backbone's own forward (the reference)."""
    out = model.backbone(**batch, output_hidden_states=True)
    return out.hidden_states[1:]


# ---------------------------------------------------------------------------------------------------------------
# config validation
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"exit_layers": [0, 4]}, "exit_layers: layer 0 is out of range"),
        ({"exit_layers": [2, 5]}, "layer 5 is out of range"),
        ({"exit_layers": [2, 2, 4]}, "duplicated"),
        ({"exit_layers": [3, 2, 4]}, "increasing"),
        ({"exit_layers": [1, 2]}, "must end with the backbone's last layer 4"),
        ({"ensemble_temperature": 0.0}, "ensemble_temperature must be a number > 0, got 0.0"),
        ({"ensemble_temperature": -1.0}, "ensemble_temperature"),
        ({"exit_thresholds": [0.5, 0.5]}, "exit_thresholds has 2 values but there are 4 exits"),
        ({"exit_criterion": "margin"}, "exit_criterion must be one of"),
        ({"exit_patience": 0, "exit_criterion": "patience"}, "exit_patience must be an integer >= 1"),
        ({"exit_loss_weights": [1.0]}, "exit_loss_weights has 1 values"),
        ({"num_labels": 1, "exit_thresholds": [0.5] * 4}, "use exit_criterion='patience' for regression"),
    ],
)
def test_config_rejects_bad_values(kwargs, message):
    kwargs = {"num_labels": 3, **kwargs}
    with pytest.raises(ValueError, match=message):
        BoostedEarlyExitConfig(backbone=tiny_bert(), **kwargs)


def test_config_defaults_every_layer_and_round_trips(tmp_path):
    config = BoostedEarlyExitConfig(backbone=tiny_distilbert(layers=3).to_dict(), num_labels=2)
    assert config.exit_layers == [1, 2, 3]
    assert isinstance(config.backbone, DistilBertConfig)
    config.save_pretrained(tmp_path)
    loaded = BoostedEarlyExitConfig.from_pretrained(tmp_path)
    assert isinstance(loaded.backbone, DistilBertConfig) and loaded.backbone.n_layers == 3
    assert loaded.exit_layers == [1, 2, 3] and loaded.boosting and loaded.ensemble_temperature == 0.5


def test_backbone_without_an_adapter_is_rejected():
    gpt2 = GPT2Model(GPT2Config(vocab_size=VOCAB, n_embd=16, n_layer=2, n_head=2, n_positions=32))
    with pytest.raises(ValueError, match="backbone model_type 'gpt2' has no boosted-exit adapter"):
        BoostedEarlyExitForSequenceClassification.from_backbone(gpt2, num_labels=2)
    with pytest.raises(ValueError, match="model_or_path must be a PreTrainedModel"):
        BoostedEarlyExitForSequenceClassification.from_backbone(nn.Linear(2, 2), num_labels=2)


# ---------------------------------------------------------------------------------------------------------------
# the wrapped layer loop is the backbone
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_every_backbone_full_anytime_and_dynamic_modes_agree_with_its_own_forward(backbone):
    """Full / anytime mode equal a reference computed from the backbone's own forward. Dynamic mode (each adapter's
    layer-by-layer run) against anytime mode: a sample leaves at the first exit whose confidence passes its
    threshold, with that exit's anytime prediction; its hidden states and attention weights (from the module the
    adapter names) are the anytime ones up to that exit and zero after it."""
    model = make_model(backbone).eval()
    model.set_attn_implementation("eager")
    spread_heads(model)
    batch = make_batch(batch=12, seed=3)
    model.config.exit_thresholds = _quantile_thresholds(model, batch, 0.6)
    with torch.no_grad():
        full = model(**batch, output_all_exits=True, output_hidden_states=True, output_attentions=True)
        out = model(**batch, output_hidden_states=True, output_attentions=True)
        # the reference: exit n reads the backbone's own hidden_states[n] (ModernBERT's last one after its final norm)
        hidden = layer_outputs(model, batch)
        f = [head(hidden[layer - 1]) for head, layer in zip(model.exit_heads, model.config.exit_layers)]
    expected = [f[0]]
    for f_n in f[1:]:
        expected.append(0.5 * expected[-1] + f_n)
    anytime, layers = full.all_exit_logits, model.config.num_backbone_layers
    torch.testing.assert_close(anytime, torch.stack(expected, 1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(full.logits, expected[-1], atol=1e-5, rtol=1e-5)
    exit_index = torch.tensor([model.config.exit_layers.index(int(l)) for l in out.exit_layer])
    assert len(set(exit_index.tolist())) >= 2, "thresholds should split the batch across exits"
    torch.testing.assert_close(out.logits, anytime[torch.arange(12), exit_index], atol=1e-5, rtol=1e-5)
    conf = torch.softmax(anytime, -1).amax(-1)
    for i, k in enumerate(exit_index.tolist()):  # each sample left at the first exit whose confidence passed
        fired = [j for j in range(model.config.num_exits - 1) if conf[i, j] >= model.config.exit_thresholds[j]]
        assert k == (fired[0] if fired else model.config.num_exits - 1)
    assert len(out.hidden_states) == len(full.hidden_states) == layers + 1
    assert len(out.attentions) == len(full.attentions) == layers
    lengths = batch["attention_mask"].sum(1)
    for layer in range(layers + 1):  # hidden_states[layer]: the output of layer `layer` (0: the embeddings)
        ran = out.exit_layer >= layer
        assert out.hidden_states[layer].shape == full.hidden_states[layer].shape
        assert not out.hidden_states[layer][~ran].any()  # never computed for the samples that had left
        if layer:
            assert not out.attentions[layer - 1][~ran].any()
        for i in ran.nonzero().flatten().tolist():
            n = int(lengths[i])
            torch.testing.assert_close(out.hidden_states[layer][i, :n], full.hidden_states[layer][i, :n],
                                       atol=1e-5, rtol=1e-5)
            if layer:
                torch.testing.assert_close(out.attentions[layer - 1][i, :, :n, :n],
                                           full.attentions[layer - 1][i, :, :n, :n], atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# loss (docs/boost.md, "## Boosted exits")
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("boosting", [True, False])
def test_loss_equals_hand_computation(boosting):
    model = make_model(exit_layers=[1, 3, 4], boosting=boosting, ensemble_temperature=0.7,
                       exit_loss_weights=[0.5, 1.0, 2.0]).train()
    batch = make_batch()
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    out = model(**batch, labels=labels)
    with torch.no_grad():
        hidden = layer_outputs(model, batch)
        f = [model.exit_heads[k](hidden[layer - 1]) for k, layer in enumerate([1, 3, 4])]
    ce = nn.functional.cross_entropy
    expected, losses, previous = 0.0, [], None
    for w, f_n in zip([0.5, 1.0, 2.0], f):
        prediction = f_n if previous is None or not boosting else 0.7 * previous + f_n
        losses.append(ce(prediction, labels))
        expected = expected + w * losses[-1]
        previous = prediction
    torch.testing.assert_close(out.loss, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.exit_losses, torch.stack(losses), atol=1e-5, rtol=1e-5)


def test_stop_gradient_no_grad_reaches_earlier_heads():
    """Exit n's loss L(t·sg(F_{n-1}) + f_n) sends no gradient to the heads of F_{n-1}, but does to the backbone."""
    model = make_model(exit_layers=[1, 2, 3, 4], exit_loss_weights=[0.0, 0.0, 1.0, 0.0]).train()
    model(**make_batch(), labels=torch.tensor([0, 1, 2, 0, 1, 2])).loss.backward()
    for k in (0, 1):
        for p in model.exit_heads[k].parameters():
            assert p.grad is None or torch.count_nonzero(p.grad) == 0
    assert torch.count_nonzero(model.exit_heads[2].classifier.weight.grad) > 0
    assert torch.count_nonzero(model.backbone.encoder.layer[0].output.dense.weight.grad) > 0
    assert torch.count_nonzero(model.exit_heads[3].classifier.weight.grad) == 0  # its loss has weight 0
    # without stop-gradient the earlier heads would receive gradient: check the reference does differ
    model.zero_grad()
    model.config.boosting = True
    model.config.ensemble_temperature = 0.5
    hidden = layer_outputs(model, make_batch())
    f = [model.exit_heads[k](hidden[k]) for k in range(3)]
    no_stop = 0.5 * (0.5 * f[0] + f[1]) + f[2]
    nn.functional.cross_entropy(no_stop, torch.tensor([0, 1, 2, 0, 1, 2])).backward()
    assert torch.count_nonzero(model.exit_heads[0].classifier.weight.grad) > 0


def test_gradient_rescaling_scales_backbone_gradient_by_one_over_remaining_exits():
    """Gradient reaching layer l from the exits at/after it is scaled by 1/(N-n+1) (n = first exit at/after l)."""
    batch, labels = make_batch(), torch.tensor([0, 1, 2, 0, 1, 2])

    def grads(rescale):
        torch.manual_seed(0)
        model = make_model(exit_layers=[1, 3, 4], gradient_rescale=rescale).train()
        model(**batch, labels=labels).loss.backward()
        return model, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    model, scaled = grads(True)
    _, plain = grads(False)
    exits_at_or_after = {0: 3, 1: 2, 2: 2, 3: 1}  # 0-based layer -> number of exits at or after it
    for name, g in plain.items():
        if name.startswith("backbone.embeddings"):
            factor = 1 / 3
        elif name.startswith("backbone.encoder.layer."):
            factor = 1 / exits_at_or_after[int(name.split(".")[3])]
        else:  # exit heads: unscaled
            assert name.startswith("exit_heads")
            factor = 1.0
        torch.testing.assert_close(scaled[name], g * factor, atol=1e-6, rtol=1e-4)


# ---------------------------------------------------------------------------------------------------------------
# dynamic mode
# ---------------------------------------------------------------------------------------------------------------
def test_dynamic_with_thresholds_that_never_fire_equals_full_model():
    model = make_model(exit_criterion="entropy").eval()
    batch = make_batch()
    with torch.no_grad():
        full = model(**batch, output_all_exits=True).logits
        model.config.exit_thresholds = [-1.0] * 4  # entropy is never below -1
        out = model(**batch)
    assert out.exit_layer.tolist() == [4] * 6
    torch.testing.assert_close(out.logits, full, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("backbone", ["bert", "modernbert"])
def test_exited_samples_skip_later_layers(backbone):
    """Batch compaction: each layer runs once, on the samples still in the batch, trimmed of trailing padding."""
    model = make_model(backbone).eval()
    spread_heads(model)
    batch = make_batch(batch=12, seed=5)
    model.config.exit_thresholds = _quantile_thresholds(model, batch, 0.5)
    shapes = {i: [] for i in range(4)}
    hooks = [
        layer.register_forward_hook(lambda mod, args, out, i=i: shapes[i].append(tuple(args[0].shape[:2])))
        for i, layer in enumerate(model.layers)
    ]
    with torch.no_grad():
        out = model(**batch)
    for h in hooks:
        h.remove()
    lengths = batch["attention_mask"].sum(1)
    for i in range(4):  # layer i+1 ran once, exactly on the samples that had not exited before it ...
        remaining = out.exit_layer >= i + 1
        assert shapes[i] == [(int(remaining.sum()), int(lengths[remaining].max()))]  # ... trimmed of padding
    assert shapes[3][0][0] < 12


def test_trim_trailing_padding():
    from hf_dynamic.models.boosted_early_exit.modeling_boosted_early_exit import trim_trailing_padding

    hidden = torch.randn(2, 5, 3)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]])
    h, m = trim_trailing_padding(hidden, mask)
    assert torch.equal(h, hidden[:, :3]) and torch.equal(m, mask[:, :3])
    full = torch.ones(2, 5, dtype=torch.long)
    assert trim_trailing_padding(hidden, full)[0] is hidden


@pytest.mark.parametrize("backbone", ["bert", "modernbert"])
def test_dynamic_mode_with_long_sample_exiting_first_matches_anytime(backbone):
    """Once the longest sample exits, later layers run on the shorter padded length; predictions are unchanged
    (for ModernBERT: its sliding-window mask and rotary embeddings rebuilt for the shorter batch)."""
    model = make_model(backbone).eval()
    spread_heads(model)
    batch = make_batch(batch=8, length=12, seed=11)
    batch["attention_mask"][1:, 6:] = 0
    batch["input_ids"][1:, 6:] = 0
    with torch.no_grad():
        anytime = model(**batch, output_all_exits=True).all_exit_logits
        conf = torch.softmax(anytime, -1).amax(-1)
        assert conf[0, 0] > conf[1:, 0].min()  # precondition: some short sample stays after exit 1
        model.config.exit_thresholds = [float(conf[0, 0]), 2.0, 2.0, 0.0]  # sample 0 (long) exits at exit 1
        lengths = []
        hook = model.layers[1].register_forward_hook(lambda mod, args, out: lengths.append(args[0].shape[1]))
        out = model(**batch)
        hook.remove()
    assert out.exit_layer[0] == 1 and lengths == [6]
    torch.testing.assert_close(out.logits, anytime[torch.arange(8), out.exit_layer - 1], atol=1e-5, rtol=1e-5)


def test_patience_criterion_classification_and_regression():
    model = make_model(exit_criterion="patience", exit_patience=1).eval()
    batch = make_batch(batch=10, seed=7)
    with torch.no_grad():
        anytime = model(**batch, output_all_exits=True).all_exit_logits
        out = model(**batch)
    pred = anytime.argmax(-1)
    for i in range(10):  # PABEE: leave at the first exit whose argmax equals the previous exit's
        same = [k for k in range(1, 3) if pred[i, k] == pred[i, k - 1]]
        k = same[0] if same else 3
        assert out.exit_layer[i] == k + 1
        torch.testing.assert_close(out.logits[i], anytime[i, k], atol=1e-5, rtol=1e-5)

    reg = make_model(num_labels=1, exit_criterion="patience", exit_patience=2, patience_tolerance=0.05).eval()
    with torch.no_grad():
        anytime = reg(**batch, output_all_exits=True).all_exit_logits[..., 0]
        out = reg(**batch)
    for i in range(10):
        count, taken = 0, 3
        for k in range(1, 4):
            count = count + 1 if abs(anytime[i, k] - anytime[i, k - 1]) <= 0.05 else 0
            if count >= 2 and k < 3:
                taken = k
                break
        assert out.exit_layer[i] == taken + 1
        torch.testing.assert_close(out.logits[i, 0], anytime[i, taken], atol=1e-5, rtol=1e-5)


def test_regression_loss_is_mse_of_boosted_predictions():
    model = make_model(num_labels=1, exit_layers=[2, 4]).train()
    batch, y = make_batch(), torch.linspace(0, 5, 6)
    out = model(**batch, labels=y)
    assert model.config.is_regression
    with torch.no_grad():
        hidden = layer_outputs(model, batch)
        f1, f2 = model.exit_heads[0](hidden[1])[:, 0], model.exit_heads[1](hidden[3])[:, 0]
    expected = nn.functional.mse_loss(f1, y) + nn.functional.mse_loss(0.5 * f1 + f2, y)
    torch.testing.assert_close(out.loss, expected, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# save / load, from_backbone
# ---------------------------------------------------------------------------------------------------------------
def test_save_load_keeps_thresholds_and_logits(tmp_path):
    model = make_model("distilbert", exit_criterion="confidence").eval()
    spread_heads(model)
    batch = make_batch(batch=10)
    model.config.exit_thresholds = _quantile_thresholds(model, batch, 0.5)
    with torch.no_grad():
        before = model(**batch)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, BoostedEarlyExitForSequenceClassification)
    assert loaded.config.exit_thresholds == model.config.exit_thresholds
    assert isinstance(loaded.config.backbone, DistilBertConfig)
    with torch.no_grad():
        after = loaded(**batch)
    assert torch.equal(after.exit_layer, before.exit_layer)
    torch.testing.assert_close(after.logits, before.logits, atol=0, rtol=0)


def test_from_backbone_task_model_and_path(tmp_path):
    classifier = BertForSequenceClassification(tiny_bert(layers=3)).eval()
    classifier.config.num_labels = 4
    model = BoostedEarlyExitForSequenceClassification.from_backbone(classifier, exit_layers=[2, 3]).eval()
    assert model.config.num_labels == 4 and model.config.exit_layers == [2, 3]
    for name, p in classifier.bert.state_dict().items():
        if not name.startswith("pooler."):
            assert torch.equal(model.backbone.state_dict()[name], p), name
    for head in model.exit_heads:
        assert torch.equal(head.dense.weight, classifier.bert.pooler.dense.weight)
    batch = make_batch()
    with torch.no_grad():
        expected = classifier.bert(**batch).last_hidden_state
        torch.testing.assert_close(model(**batch).logits, model.exit_heads[1](expected) + 0.5 * model.exit_heads[0](
            classifier.bert(**batch, output_hidden_states=True).hidden_states[2]), atol=1e-5, rtol=1e-5)

    DistilBertModel(tiny_distilbert()).save_pretrained(tmp_path / "distil")
    from_path = BoostedEarlyExitForSequenceClassification.from_backbone(str(tmp_path / "distil"), num_labels=1)
    assert from_path.config.is_regression and from_path.config.exit_layers == [1, 2, 3]


def test_from_backbone_real_minilm():
    minilm = BertModel.from_pretrained(hf_dynamic.minilm_path(), dtype=torch.float32).eval()
    model = BoostedEarlyExitForSequenceClassification.from_backbone(minilm, num_labels=2).eval()
    assert model.config.exit_layers == [1, 2, 3, 4, 5, 6] and model.config.backbone.hidden_size == 384
    ids = torch.tensor([[101, 2023, 3185, 2001, 2307, 102, 0], [101, 6659, 102, 0, 0, 0, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        reference = minilm(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        out = model(input_ids=ids, attention_mask=mask, output_all_exits=True)
    torch.testing.assert_close(out.all_exit_logits[:, 0], model.exit_heads[0](reference[1]), atol=1e-5, rtol=1e-5)
    assert torch.equal(model.exit_heads[5].dense.weight, minilm.pooler.dense.weight)


def test_trains_under_trainer(tmp_path):
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    model = make_model(num_labels=2)
    batch = make_batch(batch=8)
    data = Dataset.from_dict({**{k: v.tolist() for k, v in batch.items()}, "labels": [0, 1] * 4})
    before = model.exit_heads[0].classifier.weight.clone()
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=2,
                             report_to=[], logging_steps=1, save_strategy="no", use_cpu=True)
    trainer = Trainer(model=model, args=args, train_dataset=data, eval_dataset=data)
    trainer.train()
    assert not torch.equal(before, model.exit_heads[0].classifier.weight)
    metrics = trainer.evaluate()
    assert torch.isfinite(torch.tensor(metrics["eval_loss"]))


def test_activation_checkpointing_gives_same_loss_and_gradients():
    batch, labels = make_batch(), torch.tensor([0, 1, 2, 0, 1, 2])
    model = make_model().train()
    model(**batch, labels=labels).loss.backward()
    reference = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.activation_checkpointing_enable()
    assert model.layers[0].gradient_checkpointing
    model(**batch, labels=labels).loss.backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, reference[name], atol=1e-6, rtol=1e-5)


def test_token_type_ids_on_backbone_without_them():
    model = make_model("distilbert").eval()
    batch = make_batch()
    with torch.no_grad():
        plain = model(**batch).logits
        zeros = model(**batch, token_type_ids=torch.zeros_like(batch["input_ids"])).logits
    torch.testing.assert_close(plain, zeros)
    with pytest.raises(ValueError, match="token_type_ids: the distilbert backbone has no token type embeddings"):
        model(**batch, token_type_ids=torch.ones_like(batch["input_ids"]))


def test_partial_moe_bert_backbone_exits_and_balance_loss(tmp_path):
    """PartialMoEBert (mixed MoE / dense layers) works as a backbone; its router balance loss joins the loss."""
    from hf_dynamic.models.partial_moe_bert import PartialMoEBertConfig, PartialMoEBertModel

    backbone = PartialMoEBertConfig(
        vocab_size=VOCAB, hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=24,
        max_position_embeddings=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_experts=4,
        num_experts_per_tok=2, moe_layers=[0, 2],
    )
    encoder = PartialMoEBertModel(backbone).eval()
    model = BoostedEarlyExitForSequenceClassification.from_backbone(encoder, num_labels=2, classifier_dropout=0.0)
    model.eval()
    batch, labels = make_batch(), torch.tensor([0, 1, 0, 1, 0, 1])
    with torch.no_grad():
        out = model(**batch, labels=labels, output_all_exits=True)
        reference = encoder(**batch, output_hidden_states=True)
        f = [head(reference.hidden_states[k + 1]) for k, head in enumerate(model.exit_heads)]
    expected = [f[0], 0.5 * f[0] + f[1], 0.5 * (0.5 * f[0] + f[1]) + f[2]]
    torch.testing.assert_close(out.all_exit_logits, torch.stack(expected, 1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.aux_loss, reference.aux_loss)
    ce = nn.functional.cross_entropy
    torch.testing.assert_close(
        out.loss, sum(ce(e, labels) for e in expected) + backbone.router_aux_loss_coef * reference.aux_loss,
        atol=1e-5, rtol=1e-5)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert type(loaded.config.backbone).__name__ == "PartialMoEBertConfig"
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, out.logits, atol=0, rtol=0)


def test_mean_pooling_exits_anytime_and_dynamic():
    model = make_model(exit_pooling="mean").eval()
    spread_heads(model)
    batch = make_batch(batch=12, seed=4)
    with torch.no_grad():
        anytime = model(**batch, output_all_exits=True).all_exit_logits
        hidden = layer_outputs(model, batch)
        mask = batch["attention_mask"].unsqueeze(-1).float()
        head = model.exit_heads[0]
        pooled = (hidden[0] * mask).sum(1) / mask.sum(1)
        expected = head.classifier(torch.tanh(head.dense(pooled)))
        torch.testing.assert_close(anytime[:, 0], expected, atol=1e-5, rtol=1e-5)
        model.config.exit_thresholds = _quantile_thresholds(model, batch, 0.5)
        out = model(**batch)
    exit_index = out.exit_layer - 1
    assert len(set(exit_index.tolist())) >= 2
    torch.testing.assert_close(out.logits, anytime[torch.arange(12), exit_index], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="exit_pooling must be one of"):
        BoostedEarlyExitConfig(backbone=tiny_bert(), exit_pooling="max")


def test_from_backbone_unknown_keyword_is_a_type_error():
    """A misspelt config field (``boostng=False``) would be kept as a stray config attribute and build the
    default model silently: refused, naming it, before the encoder is read."""
    with pytest.raises(TypeError, match=r"from_backbone\(\) got unknown keyword argument\(s\) \['boostng'\]"):
        BoostedEarlyExitForSequenceClassification.from_backbone("/nonexistent/encoder", num_labels=2, boostng=False)
    model = BoostedEarlyExitForSequenceClassification.from_backbone(BertModel(tiny_bert(layers=2)), num_labels=2,
                                                                    boosting=False, exit_pooling="mean")
    assert not model.config.boosting and model.config.exit_pooling == "mean"


@pytest.mark.parametrize("backbone", ["bert", "distilbert", "modernbert"])
def test_dynamic_mode_takes_inputs_embeds_and_per_sample_position_ids(backbone):
    """``inputs_embeds`` and explicit ``(batch, length)`` position ids (compacted and trimmed with the batch) give
    the predictions and exits of the default call."""
    model = make_model(backbone).eval()
    spread_heads(model)
    batch = make_batch(batch=12, seed=5)
    model.config.exit_thresholds = _quantile_thresholds(model, batch, 0.5)
    ids = batch["input_ids"]
    positions = torch.arange(ids.shape[1]).expand(ids.shape[0], -1)
    with torch.no_grad():
        reference = model(**batch)
        embedded = model(inputs_embeds=model.get_input_embeddings()(ids), attention_mask=batch["attention_mask"])
        positioned = model(**batch, position_ids=positions)
    assert len(set(reference.exit_layer.tolist())) >= 2
    for out in (embedded, positioned):
        assert torch.equal(out.exit_layer, reference.exit_layer)
        torch.testing.assert_close(out.logits, reference.logits, atol=1e-5, rtol=1e-5)
